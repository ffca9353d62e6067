//! The one place where topology is decided: which roles run here and how they are wired.
//!
//! Load (no side effects) happened before; [`Process::build`] opens the database, applies
//! migrations, binds the listeners and reports their addresses; [`Process::run`] serves until
//! the shutdown token is cancelled, then drains.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use logicore_catalog::CatalogService;
use logicore_contracts::stock::{HttpStock, Stock};
use logicore_gateway::auth::{Authenticator, JwksOptions};
use logicore_gateway::cache::{PurgeOnEvents, ResponseCache};
use logicore_gateway::cors::Cors;
use logicore_gateway::ratelimit::RateLimiter;
use logicore_gateway::remote::{HttpClient, PoolSettings};
use logicore_gateway::{
    EdgeConfig, Gateway, GatewayAdmin, GatewaySettings, LiveEdge, ReadinessCheck, RouteTable,
    RoutingError, TrustedProxies, UpstreamResolver,
};
use logicore_orders::OrdersService;
use logicore_orders::store::OrderStore;
use logicore_platform::auth::ServiceTokens;
use logicore_platform::auth::service_token::TokenKeyError;
use logicore_platform::bus::amqp::AmqpSettings;
use logicore_platform::bus::embedded::BusSettings;
use logicore_platform::bus::{Bus, Consumer, Listener};
use logicore_platform::cache::{QueryCache, RedisStore};
use logicore_platform::config::{self, Config, ConfigSource, RouteConfig};
use logicore_platform::crypto::masking::MaskRules;
use logicore_platform::crypto::{self, KeyRing, KeySource};
use logicore_platform::db::{Db, DbOptions, Migration, apply_migrations};
use logicore_platform::discovery::Discovery;
use logicore_platform::housekeeping::HousekeepingSettings;
use logicore_platform::http::extract;
use logicore_platform::http::request_context::{AccessLog, request_context};
use logicore_platform::http::server::{self, ListenerService, ServerOptions, router_service};
use logicore_platform::jobs::Jobs;
use logicore_platform::jobs::worker::{Worker, WorkerSettings};
use logicore_platform::lifecycle::Hangups;
use logicore_platform::telemetry::metrics::MetricsHandle;
use logicore_users::{TokenSettings, UsersService};
use logicore_webhooks::guard::TargetGuard;
use logicore_webhooks::store::WebhookStore;
use logicore_webhooks::{WebhookSettings, WebhooksService};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// What one process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Roles {
    /// `logicore up`: gateway, admin and every service, in process.
    All,
    /// `logicore gateway`: the gateway and admin listeners, upstreams through discovery.
    Gateway,
    /// `logicore service catalog`: the catalog alone on `services.catalog.listen`.
    Catalog,
    /// `logicore service users`: the users service alone on `services.users.listen`.
    Users,
    /// `logicore service orders`: the orders service alone on `services.orders.listen`,
    /// reserving stock at the catalog over HTTP.
    Orders,
    /// `logicore service webhooks`: the endpoints API alone on `services.webhooks.listen`
    /// (deliveries are made by workers).
    Webhooks,
    /// `logicore worker`: jobs (and event consumers), with the admin listener.
    Worker,
}

impl Roles {
    /// Returns the log file prefix and the default `service` of log lines.
    pub fn log_identity(self) -> (&'static str, &'static str) {
        match self {
            Roles::All => ("logicore", "logicore"),
            Roles::Gateway => ("logicore-gateway", "gateway"),
            Roles::Catalog => ("logicore-catalog", "catalog"),
            Roles::Users => ("logicore-users", "users"),
            Roles::Orders => ("logicore-orders", "orders"),
            Roles::Webhooks => ("logicore-webhooks", "webhooks"),
            Roles::Worker => ("logicore-worker", "worker"),
        }
    }
}

/// Every service's migrations, in one history.
pub fn all_migrations() -> Vec<Migration> {
    [
        logicore_platform::jobs::MIGRATIONS,
        logicore_platform::bus::MIGRATIONS,
        logicore_catalog::MIGRATIONS,
        logicore_users::MIGRATIONS,
        logicore_orders::MIGRATIONS,
        logicore_webhooks::MIGRATIONS,
    ]
    .concat()
}

/// The built-in routes of every LogiCore service (those of services that do not run here
/// and have no instances are left out of the table).
fn built_in_routes() -> Vec<RouteConfig> {
    let catalog = logicore_catalog::BUILT_IN_ROUTES.map(|prefix| RouteConfig {
        prefix: prefix.to_owned(),
        service: logicore_catalog::SERVICE_NAME.to_owned(),
        ..RouteConfig::default()
    });
    catalog
        .into_iter()
        .chain(logicore_users::built_in_routes())
        .chain(logicore_orders::built_in_routes())
        .chain(logicore_webhooks::built_in_routes())
        .collect()
}

