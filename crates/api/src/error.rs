//! The API's error answer: `{code, message}` with the HTTP status its code maps to, from every
//! layer. Handlers answer [`Failure`]s; what answers before or around them (axum's extractor
//! rejections, the method router's 405, body limits) is turned into the same shape by
//! [`contract`], the router's outermost layer.
//!
//! What hyper answers itself, before any of this runs, stays outside the contract: a request
//! line over 64 KiB (an empty 414), headers over its buffer (431) or a request it cannot parse
//! (400). [`URI_BYTES_MAX`] keeps every path hyper does pass under our own, JSON, limit.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use model::{ApiError, ErrorCode};

/// Longest path and query we take (hyper refuses request lines over 64 KiB on its own).
pub(crate) const URI_BYTES_MAX: usize = 8 * 1024;
/// Text of a rejection that is kept as the message of its JSON answer.
const REJECTION_TEXT_BYTES_MAX: usize = 1024;

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
        ErrorCode::InvalidInput
        | ErrorCode::UnsupportedFormat
        | ErrorCode::InvalidEvent
        | ErrorCode::SchemaMismatch => StatusCode::BAD_REQUEST,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::UriTooLong => StatusCode::URI_TOO_LONG,
        // A client's own verdict on the server's certificate, never a server's answer.
        ErrorCode::Unauthorized | ErrorCode::UntrustedServer => StatusCode::UNAUTHORIZED,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::StorageFull => StatusCode::INSUFFICIENT_STORAGE,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        // How a job ended, answered by a call that waited for it (invoke): the function
        // failed, not the server.
        ErrorCode::WorkerCrashed
        | ErrorCode::Cancelled
        | ErrorCode::FunctionFailed
        | ErrorCode::MemoryLimit
        | ErrorCode::SpawnFailed
        | ErrorCode::NodeLost
        | ErrorCode::NodeRestarted
        | ErrorCode::NodeRemoved
        | ErrorCode::Stuck
        | ErrorCode::Superseded => StatusCode::BAD_GATEWAY,
    }
}

/// The code of an error answer that came without one (a rejection by axum's extractors or
/// routing): the reverse of [`status`].
fn code_for(status: StatusCode) -> ErrorCode {
    match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::URI_TOO_LONG => ErrorCode::UriTooLong,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthorized,
        StatusCode::FORBIDDEN => ErrorCode::Forbidden,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::CONFLICT => ErrorCode::Conflict,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        StatusCode::INSUFFICIENT_STORAGE => ErrorCode::StorageFull,
        StatusCode::GATEWAY_TIMEOUT | StatusCode::REQUEST_TIMEOUT => ErrorCode::Timeout,
        // 400, 415 (a body of the wrong type), 422 (a body that does not deserialize), ...
        s if s.is_client_error() => ErrorCode::InvalidInput,
        _ => ErrorCode::Internal,
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

/// The outermost layer: refuses over-long URIs, and turns every error answer that is not
/// already `{code, message}` JSON into one, keeping its text as the message.
pub(crate) async fn contract(request: Request, next: Next) -> Response {
    let uri_len = request.uri().path().len() + request.uri().query().map_or(0, str::len);
    if uri_len > URI_BYTES_MAX {
        return fail(
            ErrorCode::UriTooLong,
            format!("path and query are {uri_len} bytes; at most {URI_BYTES_MAX}"),
        )
        .into_response();
    }
    let response = next.run(request).await;
    let is_error = response.status().is_client_error() || response.status().is_server_error();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !is_error || is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let text = match axum::body::to_bytes(body, REJECTION_TEXT_BYTES_MAX).await {
        Ok(bytes) => String::from_utf8_lossy(&bytes).trim().to_string(),
        Err(_) => String::new(),
    };
    let code = code_for(parts.status);
    let message = if text.is_empty() {
        parts
            .status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_string()
    } else {
        text
    };
    if code == ErrorCode::Internal {
        tracing::warn!(status = %parts.status, %message, "request failed");
    }
    let json = serde_json::to_vec(&ApiError::new(code, message))
        .expect("an ApiError is always representable as JSON");
    parts.status = status(code);
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(json))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::extract::{DefaultBodyLimit, Path};
    use axum::routing::{get, post};
    use axum::Router;
    use tower::ServiceExt;

    /// A router with the rejections the real one can meet, behind the contract layer.
    fn app() -> Router {
        Router::new()
            .route(
                "/jobs/{id}",
                get(|Path(id): Path<u64>| async move { id.to_string() }),
            )
            .route(
                "/body",
                post(|body: axum::body::Bytes| async move { body.len().to_string() })
                    .layer(DefaultBodyLimit::max(8)),
            )
            .route(
                "/refused",
                get(|| async { fail(ErrorCode::Conflict, "already done") }),
            )
            .layer(axum::middleware::from_fn(contract))
    }

    /// Sends a request and renders the answer as `status code` (or `status ok`).
    async fn check(method: &str, uri: &str, body: &'static [u8], expected: &str) {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::from(body))
            .unwrap();
        let response = app().oneshot(request).await.unwrap();
        let status = response.status().as_u16();
        let json = response
            .headers()
            .get(header::CONTENT_TYPE)
            .is_some_and(|v| v == "application/json");
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let got = if json {
            let e: ApiError = serde_json::from_slice(&bytes).unwrap();
            assert!(!e.message.is_empty(), "{uri}: empty message");
            format!("{status} {}", e.code)
        } else {
            format!("{status} ok")
        };
        assert_eq!(got, expected, "{method} {uri}");
    }

    #[tokio::test]
    async fn every_rejection_becomes_json_with_its_code() {
        check("GET", "/jobs/7", b"", "200 ok").await;
        check("GET", "/jobs/%FF", b"", "400 invalid_input").await;
        check("GET", "/jobs/seven", b"", "400 invalid_input").await;
        check("DELETE", "/jobs/7", b"", "405 method_not_allowed").await;
        check("GET", "/nowhere", b"", "404 not_found").await;
        check("POST", "/body", b"12345678", "200 ok").await;
        check("POST", "/body", b"123456789", "413 too_large").await;
        check("GET", "/refused", b"", "409 conflict").await;
        let long = format!("/jobs/{}", "1".repeat(URI_BYTES_MAX));
        check(
            "GET",
            Box::leak(long.into_boxed_str()),
            b"",
            "414 uri_too_long",
        )
        .await;
    }

    #[test]
    fn statuses_map_back_to_their_codes() {
        for code in [
            ErrorCode::InvalidInput,
            ErrorCode::TooLarge,
            ErrorCode::UriTooLong,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::Unavailable,
            ErrorCode::StorageFull,
            ErrorCode::Timeout,
            ErrorCode::Internal,
        ] {
            assert_eq!(code_for(status(code)), code, "{code}");
        }
    }
}
