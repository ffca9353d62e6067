//! What keeps the gateway up when an upstream misbehaves: a circuit breaker per upstream
//! service and a retry budget.
//!
//! The breaker follows resilience4j's semantics (SPEC §4): a time-based rolling window of
//! one-second buckets counts calls, failures (connection errors, timeouts, 5xx) and slow calls;
//! once the window holds `min_calls`, a failure rate or slow-call rate at or above its
//! threshold opens the breaker. Open, it refuses calls for `open_duration`, then lets
//! `half_open_calls` probes through and closes or reopens on their result.
//!
//! The retry budget (Finagle's idea) bounds retries to a share of requests over a rolling
//! ten seconds, plus a small allowance per second, so retries cannot multiply the load on an
//! upstream that is already failing.
//!
//! Time is `tokio::time::Instant`, so tests drive both with a paused clock.

use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use logicore_platform::config::{BreakerConfig, RetryBudgetConfig};
use tokio::time::Instant;

/// Counts of one second of the rolling window.
#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Seconds since the breaker's origin this bucket holds; stale buckets are reset.
    second: u64,
    calls: u32,
    failures: u32,
    slow: u32,
}

/// The state of a breaker, as reported in metrics and `/admin/upstreams`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    /// Calls flow; outcomes are counted.
    Closed,
    /// Calls are refused without touching the upstream.
    Open,
    /// A few probe calls decide whether to close or reopen.
    HalfOpen,
}

impl BreakerState {
    /// `closed`, `open` or `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half_open",
        }
    }

    /// The value of the state gauge: 0 closed, 1 open, 2 half open.
    pub fn gauge(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::Open => 1.0,
            BreakerState::HalfOpen => 2.0,
        }
    }
}

#[derive(Debug)]
enum Phase {
    Closed,
    Open {
        until: Instant,
    },
    HalfOpen {
        permitted: u32,
        calls: u32,
        failures: u32,
        slow: u32,
    },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    buckets: Vec<Bucket>,
    /// Bumped on every state change; a permit of an earlier state neither counts as a probe
    /// nor gives a probe slot back.
    generation: u64,
}

/// A circuit breaker for one upstream service.
pub struct Breaker {
    settings: BreakerConfig,
    origin: Instant,
    inner: Mutex<Inner>,
    on_transition: Box<dyn Fn(BreakerState) + Send + Sync>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Breaker")
            .field("state", &self.state())
            .finish_non_exhaustive()
    }
}

/// Permission to make one call; report its outcome with [`Permit::record`]. A permit dropped
/// without an outcome (the client went away) gives its half-open probe slot back.
#[derive(Debug)]
pub struct Permit<'a> {
    breaker: &'a Breaker,
    recorded: bool,
    generation: u64,
}

impl Permit<'_> {
    /// Reports the call's outcome at `now`: `failed` for a connection error, timeout or 5xx.
    pub fn record(mut self, failed: bool, elapsed: Duration, now: Instant) {
        self.recorded = true;
        self.breaker.record(failed, elapsed, now, self.generation);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.recorded {
            let mut inner = self.breaker.lock();
            let current = inner.generation == self.generation;
            if let (true, Phase::HalfOpen { permitted, .. }) = (current, &mut inner.phase) {
                *permitted = permitted.saturating_sub(1);
            }
        }
    }
}

