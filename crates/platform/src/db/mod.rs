//! Storage: one handle over SQLite (the embedded default) or PostgreSQL (for scale).
//!
//! Stores build their statements once with sea-query; [`Db`] and [`Tx`] render them for the
//! backend in use and run them. On SQLite all writes go through a single writer connection whose
//! transactions start with `BEGIN IMMEDIATE`, so concurrent writers queue instead of failing
//! with `SQLITE_BUSY`; reads use a separate pool of read-only connections (WAL lets them run
//! beside the writer).

mod migrate;
mod notify;

use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sea_query::{PostgresQueryBuilder, SqliteQueryBuilder};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, FromRow, PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::config::{self, ConnectionUrl};

pub use migrate::{Migration, MigrationStatus, apply_migrations, migration_status};
pub use notify::{Notifications, Topic};
pub use sea_query_sqlx::SqlxBinder;

/// How long a connection attempt or a pool checkout may take before it is an error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits on a lock held by another process before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Options for opening the database.
#[derive(Debug, Clone)]
pub struct DbOptions {
    /// PostgreSQL pool size; SQLite reader pool size.
    pub max_connections: u32,
    /// SQLite durability level.
    pub sqlite_synchronous: config::SqliteSynchronous,
    /// Queries slower than this are logged at WARN.
    pub slow_query: Duration,
}

impl From<&config::DatabaseConfig> for DbOptions {
    fn from(database: &config::DatabaseConfig) -> Self {
        DbOptions {
            max_connections: database.max_connections,
            sqlite_synchronous: database.sqlite_synchronous,
            slow_query: database.slow_query,
        }
    }
}

/// Which database a [`Db`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// Embedded SQLite file.
    Sqlite,
    /// PostgreSQL server.
    Postgres,
}

/// A handle to the database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Db {
    pools: Pools,
    /// Sends the cross-process wake-ups (PostgreSQL only).
    announcer: Option<std::sync::Arc<notify::Announcer>>,
    /// The in-process wake-ups of every queue and bus over this handle.
    wakes: std::sync::Arc<notify::LocalWakes>,
    slow_query: Duration,
}

#[derive(Debug, Clone)]
enum Pools {
    Sqlite {
        /// The only connection that writes (serialises writers without SQLITE_BUSY).
        writer: SqlitePool,
        /// Read-only connections.
        readers: SqlitePool,
    },
    Postgres(PgPool),
}

/// Rows decodable from both backends (derive `sqlx::FromRow` on the row struct).
pub trait Row: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin {}
impl<T> Row for T where T: for<'r> FromRow<'r, SqliteRow> + for<'r> FromRow<'r, PgRow> + Send + Unpin
{}

impl Db {
    /// Opens the database at `url` (`sqlite://path` or `postgres://...`), creating a SQLite file
    /// and its directory when missing.
    pub async fn connect(url: &ConnectionUrl, options: &DbOptions) -> Result<Db, sqlx::Error> {
        let pools = match url.scheme() {
            "postgres" | "postgresql" => {
                let connect = PgConnectOptions::from_str(url.expose())?;
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .idle_timeout(Duration::from_secs(30))
                    .connect_with(connect)
                    .await?;
                Pools::Postgres(pool)
            }
            _ => open_sqlite(url, options).await?,
        };
        let announcer = match &pools {
            Pools::Postgres(pool) => Some(notify::Announcer::new(pool.clone())),
            Pools::Sqlite { .. } => None,
        };
        Ok(Db {
            pools,
            announcer,
            wakes: std::sync::Arc::default(),
            slow_query: options.slow_query,
        })
    }

    /// Returns which backend this is.
    pub fn backend(&self) -> Backend {
        match self.pools {
            Pools::Sqlite { .. } => Backend::Sqlite,
            Pools::Postgres(_) => Backend::Postgres,
        }
    }

