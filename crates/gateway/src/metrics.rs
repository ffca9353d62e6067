//! The gateway's own metrics, declared together with their help text.

use std::sync::Arc;
use std::time::Duration;

use logicore_platform::telemetry::metrics::{HandleCache, HistogramCache};

/// Upstream round-trip time to response headers, by upstream and outcome.
pub const UPSTREAM_DURATION: &str = "gateway_upstream_duration_seconds";

/// Circuit breaker state by upstream: 0 closed, 1 open, 2 half open.
pub const BREAKER_STATE: &str = "gateway_breaker_state";
/// Breaker state changes by upstream and state entered.
pub const BREAKER_TRANSITIONS: &str = "gateway_breaker_transitions_total";
/// Requests answered 503 by an open breaker, by upstream.
pub const BREAKER_REJECTIONS: &str = "gateway_breaker_rejections_total";
/// Retry decisions by upstream and outcome (`retried`, `budget_exhausted`).
pub const RETRIES: &str = "gateway_retries_total";
/// Instances ejected, by upstream and instance.
pub const EJECTIONS: &str = "gateway_outlier_ejections_total";

/// Response cache decisions by result (`hit`, `miss`, `stale`, `bypass`).
pub const CACHE_RESULTS: &str = "gateway_cache_requests_total";

/// Rate limit decisions by scope and outcome.
pub const RATE_LIMITS: &str = "gateway_rate_limit_total";

/// Cache entries removed by purges, by how they were named.
pub const CACHE_PURGED: &str = "gateway_cache_purged_total";

/// Values masked in responses.
pub const MASKED: &str = "gateway_masked_fields_total";

/// Describes the gateway metrics (call once after the recorder is installed).
pub fn describe() {
    metrics::describe_counter!(
        CACHE_PURGED,
        "Response cache entries removed by POST /admin/cache/purge (and purge events), by selector (tag, key)."
    );
    metrics::describe_counter!(
        MASKED,
        "Sensitive values masked by the gateway in JSON responses of routes with masking on."
    );
    metrics::describe_counter!(
        RATE_LIMITS,
        "Rate limit checks by scope (ip, user) and outcome (allowed, limited, backend_down_allowed, backend_down_refused)."
    );
    metrics::describe_counter!(
        CACHE_RESULTS,
        "Requests to cached routes by how the response cache answered (hit, miss, stale, bypass)."
    );
    metrics::describe_gauge!(
        BREAKER_STATE,
        "Circuit breaker state by upstream: 0 closed, 1 open, 2 half open."
    );
    metrics::describe_counter!(
        BREAKER_TRANSITIONS,
        "Circuit breaker state changes by upstream and the state entered."
    );
    metrics::describe_counter!(
        BREAKER_REJECTIONS,
        "Requests answered 503 without calling the upstream because its breaker was open."
    );
    metrics::describe_counter!(
        RETRIES,
        "Retry decisions after gateway errors, by upstream and outcome (retried, budget_exhausted)."
    );
    metrics::describe_counter!(
        EJECTIONS,
        "Instances ejected from their pool after consecutive gateway errors."
    );
    metrics::describe_histogram!(
        UPSTREAM_DURATION,
        metrics::Unit::Seconds,
        "Time from forwarding a request to receiving the upstream's response headers, by upstream and outcome (HTTP status, `error` or `timeout`)."
    );
    metrics::describe_counter!(
        crate::policy::AUTH_OUTCOMES,
        "Bearer token checks at the edge, by issuer and outcome (ok, missing, invalid, expired, forbidden)."
    );
}

/// How an upstream call ended: its HTTP status, or no response at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum UpstreamOutcome {
    /// The upstream answered with this status.
    Status(http::StatusCode),
    /// The connection or the exchange failed.
    Error,
    /// No response head within the route's timeout.
    Timeout,
}

