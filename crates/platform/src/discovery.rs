//! Service discovery: where the instances of each service are.
//!
//! `static://` (the default) reads them from `[discovery.static]`; Consul and etcd backends
//! will implement the same lookups.

use std::collections::BTreeMap;

use crate::config::DiscoveryConfig;

/// Instances per service, as base URLs (`http://10.0.0.5:4002`).
#[derive(Debug, Clone, Default)]
pub struct Discovery {
    instances: BTreeMap<String, Vec<String>>,
}

impl Discovery {
    /// Builds the static discovery of `[discovery.static]`.
    pub fn from_config(config: &DiscoveryConfig) -> Self {
        Discovery {
            instances: config.static_instances.clone(),
        }
    }

    /// Returns the instances of `service` (empty when none is known).
    pub fn instances(&self, service: &str) -> &[String] {
        self.instances.get(service).map_or(&[], Vec::as_slice)
    }

    /// Returns the services with at least one instance.
    pub fn services(&self) -> impl Iterator<Item = &str> {
        self.instances
            .iter()
            .filter(|(_, instances)| !instances.is_empty())
            .map(|(service, _)| service.as_str())
    }
}
