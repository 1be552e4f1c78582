//! The API's TLS listener: each connection's handshake (tokio-rustls), then the router served
//! on it (hyper-util, HTTP/1.1 or HTTP/2), with the client's verified certificate, if it
//! presented one, handed to every request as a [`Tls`] extension (the raft and peer routes
//! require a node's).
//!
//! Limits: at most [`CONNECTIONS_MAX`] connections at once (the next waits to be accepted),
//! each handshake within [`TLS_HANDSHAKE_TIMEOUT`]. Shutdown stops accepting, lets the open
//! connections finish the requests they serve (the caller bounds the wait), and every
//! connection task is owned by the listener's `JoinSet`.

use axum::extract::Request;
use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use rustls::pki_types::CertificateDer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Connections served at once.
const CONNECTIONS_MAX: usize = 4096;
/// How long a client has to finish its TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Pause after a failed accept (out of file descriptors, say) before the next.
const ACCEPT_RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The connection a request came on is TLS; `peer` is the client's certificate, verified
/// against the cluster CA, if it presented one.
#[derive(Clone, Debug)]
pub(crate) struct Tls {
    pub(crate) peer: Option<CertificateDer<'static>>,
}

/// Serves `router` over TLS on `listener` until `shutdown` fires.
pub(crate) async fn serve(
    router: Router,
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(CONNECTIONS_MAX));
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let permit = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "accepting a connection failed");
                    tokio::time::sleep(ACCEPT_RETRY_PAUSE).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        // A TLS record can leave in more than one segment; without this, Nagle's algorithm
        // holds the last one until the peer's delayed ACK (up to 40 ms on Linux).
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(%remote, error = %e, "setting TCP_NODELAY failed");
        }
        let acceptor = acceptor.clone();
        let router = router.clone();
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let _permit = permit;
            let stream =
                match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(e)) => {
                        tracing::debug!(%remote, error = %e, "TLS handshake refused");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!(%remote, "TLS handshake timed out");
                        return;
                    }
                };
            let tls = Tls {
                peer: stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .map(|c| c.clone().into_owned()),
            };
            let service =
                hyper::service::service_fn(move |mut request: Request<hyper::body::Incoming>| {
                    request.extensions_mut().insert(tls.clone());
                    tower::Service::call(&mut router.clone(), request)
                });
            let builder = auto::Builder::new(TokioExecutor::new());
            let connection = builder.serve_connection(TokioIo::new(stream), service);
            if let Err(e) = watcher.watch(connection).await {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
    while connections.join_next().await.is_some() {}
    Ok(())
}
