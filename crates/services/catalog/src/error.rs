//! Catalog errors, each mapped once to a problem+json answer.

use logicore_platform::db;
use logicore_platform::http::{ErrorCode, FieldError, Problem};

/// Everything a catalog operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// No such product or category (`what` names which).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// Another product has this SKU.
    #[error("a product with this sku already exists")]
    SkuTaken,
    /// Another category has this slug.
    #[error("a category with this slug already exists")]
    SlugTaken,
    /// The category still has products.
    #[error("the category still has products; move or delete them first")]
    CategoryInUse,
    /// `category_id` names no category.
    #[error("no category has this id")]
    UnknownCategory,
    /// Some fields are invalid.
    #[error("invalid input")]
    Invalid(Vec<FieldError>),
    /// The database failed.
    #[error("storage error: {0}")]
    Storage(#[from] sqlx::Error),
}

impl From<CatalogError> for Problem {
    fn from(error: CatalogError) -> Problem {
        match error {
            CatalogError::NotFound(what) => Problem::not_found(what),
            CatalogError::SkuTaken | CatalogError::SlugTaken | CatalogError::CategoryInUse => {
                Problem::new(ErrorCode::Conflict, error.to_string())
            }
            CatalogError::UnknownCategory => Problem::validation(vec![FieldError::new(
                "/category_id",
                "no category has this id",
            )]),
            CatalogError::Invalid(errors) => Problem::validation(errors),
            CatalogError::Storage(err) if db::is_unavailable(&err) => {
                tracing::error!(error = %err, "database unavailable");
                Problem::new(ErrorCode::Unavailable, "the database is unavailable")
                    .with_retry_after(5)
            }
            CatalogError::Storage(err) => Problem::internal(&err),
        }
    }
}

impl axum::response::IntoResponse for CatalogError {
    fn into_response(self) -> axum::response::Response {
        Problem::from(self).into_response()
    }
}
