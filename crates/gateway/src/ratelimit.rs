//! Rate limits per client IP and per user (GCRA), in memory or shared through Redis.
//!
//! The generic cell rate algorithm keeps one number per key, the theoretical arrival time
//! (TAT): a limit of `n` per `period` lets a request through when
//! `now >= TAT + period/n - period`, i.e. up to `n` at once after a quiet spell and then one
//! every `period/n`, with no fixed-window edge where twice the limit slips through. On Redis
//! the same arithmetic runs in one Lua script against the server's clock, so every gateway
//! instance shares one limit. A backend that fails lets requests through (fail open) unless
//! `gateway.rate_limit.fail_open = false`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::response::{IntoResponse, Response};
use http::HeaderValue;
use logicore_platform::cache::RedisStore;
use logicore_platform::config::Rate;
use logicore_platform::http::{ErrorCode, Problem};
use tokio::time::Instant;

/// The GCRA step shared by both backends, in milliseconds: given the stored TAT (if any) and
/// now, returns the verdict and the TAT to store when allowed.
fn gcra(stored_tat: Option<u64>, now: u64, rate: Rate) -> (Verdict, Option<u64>) {
    let burst = u64::from(rate.count.max(1));
    let period = u64::try_from(rate.period.as_millis())
        .unwrap_or(u64::MAX)
        .max(1);
    let interval = (period / burst).max(1);
    let tat = stored_tat.unwrap_or(now).max(now);
    let new_tat = tat + interval;
    let allow_at = new_tat.saturating_sub(interval * burst);
    if now < allow_at {
        let verdict = Verdict {
            allowed: false,
            limit: rate.count,
            remaining: 0,
            reset: Duration::from_millis(tat - now),
            retry_after: Duration::from_millis(allow_at - now),
            backend_down: false,
        };
        return (verdict, None);
    }
    let reset_ms = new_tat - now;
    let remaining = (interval * burst).saturating_sub(reset_ms) / interval;
    let verdict = Verdict {
        allowed: true,
        limit: rate.count,
        remaining: u32::try_from(remaining).unwrap_or(u32::MAX),
        reset: Duration::from_millis(reset_ms),
        retry_after: Duration::ZERO,
        backend_down: false,
    };
    (verdict, Some(new_tat))
}

/// The same step as [`gcra`] on the Redis server: KEYS[1] = key, ARGV = interval ms, burst.
/// Returns {allowed (0/1), tat before, now} so the caller computes the verdict with [`gcra`].
const GCRA_SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local stored = redis.call('GET', KEYS[1])
local tat = now
if stored then tat = math.max(tonumber(stored), now) end
local new_tat = tat + interval
if now < new_tat - interval * burst then
  return {0, tat, now}
end
redis.call('SET', KEYS[1], new_tat, 'PX', new_tat - now)
return {1, tat, now}
";

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// Whether the request may go on.
    pub allowed: bool,
    /// The limit (`RateLimit-Limit`).
    pub limit: u32,
    /// Requests still allowed right now (`RateLimit-Remaining`).
    pub remaining: u32,
    /// Time until the limit is fully available again (`RateLimit-Reset`).
    pub reset: Duration,
    /// Time until a refused request would be allowed (`Retry-After`).
    pub retry_after: Duration,
    /// The backend failed and the request was let through (fail open).
    pub backend_down: bool,
}

