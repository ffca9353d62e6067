//! CORS for the browser front end (`[cors] allowed_origins`), answered at the edge.
//!
//! Only listed origins (exact `scheme://host[:port]`, or `*` for any) get CORS headers:
//! preflights (`OPTIONS` with `Access-Control-Request-Method`) are answered 204 by the gateway
//! itself, other responses get `Access-Control-Allow-Origin` and the headers a front end needs
//! to read (`x-request-id`, rate limits, ...). A listed origin may send credentials; `*` may
//! not (the CORS protocol forbids it). A preflight from an origin not listed is refused (403);
//! other requests from it pass without CORS headers, so the browser keeps their answers from
//! the page.

use axum::response::{IntoResponse, Response};
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, StatusCode};
use logicore_platform::http::{ErrorCode, Problem};

/// Methods a preflight may ask for.
const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";
/// Request headers a preflight may ask for (others are refused by the browser).
const ALLOWED_HEADERS: [&str; 6] = [
    "authorization",
    "content-type",
    "idempotency-key",
    "if-none-match",
    "x-request-id",
    "traceparent",
];
/// Response headers scripts may read.
const EXPOSED_HEADERS: &str = "x-request-id, x-cache, etag, location, retry-after, ratelimit-limit, ratelimit-remaining, ratelimit-reset";
/// How long browsers may reuse a preflight answer, in seconds.
const MAX_AGE: &str = "600";

/// The allow-list.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    origins: Vec<String>,
    any: bool,
}

/// What a request means for CORS.
#[derive(Debug)]
pub enum Decision {
    /// No CORS involved (no `Origin`, or CORS not configured).
    None,
    /// A preflight, answered here.
    Preflight(Response),
    /// A cross-origin request from an allowed origin: decorate its response.
    Allowed(HeaderValue),
}

impl Cors {
    /// The allow-list of `[cors] allowed_origins` (already validated: `*` is never mixed with
    /// named origins, which would hand credentials to any site).
    pub fn new(origins: &[String]) -> Self {
        Cors {
            any: origins.iter().any(|origin| origin == "*"),
            origins: origins
                .iter()
                .filter(|origin| *origin != "*")
                .map(|origin| origin.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
        }
    }

    fn enabled(&self) -> bool {
        self.any || !self.origins.is_empty()
    }

    fn allows(&self, origin: &str) -> bool {
        self.any
            || self
                .origins
                .iter()
                .any(|allowed| allowed.eq_ignore_ascii_case(origin))
    }

    /// Looks at a request before it is routed.
    pub fn decide(&self, method: &Method, headers: &HeaderMap) -> Decision {
        if !self.enabled() {
            return Decision::None;
        }
        let Some(origin) = headers.get(header::ORIGIN) else {
            return Decision::None;
        };
        let allowed = origin.to_str().is_ok_and(|origin| self.allows(origin));
        let preflight = method == Method::OPTIONS
            && headers.contains_key(header::ACCESS_CONTROL_REQUEST_METHOD);
        match (preflight, allowed) {
            (true, true) => Decision::Preflight(self.preflight(origin, headers)),
            (true, false) => {
                let mut refused =
                    Problem::new(ErrorCode::Forbidden, "this origin may not call the API")
                        .into_response();
                add_vary(refused.headers_mut());
                Decision::Preflight(refused)
            }
            (false, true) => Decision::Allowed(origin.clone()),
            (false, false) => Decision::None,
        }
    }

    fn allow_origin(&self, origin: &HeaderValue, headers: &mut HeaderMap) {
        if self.any && self.origins.is_empty() {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            );
        } else {
            headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        add_vary(headers);
    }

    fn preflight(&self, origin: &HeaderValue, request: &HeaderMap) -> Response {
        let mut response = StatusCode::NO_CONTENT.into_response();
        let headers = response.headers_mut();
        self.allow_origin(origin, headers);
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_METHODS,
            HeaderValue::from_static(ALLOWED_METHODS),
        );
        // Echo the asked-for headers that are allowed (browsers refuse the others).
        let asked: Vec<String> = request
            .get_all(header::ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(','))
            .map(|name| name.trim().to_ascii_lowercase())
            .filter(|name| ALLOWED_HEADERS.contains(&name.as_str()))
            .collect();
        if let Ok(value) = HeaderValue::from_str(&asked.join(", "))
            && !asked.is_empty()
        {
            headers.insert(header::ACCESS_CONTROL_ALLOW_HEADERS, value);
        }
        headers.insert(
            header::ACCESS_CONTROL_MAX_AGE,
            HeaderValue::from_static(MAX_AGE),
        );
        response
    }

