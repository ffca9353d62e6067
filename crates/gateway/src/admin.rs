//! The admin listener: liveness, readiness and (later) metrics and the admin API.
//! It binds to 127.0.0.1 by default; keep it off the public network.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use logicore_platform::http::request_context::{AccessLog, request_context};
use logicore_platform::http::{ErrorCode, Json, Problem, extract};
use serde_json::{Map, json};

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

/// Returns the admin router.
pub fn admin_router(checks: Vec<ReadinessCheck>) -> Router {
    Router::new()
        .route("/health", get(extract::health))
        .route("/ready", get(ready))
        .fallback(extract::not_found)
        .with_state(Arc::new(checks))
        .layer(axum::middleware::from_fn_with_state(
            AccessLog {
                service: "admin",
                enabled: false,
            },
            request_context,
        ))
}

async fn ready(State(checks): State<Arc<Vec<ReadinessCheck>>>) -> Response {
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
