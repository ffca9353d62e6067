//! RFC 9457 problem details: the one error shape every LogiCore endpoint answers with.

use axum::response::{IntoResponse, Response};
use http::{HeaderValue, StatusCode, header};
use serde::Serialize;

use super::request_context;

/// Media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The error codes of SPEC §3; `type` is `/problems/<code>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// 400: the request is well-formed JSON but some fields are wrong.
    Validation,
    /// 400: the body is not JSON, or the path or query is malformed.
    MalformedBody,
    /// 415: the body has a content type the endpoint does not take.
    UnsupportedMediaType,
    /// 413: the body is over the limit.
    PayloadTooLarge,
    /// 408: the client did not send its request in time.
    RequestTimeout,
    /// 404: no such resource (or route).
    NotFound,
    /// 405: the route exists but not for this method.
    MethodNotAllowed,
    /// 409: the request conflicts with the current state.
    Conflict,
    /// 422: an `Idempotency-Key` was reused with a different request body.
    IdempotencyKeyReused,
    /// 401: no valid credentials.
    Unauthorized,
    /// 403: valid credentials without the needed role.
    Forbidden,
    /// 429: too many requests.
    RateLimited,
    /// 431: the header block is over the limit.
    HeadersTooLarge,
    /// 502: the upstream refused or broke the connection.
    BadGateway,
    /// 503: breaker open or no healthy instance.
    UpstreamUnavailable,
    /// 504: the upstream did not answer in time.
    UpstreamTimeout,
    /// 503: a dependency such as the database is down.
    Unavailable,
    /// 500: a bug; details are logged, never sent.
    Internal,
}

impl ErrorCode {
    /// Returns the HTTP status of this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::Validation | ErrorCode::MalformedBody => StatusCode::BAD_REQUEST,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ErrorCode::BadGateway => StatusCode::BAD_GATEWAY,
            ErrorCode::UpstreamUnavailable | ErrorCode::Unavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ErrorCode::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Returns the code as it appears in `type` (`/problems/<code>`).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Validation => "validation",
            ErrorCode::MalformedBody => "malformed-body",
            ErrorCode::UnsupportedMediaType => "unsupported-media-type",
            ErrorCode::PayloadTooLarge => "payload-too-large",
            ErrorCode::RequestTimeout => "request-timeout",
            ErrorCode::NotFound => "not-found",
            ErrorCode::MethodNotAllowed => "method-not-allowed",
            ErrorCode::Conflict => "conflict",
            ErrorCode::IdempotencyKeyReused => "idempotency-key-reused",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate-limited",
            ErrorCode::HeadersTooLarge => "headers-too-large",
            ErrorCode::BadGateway => "bad-gateway",
            ErrorCode::UpstreamUnavailable => "upstream-unavailable",
            ErrorCode::UpstreamTimeout => "upstream-timeout",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Internal => "internal",
        }
    }

    /// Returns a short human title.
    pub fn title(self) -> &'static str {
        match self {
            ErrorCode::Validation => "Invalid request",
            ErrorCode::MalformedBody => "Malformed request",
            ErrorCode::UnsupportedMediaType => "Unsupported media type",
            ErrorCode::PayloadTooLarge => "Payload too large",
            ErrorCode::RequestTimeout => "Request timeout",
            ErrorCode::NotFound => "Not found",
            ErrorCode::MethodNotAllowed => "Method not allowed",
            ErrorCode::Conflict => "Conflict",
            ErrorCode::IdempotencyKeyReused => "Idempotency key reused",
            ErrorCode::Unauthorized => "Unauthorized",
            ErrorCode::Forbidden => "Forbidden",
            ErrorCode::RateLimited => "Too many requests",
            ErrorCode::HeadersTooLarge => "Request headers too large",
            ErrorCode::BadGateway => "Bad gateway",
            ErrorCode::UpstreamUnavailable => "Upstream unavailable",
            ErrorCode::UpstreamTimeout => "Upstream timeout",
            ErrorCode::Unavailable => "Service unavailable",
            ErrorCode::Internal => "Internal server error",
        }
    }
}

/// One invalid field: `field` is a JSON Pointer into the body or `query:<name>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// JSON Pointer (`/items/0/quantity`) or `query:<name>`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// Creates a field error.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// An error answer; renders as `application/problem+json`.
#[derive(Debug, Clone)]
pub struct Problem {
    /// The error code (decides status and `type`).
    pub code: ErrorCode,
    /// Human explanation of this occurrence.
    pub detail: String,
    /// Invalid fields, for validation errors.
    pub errors: Vec<FieldError>,
    /// `Retry-After` seconds, for 429 and 503.
    pub retry_after: Option<u64>,
}

/// The problem+json document, as documented in the OpenAPI description.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ProblemBody {
    /// `/problems/<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    /// Short title of the code.
    pub title: String,
    /// HTTP status.
    pub status: u16,
    /// What happened.
    pub detail: String,
    /// The request path this occurred on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Invalid fields (validation errors only).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

impl Problem {
    /// Creates a problem with a detail message.
    pub fn new(code: ErrorCode, detail: impl Into<String>) -> Self {
        Problem {
            code,
            detail: detail.into(),
            errors: Vec::new(),
            retry_after: None,
        }
    }

    /// A 400 validation problem listing the invalid fields.
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [only] => format!("{}: {}", only.field, only.message),
            _ => format!("{} fields are invalid", errors.len()),
        };
        Problem {
            errors,
            ..Problem::new(ErrorCode::Validation, detail)
        }
    }

    /// A 404 for a resource kind (`"product"`).
    pub fn not_found(what: &str) -> Self {
        Problem::new(ErrorCode::NotFound, format!("{what} not found"))
    }

    /// A 500 whose cause is logged here and never sent to the client.
    pub fn internal(cause: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %cause, "internal error");
        Problem::new(
            ErrorCode::Internal,
            "the server failed to handle the request",
        )
    }

    /// Adds `Retry-After`.
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// Returns the JSON document, with `instance` set to the current request path.
    pub fn body(&self) -> ProblemBody {
        ProblemBody {
            problem_type: format!("/problems/{}", self.code.as_str()),
            title: self.code.title().to_owned(),
            status: self.code.status().as_u16(),
            detail: self.detail.clone(),
            instance: request_context::current_path(),
            errors: self.errors.clone(),
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self.body()).unwrap_or_default();
        let mut response = (self.code.status(), body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(seconds) = self.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.detail)
    }
}

impl std::error::Error for Problem {}
