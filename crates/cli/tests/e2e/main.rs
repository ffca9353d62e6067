//! End-to-end suite: the real `logicore` binary, on port 0, on every database of the run.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

mod cache_events;
mod catalog;
mod cli;
mod jobs;
mod lifecycle;
mod oauth;
mod order_faults;
mod orders;
mod outage;
mod providers;
mod proxy;
mod relay;
mod split;
mod support;
mod users;
mod webhooks;
