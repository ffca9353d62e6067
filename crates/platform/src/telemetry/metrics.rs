//! Prometheus metrics: the process recorder, the HTTP request histogram shared by every
//! listener, and process metrics read from `/proc` at scrape time.

use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::{Method, StatusCode};
use metrics::Histogram;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Name of the request latency histogram (SPEC §6).
pub const HTTP_REQUEST_DURATION: &str = "http_request_duration_seconds";

/// Latency buckets, from 0.5 ms: fine enough for a proxy hop, wide enough for slow queries.
pub const LATENCY_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// Buckets of the SQLite writer's wait and hold times, from 50 µs: a transaction holds the
/// writer for a fraction of a millisecond.
pub const WRITER_BUCKETS: [f64; 14] = [
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
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
        .set_buckets_for_metric(
            Matcher::Prefix("db_sqlite_writer_".to_owned()),
            &WRITER_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &LATENCY_BUCKETS)?
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder)
        .map_err(|_| anyhow::anyhow!("a metrics recorder is already installed"))?;
    GLOBAL_RECORDER.store(true, Ordering::Release);
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
    metrics::describe_counter!(
        QUERY_CACHE,
        "Service query cache lookups by cache (service) and result (hit, miss)."
    );
    metrics::describe_histogram!(
        HTTP_REQUEST_DURATION,
        metrics::Unit::Seconds,
        "Time from request received to response headers sent, by listener service, method, route template and status."
    );
    // Background work (jobs, events, e-mail, webhooks): every series the platform emits has
    // help text, as `promtool check metrics` wants.
    for (name, help) in [
        ("jobs_completed_total", "Jobs completed, by kind."),
        (
            "jobs_failed_total",
            "Job attempts that failed, by kind and what follows (retry or dead).",
        ),
        (
            "bus_events_published_total",
            "Events the relay published (embedded log or RabbitMQ).",
        ),
        (
            "bus_events_consumed_total",
            "Events handled, by consumer and type.",
        ),
        (
            "bus_redeliveries_skipped_total",
            "Redelivered events a consumer had processed before, by consumer.",
        ),
        (
            "bus_consumer_failures_total",
            "Failed attempts to handle events, by consumer.",
        ),
        (
            "bus_events_dead_lettered_total",
            "Events a consumer gave up on (RabbitMQ dead-letter queue), by consumer.",
        ),
        (
            "bus_amqp_reconnects_total",
            "Lost RabbitMQ connections re-established, by role (relay, consumer, listener).",
        ),
        ("emails_sent_total", "E-mails handed to the sink, by kind."),
        ("orders_created_total", "Orders placed."),
        (
            "webhook_attempts_total",
            "Webhook delivery attempts, by outcome (delivered, retry, failed, gone).",
        ),
        (
            "gateway_cache_event_purges_total",
            "Gateway cache entries purged by product events.",
        ),
    ] {
        metrics::describe_counter!(name, help);
    }
    metrics::describe_histogram!(
        "jobs_duration_seconds",
        metrics::Unit::Seconds,
        "Time a job's handler ran, by kind."
    );
    metrics::describe_histogram!(
        crate::db::WRITER_WAIT,
        metrics::Unit::Seconds,
        "Time a transaction waited for the single SQLite writer."
    );
    metrics::describe_histogram!(
        crate::db::WRITER_HOLD,
        metrics::Unit::Seconds,
        "Time a transaction held the single SQLite writer; the rate of its sum is the writer's utilisation."
    );
    metrics::describe_histogram!(
        "webhook_attempt_duration_seconds",
        metrics::Unit::Seconds,
        "Time a webhook delivery attempt took, answer included."
    );
}

/// Set once the process recorder is installed: from then on a registered handle stays valid,
/// so [`HistogramCache`] may keep it.
static GLOBAL_RECORDER: AtomicBool = AtomicBool::new(false);

/// Most handles one cache keeps; label sets are few (routes × methods × statuses), so
/// reaching this means unusual traffic, and the cache simply starts again.
const MAX_CACHED_HANDLES: usize = 4096;

/// Registered metric handles (histograms, counters) by label set, for per-request metrics.
///
/// The `metrics` macros build the key (allocating each label value) and look it up in the
/// registry on every call; on the request path that costs more than recording. A cache in a
/// `thread_local!` holds the handles instead. Until the global recorder is installed (tests,
/// one-shot commands) it does not cache, so a handle of no recorder is never kept.
#[derive(Debug)]
pub struct HandleCache<K, H> {
    handles: RefCell<HashMap<K, H, foldhash::fast::RandomState>>,
}

/// A cache of histogram handles.
pub type HistogramCache<K> = HandleCache<K, Histogram>;

impl<K: Hash + Eq, H> HandleCache<K, H> {
    /// An empty cache.
    pub fn new() -> Self {
        HandleCache {
            handles: RefCell::new(HashMap::default()),
        }
    }

    /// Calls `use_handle` with the handle of `key`, registering it with `register` if needed.
    pub fn with(&self, key: K, register: impl FnOnce(&K) -> H, use_handle: impl FnOnce(&H)) {
        if !GLOBAL_RECORDER.load(Ordering::Acquire) {
            use_handle(&register(&key));
            return;
        }
        let mut handles = self.handles.borrow_mut();
        if handles.len() >= MAX_CACHED_HANDLES && !handles.contains_key(&key) {
            handles.clear();
        }
        use_handle(handles.entry(key).or_insert_with_key(|key| register(key)));
    }
}

impl<K: Hash + Eq> HandleCache<K, Histogram> {
    /// Records `value` in the histogram of `key`, registering it with `register` if needed.
    pub fn record(&self, key: K, register: impl FnOnce(&K) -> Histogram, value: f64) {
        self.with(key, register, |histogram| histogram.record(value));
    }
}

impl<K: Hash + Eq, H> Default for HandleCache<K, H> {
    fn default() -> Self {
        Self::new()
    }
}

type RequestKey = (&'static str, Method, Option<Arc<str>>, StatusCode);

thread_local! {
    static REQUEST_HISTOGRAMS: HistogramCache<RequestKey> = HistogramCache::new();
}

/// Records one request in [`HTTP_REQUEST_DURATION`]; `route` is the template that answered
/// (`unmatched` when none did).
pub fn record_request(
    service: &'static str,
    method: &Method,
    route: Option<&Arc<str>>,
    status: StatusCode,
    elapsed: Duration,
) {
    REQUEST_HISTOGRAMS.with(|cache| {
        cache.record(
            (service, method.clone(), route.cloned(), status),
            |(service, method, route, status)| {
                metrics::histogram!(
                    HTTP_REQUEST_DURATION,
                    "service" => *service,
                    "method" => method.as_str().to_owned(),
                    "route" => route.as_deref().unwrap_or("unmatched").to_owned(),
                    "status" => status.as_str().to_owned(),
                )
            },
            elapsed.as_secs_f64(),
        );
    });
}

/// Service query cache lookups by cache and result.
pub const QUERY_CACHE: &str = "cache_requests_total";

thread_local! {
    static QUERY_CACHE_COUNTERS: HandleCache<(&'static str, &'static str), metrics::Counter> =
        HandleCache::new();
}

/// Records a query cache lookup (`result`: `hit` or `miss`).
pub fn record_query_cache(cache: &'static str, result: &'static str) {
    QUERY_CACHE_COUNTERS.with(|handles| {
        handles.with(
            (cache, result),
            |(cache, result)| metrics::counter!(QUERY_CACHE, "cache" => *cache, "result" => *result),
            |counter| counter.increment(1),
        );
    });
}
