//! Order errors, each mapped once to a problem+json answer.

use logicore_platform::db;
use logicore_platform::http::{ErrorCode, FieldError, Problem};

/// Everything an order operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum OrderError {
    /// No such order visible to the caller.
    #[error("order not found")]
    NotFound,
    /// Some fields are invalid.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// The request conflicts with the order's state or the stock.
    #[error("{0}")]
    Conflict(String),
    /// The `Idempotency-Key` was used before with another body.
    #[error("this Idempotency-Key was used with a different request body")]
    KeyReused,
    /// The caller's roles do not allow it.
    #[error("your roles do not allow this")]
    Forbidden,
    /// The catalog could not be reached.
    #[error("the catalog is unavailable: {0}")]
    CatalogUnavailable(String),
    /// The body is not an order request (already a problem naming the field).
    #[error("{0:?}")]
    Rejected(Box<Problem>),
    /// The database failed.
    #[error("storage error: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<OrderError> for Problem {
    fn from(error: OrderError) -> Problem {
        match error {
            OrderError::NotFound => Problem::not_found("order"),
            OrderError::Invalid(errors) => Problem::validation(errors),
            OrderError::Rejected(problem) => *problem,
            OrderError::Conflict(_) => Problem::new(ErrorCode::Conflict, error.to_string()),
            OrderError::KeyReused => {
                Problem::new(ErrorCode::IdempotencyKeyReused, error.to_string())
            }
            OrderError::Forbidden => Problem::new(ErrorCode::Forbidden, error.to_string()),
            OrderError::CatalogUnavailable(ref cause) => {
                tracing::error!(error = %cause, "catalog unavailable");
                Problem::new(ErrorCode::Unavailable, "the catalog is unavailable")
                    .with_retry_after(5)
            }
            OrderError::Storage(err) if db::is_unavailable(&err) => {
                tracing::error!(error = %err, "database unavailable");
                Problem::new(ErrorCode::Unavailable, "the database is unavailable")
                    .with_retry_after(5)
            }
            OrderError::Storage(err) => Problem::internal(&err),
        }
    }
}

impl axum::response::IntoResponse for OrderError {
    fn into_response(self) -> axum::response::Response {
        Problem::from(self).into_response()
    }
}
