//! Get-or-load caching of query results for services (the seed's `getCachedData`).
//!
//! Values are kept as JSON for a TTL, in this process or in Redis. Concurrent loads of one key
//! in a process are coalesced. A write invalidates the keys it changes once it has committed;
//! a load that was running across an invalidation does not store its (possibly old) result,
//! so in one process a cached read never outlives a committed change, and across processes
//! sharing Redis at most the TTL. A Redis that fails means loading from the database.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::redis::RedisStore;
use super::single_flight::SingleFlight;

enum Backend {
    Memory(moka::sync::Cache<String, Arc<[u8]>>),
    Redis(RedisStore),
}

/// A query cache for one service; cheap to clone.
#[derive(Clone)]
pub struct QueryCache {
    backend: Arc<Backend>,
    namespace: &'static str,
    ttl: Duration,
    loads: SingleFlight<String>,
    /// Bumped by every invalidation; a load stores only if it did not change meanwhile.
    epoch: Arc<AtomicU64>,
}

impl std::fmt::Debug for QueryCache {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("QueryCache")
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl QueryCache {
    /// A cache in this process, bounded by `max_bytes`.
    pub fn memory(namespace: &'static str, ttl: Duration, max_bytes: u64) -> Self {
        let entries = moka::sync::Cache::builder()
            .max_capacity(max_bytes)
            .weigher(|key: &String, value: &Arc<[u8]>| {
                u32::try_from(key.len() + value.len()).unwrap_or(u32::MAX)
            })
            .time_to_live(ttl)
            .build();
        Self::with(Backend::Memory(entries), namespace, ttl)
    }

    /// A cache in Redis, shared by every process of the platform.
    pub fn redis(store: RedisStore, namespace: &'static str, ttl: Duration) -> Self {
        Self::with(Backend::Redis(store), namespace, ttl)
    }

    fn with(backend: Backend, namespace: &'static str, ttl: Duration) -> Self {
        QueryCache {
            backend: Arc::new(backend),
            namespace,
            ttl,
            loads: SingleFlight::default(),
            epoch: Arc::new(AtomicU64::new(0)),
        }
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}:{key}", self.namespace)
    }

    async fn get(&self, key: &str) -> Option<Vec<u8>> {
        match &*self.backend {
            Backend::Memory(entries) => entries.get(key).map(|bytes| bytes.to_vec()),
            Backend::Redis(store) => {
                let name = store.key(&format!("query:{key}"));
                store
                    .run(|mut connection| async move {
                        redis::AsyncCommands::get::<_, Option<Vec<u8>>>(&mut connection, name).await
                    })
                    .await
                    .ok()
                    .flatten()
            }
        }
    }

    async fn put(&self, key: String, bytes: Vec<u8>) {
        match &*self.backend {
            Backend::Memory(entries) => entries.insert(key, bytes.into()),
            Backend::Redis(store) => {
                let name = store.key(&format!("query:{key}"));
                let ttl = u64::try_from(self.ttl.as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1);
                let _ = store
                    .run(|mut connection| async move {
                        redis::AsyncCommands::pset_ex::<_, _, ()>(&mut connection, name, bytes, ttl)
                            .await
                    })
                    .await;
            }
        }
    }

