//! Request hygiene at the edge: body size and path checks, before any routing.

use axum::body::Body;
use http::header;
use http::request::Parts;
use logicore_platform::http::{ErrorCode, Problem};

/// Refuses a declared body over `limit` (413) and caps an undeclared one while it streams.
pub fn limit_body(parts: &Parts, body: Body, limit: usize) -> Result<Body, Problem> {
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(Problem::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is over the limit of {limit} bytes"),
        ));
    }
    Ok(Body::new(http_body_util::Limited::new(body, limit)))
}

/// Refuses a header block larger than `limit` bytes (431), counted as on the wire:
/// the request line plus `name: value\r\n` for each header.
pub fn check_header_size(parts: &Parts, limit: usize) -> Result<(), Problem> {
    // As the client sent it: origin form (path and query) or absolute form.
    let target = parts
        .uri
        .path_and_query()
        .map_or(1, |target| target.as_str().len())
        + parts.uri.scheme_str().map_or(0, |scheme| scheme.len() + 3)
        + parts
            .uri
            .authority()
            .map_or(0, |authority| authority.as_str().len());
    let request_line = parts.method.as_str().len() + target + 12;
    let headers: usize = parts
        .headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum();
    if request_line + headers > limit {
        return Err(Problem::new(
            ErrorCode::HeadersTooLarge,
            format!("the request headers are over the limit of {limit} bytes"),
        ));
    }
    Ok(())
}

/// Refuses paths with dot segments (plain or percent-encoded) or broken percent-encoding.
pub fn check_path(path: &str) -> Result<(), Problem> {
    for segment in path.split('/') {
        // Most segments have no escapes: compare them as they are, without decoding.
        if !segment.contains('%') {
            if segment == "." || segment == ".." {
                return Err(Problem::new(
                    ErrorCode::MalformedBody,
                    "the path must not contain dot segments",
                ));
            }
            continue;
        }
        let Some(decoded) = percent_decode(segment) else {
            return Err(Problem::new(
                ErrorCode::MalformedBody,
                "the path has invalid percent-encoding",
            ));
        };
        if decoded == b"." || decoded == b".." {
            return Err(Problem::new(
                ErrorCode::MalformedBody,
                "the path must not contain dot segments",
            ));
        }
        if decoded.contains(&0) {
            return Err(Problem::new(
                ErrorCode::MalformedBody,
                "the path must not contain NUL",
            ));
        }
    }
    Ok(())
}

fn percent_decode(segment: &str) -> Option<Vec<u8>> {
    let bytes = segment.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'%' {
            let hex = bytes.get(index + 1..index + 3)?;
            let text = std::str::from_utf8(hex).ok()?;
            decoded.push(u8::from_str_radix(text, 16).ok()?);
            index += 3;
        } else {
            decoded.push(bytes[index]);
            index += 1;
        }
    }
    Some(decoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dot_segments_and_bad_encodings_are_refused() {
        for path in [
            "/api/../etc/passwd",
            "/api/%2e%2e/x",
            "/api/%2E./x",
            "/api/./x",
            "/api/%zz",
            "/api/%4",
            "/api/a%00b",
        ] {
            assert!(check_path(path).is_err(), "{path}");
        }
        for path in [
            "/",
            "/api/v1/products",
            "/api/v1/products/a.b",
            "/api/..a/%20x",
        ] {
            assert!(check_path(path).is_ok(), "{path}");
        }
    }

    #[test]
    fn header_blocks_over_the_limit_are_refused() {
        let parts = http::Request::get("/x")
            .header("x-padding", "a".repeat(2000))
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let problem = check_header_size(&parts, 1024).unwrap_err();
        assert_eq!(problem.code, ErrorCode::HeadersTooLarge);
        assert!(check_header_size(&parts, 4096).is_ok());
    }

    #[test]
    fn declared_bodies_over_the_limit_are_refused() {
        let parts = http::Request::post("/x")
            .header("content-length", "2048")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let problem = limit_body(&parts, Body::empty(), 1024).unwrap_err();
        assert_eq!(problem.code, ErrorCode::PayloadTooLarge);
        assert!(limit_body(&parts, Body::empty(), 4096).is_ok());
    }
}
