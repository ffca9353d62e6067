//! The LogiCore edge: the routing table, upstreams, per-route policies, request hygiene, the
//! OpenAPI description with its offline `/docs`, and the admin listener.
//!
//! It depends on `platform` and `contracts`, never on a service crate: services are handed
//! to it as routers by the assembly in the CLI.

pub mod admin;
pub mod auth;
pub mod compression;
pub mod forward;
pub mod hygiene;
pub mod live;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod remote;
pub mod routing;
pub mod slow_body;

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use logicore_platform::http::request_context::{AccessLog, request_context, tag_route_template};
use utoipa_swagger_ui::SwaggerUi;

pub use admin::{ReadinessCheck, admin_router};
pub use forward::TrustedProxies;
pub use live::{EdgeConfig, LiveEdge};
pub use remote::http_client;
pub use routing::{Route, RouteTable, RoutingError, Upstream, UpstreamResolver};

/// Gateway settings taken from `[gateway]` that hold until restart (the live part is in
/// [`live::LiveEdge`]).
#[derive(Debug, Clone)]
pub struct GatewaySettings {
    /// Largest request body accepted (413 above).
    pub body_limit: usize,
    /// Largest request header block accepted (431 above).
    pub max_header_bytes: usize,
    /// Time a client has to send its whole request body (408 after).
    pub body_read_timeout: std::time::Duration,
    /// Log one event per request.
    pub access_log: bool,
    /// Response compression; `None` when `gateway.compression.enabled = false`.
    pub compression: Option<compression::CompressionSettings>,
}

/// Returns the public router: `/health`, `/openapi.json`, `/docs`, and every routed prefix.
pub fn gateway_router(
    live: live::LiveEdge,
    openapi: utoipa::openapi::OpenApi,
    settings: GatewaySettings,
) -> Router {
    let state = proxy::ProxyState {
        live,
        body_limit: settings.body_limit,
        body_read_timeout: settings.body_read_timeout,
    };
    let mut router = Router::new()
        .route("/health", get(logicore_platform::http::extract::health))
        .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
        .route_layer(axum::middleware::from_fn(tag_route_template))
        .fallback(proxy::proxy)
        .with_state(state);
    if let Some(compression) = settings.compression {
        router = router.layer(axum::middleware::from_fn_with_state(
            Arc::new(compression),
            compression::compress,
        ));
    }
    router
        .layer(axum::middleware::from_fn_with_state(
            settings.max_header_bytes,
            proxy::edge_checks,
        ))
        .layer(axum::middleware::from_fn_with_state(
            AccessLog {
                service: "gateway",
                enabled: settings.access_log,
            },
            request_context,
        ))
}

/// Returns the platform's OpenAPI description: the services' paths under one document.
pub fn merged_openapi(parts: Vec<utoipa::openapi::OpenApi>) -> utoipa::openapi::OpenApi {
    let mut api = utoipa::openapi::OpenApiBuilder::new()
        .info(
            utoipa::openapi::InfoBuilder::new()
                .title("LogiCore API")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "The LogiCore platform API. Errors are RFC 9457 application/problem+json.",
                ))
                .build(),
        )
        .build();
    for part in parts {
        api.merge(part);
    }
    api
}
