//! The catalog service: products, categories and stock levels.
//!
//! It depends on `platform` and `contracts` only. [`router`] gives the HTTP surface with its
//! OpenAPI description; [`MIGRATIONS`] the schema history; [`BUILT_IN_ROUTES`] the gateway
//! prefixes it serves.

pub mod domain;
pub mod dto;
pub mod error;
pub mod http;
pub mod internal;
pub mod service;
pub mod stock;
pub mod store;

use axum::Router;
use logicore_platform::auth::{Permission, guard_writes};
use logicore_platform::db::Migration;
use logicore_platform::http::{conditional, extract, request_context};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use error::CatalogError;
pub use service::CatalogService;

/// The service name used in routes, discovery and logs.
pub const SERVICE_NAME: &str = "catalog";

/// Path prefixes the gateway routes to this service by default.
pub const BUILT_IN_ROUTES: [&str; 2] = ["/api/v1/products", "/api/v1/product-categories"];

/// The catalog's schema history.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2026112501,
        name: "catalog: categories and products",
        sqlite: include_str!("../migrations/sqlite/2026112501_catalog.sql"),
        postgres: include_str!("../migrations/postgres/2026112501_catalog.sql"),
    },
    Migration {
        version: 2026112612,
        name: "catalog: stock reservations of orders",
        sqlite: include_str!("../migrations/sqlite/2026112612_reservations.sql"),
        postgres: include_str!("../migrations/postgres/2026112612_reservations.sql"),
    },
];

#[derive(OpenApi)]
#[openapi(tags((name = "catalog", description = "Products and product categories")))]
struct CatalogApi;

/// Returns the catalog's HTTP routes and their OpenAPI description.
///
/// Successful GETs get a weak `ETag` and honour `If-None-Match`. With
/// [`CatalogService::with_write_guard`], writes need the roles admin or catalog_manager.
pub fn router(service: CatalogService) -> (Router, utoipa::openapi::OpenApi) {
    let guard = service.guards_writes();
    let (router, api) = OpenApiRouter::with_openapi(CatalogApi::openapi())
        .routes(routes!(http::list_products, http::create_product))
        .routes(routes!(
            http::get_product,
            http::replace_product,
            http::patch_product,
            http::delete_product
        ))
        .routes(routes!(http::list_categories, http::create_category))
        .routes(routes!(
            http::get_category,
            http::replace_category,
            http::patch_category,
            http::delete_category
        ))
        .with_state(service)
        .split_for_parts();
    let router = router
        .route_layer(axum::middleware::from_fn(
            request_context::tag_route_template,
        ))
        .method_not_allowed_fallback(extract::method_not_allowed)
        .fallback(extract::not_found)
        .layer(axum::middleware::from_fn(conditional::conditional_get));
    let router = if guard {
        router.layer(axum::middleware::from_fn_with_state(
            Permission::CatalogWrite,
            guard_writes,
        ))
    } else {
        router
    };
    (router, api)
}
