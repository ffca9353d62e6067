//! The per-route policy hook, run before a request reaches its upstream.
//!
//! Today no token issuer is built in, so `auth = "required"` answers 401 and tokens are not
//! read; the identity work plugs verification in here. Client-sent identity headers are
//! always stripped: upstreams must never believe identity that came from the network.

use http::request::Parts;
use logicore_platform::config::RouteAuth;
use logicore_platform::http::{ErrorCode, Problem};

use crate::routing::RoutePolicy;

/// Headers that carry identity to upstreams; only the gateway may set them.
const IDENTITY_HEADER_PREFIX: &str = "x-user-";

/// Applies `policy` to a request: strips client identity headers, refuses what it must.
pub fn enforce(policy: &RoutePolicy, parts: &mut Parts) -> Result<(), Problem> {
    strip_identity_headers(parts);
    match policy.auth {
        RouteAuth::None | RouteAuth::Optional => Ok(()),
        RouteAuth::Required => Err(Problem::new(
            ErrorCode::Unauthorized,
            "this route needs a bearer token, and no token issuer is configured yet",
        )),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parts_with(headers: &[(&str, &str)]) -> Parts {
        let mut builder = http::Request::builder().uri("/x");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn client_identity_headers_never_pass() {
        let mut parts = parts_with(&[
            ("x-user-id", "admin"),
            ("x-user-roles", "admin"),
            ("accept", "*/*"),
        ]);
        let policy = RoutePolicy {
            auth: RouteAuth::Optional,
            roles: Vec::new(),
        };
        enforce(&policy, &mut parts).unwrap();
        assert!(parts.headers.get("x-user-id").is_none());
        assert!(parts.headers.get("x-user-roles").is_none());
        assert!(parts.headers.get("accept").is_some());
    }

    #[test]
    fn required_auth_is_refused_until_an_issuer_exists() {
        let mut parts = parts_with(&[]);
        let policy = RoutePolicy {
            auth: RouteAuth::Required,
            roles: Vec::new(),
        };
        let problem = enforce(&policy, &mut parts).unwrap_err();
        assert_eq!(problem.code, ErrorCode::Unauthorized);
    }
}
