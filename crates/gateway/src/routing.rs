//! The routing table: path prefixes → upstreams, with each route's policy.
//!
//! Services bring built-in routes; `[[gateway.routes]]` entries add to them, and a file route
//! with the same prefix replaces the built-in one. The longest matching prefix wins, matched on
//! segment boundaries (`/api/v1/products` matches `/api/v1/products/42`, not
//! `/api/v1/productsx`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use http::{HeaderValue, Method};
use logicore_platform::config::{RouteAuth, RouteConfig, RouteRateLimitConfig};
use logicore_platform::discovery::Discovery;

use crate::remote::{CallPolicy, HttpClient, Instance, PoolSettings, RemotePool};

/// Where a route's requests go.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A service mounted in this process (`logicore up`): called directly, no network.
    Local(Router),
    /// A service elsewhere, reached over HTTP through discovery.
    Remote(RemotePool),
}

/// Finds the upstream of a service name: a router mounted here, else discovered instances.
pub struct UpstreamResolver {
    local: BTreeMap<String, Router>,
    discovery: Discovery,
    client: HttpClient,
    remote: BTreeMap<String, RemotePool>,
    settings: Box<dyn Fn(&str) -> PoolSettings + Send + Sync>,
    /// Pools of the rules being replaced, kept when their service is unchanged.
    previous: BTreeMap<String, RemotePool>,
}

impl std::fmt::Debug for UpstreamResolver {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("UpstreamResolver")
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl UpstreamResolver {
    /// Creates a resolver over the services mounted in this process and discovery, with
    /// default resilience settings for remote pools.
    pub fn new(local: BTreeMap<String, Router>, discovery: Discovery, client: HttpClient) -> Self {
        UpstreamResolver {
            local,
            discovery,
            client,
            remote: BTreeMap::new(),
            settings: Box::new(|_| PoolSettings::default()),
            previous: BTreeMap::new(),
        }
    }

    /// Offers the pools of the table being replaced: a service whose instances and settings
    /// did not change keeps its pool, with its breaker state, retry budget and ejections.
    pub fn with_previous(mut self, table: &RouteTable) -> Self {
        for route in table.routes() {
            if let Upstream::Remote(pool) = &route.upstream {
                self.previous
                    .insert(pool.service().to_owned(), pool.clone());
            }
        }
        self
    }

    /// Sets how the resilience settings of a remote service's pool are chosen.
    pub fn with_pool_settings(
        mut self,
        settings: impl Fn(&str) -> PoolSettings + Send + Sync + 'static,
    ) -> Self {
        self.settings = Box::new(settings);
        self
    }

    /// Returns the upstream of `service`; one shared pool per remote service.
    pub fn resolve(&mut self, service: &str) -> Option<Upstream> {
        if let Some(router) = self.local.get(service) {
            return Some(Upstream::Local(router.clone()));
        }
        if let Some(pool) = self.remote.get(service) {
            return Some(Upstream::Remote(pool.clone()));
        }
        let instances: Vec<Instance> = self
            .discovery
            .instances(service)
            .iter()
            .filter_map(|url| Instance::parse(url))
            .collect();
        if instances.is_empty() {
            return None;
        }
        let settings = (self.settings)(service);
        let pool = match self.previous.get(service) {
            Some(previous) if previous.matches(&instances, &settings) => previous.clone(),
            _ => RemotePool::new(service, instances, self.client.clone(), settings),
        };
        self.remote.insert(service.to_owned(), pool.clone());
        Some(Upstream::Remote(pool))
    }

    /// Returns the remote pools resolved so far.
    pub fn remote_pools(&self) -> impl Iterator<Item = &RemotePool> {
        self.remote.values()
    }
}

impl Route {
    /// How this route calls a remote upstream.
    pub fn call_policy(&self) -> CallPolicy {
        CallPolicy {
            timeout: self.timeout,
            retries: self.retries,
        }
    }
}

/// Who may use a route; checked before the upstream is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePolicy {
    /// Token policy.
    pub auth: RouteAuth,
    /// Roles of which the caller needs one (empty = any authenticated caller).
    pub roles: Vec<String>,
}