/// Opens the database named by the config (creating a SQLite file when needed).
pub async fn open_database(config: &Config) -> anyhow::Result<Db> {
    let url = config.database_url();
    Db::connect(&url, &DbOptions::from(&config.database))
        .await
        .with_context(|| format!("failed to open the database {url}"))
}

/// Checks the parts of the config that depend on which roles run here (exit 2 on error).
pub fn check(config: &Config, roles: Roles) -> anyhow::Result<()> {
    match roles {
        Roles::Orders => return remote_catalog(config).map(drop),
        Roles::Catalog => return service_tokens(config, logicore_catalog::SERVICE_NAME).map(drop),
        Roles::Worker if catalog_listed(config) => return remote_catalog(config).map(drop),
        Roles::Worker => return Ok(()),
        Roles::Users | Roles::Webhooks => return Ok(()),
        Roles::All | Roles::Gateway => {}
    }
    let mut local = BTreeMap::new();
    if roles == Roles::All {
        local.insert(logicore_catalog::SERVICE_NAME.to_owned(), Router::new());
        local.insert(logicore_orders::SERVICE_NAME.to_owned(), Router::new());
        local.insert(logicore_webhooks::SERVICE_NAME.to_owned(), Router::new());
    }
    edge_config(config, local, logicore_gateway::http_client(), None, None)?;
    Ok(())
}

/// The service tokens of `service` (split roles), or `None` when `internal.token_key` is
/// not set; a key too short to be safe is a config error.
fn service_tokens(config: &Config, service: &str) -> anyhow::Result<Option<ServiceTokens>> {
    match ServiceTokens::new(config.internal.token_key.expose(), service) {
        Ok(tokens) => Ok(Some(tokens)),
        Err(TokenKeyError::Missing) => Ok(None),
        Err(err) => anyhow::bail!("internal.token_key {err}"),
    }
}

/// The catalog of `discovery.static.catalog`, reached over HTTP with service tokens.
fn remote_catalog(config: &Config) -> anyhow::Result<HttpStock> {
    let discovery = Discovery::from_config(&config.discovery);
    let instances = discovery.instances(logicore_catalog::SERVICE_NAME).to_vec();
    if instances.is_empty() {
        anyhow::bail!(
            "discovery.static.catalog lists no instance: the orders service reserves stock at the catalog"
        );
    }
    let Some(tokens) = service_tokens(config, logicore_orders::SERVICE_NAME)? else {
        anyhow::bail!(
            "internal.token_key is not set: the orders service signs its calls to the catalog \
             with it (the same key in every role, at least 32 characters)"
        );
    };
    Ok(HttpStock::new(instances, tokens, CATALOG_CALL_TIMEOUT))
}

/// Bound on one call to a remote catalog.
const CATALOG_CALL_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// True when discovery lists instances of the catalog: it runs elsewhere.
fn catalog_listed(config: &Config) -> bool {
    !Discovery::from_config(&config.discovery)
        .instances(logicore_catalog::SERVICE_NAME)
        .is_empty()
}

/// The stock the worker's order jobs use: the catalog of discovery when it lists instances
/// (the catalog runs elsewhere), else the catalog tables of the shared database.
fn worker_stock(config: &Config, db: &Db) -> anyhow::Result<Arc<dyn Stock>> {
    Ok(if catalog_listed(config) {
        Arc::new(remote_catalog(config)?)
    } else {
        Arc::new(catalog_service(config, db, false)?)
    })
}

/// Builds the reloadable edge rules (routes, upstreams, issuers, trusted proxies).
fn edge_config(
    config: &Config,
    local: BTreeMap<String, Router>,
    client: HttpClient,
    previous: Option<&RouteTable>,
    local_jwks: Option<&str>,
) -> Result<EdgeConfig, RoutingError> {
    let discovery = Discovery::from_config(&config.discovery);
    let gateway = config.gateway.clone();
    let mut resolver =
        UpstreamResolver::new(local, discovery, client).with_pool_settings(move |service| {
            PoolSettings {
                breaker: gateway.upstreams.get(service).map_or_else(
                    || gateway.breaker.clone(),
                    |upstream| upstream.breaker.clone(),
                ),
                retry_budget: gateway.retry_budget.clone(),
                outlier: gateway.outlier.clone(),
            }
        });
    if let Some(previous) = previous {
        resolver = resolver.with_previous(previous);
    }
    let table = RouteTable::build(&built_in_routes(), &config.gateway.routes, &mut resolver)?;
    Ok(EdgeConfig {
        table,
        authenticator: Authenticator::new(
            &issuers(config, local_jwks),
            config.auth.leeway,
            JwksOptions::default(),
        ),
        trusted_proxies: TrustedProxies::parse(&config.gateway.trusted_proxies),
    })
}

