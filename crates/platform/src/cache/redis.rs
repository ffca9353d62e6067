//! A Redis connection shared by the process, built to fail fast and open.
//!
//! One multiplexed connection (`redis::aio::ConnectionManager`, which reconnects by itself).
//! Connects and commands are bounded by short timeouts; after a failure the store reports
//! itself unavailable for [`BACKOFF`] without trying, so a dead Redis costs requests nothing
//! while it is down, and is used again as soon as it is back.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Longest wait for a connection or a reply.
const TIMEOUT: Duration = Duration::from_millis(250);
/// How long the store is left alone after a failure.
pub const BACKOFF: Duration = Duration::from_secs(1);

/// Redis could not be used just now; the caller goes on without it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("redis is unavailable: {0}")]
pub struct Unavailable(pub String);

/// A handle on the process's Redis; cheap to clone.
#[derive(Clone)]
pub struct RedisStore {
    manager: ConnectionManager,
    prefix: Arc<str>,
    origin: Instant,
    /// Milliseconds after `origin` until which Redis is not tried (0 = try).
    down_until_ms: Arc<AtomicU64>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Prepares a connection to `url` (`redis://` or `rediss://`); keys get `prefix`. The
    /// connection is made on first use, so a Redis that is down at start delays nothing.
    /// Only a malformed URL is an error.
    pub fn connect(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(BACKOFF);
        let manager = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisStore {
            manager,
            prefix: prefix.into(),
            origin: Instant::now(),
            down_until_ms: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The full key of `name` (with this store's prefix).
    pub fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Runs `command` on the connection unless Redis failed within the last [`BACKOFF`];
    /// a failure (or a reply later than the timeout) starts a new backoff.
    pub async fn run<T, F, Fut>(&self, command: F) -> Result<T, Unavailable>
    where
        F: FnOnce(ConnectionManager) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if self.down_until_ms.load(Ordering::Relaxed) > self.now_ms() {
            return Err(Unavailable("backing off after a failure".to_owned()));
        }
        let outcome = tokio::time::timeout(TIMEOUT * 2, command(self.manager.clone())).await;
        let error = match outcome {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(error)) => error.to_string(),
            Err(_) => format!("no reply within {:?}", TIMEOUT * 2),
        };
        let until = self.now_ms() + u64::try_from(BACKOFF.as_millis()).unwrap_or(1000);
        let previous = self.down_until_ms.swap(until, Ordering::Relaxed);
        if previous <= self.now_ms() {
            tracing::warn!(error = %error, "redis unavailable; going on without it");
        }
        Err(Unavailable(error))
    }
}
