//! The routing table: path prefixes → upstreams, with each route's policy.
//!
//! Services bring built-in routes; `[[gateway.routes]]` entries add to them, and a file route
//! with the same prefix replaces the built-in one. The longest matching prefix wins, matched on
//! segment boundaries (`/api/v1/products` matches `/api/v1/products/42`, not
//! `/api/v1/productsx`).

use std::collections::BTreeMap;

use axum::Router;
use http::{HeaderValue, Method};
use logicore_platform::config::{RouteAuth, RouteConfig};

/// Where a route's requests go.
#[derive(Debug, Clone)]
pub enum Upstream {
    /// A service mounted in this process (`logicore up`): called directly, no network.
    Local(Router),
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
    /// Upstream service name (for logs and metrics).
    pub service: String,
    /// Methods routed; `None` = all.
    pub methods: Option<Vec<Method>>,
    /// Access policy.
    pub policy: RoutePolicy,
    /// `Cache-Control` set on successful GET responses that have none.
    pub cache_control: Option<HeaderValue>,
    /// Where requests go.
    pub upstream: Upstream,
}

/// Why a route could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutingError {
    /// The route names a service this process cannot reach yet.
    #[error(
        "gateway.routes[{index}].service: `{service}` does not run in this process; routes to remote upstreams are not yet supported"
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
    routes: Vec<Route>,
}

impl RouteTable {
    /// Builds the table from the built-in routes of the local services and the file routes.
    pub fn build(
        local_services: &BTreeMap<String, (Router, Vec<String>)>,
        file_routes: &[RouteConfig],
    ) -> Result<Self, RoutingError> {
        let mut by_prefix: BTreeMap<String, Route> = BTreeMap::new();
        for (service, (router, prefixes)) in local_services {
            for prefix in prefixes {
                let config = RouteConfig {
                    prefix: prefix.clone(),
                    service: service.clone(),
                    ..RouteConfig::default()
                };
                by_prefix.insert(
                    prefix.clone(),
                    route_from(&config, Upstream::Local(router.clone())),
                );
            }
        }
        for (index, config) in file_routes.iter().enumerate() {
            let Some((router, _)) = local_services.get(&config.service) else {
                return Err(RoutingError::UnknownService {
                    index,
                    service: config.service.clone(),
                });
            };
            let prefix = normalise_prefix(&config.prefix);
            by_prefix.insert(prefix, route_from(config, Upstream::Local(router.clone())));
        }
        let mut routes: Vec<Route> = by_prefix.into_values().collect();
        routes.sort_by_key(|route| std::cmp::Reverse(route.prefix.len()));
        Ok(RouteTable { routes })
    }

    /// Returns the route for `path`, if any.
    pub fn find(&self, path: &str) -> Option<&Route> {
        self.routes
            .iter()
            .find(|route| prefix_matches(&route.prefix, path))
    }

    /// Returns every route (longest prefix first).
    pub fn routes(&self) -> &[Route] {
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
    Route {
        prefix: normalise_prefix(&config.prefix),
        service: config.service.clone(),
        methods,
        policy: RoutePolicy {
            auth: config.auth,
            roles: config.roles.clone(),
        },
        cache_control: HeaderValue::from_str(&config.cache_control)
            .ok()
            .filter(|value| !value.is_empty()),
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
        let mut services = BTreeMap::new();
        let prefixes = vec![
            "/api/v1/products".to_owned(),
            "/api/v1/product-categories".to_owned(),
        ];
        services.insert("catalog".to_owned(), (Router::new(), prefixes));
        RouteTable::build(&services, file_routes)
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
    fn routes_to_services_not_running_here_are_refused_for_now() {
        let file_route = RouteConfig {
            prefix: "/legacy".into(),
            service: "erp".into(),
            ..RouteConfig::default()
        };
        let err = table(&[file_route]).unwrap_err();
        assert!(err.to_string().contains("not yet supported"), "{err}");
    }
}
