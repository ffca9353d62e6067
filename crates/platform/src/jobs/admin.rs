//! The jobs part of the admin API: `GET /admin/jobs?state=&limit=` and
//! `POST /admin/jobs/{id}/retry`.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::{JobState, Jobs};
use crate::http::{ErrorCode, FieldError, Json, Problem, QueryMap};

/// Routes for the admin listener (merge them into its router).
pub fn router(jobs: Jobs) -> Router {
    Router::new()
        .route("/admin/jobs", get(list))
        .route("/admin/jobs/{id}/retry", post(retry))
        .with_state(jobs)
}

fn storage(err: &sqlx::Error) -> Problem {
    if crate::db::is_unavailable(err) {
        Problem::new(ErrorCode::Unavailable, "the database is unavailable").with_retry_after(5)
    } else {
        Problem::internal(err)
    }
}

async fn list(State(jobs): State<Jobs>, QueryMap(query): QueryMap) -> Result<Response, Problem> {
    let state = match query.get("state") {
        None => None,
        Some(text) => Some(JobState::parse(text).ok_or_else(|| {
            Problem::validation(vec![FieldError::new(
                "query:state",
                "must be available, running, completed or dead",
            )])
        })?),
    };
    let limit = match query.get("limit") {
        None => 50,
        Some(text) => text
            .parse::<u64>()
            .ok()
            .filter(|limit| (1..=1000).contains(limit))
            .ok_or_else(|| {
                Problem::validation(vec![FieldError::new("query:limit", "must be 1-1000")])
            })?,
    };
    let items = jobs.list(state, limit).await.map_err(|err| storage(&err))?;
    let counts: serde_json::Map<String, serde_json::Value> = jobs
        .counts()
        .await
        .map_err(|err| storage(&err))?
        .into_iter()
        .map(|(state, count)| (state, count.into()))
        .collect();
    Ok(Json(json!({"items": items, "counts": counts})).into_response())
}

async fn retry(State(jobs): State<Jobs>, Path(id): Path<String>) -> Result<Response, Problem> {
    let Ok(id) = id.parse::<uuid::Uuid>() else {
        return Err(Problem::not_found("job"));
    };
    if jobs.retry(id).await.map_err(|err| storage(&err))? {
        Ok((
            StatusCode::ACCEPTED,
            Json(json!({"id": id, "state": "available"})),
        )
            .into_response())
    } else {
        Err(Problem::new(
            ErrorCode::NotFound,
            "no dead or waiting job with this id",
        ))
    }
}
