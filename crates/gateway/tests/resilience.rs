//! Retries, retry budget, circuit breaker and outlier ejection of remote pools, against real
//! HTTP upstreams that count what reaches them.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use logicore_gateway::remote::{CallPolicy, Instance, PoolSettings, RemotePool, http_client};
use logicore_gateway::resilience::BreakerState;
use logicore_platform::config::{BreakerConfig, OutlierConfig, RetryBudgetConfig};

/// An upstream answering every request with its current status, counting requests.
#[derive(Clone)]
struct Upstream {
    address: SocketAddr,
    status: Arc<AtomicU16>,
    hits: Arc<AtomicUsize>,
}

impl Upstream {
    async fn start(status: u16) -> Upstream {
        let state = (
            Arc::new(AtomicU16::new(status)),
            Arc::new(AtomicUsize::new(0)),
        );
        let router = axum::Router::new()
            .fallback(
                |State((status, hits)): State<(Arc<AtomicU16>, Arc<AtomicUsize>)>| async move {
                    hits.fetch_add(1, Ordering::SeqCst);
                    StatusCode::from_u16(status.load(Ordering::SeqCst)).unwrap()
                },
            )
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Upstream {
            address,
            status: state.0,
            hits: state.1,
        }
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }

    fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::SeqCst);
    }

    fn instance(&self) -> Instance {
        Instance::parse(&format!("http://{}", self.address)).unwrap()
    }
}

/// Settings that never get in the way unless a test asks.
fn lenient() -> PoolSettings {
    PoolSettings {
        breaker: BreakerConfig {
            min_calls: 1_000_000,
            ..BreakerConfig::default()
        },
        retry_budget: RetryBudgetConfig {
            ratio: 1.0,
            min_per_second: 1_000,
        },
        outlier: OutlierConfig {
            consecutive_errors: 0,
            ..OutlierConfig::default()
        },
    }
}

fn pool(upstreams: &[&Upstream], settings: PoolSettings) -> RemotePool {
    let instances = upstreams
        .iter()
        .map(|upstream| upstream.instance())
        .collect();
    RemotePool::new("erp", instances, http_client(), settings)
}

fn request(method: &str) -> Request {
    Request::builder()
        .method(method)
        .uri("/api/v1/things")
        .body(Body::empty())
        .unwrap()
}

const RETRY_TWICE: CallPolicy = CallPolicy {
    timeout: Duration::from_secs(3),
    retries: 2,
};

const NO_RETRIES: CallPolicy = CallPolicy {
    timeout: Duration::from_secs(3),
    retries: 0,
};

#[tokio::test]
async fn gateway_errors_of_reads_are_retried_and_post_never_is() {
    let failing = Upstream::start(503).await;
    let pool = pool(&[&failing], lenient());

    let response = pool.forward(request("GET"), RETRY_TWICE).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failing.hits(), 3, "one try and two retries");

    let response = pool.forward(request("POST"), RETRY_TWICE).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(failing.hits(), 4, "POST is not idempotent: one try only");

    let with_body = Request::builder()
        .method("PUT")
        .uri("/api/v1/things/1")
        .body(Body::from("{}"))
        .unwrap();
    pool.forward(with_body, RETRY_TWICE).await;
    assert_eq!(failing.hits(), 5, "a body cannot be replayed: one try only");

    // A 500 is the application's answer, not a gateway error: not retried.
    failing.set_status(500);
    pool.forward(request("GET"), RETRY_TWICE).await;
    assert_eq!(failing.hits(), 6);
}

#[tokio::test]
async fn a_retry_goes_to_the_healthy_instance() {
    let failing = Upstream::start(502).await;
    let healthy = Upstream::start(200).await;
    let pool = pool(&[&failing, &healthy], lenient());
    for _ in 0..20 {
        let response = pool
            .forward(
                request("GET"),
                CallPolicy {
                    retries: 1,
                    ..RETRY_TWICE
                },
            )
            .await;
        // A retry never goes back to the instance that just failed.
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert!(
        failing.hits() > 0,
        "first tries are spread over both instances"
    );
}

#[tokio::test]
async fn retries_never_exceed_the_budget() {
    let failing = Upstream::start(503).await;
    let settings = PoolSettings {
        retry_budget: RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 0,
        },
        ..lenient()
    };
    let pool = pool(&[&failing], settings);
    for _ in 0..100 {
        pool.forward(request("GET"), RETRY_TWICE).await;
    }
    let retries = failing.hits() - 100;
    assert!(retries <= 20, "{retries} retries for 100 requests");
    assert!(retries >= 15, "the budget is used: {retries}");
}

