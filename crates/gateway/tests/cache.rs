//! The response cache: coalescing, freshness, stale serving, what is never shared, purges.
//! The "upstream" is a closure that counts its calls; time is tokio's paused clock.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use logicore_gateway::cache::ResponseCache;
use support::{Upstream, get, key};

fn cache() -> ResponseCache {
    ResponseCache::memory(1 << 20)
}

#[tokio::test(start_paused = true)]
async fn a_hundred_concurrent_misses_make_one_upstream_call() {
    let cache = cache();
    let upstream = Upstream::new(&[("cache-control", "max-age=60")]);
    let none = HeaderMap::new();
    let answers = futures_util::future::join_all(
        (0..100).map(|_| get(&cache, &upstream, "/api/v1/products", &none)),
    )
    .await;
    assert_eq!(upstream.calls(), 1);
    assert!(answers.iter().all(|(body, _, _)| body == "{\"n\":1}"));
    let misses = answers.iter().filter(|(_, x, _)| x == "MISS").count();
    let hits = answers.iter().filter(|(_, x, _)| x == "HIT").count();
    assert_eq!((misses, hits), (1, 99));
}

#[tokio::test(start_paused = true)]
async fn fresh_entries_are_hits_with_an_age_until_they_expire() {
    let cache = cache();
    let upstream = Upstream::new(&[("cache-control", "public, max-age=10")]);
    let none = HeaderMap::new();
    assert_eq!(get(&cache, &upstream, "/a", &none).await.1, "MISS");
    tokio::time::advance(Duration::from_secs(4)).await;
    let (body, x_cache, age) = get(&cache, &upstream, "/a", &none).await;
    assert_eq!(
        (body.as_str(), x_cache.as_str(), age),
        ("{\"n\":1}", "HIT", Some(4))
    );
    // Another target is another entry.
    assert_eq!(get(&cache, &upstream, "/a?page=2", &none).await.1, "MISS");
    tokio::time::advance(Duration::from_secs(7)).await;
    let (body, x_cache, _) = get(&cache, &upstream, "/a", &none).await;
    assert_eq!((body.as_str(), x_cache.as_str()), ("{\"n\":3}", "MISS"));
}

#[tokio::test(start_paused = true)]
async fn the_route_ttl_applies_only_without_upstream_freshness() {
    let cache = cache();
    let plain = Upstream::new(&[]);
    let none = HeaderMap::new();
    for _ in 0..2 {
        let response = cache
            .serve(key("/t"), &none, Duration::from_secs(30), plain.fetch())
            .await;
        assert!(response.headers().contains_key("x-cache"));
    }
    assert_eq!(plain.calls(), 1, "stored for the route TTL");
    // No TTL and no freshness: nothing stored.
    get(&cache, &plain, "/u", &none).await;
    get(&cache, &plain, "/u", &none).await;
    assert_eq!(plain.calls(), 3);
}

#[tokio::test(start_paused = true)]
async fn no_store_private_and_cookie_responses_are_never_shared() {
    let none = HeaderMap::new();
    for headers in [
        &[("cache-control", "no-store, max-age=60")][..],
        &[("cache-control", "private, max-age=60")],
        &[("cache-control", "max-age=60"), ("set-cookie", "session=1")],
    ] {
        let cache = cache();
        let upstream = Upstream::new(headers);
        let first = get(&cache, &upstream, "/me", &none).await;
        let second = get(&cache, &upstream, "/me", &none).await;
        assert_ne!(
            first.0, second.0,
            "{headers:?}: served someone's response again"
        );
        assert_eq!(upstream.calls(), 2);
        assert_eq!(second.1, "MISS");
    }
}

#[tokio::test(start_paused = true)]
async fn vary_headers_keep_variants_apart() {
    let cache = cache();
    let upstream = Upstream::new(&[("cache-control", "max-age=60"), ("vary", "x-tenant")]);
    let tenant = |name: &'static str| {
        let mut headers = HeaderMap::new();
        headers.insert("x-tenant", HeaderValue::from_static(name));
        headers
    };
    let (first, _, _) = get(&cache, &upstream, "/v", &tenant("a")).await;
    let (same, x_cache, _) = get(&cache, &upstream, "/v", &tenant("a")).await;
    assert_eq!((same.as_str(), x_cache.as_str()), (first.as_str(), "HIT"));
    let (other, _, _) = get(&cache, &upstream, "/v", &tenant("b")).await;
    assert_ne!(other, first, "tenant b got tenant a's response");
}