    /// Checks that the database answers (readiness).
    pub async fn ping(&self) -> Result<(), sqlx::Error> {
        match &self.pools {
            Pools::Sqlite { readers, .. } => {
                sqlx::query("SELECT 1").execute(readers).await?;
            }
            Pools::Postgres(pool) => {
                sqlx::query("SELECT 1").execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Runs a query on a read connection and returns all rows.
    pub async fn fetch_all<T: Row>(
        &self,
        statement: &impl SqlxBinder,
    ) -> Result<Vec<T>, sqlx::Error> {
        let started = Instant::now();
        let result = match &self.pools {
            Pools::Sqlite { readers, .. } => {
                let (sql, values) = statement.build_sqlx(SqliteQueryBuilder);
                sqlx::query_as_with::<Sqlite, T, _>(AssertSqlSafe(sql), values)
                    .fetch_all(readers)
                    .await
            }
            Pools::Postgres(pool) => {
                let (sql, values) = statement.build_sqlx(PostgresQueryBuilder);
                sqlx::query_as_with::<Postgres, T, _>(AssertSqlSafe(sql), values)
                    .fetch_all(pool)
                    .await
            }
        };
        self.observe(started);
        result
    }

    /// Runs a query on a read connection and returns the first row, if any.
    pub async fn fetch_optional<T: Row>(
        &self,
        statement: &impl SqlxBinder,
    ) -> Result<Option<T>, sqlx::Error> {
        let started = Instant::now();
        let result = match &self.pools {
            Pools::Sqlite { readers, .. } => {
                let (sql, values) = statement.build_sqlx(SqliteQueryBuilder);
                sqlx::query_as_with::<Sqlite, T, _>(AssertSqlSafe(sql), values)
                    .fetch_optional(readers)
                    .await
            }
            Pools::Postgres(pool) => {
                let (sql, values) = statement.build_sqlx(PostgresQueryBuilder);
                sqlx::query_as_with::<Postgres, T, _>(AssertSqlSafe(sql), values)
                    .fetch_optional(pool)
                    .await
            }
        };
        self.observe(started);
        result
    }

    /// Starts a write transaction (`BEGIN IMMEDIATE` on the SQLite writer).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let inner = match &self.pools {
            Pools::Sqlite { writer, .. } => {
                TxInner::Sqlite(writer.begin_with("BEGIN IMMEDIATE").await?)
            }
            Pools::Postgres(pool) => TxInner::Postgres(pool.begin().await?),
        };
        Ok(Tx {
            inner,
            slow_query: self.slow_query,
        })
    }

    /// Runs a maintenance statement outside any transaction (`VACUUM` on PostgreSQL, which
    /// refuses to run inside one; on SQLite through the writer).
    pub async fn maintain(&self, sql: &str) -> Result<(), sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_owned());
        match &self.pools {
            Pools::Sqlite { writer, .. } => {
                sqlx::raw_sql(sql).execute(writer).await?;
            }
            Pools::Postgres(pool) => {
                sqlx::raw_sql(sql).execute(pool).await?;
            }
        }
        Ok(())
    }

    /// Closes every connection (waits for checked-out ones to come back).
    pub async fn close(&self) {
        match &self.pools {
            Pools::Sqlite { writer, readers } => {
                writer.close().await;
                readers.close().await;
            }
            Pools::Postgres(pool) => pool.close().await,
        }
    }

    fn observe(&self, started: Instant) {
        log_if_slow(started, self.slow_query);
    }
}

fn log_if_slow(started: Instant, threshold: Duration) {
    let elapsed = started.elapsed();
    if elapsed >= threshold {
        tracing::warn!(duration_ms = elapsed.as_millis() as u64, "slow query");
    }
}

/// A write transaction; dropped without [`Tx::commit`] it rolls back.
#[derive(Debug)]
pub struct Tx {
    inner: TxInner,
    slow_query: Duration,
}