impl Breaker {
    /// A closed breaker; `on_transition` is told every state it enters (for metrics and logs).
    pub fn new(
        settings: &BreakerConfig,
        on_transition: impl Fn(BreakerState) + Send + Sync + 'static,
    ) -> Self {
        let seconds = settings.window.as_secs().max(1);
        Breaker {
            settings: settings.clone(),
            origin: Instant::now(),
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                buckets: vec![Bucket::default(); usize::try_from(seconds).unwrap_or(1)],
                generation: 0,
            }),
            on_transition: Box::new(on_transition),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The state now (an open breaker whose time is up reports half open).
    pub fn state(&self) -> BreakerState {
        match self.lock().phase {
            Phase::Closed => BreakerState::Closed,
            Phase::Open { until } if Instant::now() < until => BreakerState::Open,
            Phase::Open { .. } | Phase::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Asks to make a call at `now`. `Err` carries how long the breaker stays open (for
    /// `Retry-After`); a half-open breaker with all its probes out also refuses.
    pub fn acquire(&self, now: Instant) -> Result<Permit<'_>, Duration> {
        let mut inner = self.lock();
        if let Phase::Open { until } = inner.phase {
            if now < until {
                return Err(until - now);
            }
            inner.phase = Phase::HalfOpen {
                permitted: 0,
                calls: 0,
                failures: 0,
                slow: 0,
            };
            inner.generation += 1;
            (self.on_transition)(BreakerState::HalfOpen);
        }
        if let Phase::HalfOpen { permitted, .. } = &mut inner.phase {
            if *permitted >= self.settings.half_open_calls {
                // Probes are out; they decide soon. Ask again in a second.
                return Err(Duration::from_secs(1));
            }
            *permitted += 1;
        }
        Ok(Permit {
            breaker: self,
            recorded: false,
            generation: inner.generation,
        })
    }

    fn record(&self, failed: bool, elapsed: Duration, now: Instant, generation: u64) {
        let slow = elapsed >= self.settings.slow_call_duration;
        let mut inner = self.lock();
        if inner.generation != generation {
            // Started under an earlier state: tells nothing about this one.
            return;
        }
        match &mut inner.phase {
            // A call that started before the breaker opened tells nothing new.
            Phase::Open { .. } => {}
            Phase::Closed => {
                let second = (now - self.origin).as_secs();
                let slots = inner.buckets.len() as u64;
                let index = usize::try_from(second % slots).unwrap_or(0);
                let bucket = &mut inner.buckets[index];
                if bucket.second != second {
                    *bucket = Bucket {
                        second,
                        ..Bucket::default()
                    };
                }
                bucket.calls += 1;
                bucket.failures += u32::from(failed);
                bucket.slow += u32::from(slow);
                let (calls, failures, slow_calls) = inner
                    .buckets
                    .iter()
                    .filter(|bucket| bucket.second + slots > second)
                    .fold((0, 0, 0), |(c, f, s), bucket| {
                        (c + bucket.calls, f + bucket.failures, s + bucket.slow)
                    });
                if calls >= self.settings.min_calls && self.trips(calls, failures, slow_calls) {
                    self.open(&mut inner, now);
                }
            }
            Phase::HalfOpen {
                calls,
                failures,
                slow: slow_calls,
                ..
            } => {
                *calls += 1;
                *failures += u32::from(failed);
                *slow_calls += u32::from(slow);
                if *calls >= self.settings.half_open_calls {
                    let (calls, failures, slow_calls) = (*calls, *failures, *slow_calls);
                    if self.trips(calls, failures, slow_calls) {
                        self.open(&mut inner, now);
                    } else {
                        inner.phase = Phase::Closed;
                        inner.buckets.fill(Bucket::default());
                        inner.generation += 1;
                        (self.on_transition)(BreakerState::Closed);
                    }
                }
            }
        }
    }

    fn trips(&self, calls: u32, failures: u32, slow: u32) -> bool {
        let rate = |count: u32| u64::from(count) * 100 / u64::from(calls.max(1));
        rate(failures) >= u64::from(self.settings.failure_rate)
            || rate(slow) >= u64::from(self.settings.slow_call_rate)
    }

    fn open(&self, inner: &mut Inner, now: Instant) {
        inner.phase = Phase::Open {
            until: now + self.settings.open_duration,
        };
        inner.generation += 1;
        (self.on_transition)(BreakerState::Open);
    }
}

/// Requests and retries of one second of the budget's window.
#[derive(Debug, Clone, Copy, Default)]
struct BudgetBucket {
    second: u64,
    requests: u32,
    retries: u32,
}

/// Seconds the retry budget looks back.
const BUDGET_WINDOW_SECONDS: u64 = 10;

/// Bounds retries to `ratio` of the requests of the last ten seconds plus `min_per_second`.
#[derive(Debug)]
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u32,
    origin: Instant,
    buckets: Mutex<[BudgetBucket; BUDGET_WINDOW_SECONDS as usize]>,
}

impl RetryBudget {
    /// A budget from `[gateway.retry_budget]`.
    pub fn new(config: &RetryBudgetConfig) -> Self {
        RetryBudget {
            ratio: config.ratio,
            min_per_second: config.min_per_second,
            origin: Instant::now(),
            buckets: Mutex::new([BudgetBucket::default(); BUDGET_WINDOW_SECONDS as usize]),
        }
    }