/// The token issuers: the configured ones, the default `logicore` issuer (no keys of its own
/// configured) reading the JWKS of the users service: in this process, or at its first
/// discovered instance.
fn issuers(
    config: &Config,
    local_jwks: Option<&str>,
) -> Vec<logicore_platform::config::IssuerConfig> {
    let mut issuers = config.gateway.auth.issuers.clone();
    // Split: the users service's JWKS at its first discovered instance.
    let discovered = config
        .discovery
        .static_instances
        .get(logicore_users::SERVICE_NAME)
        .and_then(|instances| instances.first())
        .map(|instance| format!("{}/.well-known/jwks.json", instance.trim_end_matches('/')));
    if let Some(url) = local_jwks.map(str::to_owned).or(discovered) {
        let url = url.as_str();
        for issuer in &mut issuers {
            if issuer.name == "logicore"
                && issuer.jwks_url.is_empty()
                && issuer.hs256_secret.is_empty()
            {
                issuer.jwks_url = url.to_owned();
                // Only access tokens: an ID token (audience = its client) signed by the same
                // JWKS is not a key to the API.
                if issuer.audience.is_empty() {
                    issuer.audience = logicore_users::service::AUDIENCE.to_owned();
                }
            }
        }
    }
    issuers
}

/// Re-reads the config on SIGHUP and swaps the gateway's edge rules when it is valid.
#[derive(Debug)]
struct Reloader {
    source: ConfigSource,
    local: BTreeMap<String, Router>,
    client: HttpClient,
    live: LiveEdge,
    local_jwks: Option<String>,
}

impl Reloader {
    /// Loads, validates and builds; on any error logs it and keeps the rules in force.
    fn reload(&self) {
        let config = match config::load(&self.source) {
            Ok(config) => config,
            Err(err) => {
                tracing::error!(error = %err, "config reload refused; the previous config stays");
                return;
            }
        };
        let current = self.live.current();
        match edge_config(
            &config,
            self.local.clone(),
            self.client.clone(),
            Some(&current.table),
            self.local_jwks.as_deref(),
        ) {
            Ok(edge) => {
                let routes = edge.table.routes().len();
                self.live.replace(edge);
                tracing::info!(routes, "config reloaded");
            }
            Err(err) => {
                tracing::error!(error = %err, "config reload refused; the previous config stays");
            }
        }
    }
}

/// One bound listener and what it serves.
struct Served {
    listener: TcpListener,
    service: ListenerService,
}

impl std::fmt::Debug for Served {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Served")
            .field("listener", &self.listener)
            .finish_non_exhaustive()
    }
}

/// A process with its listeners bound, ready to serve.
#[derive(Debug)]
pub struct Process {
    served: Vec<Served>,
    db: Option<Db>,
    options: ServerOptions,
    reloader: Option<Reloader>,
    /// The job worker, event relay and consumers of `up` and `worker`.
    background: Option<Background>,
    /// Listeners of this process (the gateway's cache purge).
    subscriptions: Vec<Subscription>,
}

/// A [`Listener`] and the bus it listens on.
enum Subscription {
    /// The embedded log of this database.
    Embedded(Arc<dyn Listener>, Bus),
    /// RabbitMQ (a queue of this process's own).
    Amqp(Arc<dyn Listener>, AmqpSettings),
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (listener, backend) = match self {
            Subscription::Embedded(listener, _) => (listener, "embedded"),
            Subscription::Amqp(listener, _) => (listener, "rabbitmq"),
        };
        formatter
            .debug_struct("Subscription")
            .field("listener", &listener.name())
            .field("backend", &backend)
            .finish()
    }
}

impl Subscription {
    /// Where `listener` should listen in this process: RabbitMQ when `bus.url` names it, else
    /// the embedded log of `db` (none without a database).
    fn of(config: &Config, listener: Arc<dyn Listener>, db: Option<&Db>) -> Option<Subscription> {
        match (amqp_settings(config), db) {
            (Some(amqp), _) => Some(Subscription::Amqp(listener, amqp)),
            (None, Some(db)) => Some(Subscription::Embedded(listener, Bus::new(db.clone()))),
            (None, None) => None,
        }
    }

    fn spawn(self, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        match self {
            Subscription::Embedded(listener, bus) => {
                tokio::spawn(bus.run_listener(listener, BusSettings::default(), shutdown))
            }
            Subscription::Amqp(listener, settings) => tokio::spawn(
                logicore_platform::bus::amqp::run_listener(listener, settings, shutdown),
            ),
        }
    }
}

/// RabbitMQ, when `bus.url` names it.
fn amqp_settings(config: &Config) -> Option<AmqpSettings> {
    matches!(config.bus.url.scheme(), "amqp" | "amqps")
        .then(|| AmqpSettings::new(config.bus.url.expose()))
}