    /// Returns the cached value of `key`, or runs `load` (once per process for concurrent
    /// callers) and caches a successful result for the TTL. Errors are not cached.
    pub async fn get_or_load<T, E, F, Fut>(&self, key: &str, load: F) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = self.full_key(key);
        if let Some(value) = self.cached(&key).await {
            crate::telemetry::metrics::record_query_cache(self.namespace, "hit");
            return Ok(value);
        }
        let claim = match self.loads.claim(&key) {
            Ok(claim) => Some(claim),
            Err(waiter) => {
                waiter.done().await;
                if let Some(value) = self.cached(&key).await {
                    crate::telemetry::metrics::record_query_cache(self.namespace, "hit");
                    return Ok(value);
                }
                None
            }
        };
        crate::telemetry::metrics::record_query_cache(self.namespace, "miss");
        let epoch = self.epoch.load(Ordering::Acquire);
        let value = load().await?;
        if self.epoch.load(Ordering::Acquire) == epoch
            && let Ok(bytes) = serde_json::to_vec(&value)
        {
            self.put(key.clone(), bytes).await;
            // An invalidation that ran while the value was being stored may have deleted the
            // key before this write landed: take the write back.
            if self.epoch.load(Ordering::Acquire) != epoch {
                self.forget(&[key]).await;
            }
        }
        drop(claim);
        Ok(value)
    }

    async fn cached<T: DeserializeOwned>(&self, key: &str) -> Option<T> {
        serde_json::from_slice(&self.get(key).await?).ok()
    }

    /// Forgets `keys` (call after the change that makes them stale has committed).
    pub async fn invalidate(&self, keys: &[String]) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        let names: Vec<String> = keys.iter().map(|key| self.full_key(key)).collect();
        self.forget(&names).await;
    }

    /// Deletes entries by their full names.
    async fn forget(&self, names: &[String]) {
        let names = names.to_vec();
        match &*self.backend {
            Backend::Memory(entries) => {
                for name in &names {
                    entries.invalidate(name);
                }
            }
            Backend::Redis(store) => {
                let names: Vec<String> = names
                    .iter()
                    .map(|name| store.key(&format!("query:{name}")))
                    .collect();
                let deleted = store
                    .run(|mut connection| async move {
                        redis::AsyncCommands::del::<_, ()>(&mut connection, names).await
                    })
                    .await;
                if deleted.is_err() {
                    tracing::warn!(
                        namespace = self.namespace,
                        "cache invalidation failed; entries expire within their TTL"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use super::*;

    fn cache() -> QueryCache {
        QueryCache::memory("test", Duration::from_secs(60), 1 << 20)
    }

    #[tokio::test]
    async fn loads_once_then_serves_the_cached_value_until_invalidated() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        let load = || async {
            let n = loads.fetch_add(1, Ordering::SeqCst) + 1;
            Ok::<_, ()>(format!("value {n}"))
        };
        assert_eq!(cache.get_or_load("k", load).await.unwrap(), "value 1");
        assert_eq!(cache.get_or_load("k", load).await.unwrap(), "value 1");
        cache.invalidate(&["k".to_owned()]).await;
        assert_eq!(cache.get_or_load("k", load).await.unwrap(), "value 2");
    }

    #[tokio::test]
    async fn errors_are_not_cached() {
        let cache = cache();
        let failed: Result<String, &str> = cache.get_or_load("k", || async { Err("down") }).await;
        assert_eq!(failed, Err("down"));
        let loaded: Result<String, &str> = cache
            .get_or_load("k", || async { Ok("up".to_owned()) })
            .await;
        assert_eq!(loaded.unwrap(), "up");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_loads_of_a_key_are_coalesced() {
        let cache = cache();
        let loads = AtomicUsize::new(0);
        let values = futures_util::future::join_all((0..20).map(|_| {
            cache.get_or_load("k", || async {
                loads.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                Ok::<_, ()>(7u32)
            })
        }))
        .await;
        assert!(values.iter().all(|value| *value == Ok(7)));
        assert_eq!(loads.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_load_running_across_an_invalidation_does_not_store_old_data() {
        let cache = cache();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let slow = {
            let cache = cache.clone();
            tokio::spawn(async move {
                cache
                    .get_or_load("k", || async {
                        let _ = started_tx.send(());
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        Ok::<_, ()>("read before the write".to_owned())
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        // The write commits and invalidates while the slow read is still running.
        cache.invalidate(&["k".to_owned()]).await;
        slow.await.unwrap().unwrap();
        let now = cache
            .get_or_load("k", || async { Ok::<_, ()>("after the write".to_owned()) })
            .await
            .unwrap();
        assert_eq!(now, "after the write");
    }
}
