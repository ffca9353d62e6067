//! Remote upstreams: a service's instances behind hyper-util's pooled keep-alive client.
//!
//! Bodies stream both ways (nothing is buffered). Each try is bounded by the route's timeout
//! (capped by the breaker's); instances are picked by power of two choices over least
//! outstanding tries, and one that answers gateway errors several times in a row is ejected
//! for a while that grows with each ejection. Idempotent, bodiless requests are retried after
//! gateway errors within the retry budget. A connection failure answers 502 `bad-gateway`, no
//! response head in time 504 `upstream-timeout`, an open breaker 503 `upstream-unavailable`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::Uri;
use http::uri::PathAndQuery;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use logicore_platform::config::{BreakerConfig, OutlierConfig, RetryBudgetConfig};
use logicore_platform::http::{ErrorCode, Problem};
use tokio::time::Instant;

use crate::forward;
use crate::metrics::UpstreamOutcome;
use crate::resilience::{Breaker, BreakerState, RetryBudget};

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

/// Resilience settings of one upstream pool (from `[gateway.breaker]`,
/// `[gateway.upstreams.<service>.breaker]`, `[gateway.retry_budget]`, `[gateway.outlier]`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PoolSettings {
    /// Circuit breaker; its `timeout` caps every try.
    pub breaker: BreakerConfig,
    /// Share of requests that may be retries.
    pub retry_budget: RetryBudgetConfig,
    /// Passive outlier ejection.
    pub outlier: OutlierConfig,
}

/// How one route calls its upstream.
#[derive(Debug, Clone, Copy)]
pub struct CallPolicy {
    /// Time one try has to get response headers.
    pub timeout: Duration,
    /// Retries of idempotent, bodiless requests after a gateway error.
    pub retries: u32,
}

/// First retry waits up to this long (full jitter), doubling per retry up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(25);
/// Longest wait before a retry.
const MAX_BACKOFF: Duration = Duration::from_millis(250);

/// The instances of one upstream service and the client that reaches them; cheap to clone.
#[derive(Debug, Clone)]
pub struct RemotePool {
    inner: Arc<PoolInner>,
}

/// What the gateway has seen of one instance (passive: from real traffic only).
#[derive(Debug, Default)]
pub struct InstanceHealth {
    /// Requests forwarded (tries, retries included).
    pub requests: AtomicU64,
    /// Connection failures, timeouts and 5xx answers.
    pub failures: AtomicU64,
    /// Gateway errors (connection failures, timeouts, 502/503/504) since the last success.
    pub consecutive_failures: AtomicU64,
    /// Tries in flight.
    pub outstanding: AtomicU64,
    /// Times this instance was ejected (the next ejection lasts longer).
    pub ejections: AtomicU64,
    /// Ejected until this many milliseconds after the pool's origin (0 = never ejected).
    ejected_until_ms: AtomicU64,
}

#[derive(Debug)]
struct PoolInner {
    service: Arc<str>,
    instances: Vec<Instance>,
    /// Parallel to `instances`.
    health: Vec<InstanceHealth>,
    client: HttpClient,
    breaker: Breaker,
    budget: RetryBudget,
    settings: PoolSettings,
    /// Time zero of the ejection clocks.
    origin: Instant,
    /// Serialises ejection decisions (never more than the allowed share out at once).
    ejecting: Mutex<()>,
}

/// How one try ended.
enum Outcome {
    Answered(Response),
    Failed(hyper_util::client::legacy::Error),
    TimedOut,
}

