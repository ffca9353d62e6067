//! What can go wrong in the users service, and how it answers.

use logicore_platform::db;
use logicore_platform::http::{ErrorCode, FieldError, Problem};

/// A users-service failure.
#[derive(Debug, thiserror::Error)]
pub enum UsersError {
    /// Registration with an e-mail that has an account.
    #[error("an account with this e-mail exists")]
    EmailTaken,
    /// Wrong e-mail or password (one message for both).
    #[error("invalid e-mail or password")]
    BadCredentials,
    /// A refresh token that is unknown, used, revoked or expired.
    #[error("the refresh token is not valid")]
    BadRefreshToken,
    /// Too many failed sign-ins for one account.
    #[error("too many failed sign-ins for this account; try again later")]
    TooManyAttempts,
    /// No such account.
    #[error("no such user")]
    NotFound,
    /// Invalid fields.
    #[error("invalid fields")]
    Invalid(Vec<FieldError>),
    /// The signing keys could not be used.
    #[error("signing keys: {0}")]
    Keys(String),
    /// The database failed.
    #[error("storage: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<UsersError> for Problem {
    fn from(error: UsersError) -> Problem {
        match error {
            UsersError::EmailTaken => Problem::new(ErrorCode::Conflict, error.to_string()),
            UsersError::BadCredentials | UsersError::BadRefreshToken => {
                Problem::new(ErrorCode::Unauthorized, error.to_string())
            }
            UsersError::TooManyAttempts => Problem::new(ErrorCode::RateLimited, error.to_string())
                .with_retry_after(crate::service::LOCKOUT.as_secs()),
            UsersError::NotFound => Problem::not_found("user"),
            UsersError::Invalid(errors) => Problem::validation(errors),
            UsersError::Keys(detail) => Problem::internal(&detail),
            UsersError::Storage(err) if db::is_unavailable(&err) => {
                tracing::error!(error = %err, "database unavailable");
                Problem::new(ErrorCode::Unavailable, "the database is unavailable")
                    .with_retry_after(5)
            }
            UsersError::Storage(err) => Problem::internal(&err),
        }
    }
}

impl axum::response::IntoResponse for UsersError {
    fn into_response(self) -> axum::response::Response {
        Problem::from(self).into_response()
    }
}