/// One entry of the routing table.
#[derive(Debug, Clone)]
pub struct Route {
    /// Path prefix.
    pub prefix: String,
    /// `route` label of responses an upstream did not label itself (`<prefix>/*`).
    pub template: std::sync::Arc<str>,
    /// Upstream service name (for logs and metrics).
    pub service: std::sync::Arc<str>,
    /// Methods routed; `None` = all.
    pub methods: Option<Vec<Method>>,
    /// Access policy.
    pub policy: RoutePolicy,
    /// `Cache-Control` set on successful GET responses that have none.
    pub cache_control: Option<HeaderValue>,
    /// Time a remote upstream has to start answering, per try.
    pub timeout: Duration,
    /// Retries of idempotent, bodiless requests after gateway errors.
    pub retries: u32,
    /// Response cache: `Some(ttl)` when enabled (`ttl` = freshness of responses with none).
    pub cache: Option<Duration>,
    /// Rate limits per client IP and per user.
    pub rate_limit: RouteRateLimitConfig,
    /// Mask sensitive fields of JSON responses.
    pub masking: bool,
    /// Where requests go.
    pub upstream: Upstream,
}

/// Why a route could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// The route names a service that neither runs here nor has discovered instances.
    #[error(
        "config key `gateway.routes[{index}].service`: `{service}` does not run in this process and has no instances in [discovery.static]"
    )]
    UnknownService {
        /// Index in `[[gateway.routes]]`.
        index: usize,
        /// The service named.
        service: String,
    },
}

/// The routes of one gateway, longest prefix first.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    /// Builds the table from the services' built-in routes and the file routes.
    ///
    /// A built-in route whose service cannot be resolved is left out (that service is not
    /// deployed); a file route whose service cannot be resolved is an error.
    pub fn build(
        built_in: &[RouteConfig],
        file_routes: &[RouteConfig],
        resolver: &mut UpstreamResolver,
    ) -> Result<Self, RoutingError> {
        let mut by_prefix: BTreeMap<String, Route> = BTreeMap::new();
        for config in built_in {
            let Some(upstream) = resolver.resolve(&config.service) else {
                continue;
            };
            by_prefix.insert(
                normalise_prefix(&config.prefix),
                route_from(config, upstream),
            );
        }
        for (index, config) in file_routes.iter().enumerate() {
            let Some(upstream) = resolver.resolve(&config.service) else {
                return Err(RoutingError::UnknownService {
                    index,
                    service: config.service.clone(),
                });
            };
            by_prefix.insert(
                normalise_prefix(&config.prefix),
                route_from(config, upstream),
            );
        }
        let mut routes: Vec<Arc<Route>> = by_prefix.into_values().map(Arc::new).collect();
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Ok(RouteTable { routes })
    }

    /// Returns the route for `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes
            .iter()
            .find(|route| prefix_matches(&route.prefix, path))
    }

    /// Returns every route (longest prefix first).
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }
}

fn route_from(config: &RouteConfig, upstream: Upstream) -> Route {
    let methods = (!config.methods.is_empty()).then(|| {
        config
            .methods
            .iter()
            .filter_map(|method| Method::from_bytes(method.as_bytes()).ok())
            .collect()
    });
    let prefix = normalise_prefix(&config.prefix);
    Route {
        template: format!("{}/*", prefix.trim_end_matches('/')).into(),
        prefix,
        service: config.service.as_str().into(),
        methods,
        policy: RoutePolicy {
            auth: config.auth,
            roles: config.roles.clone(),
        },
        cache_control: HeaderValue::from_str(&config.cache_control)
            .ok()
            .filter(|value| !value.is_empty()),
        timeout: config.timeout,
        retries: config.retries,
        cache: config.cache.enabled.then_some(config.cache.ttl),
        rate_limit: config.rate_limit.clone(),
        masking: config.masking,
        upstream,
    }
}

