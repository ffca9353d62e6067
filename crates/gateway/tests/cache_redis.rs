//! The response cache on Redis: entries and purges shared by gateways, coalescing, stale
//! serving, and a Redis that dies (a private `redis-server`) turning into a pass-through.
//! Real time: Redis expiries and a paused tokio clock do not mix.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use http::HeaderMap;
use logicore_gateway::cache::ResponseCache;
use logicore_platform::cache::RedisStore;
use logicore_platform::testing::PrivateRedis;
use support::{Upstream, get};

/// Two gateways' caches on the shared Redis under one fresh prefix.
fn two_gateways() -> Option<(ResponseCache, ResponseCache)> {
    let url = support::shared_redis()?;
    let prefix = support::prefix();
    let cache = || ResponseCache::redis(RedisStore::connect(&url, &prefix).unwrap());
    Some((cache(), cache()))
}

#[tokio::test]
async fn gateways_share_entries_and_purges_on_redis() {
    let Some((first, second)) = two_gateways() else {
        eprintln!("skipped: needs LOGICORE_TEST_REDIS_URL");
        return;
    };
    let upstream = Upstream::new(&[("cache-control", "max-age=60"), ("cache-tag", "products")]);
    let none = HeaderMap::new();
    let (body, x_cache, _) = get(&first, &upstream, "/p", &none).await;
    assert_eq!(x_cache, "MISS");
    let (shared, x_cache, age) = get(&second, &upstream, "/p", &none).await;
    assert_eq!(
        (shared.as_str(), x_cache.as_str()),
        (body.as_str(), "HIT"),
        "the other gateway is served the stored entry (is Redis reachable?)"
    );
    assert_eq!(age, Some(0));
    assert_eq!(upstream.calls(), 1);

    get(&first, &upstream, "/p?page=2", &none).await;
    assert_eq!(second.purge_tags(&["products".to_owned()]).await, 2);
    assert_eq!(get(&first, &upstream, "/p", &none).await.1, "MISS");
    assert_eq!(second.purge_targets(&["/p".to_owned()]).await, 1);
    assert_eq!(get(&second, &upstream, "/p", &none).await.1, "MISS");
}

#[tokio::test]
async fn concurrent_misses_on_one_gateway_make_one_call_on_redis() {
    let Some((cache, _)) = two_gateways() else {
        eprintln!("skipped: needs LOGICORE_TEST_REDIS_URL");
        return;
    };
    let upstream = Upstream::new(&[("cache-control", "max-age=60")]);
    let none = HeaderMap::new();
    let answers =
        futures_util::future::join_all((0..50).map(|_| get(&cache, &upstream, "/c", &none))).await;
    assert_eq!(upstream.calls(), 1);
    assert!(answers.iter().all(|(body, _, _)| body == &answers[0].0));
}

#[tokio::test]
async fn stale_while_revalidate_on_redis() {
    let Some((cache, _)) = two_gateways() else {
        eprintln!("skipped: needs LOGICORE_TEST_REDIS_URL");
        return;
    };
    let upstream = Upstream::new(&[("cache-control", "max-age=1, stale-while-revalidate=30")]);
    let none = HeaderMap::new();
    get(&cache, &upstream, "/s", &none).await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (body, x_cache, _) = get(&cache, &upstream, "/s", &none).await;
    assert_eq!((body.as_str(), x_cache.as_str()), ("{\"n\":1}", "STALE"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(upstream.calls(), 2, "one background refresh");
    let (body, x_cache, _) = get(&cache, &upstream, "/s", &none).await;
    assert_eq!((body.as_str(), x_cache.as_str()), ("{\"n\":2}", "HIT"));
}

#[tokio::test]
async fn a_dead_redis_makes_the_cache_a_pass_through() {
    let Some(redis) = PrivateRedis::start() else {
        eprintln!("skipped: needs the redis-server binary");
        return;
    };
    let port = redis.port();
    let cache = ResponseCache::redis(RedisStore::connect(&redis.url(), "t:").unwrap());
    let upstream = Upstream::new(&[("cache-control", "max-age=60")]);
    let none = HeaderMap::new();
    get(&cache, &upstream, "/d", &none).await;
    assert_eq!(get(&cache, &upstream, "/d", &none).await.1, "HIT");

    redis.kill();
    for expected_calls in 2..6 {
        let response = cache
            .serve(support::key("/d"), &none, support::NO_TTL, upstream.fetch())
            .await;
        assert_eq!(response.status(), 200, "never an error");
        assert_eq!(response.headers()["x-cache"], "MISS");
        assert_eq!(upstream.calls(), expected_calls, "straight to the upstream");
    }
    assert_eq!(cache.purge_tags(&["x".to_owned()]).await, 0);

    // Back: caching resumes by itself once the store's backoff is over.
    let _redis = PrivateRedis::start_on(port).unwrap();
    let mut x_cache = String::new();
    for _ in 0..50 {
        x_cache = get(&cache, &upstream, "/d", &none).await.1;
        if x_cache == "HIT" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(x_cache, "HIT");
    assert!(upstream.status.load(Ordering::SeqCst) == 200);
}
