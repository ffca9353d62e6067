//! Prometheus metrics: the process recorder, the HTTP request histogram shared by every
//! listener, and process metrics read from `/proc` at scrape time.

use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Name of the request latency histogram (SPEC §6).
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";

/// Latency buckets, from 0.5 ms: fine enough for a proxy hop, wide enough for slow queries.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// How often histograms are compacted when nobody scrapes.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Renders the metrics of this process in the Prometheus text format; cheap to clone.
#[derive(Debug, Clone)]
pub struct MetricsHandle {
    handle: PrometheusHandle,
}

impl MetricsHandle {
    /// Returns the exposition text: recorded metrics, then process metrics.
    pub fn render(&self) -> String {
        let mut text = self.handle.render();
        text.push_str(&super::process::render());
        text
    }
}

/// Installs the process-wide recorder (once, at start) and describes the shared metrics.
///
/// The recorder is global because the `metrics` macros are; tests that need isolation use
/// `metrics::with_local_recorder` instead.
pub fn install() -> anyhow::Result<MetricsHandle> {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    describe();
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut interval = tokio::time::interval(UPKEEP_INTERVAL);
        loop {
            interval.tick().await;
            upkeep.run_upkeep();
        }
    });
    Ok(MetricsHandle { handle })
}

fn describe() {
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from request received to response headers sent, by listener service, method, route template and status."
    );
}