impl Process {
    /// Opens what the roles need and binds their listeners.
    pub async fn build(
        config: &Config,
        source: &ConfigSource,
        roles: Roles,
        metrics: Option<MetricsHandle>,
    ) -> anyhow::Result<Process> {
        let options = ServerOptions {
            max_header_bytes: config.gateway.max_header_bytes.as_usize(),
            header_read_timeout: config.gateway.header_read_timeout,
            shutdown_grace: config.shutdown_grace,
        };
        let process = match roles {
            Roles::All => {
                // Field-encryption keys: `up` creates the key file when there is no key anywhere.
                let ring = std::sync::Arc::new(load_keys(config, true)?);
                let db = open_migrated_database(config).await?;
                // The gateway's address is needed first: it names the token issuer, and the
                // gateway reads the users service's JWKS through it.
                let gateway_listener = server::bind(config.gateway.listen).await?;
                let bound = gateway_listener.local_addr()?;
                let loopback = if bound.ip().is_unspecified() {
                    std::net::IpAddr::from([127, 0, 0, 1])
                } else {
                    bound.ip()
                };
                let local_jwks = format!(
                    "http://{}/.well-known/jwks.json",
                    SocketAddr::new(loopback, bound.port())
                );
                let catalog_service = catalog_service(config, &db, true)?;
                let (catalog, catalog_api) = logicore_catalog::router(catalog_service.clone());
                let (users, users_api) =
                    users_service(config, &db, &ring, bound.port(), true).await?;
                let background =
                    Background::new(config, &db, Arc::new(catalog_service), Arc::clone(&ring))?;
                let (orders, orders_api) = logicore_orders::router(background.orders.clone());
                let (webhooks, webhooks_api) =
                    logicore_webhooks::router(background.webhooks.clone());
                let mut local = BTreeMap::new();
                // The gateway enforces gateway.body_limit before a body reaches a local service.
                local.insert(
                    logicore_catalog::SERVICE_NAME.to_owned(),
                    catalog.layer(DefaultBodyLimit::disable()),
                );
                local.insert(
                    logicore_users::SERVICE_NAME.to_owned(),
                    users.layer(DefaultBodyLimit::disable()),
                );
                local.insert(
                    logicore_orders::SERVICE_NAME.to_owned(),
                    orders.layer(DefaultBodyLimit::disable()),
                );
                local.insert(
                    logicore_webhooks::SERVICE_NAME.to_owned(),
                    webhooks.layer(DefaultBodyLimit::disable()),
                );
                let edge = Edge {
                    local,
                    apis: vec![catalog_api, users_api, orders_api, webhooks_api],
                    checks: vec![database_check(&db)],
                    local_jwks: Some(local_jwks),
                    admin_routes: Some(logicore_platform::jobs::admin::router(
                        background.jobs.clone(),
                    )),
                };
                let (served, reloader, cache) =
                    bind_gateway(config, source, edge, metrics, Some(gateway_listener)).await?;
                let purge = Arc::new(PurgeOnEvents::new(cache));
                Process {
                    served,
                    subscriptions: Subscription::of(config, purge, Some(&db))
                        .into_iter()
                        .collect(),
                    db: Some(db),
                    options,
                    reloader: Some(reloader),
                    background: Some(background),
                }
            }
            Roles::Gateway => {
                let edge = Edge {
                    local: BTreeMap::new(),
                    apis: Vec::new(),
                    checks: Vec::new(),
                    local_jwks: None,
                    admin_routes: None,
                };
                let (served, reloader, cache) =
                    bind_gateway(config, source, edge, metrics, None).await?;
                // Cached product answers are purged by product events: through RabbitMQ,
                // or the outbox of the database when one is configured.
                let db = match config.database.url.is_empty() || amqp_settings(config).is_some() {
                    true => None,
                    false => Some(open_database(config).await?),
                };
                let purge = Arc::new(PurgeOnEvents::new(cache));
                let subscriptions: Vec<Subscription> = Subscription::of(config, purge, db.as_ref())
                    .into_iter()
                    .collect();
                if subscriptions.is_empty() {
                    tracing::info!(
                        "cached answers of changed products stay until their TTL: set bus.url \
                         (RabbitMQ) or database.url to purge them by product events"
                    );
                }
                Process {
                    served,
                    db,
                    options,
                    reloader: Some(reloader),
                    background: None,
                    subscriptions,
                }
            }
            Roles::Users => {
                // A single-role process never generates the key file (SPEC §7).
                let ring = std::sync::Arc::new(load_keys(config, false)?);
                let db = open_migrated_database(config).await?;
                let listener = server::bind(config.services.users.listen).await?;
                let port = listener.local_addr()?.port();
                let (users, _) = users_service(config, &db, &ring, port, false).await?;
                let users = standalone(config, "users", users);
                Process {
                    served: vec![serve_on("users", listener, router_service(users))?],
                    db: Some(db),
                    options,
                    reloader: None,
                    background: None,
                    subscriptions: Vec::new(),
                }
            }
            Roles::Worker => {
                let db = open_migrated_database(config).await?;
                // Webhook secrets are stored encrypted: the worker signs with them.
                let ring = Arc::new(load_keys(config, false).context(
                    "the worker needs the field-encryption keys (it signs webhooks with the \
                     endpoints' encrypted secrets)",
                )?);
                let background = Background::new(config, &db, worker_stock(config, &db)?, ring)?;
                let admin =
                    logicore_gateway::admin_router(vec![database_check(&db)], metrics, None).merge(
                        logicore_platform::jobs::admin::router(background.jobs.clone()),
                    );
                Process {
                    served: vec![bind("admin", config.admin.listen, router_service(admin)).await?],
                    db: Some(db),
                    options,
                    reloader: None,
                    background: Some(background),
                    subscriptions: Vec::new(),
                }
            }
            Roles::Catalog => {
                let db = open_migrated_database(config).await?;
                let service = catalog_service(config, &db, true)?;
                let (catalog, _) = logicore_catalog::router(service.clone());
                let catalog = verifying_bearer_tokens(config, "catalog", catalog);
                // Stock reservations of orders services elsewhere, with service tokens.
                let tokens = service_tokens(config, logicore_catalog::SERVICE_NAME)?;
                if tokens.is_none() {
                    tracing::warn!(
                        "internal.token_key is not set: orders services elsewhere cannot reserve stock here"
                    );
                }
                let catalog = catalog.merge(logicore_catalog::internal::router(service, tokens));
                let catalog = standalone(config, "catalog", catalog);
                let listen = config.services.catalog.listen;
                Process {
                    served: vec![bind("catalog", listen, router_service(catalog)).await?],
                    db: Some(db),
                    options,
                    reloader: None,
                    background: None,
                    subscriptions: Vec::new(),
                }
            }
            Roles::Webhooks => {
                let ring = Arc::new(load_keys(config, false)?);
                let db = open_migrated_database(config).await?;
                // Deliveries go through the shared database to the worker role.
                let service = webhooks_service(config, &db, Jobs::new(db.clone()), ring);
                let (router, _) = logicore_webhooks::router(service);
                let router = verifying_bearer_tokens(config, "webhooks", router);
                let router = standalone(config, "webhooks", router);
                let listen = config.services.webhooks.listen;
                Process {
                    served: vec![bind("webhooks", listen, router_service(router)).await?],
                    db: Some(db),
                    options,
                    reloader: None,
                    background: None,
                    subscriptions: Vec::new(),
                }
            }
            Roles::Orders => {
                let db = open_migrated_database(config).await?;
                // Its jobs (abandoning unfinished orders, late releases) and its events go
                // through the shared database to the worker role.
                let orders = OrdersService::new(
                    OrderStore::new(db.clone()),
                    Bus::new(db.clone()),
                    Jobs::new(db.clone()),
                    Arc::new(remote_catalog(config)?),
                );
                let (router, _) = logicore_orders::router(orders);
                let router = verifying_bearer_tokens(config, "orders", router);
                let router = standalone(config, "orders", router);
                let listen = config.services.orders.listen;
                Process {
                    served: vec![bind("orders", listen, router_service(router)).await?],
                    db: Some(db),
                    options,
                    reloader: None,
                    background: None,
                    subscriptions: Vec::new(),
                }
            }
        };
        Ok(process)
    }

