//! Shared caching backends: the default lives in the process (`memory://`); `redis://` shares
//! state between instances (gateway response cache, rate limits, service query caches).
//!
//! A cache backend that goes away degrades to pass-through, never to an error: callers treat
//! [`redis::Unavailable`] as "no cached value".

pub mod redis;

pub use self::redis::{RedisStore, Unavailable};
