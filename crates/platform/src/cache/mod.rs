//! Shared caching backends: the default lives in the process (`memory://`); `redis://` shares
//! state between instances (gateway response cache, rate limits, service query caches).
//!
//! A cache backend that goes away degrades to pass-through, never to an error: callers treat
//! [`redis::Unavailable`] as "no cached value".

mod query;
pub mod redis;
mod single_flight;

pub use self::query::QueryCache;
pub use self::redis::{RedisStore, Unavailable};
pub use self::single_flight::{Claim, SingleFlight, Waiter};
