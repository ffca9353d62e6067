//! Storage: one handle over SQLite (the embedded default) or PostgreSQL (for scale).
//!
//! Stores build their statements once with sea-query; [`Db`] and [`Tx`] render them for the
//! backend in use and run them. On SQLite all writes go through a single writer connection whose
//! transactions start with `BEGIN IMMEDIATE`, so concurrent writers queue instead of failing
//! with `SQLITE_BUSY`; reads use a separate pool of read-only connections (WAL lets them run
//! beside the writer).
//!
//! The SQLite writer is one connection owned by the handle behind a fair lock, not a pool of
//! one: a pool checks every connection it gets back with a ping on the connection's thread
//! before the next writer may have it, and `BEGIN`/`COMMIT` through sqlx's transaction type
//! wait for the calling task to acknowledge them; with one writer both sit on the critical
//! path of every write (see `bench/README.md`).

mod migrate;
mod notify;

use std::future::Future;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use sea_query::{PostgresQueryBuilder, SqliteQueryBuilder};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions, PgRow};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Connection, FromRow, PgPool, Postgres, Sqlite, SqlitePool, Transaction};

use crate::config::{self, ConnectionUrl};

pub use migrate::{Migration, MigrationStatus, apply_migrations, migration_status};
pub use notify::{Notifications, Topic};
pub use sea_query_sqlx::SqlxBinder;
use sea_query_sqlx::SqlxValues;

