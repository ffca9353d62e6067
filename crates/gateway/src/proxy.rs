//! The gateway's request path: route, enforce the policy, limit the body, call the upstream.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{Method, header};
use logicore_platform::http::{ErrorCode, Problem};
use tower::ServiceExt;

use logicore_platform::http::request_context::{ClientAddr, set_route};

use logicore_platform::crypto::masking::MaskRules;

use crate::cache::{self, CacheKey, CacheResult, ResponseCache};
use crate::compression::{CompressionSettings, Negotiated};
use crate::forward;
use crate::live::{EdgeConfig, LiveEdge};
use crate::ratelimit::{self, RateLimiter};
use crate::routing::{Route, Upstream};
use crate::{hygiene, policy, slow_body};

/// What the proxy handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct ProxyState {
    /// Routes, issuers and trusted proxies (replaced on reload).
    pub live: LiveEdge,
    /// Largest request body accepted.
    pub body_limit: usize,
    /// Time a client has to send its whole body.
    pub body_read_timeout: std::time::Duration,
    /// The response cache of routes with `cache.enabled` (kept across reloads).
    pub cache: Option<ResponseCache>,
    /// Checks the rate limits of routes that have some (kept across reloads).
    pub limiter: RateLimiter,
    /// Field rules of routes with `masking = true`.
    pub masking: Arc<MaskRules>,
}

/// Refuses oversized header blocks and malformed paths before anything routes them.
pub fn edge_checks(parts: &http::request::Parts, max_header_bytes: usize) -> Result<(), Problem> {
    hygiene::check_header_size(parts, max_header_bytes)?;
    hygiene::check_path(parts.uri.path())
}

/// Response compression as the request negotiated it.
pub type Compression = Option<(Arc<CompressionSettings>, Negotiated)>;

/// Routes one request to its upstream; the response is compressed as negotiated.
pub async fn proxy(state: &ProxyState, request: Request, compression: Compression) -> Response {
    let (mut parts, body) = request.into_parts();
    let edge = state.live.current();
    let Some(route) = edge.table.find(parts.uri.path()) else {
        return Problem::new(ErrorCode::NotFound, "no route matches this path").into_response();
    };
    if route
        .methods
        .as_ref()
        .is_some_and(|methods| !methods.contains(&parts.method))
    {
        return Problem::new(
            ErrorCode::MethodNotAllowed,
            "this route does not take this method",
        )
        .into_response();
    }
    let principal = match policy::enforce(&route.policy, &mut parts, &edge.authenticator).await {
        Ok(principal) => principal,
        Err(refusal) => return refusal,
    };
    let route = Arc::clone(route);
    let limits = &route.rate_limit;
    let verdict = if limits.per_ip.is_some() || limits.per_user.is_some() {
        let peer = parts
            .extensions
            .get::<ClientAddr>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |addr| addr.0.ip());
        let ip = forward::client_ip(&parts.headers, peer, &edge.trusted_proxies);
        let user = principal
            .as_ref()
            .map(|principal| principal.subject.as_str());
        match ratelimit::check_route(&state.limiter, &route.prefix, limits, ip, user).await {
            Ok(verdict) => verdict,
            Err(refusal) => return refusal,
        }
    } else {
        None
    };
    // Decided before any header is stripped: a client cannot hide its credentials from the
    // cache by naming `Authorization` in `Connection`.
    let credentials = principal.is_some() || parts.headers.contains_key(header::AUTHORIZATION);
    let mut response = routed(state, &edge, route, parts, body, compression, credentials).await;
    if let Some(verdict) = verdict {
        verdict.set_headers(&mut response);
    }
    response
}

/// Sends an admitted request on: through the cache for cached reads, else to the upstream.
async fn routed(
    state: &ProxyState,
    edge: &Arc<EdgeConfig>,
    route: Arc<Route>,
    mut parts: http::request::Parts,
    body: Body,
    compression: Compression,
    credentials: bool,
) -> Response {
    // A local service names its own template; otherwise the prefix's stands.
    let bodiless = http_body::Body::is_end_stream(&body);
    forward::strip_hop_by_hop(&mut parts.headers);
    if route.masking {
        // Masking needs the plain JSON: ask the upstream not to compress it.
        parts.headers.insert(
            header::ACCEPT_ENCODING,
            http::HeaderValue::from_static("identity"),
        );
    }
    let is_read = parts.method == Method::GET || parts.method == Method::HEAD;
    if let (Some(cache), Some(ttl), true, true) = (&state.cache, route.cache, is_read, bodiless) {
        let origin = Origin {
            route: Arc::clone(&route),
            edge: Arc::clone(edge),
            compression,
            masking: Arc::clone(&state.masking),
        };
        let response = cached(cache, origin, parts, ttl, credentials).await;
        set_route(&route.template);
        return response;
    }
    set_forwarding_headers(&mut parts, edge);

    // A request without a body (most reads) has nothing to limit or to wait for.
    let (body, body_timed_out) = if bodiless {
        (body, slow_body::TimedOut::default())
    } else {
        match hygiene::limit_body(&parts, body, state.body_limit) {
            Ok(body) => slow_body::with_deadline(body, state.body_read_timeout),
            Err(problem) => return problem.into_response(),
        }
    };
    let response = call_upstream(&route, Request::from_parts(parts, body)).await;
    if body_timed_out.happened() {
        let mut refused = Problem::new(
            ErrorCode::RequestTimeout,
            "the request body did not arrive in time",
        )
        .into_response();
        refused
            .headers_mut()
            .insert(header::CONNECTION, http::HeaderValue::from_static("close"));
        return refused;
    }
    set_route(&route.template);
    let response = mask(&route, &state.masking, response).await;
    finish(&route, is_read, response, &compression).await
}

