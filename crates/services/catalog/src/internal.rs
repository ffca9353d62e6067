//! The catalog's internal API, for other services of the platform when roles run apart:
//! stock reservations of orders (the wire types are in `contracts::stock`). Every call needs
//! a service token; the gateway never routes here.

use axum::Router;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::put;
use http::{HeaderValue, StatusCode, header};
use logicore_contracts::OrderId;
use logicore_contracts::stock::{RESERVATIONS_PATH, ReserveRequest, ReserveResponse, StockError};
use logicore_platform::auth::{ServiceTokens, require_service_token};
use logicore_platform::http::{ErrorCode, FieldError, Json, Problem, ProblemBody, path_id};
use serde::Serialize;

use crate::CatalogService;

/// The internal routes; `tokens` checks the callers (`None`: every call is refused).
pub fn router(service: CatalogService, tokens: Option<ServiceTokens>) -> Router {
    Router::new()
        .route(
            &format!("{RESERVATIONS_PATH}/{{order_id}}"),
            put(reserve).delete(release),
        )
        .with_state(service)
        .layer(axum::middleware::from_fn_with_state(
            tokens,
            require_service_token,
        ))
}

/// A refused reservation: the problem, and the [`StockError`] for the calling service.
#[derive(Serialize)]
struct Refusal {
    #[serde(flatten)]
    problem: ProblemBody,
    stock_error: StockError,
}

fn refusal(error: StockError) -> Response {
    let problem = match &error {
        StockError::UnknownProduct { line } => Problem::validation(vec![FieldError::new(
            format!("/lines/{line}/product_id"),
            "no product has this id",
        )]),
        StockError::Insufficient { line, available } => Problem::new(
            ErrorCode::Conflict,
            format!("not enough stock for /lines/{line}: {available} left"),
        ),
        StockError::Unavailable { message } => return Problem::internal(message).into_response(),
    };
    let body = Refusal {
        problem: problem.body(),
        stock_error: error,
    };
    let mut response = (
        problem.code.status(),
        serde_json::to_vec(&body).unwrap_or_default(),
    )
        .into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

async fn reserve(
    State(service): State<CatalogService>,
    Path(order): Path<String>,
    Json(request): Json<ReserveRequest>,
) -> Response {
    let order: OrderId = match path_id(&order, "order") {
        Ok(order) => order,
        Err(problem) => return problem.into_response(),
    };
    let mut errors = Vec::new();
    if request.lines.is_empty() {
        errors.push(FieldError::new("/lines", "must list at least one line"));
    }
    for (index, line) in request.lines.iter().enumerate() {
        if line.quantity == 0 {
            errors.push(FieldError::new(
                format!("/lines/{index}/quantity"),
                "must be at least 1",
            ));
        }
    }
    if !errors.is_empty() {
        return Problem::validation(errors).into_response();
    }
    match service.reserve_stock(order, &request.lines).await {
        Ok(lines) => Json(ReserveResponse { lines }).into_response(),
        Err(error) => refusal(error),
    }
}

async fn release(State(service): State<CatalogService>, Path(order): Path<String>) -> Response {
    let order: OrderId = match path_id(&order, "order") {
        Ok(order) => order,
        Err(problem) => return problem.into_response(),
    };
    match service.release_stock(order).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(error) => refusal(error),
    }
}
