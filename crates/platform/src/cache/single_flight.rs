//! Coalescing of concurrent work on one key: the first caller does it, the others wait for it
//! to finish and then look at what it left (a cache entry), instead of repeating it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

/// Keys being worked on; cheap to clone.
#[derive(Debug)]
pub struct SingleFlight<K> {
    in_flight: Arc<Mutex<HashMap<K, watch::Sender<()>>>>,
}

impl<K> Clone for SingleFlight<K> {
    fn clone(&self) -> Self {
        SingleFlight {
            in_flight: Arc::clone(&self.in_flight),
        }
    }
}

impl<K: Hash + Eq + Clone> Default for SingleFlight<K> {
    fn default() -> Self {
        SingleFlight {
            in_flight: Arc::new(Mutex::new(HashMap::new())),
        }
    }
}

/// The claim on a key; dropping it wakes everyone waiting for the key.
#[derive(Debug)]
pub struct Claim<K: Hash + Eq> {
    flights: Arc<Mutex<HashMap<K, watch::Sender<()>>>>,
    key: Option<K>,
}

impl<K: Hash + Eq> Drop for Claim<K> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            lock(&self.flights).remove(&key);
        }
    }
}

fn lock<K>(
    flights: &Mutex<HashMap<K, watch::Sender<()>>>,
) -> MutexGuard<'_, HashMap<K, watch::Sender<()>>> {
    flights.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<K: Hash + Eq + Clone> SingleFlight<K> {
    /// Claims `key`: `Ok` when the caller is to do the work, `Err` with a waiter when someone
    /// else is doing it (await [`Waiter::done`], then look again).
    pub fn claim(&self, key: &K) -> Result<Claim<K>, Waiter> {
        let mut flights = lock(&self.in_flight);
        if let Some(sender) = flights.get(key) {
            return Err(Waiter(sender.subscribe()));
        }
        flights.insert(key.clone(), watch::channel(()).0);
        Ok(Claim {
            flights: Arc::clone(&self.in_flight),
            key: Some(key.clone()),
        })
    }
}

/// Waits for the holder of a claim to finish.
#[derive(Debug)]
pub struct Waiter(watch::Receiver<()>);

impl Waiter {
    /// Returns once the claim is dropped.
    pub async fn done(mut self) {
        // The sender is never used to send: `changed` returns when it is dropped.
        let _ = self.0.changed().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_second_claim_waits_for_the_first() {
        let flights = SingleFlight::default();
        let claim = flights.claim(&"k").unwrap();
        let waiter = flights.claim(&"k").unwrap_err();
        assert!(flights.claim(&"other").is_ok());
        let waiting = tokio::spawn(waiter.done());
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(claim);
        waiting.await.unwrap();
        assert!(flights.claim(&"k").is_ok(), "free again");
    }
}