/// How long a connection attempt or a pool checkout may take before it is an error.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long SQLite waits on a lock held by another process before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the SQLite write-ahead log is copied into the database when there were commits.
const SQLITE_CHECKPOINT_EVERY: Duration = Duration::from_millis(100);
/// Log frames (pages, 4 KiB by default) past which the checkpointer holds the writer once so
/// that the log starts again from its beginning (16 MiB).
const SQLITE_WAL_RESTART_FRAMES: i64 = 4096;
/// How long a restarting checkpoint waits for readers (while holding the writer) before it
/// settles for a passive one.
const SQLITE_RESTART_WAIT: Duration = Duration::from_millis(20);

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
        writer: std::sync::Arc<SqliteWriter>,
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
                // No ping before each checkout (a round trip per transaction): a connection
                // that died in the pool fails its first statement, and `retry_lost` runs
                // that statement again on another connection.
                let pool = PgPoolOptions::new()
                    .max_connections(options.max_connections)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .idle_timeout(Duration::from_secs(30))
                    .test_before_acquire(false)
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
                retry_lost(pool, || sqlx::query("SELECT 1").execute(pool)).await?;
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
                retry_lost(pool, || {
                    let (sql, values) = statement.build_sqlx(PostgresQueryBuilder);
                    sqlx::query_as_with::<Postgres, T, _>(AssertSqlSafe(sql), values)
                        .fetch_all(pool)
                })
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
                retry_lost(pool, || {
                    let (sql, values) = statement.build_sqlx(PostgresQueryBuilder);
                    sqlx::query_as_with::<Postgres, T, _>(AssertSqlSafe(sql), values)
                        .fetch_optional(pool)
                })
                .await
            }
        };
        self.observe(started);
        result
    }

    /// Starts a write transaction (on SQLite: takes the writer; its `BEGIN IMMEDIATE` goes
    /// with the first statement, so waiting on another process's write lock shows there).
    pub async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let inner = match &self.pools {
            Pools::Sqlite { writer, .. } => TxInner::Sqlite(writer.begin().await?),
            Pools::Postgres(pool) => TxInner::Postgres(retry_lost(pool, || pool.begin()).await?),
        };
        Ok(Tx {
            inner,
            later: Vec::new(),
            slow_query: self.slow_query,
        })
    }

    /// Runs a maintenance statement outside any transaction (`VACUUM` on PostgreSQL, which
    /// refuses to run inside one; on SQLite through the writer).
    pub async fn maintain(&self, sql: &str) -> Result<(), sqlx::Error> {
        let sql = AssertSqlSafe(sql.to_owned());
        match &self.pools {
            Pools::Sqlite { writer, .. } => {
                let mut connection = writer.lock().await?;
                sqlx::raw_sql(sql).execute(connection.live()?).await?;
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

/// Runs `attempt` (a read, the `BEGIN` of a transaction or a `NOTIFY`: nothing whose second
/// run would do harm) again while it fails because its pooled PostgreSQL connection was lost (the
/// server restarted, or ended an idle session, while the connection sat in the pool). Each
/// lost connection leaves the pool as it is given back, so after as many attempts as the pool
/// holds connections, plus one, a fresh connection has been tried and its error is the answer.
async fn retry_lost<T, F, Fut>(pool: &PgPool, mut attempt: F) -> Result<T, sqlx::Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, sqlx::Error>>,
{
    let mut left = pool.options().get_max_connections() + 1;
    loop {
        match attempt().await {
            Err(error) if left > 1 && connection_lost(&error) => {
                left -= 1;
                tracing::debug!(%error, "a pooled PostgreSQL connection was lost; trying another");
            }
            answer => return answer,
        }
    }
}

/// Whether `error` means the connection is gone rather than that the statement failed: an
/// I/O error, a connection exception (SQLSTATE class 08), or the server ending the session
/// (`57P01` admin shutdown, `57P02` crash shutdown, `57P03` cannot connect now; a server
/// that stops sends these to its idle sessions, and they are read as the next answer).
fn connection_lost(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(database) => database
            .code()
            .is_some_and(|code| code.starts_with("08") || code.starts_with("57P0")),
        _ => false,
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
    /// PostgreSQL: inserts of [`Tx::execute_later`] not sent yet (SQLite keeps its own).
    later: Vec<(String, sea_query::Values)>,
    slow_query: Duration,
}

#[derive(Debug)]
enum TxInner {
    Sqlite(SqliteTx),
    Postgres(Transaction<'static, Postgres>),
}

impl Tx {
    /// Runs a statement; returns the number of rows affected.
    pub async fn execute(&mut self, statement: &impl SqlxBinder) -> Result<u64, sqlx::Error> {
        let started = Instant::now();
        let affected = match &mut self.inner {
            TxInner::Sqlite(tx) => {
                let (sql, values) = statement.build_sqlx(SqliteQueryBuilder);
                tx.run(Some((sql, values.0))).await?.1
            }
            TxInner::Postgres(tx) => {
                let (sql, values) = statement.build_sqlx(PostgresQueryBuilder);
                execute_after_later(tx, &mut self.later, sql, values).await?
            }
        };
        log_if_slow(started, self.slow_query);
        Ok(affected)
    }

    /// Runs a statement whose outcome the caller does not need before its next statement:
    /// on SQLite it goes to the connection together with the next statement of the
    /// transaction (or its commit), saving a round trip to the connection's thread; on
    /// PostgreSQL plain `INSERT … VALUES` statements wait and go to the server as one
    /// statement (see [`send_later`]) before the next one, other statements run now. Its
    /// failure is the failure of the call it went with, so use this only where any failure
    /// fails the whole transaction (no constraint the caller wants to tell apart), and only
    /// for statements that return no rows.
    pub async fn execute_later(&mut self, statement: &impl SqlxBinder) -> Result<(), sqlx::Error> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => {
                let (sql, values) = statement.build_sqlx(SqliteQueryBuilder);
                tx.defer(&sql, values.0.0);
                Ok(())
            }
            TxInner::Postgres(tx) => {
                let (sql, values) = statement.build_sqlx(PostgresQueryBuilder);
                if !may_wait(&sql) {
                    let started = Instant::now();
                    execute_after_later(tx, &mut self.later, sql, values).await?;
                    log_if_slow(started, self.slow_query);
                    return Ok(());
                }
                // Rows of one table keep the order they were written in (outbox events are
                // numbered as they are inserted), which `WITH` clauses do not keep.
                if self
                    .later
                    .iter()
                    .any(|(waiting, _)| insert_target(waiting) == insert_target(&sql))
                {
                    send_later(tx, &mut self.later).await?;
                }
                self.later.push((sql, values.0));
                Ok(())
            }
        }
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
                let (rows, _) = tx.run(Some((sql, values.0))).await?;
                rows.iter()
                    .map(T::from_row)
                    .collect::<Result<Vec<T>, _>>()?
            }
            TxInner::Postgres(tx) => {
                send_later(tx, &mut self.later).await?;
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
            TxInner::Sqlite(tx) => {
                tx.run(None).await?;
                sqlx::raw_sql(sql)
                    .execute(tx.connection()?)
                    .await?
                    .rows_affected()
            }
            TxInner::Postgres(tx) => {
                send_later(tx, &mut self.later).await?;
                sqlx::raw_sql(sql).execute(&mut **tx).await?.rows_affected()
            }
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

    /// Commits the transaction (on SQLite together with the statements still waiting).
    pub async fn commit(mut self) -> Result<(), sqlx::Error> {
        match self.inner {
            TxInner::Sqlite(mut tx) => tx.commit(0).await.map(drop),
            TxInner::Postgres(mut tx) => {
                send_later(&mut tx, &mut self.later).await?;
                tx.commit().await
            }
        }
    }

    /// Runs `statement` and commits; returns the rows it changed. On SQLite the statement,
    /// those waiting and the `COMMIT` reach the connection together.
    pub async fn commit_after(mut self, statement: &impl SqlxBinder) -> Result<u64, sqlx::Error> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => {
                let started = Instant::now();
                let (sql, values) = statement.build_sqlx(SqliteQueryBuilder);
                tx.defer(&sql, values.0.0);
                let (_, changed) = tx.commit(1).await?;
                log_if_slow(started, self.slow_query);
                Ok(changed)
            }
            TxInner::Postgres(_) => {
                let changed = self.execute(statement).await?;
                self.commit().await?;
                Ok(changed)
            }
        }
    }

    /// Runs `query`, then `statement`, and commits; returns the query's rows. On SQLite all
    /// of it reaches the connection together, so `statement` must not need the rows — only
    /// the same data (a claim that reads a batch and then marks the same selection, say).
    pub async fn fetch_then_commit<T: Row>(
        mut self,
        query: &impl SqlxBinder,
        statement: &impl SqlxBinder,
    ) -> Result<Vec<T>, sqlx::Error> {
        match &mut self.inner {
            TxInner::Sqlite(tx) => {
                let started = Instant::now();
                let (sql, values) = query.build_sqlx(SqliteQueryBuilder);
                tx.defer(&sql, values.0.0);
                let (sql, values) = statement.build_sqlx(SqliteQueryBuilder);
                tx.defer(&sql, values.0.0);
                let (rows, _) = tx.commit(2).await?;
                log_if_slow(started, self.slow_query);
                Ok(rows
                    .iter()
                    .map(T::from_row)
                    .collect::<Result<Vec<T>, _>>()?)
            }
            TxInner::Postgres(_) => {
                let rows = self.fetch_all(query).await?;
                self.execute(statement).await?;
                self.commit().await?;
                Ok(rows)
            }
        }
    }
}

/// Whether a PostgreSQL statement may wait for the next one: a plain `INSERT … VALUES`
/// (no `SELECT` that could miss rows written beside it, no `DO UPDATE` that could meet
/// another waiting insert's row), which can share one statement with others.
fn may_wait(sql: &str) -> bool {
    sql.starts_with("INSERT INTO ")
        && sql.contains(" VALUES (")
        && !sql.contains("SELECT")
        && !sql.contains(" DO UPDATE ")
}

/// The table an `INSERT INTO <table> …` writes to.
fn insert_target(sql: &str) -> &str {
    let rest = sql.strip_prefix("INSERT INTO ").unwrap_or(sql);
    rest.split_once(' ').map_or(rest, |(table, _)| table)
}

/// Sends the waiting inserts: one as it is, several as one statement whose data-modifying
/// `WITH` clauses carry all but the last (one round trip instead of one each). They write
/// rows of distinct tables and read nothing, so running them as one statement — one
/// snapshot, in no set order — does what running them in turn would.
async fn send_later(
    tx: &mut Transaction<'static, Postgres>,
    later: &mut Vec<(String, sea_query::Values)>,
) -> Result<(), sqlx::Error> {
    if later.is_empty() {
        return Ok(());
    }
    let (sql, values) = combine_inserts(std::mem::take(later));
    sqlx::query_with::<Postgres, _>(AssertSqlSafe(sql), SqlxValues(values))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Sends the waiting inserts, then runs `sql`; returns the rows it changed.
async fn execute_after_later(
    tx: &mut Transaction<'static, Postgres>,
    later: &mut Vec<(String, sea_query::Values)>,
    sql: String,
    values: SqlxValues,
) -> Result<u64, sqlx::Error> {
    send_later(tx, later).await?;
    Ok(sqlx::query_with::<Postgres, _>(AssertSqlSafe(sql), values)
        .execute(&mut **tx)
        .await?
        .rows_affected())
}

/// `WITH later_0 AS (<first>), … <last>`, each statement's `$n` parameters renumbered to
/// follow the previous statements'.
fn combine_inserts(statements: Vec<(String, sea_query::Values)>) -> (String, sea_query::Values) {
    let count = statements.len();
    let mut sql = String::new();
    let mut values = Vec::new();
    for (index, (statement, statement_values)) in statements.into_iter().enumerate() {
        let renumbered = shift_parameters(&statement, values.len());
        if index + 1 < count {
            sql.push_str(if index == 0 { "WITH " } else { ", " });
            sql.push_str(&format!("later_{index} AS ({renumbered})"));
        } else {
            if count > 1 {
                sql.push(' ');
            }
            sql.push_str(&renumbered);
        }
        values.extend(statement_values.0);
    }
    (sql, sea_query::Values(values))
}

/// `sql` with every `$n` parameter outside quotes raised by `offset`.
fn shift_parameters(sql: &str, offset: usize) -> String {
    if offset == 0 {
        return sql.to_owned();
    }
    let mut shifted = String::with_capacity(sql.len() + 8);
    let mut quote: Option<char> = None;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match quote {
            Some(open) => {
                if c == open {
                    quote = None;
                }
                shifted.push(c);
            }
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                shifted.push(c);
            }
            None if c == '$' && chars.peek().is_some_and(char::is_ascii_digit) => {
                let mut number = 0usize;
                while let Some(digit) = chars.peek().and_then(|d| d.to_digit(10)) {
                    number = number * 10 + digit as usize;
                    chars.next();
                }
                shifted.push('$');
                shifted.push_str(&(number + offset).to_string());
            }
            None => shifted.push(c),
        }
    }
    shifted
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
        .foreign_keys(true)
        // Statement journals (kept by statements that change many rows inside a
        // transaction, to undo just that statement) and temporary tables stay in memory:
        // with the default a journal over 64 KiB spilled to a new file under /var/tmp —
        // created, written and unlinked — for every large claim, completion or relay round.
        .pragma("temp_store", "memory");
    // Checkpoints (copying the write-ahead log into the database file, with two fsyncs) run
    // on a connection of their own rather than inside a commit of the single writer, which
    // would stall every writer behind the disk; the log stops growing at 64 MiB once reset.
    let writer_options = connect
        .clone()
        .pragma("wal_autocheckpoint", "0")
        .pragma("journal_size_limit", "67108864");
    let writer = SqliteWriter::open(writer_options, connect.clone()).await?;
    // No ping before each checkout: a SQLite connection has no server to lose, and a ping is
    // one more hand-off to the connection's thread per read (sqlx still pings each connection
    // as it comes back, which drops one whose thread died).
    let readers = SqlitePoolOptions::new()
        .max_connections(options.max_connections.max(2))
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .test_before_acquire(false)
        .connect_with(connect.read_only(true))
        .await?;
    Ok(Pools::Sqlite {
        writer: std::sync::Arc::new(writer),
        readers,
    })
}