    /// Serves until `shutdown` is cancelled, lets in-flight requests finish, closes storage.
    /// Each SIGHUP reloads the gateway's routes, upstreams and issuers.
    pub async fn run(self, shutdown: CancellationToken, mut hangups: Hangups) {
        let reloader = self.reloader;
        tokio::spawn(async move {
            loop {
                hangups.recv().await;
                match &reloader {
                    Some(reloader) => reloader.reload(),
                    None => tracing::info!("SIGHUP ignored: this role has nothing to reload"),
                }
            }
        });
        let servers = self.served.into_iter().map(|served| {
            server::serve(
                served.listener,
                served.service,
                self.options,
                shutdown.clone(),
            )
        });
        let mut background: Vec<_> = self
            .background
            .map(|background| background.spawn(&shutdown))
            .unwrap_or_default();
        for subscription in self.subscriptions {
            background.push(subscription.spawn(shutdown.clone()));
        }
        futures_util::future::join_all(servers).await;
        for task in background {
            if let Err(err) = task.await {
                tracing::error!(error = %err, "a background task failed");
            }
        }
        if let Some(db) = self.db {
            db.close().await;
        }
        tracing::info!("stopped");
    }
}

/// What a gateway fronts in this process: local services, their API descriptions, and the
/// readiness checks of its admin listener.
struct Edge {
    local: BTreeMap<String, Router>,
    apis: Vec<utoipa::openapi::OpenApi>,
    checks: Vec<ReadinessCheck>,
    /// The users service's JWKS when it runs here: the default `logicore` issuer's keys.
    local_jwks: Option<String>,
    /// More routes of the admin listener (jobs).
    admin_routes: Option<Router>,
}