fn ceil_seconds(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

impl Verdict {
    /// Sets `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (delta seconds).
    pub fn set_headers(&self, response: &mut Response) {
        let headers = response.headers_mut();
        headers.insert("ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert(
            "ratelimit-reset",
            HeaderValue::from(ceil_seconds(self.reset)),
        );
    }

    /// 429 problem+json with `Retry-After` and the `RateLimit-*` headers.
    pub fn refusal(&self) -> Response {
        let mut response = Problem::new(ErrorCode::RateLimited, "too many requests; slow down")
            .with_retry_after(ceil_seconds(self.retry_after).max(1))
            .into_response();
        self.set_headers(&mut response);
        response
    }
}

/// Entries kept in memory before expired ones are swept.
const SWEEP_AT: usize = 100_000;
/// Least time between two sweeps, so a map full of live keys is not rescanned per request.
const SWEEP_EVERY_MS: u64 = 10_000;

/// Theoretical arrival times by key, with the time of the last sweep.
#[derive(Default)]
struct MemoryTats {
    tats: HashMap<String, u64>,
    swept_at: u64,
}

enum Backend {
    Memory {
        origin: Instant,
        tats: Mutex<MemoryTats>,
    },
    Redis(RedisStore),
}

/// Checks requests against their limits; cheap to clone.
#[derive(Clone)]
pub struct RateLimiter {
    backend: Arc<Backend>,
    fail_open: bool,
}

impl std::fmt::Debug for RateLimiter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let backend = match &*self.backend {
            Backend::Memory { .. } => "memory",
            Backend::Redis(_) => "redis",
        };
        formatter
            .debug_struct("RateLimiter")
            .field("backend", &backend)
            .field("fail_open", &self.fail_open)
            .finish()
    }
}

/// The backend failed and the limiter fails closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimiterDown;

impl RateLimiter {
    /// Limits kept in this process.
    pub fn memory() -> Self {
        RateLimiter {
            backend: Arc::new(Backend::Memory {
                origin: Instant::now(),
                tats: Mutex::new(MemoryTats::default()),
            }),
            fail_open: true,
        }
    }

    /// Limits shared through Redis; `fail_open` decides what a Redis failure means.
    pub fn redis(store: RedisStore, fail_open: bool) -> Self {
        RateLimiter {
            backend: Arc::new(Backend::Redis(store)),
            fail_open,
        }
    }

