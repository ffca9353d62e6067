//! Test helpers (feature `test-util`): fresh databases on every backend the run has.
//!
//! SQLite is always there. PostgreSQL is added when `LOGICORE_TEST_POSTGRES_URL` is set; then
//! each test database is a schema of its own, and an unreachable server fails the test loudly
//! rather than skipping it.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::{Connection, Executor, PgConnection};

use crate::config::{ConnectionUrl, SqliteSynchronous};
use crate::db::{Backend, Db, DbOptions};

/// The variable naming the PostgreSQL server of the test run.
pub const POSTGRES_URL_VAR: &str = "LOGICORE_TEST_POSTGRES_URL";

/// Schemas of earlier runs older than this are dropped when a new one is made.
const STALE_SCHEMA_AGE: Duration = Duration::from_secs(3600);

/// A fresh, empty database for one test.
#[derive(Debug)]
pub struct TestDb {
    /// The handle under test.
    pub db: Db,
    /// The URL it was opened with (for starting a process on the same database).
    pub url: ConnectionUrl,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    /// Returns one fresh database per backend of this run: SQLite, and PostgreSQL when
    /// `LOGICORE_TEST_POSTGRES_URL` is set.
    pub async fn all() -> Vec<TestDb> {
        let mut databases = vec![TestDb::sqlite().await];
        if let Some(url) = postgres_url() {
            databases.push(TestDb::postgres(&url).await);
        }
        databases
    }

    /// A SQLite file in a temporary directory.
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().expect("cannot create a temporary directory");
        let url = ConnectionUrl::new(format!("sqlite://{}", dir.path().join("test.db").display()));
        let db = Db::connect(&url, &options())
            .await
            .expect("cannot open SQLite");
        TestDb {
            db,
            url,
            _dir: Some(dir),
        }
    }

    /// A new schema on the PostgreSQL server at `base_url`.
    pub async fn postgres(base_url: &str) -> TestDb {
        let url = ConnectionUrl::new(fresh_schema_url(base_url).await);
        let db = Db::connect(&url, &options())
            .await
            .unwrap_or_else(|err| panic!("{POSTGRES_URL_VAR} is set but PostgreSQL failed: {err}"));
        TestDb {
            db,
            url,
            _dir: None,
        }
    }

    /// Returns a label for assertion messages (`sqlite`, `postgres`).
    pub fn label(&self) -> &'static str {
        match self.db.backend() {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// Returns the PostgreSQL URL of this test run, if any.
pub fn postgres_url() -> Option<String> {
    std::env::var(POSTGRES_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())
}

/// Creates a schema named `lct_<unix seconds>_<random>` and returns a URL whose connections
/// use it; drops schemas that earlier runs left behind.
pub async fn fresh_schema_url(base_url: &str) -> String {
    let mut admin = PgConnection::connect(base_url).await.unwrap_or_else(|err| {
        panic!("{POSTGRES_URL_VAR} is set but PostgreSQL is unreachable: {err}")
    });
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    drop_stale_schemas(&mut admin, now).await;
    let schema = format!("lct_{now}_{}", uuid::Uuid::new_v4().simple());
    admin
        .execute(sqlx::AssertSqlSafe(format!("CREATE SCHEMA {schema}")))
        .await
        .expect("cannot create a test schema");
    let separator = if base_url.contains('?') { '&' } else { '?' };
    format!("{base_url}{separator}options=-c%20search_path%3D{schema}")
}

async fn drop_stale_schemas(admin: &mut PgConnection, now: u64) {
    let names: Vec<(String,)> =
        sqlx::query_as("SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'lct\\_%'")
            .fetch_all(&mut *admin)
            .await
            .unwrap_or_default();
    for (name,) in names {
        let created = name
            .split('_')
            .nth(1)
            .and_then(|seconds| seconds.parse::<u64>().ok())
            .unwrap_or(0);
        if now.saturating_sub(created) > STALE_SCHEMA_AGE.as_secs() {
            let _ = admin
                .execute(sqlx::AssertSqlSafe(format!(
                    "DROP SCHEMA IF EXISTS {name} CASCADE"
                )))
                .await;
        }
    }
}

fn options() -> DbOptions {
    DbOptions {
        max_connections: 5,
        sqlite_synchronous: SqliteSynchronous::Normal,
        slow_query: Duration::from_secs(5),
    }
}

/// The variable naming the shared Redis of the test run.
pub const REDIS_URL_VAR: &str = "LOGICORE_TEST_REDIS_URL";

/// A `redis-server` of one test's own on a free port, for fault tests that kill it (the
/// shared Redis is never stopped); killed when dropped.
#[derive(Debug)]
pub struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    /// Starts one on a free port. `None` when the `redis-server` binary is missing and the run
    /// has no shared Redis either; with `LOGICORE_TEST_REDIS_URL` set (CI) a missing binary
    /// fails the test.
    pub fn start() -> Option<PrivateRedis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|addr| addr.port())
            .unwrap_or_else(|err| panic!("no free port: {err}"));
        Self::start_on(port)
    }

    /// Starts one on `port` (to bring a killed one back where clients expect it).
    pub fn start_on(port: u16) -> Option<PrivateRedis> {
        let spawned = std::process::Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let child = match spawned {
            Ok(child) => child,
            Err(err) => {
                assert!(
                    std::env::var(REDIS_URL_VAR).is_err(),
                    "{REDIS_URL_VAR} is set (CI) but redis-server cannot run: {err}"
                );
                return None;
            }
        };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Some(PrivateRedis { child, port });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("redis-server did not start on port {port}");
    }

    /// Its port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it now (the port is free again).
    pub fn kill(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The variable naming the RabbitMQ of the test run.
pub const AMQP_URL_VAR: &str = "LOGICORE_TEST_AMQP_URL";

/// The RabbitMQ of the run, when `LOGICORE_TEST_AMQP_URL` is set; an unreachable broker then
/// fails the test loudly.
#[cfg(feature = "amqp")]
pub async fn amqp_url() -> Option<String> {
    let url = std::env::var(AMQP_URL_VAR)
        .ok()
        .filter(|url| !url.is_empty())?;
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|err| panic!("{AMQP_URL_VAR} is set but RabbitMQ is unreachable: {err}"));
    let _ = connection.close(200, "probe".into()).await;
    Some(url)
}

/// A TCP relay a test controls: put it between a process and a backend, then cut it (fault
/// tests never stop the shared services).
#[derive(Debug)]
pub struct TcpRelay {
    /// Where clients connect.
    pub addr: std::net::SocketAddr,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    connections: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept_loop: tokio::task::AbortHandle,
}

impl TcpRelay {
    /// Forwards every connection to `target` while open; when cut, drops every connection
    /// and closes new ones at once (the port stays bound, as a crashed backend's host would).
    pub async fn start(target: std::net::SocketAddr) -> TcpRelay {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind relay");
        let addr = listener.local_addr().expect("relay address");
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let connections = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (loop_open, loop_connections) = (open.clone(), connections.clone());
        let accept_loop = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !loop_open.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut backend) = tokio::net::TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut backend).await;
                    }
                });
                loop_connections
                    .lock()
                    .expect("connections")
                    .push(task.abort_handle());
            }
        })
        .abort_handle();
        TcpRelay {
            addr,
            open,
            connections,
            accept_loop,
        }
    }

    /// Drops every relayed connection and refuses new ones.
    pub fn cut(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        for connection in self.connections.lock().expect("connections").drain(..) {
            connection.abort();
        }
    }

    /// Relays again.
    pub fn restore(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpRelay {
    fn drop(&mut self) {
        self.cut();
        self.accept_loop.abort();
    }
}