    /// Finishes a response: the CORS headers for an allowed origin; otherwise, with a list of
    /// origins, `Vary: Origin` so shared caches keep answers for different origins apart.
    pub fn finish(&self, origin: Option<&HeaderValue>, response: &mut Response) {
        match origin {
            Some(origin) => self.decorate(origin, response),
            None if self.enabled() && !self.any => add_vary(response.headers_mut()),
            None => {}
        }
    }

    /// Adds the CORS headers of an allowed cross-origin request to its response.
    pub fn decorate(&self, origin: &HeaderValue, response: &mut Response) {
        let headers = response.headers_mut();
        self.allow_origin(origin, headers);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSED_HEADERS),
        );
    }
}

fn add_vary(headers: &mut HeaderMap) {
    headers.append(header::VARY, HeaderValue::from_static("origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in pairs {
            headers.insert(*name, HeaderValue::from_static(value));
        }
        headers
    }

    #[test]
    fn allowed_origins_get_preflights_answered_and_responses_decorated() {
        let cors = Cors::new(&["https://shop.example.com".to_owned()]);
        let preflight = request(&[
            ("origin", "https://shop.example.com"),
            ("access-control-request-method", "POST"),
            (
                "access-control-request-headers",
                "Content-Type, Authorization, X-Evil",
            ),
        ]);
        let Decision::Preflight(answer) = cors.decide(&Method::OPTIONS, &preflight) else {
            panic!("not answered as a preflight");
        };
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        let headers = answer.headers();
        assert_eq!(
            headers["access-control-allow-origin"],
            "https://shop.example.com"
        );
        assert_eq!(headers["access-control-allow-credentials"], "true");
        assert_eq!(
            headers["access-control-allow-headers"],
            "content-type, authorization"
        );
        assert!(
            headers["access-control-allow-methods"]
                .to_str()
                .unwrap()
                .contains("PATCH")
        );
        assert_eq!(headers["vary"], "origin");

        let plain = request(&[("origin", "https://shop.example.com")]);
        let Decision::Allowed(origin) = cors.decide(&Method::GET, &plain) else {
            panic!("not allowed");
        };
        let mut response = StatusCode::OK.into_response();
        cors.decorate(&origin, &mut response);
        assert_eq!(
            response.headers()["access-control-allow-origin"],
            "https://shop.example.com"
        );
        assert!(
            response.headers()["access-control-expose-headers"]
                .to_str()
                .unwrap()
                .contains("x-request-id")
        );
    }

    #[test]
    fn other_origins_are_refused_or_left_bare() {
        let cors = Cors::new(&["https://shop.example.com".to_owned()]);
        let preflight = request(&[
            ("origin", "https://evil.example"),
            ("access-control-request-method", "DELETE"),
        ]);
        let Decision::Preflight(answer) = cors.decide(&Method::OPTIONS, &preflight) else {
            panic!("preflight not answered");
        };
        assert_eq!(answer.status(), StatusCode::FORBIDDEN);
        assert!(!answer.headers().contains_key("access-control-allow-origin"));
        let plain = request(&[("origin", "https://evil.example")]);
        assert!(matches!(cors.decide(&Method::GET, &plain), Decision::None));
        // Without configuration there is no CORS at all.
        assert!(matches!(
            Cors::default().decide(&Method::OPTIONS, &preflight),
            Decision::None
        ));
    }

    #[test]
    fn a_wildcard_allows_any_origin_without_credentials() {
        let cors = Cors::new(&["*".to_owned()]);
        let plain = request(&[("origin", "https://anyone.example")]);
        let Decision::Allowed(origin) = cors.decide(&Method::GET, &plain) else {
            panic!("not allowed");
        };
        let mut response = StatusCode::OK.into_response();
        cors.decorate(&origin, &mut response);
        assert_eq!(response.headers()["access-control-allow-origin"], "*");
        assert!(
            !response
                .headers()
                .contains_key("access-control-allow-credentials")
        );
    }
}
