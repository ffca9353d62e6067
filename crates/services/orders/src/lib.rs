//! The orders service: placing orders (stock reserved through the catalog, safe to retry
//! with `Idempotency-Key`), the status machine, cancellation with stock release, and the
//! `order.*` events written through the transactional outbox.
//!
//! It depends on `platform` and `contracts` only; the catalog is reached through
//! [`logicore_contracts::stock::Stock`].

pub mod domain;
pub mod error;
pub mod http;
pub mod service;
pub mod store;

use axum::Router;
use logicore_contracts::OrderId;
use logicore_platform::config::{RouteAuth, RouteConfig};
use logicore_platform::db::Migration;
use logicore_platform::http::{extract, request_context};
use logicore_platform::jobs::worker::{JobError, KindSettings, Worker};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::OrderError;
pub use service::OrdersService;

/// The service name used in routes, discovery and logs.
pub const SERVICE_NAME: &str = "orders";

/// The orders schema history.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 2026112613,
    name: "orders: orders with their lines and idempotency keys",
    sqlite: include_str!("../migrations/sqlite/2026112613_orders.sql"),
    postgres: include_str!("../migrations/postgres/2026112613_orders.sql"),
}];

/// The gateway routes of the service: every order endpoint needs a signed-in caller.
pub fn built_in_routes() -> Vec<RouteConfig> {
    vec![RouteConfig {
        prefix: "/api/v1/orders".to_owned(),
        service: SERVICE_NAME.to_owned(),
        auth: RouteAuth::Required,
        ..RouteConfig::default()
    }]
}

#[derive(OpenApi)]
#[openapi(tags((name = "orders", description = "Orders and their lifecycle")))]
struct OrdersApi;

/// Returns the orders HTTP routes and their OpenAPI description.
pub fn router(service: OrdersService) -> (Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(OrdersApi::openapi())
        .routes(routes!(http::list_orders, http::create_order))
        .routes(routes!(http::get_order))
        .routes(routes!(http::cancel_order))
        .routes(routes!(http::set_order_status))
        .with_state(service)
        .split_for_parts();
    let router = router
        .route_layer(axum::middleware::from_fn(
            request_context::tag_route_template,
        ))
        .method_not_allowed_fallback(extract::method_not_allowed)
        .fallback(extract::not_found);
    (router, api)
}

fn order_id(job: &logicore_platform::jobs::Job) -> Result<OrderId, JobError> {
    job.payload
        .get("order_id")
        .and_then(|id| id.as_str())
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| JobError::Discard("the payload has no order_id".into()))
}

fn retry(error: OrderError) -> JobError {
    JobError::Retry(error.to_string())
}

/// Registers the service's jobs: abandoning orders whose creation did not finish, and giving
/// back the stock of cancelled orders.
pub fn register_jobs(worker: &mut Worker, service: &OrdersService) {
    let abandon = service.clone();
    worker.register(service::ABANDON_JOB, KindSettings::default(), move |job| {
        let service = abandon.clone();
        async move { service.abandon(order_id(&job)?).await.map_err(retry) }
    });
    let release = service.clone();
    worker.register(service::RELEASE_JOB, KindSettings::default(), move |job| {
        let service = release.clone();
        async move { service.release_stock(order_id(&job)?).await.map_err(retry) }
    });
}
