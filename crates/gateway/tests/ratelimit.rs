//! Rate limits on Redis: one limit shared by several gateways, and a Redis that dies and comes
//! back (a private `redis-server` the test owns; the shared one is never touched).

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

mod support;

use std::time::Duration;

use logicore_gateway::ratelimit::{LimiterDown, RateLimiter};
use logicore_platform::cache::RedisStore;
use logicore_platform::config::Rate;
use logicore_platform::testing::PrivateRedis;

fn per_minute(count: u32) -> Rate {
    Rate {
        count,
        period: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn one_limit_is_shared_by_two_gateways_on_one_redis() {
    let Some(url) = support::shared_redis() else {
        eprintln!("skipped: needs LOGICORE_TEST_REDIS_URL");
        return;
    };
    let prefix = support::prefix();
    let gateways = [
        RateLimiter::redis(RedisStore::connect(&url, &prefix).unwrap(), true),
        RateLimiter::redis(RedisStore::connect(&url, &prefix).unwrap(), true),
    ];
    let mut allowed = 0;
    for round in 0..30 {
        let verdict = gateways[round % 2]
            .check("route|ip|10.0.0.1", per_minute(10))
            .await
            .unwrap();
        assert!(
            !verdict.backend_down,
            "LOGICORE_TEST_REDIS_URL={url} is set but Redis cannot be used"
        );
        allowed += usize::from(verdict.allowed);
    }
    assert_eq!(allowed, 10, "ten per minute across both gateways");
    // Another client has its own limit.
    let other = gateways[0]
        .check("route|ip|10.0.0.2", per_minute(10))
        .await
        .unwrap();
    assert!(other.allowed);
    assert_eq!(other.remaining, 9);
}

#[tokio::test]
async fn a_redis_killed_mid_test_lets_requests_through_then_limits_again() {
    let Some(redis) = PrivateRedis::start() else {
        eprintln!("skipped: needs the redis-server binary");
        return;
    };
    let port = redis.port();
    let store = RedisStore::connect(&redis.url(), &support::prefix()).unwrap();
    let open = RateLimiter::redis(store.clone(), true);
    let closed = RateLimiter::redis(store, false);
    let limit = per_minute(3);
    for _ in 0..3 {
        let verdict = open.check("k", limit).await.unwrap();
        assert!(verdict.allowed && !verdict.backend_down);
    }
    assert!(!open.check("k", limit).await.unwrap().allowed, "limited");

    redis.kill();
    for _ in 0..20 {
        let verdict = open.check("k", limit).await.unwrap();
        assert!(
            verdict.allowed && verdict.backend_down,
            "fail open: {verdict:?}"
        );
    }
    assert_eq!(
        closed.check("k", limit).await,
        Err(LimiterDown),
        "fail closed"
    );

    // Back (empty): the limiter uses it again by itself once its backoff is over.
    let _redis = PrivateRedis::start_on(port).unwrap();
    let mut verdict = open.check("k", limit).await.unwrap();
    for _ in 0..100 {
        if !verdict.backend_down {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        verdict = open.check("k", limit).await.unwrap();
    }
    assert!(!verdict.backend_down, "Redis is used again");
    for _ in 0..2 {
        assert!(open.check("k", limit).await.unwrap().allowed);
    }
    assert!(
        !open.check("k", limit).await.unwrap().allowed,
        "limited again"
    );
}
