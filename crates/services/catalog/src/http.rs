//! HTTP handlers: extract, call one service function, map the result.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use logicore_contracts::{CategoryId, ProductId};
use logicore_platform::http::json::{merge_into, parse_object};
use logicore_platform::http::problem::ProblemBody;
use logicore_platform::http::{Json, PageRequest, Problem, QueryMap, path_id};
use serde_json::Value;

use crate::dto::{CategoryIn, CategoryOut, CategoryPage, ProductIn, ProductOut, ProductPage};
use crate::service::{CatalogService, CategoryFilter};

/// `Cache-Control` of the category listing (categories change rarely; the seed's value).
const CATEGORY_LIST_CACHE_CONTROL: &str = "public, max-age=3600";

const PRODUCTS: &str = "/api/v1/products";
const CATEGORIES: &str = "/api/v1/product-categories";

fn created(location: String, body: impl serde::Serialize) -> Response {
    let mut response = (StatusCode::CREATED, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    response
}

/// Lists categories.
#[utoipa::path(get, path = "/api/v1/product-categories", tag = "catalog",
    params(
        ("limit" = Option<u32>, Query, description = "Items per page (default 50, at most 200)"),
        ("cursor" = Option<String>, Query, description = "Opaque cursor from `next_cursor`"),
    ),
    responses(
        (status = 200, description = "One page of categories", body = CategoryPage),
        (status = 400, description = "Invalid query", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_categories(
    State(service): State<CatalogService>,
    QueryMap(query): QueryMap,
) -> Result<Response, Problem> {
    let page = service
        .list_categories(&PageRequest::from_query(&query)?)
        .await?;
    let body = CategoryPage {
        items: page.items.into_iter().map(CategoryOut::from).collect(),
        next_cursor: page.next_cursor,
    };
    let mut response = Json(body).into_response();
    response.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CATEGORY_LIST_CACHE_CONTROL),
    );
    Ok(response)
}

/// Creates a category.
#[utoipa::path(post, path = "/api/v1/product-categories", tag = "catalog", request_body = CategoryIn,
    responses(
        (status = 201, description = "Created", body = CategoryOut),
        (status = 400, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Slug taken", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create_category(
    State(service): State<CatalogService>,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    let fields = parse_object::<CategoryIn>(body)?.parse()?;
    let category = service.create_category(fields).await?;
    Ok(created(
        format!("{CATEGORIES}/{}", category.id),
        CategoryOut::from(category),
    ))
}

/// Returns one category.
#[utoipa::path(get, path = "/api/v1/product-categories/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Category id")),
    responses(
        (status = 200, description = "The category", body = CategoryOut),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 404, description = "No such category", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get_category(
    State(service): State<CatalogService>,
    Path(id): Path<String>,
) -> Result<Json<CategoryOut>, Problem> {
    let id: CategoryId = path_id(&id, "category")?;
    Ok(Json(service.get_category(id).await?.into()))
}

/// Replaces a category.
#[utoipa::path(put, path = "/api/v1/product-categories/{id}", tag = "catalog", request_body = CategoryIn,
    params(("id" = String, Path, description = "Category id")),
    responses(
        (status = 200, description = "The category", body = CategoryOut),
        (status = 400, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such category", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Slug taken", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn replace_category(
    State(service): State<CatalogService>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<CategoryOut>, Problem> {
    let id: CategoryId = path_id(&id, "category")?;
    let fields = parse_object::<CategoryIn>(body)?.parse()?;
    Ok(Json(service.replace_category(id, fields).await?.into()))
}

/// Merges a JSON merge patch (RFC 7396) into a category.
#[utoipa::path(patch, path = "/api/v1/product-categories/{id}", tag = "catalog",
    request_body(content = CategoryIn, content_type = "application/merge-patch+json"),
    params(("id" = String, Path, description = "Category id")),
    responses(
        (status = 200, description = "The category", body = CategoryOut),
        (status = 400, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such category", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn patch_category(
    State(service): State<CatalogService>,
    Path(id): Path<String>,
    Json(patch): Json<Value>,
) -> Result<Json<CategoryOut>, Problem> {
    let id: CategoryId = path_id(&id, "category")?;
    let current = service.get_category(id).await?;
    let fields = merge_into(&CategoryIn::from(&current.fields), &patch)?.parse()?;
    Ok(Json(service.replace_category(id, fields).await?.into()))
}

/// Deletes a category that has no products.
#[utoipa::path(delete, path = "/api/v1/product-categories/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Category id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such category", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "The category still has products", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn delete_category(
    State(service): State<CatalogService>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id: CategoryId = path_id(&id, "category")?;
    service.delete_category(id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Lists products, optionally of one category.
#[utoipa::path(get, path = "/api/v1/products", tag = "catalog",
    params(
        ("category" = Option<String>, Query, description = "Category id or slug"),
        ("limit" = Option<u32>, Query, description = "Items per page (default 50, at most 200)"),
        ("cursor" = Option<String>, Query, description = "Opaque cursor from `next_cursor`"),
    ),
    responses(
        (status = 200, description = "One page of products", body = ProductPage),
        (status = 400, description = "Invalid query", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_products(
    State(service): State<CatalogService>,
    QueryMap(query): QueryMap,
) -> Result<Response, Problem> {
    let filter = query
        .get("category")
        .filter(|text| !text.is_empty())
        .map(|text| CategoryFilter::parse(text));
    let page = service
        .list_products(filter, &PageRequest::from_query(&query)?)
        .await?;
    let page = Json(ProductPage {
        items: page.items.into_iter().map(ProductOut::from).collect(),
        next_cursor: page.next_cursor,
    });
    Ok(tagged(format!("{PRODUCTS_TAG}, {CATALOG_TAG}"), page))
}

/// The `Cache-Tag` of every product answer: purged when a gateway may have missed events.
pub const CATALOG_TAG: &str = "catalog";

/// The `Cache-Tag` of every product list: any product event purges them at the gateway.
pub const PRODUCTS_TAG: &str = "products";

/// The `Cache-Tag` of one product's answers.
pub fn product_tag(id: ProductId) -> String {
    format!("product:{id}")
}

/// `response` with a `Cache-Tag` for the gateway's cache (purged by product events).
fn tagged(tag: String, response: impl IntoResponse) -> Response {
    let mut response = response.into_response();
    if let Ok(value) = HeaderValue::from_str(&tag) {
        response.headers_mut().insert("cache-tag", value);
    }
    response
}

/// Creates a product.
#[utoipa::path(post, path = "/api/v1/products", tag = "catalog", request_body = ProductIn,
    responses(
        (status = 201, description = "Created", body = ProductOut),
        (status = 400, description = "Invalid fields (including an unknown category_id)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "SKU taken", body = ProblemBody, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemBody, content_type = "application/problem+json"),
        (status = 415, description = "Not JSON", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create_product(
    State(service): State<CatalogService>,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    let fields = parse_object::<ProductIn>(body)?.parse()?;
    let product = service.create_product(fields).await?;
    Ok(created(
        format!("{PRODUCTS}/{}", product.id),
        ProductOut::from(product),
    ))
}

/// Returns one product.
#[utoipa::path(get, path = "/api/v1/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = ProductOut),
        (status = 304, description = "Not modified (If-None-Match)"),
        (status = 404, description = "No such product", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get_product(
    State(service): State<CatalogService>,
    Path(id): Path<String>,
) -> Result<Response, Problem> {
    let id: ProductId = path_id(&id, "product")?;
    let product: ProductOut = service.get_product(id).await?.into();
    Ok(tagged(
        format!("{}, {CATALOG_TAG}", product_tag(id)),
        Json(product),
    ))
}

/// Replaces a product.
#[utoipa::path(put, path = "/api/v1/products/{id}", tag = "catalog", request_body = ProductIn,
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = ProductOut),
        (status = 400, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "SKU taken", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn replace_product(
    State(service): State<CatalogService>,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<ProductOut>, Problem> {
    let id: ProductId = path_id(&id, "product")?;
    let fields = parse_object::<ProductIn>(body)?.parse()?;
    Ok(Json(service.replace_product(id, fields).await?.into()))
}

/// Merges a JSON merge patch (RFC 7396) into a product.
#[utoipa::path(patch, path = "/api/v1/products/{id}", tag = "catalog",
    request_body(content = ProductIn, content_type = "application/merge-patch+json"),
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 200, description = "The product", body = ProductOut),
        (status = 400, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such product", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "SKU taken", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn patch_product(
    State(service): State<CatalogService>,
    Path(id): Path<String>,
    Json(patch): Json<Value>,
) -> Result<Json<ProductOut>, Problem> {
    let id: ProductId = path_id(&id, "product")?;
    let current = service.get_product(id).await?;
    let fields = merge_into(&ProductIn::from(&current.fields), &patch)?.parse()?;
    Ok(Json(service.replace_product(id, fields).await?.into()))
}

/// Deletes a product.
#[utoipa::path(delete, path = "/api/v1/products/{id}", tag = "catalog",
    params(("id" = String, Path, description = "Product id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such product", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn delete_product(
    State(service): State<CatalogService>,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id: ProductId = path_id(&id, "product")?;
    service.delete_product(id).await?;
    Ok(StatusCode::NO_CONTENT)
}