/// Builds and binds the gateway and admin listeners.
async fn bind_gateway(
    config: &Config,
    source: &ConfigSource,
    edge: Edge,
    metrics: Option<MetricsHandle>,
    listener: Option<TcpListener>,
) -> anyhow::Result<(Vec<Served>, Reloader, ResponseCache)> {
    // The response cache and rate limits outlive reloads (they are not edge rules).
    let redis = redis_store(config)?;
    let cache = match &redis {
        Some(store) => ResponseCache::redis(store.clone()),
        None => ResponseCache::memory(config.gateway.cache.max_bytes.0),
    };
    let limiter = match redis {
        Some(store) => RateLimiter::redis(store, config.gateway.rate_limit.fail_open),
        None => RateLimiter::memory(),
    };
    let (gateway, reloader) = gateway_router(
        config,
        source,
        edge.local,
        edge.apis,
        cache.clone(),
        limiter,
        edge.local_jwks,
    )?;
    let admin = logicore_gateway::admin_router(
        edge.checks,
        metrics,
        Some(GatewayAdmin {
            live: reloader.live.clone(),
            cache: Some(cache.clone()),
        }),
    );
    let admin = match edge.admin_routes {
        Some(routes) => admin.merge(routes),
        None => admin,
    };
    let gateway = match listener {
        Some(listener) => serve_on("gateway", listener, gateway.into_service())?,
        None => bind("gateway", config.gateway.listen, gateway.into_service()).await?,
    };
    let served = vec![
        gateway,
        bind("admin", config.admin.listen, router_service(admin)).await?,
    ];
    log_public_url(config, &served[0])?;
    Ok((served, reloader, cache))
}

pub async fn open_migrated_database(config: &Config) -> anyhow::Result<Db> {
    let db = open_database(config).await?;
    if config.database.migrate_on_start {
        apply_migrations(&db, &all_migrations())
            .await
            .context("failed to apply migrations")?;
    }
    Ok(db)
}

/// What runs behind the services in `up` and `worker`: the job worker with every service's
/// job kinds, the event relay, and every service's event consumers.
struct Background {
    db: Db,
    worker: Worker,
    jobs: Jobs,
    bus: Bus,
    consumers: Vec<Arc<dyn Consumer>>,
    /// The orders service (its routes in `up`, its jobs everywhere).
    orders: OrdersService,
    /// The webhooks service (its routes in `up`, its deliveries everywhere).
    webhooks: WebhooksService,
    /// RabbitMQ, when `bus.url` names it (else the embedded log).
    amqp: Option<AmqpSettings>,
}

impl std::fmt::Debug for Background {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Background")
            .field("worker", &self.worker)
            .field("consumers", &self.consumers.len())
            .finish_non_exhaustive()
    }
}

impl Background {
    fn new(
        config: &Config,
        db: &Db,
        stock: Arc<dyn Stock>,
        ring: Arc<KeyRing>,
    ) -> anyhow::Result<Background> {
        let jobs = Jobs::new(db.clone());
        let bus = Bus::new(db.clone());
        let orders = OrdersService::new(
            OrderStore::new(db.clone()),
            bus.clone(),
            jobs.clone(),
            stock,
        );
        let mut worker = Worker::new(
            jobs.clone(),
            WorkerSettings {
                concurrency: config.jobs.concurrency,
                lease: config.jobs.lease,
                poll_interval: std::time::Duration::from_millis(500),
                shutdown_grace: config.shutdown_grace,
            },
        );
        logicore_orders::register_jobs(&mut worker, &orders);
        let mailer =
            logicore_platform::email::Mailer::new(&config.email_url(), &config.email.from)?;
        logicore_users::notifications::register_jobs(&mut worker, mailer);
        let webhooks = webhooks_service(config, db, jobs.clone(), ring);
        logicore_webhooks::register_jobs(&mut worker, &webhooks);
        let consumers: Vec<Arc<dyn Consumer>> = vec![
            Arc::new(logicore_users::notifications::OrderConfirmations::new(
                db.clone(),
                jobs.clone(),
            )),
            Arc::new(logicore_webhooks::FanOut::new(webhooks.clone())),
        ];
        let amqp = amqp_settings(config).map(|amqp| AmqpSettings {
            // Declared by the relay too: no event is published to a queue not there yet.
            queues: consumers
                .iter()
                .map(|consumer| {
                    let topics = consumer.topics().iter().map(|t| (*t).to_owned());
                    (consumer.name().to_owned(), topics.collect())
                })
                .collect(),
            ..amqp
        });
        Ok(Background {
            db: db.clone(),
            worker,
            jobs,
            bus,
            consumers,
            orders,
            webhooks,
            amqp,
        })
    }

