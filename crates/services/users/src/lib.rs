//! The users service: accounts, sign-in with rotating refresh tokens, and the EdDSA keys that
//! sign access tokens (published as a JWKS the gateway verifies against).
//!
//! It depends on `platform` only. [`router`] gives the HTTP surface with its OpenAPI
//! description; [`MIGRATIONS`] the schema history; [`built_in_routes`] the gateway routes.

pub mod error;
pub mod http;
pub mod notifications;
pub mod oauth;
pub mod payment;
pub mod providers;
pub mod rewrap;
pub mod service;
pub mod store;

use axum::Router;
use logicore_platform::config::{Rate, RouteAuth, RouteConfig, RouteRateLimitConfig};
use logicore_platform::db::Migration;
use logicore_platform::http::{extract, request_context};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::UsersError;
pub use service::{TokenSettings, UsersService};

/// The service name used in routes, discovery and logs.
pub const SERVICE_NAME: &str = "users";

/// The users service's schema history.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2026112601,
        name: "users: accounts, signing keys, refresh tokens",
        sqlite: include_str!("../migrations/sqlite/2026112601_users.sql"),
        postgres: include_str!("../migrations/postgres/2026112601_users.sql"),
    },
    Migration {
        version: 2026112602,
        name: "users: encrypted SSN",
        sqlite: include_str!("../migrations/sqlite/2026112602_users_ssn.sql"),
        postgres: include_str!("../migrations/postgres/2026112602_users_ssn.sql"),
    },
    Migration {
        version: 2026112603,
        name: "users: payment methods",
        sqlite: include_str!("../migrations/sqlite/2026112603_payment_methods.sql"),
        postgres: include_str!("../migrations/postgres/2026112603_payment_methods.sql"),
    },
    Migration {
        version: 2026112604,
        name: "users: OAuth clients and codes, revoked tokens, verified e-mail",
        sqlite: include_str!("../migrations/sqlite/2026112604_oauth.sql"),
        postgres: include_str!("../migrations/postgres/2026112604_oauth.sql"),
    },
    Migration {
        version: 2026112605,
        name: "users: sign-in through external providers",
        sqlite: include_str!("../migrations/sqlite/2026112605_providers.sql"),
        postgres: include_str!("../migrations/postgres/2026112605_providers.sql"),
    },
];

/// The gateway routes this service brings: sign-in and registration limited per client IP
/// by default, `/api/v1/users` for signed-in callers only, `/api/v1/admin/users` for admins
/// (checked again by the handlers).
pub fn built_in_routes() -> Vec<RouteConfig> {
    let route = |prefix: &str, auth: RouteAuth| RouteConfig {
        prefix: prefix.to_owned(),
        service: SERVICE_NAME.to_owned(),
        auth,
        ..RouteConfig::default()
    };
    vec![
        sign_in_limited(route("/api/v1/auth", RouteAuth::None)),
        route("/api/v1/users", RouteAuth::Required),
        admins_only(route("/api/v1/admin/users", RouteAuth::Required)),
        route("/.well-known/jwks.json", RouteAuth::None),
        route("/.well-known/oauth-authorization-server", RouteAuth::None),
        route("/.well-known/openid-configuration", RouteAuth::None),
        // The token, revocation and introspection endpoints authenticate clients themselves;
        // a per-IP limit keeps configured (human-chosen) client secrets from being guessed.
        RouteConfig {
            rate_limit: RouteRateLimitConfig {
                per_ip: Some(Rate {
                    count: 600,
                    period: std::time::Duration::from_secs(60),
                }),
                per_user: None,
            },
            ..route("/oauth", RouteAuth::None)
        },
        sign_in_limited(route("/oauth/authorize", RouteAuth::None)),
        admins_only(route("/api/v1/admin/oauth-clients", RouteAuth::Required)),
    ]
}

/// Sign-in and registration: 30 requests a minute per client IP.
fn sign_in_limited(route: RouteConfig) -> RouteConfig {
    RouteConfig {
        rate_limit: RouteRateLimitConfig {
            per_ip: Some(Rate {
                count: 30,
                period: std::time::Duration::from_secs(60),
            }),
            per_user: None,
        },
        ..route
    }
}

fn admins_only(route: RouteConfig) -> RouteConfig {
    RouteConfig {
        roles: vec!["admin".to_owned()],
        ..route
    }
}

#[derive(OpenApi)]
#[openapi(tags(
    (name = "users", description = "Accounts, sign-in and token keys"),
    (name = "oauth", description = "OAuth 2.1 authorization server and OpenID Connect provider"),
))]
struct UsersApi;

/// Returns the users service's HTTP routes and their OpenAPI description.
pub fn router(service: UsersService) -> (Router, utoipa::openapi::OpenApi) {
    let verifier = service.clone();
    let oauth_routes = OpenApiRouter::new()
        .routes(routes!(
            oauth::http::authorize_page,
            oauth::http::authorize_submit
        ))
        .routes(routes!(oauth::http::token))
        .routes(routes!(oauth::http::revoke))
        .routes(routes!(oauth::http::introspect))
        .routes(routes!(oauth::http::userinfo, oauth::http::userinfo_post))
        .routes(routes!(oauth::http::metadata))
        .routes(routes!(oauth::http::openid_configuration))
        .routes(routes!(oauth::http::register_client))
        .with_state(oauth::OAuthServer::new(service.clone()));
    let provider_routes = OpenApiRouter::new()
        .routes(routes!(providers::start))
        .routes(routes!(providers::callback))
        .with_state(providers::Providers::new(
            &service.settings().providers,
            oauth::OAuthServer::new(service.clone()),
        ));
    let (router, api) = OpenApiRouter::with_openapi(UsersApi::openapi())
        .routes(routes!(http::register))
        .routes(routes!(http::login))
        .routes(routes!(http::refresh))
        .routes(routes!(http::logout))
        .routes(routes!(http::me, http::patch_me))
        .routes(routes!(http::put_payment_method))
        .routes(routes!(http::list_users, http::create_user))
        .routes(routes!(http::set_roles))
        .routes(routes!(http::jwks))
        .with_state(service)
        .merge(oauth_routes)
        .merge(provider_routes)
        .split_for_parts();
    let router = router
        .route_layer(axum::middleware::from_fn(
            request_context::tag_route_template,
        ))
        .method_not_allowed_fallback(extract::method_not_allowed)
        .fallback(extract::not_found)
        .layer(axum::middleware::from_fn_with_state(verifier, own_tokens));
    (router, api)
}

/// When no gateway handed over a verified caller (the users role on its own), a bearer token
/// this service issued identifies the caller.
async fn own_tokens(
    axum::extract::State(service): axum::extract::State<UsersService>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use std::sync::Arc;

    use logicore_platform::auth::Principal;
    if request.extensions().get::<Arc<Principal>>().is_none() {
        let token = logicore_platform::auth::bearer_token(request.headers());
        if let Some(principal) = token.and_then(|token| service.verify(token)) {
            request.extensions_mut().insert(Arc::new(principal));
        }
    }
    next.run(request).await
}