impl UpstreamOutcome {
    fn label(self) -> String {
        match self {
            UpstreamOutcome::Status(status) => status.as_str().to_owned(),
            UpstreamOutcome::Error => "error".to_owned(),
            UpstreamOutcome::Timeout => "timeout".to_owned(),
        }
    }
}

thread_local! {
    static UPSTREAM_HISTOGRAMS: HistogramCache<(Arc<str>, UpstreamOutcome)> = HistogramCache::new();
}

/// Records one upstream call.
pub fn record_upstream(upstream: &Arc<str>, outcome: UpstreamOutcome, elapsed: Duration) {
    UPSTREAM_HISTOGRAMS.with(|cache| {
        cache.record(
            (Arc::clone(upstream), outcome),
            |(upstream, outcome)| {
                metrics::histogram!(
                    UPSTREAM_DURATION,
                    "upstream" => upstream.to_string(),
                    "outcome" => outcome.label(),
                )
            },
            elapsed.as_secs_f64(),
        );
    });
}

/// Sets the state gauge of a new (closed) breaker.
pub fn reset_breaker_state(upstream: &str) {
    metrics::gauge!(BREAKER_STATE, "upstream" => upstream.to_owned()).set(0.0);
}

/// Records a breaker entering `state`.
pub fn record_breaker_state(upstream: &str, state: crate::resilience::BreakerState) {
    metrics::gauge!(BREAKER_STATE, "upstream" => upstream.to_owned()).set(state.gauge());
    if state != crate::resilience::BreakerState::Closed {
        tracing::warn!(
            upstream,
            state = state.as_str(),
            "circuit breaker state changed"
        );
    } else {
        tracing::info!(
            upstream,
            state = state.as_str(),
            "circuit breaker state changed"
        );
    }
    metrics::counter!(BREAKER_TRANSITIONS, "upstream" => upstream.to_owned(), "state" => state.as_str())
        .increment(1);
}

/// Records a request refused by an open breaker.
pub fn record_breaker_rejection(upstream: &str) {
    metrics::counter!(BREAKER_REJECTIONS, "upstream" => upstream.to_owned()).increment(1);
}

/// Records a retry decision.
pub fn record_retry(upstream: &str, outcome: &'static str) {
    metrics::counter!(RETRIES, "upstream" => upstream.to_owned(), "outcome" => outcome)
        .increment(1);
}

/// Records an instance ejection.
pub fn record_ejection(upstream: &str, instance: &str) {
    metrics::counter!(EJECTIONS, "upstream" => upstream.to_owned(), "instance" => instance.to_owned())
        .increment(1);
}

thread_local! {
    static CACHE_COUNTERS: HandleCache<crate::cache::CacheResult, metrics::Counter> =
        HandleCache::new();
}

/// Records how the response cache answered.
pub fn record_cache(result: crate::cache::CacheResult) {
    CACHE_COUNTERS.with(|cache| {
        cache.with(
            result,
            |result| {
                let label = match result {
                    crate::cache::CacheResult::Hit => "hit",
                    crate::cache::CacheResult::Miss => "miss",
                    crate::cache::CacheResult::Stale => "stale",
                    crate::cache::CacheResult::Bypass => "bypass",
                };
                metrics::counter!(CACHE_RESULTS, "result" => label)
            },
            |counter| counter.increment(1),
        );
    });
}

/// Records a rate limit decision.
pub fn record_rate_limit(scope: &'static str, outcome: &'static str) {
    metrics::counter!(RATE_LIMITS, "scope" => scope, "outcome" => outcome).increment(1);
}

/// Counts values masked in one response.
pub fn record_masked(count: usize) {
    metrics::counter!(MASKED).increment(u64::try_from(count).unwrap_or(u64::MAX));
}

/// Counts entries removed by a purge.
pub fn record_purge(selector: &'static str, purged: usize) {
    metrics::counter!(CACHE_PURGED, "selector" => selector)
        .increment(u64::try_from(purged).unwrap_or(u64::MAX));
}
