//! The LogiCore edge: the routing table, upstreams, per-route policies, request hygiene, the
//! OpenAPI description with its offline `/docs`, and the admin listener.
//!
//! It depends on `platform` and `contracts`, never on a service crate: services are handed
//! to it as routers by the assembly in the CLI.

pub mod admin;
pub mod auth;
pub mod cache;
pub mod compression;
pub mod cors;
mod fast_gzip;
pub mod forward;
pub mod hygiene;
pub mod live;
pub mod metrics;
pub mod policy;
pub mod proxy;
pub mod ratelimit;
pub mod remote;
pub mod resilience;
pub mod routing;
pub mod slow_body;

use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use logicore_platform::http::request_context::{AccessLog, in_request_context, tag_route_template};
use tower::ServiceExt;
use utoipa_swagger_ui::SwaggerUi;

pub use admin::{GatewayAdmin, ReadinessCheck, admin_router};
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
    /// The response cache of routes with `cache.enabled`.
    pub cache: Option<cache::ResponseCache>,
    /// The rate limiter of routes with limits.
    pub limiter: ratelimit::RateLimiter,
    /// Fields masked on routes with `masking = true`.
    pub masking: logicore_platform::crypto::masking::MaskRules,
    /// Origins a browser front end may call from.
    pub cors: cors::Cors,
}

/// The public listener's service: `/health`, `/openapi.json`, `/docs`, and every routed
/// prefix; cheap to clone.
///
/// One function runs the whole edge path (request context, hygiene, compression
/// negotiation, routing, the upstream call) instead of a stack of middleware layers, each of
/// which would clone its inner service and box its future on every request.
#[derive(Clone)]
pub struct Gateway {
    inner: Arc<GatewayInner>,
}

struct GatewayInner {
    proxy: proxy::ProxyState,
    /// Answers the gateway's own paths.
    own: Router,
    max_header_bytes: usize,
    access_log: AccessLog,
    compression: Option<Arc<compression::CompressionSettings>>,
    cors: cors::Cors,
}

impl std::fmt::Debug for Gateway {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.debug_struct("Gateway").finish_non_exhaustive()
    }
}

impl Gateway {
    /// Builds the gateway over the live edge rules.
    pub fn new(
        live: live::LiveEdge,
        openapi: utoipa::openapi::OpenApi,
        settings: GatewaySettings,
    ) -> Self {
        let own = Router::new()
            .route("/health", get(logicore_platform::http::extract::health))
            .merge(SwaggerUi::new("/docs").url("/openapi.json", openapi))
            .route_layer(axum::middleware::from_fn(tag_route_template));
        Gateway {
            inner: Arc::new(GatewayInner {
                proxy: proxy::ProxyState {
                    live,
                    body_limit: settings.body_limit,
                    body_read_timeout: settings.body_read_timeout,
                    cache: settings.cache,
                    limiter: settings.limiter,
                    masking: Arc::new(settings.masking),
                },
                own,
                max_header_bytes: settings.max_header_bytes,
                access_log: AccessLog {
                    service: "gateway",
                    enabled: settings.access_log,
                },
                compression: settings.compression.map(Arc::new),
                cors: settings.cors,
            }),
        }
    }

    /// Handles one request.
    pub async fn handle(&self, request: Request) -> Response {
        let inner = &*self.inner;
        in_request_context(inner.access_log, request, |request| async move {
            let (parts, body) = request.into_parts();
            if let Err(problem) = proxy::edge_checks(&parts, inner.max_header_bytes) {
                return problem.into_response();
            }
            let origin = match inner.cors.decide(&parts.method, &parts.headers) {
                cors::Decision::Preflight(answer) => return answer,
                cors::Decision::Allowed(origin) => Some(origin),
                cors::Decision::None => None,
            };
            let mut response = self.route(parts, body).await;
            inner.cors.finish(origin.as_ref(), &mut response);
            response
        })
        .await
    }

    async fn route(&self, parts: http::request::Parts, body: axum::body::Body) -> Response {
        let inner = &*self.inner;
        let compression = inner
            .compression
            .as_ref()
            .map(|settings| (Arc::clone(settings), settings.negotiate(&parts)));
        let request = Request::from_parts(parts, body);
        if !is_own_path(request.uri().path()) {
            return proxy::proxy(&inner.proxy, request, compression).await;
        }
        let response = match inner.own.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        };
        match compression {
            Some((settings, negotiated)) => settings.apply(negotiated, response).await,
            None => response,
        }
    }
}

/// The paths the gateway answers itself rather than routing.
fn is_own_path(path: &str) -> bool {
    matches!(path, "/health" | "/openapi.json" | "/docs") || path.starts_with("/docs/")
}

impl Gateway {
    /// The gateway as a listener's service.
    pub fn into_service(self) -> logicore_platform::http::server::ListenerService {
        Arc::new(move |request| {
            let gateway = self.clone();
            Box::pin(async move { gateway.handle(request).await })
        })
    }
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