/// The single SQLite writer connection, handed to one transaction at a time in the order they
/// asked for it; reopened after its connection thread died.
#[derive(Debug)]
struct SqliteWriter {
    connection: std::sync::Arc<tokio::sync::Mutex<WriterConnection>>,
    /// Stops the checkpointer when the last handle goes.
    checkpointer: tokio_util::sync::DropGuard,
}

#[derive(Debug)]
struct WriterConnection {
    /// `None` after the connection broke; reopened by the next writer.
    live: Option<SqliteConnection>,
    /// [`Db::close`] ran: no more writers.
    closed: bool,
    /// A transaction was begun and not yet committed or rolled back (its rollback task never
    /// ran, say): the next writer rolls it back first.
    in_transaction: bool,
    options: SqliteConnectOptions,
    /// Commits so far (the checkpointer skips a round without any).
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

/// Histogram of the time a transaction waits for the SQLite writer.
pub const WRITER_WAIT: &str = "db_sqlite_writer_wait_seconds";
/// Histogram of the time a transaction holds the SQLite writer.
pub const WRITER_HOLD: &str = "db_sqlite_writer_hold_seconds";

/// The writer, held: the time it is held is recorded when it is given back.
#[derive(Debug)]
struct WriterGuard {
    connection: tokio::sync::OwnedMutexGuard<WriterConnection>,
    since: Instant,
}

impl std::ops::Deref for WriterGuard {
    type Target = WriterConnection;
    fn deref(&self) -> &WriterConnection {
        &self.connection
    }
}

impl std::ops::DerefMut for WriterGuard {
    fn deref_mut(&mut self) -> &mut WriterConnection {
        &mut self.connection
    }
}

impl Drop for WriterGuard {
    fn drop(&mut self) {
        metrics::histogram!(WRITER_HOLD).record(self.since.elapsed().as_secs_f64());
    }
}

impl WriterConnection {
    fn live(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        self.live.as_mut().ok_or(sqlx::Error::PoolClosed)
    }
}

impl SqliteWriter {
    async fn open(
        options: SqliteConnectOptions,
        checkpoint_options: SqliteConnectOptions,
    ) -> Result<SqliteWriter, sqlx::Error> {
        let live = SqliteConnection::connect_with(&options).await?;
        let commits = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let stop = tokio_util::sync::CancellationToken::new();
        let connection = std::sync::Arc::new(tokio::sync::Mutex::new(WriterConnection {
            live: Some(live),
            closed: false,
            in_transaction: false,
            options,
            commits: std::sync::Arc::clone(&commits),
        }));
        tokio::spawn(checkpoint_while_writing(
            checkpoint_options.busy_timeout(SQLITE_RESTART_WAIT),
            std::sync::Arc::downgrade(&connection),
            commits,
            stop.clone(),
        ));
        Ok(SqliteWriter {
            connection,
            checkpointer: stop.drop_guard(),
        })
    }