    /// Starts the worker, the relay and the consumers; they stop with `shutdown` (running
    /// jobs get the grace period).
    fn spawn(self, shutdown: &CancellationToken) -> Vec<tokio::task::JoinHandle<()>> {
        let settings = BusSettings::default();
        let relay = match &self.amqp {
            Some(amqp) => tokio::spawn(
                self.bus
                    .clone()
                    .run_amqp_relay(amqp.clone(), shutdown.clone()),
            ),
            None => tokio::spawn(self.bus.clone().run_relay(settings, shutdown.clone())),
        };
        let mut tasks = vec![
            tokio::spawn(self.worker.run(shutdown.clone())),
            relay,
            tokio::spawn(logicore_platform::wakeups::run(
                self.db,
                self.jobs.clone(),
                self.bus.clone(),
                shutdown.clone(),
            )),
            tokio::spawn(logicore_platform::housekeeping::run(
                self.jobs.clone(),
                self.bus.clone(),
                HousekeepingSettings {
                    // With RabbitMQ, published events are out of the outbox's hands.
                    events_read_by_cursors: self.amqp.is_none(),
                    ..HousekeepingSettings::default()
                },
                shutdown.clone(),
            )),
        ];
        for consumer in self.consumers {
            let bus = self.bus.clone();
            tasks.push(match &self.amqp {
                Some(amqp) => {
                    tokio::spawn(bus.run_amqp_consumer(consumer, amqp.clone(), shutdown.clone()))
                }
                None => tokio::spawn(bus.run_consumer(consumer, settings, shutdown.clone())),
            });
        }
        tasks
    }
}

/// The webhooks service with the `[webhooks]` settings.
pub fn webhooks_service(
    config: &Config,
    db: &Db,
    jobs: Jobs,
    ring: Arc<KeyRing>,
) -> WebhooksService {
    WebhooksService::new(
        WebhookStore::new(db.clone()),
        jobs,
        ring,
        WebhookSettings {
            guard: TargetGuard {
                allow_private: config.webhooks.allow_private_targets,
            },
            timeout: config.webhooks.timeout,
            retry_schedule: config.webhooks.retry_schedule.clone(),
        },
    )
}

/// Alone, a service verifies forwarded bearer tokens itself against the users service's
/// JWKS (SPEC §4 "Trust"); identity headers are never believed.
fn verifying_bearer_tokens(config: &Config, service: &str, router: Router) -> Router {
    let authenticator = Authenticator::new(
        &issuers(config, None),
        config.auth.leeway,
        JwksOptions::default(),
    );
    if !authenticator.has_issuers() {
        tracing::warn!(
            service,
            "no token issuer has keys (list the users service in discovery.static.users or \
             configure gateway.auth.issuers): every signed-in request will be refused"
        );
    }
    router.layer(axum::middleware::from_fn_with_state(
        authenticator,
        logicore_platform::auth::verify_bearer,
    ))
}

/// A service's router as its own listener serves it: `/health`, the body limit, request ids
/// and the access log the gateway would otherwise provide.
fn standalone(config: &Config, service: &'static str, router: Router) -> Router {
    router
        .route("/health", get(extract::health))
        .layer(DefaultBodyLimit::max(config.gateway.body_limit.as_usize()))
        .layer(axum::middleware::from_fn_with_state(
            AccessLog {
                service,
                enabled: config.gateway.access_log,
            },
            request_context,
        ))
}

/// The users service over `db`, its signing keys encrypted with `ring`; tokens name the
/// gateway (`auth.issuer`, else `gateway.public_url`, else `http://127.0.0.1:<port>`) as issuer.
async fn users_service(
    config: &Config,
    db: &Db,
    ring: &std::sync::Arc<KeyRing>,
    gateway_port: u16,
    bootstrap: bool,
) -> anyhow::Result<(Router, utoipa::openapi::OpenApi)> {
    let issuer = if !config.auth.issuer.is_empty() {
        config.auth.issuer.clone()
    } else if !config.gateway.public_url.is_empty() {
        config.gateway.public_url.clone()
    } else {
        format!("http://127.0.0.1:{gateway_port}")
    };
    let settings = TokenSettings {
        // One spelling everywhere (tokens, metadata, ID tokens): clients compare it exactly.
        issuer: issuer.trim_end_matches('/').to_owned(),
        access_ttl: config.auth.access_token_ttl,
        refresh_ttl: config.auth.refresh_token_ttl,
        key_file: (!config.auth.signing_key_file.is_empty())
            .then(|| std::path::PathBuf::from(&config.auth.signing_key_file)),
        leeway: config.auth.leeway,
        clients: config.auth.clients.clone(),
        providers: config.auth.providers.clone(),
    };
    let service = UsersService::start(db.clone(), std::sync::Arc::clone(ring), settings)
        .await
        .map_err(|err| anyhow::anyhow!("the users service cannot start: {err}"))?;
    if bootstrap {
        bootstrap_admin(db).await?;
    }
    Ok(logicore_users::router(service))
}

/// Default e-mail of the first admin (`LOGICORE_ADMIN_EMAIL` overrides it).
const DEFAULT_ADMIN_EMAIL: &str = "admin@logicore.local";

/// First start: creates the admin account from `LOGICORE_ADMIN_EMAIL` /
/// `LOGICORE_ADMIN_PASSWORD`, or with a generated password printed once on stderr (never
/// logged).
async fn bootstrap_admin(db: &Db) -> anyhow::Result<()> {
    let email =
        std::env::var("LOGICORE_ADMIN_EMAIL").unwrap_or_else(|_| DEFAULT_ADMIN_EMAIL.into());
    let password = std::env::var("LOGICORE_ADMIN_PASSWORD")
        .ok()
        .filter(|text| !text.is_empty());
    let created = logicore_users::service::ensure_admin(db, &email, password)
        .await
        .map_err(|err| anyhow::anyhow!("cannot create the first admin account ({email}): {err}"))?;
    if let Some((user, generated)) = created {
        tracing::warn!(email = %user.email, "created the first admin account");
        if let Some(password) = generated {
            eprintln!(
                "logicore: created the admin account {} with the password {password} \
                 (shown once: sign in and change it, or set LOGICORE_ADMIN_PASSWORD)",
                user.email
            );
        }
    }
    Ok(())
}

