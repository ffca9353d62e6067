//! The gateway's own metrics, declared together with their help text.

use std::time::Duration;

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

/// Records one upstream call.
pub fn record_upstream(upstream: &str, outcome: &str, elapsed: Duration) {
    metrics::histogram!(UPSTREAM_DURATION, "upstream" => upstream.to_owned(), "outcome" => outcome.to_owned())
        .record(elapsed.as_secs_f64());
}