fn normalise_prefix(prefix: &str) -> String {
    let trimmed = prefix.trim_end_matches('/');
    if trimmed.is_empty() {
        "/".to_owned()
    } else {
        trimmed.to_owned()
    }
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    if prefix == "/" {
        return true;
    }
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/'),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(file_routes: &[RouteConfig]) -> Result<RouteTable, RoutingError> {
        let mut local = BTreeMap::new();
        local.insert("catalog".to_owned(), Router::new());
        let mut discovery_config = logicore_platform::config::DiscoveryConfig::default();
        discovery_config
            .static_instances
            .insert("erp".to_owned(), vec!["http://127.0.0.1:9/base".to_owned()]);
        let mut resolver = UpstreamResolver::new(
            local,
            Discovery::from_config(&discovery_config),
            crate::remote::http_client(),
        );
        let built_in: Vec<RouteConfig> = [
            ("catalog", "/api/v1/products"),
            ("catalog", "/api/v1/product-categories"),
            ("orders", "/api/v1/orders"),
        ]
        .into_iter()
        .map(|(service, prefix)| RouteConfig {
            prefix: prefix.to_owned(),
            service: service.to_owned(),
            ..RouteConfig::default()
        })
        .collect();
        RouteTable::build(&built_in, file_routes, &mut resolver)
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        let table = table(&[]).unwrap();
        assert_eq!(
            table.find("/api/v1/products").unwrap().prefix,
            "/api/v1/products"
        );
        assert_eq!(
            table.find("/api/v1/products/42").unwrap().prefix,
            "/api/v1/products"
        );
        assert_eq!(
            table.find("/api/v1/product-categories/1").unwrap().prefix,
            "/api/v1/product-categories"
        );
        assert!(table.find("/api/v1/productsx").is_none());
        assert!(table.find("/api/v1/orders").is_none());
    }

    #[test]
    fn file_routes_replace_built_in_routes_with_the_same_prefix() {
        let file_route = RouteConfig {
            prefix: "/api/v1/products/".into(),
            service: "catalog".into(),
            cache_control: "public, max-age=60".into(),
            methods: vec!["GET".into()],
            ..RouteConfig::default()
        };
        let table = table(&[file_route]).unwrap();
        assert_eq!(table.routes().len(), 2);
        let route = table.find("/api/v1/products/1").unwrap();
        assert_eq!(route.cache_control.as_ref().unwrap(), "public, max-age=60");
        assert_eq!(route.methods.as_deref(), Some(&[Method::GET][..]));
    }

    #[test]
    fn a_reload_keeps_the_pools_of_unchanged_services() {
        let remote = RouteConfig {
            prefix: "/legacy".into(),
            service: "erp".into(),
            ..RouteConfig::default()
        };
        let first = table(std::slice::from_ref(&remote)).unwrap();
        let pool_of = |table: &RouteTable| match &table.find("/legacy").unwrap().upstream {
            Upstream::Remote(pool) => pool.clone(),
            Upstream::Local(_) => panic!("not remote"),
        };
        let rebuild = |instances: &str, settings: PoolSettings| {
            let mut discovery_config = logicore_platform::config::DiscoveryConfig::default();
            discovery_config
                .static_instances
                .insert("erp".to_owned(), vec![instances.to_owned()]);
            let mut resolver = UpstreamResolver::new(
                BTreeMap::new(),
                Discovery::from_config(&discovery_config),
                crate::remote::http_client(),
            )
            .with_pool_settings(move |_| settings.clone())
            .with_previous(&first);
            RouteTable::build(&[], std::slice::from_ref(&remote), &mut resolver).unwrap()
        };
        let same = rebuild("http://127.0.0.1:9/base", PoolSettings::default());
        assert!(pool_of(&same).same_pool(&pool_of(&first)), "kept");
        let moved = rebuild("http://127.0.0.1:10/base", PoolSettings::default());
        assert!(
            !pool_of(&moved).same_pool(&pool_of(&first)),
            "new instances"
        );
        let mut stricter = PoolSettings::default();
        stricter.breaker.min_calls = 5;
        let retuned = rebuild("http://127.0.0.1:9/base", stricter);
        assert!(
            !pool_of(&retuned).same_pool(&pool_of(&first)),
            "new settings"
        );
    }

    #[test]
    fn routes_resolve_to_discovered_instances_or_are_refused() {
        let remote = RouteConfig {
            prefix: "/legacy".into(),
            service: "erp".into(),
            ..RouteConfig::default()
        };
        let routes = table(&[remote]).unwrap();
        assert!(matches!(
            routes.find("/legacy/x").unwrap().upstream,
            Upstream::Remote(_)
        ));
        assert!(
            routes.find("/api/v1/orders").is_none(),
            "undeployed built-in routes are left out"
        );

        let nowhere = RouteConfig {
            prefix: "/nowhere".into(),
            service: "ghost".into(),
            ..RouteConfig::default()
        };
        let err = table(&[nowhere]).unwrap_err();
        assert!(
            err.to_string().contains("gateway.routes[0].service"),
            "{err}"
        );
    }
}
