//! The part of the gateway that SIGHUP replaces: routes, upstreams, issuers, trusted proxies.
//!
//! Requests take a snapshot (`Arc`) at their start and keep it to the end, so a reload never
//! changes the rules under a request in flight, and connections are not touched at all.

use std::sync::{Arc, RwLock};

use crate::auth::Authenticator;
use crate::forward::TrustedProxies;
use crate::routing::RouteTable;

/// One consistent set of edge rules.
#[derive(Debug)]
pub struct EdgeConfig {
    /// The routing table.
    pub table: RouteTable,
    /// Verifies bearer tokens.
    pub authenticator: Authenticator,
    /// Peers whose forwarding headers are believed.
    pub trusted_proxies: TrustedProxies,
}

/// The current edge rules, swappable atomically; cheap to clone.
#[derive(Debug, Clone)]
pub struct LiveEdge(Arc<RwLock<Arc<EdgeConfig>>>);

impl LiveEdge {
    /// Starts with `config`.
    pub fn new(config: EdgeConfig) -> Self {
        LiveEdge(Arc::new(RwLock::new(Arc::new(config))))
    }

    /// Returns the rules in force now.
    pub fn current(&self) -> Arc<EdgeConfig> {
        match self.0.read() {
            Ok(current) => Arc::clone(&current),
            Err(poisoned) => Arc::clone(&poisoned.into_inner()),
        }
    }

    /// Puts `config` in force for every request that starts from now on.
    pub fn replace(&self, config: EdgeConfig) {
        let config = Arc::new(config);
        match self.0.write() {
            Ok(mut current) => *current = config,
            Err(poisoned) => *poisoned.into_inner() = config,
        }
    }
}