    /// Waits (at most [`ACQUIRE_TIMEOUT`], like a pool checkout) for the writer, reopening its
    /// connection when the last one broke.
    async fn lock(&self) -> Result<WriterGuard, sqlx::Error> {
        let asked = Instant::now();
        let connection = tokio::time::timeout(
            ACQUIRE_TIMEOUT,
            std::sync::Arc::clone(&self.connection).lock_owned(),
        )
        .await
        .map_err(|_| sqlx::Error::PoolTimedOut)?;
        let since = Instant::now();
        metrics::histogram!(WRITER_WAIT).record(since.duration_since(asked).as_secs_f64());
        let mut guard = WriterGuard { connection, since };
        if guard.closed {
            return Err(sqlx::Error::PoolClosed);
        }
        if guard.live.is_none() {
            guard.live = Some(SqliteConnection::connect_with(&guard.options).await?);
            guard.in_transaction = false;
        }
        if guard.in_transaction {
            // Fails harmlessly when SQLite already ended it.
            let _ = sqlx::raw_sql("ROLLBACK").execute(guard.live()?).await;
            guard.in_transaction = false;
        }
        Ok(guard)
    }

    /// Takes the writer for a transaction whose `BEGIN IMMEDIATE` goes with its first
    /// statement.
    async fn begin(&self) -> Result<SqliteTx, sqlx::Error> {
        let mut guard = self.lock().await?;
        guard.in_transaction = true;
        let mut tx = SqliteTx {
            guard: Some(guard),
            sent: false,
            pending: String::new(),
            pending_values: Vec::new(),
            pending_statements: 0,
        };
        tx.defer("BEGIN IMMEDIATE", Vec::new());
        Ok(tx)
    }

