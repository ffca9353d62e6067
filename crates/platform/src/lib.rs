//! Infrastructure shared by every LogiCore role, with no business rules: configuration,
//! storage, HTTP plumbing (problem+json, JSON extraction, request ids, listeners), telemetry
//! and process lifecycle.
//!
//! This crate depends on external crates only; services, the gateway and the CLI build on it.

pub mod auth;
pub mod bus;
pub mod cache;
pub mod config;
pub mod crypto;
pub mod db;
pub mod discovery;
pub mod email;
pub mod housekeeping;
pub mod http;
pub mod jobs;
pub mod lifecycle;
pub mod telemetry;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod wakeups;
