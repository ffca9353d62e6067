//! Small extractors and fallbacks whose rejections are problem+json.

use std::collections::HashMap;
use std::str::FromStr;

use axum::extract::{FromRequestParts, Query};
use http::request::Parts;

use super::problem::{ErrorCode, Problem};

/// The query string as a map; a malformed query string is a 400 problem.
#[derive(Debug, Clone, Default)]
pub struct QueryMap(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryMap {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|query| QueryMap(query.0))
            .map_err(|err| {
                Problem::new(
                    ErrorCode::MalformedBody,
                    format!("the query string is malformed: {err}"),
                )
            })
    }
}

/// Parses a path id; anything that is not an id is simply not found (SPEC §3).
pub fn path_id<T: FromStr>(text: &str, what: &str) -> Result<T, Problem> {
    text.parse().map_err(|_| Problem::not_found(what))
}

/// Liveness: the process answers (`GET /health` on every listener that has one).
pub async fn health() -> super::Json<serde_json::Value> {
    super::Json(serde_json::json!({"status": "ok"}))
}

/// Fallback for paths no route matches.
pub async fn not_found() -> Problem {
    Problem::new(ErrorCode::NotFound, "no route matches this path")
}

/// Fallback for a known path with a method it does not take.
pub async fn method_not_allowed() -> Problem {
    Problem::new(
        ErrorCode::MethodNotAllowed,
        "this method is not allowed on this path",
    )
}