    async fn close(&self) {
        self.checkpointer.token().cancel();
        let mut guard = self.connection.lock().await;
        guard.closed = true;
        if let Some(connection) = guard.live.take() {
            let _ = connection.close().await;
        }
    }
}

/// Checkpoints the write-ahead log every [`SQLITE_CHECKPOINT_EVERY`] after commits, on a
/// connection of its own (`PASSIVE`: writers go on meanwhile), until `stop`.
///
/// SQLite starts the log again from its beginning only when a write transaction begins
/// with every frame already copied, which under steady writes never happens: frames of new
/// commits arrive during each passive round, the log grew by ~40 MB/s under the order load,
/// and every commit then wrote to fresh blocks of an ever longer file. So once the log holds
/// [`SQLITE_WAL_RESTART_FRAMES`], the checkpointer takes the writer between two transactions
/// and runs a `RESTART` checkpoint: it copies the few frames the passive round left, waits
/// (briefly) for readers to leave the log, and the next commit writes from its start.
async fn checkpoint_while_writing(
    options: SqliteConnectOptions,
    writer: std::sync::Weak<tokio::sync::Mutex<WriterConnection>>,
    commits: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: tokio_util::sync::CancellationToken,
) {
    let mut connection: Option<SqliteConnection> = None;
    let mut checkpointed = 0;
    let mut every = tokio::time::interval(SQLITE_CHECKPOINT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = every.tick() => {}
        }
        let committed = commits.load(std::sync::atomic::Ordering::Relaxed);
        if committed == checkpointed {
            continue;
        }
        let live = match connection.as_mut() {
            Some(live) => live,
            None => match SqliteConnection::connect_with(&options).await {
                Ok(live) => connection.insert(live),
                Err(err) => {
                    tracing::warn!(error = %err, "cannot open the SQLite checkpoint connection");
                    continue;
                }
            },
        };
        let frames = match wal_checkpoint(live, "PASSIVE").await {
            Ok(frames) => frames,
            Err(err) => {
                tracing::warn!(error = %err, "SQLite checkpoint failed; retrying");
                connection = None;
                continue;
            }
        };
        checkpointed = committed;
        if frames < SQLITE_WAL_RESTART_FRAMES {
            continue;
        }
        let Some(writer) = writer.upgrade() else {
            break;
        };
        let held = writer.lock().await;
        if held.closed || held.in_transaction {
            continue;
        }
        if let Err(err) = wal_checkpoint(live, "RESTART").await {
            tracing::warn!(error = %err, "SQLite checkpoint failed; retrying");
            connection = None;
        }
        drop(held);
    }
    if let Some(live) = connection {
        let _ = live.close().await;
    }
}

