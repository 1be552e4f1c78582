//! The API's error answer: `{code, message}` with the HTTP status its code maps to.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use model::{ApiError, ErrorCode};

/// An [`ApiError`] on its way out as an HTTP answer.
#[derive(Debug)]
pub(crate) struct Failure(pub(crate) ApiError);

impl From<ApiError> for Failure {
    fn from(e: ApiError) -> Failure {
        Failure(e)
    }
}

pub(crate) fn fail(code: ErrorCode, message: impl Into<String>) -> Failure {
    Failure(ApiError::new(code, message))
}

/// The one place codes become statuses.
pub(crate) fn status(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::InvalidInput | ErrorCode::UnsupportedFormat => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal
        | ErrorCode::WorkerCrashed
        | ErrorCode::Cancelled
        | ErrorCode::FunctionFailed
        | ErrorCode::MemoryLimit
        | ErrorCode::SpawnFailed
        | ErrorCode::NodeLost
        | ErrorCode::NodeRestarted
        | ErrorCode::NodeRemoved
        | ErrorCode::Stuck
        | ErrorCode::Superseded => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let status = status(self.0.code);
        if status.is_server_error() {
            tracing::warn!(code = %self.0.code, message = %self.0.message, "request failed");
        }
        (status, axum::Json(self.0)).into_response()
    }
}

/// Parses a JSON body into `T`, answering `invalid_input` with serde's reason.
pub(crate) fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Failure> {
    serde_json::from_slice(body)
        .map_err(|e| fail(ErrorCode::InvalidInput, format!("malformed JSON body: {e}")))
}