impl RemotePool {
    /// Creates the pool of `service`.
    pub fn new(
        service: &str,
        instances: Vec<Instance>,
        client: HttpClient,
        settings: PoolSettings,
    ) -> Self {
        let service: Arc<str> = service.into();
        let breaker = Breaker::new(&settings.breaker, {
            let service = Arc::clone(&service);
            move |state| crate::metrics::record_breaker_state(&service, state)
        });
        crate::metrics::reset_breaker_state(&service);
        RemotePool {
            inner: Arc::new(PoolInner {
                health: instances
                    .iter()
                    .map(|_| InstanceHealth::default())
                    .collect(),
                instances,
                client,
                breaker,
                budget: RetryBudget::new(&settings.retry_budget),
                settings,
                origin: Instant::now(),
                ejecting: Mutex::new(()),
                service,
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

    /// Returns true when this pool has exactly `instances` and `settings`, so a reload can
    /// keep it (and its breaker, budget and ejections) instead of starting afresh.
    pub fn matches(&self, instances: &[Instance], settings: &PoolSettings) -> bool {
        self.inner.settings == *settings
            && self.inner.instances.len() == instances.len()
            && self
                .inner
                .instances
                .iter()
                .zip(instances)
                .all(|(mine, theirs)| {
                    mine.origin == theirs.origin && mine.base_path == theirs.base_path
                })
    }

    /// Returns true when both handles are the same pool.
    pub fn same_pool(&self, other: &RemotePool) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// The state of the pool's circuit breaker.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// Returns true while `health`'s instance is ejected.
    pub fn is_ejected(&self, health: &InstanceHealth) -> bool {
        health.ejected_until_ms.load(Ordering::Relaxed) > self.now_ms()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from((Instant::now() - self.inner.origin).as_millis()).unwrap_or(u64::MAX)
    }

    /// Sends the request to an instance (power of two choices over least outstanding tries,
    /// ejected instances left out) and streams its answer back. Gateway errors of idempotent,
    /// bodiless requests are retried on another pick within the retry budget; an open breaker
    /// answers 503 without calling anyone.
    pub async fn forward(&self, mut request: Request, policy: CallPolicy) -> Response {
        let inner = &*self.inner;
        if inner.instances.is_empty() {
            return Problem::new(
                ErrorCode::UpstreamUnavailable,
                "the upstream has no instances",
            )
            .into_response();
        }
        let start = Instant::now();
        inner.budget.record_request(start);
        let path_and_query = request.uri().path_and_query().cloned();
        // The client sets Host from the URI; the client's Host went to X-Forwarded-Host.
        request.headers_mut().remove(http::header::HOST);
        let replay = (policy.retries > 0).then(|| Replay::of(&request)).flatten();
        let per_try = policy.timeout.min(inner.settings.breaker.timeout);
        let deadline = start + per_try * (policy.retries + 1);
        let mut now = start;
        let mut first = Some(request);
        let mut retries = 0;
        let mut previous = None;
        loop {
            let permit = match inner.breaker.acquire(now) {
                Ok(permit) => permit,
                Err(open_for) => return self.refuse(open_for),
            };
            // A retry goes elsewhere when there is anywhere else to go.
            let index = self.pick(previous);
            previous = Some(index);
            let (instance, health) = (&inner.instances[index], &inner.health[index]);
            let Some(mut outgoing) = first
                .take()
                .or_else(|| replay.as_ref().map(Replay::request))
            else {
                return Problem::internal(&"the request could not be replayed").into_response();
            };
            let Some(uri) = instance.target(path_and_query.as_ref()) else {
                return Problem::new(ErrorCode::MalformedBody, "the request target is not valid")
                    .into_response();
            };
            *outgoing.uri_mut() = uri;

            let try_timeout = per_try.min(deadline.saturating_duration_since(now));
            health.requests.fetch_add(1, Ordering::Relaxed);
            let in_flight = Outstanding::new(&health.outstanding);
            let result = tokio::time::timeout(try_timeout, inner.client.request(outgoing)).await;
            drop(in_flight);
            let finished = Instant::now();
            let elapsed = finished - now;
            let outcome = match result {
                Ok(Ok(response)) => Outcome::Answered(response.map(Body::new)),
                Ok(Err(err)) => Outcome::Failed(err),
                Err(_) => Outcome::TimedOut,
            };
            let (metric_outcome, failed, gateway_error) = match &outcome {
                Outcome::Answered(response) => {
                    let status = response.status();
                    let gateway_error = matches!(status.as_u16(), 502..=504);
                    (
                        UpstreamOutcome::Status(status),
                        status.is_server_error(),
                        gateway_error,
                    )
                }
                Outcome::Failed(_) => (UpstreamOutcome::Error, true, true),
                Outcome::TimedOut => (UpstreamOutcome::Timeout, true, true),
            };
            permit.record(failed, elapsed, finished);
            crate::metrics::record_upstream(&inner.service, metric_outcome, elapsed);
            if failed {
                health.failures.fetch_add(1, Ordering::Relaxed);
            }
            if gateway_error {
                self.note_gateway_error(index);
            } else {
                self.note_success(health);
            }

            let may_retry = gateway_error
                && replay.is_some()
                && retries < policy.retries
                && finished + BASE_BACKOFF < deadline;
            if may_retry {
                if inner.budget.try_retry(finished) {
                    retries += 1;
                    crate::metrics::record_retry(&inner.service, "retried");
                    let ceiling =
                        (BASE_BACKOFF * 2u32.saturating_pow(retries - 1)).min(MAX_BACKOFF);
                    let pause = Duration::from_millis(fastrand::u64(
                        0..=u64::try_from(ceiling.as_millis()).unwrap_or(0),
                    ));
                    tokio::time::sleep(pause.min(deadline.saturating_duration_since(finished)))
                        .await;
                    now = Instant::now();
                    continue;
                }
                crate::metrics::record_retry(&inner.service, "budget_exhausted");
            }
            return match outcome {
                Outcome::Answered(response) => {
                    let (mut parts, body) = response.into_parts();
                    forward::strip_hop_by_hop(&mut parts.headers);
                    Response::from_parts(parts, body)
                }
                Outcome::Failed(err) => {
                    tracing::warn!(upstream = %inner.service, instance = %instance.origin, error = %err, "upstream request failed");
                    Problem::new(
                        ErrorCode::BadGateway,
                        format!("the upstream `{}` failed", inner.service),
                    )
                    .into_response()
                }
                Outcome::TimedOut => {
                    tracing::warn!(upstream = %inner.service, instance = %instance.origin, timeout_ms = try_timeout.as_millis() as u64, "upstream timed out");
                    Problem::new(
                        ErrorCode::UpstreamTimeout,
                        format!("the upstream `{}` did not answer in time", inner.service),
                    )
                    .into_response()
                }
            };
        }
    }

    /// 503 while the breaker is open.
    fn refuse(&self, open_for: Duration) -> Response {
        crate::metrics::record_breaker_rejection(&self.inner.service);
        let seconds = open_for.as_secs() + u64::from(open_for.subsec_nanos() > 0);
        Problem::new(
            ErrorCode::UpstreamUnavailable,
            format!(
                "the upstream `{}` is failing; its circuit breaker is open",
                self.inner.service
            ),
        )
        .with_retry_after(seconds.max(1))
        .into_response()
    }

    /// Power of two choices: two random instances that are not ejected (nor `avoid`, the one
    /// that just failed), the one with fewer tries in flight wins.
    fn pick(&self, avoid: Option<usize>) -> usize {
        let count = self.inner.instances.len();
        if count == 1 {
            return 0;
        }
        let now = self.now_ms();
        let available = |index: usize| {
            Some(index) != avoid
                && self.inner.health[index]
                    .ejected_until_ms
                    .load(Ordering::Relaxed)
                    <= now
        };
        let draw = || {
            let start = fastrand::usize(..count);
            (0..count)
                .map(|offset| (start + offset) % count)
                .find(|&index| available(index))
                // Ejection never takes out every instance; if nothing else is left, use any.
                .unwrap_or(start)
        };
        let first = draw();
        let second = draw();
        let outstanding =
            |index: usize| self.inner.health[index].outstanding.load(Ordering::Relaxed);
        if outstanding(second) < outstanding(first) {
            second
        } else {
            first
        }
    }

    fn note_success(&self, health: &InstanceHealth) {
        health.consecutive_failures.store(0, Ordering::Relaxed);
        // Back and healthy for a while: the next ejection starts short again.
        let until = health.ejected_until_ms.load(Ordering::Relaxed);
        let calm =
            u64::try_from(self.inner.settings.outlier.max_ejection.as_millis()).unwrap_or(u64::MAX);
        if until > 0 && self.now_ms() > until.saturating_add(calm) {
            health.ejections.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a gateway error of instance `index` and ejects it after enough in a row, for a
    /// time that grows with each ejection, never taking out more than the allowed share.
    fn note_gateway_error(&self, index: usize) {
        let inner = &*self.inner;
        let outlier = &inner.settings.outlier;
        let health = &inner.health[index];
        let consecutive = health.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if outlier.consecutive_errors == 0 || consecutive < u64::from(outlier.consecutive_errors) {
            return;
        }
        let _deciding = inner
            .ejecting
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let now = self.now_ms();
        if health.ejected_until_ms.load(Ordering::Relaxed) > now {
            return;
        }
        let ejected = inner
            .health
            .iter()
            .filter(|other| other.ejected_until_ms.load(Ordering::Relaxed) > now)
            .count();
        let allowed = inner.instances.len() * usize::from(outlier.max_ejected_percent) / 100;
        if ejected + 1 > allowed {
            return;
        }
        let times = health.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let duration = outlier
            .base_ejection
            .saturating_mul(u32::try_from(times).unwrap_or(u32::MAX))
            .min(outlier.max_ejection);
        let duration_ms = u64::try_from(duration.as_millis()).unwrap_or(u64::MAX);
        health
            .ejected_until_ms
            .store(now.saturating_add(duration_ms), Ordering::Relaxed);
        health.consecutive_failures.store(0, Ordering::Relaxed);
        let instance = &inner.instances[index];
        crate::metrics::record_ejection(&inner.service, &instance.origin);
        tracing::warn!(
            upstream = %inner.service,
            instance = %instance.origin,
            consecutive_errors = consecutive,
            ejected_ms = duration_ms,
            "instance ejected after consecutive gateway errors"
        );
    }
}

/// Counts a try in flight for as long as it lives, even when the request is abandoned.
struct Outstanding<'a>(&'a AtomicU64);

impl<'a> Outstanding<'a> {
    fn new(counter: &'a AtomicU64) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Outstanding(counter)
    }
}

impl Drop for Outstanding<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What is needed to send a bodiless request again.
struct Replay {
    method: http::Method,
    version: http::Version,
    headers: http::HeaderMap,
}

impl Replay {
    /// Captures an idempotent request without a body; `None` for anything else.
    fn of(request: &Request) -> Option<Replay> {
        use http::Method;
        let idempotent = matches!(
            *request.method(),
            Method::GET
                | Method::HEAD
                | Method::OPTIONS
                | Method::TRACE
                | Method::PUT
                | Method::DELETE
        );
        (idempotent && http_body::Body::is_end_stream(request.body())).then(|| Replay {
            method: request.method().clone(),
            version: request.version(),
            headers: request.headers().clone(),
        })
    }

    fn request(&self) -> Request {
        let mut request = Request::new(Body::empty());
        *request.method_mut() = self.method.clone();
        *request.version_mut() = self.version;
        *request.headers_mut() = self.headers.clone();
        request
    }
}