#[derive(Debug)]
enum TxInner {
    Sqlite(Transaction<'static, Sqlite>),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    /// Runs a statement; returns the number of rows affected.
    pub async fn execute(&mut self, statement: &impl SqlxBinder) -> Result<u64, sqlx::Error> {
        let started = Instant::now();
        let affected = match &mut self.inner {
            TxInner::Sqlite(tx) => {
                let (sql, values) = statement.build_sqlx(SqliteQueryBuilder);
                sqlx::query_with::<Sqlite, _>(AssertSqlSafe(sql), values)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected()
            }
            TxInner::Postgres(tx) => {
                let (sql, values) = statement.build_sqlx(PostgresQueryBuilder);
                sqlx::query_with::<Postgres, _>(AssertSqlSafe(sql), values)
                    .execute(&mut **tx)
                    .await?
                    .rows_affected()
            }
        };
        log_if_slow(started, self.slow_query);
        Ok(affected)
    }

    /// Runs a query inside the transaction and returns all rows.
    pub async fn fetch_all<T: Row>(
        &mut self,
        statement: &impl SqlxBinder,
    ) -> Result<Vec<T>, sqlx::Error> {
        let started = Instant::now();
        let rows = match &mut self.inner {
            TxInner::Sqlite(tx) => {
                let (sql, values) = statement.build_sqlx(SqliteQueryBuilder);
                sqlx::query_as_with::<Sqlite, T, _>(AssertSqlSafe(sql), values)
                    .fetch_all(&mut **tx)
                    .await?
            }
            TxInner::Postgres(tx) => {
                let (sql, values) = statement.build_sqlx(PostgresQueryBuilder);
                sqlx::query_as_with::<Postgres, T, _>(AssertSqlSafe(sql), values)
                    .fetch_all(&mut **tx)
                    .await?
            }
        };
        log_if_slow(started, self.slow_query);
        Ok(rows)
    }

    /// Runs a query inside the transaction and returns the first row, if any.
    pub async fn fetch_optional<T: Row>(
        &mut self,
        statement: &impl SqlxBinder,
    ) -> Result<Option<T>, sqlx::Error> {
        Ok(self.fetch_all(statement).await?.into_iter().next())
    }

    /// Runs raw SQL (several statements allowed) for migrations and dialect helpers; returns
    /// the rows affected.
    pub async fn execute_script(&mut self, sql: &str) -> Result<u64, sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_owned());
        let affected = match &mut self.inner {
            TxInner::Sqlite(tx) => sqlx::raw_sql(sql).execute(&mut **tx).await?.rows_affected(),
            TxInner::Postgres(tx) => sqlx::raw_sql(sql).execute(&mut **tx).await?.rows_affected(),
        };
        Ok(affected)
    }

    /// Returns which backend this transaction runs on.
    pub fn backend(&self) -> Backend {
        match self.inner {
            TxInner::Sqlite(_) => Backend::Sqlite,
            TxInner::Postgres(_) => Backend::Postgres,
        }
    }

    /// Commits the transaction.
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Sqlite(tx) => tx.commit().await,
            TxInner::Postgres(tx) => tx.commit().await,
        }
    }
}

async fn open_sqlite(url: &ConnectionUrl, options: &DbOptions) -> Result<Pools, sqlx::Error> {
    let connect = SqliteConnectOptions::from_str(url.expose())?;
    if let Some(parent) = Path::new(connect.get_filename()).parent()
        && !parent.as_os_str().is_empty()
    {
        std::fs::create_dir_all(parent).map_err(sqlx::Error::Io)?;
    }
    let synchronous = match options.sqlite_synchronous {
        config::SqliteSynchronous::Normal => SqliteSynchronous::Normal,
        config::SqliteSynchronous::Full => SqliteSynchronous::Full,
    };
    let connect = connect
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(synchronous)
        .busy_timeout(SQLITE_BUSY_TIMEOUT)
        .foreign_keys(true);
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(connect.clone())
        .await?;
    let readers = SqlitePoolOptions::new()
        .max_connections(options.max_connections.max(2))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(connect.read_only(true))
        .await?;
    Ok(Pools::Sqlite { writer, readers })
}

/// Storage failures as the services see them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A unique constraint was violated.
    Unique,
    /// A foreign-key constraint was violated.
    ForeignKey,
}

/// Classifies a constraint violation so `store.rs` can turn it into a domain error.
pub fn violation(error: &sqlx::Error) -> Option<Violation> {
    let database_error = error.as_database_error()?;
    // SQLite reports `ON DELETE RESTRICT` as SQLITE_CONSTRAINT_TRIGGER (1811), not as
    // SQLITE_CONSTRAINT_FOREIGNKEY, with the same message.
    let restrict_on_sqlite = database_error.code().as_deref() == Some("1811")
        && database_error
            .message()
            .contains("FOREIGN KEY constraint failed");
    if database_error.is_unique_violation() {
        Some(Violation::Unique)
    } else if database_error.is_foreign_key_violation() || restrict_on_sqlite {
        Some(Violation::ForeignKey)
    } else {
        None
    }
}

/// Returns true when the error means the database cannot be reached (not a bad query).
///
/// `Protocol` is included: sqlx reports a connection that closes during the handshake (a
/// server going down, a proxy refusing) as "unexpected response from SSLRequest", and a server
/// speaking nonsense is unusable either way.
pub fn is_unavailable(error: &sqlx::Error) -> bool {
    matches!(
        error,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
            | sqlx::Error::Tls(_)
            | sqlx::Error::Protocol(_)
    )
}