fn catalog_service(config: &Config, db: &Db, guard_writes: bool) -> anyhow::Result<CatalogService> {
    let ttl = config.cache.query_ttl;
    let cache = match redis_store(config)? {
        Some(store) => QueryCache::redis(store, "catalog", ttl),
        None => QueryCache::memory("catalog", ttl, config.cache.max_bytes.0),
    };
    let service = CatalogService::new(db.clone())
        .with_cache(cache)
        .with_events(Bus::new(db.clone()));
    Ok(if guard_writes {
        service.with_write_guard()
    } else {
        service
    })
}

fn gateway_router(
    config: &Config,
    source: &ConfigSource,
    local: BTreeMap<String, Router>,
    apis: Vec<utoipa::openapi::OpenApi>,
    cache: ResponseCache,
    limiter: RateLimiter,
    local_jwks: Option<String>,
) -> anyhow::Result<(Gateway, Reloader)> {
    let client = logicore_gateway::http_client();
    let live = LiveEdge::new(edge_config(
        config,
        local.clone(),
        client.clone(),
        None,
        local_jwks.as_deref(),
    )?);
    let reloader = Reloader {
        source: source.clone(),
        local,
        client,
        live: live.clone(),
        local_jwks,
    };
    let settings = GatewaySettings {
        body_limit: config.gateway.body_limit.as_usize(),
        max_header_bytes: config.gateway.max_header_bytes.as_usize(),
        body_read_timeout: config.gateway.body_read_timeout,
        access_log: config.gateway.access_log,
        compression: config
            .gateway
            .compression
            .enabled
            .then(|| (&config.gateway.compression).into()),
        cache: Some(cache),
        limiter,
        masking: MaskRules::new(&config.gateway.masking.fields),
        cors: Cors::new(&config.cors.allowed_origins),
    };
    let openapi = logicore_gateway::merged_openapi(apis);
    Ok((Gateway::new(live, openapi, settings), reloader))
}

/// Loads the field-encryption key ring (SPEC §7); a malformed or missing-but-needed key stops
/// start-up with a message saying what to set.
fn load_keys(config: &Config, generate: bool) -> anyhow::Result<KeyRing> {
    let env = std::env::var(crypto::KEYS_VAR).ok();
    let (ring, source) = KeyRing::load(env.as_deref(), &config.key_file(), generate)?;
    match source {
        KeySource::Generated(path) => tracing::warn!(
            path = %path.display(),
            kid = ring.active_kid(),
            "generated a field-encryption key file; back it up: without it encrypted data is lost"
        ),
        KeySource::File(path) => {
            tracing::info!(path = %path.display(), active_kid = ring.active_kid(), "field-encryption keys loaded");
        }
        KeySource::Environment => {
            tracing::info!(
                active_kid = ring.active_kid(),
                "field-encryption keys loaded from the environment"
            );
        }
    }
    Ok(ring)
}

/// The Redis of `cache.url`, when it names one (shared by every gateway for the response
/// cache and rate limits).
fn redis_store(config: &Config) -> anyhow::Result<Option<RedisStore>> {
    let url = config.cache.url.expose();
    if url.starts_with("memory:") {
        return Ok(None);
    }
    let store = RedisStore::connect(url, "logicore:")
        .with_context(|| "config key `cache.url`: not a usable Redis URL")?;
    Ok(Some(store))
}

fn database_check(db: &Db) -> ReadinessCheck {
    let db = db.clone();
    ReadinessCheck::new("database", move || {
        let db = db.clone();
        Box::pin(async move { db.ping().await.map_err(|err| err.to_string()) })
    })
}

fn log_public_url(config: &Config, gateway: &Served) -> anyhow::Result<()> {
    let port = gateway.listener.local_addr()?.port();
    let public_url = if config.gateway.public_url.is_empty() {
        format!("http://127.0.0.1:{port}")
    } else {
        config.gateway.public_url.clone()
    };
    tracing::info!(public_url = %public_url, "gateway ready");
    Ok(())
}

async fn bind(
    role: &'static str,
    addr: SocketAddr,
    service: ListenerService,
) -> anyhow::Result<Served> {
    serve_on(role, server::bind(addr).await?, service)
}

fn serve_on(
    role: &'static str,
    listener: TcpListener,
    service: ListenerService,
) -> anyhow::Result<Served> {
    let bound = listener.local_addr()?;
    tracing::info!(role, addr = %bound, "listening");
    Ok(Served { listener, service })
}