    fn with_current<T>(
        &self,
        now: Instant,
        act: impl FnOnce(&mut BudgetBucket, (u64, u64)) -> T,
    ) -> T {
        let second = (now - self.origin).as_secs();
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        let index = usize::try_from(second % BUDGET_WINDOW_SECONDS).unwrap_or(0);
        if buckets[index].second != second {
            buckets[index] = BudgetBucket {
                second,
                ..BudgetBucket::default()
            };
        }
        let totals = buckets
            .iter()
            .filter(|bucket| bucket.second + BUDGET_WINDOW_SECONDS > second)
            .fold((0, 0), |(requests, retries), bucket| {
                (
                    requests + u64::from(bucket.requests),
                    retries + u64::from(bucket.retries),
                )
            });
        act(&mut buckets[index], totals)
    }

    /// Counts one request (its first try) made at `now`.
    pub fn record_request(&self, now: Instant) {
        self.with_current(now, |bucket, _| bucket.requests += 1);
    }

    /// Takes one retry from the budget at `now`; false when it is spent.
    pub fn try_retry(&self, now: Instant) -> bool {
        self.with_current(now, |bucket, (requests, retries)| {
            let allowed = self.ratio * requests as f64
                + f64::from(self.min_per_second) * BUDGET_WINDOW_SECONDS as f64;
            let permitted = (retries + 1) as f64 <= allowed;
            if permitted {
                bucket.retries += 1;
            }
            permitted
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    fn settings() -> BreakerConfig {
        BreakerConfig {
            window: Duration::from_secs(10),
            min_calls: 20,
            failure_rate: 50,
            slow_call_duration: Duration::from_secs(2),
            slow_call_rate: 100,
            open_duration: Duration::from_secs(10),
            half_open_calls: 5,
            ..BreakerConfig::default()
        }
    }

    fn quiet(_: BreakerState) {}

    const FAST: Duration = Duration::from_millis(10);

    fn permits(breaker: &Breaker, count: usize) -> Vec<Permit<'_>> {
        (0..count)
            .map(|_| breaker.acquire(Instant::now()).unwrap())
            .collect()
    }

    /// Twenty failures: the breaker opens.
    fn trip(breaker: &Breaker) {
        for _ in 0..20 {
            call(breaker, true);
        }
    }

    fn call(breaker: &Breaker, failed: bool) {
        breaker
            .acquire(Instant::now())
            .unwrap()
            .record(failed, FAST, Instant::now());
    }

    #[tokio::test(start_paused = true)]
    async fn opens_only_once_the_window_holds_min_calls() {
        let breaker = Breaker::new(&settings(), quiet);
        for _ in 0..19 {
            call(&breaker, true);
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "19 failures < min_calls"
        );
        call(&breaker, true);
        assert_eq!(breaker.state(), BreakerState::Open);
        let retry_after = breaker.acquire(Instant::now()).unwrap_err();
        assert_eq!(
            retry_after,
            Duration::from_secs(10),
            "fails fast while open"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_rate_under_the_threshold_keeps_it_closed() {
        let breaker = Breaker::new(&settings(), quiet);
        for index in 0..99 {
            // One call in three fails: 33 %.
            call(&breaker, index % 3 == 2);
        }
        assert_eq!(breaker.state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn old_calls_leave_the_window() {
        let breaker = Breaker::new(&settings(), quiet);
        for _ in 0..15 {
            call(&breaker, true);
        }
        tokio::time::advance(Duration::from_secs(11)).await;
        for _ in 0..10 {
            call(&breaker, true);
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Closed,
            "only 10 calls are in the window"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn half_opens_then_closes_on_good_probes_and_reopens_on_bad_ones() {
        static TRANSITIONS: AtomicUsize = AtomicUsize::new(0);
        fn count(_: BreakerState) {
            TRANSITIONS.fetch_add(1, Ordering::Relaxed);
        }
        let breaker = Breaker::new(&settings(), count);
        for _ in 0..20 {
            call(&breaker, true);
        }
        tokio::time::advance(Duration::from_secs(9)).await;
        assert_eq!(breaker.state(), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(breaker.state(), BreakerState::HalfOpen);

        // Five probes are let through, a sixth is refused while they run.
        let probes: Vec<_> = (0..5)
            .map(|_| breaker.acquire(Instant::now()).unwrap())
            .collect();
        assert!(breaker.acquire(Instant::now()).is_err());
        // Three of five fail: 60 % >= 50 %, so it reopens.
        for (index, probe) in probes.into_iter().enumerate() {
            probe.record(index < 3, FAST, Instant::now());
        }
        assert_eq!(breaker.state(), BreakerState::Open);

        tokio::time::advance(Duration::from_secs(10)).await;
        for index in 0..5 {
            call(&breaker, index < 2);
        }
        assert_eq!(breaker.state(), BreakerState::Closed, "2 of 5 failed: 40 %");
        // Closed afresh: the old failures are gone.
        call(&breaker, true);
        assert_eq!(breaker.state(), BreakerState::Closed);
        // closed -> open -> half open -> open -> half open -> closed
        assert_eq!(TRANSITIONS.load(Ordering::Relaxed), 5);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_gives_its_slot_back() {
        let breaker = Breaker::new(&settings(), quiet);
        trip(&breaker);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probes = permits(&breaker, 5);
        assert!(breaker.acquire(Instant::now()).is_err());
        drop(probes);
        assert!(breaker.acquire(Instant::now()).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn calls_started_before_a_state_change_do_not_count_after_it() {
        let breaker = Breaker::new(&settings(), quiet);
        // Slow calls in flight while the breaker trips...
        let late = permits(&breaker, 5);
        trip(&breaker);
        tokio::time::advance(Duration::from_secs(10)).await;
        let probes = permits(&breaker, 5);
        // ...finish during the half-open phase: neither results nor freed slots.
        for permit in late.into_iter().take(3) {
            permit.record(false, FAST, Instant::now());
        }
        assert_eq!(
            breaker.state(),
            BreakerState::HalfOpen,
            "old calls are not probes"
        );
        assert!(
            breaker.acquire(Instant::now()).is_err(),
            "no extra probe slot"
        );
        for probe in probes {
            probe.record(true, FAST, Instant::now());
        }
        assert_eq!(
            breaker.state(),
            BreakerState::Open,
            "the real probes decide"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn slow_calls_trip_it() {
        let breaker = Breaker::new(&settings(), quiet);
        for _ in 0..20 {
            breaker.acquire(Instant::now()).unwrap().record(
                false,
                Duration::from_millis(2500),
                Instant::now(),
            );
        }
        assert_eq!(breaker.state(), BreakerState::Open, "100 % slow");
        let breaker = Breaker::new(&settings(), quiet);
        for index in 0..20 {
            let elapsed = if index == 0 {
                FAST
            } else {
                Duration::from_secs(3)
            };
            breaker
                .acquire(Instant::now())
                .unwrap()
                .record(false, elapsed, Instant::now());
        }
        assert_eq!(breaker.state(), BreakerState::Closed, "95 % slow < 100 %");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stay_within_the_ratio_of_requests() {
        let budget = RetryBudget::new(&RetryBudgetConfig {
            ratio: 0.2,
            min_per_second: 0,
        });
        let mut retries = 0;
        for _ in 0..1000 {
            budget.record_request(Instant::now());
            // Every request would like two retries.
            for _ in 0..2 {
                if budget.try_retry(Instant::now()) {
                    retries += 1;
                }
            }
        }
        assert_eq!(retries, 200);
        // The window moves on: old requests no longer pay for retries.
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(!budget.try_retry(Instant::now()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_minimum_per_second_is_always_allowed() {
        let budget = RetryBudget::new(&RetryBudgetConfig {
            ratio: 0.0,
            min_per_second: 1,
        });
        let granted = (0..50).filter(|_| budget.try_retry(Instant::now())).count();
        assert_eq!(granted, 10, "one per second over the ten-second window");
    }
}
