//! Listeners served with hyper-util's connection builder, so header limits, header read
//! timeouts and graceful drain are ours rather than `axum::serve`'s defaults.

use std::net::SocketAddr;
use std::time::Duration;

use std::convert::Infallible;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::response::Response;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::request_context::ClientAddr;

/// Limits applied to every connection of one listener.
#[derive(Debug, Clone, Copy)]
pub struct ServerOptions {
    /// Largest request header block; HTTP/1 buffers up to twice this, HTTP/2 header lists are
    /// refused above it.
    pub max_header_bytes: usize,
    /// Time a client has to finish sending its request headers.
    pub header_read_timeout: Duration,
    /// How long in-flight requests may run after shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for ServerOptions {
    fn default() -> Self {
        ServerOptions {
            max_header_bytes: 16 << 10,
            header_read_timeout: Duration::from_secs(10),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// hyper refuses HTTP/1 read buffers below this size.
const MIN_HTTP1_BUFFER: usize = 8192;

/// Binds a listener, reporting a clear error naming the address.
pub async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    use anyhow::Context;
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("failed to bind {addr}"))
}

/// What a listener serves: one boxed future per request, nothing cloned but an `Arc`.
pub type ListenerService = Arc<dyn Fn(Request) -> BoxFuture<'static, Response> + Send + Sync>;

/// Serves an axum router.
pub fn router_service(router: Router) -> ListenerService {
    Arc::new(move |request| {
        let router = router.clone();
        Box::pin(async move {
            match router.oneshot(request).await {
                Ok(response) => response,
                Err(never) => match never {},
            }
        })
    })
}

/// Serves `service` on `listener` until `shutdown` is cancelled, then stops accepting and lets
/// in-flight requests finish for up to `options.shutdown_grace`.
pub async fn serve(
    listener: TcpListener,
    service: ListenerService,
    options: ServerOptions,
    shutdown: CancellationToken,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        // Headroom above the limit: the gateway's own check answers 431 with a problem body;
        // hyper's bare 431 is only the hard memory bound for far larger header blocks.
        .max_buf_size((options.max_header_bytes * 2).max(MIN_HTTP1_BUFFER));
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(u32::try_from(options.max_header_bytes).unwrap_or(u32::MAX));
    let graceful = GracefulShutdown::new();
    let local_addr = listener
        .local_addr()
        .map_or_else(|_| "unknown".to_owned(), |addr| addr.to_string());

    loop {
        let (stream, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    // Usually EMFILE: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        // Small responses go out at once instead of waiting on Nagle's algorithm.
        if let Err(err) = stream.set_nodelay(true) {
            tracing::debug!(error = %err, "cannot set TCP_NODELAY");
        }
        let service = Arc::clone(&service);
        let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
            let mut request = request.map(Body::new);
            request.extensions_mut().insert(ClientAddr(peer));
            service(request).map(Ok::<_, Infallible>)
        });
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
        let connection = graceful.watch(connection.into_owned());
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(error = %err, peer = %peer, "connection ended with an error");
            }
        });
    }
    drop(listener);
    tracing::info!(addr = %local_addr, "draining");
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(options.shutdown_grace) => {
            tracing::warn!(grace_ms = options.shutdown_grace.as_millis() as u64, "shutdown grace elapsed; closing remaining connections");
        }
    }
}
