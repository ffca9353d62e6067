//! HTTP handlers: extract, call one service function, map the result.

use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use logicore_platform::auth::{Caller, Permission};
use logicore_platform::http::problem::ProblemBody;
use logicore_platform::http::{Json, PageRequest, Problem, QueryMap, path_id};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{Attempt, Delivery, Endpoint, EndpointIn};
use crate::service::WebhooksService;

/// One page of endpoints.
#[derive(Debug, Serialize, ToSchema)]
pub struct EndpointPage {
    /// The endpoints of this page, newest first.
    pub items: Vec<Endpoint>,
    /// Cursor of the next page, or null on the last one.
    pub next_cursor: Option<String>,
}

/// One page of deliveries.
#[derive(Debug, Serialize, ToSchema)]
pub struct DeliveryPage {
    /// The deliveries of this page, newest first.
    pub items: Vec<Delivery>,
    /// Cursor of the next page, or null on the last one.
    pub next_cursor: Option<String>,
}

/// Every attempt of a delivery.
#[derive(Debug, Serialize, ToSchema)]
pub struct AttemptList {
    /// First attempt first.
    pub items: Vec<Attempt>,
}

fn caller_may_manage(caller: &Caller) -> Result<(), Problem> {
    caller.require(Permission::Shop)
}

/// Creates an endpoint; the answer carries its signing secret, shown only here and on
/// rotation. A customer's endpoint receives the events of their own orders; an admin's
/// receives every event of the listed types.
#[utoipa::path(post, path = "/api/v1/webhooks/endpoints", tag = "webhooks", request_body = EndpointIn,
    responses(
        (status = 201, description = "Created, with its secret", body = Endpoint),
        (status = 400, description = "Invalid fields (a private target is refused naming /url)", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "Not signed in", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create_endpoint(
    State(service): State<WebhooksService>,
    caller: Caller,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    caller_may_manage(&caller)?;
    let endpoint = service.create(&caller.0, body).await?;
    let mut response = (StatusCode::CREATED, Json(&endpoint)).into_response();
    if let Ok(location) =
        HeaderValue::from_str(&format!("/api/v1/webhooks/endpoints/{}", endpoint.id))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(response)
}

/// Lists the caller's endpoints (an admin sees everyone's), newest first, without secrets.
#[utoipa::path(get, path = "/api/v1/webhooks/endpoints", tag = "webhooks",
    params(
        ("limit" = Option<u32>, Query, description = "Items per page (default 50, at most 200)"),
        ("cursor" = Option<String>, Query, description = "Opaque cursor from `next_cursor`"),
    ),
    responses((status = 200, description = "One page of endpoints", body = EndpointPage)))]
pub async fn list_endpoints(
    State(service): State<WebhooksService>,
    caller: Caller,
    QueryMap(query): QueryMap,
) -> Result<Json<EndpointPage>, Problem> {
    let page = service
        .list(&caller.0, &PageRequest::from_query(&query)?)
        .await?;
    Ok(Json(EndpointPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// One endpoint, without its secret (`disabled` with a reason once a receiver answered 410).
#[utoipa::path(get, path = "/api/v1/webhooks/endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint", body = Endpoint),
        (status = 404, description = "No such endpoint of yours", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn get_endpoint(
    State(service): State<WebhooksService>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, Problem> {
    let id: Uuid = path_id(&id, "webhook endpoint")?;
    Ok(Json(service.get(&caller.0, id).await?))
}

/// Deletes an endpoint; nothing more is sent to it.
#[utoipa::path(delete, path = "/api/v1/webhooks/endpoints/{id}", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such endpoint of yours", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn delete_endpoint(
    State(service): State<WebhooksService>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<StatusCode, Problem> {
    let id: Uuid = path_id(&id, "webhook endpoint")?;
    service.delete(&caller.0, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A new signing secret; for 24 hours messages carry signatures with both.
#[utoipa::path(post, path = "/api/v1/webhooks/endpoints/{id}/rotate-secret", tag = "webhooks",
    params(("id" = String, Path, description = "Endpoint id")),
    responses(
        (status = 200, description = "The endpoint with its new secret", body = Endpoint),
        (status = 404, description = "No such endpoint of yours", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn rotate_secret(
    State(service): State<WebhooksService>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Endpoint>, Problem> {
    let id: Uuid = path_id(&id, "webhook endpoint")?;
    Ok(Json(service.rotate_secret(&caller.0, id).await?))
}

/// The deliveries of an endpoint, newest first, each with its latest attempt.
#[utoipa::path(get, path = "/api/v1/webhooks/endpoints/{id}/deliveries", tag = "webhooks",
    params(
        ("id" = String, Path, description = "Endpoint id"),
        ("limit" = Option<u32>, Query, description = "Items per page (default 50, at most 200)"),
        ("cursor" = Option<String>, Query, description = "Opaque cursor from `next_cursor`"),
    ),
    responses(
        (status = 200, description = "One page of deliveries", body = DeliveryPage),
        (status = 404, description = "No such endpoint of yours", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_deliveries(
    State(service): State<WebhooksService>,
    caller: Caller,
    Path(id): Path<String>,
    QueryMap(query): QueryMap,
) -> Result<Json<DeliveryPage>, Problem> {
    let id: Uuid = path_id(&id, "webhook endpoint")?;
    let page = service
        .deliveries(&caller.0, id, &PageRequest::from_query(&query)?)
        .await?;
    Ok(Json(DeliveryPage {
        items: page.items,
        next_cursor: page.next_cursor,
    }))
}

/// Every attempt of a delivery: status, latency, the first bytes of the answer, the error.
#[utoipa::path(get, path = "/api/v1/webhooks/endpoints/{id}/deliveries/{delivery_id}/attempts", tag = "webhooks",
    params(
        ("id" = String, Path, description = "Endpoint id"),
        ("delivery_id" = String, Path, description = "Delivery id"),
    ),
    responses(
        (status = 200, description = "The attempts", body = AttemptList),
        (status = 404, description = "No such delivery", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_attempts(
    State(service): State<WebhooksService>,
    caller: Caller,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Json<AttemptList>, Problem> {
    let id: Uuid = path_id(&id, "webhook endpoint")?;
    let delivery: Uuid = path_id(&delivery, "delivery")?;
    Ok(Json(AttemptList {
        items: service.attempts(&caller.0, id, delivery).await?,
    }))
}

/// Sends a delivered or failed delivery once more, now.
#[utoipa::path(post, path = "/api/v1/webhooks/endpoints/{id}/deliveries/{delivery_id}/retry", tag = "webhooks",
    params(
        ("id" = String, Path, description = "Endpoint id"),
        ("delivery_id" = String, Path, description = "Delivery id"),
    ),
    responses(
        (status = 202, description = "Queued", body = Delivery),
        (status = 404, description = "No such delivery", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "Already waiting for an attempt, or the endpoint is disabled", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn retry_delivery(
    State(service): State<WebhooksService>,
    caller: Caller,
    Path((id, delivery)): Path<(String, String)>,
) -> Result<Response, Problem> {
    let id: Uuid = path_id(&id, "webhook endpoint")?;
    let delivery: Uuid = path_id(&delivery, "delivery")?;
    let queued = service.retry(&caller.0, id, delivery).await?;
    Ok((StatusCode::ACCEPTED, Json(queued)).into_response())
}