    /// Checks (and counts) one request for `key` against `rate`. `Err` only when the backend
    /// failed and the limiter fails closed.
    pub async fn check(&self, key: &str, rate: Rate) -> Result<Verdict, LimiterDown> {
        match &*self.backend {
            Backend::Memory { origin, tats } => {
                let now = u64::try_from(origin.elapsed().as_millis()).unwrap_or(u64::MAX);
                let mut memory = tats.lock().unwrap_or_else(PoisonError::into_inner);
                let (verdict, new_tat) = gcra(memory.tats.get(key).copied(), now, rate);
                if let Some(new_tat) = new_tat {
                    if memory.tats.len() >= SWEEP_AT && now >= memory.swept_at + SWEEP_EVERY_MS {
                        // A key whose TAT has passed is a full bucket: the same as no key.
                        memory.tats.retain(|_, tat| *tat > now);
                        memory.swept_at = now;
                    }
                    memory.tats.insert(key.to_owned(), new_tat);
                }
                Ok(verdict)
            }
            Backend::Redis(store) => {
                let burst = rate.count.max(1);
                let period = u64::try_from(rate.period.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let interval = (period / u64::from(burst)).max(1);
                let full_key = store.key(&format!("ratelimit:{key}"));
                let reply: Result<(u8, u64, u64), _> = store
                    .run(|mut connection| async move {
                        redis::Script::new(GCRA_SCRIPT)
                            .key(full_key)
                            .arg(interval)
                            .arg(burst)
                            .invoke_async(&mut connection)
                            .await
                    })
                    .await;
                match reply {
                    Ok((_, tat, now)) => Ok(gcra(Some(tat), now, rate).0),
                    Err(_) if self.fail_open => Ok(Verdict {
                        allowed: true,
                        limit: rate.count,
                        remaining: rate.count,
                        reset: Duration::ZERO,
                        retry_after: Duration::ZERO,
                        backend_down: true,
                    }),
                    Err(_) => Err(LimiterDown),
                }
            }
        }
    }
}

/// The limits of one route for one request: per client IP, and per user when the request is
/// authenticated. Returns the most constraining verdict (`None` when the route has no limit),
/// or the refusal to send.
pub async fn check_route(
    limiter: &RateLimiter,
    prefix: &str,
    limits: &logicore_platform::config::RouteRateLimitConfig,
    ip: std::net::IpAddr,
    user: Option<&str>,
) -> Result<Option<Verdict>, Response> {
    let mut checks: Vec<(&'static str, String, Rate)> = Vec::with_capacity(2);
    if let Some(rate) = limits.per_ip {
        checks.push(("ip", format!("{prefix}|ip|{ip}"), rate));
    }
    if let (Some(rate), Some(user)) = (limits.per_user, user) {
        checks.push(("user", format!("{prefix}|user|{user}"), rate));
    }
    let mut tightest: Option<Verdict> = None;
    for (scope, key, rate) in checks {
        let verdict = match limiter.check(&key, rate).await {
            Ok(verdict) => verdict,
            Err(LimiterDown) => {
                crate::metrics::record_rate_limit(scope, "backend_down_refused");
                return Err(Problem::new(
                    ErrorCode::Unavailable,
                    "the rate limiter is unavailable; try again shortly",
                )
                .with_retry_after(1)
                .into_response());
            }
        };
        let outcome = match (verdict.backend_down, verdict.allowed) {
            (true, _) => "backend_down_allowed",
            (false, true) => "allowed",
            (false, false) => "limited",
        };
        crate::metrics::record_rate_limit(scope, outcome);
        if !verdict.allowed {
            return Err(verdict.refusal());
        }
        if tightest.is_none_or(|current| verdict.remaining < current.remaining) {
            tightest = Some(verdict);
        }
    }
    Ok(tightest)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(count: u32, period_ms: u64) -> Rate {
        Rate {
            count,
            period: Duration::from_millis(period_ms),
        }
    }

    /// Runs `gcra` for requests at `times` (ms), returning which were allowed.
    fn run(times: &[u64], rate: Rate) -> Vec<bool> {
        let mut tat = None;
        times
            .iter()
            .map(|&now| {
                let (verdict, new_tat) = gcra(tat, now, rate);
                if new_tat.is_some() {
                    tat = new_tat;
                }
                verdict.allowed
            })
            .collect()
    }

    #[test]
    fn a_burst_of_the_limit_then_one_per_interval() {
        // 5 per second: five at once, the sixth waits 200 ms.
        let allowed = run(&[0, 0, 0, 0, 0, 0, 199, 200, 200, 400], rate(5, 1000));
        assert_eq!(
            allowed,
            [
                true, true, true, true, true, false, false, true, false, true
            ]
        );
    }

    #[test]
    fn no_window_edge_lets_twice_the_limit_through() {
        // 10 at 999 ms and 10 more at 1001 ms would pass a fixed one-second window.
        let mut times = vec![999; 10];
        times.extend([1001; 10]);
        let allowed = run(&times, rate(10, 1000)).iter().filter(|a| **a).count();
        assert_eq!(allowed, 10);
    }

    #[test]
    fn headers_count_down_and_say_when_to_come_back() {
        let (first, tat) = gcra(None, 0, rate(3, 3000));
        assert_eq!((first.remaining, first.reset), (2, Duration::from_secs(1)));
        let (second, tat) = gcra(tat, 0, rate(3, 3000));
        let (third, tat) = gcra(tat, 0, rate(3, 3000));
        assert_eq!((second.remaining, third.remaining), (1, 0));
        let (refused, _) = gcra(tat, 500, rate(3, 3000));
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, Duration::from_millis(500));
        assert_eq!(refused.reset, Duration::from_millis(2500));
    }

    #[tokio::test]
    async fn the_memory_backend_limits_per_key() {
        let limiter = RateLimiter::memory();
        let limit = rate(2, 60_000);
        for _ in 0..2 {
            assert!(limiter.check("ip:a", limit).await.unwrap().allowed);
        }
        assert!(!limiter.check("ip:a", limit).await.unwrap().allowed);
        assert!(limiter.check("ip:b", limit).await.unwrap().allowed);
    }
}
