//! The admin listener: liveness, readiness and (later) metrics and the admin API.
//! It binds to 127.0.0.1 by default; keep it off the public network.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use std::sync::atomic::Ordering;

use logicore_platform::http::request_context::{AccessLog, request_context, tag_route_template};
use logicore_platform::http::{ErrorCode, FieldError, Json, Problem, extract};
use logicore_platform::telemetry::metrics::MetricsHandle;
use serde_json::{Map, Value, json};

use crate::cache::ResponseCache;
use crate::live::LiveEdge;
use crate::routing::{Route, Upstream};

/// How long one readiness check may take before it counts as failed.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The future a readiness check returns: `Err` says what is wrong.
pub type CheckFuture = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// One dependency `/ready` checks (the database, later the bus, ...).
#[derive(Clone)]
pub struct ReadinessCheck {
    name: &'static str,
    check: Arc<dyn Fn() -> CheckFuture + Send + Sync>,
}

impl std::fmt::Debug for ReadinessCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadinessCheck")
            .field("name", &self.name)
            .finish()
    }
}

impl ReadinessCheck {
    /// Creates a named check.
    pub fn new(
        name: &'static str,
        check: impl Fn() -> CheckFuture + Send + Sync + 'static,
    ) -> Self {
        ReadinessCheck {
            name,
            check: Arc::new(check),
        }
    }
}

/// The gateway parts the admin API works on.
#[derive(Debug, Clone)]
pub struct GatewayAdmin {
    /// The edge rules in force.
    pub live: LiveEdge,
    /// The response cache, for purges.
    pub cache: Option<ResponseCache>,
}

/// What the admin listener reports on.
#[derive(Debug, Clone)]
pub struct AdminState {
    checks: Arc<Vec<ReadinessCheck>>,
    metrics: Option<MetricsHandle>,
    edge: Option<LiveEdge>,
    cache: Option<ResponseCache>,
}

/// Returns the admin router: `/health`, `/ready`, `/metrics` (when a recorder is installed),
/// and when this process runs a gateway `/admin/upstreams` and `POST /admin/cache/purge`.
pub fn admin_router(
    checks: Vec<ReadinessCheck>,
    metrics: Option<MetricsHandle>,
    gateway: Option<GatewayAdmin>,
) -> Router {
    let (edge, cache) = match gateway {
        Some(gateway) => (Some(gateway.live), gateway.cache),
        None => (None, None),
    };
    let state = AdminState {
        checks: Arc::new(checks),
        metrics,
        edge,
        cache,
    };
    Router::new()
        .route("/health", get(extract::health))
        .route("/ready", get(ready))
        .route("/metrics", get(render_metrics))
        .route("/admin/upstreams", get(upstreams))
        .route("/admin/cache/purge", post(purge_cache))
        .fallback(extract::not_found)
        .with_state(state)
        .route_layer(axum::middleware::from_fn(tag_route_template))
        .layer(axum::middleware::from_fn_with_state(
            AccessLog {
                service: "admin",
                enabled: false,
            },
            request_context,
        ))
}

/// `POST /admin/cache/purge` body: entries to remove by `Cache-Tag` and/or by target.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PurgeRequest {
    /// Tags services put in `Cache-Tag`.
    #[serde(default)]
    tags: Vec<String>,
    /// Request targets (path and query, e.g. `/api/v1/products?limit=10`), any method or coding.
    #[serde(default)]
    keys: Vec<String>,
}

/// Removes cached responses; answers `{"purged": n}`.
async fn purge_cache(
    State(state): State<AdminState>,
    Json(request): Json<PurgeRequest>,
) -> Response {
    let Some(cache) = &state.cache else {
        return Problem::new(
            ErrorCode::NotFound,
            "this process runs no gateway response cache",
        )
        .into_response();
    };
    if request.tags.is_empty() && request.keys.is_empty() {
        return Problem::validation(vec![FieldError::new(
            "/tags",
            "give at least one tag (or key in `keys`)",
        )])
        .into_response();
    }
    let by_tag = cache.purge_tags(&request.tags).await;
    let by_key = cache.purge_targets(&request.keys).await;
    crate::metrics::record_purge("tag", by_tag);
    crate::metrics::record_purge("key", by_key);
    let purged = by_tag + by_key;
    tracing::info!(tags = ?request.tags, keys = ?request.keys, purged, "cache purged");
    Json(json!({ "purged": purged })).into_response()
}

async fn render_metrics(State(state): State<AdminState>) -> Response {
    let Some(metrics) = &state.metrics else {
        return Problem::new(
            ErrorCode::NotFound,
            "metrics are not enabled in this process",
        )
        .into_response();
    };
    (
        [(
            http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics.render(),
    )
        .into_response()
}

/// Lists every upstream service, how it is reached, its routes and its instances.
async fn upstreams(State(state): State<AdminState>) -> Response {
    let Some(edge) = &state.edge else {
        return Problem::new(ErrorCode::NotFound, "this process runs no gateway").into_response();
    };
    let edge = edge.current();
    let routes = &edge.table;
    let mut services: std::collections::BTreeMap<String, Value> = std::collections::BTreeMap::new();
    for route in routes.routes() {
        let entry = services
            .entry(route.service.to_string())
            .or_insert_with(|| describe_upstream(route));
        if let Some(prefixes) = entry["routes"].as_array_mut() {
            prefixes.push(json!(route.prefix));
        }
    }
    Json(json!({"upstreams": services.into_values().collect::<Vec<_>>()})).into_response()
}

fn describe_upstream(route: &Route) -> Value {
    match &route.upstream {
        Upstream::Local(_) => json!({
            "service": route.service,
            "kind": "local",
            "routes": [],
            "instances": [{"url": "in-process", "healthy": true}],
        }),
        Upstream::Remote(pool) => {
            let instances: Vec<Value> = pool
                .instance_health()
                .map(|(instance, health)| {
                    let consecutive = health.consecutive_failures.load(Ordering::Relaxed);
                    let ejected = pool.is_ejected(health);
                    json!({
                        "url": format!("{}{}", instance.origin, instance.base_path),
                        "healthy": consecutive == 0 && !ejected,
                        "ejected": ejected,
                        "ejections": health.ejections.load(Ordering::Relaxed),
                        "outstanding": health.outstanding.load(Ordering::Relaxed),
                        "requests": health.requests.load(Ordering::Relaxed),
                        "failures": health.failures.load(Ordering::Relaxed),
                        "consecutive_failures": consecutive,
                    })
                })
                .collect();
            json!({
                "service": route.service,
                "kind": "remote",
                "breaker": pool.breaker_state().as_str(),
                "routes": [],
                "instances": instances,
            })
        }
    }
}

async fn ready(State(state): State<AdminState>) -> Response {
    let checks = &state.checks;
    let mut results = Map::new();
    let mut failures = Vec::new();
    for check in checks.iter() {
        let outcome = match tokio::time::timeout(CHECK_TIMEOUT, (check.check)()).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("no answer within {CHECK_TIMEOUT:?}")),
        };
        match outcome {
            Ok(()) => {
                results.insert(check.name.into(), "ok".into());
            }
            Err(reason) => {
                tracing::warn!(check = check.name, reason = %reason, "readiness check failed");
                results.insert(check.name.into(), "failing".into());
                failures.push(format!("{}: {reason}", check.name));
            }
        }
    }
    if failures.is_empty() {
        Json(json!({"status": "ready", "checks": results})).into_response()
    } else {
        Problem::new(ErrorCode::Unavailable, failures.join("; "))
            .with_retry_after(5)
            .into_response()
    }
}
