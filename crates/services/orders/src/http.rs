//! HTTP handlers: extract, call one service function, map the result.

use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use logicore_contracts::OrderId;
use logicore_platform::auth::Caller;
use logicore_platform::http::problem::ProblemBody;
use logicore_platform::http::{FieldError, Json, PageRequest, Problem, QueryMap, path_id};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::domain::{Order, OrderIn, OrderStatus};
use crate::service::OrdersService;

/// The request header that makes order creation safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// One page of orders.
#[derive(Debug, Serialize, ToSchema)]
pub struct OrderPage {
    /// The orders of this page, newest first.
    pub items: Vec<Order>,
    /// Cursor of the next page, or null on the last one.
    pub next_cursor: Option<String>,
}

/// A status change (`PUT /api/v1/orders/{id}/status`).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StatusIn {
    /// `confirmed`, `shipped`, `delivered` or `cancelled`.
    #[schema(required = true)]
    pub status: Option<String>,
}

/// Places an order: reserves its stock (409 when short) and answers 201. A retry with the
/// same `Idempotency-Key` and body answers the same order (`Idempotent-Replayed: true`); the
/// same key with another body is 422.
#[utoipa::path(post, path = "/api/v1/orders", tag = "orders", request_body = OrderIn,
    params(("Idempotency-Key" = Option<String>, Header, description = "Makes a retry return the first order instead of placing another")),
    responses(
        (status = 201, description = "Placed", body = Order),
        (status = 400, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not enough stock, or the same key is still being processed", body = ProblemBody, content_type = "application/problem+json"),
        (status = 422, description = "Idempotency-Key reused with another body", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create_order(
    State(service): State<OrdersService>,
    Caller(caller): Caller,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    let key = match headers.get(IDEMPOTENCY_KEY) {
        None => None,
        Some(value) => Some(value.to_str().map_err(|_| {
            Problem::validation(vec![FieldError::new(
                "header:idempotency-key",
                "must be 1-255 visible ASCII characters",
            )])
        })?),
    };
    let created = service.create(&caller, body, key).await?;
    let mut response = (StatusCode::CREATED, Json(&created.order)).into_response();
    if let Ok(location) = HeaderValue::from_str(&format!("/api/v1/orders/{}", created.order.id)) {
        response.headers_mut().insert(header::LOCATION, location);
    }
    if created.replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Lists the caller's orders (admins and ops: everyone's), newest first.
#[utoipa::path(get, path = "/api/v1/orders", tag = "orders",
    params(
        ("limit" = Option<u32>, Query, description = "Items per page (default 50, at most 200)"),
        ("cursor" = Option<String>, Query, description = "Opaque cursor from `next_cursor`"),
    ),
    responses(
        (status = 200, description = "One page of orders", body = OrderPage),
        (status = 401, description = "Not signed in", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_orders(
    State(service): State<OrdersService>,
    Caller(caller): Caller,
    QueryMap(query): QueryMap,
) -> Result<Json<OrderPage>, Problem> {
    let page = service
        .list(&caller, &PageRequest::from_query(&query)?)
        .await?;
    Ok(Json(OrderPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// Returns one order (the caller's own; admins and ops: any). Another customer's order is
/// not found.
#[utoipa::path(get, path = "/api/v1/orders/{id}", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 404, description = "No such order", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get_order(
    State(service): State<OrdersService>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Order>, Problem> {
    let id: OrderId = path_id(&id, "order")?;
    Ok(Json(service.get(&caller, id).await?))
}

/// Cancels an order that is created or confirmed; its stock goes back.
#[utoipa::path(post, path = "/api/v1/orders/{id}/cancel", tag = "orders",
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The cancelled order", body = Order),
        (status = 404, description = "No such order", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Already shipped, delivered or cancelled", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn cancel_order(
    State(service): State<OrdersService>,
    Caller(caller): Caller,
    Path(id): Path<String>,
) -> Result<Json<Order>, Problem> {
    let id: OrderId = path_id(&id, "order")?;
    Ok(Json(service.cancel(&caller, id).await?))
}

/// Moves an order along created → confirmed → shipped → delivered, or cancels it (admins).
#[utoipa::path(put, path = "/api/v1/orders/{id}/status", tag = "orders", request_body = StatusIn,
    params(("id" = String, Path, description = "Order id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 400, description = "Unknown status", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an admin", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such order", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Not a move the status machine allows", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn set_order_status(
    State(service): State<OrdersService>,
    Caller(caller): Caller,
    Path(id): Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<Order>, Problem> {
    let id: OrderId = path_id(&id, "order")?;
    let body: StatusIn = logicore_platform::http::json::parse_object(body)?;
    let status = body
        .status
        .as_deref()
        .and_then(OrderStatus::parse)
        .filter(|status| *status != OrderStatus::Pending && *status != OrderStatus::Created)
        .ok_or_else(|| {
            Problem::validation(vec![FieldError::new(
                "/status",
                "must be one of confirmed, shipped, delivered, cancelled",
            )])
        })?;
    Ok(Json(service.set_status(&caller, id, status).await?))
}
