//! The gateway's own metrics, declared together with their help text.

use std::sync::Arc;
use std::time::Duration;

use logicore_platform::telemetry::metrics::HistogramCache;

/// Upstream round-trip time to response headers, by upstream and outcome.
pub const UPSTREAM_DURATION: &str = "gateway_upstream_duration_seconds";

/// Describes the gateway metrics (call once after the recorder is installed).
pub fn describe() {
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