#[tokio::test]
async fn an_open_breaker_answers_503_without_calling_the_upstream() {
    let failing = Upstream::start(500).await;
    let settings = PoolSettings {
        breaker: BreakerConfig {
            min_calls: 5,
            failure_rate: 50,
            open_duration: Duration::from_secs(60),
            ..BreakerConfig::default()
        },
        ..lenient()
    };
    let pool = pool(&[&failing], settings);
    for _ in 0..5 {
        let response = pool.forward(request("GET"), NO_RETRIES).await;
        assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(pool.breaker_state(), BreakerState::Open);
    let refused = pool.forward(request("GET"), NO_RETRIES).await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (59..=60).contains(&retry_after),
        "Retry-After: {retry_after}"
    );
    assert_eq!(
        refused.headers()["content-type"],
        "application/problem+json"
    );
    let body = axum::body::to_bytes(refused.into_body(), 1 << 20)
        .await
        .unwrap();
    let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(
        problem["type"]
            .as_str()
            .unwrap()
            .ends_with("upstream-unavailable"),
        "{problem}"
    );
    assert_eq!(
        failing.hits(),
        5,
        "the open breaker did not call the upstream"
    );
}

#[tokio::test]
async fn the_breaker_recovers_by_itself_once_the_upstream_does() {
    let flaky = Upstream::start(503).await;
    let settings = PoolSettings {
        breaker: BreakerConfig {
            min_calls: 4,
            open_duration: Duration::from_millis(300),
            half_open_calls: 2,
            ..BreakerConfig::default()
        },
        ..lenient()
    };
    let pool = pool(&[&flaky], settings);
    for _ in 0..4 {
        pool.forward(request("GET"), NO_RETRIES).await;
    }
    assert_eq!(pool.breaker_state(), BreakerState::Open);
    flaky.set_status(200);
    tokio::time::sleep(Duration::from_millis(350)).await;
    for _ in 0..2 {
        let probe = pool.forward(request("GET"), NO_RETRIES).await;
        assert_eq!(probe.status(), StatusCode::OK);
    }
    assert_eq!(pool.breaker_state(), BreakerState::Closed);
}

#[tokio::test]
async fn an_ejected_instance_comes_back_by_itself() {
    let flaky = Upstream::start(502).await;
    let steady = Upstream::start(200).await;
    let settings = PoolSettings {
        outlier: OutlierConfig {
            consecutive_errors: 3,
            base_ejection: Duration::from_millis(400),
            max_ejection: Duration::from_secs(5),
            max_ejected_percent: 50,
        },
        ..lenient()
    };
    let pool = pool(&[&flaky, &steady], settings);
    // Until the flaky instance has failed three times in a row, it gets its share.
    for _ in 0..200 {
        pool.forward(request("GET"), NO_RETRIES).await;
        if flaky.hits() >= 3 {
            break;
        }
    }
    let ejected_at = flaky.hits();
    assert_eq!(ejected_at, 3);
    let flaky_health = || pool.instance_health().next().unwrap().1;
    assert!(pool.is_ejected(flaky_health()));
    for _ in 0..50 {
        let response = pool.forward(request("GET"), NO_RETRIES).await;
        assert_eq!(
            response.status(),
            StatusCode::OK,
            "only the steady instance"
        );
    }
    assert_eq!(flaky.hits(), ejected_at, "no traffic while ejected");

    flaky.set_status(200);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert!(!pool.is_ejected(flaky_health()), "the ejection ran out");
    for _ in 0..50 {
        pool.forward(request("GET"), NO_RETRIES).await;
    }
    assert!(
        flaky.hits() > ejected_at,
        "traffic again without any health check"
    );
    assert_eq!(flaky_health().ejections.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn never_more_than_half_of_a_pool_is_ejected() {
    let first = Upstream::start(503).await;
    let second = Upstream::start(503).await;
    let settings = PoolSettings {
        outlier: OutlierConfig {
            consecutive_errors: 2,
            ..OutlierConfig::default()
        },
        ..lenient()
    };
    let pool = pool(&[&first, &second], settings);
    for _ in 0..40 {
        pool.forward(request("GET"), NO_RETRIES).await;
    }
    let ejected = pool
        .instance_health()
        .filter(|(_, health)| pool.is_ejected(health))
        .count();
    assert_eq!(ejected, 1, "one of two at most");
    // A pool of one is never emptied.
    let alone = Upstream::start(503).await;
    let single = self::pool(&[&alone], pool_settings_ejecting_at(1));
    for _ in 0..5 {
        single.forward(request("GET"), NO_RETRIES).await;
    }
    assert_eq!(alone.hits(), 5);
}

fn pool_settings_ejecting_at(consecutive_errors: u32) -> PoolSettings {
    PoolSettings {
        outlier: OutlierConfig {
            consecutive_errors,
            ..OutlierConfig::default()
        },
        ..lenient()
    }
}

#[tokio::test]
async fn tries_spread_over_instances_by_least_outstanding() {
    let upstreams = [
        Upstream::start(200).await,
        Upstream::start(200).await,
        Upstream::start(200).await,
    ];
    let pool = pool(&upstreams.iter().collect::<Vec<_>>(), lenient());
    for _ in 0..300 {
        pool.forward(request("GET"), NO_RETRIES).await;
    }
    for upstream in &upstreams {
        assert!(
            (40..=160).contains(&upstream.hits()),
            "each instance gets a share: {}",
            upstream.hits()
        );
    }
}