#[tokio::test(start_paused = true)]
async fn stale_while_revalidate_serves_stale_while_exactly_one_refresh_runs() {
    let cache = cache();
    let upstream = Upstream::new(&[("cache-control", "max-age=1, stale-while-revalidate=30")]);
    let none = HeaderMap::new();
    get(&cache, &upstream, "/s", &none).await;
    tokio::time::advance(Duration::from_secs(2)).await;
    // Ten requests while the entry is stale: all answered at once from it, one refresh.
    let answers =
        futures_util::future::join_all((0..10).map(|_| get(&cache, &upstream, "/s", &none))).await;
    assert!(
        answers
            .iter()
            .all(|(body, x, _)| body == "{\"n\":1}" && x == "STALE")
    );
    // Let the refresh (50 ms upstream) finish.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(upstream.calls(), 2, "exactly one refresh");
    let (body, x_cache, _) = get(&cache, &upstream, "/s", &none).await;
    assert_eq!((body.as_str(), x_cache.as_str()), ("{\"n\":2}", "HIT"));
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_serves_stale_when_the_upstream_fails() {
    let cache = cache();
    let upstream = Upstream::new(&[("cache-control", "max-age=1, stale-if-error=60")]);
    let none = HeaderMap::new();
    get(&cache, &upstream, "/e", &none).await;
    tokio::time::advance(Duration::from_secs(5)).await;
    upstream.status.store(503, Ordering::SeqCst);
    let (body, x_cache, _) = get(&cache, &upstream, "/e", &none).await;
    assert_eq!((body.as_str(), x_cache.as_str()), ("{\"n\":1}", "STALE"));
    // Past the stale-if-error window the failure shows.
    tokio::time::advance(Duration::from_secs(60)).await;
    let response = cache
        .serve(key("/e"), &none, support::NO_TTL, upstream.fetch())
        .await;
    assert_eq!(response.status(), 503);
}

#[tokio::test(start_paused = true)]
async fn entries_are_purged_by_tag_and_by_target() {
    let cache = cache();
    let tagged = Upstream::new(&[
        ("cache-control", "max-age=60"),
        ("cache-tag", "products, product:7"),
    ]);
    let none = HeaderMap::new();
    let first = cache
        .serve(key("/p/7"), &none, support::NO_TTL, tagged.fetch())
        .await;
    assert!(
        !first.headers().contains_key("cache-tag"),
        "Cache-Tag is for the gateway only"
    );
    get(&cache, &tagged, "/p", &none).await;
    get(&cache, &tagged, "/other", &none).await;
    assert_eq!(cache.purge_tags(&["product:7".to_owned()]).await, 3);
    assert_eq!(get(&cache, &tagged, "/p/7", &none).await.1, "MISS");
    assert_eq!(
        cache
            .purge_targets(&["/p/7".to_owned(), "/none".to_owned()])
            .await,
        1
    );
    assert_eq!(get(&cache, &tagged, "/p/7", &none).await.1, "MISS");
    assert_eq!(
        get(&cache, &tagged, "/p", &none).await.1,
        "MISS",
        "purged by tag"
    );
}

#[tokio::test(start_paused = true)]
async fn streamed_bodies_without_a_length_are_stored_too() {
    let cache = cache();
    let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fetch = {
        let calls = std::sync::Arc::clone(&calls);
        move || {
            let calls = std::sync::Arc::clone(&calls);
            async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let chunks = futures_util::stream::iter(
                    ["{\"a\":", "1}"].map(|chunk| Ok::<_, std::io::Error>(chunk.as_bytes())),
                );
                let mut response =
                    axum::response::Response::new(axum::body::Body::from_stream(chunks));
                response
                    .headers_mut()
                    .insert("cache-control", HeaderValue::from_static("max-age=60"));
                response
            }
        }
    };
    let none = HeaderMap::new();
    for expected in ["MISS", "HIT"] {
        let response = cache
            .serve(support::key("/s"), &none, support::NO_TTL, fetch.clone())
            .await;
        assert_eq!(response.headers()["x-cache"], expected);
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        assert_eq!(&body[..], b"{\"a\":1}");
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
