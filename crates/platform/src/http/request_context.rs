//! Per-request context: the request id, the trace id, the access-log event.
//!
//! [`request_context`] is the outermost middleware of every listener. It takes the client's
//! `x-request-id` when it is 1–128 characters of `[A-Za-z0-9._-]` (or makes a UUIDv7), opens the
//! `request` span every log line of the request carries, answers with the id, and logs one
//! access event with the fields of SPEC §6.

use std::net::SocketAddr;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The request id header.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

tokio::task_local! {
    static CURRENT: RequestInfo;
}

/// What the code handling a request may want to know about it without threading it through;
/// held in a task-local for the duration of the request, and read by the log formatter so
/// every line logged while handling the request carries `request_id` and `trace_id`.
#[derive(Debug)]
pub struct RequestInfo {
    /// The request id answered in `x-request-id`.
    pub request_id: String,
    /// The request target, whose path is the `instance` of problem documents.
    uri: http::Uri,
    /// The W3C trace id: the client's (from `traceparent`) or made on first use.
    trace_id: std::cell::OnceCell<String>,
    /// The route template that answered, once known.
    route: std::cell::OnceCell<std::sync::Arc<str>>,
}

impl RequestInfo {
    /// Returns the trace id, making one up the first time when the client sent none.
    pub fn trace_id(&self) -> &str {
        self.trace_id
            .get_or_init(|| uuid::Uuid::new_v4().simple().to_string())
    }
}

/// Middleware for a service router (`route_layer`): records the matched template as the
/// request's route (see [`set_route`]).
pub async fn tag_route_template(request: Request, next: Next) -> Response {
    if let Some(matched) = request.extensions().get::<axum::extract::MatchedPath>() {
        set_route(&std::sync::Arc::from(matched.as_str()));
    }
    next.run(request).await
}

/// Records the route template that answers the request being handled on this task
/// (`/api/v1/products/{id}`), used as the `route` label of the request histogram; the first
/// call wins, so a service's own template beats the gateway's `<prefix>/*`.
pub fn set_route(template: &std::sync::Arc<str>) {
    let _ = CURRENT.try_with(|info| {
        let _ = info.route.set(std::sync::Arc::clone(template));
    });
}

/// The peer address of the connection, inserted by the listener.
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub SocketAddr);

/// Returns the path of the request being handled on this task, if any.
pub fn current_path() -> Option<String> {
    CURRENT.try_with(|info| info.uri.path().to_owned()).ok()
}

/// Returns the id of the request being handled on this task, if any.
pub fn current_request_id() -> Option<String> {
    CURRENT.try_with(|info| info.request_id.clone()).ok()
}

/// Calls `visit` with the request being handled on this task, if any.
pub fn with_current<T>(visit: impl FnOnce(&RequestInfo) -> T) -> Option<T> {
    CURRENT.try_with(visit).ok()
}

/// Settings of the request-context middleware of one listener.
#[derive(Debug, Clone, Copy)]
pub struct AccessLog {
    /// The role answering (`gateway`, `admin`, `catalog`, ...), logged as `service`.
    pub service: &'static str,
    /// Whether one event per request is logged.
    pub enabled: bool,
}

/// Middleware: request id, request context, request metric, access log.
pub async fn request_context(
    State(access_log): State<AccessLog>,
    request: Request,
    next: Next,
) -> Response {
    in_request_context(access_log, request, |request| next.run(request)).await
}

/// Runs `handler` for `request` inside its context: takes or makes the request id (set on
/// the request and the response), makes the request's id and trace id visible to every log
/// line written while it runs, records the request metric and writes the access line.
pub async fn in_request_context<F, Fut>(
    access_log: AccessLog,
    mut request: Request,
    handler: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let started = Instant::now();
    let request_id = accepted_request_id(request.headers()).unwrap_or_else(new_request_id);
    let trace_id = std::cell::OnceCell::new();
    if let Some(client_trace) = trace_id_from(request.headers()) {
        let _ = trace_id.set(client_trace);
    }
    let header_value = HeaderValue::from_str(&request_id).ok();
    if let Some(value) = &header_value {
        request
            .headers_mut()
            .insert(X_REQUEST_ID.clone(), value.clone());
    }
    let method = request.method().clone();
    // What only the access line needs is gathered only when it is written.
    let client = access_log.enabled.then(|| {
        let ip = request
            .extensions()
            .get::<ClientAddr>()
            .map(|addr| addr.0.ip().to_string())
            .unwrap_or_default();
        let user_agent = request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|value| value.to_str().ok())
            .unwrap_or("")
            .to_owned();
        (ip, user_agent)
    });
    let info = RequestInfo {
        request_id,
        uri: request.uri().clone(),
        trace_id,
        route: std::cell::OnceCell::new(),
    };
    CURRENT
        .scope(info, async move {
            tracing::debug!(method = %method, path = %request.uri().path(), "request started");
            let uri = client.is_some().then(|| request.uri().clone());
            let mut response = handler(request).await;
            if let Some(value) = header_value {
                response.headers_mut().insert(X_REQUEST_ID.clone(), value);
            }
            let elapsed = started.elapsed();
            CURRENT.with(|info| {
                crate::telemetry::metrics::record_request(
                    access_log.service,
                    &method,
                    info.route.get(),
                    response.status(),
                    elapsed,
                );
            });
            if let (Some((ip, user_agent)), Some(uri)) = (client, uri) {
                let duration_ms = elapsed.as_micros() as f64 / 1000.0;
                tracing::info!(
                    service = access_log.service,
                    method = %method,
                    path = %uri.path(),
                    status = response.status().as_u16(),
                    duration_ms,
                    ip = %ip,
                    user_agent = %user_agent,
                    "request"
                );
            }
            response
        })
        .await
}

/// A UUIDv7 in its hyphenated form (time-ordered, so ids sort by arrival).
fn new_request_id() -> String {
    let mut buffer = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buffer)
        .to_owned()
}

fn accepted_request_id(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(&X_REQUEST_ID)?.to_str().ok()?;
    let acceptable = (1..=128).contains(&value.len())
        && value
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
    acceptable.then(|| value.to_owned())
}

/// Returns the trace id of a valid W3C `traceparent` header.
fn trace_id_from(headers: &HeaderMap) -> Option<String> {
    let value = headers.get("traceparent")?.to_str().ok()?;
    let mut parts = value.split('-');
    let (version, trace_id, parent_id) = (parts.next()?, parts.next()?, parts.next()?);
    let hex = |text: &str, len: usize| {
        text.len() == len
            && text
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16);
    valid.then(|| trace_id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(name: &'static str, value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(name, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn client_request_ids_are_kept_when_well_formed() {
        let id = accepted_request_id(&headers("x-request-id", "abc-123_X.y"));
        assert_eq!(id.as_deref(), Some("abc-123_X.y"));
        assert_eq!(
            accepted_request_id(&headers("x-request-id", "bad id")),
            None
        );
        assert_eq!(
            accepted_request_id(&headers("x-request-id", &"a".repeat(129))),
            None
        );
        assert_eq!(accepted_request_id(&HeaderMap::new()), None);
    }

    #[test]
    fn trace_ids_come_from_valid_traceparents_only() {
        let valid = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        assert_eq!(
            trace_id_from(&headers("traceparent", valid)).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        let zero = "00-00000000000000000000000000000000-00f067aa0ba902b7-01";
        assert_eq!(trace_id_from(&headers("traceparent", zero)), None);
        assert_eq!(trace_id_from(&headers("traceparent", "garbage")), None);
    }
}
