//! The gateway's request path: route, enforce the policy, limit the body, call the upstream.

use std::convert::Infallible;

use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use http::{Method, header};
use logicore_platform::http::{ErrorCode, Problem};
use tower::ServiceExt;

use logicore_platform::http::request_context::{ClientAddr, set_route};

use crate::forward;
use crate::live::LiveEdge;
use crate::routing::Upstream;
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
}

/// Refuses oversized header blocks and malformed paths before anything routes them.
pub fn edge_checks(parts: &http::request::Parts, max_header_bytes: usize) -> Result<(), Problem> {
    hygiene::check_header_size(parts, max_header_bytes)?;
    hygiene::check_path(parts.uri.path())
}

/// Routes one request to its upstream.
pub async fn proxy(state: &ProxyState, request: Request) -> Response {
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
    if let Err(refusal) = policy::enforce(&route.policy, &mut parts, &edge.authenticator).await {
        return refusal;
    }
    // A request without a body (most reads) has nothing to limit or to wait for.
    let (body, body_timed_out) = if http_body::Body::is_end_stream(&body) {
        (body, slow_body::TimedOut::default())
    } else {
        match hygiene::limit_body(&parts, body, state.body_limit) {
            Ok(body) => slow_body::with_deadline(body, state.body_read_timeout),
            Err(problem) => return problem.into_response(),
        }
    };
    forward::strip_hop_by_hop(&mut parts.headers);
    if let Some(ClientAddr(peer)) = parts.extensions.get::<ClientAddr>().copied() {
        forward::set_forwarding_headers(&mut parts.headers, peer.ip(), &edge.trusted_proxies);
    }
    let is_read = parts.method == Method::GET || parts.method == Method::HEAD;
    let request = Request::from_parts(parts, body);
    let mut response = match &route.upstream {
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
    };
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
    // A local service has named its own template by now; otherwise the prefix's stands.
    set_route(&route.template);
    if let Some(cache_control) = &route.cache_control
        && is_read
        && response.status().is_success()
        && !response.headers().contains_key(header::CACHE_CONTROL)
    {
        response
            .headers_mut()
            .insert(header::CACHE_CONTROL, cache_control.clone());
    }
    response
}

async fn call_local(router: axum::Router, request: Request) -> Response {
    let result: Result<Response, Infallible> = router.oneshot(request).await;
    match result {
        Ok(response) => response,
        Err(never) => match never {},
    }
}
