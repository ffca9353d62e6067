//! The webhooks service: endpoints registered by customers and admins, a consumer that fans
//! every domain event out to the endpoints that asked for it, and durable deliveries signed
//! per the Standard Webhooks specification, retried on a schedule, logged attempt by
//! attempt, and sent only to public addresses (the SSRF guard).
//!
//! It depends on `platform` only.

pub mod consumer;
pub mod delivery;
pub mod domain;
pub mod error;
pub mod guard;
pub mod http;
pub mod service;
pub mod signature;
pub mod store;

use axum::Router;
use logicore_platform::config::{RouteAuth, RouteConfig};
use logicore_platform::db::Migration;
use logicore_platform::http::{extract, request_context};
use logicore_platform::jobs::worker::{KindSettings, Worker};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use consumer::FanOut;
pub use error::WebhookError;
pub use service::{WebhookSettings, WebhooksService};

/// The service name used in routes, discovery and logs.
pub const SERVICE_NAME: &str = "webhooks";

/// The webhooks schema history.
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 2026112617,
    name: "webhooks: endpoints, deliveries and their attempts",
    sqlite: include_str!("../migrations/sqlite/2026112617_webhooks.sql"),
    postgres: include_str!("../migrations/postgres/2026112617_webhooks.sql"),
}];

/// The gateway routes of the service: every endpoint needs a signed-in caller.
pub fn built_in_routes() -> Vec<RouteConfig> {
    vec![RouteConfig {
        prefix: "/api/v1/webhooks".to_owned(),
        service: SERVICE_NAME.to_owned(),
        auth: RouteAuth::Required,
        ..RouteConfig::default()
    }]
}

#[derive(OpenApi)]
#[openapi(tags((name = "webhooks", description = "Webhook endpoints and their deliveries")))]
struct WebhooksApi;

/// Returns the webhooks HTTP routes and their OpenAPI description.
pub fn router(service: WebhooksService) -> (Router, utoipa::openapi::OpenApi) {
    let (router, api) = OpenApiRouter::with_openapi(WebhooksApi::openapi())
        .routes(routes!(http::list_endpoints, http::create_endpoint))
        .routes(routes!(http::get_endpoint, http::delete_endpoint))
        .routes(routes!(http::rotate_secret))
        .routes(routes!(http::list_deliveries))
        .routes(routes!(http::list_attempts))
        .routes(routes!(http::retry_delivery))
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

/// Registers the delivery job.
pub fn register_jobs(worker: &mut Worker, service: &WebhooksService) {
    let service = service.clone();
    let settings = KindSettings {
        backoff: consumer::NO_BACKOFF,
    };
    worker.register(service::DELIVER_JOB, settings, move |job| {
        let service = service.clone();
        async move { service.deliver(&job).await }
    });
}