/// Runs `PRAGMA wal_checkpoint(<mode>)`; returns the frames in the log.
async fn wal_checkpoint(connection: &mut SqliteConnection, mode: &str) -> Result<i64, sqlx::Error> {
    let (_busy, frames, _copied): (i64, i64, i64) =
        sqlx::query_as(AssertSqlSafe(format!("PRAGMA wal_checkpoint({mode})")))
            .fetch_one(connection)
            .await?;
    Ok(frames)
}

/// Drops a connection whose thread is gone, so the next writer opens a new one.
fn forget_if_broken(guard: &mut WriterConnection, error: &sqlx::Error) {
    if matches!(error, sqlx::Error::WorkerCrashed | sqlx::Error::Io(_)) {
        guard.live = None;
    }
}

/// A write transaction on the SQLite writer; dropped while open, a task rolls it back before
/// the writer passes on.
///
/// Statements whose outcome is not needed at once (its `BEGIN`, [`Tx::execute_later`]) wait
/// in `pending` and go to the connection's thread with the next statement as one
/// multi-statement query, its parameters bound in order across the statements.
#[derive(Debug)]
struct SqliteTx {
    /// Held until the transaction ended (taken by a rollback on drop); its
    /// `in_transaction` says whether this transaction is still open.
    guard: Option<WriterGuard>,
    /// Something reached the connection (its `BEGIN` ran or failed).
    sent: bool,
    pending: String,
    pending_values: Vec<sea_query::Value>,
    pending_statements: usize,
}

