//! Rate limits on Redis: one limit shared by several gateways, and a Redis that dies and comes
//! back (a private `redis-server` the test owns; the shared one is never touched).

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use logicore_gateway::ratelimit::{LimiterDown, RateLimiter};
use logicore_platform::cache::RedisStore;
use logicore_platform::config::Rate;

fn shared_redis() -> Option<String> {
    std::env::var("LOGICORE_TEST_REDIS_URL").ok()
}

fn per_minute(count: u32) -> Rate {
    Rate {
        count,
        period: Duration::from_secs(60),
    }
}

/// A key prefix no other test run uses.
fn prefix() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("logicore-test-{}-{nanos}:", std::process::id())
}

#[tokio::test]
async fn one_limit_is_shared_by_two_gateways_on_one_redis() {
    let Some(url) = shared_redis() else {
        eprintln!("skipped: needs LOGICORE_TEST_REDIS_URL");
        return;
    };
    let prefix = prefix();
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

/// A `redis-server` of the test's own on a free port, killed when dropped.
struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    fn start(port: u16) -> Option<PrivateRedis> {
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args(["--bind", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(PrivateRedis { child, port });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {port}");
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn a_redis_killed_mid_test_lets_requests_through_then_limits_again() {
    let port = free_port();
    let Some(redis) = PrivateRedis::start(port) else {
        assert!(
            shared_redis().is_none(),
            "CI (LOGICORE_TEST_REDIS_URL set) must have redis-server installed"
        );
        eprintln!("skipped: needs the redis-server binary");
        return;
    };
    let store = RedisStore::connect(&redis.url(), &prefix()).unwrap();
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
    let _redis = PrivateRedis::start(port).unwrap();
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
