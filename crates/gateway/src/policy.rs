//! The per-route policy, run before a request reaches its upstream.
//!
//! Client-sent identity headers are always stripped: upstreams must never believe identity
//! that came from the network. A bearer token is verified (`auth = "optional"` or
//! `"required"`); a present but invalid token is refused even on optional routes, since a
//! client that sends one expects it to count. `roles` need one of the listed roles (403), and
//! imply authentication. The verified principal goes to in-process services as a request
//! extension and to every upstream as informational `x-user-id` / `x-user-roles`.

use std::sync::Arc;

use axum::response::{IntoResponse, Response};
use http::request::Parts;
use http::{HeaderValue, header};
use logicore_platform::config::RouteAuth;
use logicore_platform::http::{ErrorCode, Problem};
use logicore_platform::telemetry::metrics::HandleCache;

use crate::auth::{AuthError, Authenticator, Principal};
use crate::routing::RoutePolicy;

/// Headers that carry identity to upstreams; only the gateway may set them.
const IDENTITY_HEADER_PREFIX: &str = "x-user-";

/// Counter of authentication outcomes.
pub const AUTH_OUTCOMES: &str = "gateway_auth_total";

/// Applies `policy`: strips client identity headers, verifies the token, checks roles.
pub async fn enforce(
    policy: &RoutePolicy,
    parts: &mut Parts,
    authenticator: &Authenticator,
) -> Result<Option<Arc<Principal>>, Response> {
    strip_identity_headers(parts);
    if policy.auth == RouteAuth::None {
        return Ok(None);
    }
    let needs_identity = policy.auth == RouteAuth::Required || !policy.roles.is_empty();
    let Some(token) = bearer_token(parts) else {
        if needs_identity {
            record("none", "missing");
            return Err(unauthorized("this route needs a bearer token", None));
        }
        return Ok(None);
    };
    let principal = match authenticator.verify(token).await {
        Ok(principal) => principal,
        Err(err) => {
            record(
                "none",
                if err == AuthError::Expired {
                    "expired"
                } else {
                    "invalid"
                },
            );
            return Err(unauthorized(&err.to_string(), Some(&err)));
        }
    };
    if !policy.roles.is_empty()
        && !principal
            .roles
            .iter()
            .any(|role| policy.roles.contains(role))
    {
        record(&principal.issuer, "forbidden");
        return Err(Problem::new(
            ErrorCode::Forbidden,
            format!(
                "this route needs one of the roles: {}",
                policy.roles.join(", ")
            ),
        )
        .into_response());
    }
    record(&principal.issuer, "ok");
    set_identity_headers(parts, &principal);
    parts.extensions.insert(Arc::clone(&principal));
    Ok(Some(principal))
}

thread_local! {
    static AUTH_COUNTERS: HandleCache<(String, &'static str), metrics::Counter> = HandleCache::new();
}

fn record(issuer: &str, outcome: &'static str) {
    AUTH_COUNTERS.with(|cache| {
        cache.with(
            (issuer.to_owned(), outcome),
            |(issuer, outcome)| {
                metrics::counter!(AUTH_OUTCOMES, "issuer" => issuer.clone(), "outcome" => *outcome)
            },
            |counter| counter.increment(1),
        );
    });
}

fn bearer_token(parts: &Parts) -> Option<&str> {
    let value = parts.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    let token = token.trim();
    (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
}

/// 401 with `WWW-Authenticate: Bearer` (RFC 6750 §3).
fn unauthorized(detail: &str, error: Option<&AuthError>) -> Response {
    let mut response = Problem::new(ErrorCode::Unauthorized, detail).into_response();
    let challenge = match error {
        Some(_) => "Bearer error=\"invalid_token\"",
        None => "Bearer",
    };
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static(challenge),
    );
    response
}

fn strip_identity_headers(parts: &mut Parts) {
    let names: Vec<_> = parts
        .headers
        .keys()
        .filter(|name| name.as_str().starts_with(IDENTITY_HEADER_PREFIX))
        .cloned()
        .collect();
    for name in names {
        parts.headers.remove(name);
    }
}

fn set_identity_headers(parts: &mut Parts, principal: &Principal) {
    if let Ok(subject) = HeaderValue::from_str(&principal.subject) {
        parts.headers.insert("x-user-id", subject);
    }
    if let Ok(roles) = HeaderValue::from_str(&principal.roles.join(",")) {
        parts.headers.insert("x-user-roles", roles);
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::auth::JwksOptions;

    fn parts_with(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri("/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn nobody() -> Authenticator {
        Authenticator::new(&[], Duration::from_secs(30), JwksOptions::default())
    }

    #[tokio::test]
    async fn client_identity_headers_never_pass() {
        let mut parts = parts_with(&[
            ("x-user-id", "admin"),
            ("x-user-roles", "admin"),
            ("accept", "*/*"),
        ]);
        let policy = RoutePolicy {
            auth: RouteAuth::Optional,
            roles: Vec::new(),
        };
        enforce(&policy, &mut parts, &nobody()).await.unwrap();
        assert!(parts.headers.get("x-user-id").is_none());
        assert!(parts.headers.get("x-user-roles").is_none());
        assert!(parts.headers.get("accept").is_some());
    }

    #[tokio::test]
    async fn required_auth_without_a_token_is_401_with_a_challenge() {
        let mut parts = parts_with(&[]);
        let policy = RoutePolicy {
            auth: RouteAuth::Required,
            roles: Vec::new(),
        };
        let response = enforce(&policy, &mut parts, &nobody()).await.unwrap_err();
        assert_eq!(response.status(), http::StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
    }
}