/// Sets the forwarding headers for the peer of the connection.
fn set_forwarding_headers(parts: &mut http::request::Parts, edge: &EdgeConfig) {
    if let Some(ClientAddr(peer)) = parts.extensions.get::<ClientAddr>().copied() {
        forward::set_forwarding_headers(&mut parts.headers, peer.ip(), &edge.trusted_proxies);
    }
}

/// What a cached route fetches from; cheap to clone.
#[derive(Clone)]
struct Origin {
    route: Arc<Route>,
    edge: Arc<EdgeConfig>,
    compression: Compression,
    masking: Arc<MaskRules>,
}

impl Origin {
    /// Calls the upstream for a request like `parts` (with its forwarding headers).
    async fn fetch(&self, parts: &http::request::Parts) -> Response {
        let mut request = replay(parts);
        if let Some(client) = parts.extensions.get::<ClientAddr>().copied() {
            request.extensions_mut().insert(client);
        }
        let (mut request_parts, body) = request.into_parts();
        set_forwarding_headers(&mut request_parts, &self.edge);
        let request = Request::from_parts(request_parts, body);
        let response = call_upstream(&self.route, request).await;
        let response = mask(&self.route, &self.masking, response).await;
        finish(&self.route, true, response, &self.compression).await
    }
}

/// Serves a bodiless read of a cached route through the response cache. Forwarding headers
/// are made only when the upstream is called, not for hits.
async fn cached(
    cache: &ResponseCache,
    origin: Origin,
    parts: http::request::Parts,
    ttl: std::time::Duration,
    credentials: bool,
) -> Response {
    if credentials || cache::bypasses(&parts.headers) {
        let mut response = origin.fetch(&parts).await;
        response.headers_mut().remove(&cache::CACHE_TAG);
        cache::tag(&mut response, CacheResult::Bypass);
        return response;
    }
    let key = CacheKey {
        method: parts.method.clone(),
        target: parts.uri.path_and_query().map_or_else(
            || parts.uri.path().to_owned(),
            |target| target.as_str().to_owned(),
        ),
        coding: origin
            .compression
            .as_ref()
            .map_or("identity", |(_, negotiated)| negotiated.coding().token()),
    };
    let template = Arc::new(parts);
    let fetch = {
        let template = Arc::clone(&template);
        move || {
            let (origin, template) = (origin.clone(), Arc::clone(&template));
            async move { origin.fetch(&template).await }
        }
    };
    cache.serve(key, &template.headers, ttl, fetch).await
}

/// A bodiless request like the one `parts` describe (extensions are not carried over).
fn replay(parts: &http::request::Parts) -> Request {
    let mut request = Request::new(Body::empty());
    *request.method_mut() = parts.method.clone();
    *request.uri_mut() = parts.uri.clone();
    *request.version_mut() = parts.version;
    *request.headers_mut() = parts.headers.clone();
    request
}

/// Calls the route's upstream: the in-process router or the remote pool.
async fn call_upstream(route: &Route, request: Request) -> Response {
    match &route.upstream {
        Upstream::Local(router) => {
            let started = std::time::Instant::now();
            let response = call_local(router.clone(), request).await;
            crate::metrics::record_upstream(
                &route.service,
                crate::metrics::UpstreamOutcome::Status(response.status()),
                started.elapsed(),
            );
            response
        }
        Upstream::Remote(pool) => pool.forward(request, route.call_policy()).await,
    }
}

/// Largest JSON body masked; a larger one on a masked route is refused rather than leaked.
const MAX_MASKED_BYTES: usize = 8 << 20;

/// Masks sensitive fields of a JSON response on routes with `masking = true` (a second line
/// of defence behind the services).
async fn mask(route: &Route, rules: &MaskRules, response: Response) -> Response {
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            let essence = value.split(';').next().unwrap_or("").trim();
            essence == "application/json" || essence.ends_with("+json")
        });
    if !route.masking {
        return response;
    }
    if response.headers().contains_key(header::CONTENT_ENCODING) {
        // The upstream compressed anyway: it cannot be checked, so it does not go out.
        return Problem::new(
            ErrorCode::BadGateway,
            "the upstream sent an encoded response on a masked route",
        )
        .into_response();
    }
    if !is_json {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match http_body_util::BodyExt::collect(http_body_util::Limited::new(
        body,
        MAX_MASKED_BYTES,
    ))
    .await
    {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return Problem::new(
                ErrorCode::BadGateway,
                "the upstream response could not be read for masking",
            )
            .into_response();
        }
    };
    let Ok(mut document) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Response::from_parts(parts, Body::from(bytes));
    };
    let masked = rules.apply(&mut document);
    if masked == 0 {
        return Response::from_parts(parts, Body::from(bytes));
    }
    crate::metrics::record_masked(masked);
    let body = serde_json::to_vec(&document).unwrap_or_default();
    parts.headers.remove(header::ETAG);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, http::HeaderValue::from(body.len()));
    Response::from_parts(parts, Body::from(body))
}

/// The route's `Cache-Control` on successful reads that have none, then compression.
async fn finish(
    route: &Route,
    is_read: bool,
    mut response: Response,
    compression: &Compression,
) -> Response {
    if let Some(cache_control) = &route.cache_control
        && is_read
        && response.status().is_success()
        && !response.headers().contains_key(header::CACHE_CONTROL)
    {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, cache_control.clone());
    }
    match compression {
        Some((settings, negotiated)) => settings.apply(*negotiated, response).await,
        None => response,
    }
}

async fn call_local(router: axum::Router, request: Request) -> Response {
    let result: Result<Response, Infallible> = router.oneshot(request).await;
    match result {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