impl SqliteTx {
    fn connection(&mut self) -> Result<&mut SqliteConnection, sqlx::Error> {
        self.guard.as_mut().ok_or(sqlx::Error::PoolClosed)?.live()
    }

    fn defer(&mut self, sql: &str, values: Vec<sea_query::Value>) {
        if !self.pending.is_empty() {
            self.pending.push_str(";\n");
        }
        self.pending.push_str(sql);
        self.pending_values.extend(values);
        self.pending_statements += 1;
    }

    /// Runs the waiting statements followed by `last`; returns the rows `last` returned and
    /// the rows it changed.
    async fn run(
        &mut self,
        last: Option<(String, sea_query::Values)>,
    ) -> Result<(Vec<SqliteRow>, u64), sqlx::Error> {
        self.run_reporting(last, 0).await
    }

    /// [`SqliteTx::run`] returning what the statement `from_end` places before the last did.
    async fn run_reporting(
        &mut self,
        last: Option<(String, sea_query::Values)>,
        from_end: usize,
    ) -> Result<(Vec<SqliteRow>, u64), sqlx::Error> {
        use futures_util::TryStreamExt;
        use sqlx::Executor;
        if let Some((sql, values)) = last {
            self.defer(&sql, values.0);
        }
        let statements = std::mem::take(&mut self.pending_statements);
        if statements == 0 {
            return Ok((Vec::new(), 0));
        }
        let reported = statements.saturating_sub(from_end);
        let sql = std::mem::take(&mut self.pending);
        let values = sea_query::Values(std::mem::take(&mut self.pending_values));
        self.sent = true;
        let connection = self.connection()?;
        let query = sqlx::query_with::<Sqlite, _>(AssertSqlSafe(sql), SqlxValues(values));
        let mut steps = connection.fetch_many(query);
        let (mut finished, mut rows, mut changed) = (0, Vec::new(), 0);
        let outcome = loop {
            match steps.try_next().await {
                Ok(Some(sqlx::Either::Left(done))) => {
                    finished += 1;
                    if finished == reported {
                        changed = done.rows_affected();
                    }
                }
                Ok(Some(sqlx::Either::Right(row))) => {
                    if finished + 1 == reported {
                        rows.push(row);
                    }
                }
                Ok(None) => break Ok(()),
                Err(err) => break Err(err),
            }
        };
        drop(steps);
        if let Err(err) = outcome {
            if let Some(guard) = self.guard.as_mut() {
                forget_if_broken(guard, &err);
            }
            return Err(err);
        }
        Ok((rows, changed))
    }

