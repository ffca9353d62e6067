//! Conditional GET: a weak `ETag` from the uncompressed body and `If-None-Match` → 304.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use sha2::{Digest, Sha256};

use super::problem::Problem;

/// Middleware: adds a weak ETag to successful GET/HEAD responses and answers 304 when the
/// client's `If-None-Match` matches it (weak comparison, RFC 9110 §13.1.2).
pub async fn conditional_get(request: Request, next: Next) -> Response {
    if request.method() != Method::GET && request.method() != Method::HEAD {
        return next.run(request).await;
    }
    let if_none_match = request.headers().get(header::IF_NONE_MATCH).cloned();
    let response = next.run(request).await;
    if response.status() != StatusCode::OK
        || response.headers().contains_key(header::CONTENT_ENCODING)
    {
        return response;
    }
    let (mut parts, body) = response.into_parts();
    let bytes = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(err) => return Problem::internal(&err).into_response(),
    };
    let etag = match parts.headers.get(header::ETAG) {
        Some(existing) => existing.clone(),
        None => weak_etag(&bytes),
    };
    if if_none_match.is_some_and(|value| matches_weakly(&value, &etag)) {
        return not_modified(&parts.headers, etag);
    }
    parts.headers.insert(header::ETAG, etag);
    Response::from_parts(parts, Body::from(bytes))
}

/// Returns `W/"<hex>"` from the first 16 bytes of the body's SHA-256.
pub fn weak_etag(body: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(body);
    let hex: String = digest[..16]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    HeaderValue::from_str(&format!("W/\"{hex}\"")).unwrap_or(HeaderValue::from_static("W/\"0\""))
}

/// Weak comparison of an `If-None-Match` list with an entity tag.
pub fn matches_weakly(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Ok(list) = if_none_match.to_str() else {
        return false;
    };
    let Ok(etag) = etag.to_str() else {
        return false;
    };
    let opaque = |tag: &str| tag.trim().trim_start_matches("W/").to_owned();
    let wanted = opaque(etag);
    list.split(',')
        .map(str::trim)
        .any(|candidate| candidate == "*" || opaque(candidate) == wanted)
}

fn not_modified(original: &HeaderMap, etag: HeaderValue) -> Response {
    let mut response = StatusCode::NOT_MODIFIED.into_response();
    let headers = response.headers_mut();
    headers.insert(header::ETAG, etag);
    for name in [header::CACHE_CONTROL, header::VARY, header::EXPIRES] {
        if let Some(value) = original.get(&name) {
            headers.insert(name, value.clone());
        }
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weak_comparison_ignores_the_weak_prefix_and_reads_lists() {
        let etag = weak_etag(b"{}");
        let strong_form =
            HeaderValue::from_str(etag.to_str().unwrap().trim_start_matches("W/")).unwrap();
        assert!(matches_weakly(&etag, &etag));
        assert!(matches_weakly(&strong_form, &etag));
        let list =
            HeaderValue::from_str(&format!("W/\"nope\", {}", etag.to_str().unwrap())).unwrap();
        assert!(matches_weakly(&list, &etag));
        assert!(matches_weakly(&HeaderValue::from_static("*"), &etag));
        assert!(!matches_weakly(
            &HeaderValue::from_static("W/\"other\""),
            &etag
        ));
    }

    #[test]
    fn etags_depend_on_the_body() {
        assert_eq!(weak_etag(b"a"), weak_etag(b"a"));
        assert_ne!(weak_etag(b"a"), weak_etag(b"b"));
        assert!(weak_etag(b"a").to_str().unwrap().starts_with("W/\""));
    }
}
