//! The one place where topology is decided: which services run here and how they are wired.
//!
//! Load (no side effects) happened before; [`Platform::build`] opens the database, applies
//! migrations, binds the listeners and reports their addresses; [`Platform::run`] serves until
//! the shutdown token is cancelled, then drains.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use anyhow::Context;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use logicore_catalog::CatalogService;
use logicore_gateway::{GatewaySettings, ReadinessCheck, RouteTable, RoutingError};
use logicore_platform::config::Config;
use logicore_platform::db::{Db, DbOptions, Migration, apply_migrations};
use logicore_platform::http::server::{self, ServerOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Every service's migrations, in one history.
pub fn all_migrations() -> Vec<Migration> {
    logicore_catalog::MIGRATIONS.to_vec()
}

/// Opens the database named by the config (creating a SQLite file when needed).
pub async fn open_database(config: &Config) -> anyhow::Result<Db> {
    let url = config.database_url();
    Db::connect(&url, &DbOptions::from(&config.database))
        .await
        .with_context(|| format!("failed to open the database {url}"))
}

/// The services mounted in this process: name → (router, built-in route prefixes).
type LocalServices = BTreeMap<String, (Router, Vec<String>)>;

/// Checks the parts of the config that depend on which services run here (exit 2 on error).
pub fn check_routes(config: &Config) -> Result<(), RoutingError> {
    let mut services = LocalServices::new();
    services.insert(
        logicore_catalog::SERVICE_NAME.to_owned(),
        (Router::new(), Vec::new()),
    );
    RouteTable::build(&services, &config.gateway.routes).map(drop)
}

/// The assembled all-in-one platform, bound and ready to serve.
#[derive(Debug)]
pub struct Platform {
    gateway: (TcpListener, Router),
    admin: (TcpListener, Router),
    db: Db,
    options: ServerOptions,
}

impl Platform {
    /// Opens storage, mounts the services behind the gateway and binds both listeners.
    pub async fn build(config: &Config) -> anyhow::Result<Platform> {
        let db = open_database(config).await?;
        if config.database.migrate_on_start {
            apply_migrations(&db, &all_migrations())
                .await
                .context("failed to apply migrations")?;
        }

        let (catalog_router, catalog_api) =
            logicore_catalog::router(CatalogService::new(db.clone()));
        // The gateway enforces gateway.body_limit before a body reaches an in-process service.
        let catalog_router = catalog_router.layer(DefaultBodyLimit::disable());
        let mut services = LocalServices::new();
        let prefixes = logicore_catalog::BUILT_IN_ROUTES
            .map(str::to_owned)
            .to_vec();
        services.insert(
            logicore_catalog::SERVICE_NAME.to_owned(),
            (catalog_router, prefixes),
        );
        let table = RouteTable::build(&services, &config.gateway.routes)?;

        let openapi = logicore_gateway::merged_openapi(vec![catalog_api]);
        let settings = GatewaySettings {
            body_limit: config.gateway.body_limit.as_usize(),
            max_header_bytes: config.gateway.max_header_bytes.as_usize(),
            access_log: config.gateway.access_log,
        };
        let gateway_router = logicore_gateway::gateway_router(table, openapi, settings);
        let ready_db = db.clone();
        let database_check = ReadinessCheck::new("database", move || {
            let db = ready_db.clone();
            Box::pin(async move { db.ping().await.map_err(|err| err.to_string()) })
        });
        let admin_router = logicore_gateway::admin_router(vec![database_check]);

        let gateway_listener = bind("gateway", config.gateway.listen).await?;
        let admin_listener = bind("admin", config.admin.listen).await?;
        let gateway_addr = gateway_listener.local_addr()?;
        let public_url = if config.gateway.public_url.is_empty() {
            format!("http://127.0.0.1:{}", gateway_addr.port())
        } else {
            config.gateway.public_url.clone()
        };
        tracing::info!(public_url = %public_url, database = %config.database_url(), "platform assembled");

        Ok(Platform {
            gateway: (gateway_listener, gateway_router),
            admin: (admin_listener, admin_router),
            db,
            options: ServerOptions {
                max_header_bytes: config.gateway.max_header_bytes.as_usize(),
                header_read_timeout: config.gateway.header_read_timeout,
                shutdown_grace: config.shutdown_grace,
            },
        })
    }

    /// Serves until `shutdown` is cancelled, lets in-flight requests finish, closes storage.
    pub async fn run(self, shutdown: CancellationToken) {
        let (gateway_listener, gateway_router) = self.gateway;
        let (admin_listener, admin_router) = self.admin;
        tokio::join!(
            server::serve(
                gateway_listener,
                gateway_router,
                self.options,
                shutdown.clone()
            ),
            server::serve(admin_listener, admin_router, self.options, shutdown.clone()),
        );
        self.db.close().await;
        tracing::info!("stopped");
    }
}

async fn bind(role: &'static str, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = server::bind(addr).await?;
    let bound = listener.local_addr()?;
    tracing::info!(role, addr = %bound, "listening");
    Ok(listener)
}
