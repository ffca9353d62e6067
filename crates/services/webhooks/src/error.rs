//! Webhook errors, each mapped once to a problem+json answer.

use logicore_platform::db;
use logicore_platform::http::{ErrorCode, FieldError, Problem};

/// Everything a webhook operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// No such endpoint or delivery visible to the caller.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Some fields are invalid.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// The body is not an endpoint (already a problem naming the field).
    #[error("{0:?}")]
    Rejected(Box<Problem>),
    /// The request conflicts with the resource's state.
    #[error("{0}")]
    Conflict(String),
    /// A stored secret cannot be read (keys missing or value forged).
    #[error("a stored webhook secret cannot be decrypted: {0}")]
    Secret(String),
    /// The database failed.
    #[error("storage error: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<Problem> for WebhookError {
    fn from(problem: Problem) -> WebhookError {
        WebhookError::Rejected(Box::new(problem))
    }
}

impl From<WebhookError> for Problem {
    fn from(error: WebhookError) -> Problem {
        match error {
            WebhookError::NotFound(what) => Problem::not_found(what),
            WebhookError::Invalid(errors) => Problem::validation(errors),
            WebhookError::Rejected(problem) => *problem,
            WebhookError::Conflict(_) => Problem::new(ErrorCode::Conflict, error.to_string()),
            WebhookError::Secret(_) => Problem::internal(&error),
            WebhookError::Storage(err) if db::is_unavailable(&err) => {
                tracing::error!(error = %err, "database unavailable");
                Problem::new(ErrorCode::Unavailable, "the database is unavailable")
                    .with_retry_after(5)
            }
            WebhookError::Storage(err) => Problem::internal(&err),
        }
    }
}
