//! Remote upstreams: a service's instances behind hyper-util's pooled keep-alive client.
//!
//! Bodies stream both ways (nothing is buffered); a connection failure answers 502
//! `bad-gateway`, no response head within the route's timeout answers 504 `upstream-timeout`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::Uri;
use http::uri::PathAndQuery;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use logicore_platform::http::{ErrorCode, Problem};

use crate::forward;
use crate::metrics::UpstreamOutcome;

/// The HTTP client shared by every remote upstream of a gateway.
pub type HttpClient = Client<HttpConnector, Body>;

/// How long an idle upstream connection is kept for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Builds the pooled upstream client (HTTP/1.1 keep-alive, `TCP_NODELAY`).
pub fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_keepalive(Some(Duration::from_secs(60)));
    connector.set_connect_timeout(Some(Duration::from_secs(5)));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .pool_max_idle_per_host(256)
        .build(connector)
}

/// One instance of an upstream service.
#[derive(Debug, Clone)]
pub struct Instance {
    /// `scheme://authority` of the instance.
    pub origin: String,
    /// Path prefix of the instance (`""` or `/base`).
    pub base_path: String,
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
}

impl Instance {
    /// Parses an instance URL (`http://host:port[/base]`).
    pub fn parse(url: &str) -> Option<Instance> {
        let uri: Uri = url.parse().ok()?;
        let scheme = uri.scheme_str()?;
        let authority = uri.authority()?;
        Some(Instance {
            origin: format!("{scheme}://{authority}"),
            base_path: uri.path().trim_end_matches('/').to_owned(),
            scheme: uri.scheme()?.clone(),
            authority: authority.clone(),
        })
    }

    /// The URI of `path_and_query` on this instance (under its base path).
    fn target(&self, path_and_query: Option<&PathAndQuery>) -> Option<Uri> {
        let path_and_query = match path_and_query {
            // The common case reuses the client's bytes: no copy, no parse.
            Some(original) if self.base_path.is_empty() => original.clone(),
            original => {
                let original = original.map_or("/", PathAndQuery::as_str);
                PathAndQuery::try_from(format!("{}{original}", self.base_path)).ok()?
            }
        };
        let mut parts = http::uri::Parts::default();
        parts.scheme = Some(self.scheme.clone());
        parts.authority = Some(self.authority.clone());
        parts.path_and_query = Some(path_and_query);
        Uri::from_parts(parts).ok()
    }
}

/// The instances of one upstream service and the client that reaches them; cheap to clone.
#[derive(Debug, Clone)]
pub struct RemotePool {
    inner: Arc<PoolInner>,
}

/// What the gateway has seen of one instance (passive: from real traffic only).
#[derive(Debug, Default)]
pub struct InstanceHealth {
    /// Requests forwarded.
    pub requests: AtomicU64,
    /// Connection failures and timeouts.
    pub failures: AtomicU64,
    /// Failures since the last success.
    pub consecutive_failures: AtomicU64,
}

#[derive(Debug)]
struct PoolInner {
    service: Arc<str>,
    instances: Vec<Instance>,
    /// Parallel to `instances`.
    health: Vec<InstanceHealth>,
    /// Round-robin position, shared by every route to this service.
    next: AtomicUsize,
    client: HttpClient,
}

impl RemotePool {
    /// Creates the pool of `service`.
    pub fn new(service: &str, instances: Vec<Instance>, client: HttpClient) -> Self {
        RemotePool {
            inner: Arc::new(PoolInner {
                service: service.into(),
                health: instances
                    .iter()
                    .map(|_| InstanceHealth::default())
                    .collect(),
                instances,
                next: AtomicUsize::new(0),
                client,
            }),
        }
    }

    /// Returns the service name.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// Returns the instances.
    pub fn instances(&self) -> &[Instance] {
        &self.inner.instances
    }

    /// Returns each instance with what the gateway has seen of it.
    pub fn instance_health(&self) -> impl Iterator<Item = (&Instance, &InstanceHealth)> {
        self.inner.instances.iter().zip(&self.inner.health)
    }

    /// Sends the request to the next instance (round robin) and streams its answer back.
    pub async fn forward(&self, mut request: Request, timeout: Duration) -> Response {
        let Some((instance, health)) = self.pick() else {
            return Problem::new(
                ErrorCode::UpstreamUnavailable,
                "the upstream has no instances",
            )
            .into_response();
        };
        let Some(uri) = instance.target(request.uri().path_and_query()) else {
            return Problem::new(ErrorCode::MalformedBody, "the request target is not valid")
                .into_response();
        };
        *request.uri_mut() = uri;
        // The client sets Host from the URI; the client's Host went to X-Forwarded-Host.
        request.headers_mut().remove(http::header::HOST);

        let started = Instant::now();
        health.requests.fetch_add(1, Ordering::Relaxed);
        let result = tokio::time::timeout(timeout, self.inner.client.request(request)).await;
        let outcome = match &result {
            Ok(Ok(response)) => UpstreamOutcome::Status(response.status()),
            Ok(Err(_)) => UpstreamOutcome::Error,
            Err(_) => UpstreamOutcome::Timeout,
        };
        crate::metrics::record_upstream(&self.inner.service, outcome, started.elapsed());
        if result.as_ref().is_ok_and(Result::is_ok) {
            health.consecutive_failures.store(0, Ordering::Relaxed);
        } else {
            health.failures.fetch_add(1, Ordering::Relaxed);
            health.consecutive_failures.fetch_add(1, Ordering::Relaxed);
        }
        match result {
            Ok(Ok(response)) => {
                let (mut parts, body) = response.into_parts();
                forward::strip_hop_by_hop(&mut parts.headers);
                Response::from_parts(parts, Body::new(body))
            }
            Ok(Err(err)) => {
                tracing::warn!(upstream = %self.inner.service, instance = %instance.origin, error = %err, "upstream request failed");
                Problem::new(
                    ErrorCode::BadGateway,
                    format!("the upstream `{}` failed", self.inner.service),
                )
                .into_response()
            }
            Err(_) => {
                tracing::warn!(upstream = %self.inner.service, instance = %instance.origin, timeout_ms = timeout.as_millis() as u64, "upstream timed out");
                Problem::new(
                    ErrorCode::UpstreamTimeout,
                    format!(
                        "the upstream `{}` did not answer in time",
                        self.inner.service
                    ),
                )
                .into_response()
            }
        }
    }

    fn pick(&self) -> Option<(&Instance, &InstanceHealth)> {
        if self.inner.instances.is_empty() {
            return None;
        }
        let index = self.inner.next.fetch_add(1, Ordering::Relaxed) % self.inner.instances.len();
        Some((
            self.inner.instances.get(index)?,
            self.inner.health.get(index)?,
        ))
    }
}
