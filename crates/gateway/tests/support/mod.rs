//! Helpers shared by the cache test binaries.

#![allow(dead_code, reason = "each test binary uses its own subset")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, Method};
use logicore_gateway::cache::{CacheKey, ResponseCache};

/// An upstream answering `{"n": <call number>}` with the given headers after `delay`.
#[derive(Clone)]
pub struct Upstream {
    pub calls: Arc<AtomicUsize>,
    pub status: Arc<AtomicU16>,
    pub headers: Arc<Vec<(&'static str, &'static str)>>,
    pub delay: Duration,
}

impl Upstream {
    pub fn new(headers: &[(&'static str, &'static str)]) -> Self {
        Upstream {
            calls: Arc::new(AtomicUsize::new(0)),
            status: Arc::new(AtomicU16::new(200)),
            headers: Arc::new(headers.to_vec()),
            delay: Duration::from_millis(50),
        }
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    pub fn fetch(
        &self,
    ) -> impl Fn() -> futures_util::future::BoxFuture<'static, Response> + Send + Sync + 'static
    {
        let upstream = self.clone();
        move || {
            let upstream = upstream.clone();
            Box::pin(async move {
                let call = upstream.calls.fetch_add(1, Ordering::SeqCst) + 1;
                tokio::time::sleep(upstream.delay).await;
                let body = format!("{{\"n\":{call}}}");
                let mut response = Response::new(Body::from(body.clone()));
                *response.status_mut() =
                    http::StatusCode::from_u16(upstream.status.load(Ordering::SeqCst)).unwrap();
                for (name, value) in upstream.headers.iter() {
                    response
                        .headers_mut()
                        .append(*name, HeaderValue::from_static(value));
                }
                response
                    .headers_mut()
                    .insert("content-length", HeaderValue::from(body.len()));
                response
            })
        }
    }
}

pub fn key(target: &str) -> CacheKey {
    CacheKey {
        method: Method::GET,
        target: target.to_owned(),
        coding: "identity",
    }
}

pub const NO_TTL: Duration = Duration::ZERO;

pub async fn get(
    cache: &ResponseCache,
    upstream: &Upstream,
    target: &str,
    request: &HeaderMap,
) -> (String, String, Option<u64>) {
    let response = cache
        .serve(key(target), request, NO_TTL, upstream.fetch())
        .await;
    let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
    let age = response
        .headers()
        .get("age")
        .map(|age| age.to_str().unwrap().parse().unwrap());
    let body = axum::body::to_bytes(response.into_body(), 1 << 20)
        .await
        .unwrap();
    (String::from_utf8(body.to_vec()).unwrap(), x_cache, age)
}

/// The shared Redis of the suite, when `LOGICORE_TEST_REDIS_URL` names one.
pub fn shared_redis() -> Option<String> {
    std::env::var(logicore_platform::testing::REDIS_URL_VAR).ok()
}

/// A key prefix no other test run uses.
pub fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("logicore-test-{}-{nanos}:", std::process::id())
}