    /// Commits; returns the rows and the change count of the statement `from_end` places
    /// before the `COMMIT`.
    async fn commit(&mut self, from_end: usize) -> Result<(Vec<SqliteRow>, u64), sqlx::Error> {
        let outcome = if !self.sent && self.pending_statements == 1 {
            // Nothing but the `BEGIN`: nothing to commit.
            self.pending_statements = 0;
            (Vec::new(), 0)
        } else {
            let commit = ("COMMIT".to_owned(), sea_query::Values(Vec::new()));
            self.run_reporting(Some(commit), from_end).await?
        };
        if let Some(guard) = self.guard.as_mut() {
            guard.in_transaction = false;
            guard
                .commits
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(outcome)
    }
}

impl Drop for SqliteTx {
    fn drop(&mut self) {
        let Some(mut guard) = self.guard.take() else {
            return;
        };
        if !self.sent {
            // Its `BEGIN` never reached the connection: nothing to roll back.
            guard.in_transaction = false;
            return;
        }
        if !guard.in_transaction || guard.live.is_none() {
            return;
        }
        // The rollback runs while this task still holds the writer, so the next transaction
        // starts on a clean connection. Without a runtime (a process shutting down), or when
        // the task never runs, the next writer rolls back first (`in_transaction`).
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move {
                let Ok(connection) = guard.live() else { return };
                // An error here is usually "no transaction is active" (its `BEGIN` failed);
                // a broken connection is reopened by the next writer.
                if let Err(err) = sqlx::raw_sql("ROLLBACK").execute(connection).await {
                    forget_if_broken(&mut guard, &err);
                }
                guard.in_transaction = false;
            });
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waiting_inserts_become_one_statement_with_renumbered_parameters() {
        let statements = vec![
            (
                r#"INSERT INTO "a" ("x", "y") VALUES ($1, $2)"#.to_owned(),
                sea_query::Values(vec![1i64.into(), "one".into()]),
            ),
            (
                r#"INSERT INTO "b" ("z", "$1") VALUES ($1, '$2 stays'), ($2, $3)"#.to_owned(),
                sea_query::Values(vec![2i64.into(), 3i64.into(), 4i64.into()]),
            ),
            (
                r#"INSERT INTO "c" ("w") VALUES ($1)"#.to_owned(),
                sea_query::Values(vec![5i64.into()]),
            ),
        ];
        let (sql, values) = combine_inserts(statements);
        assert_eq!(
            sql,
            r#"WITH later_0 AS (INSERT INTO "a" ("x", "y") VALUES ($1, $2)), later_1 AS (INSERT INTO "b" ("z", "$1") VALUES ($3, '$2 stays'), ($4, $5)) INSERT INTO "c" ("w") VALUES ($6)"#
        );
        assert_eq!(values.0.len(), 6);
        assert_eq!(shift_parameters("VALUES ($9, $10)", 3), "VALUES ($12, $13)");
        let (single, _) = combine_inserts(vec![(
            "INSERT INTO t VALUES ($1)".to_owned(),
            sea_query::Values(vec![1i64.into()]),
        )]);
        assert_eq!(single, "INSERT INTO t VALUES ($1)");
        assert!(may_wait(r#"INSERT INTO "t" ("a") VALUES ($1)"#));
        assert!(!may_wait(r#"INSERT INTO "t" ("a") SELECT 1"#));
        assert!(!may_wait(
            r#"INSERT INTO "t" ("a") VALUES ($1) ON CONFLICT ("a") DO UPDATE SET "a" = 1"#
        ));
        assert!(!may_wait(r#"UPDATE "t" SET "a" = $1"#));
        assert_eq!(
            insert_target(r#"INSERT INTO "outbox" ("a") VALUES ($1)"#),
            r#""outbox""#
        );
    }
}
