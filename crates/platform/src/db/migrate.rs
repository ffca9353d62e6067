//! Migrations: one numbered history, with SQL per backend, recorded in `logicore_migrations`.
//!
//! Each service crate lists its migrations; the CLI gathers them all. Every migration runs in its
//! own transaction together with its bookkeeping row, so a crash leaves it either applied or not.
//! A migration whose SQL changed after it was applied is refused: history is append-only.

use chrono::{DateTime, Utc};
use sea_query::{Expr, ExprTrait, Iden, OnConflict, Order, Query};

use super::{Backend, Db};

/// One step of the schema history.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    /// Unique, increasing version (`YYYYMMDDNN`).
    pub version: i64,
    /// Short description.
    pub name: &'static str,
    /// The SQLite DDL.
    pub sqlite: &'static str,
    /// The PostgreSQL DDL.
    pub postgres: &'static str,
}

impl Migration {
    fn sql(&self, backend: Backend) -> &'static str {
        match backend {
            Backend::Sqlite => self.sqlite,
            Backend::Postgres => self.postgres,
        }
    }

    fn checksum(&self, backend: Backend) -> String {
        crate::crypto::sha256_hex(self.sql(backend).as_bytes())
    }
}

/// Whether a migration has been applied, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Version.
    pub version: i64,
    /// Description.
    pub name: String,
    /// When it was applied; `None` when pending.
    pub applied_at: Option<DateTime<Utc>>,
}

#[derive(Iden)]
enum LogicoreMigrations {
    Table,
    Version,
    Name,
    Checksum,
    AppliedAt,
}

#[derive(Debug, sqlx::FromRow)]
struct AppliedRow {
    version: i64,
    name: String,
    checksum: String,
    applied_at: DateTime<Utc>,
}

const CREATE_TABLE_SQLITE: &str = "CREATE TABLE IF NOT EXISTS logicore_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TEXT NOT NULL
)";

const CREATE_TABLE_POSTGRES: &str = "CREATE TABLE IF NOT EXISTS logicore_migrations (
    version BIGINT PRIMARY KEY,
    name TEXT NOT NULL,
    checksum TEXT NOT NULL,
    applied_at TIMESTAMPTZ NOT NULL
)";

/// Serialises concurrent migrators on PostgreSQL (two processes starting at once).
const POSTGRES_LOCK: &str = "SELECT pg_advisory_xact_lock(7426958126)";

/// Errors of the migrator.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    /// The database failed.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// An applied migration's SQL differs from the binary's.
    #[error("migration {version} ({name}) was changed after it was applied")]
    Changed {
        /// Version.
        version: i64,
        /// Description.
        name: String,
    },
    /// Two migrations share a version.
    #[error("two migrations share version {0}")]
    DuplicateVersion(i64),
}

/// Applies every pending migration in version order; returns the versions applied.
pub async fn apply_migrations(db: &Db, migrations: &[Migration]) -> Result<Vec<i64>, MigrateError> {
    let ordered = ordered(migrations)?;
    ensure_table(db).await?;
    let mut applied_now = Vec::new();
    for migration in ordered {
        let mut tx = db.begin().await?;
        if tx.backend() == Backend::Postgres {
            tx.execute_script(POSTGRES_LOCK).await?;
        }
        let existing: Option<AppliedRow> = tx
            .fetch_optional(
                &select_applied()
                    .and_where(Expr::col(LogicoreMigrations::Version).eq(migration.version))
                    .to_owned(),
            )
            .await?;
        let checksum = migration.checksum(tx.backend());
        if let Some(row) = existing {
            if row.checksum != checksum {
                return Err(MigrateError::Changed {
                    version: row.version,
                    name: row.name,
                });
            }
            continue;
        }
        tx.execute_script(migration.sql(tx.backend())).await?;
        let record = Query::insert()
            .into_table(LogicoreMigrations::Table)
            .columns([
                LogicoreMigrations::Version,
                LogicoreMigrations::Name,
                LogicoreMigrations::Checksum,
                LogicoreMigrations::AppliedAt,
            ])
            .values_panic([
                migration.version.into(),
                migration.name.into(),
                checksum.into(),
                Utc::now().into(),
            ])
            .on_conflict(
                OnConflict::column(LogicoreMigrations::Version)
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        tx.execute(&record).await?;
        tx.commit().await?;
        tracing::info!(
            version = migration.version,
            name = migration.name,
            "migration applied"
        );
        applied_now.push(migration.version);
    }
    Ok(applied_now)
}

/// Lists every known migration with its state, plus applied ones this binary does not know.
pub async fn migration_status(
    db: &Db,
    migrations: &[Migration],
) -> Result<Vec<MigrationStatus>, MigrateError> {
    let ordered = ordered(migrations)?;
    ensure_table(db).await?;
    let applied: Vec<AppliedRow> = db.fetch_all(&select_applied()).await?;
    let mut statuses: Vec<MigrationStatus> = ordered
        .iter()
        .map(|migration| MigrationStatus {
            version: migration.version,
            name: migration.name.to_owned(),
            applied_at: applied
                .iter()
                .find(|row| row.version == migration.version)
                .map(|row| row.applied_at),
        })
        .collect();
    for row in applied {
        if !statuses.iter().any(|status| status.version == row.version) {
            statuses.push(MigrationStatus {
                version: row.version,
                name: format!("{} (unknown to this binary)", row.name),
                applied_at: Some(row.applied_at),
            });
        }
    }
    statuses.sort_by_key(|status| status.version);
    Ok(statuses)
}

fn ordered(migrations: &[Migration]) -> Result<Vec<Migration>, MigrateError> {
    let mut ordered = migrations.to_vec();
    ordered.sort_by_key(|migration| migration.version);
    for pair in ordered.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(MigrateError::DuplicateVersion(pair[0].version));
        }
    }
    Ok(ordered)
}

async fn ensure_table(db: &Db) -> Result<(), sqlx::Error> {
    let mut tx = db.begin().await?;
    let create = match tx.backend() {
        Backend::Sqlite => CREATE_TABLE_SQLITE,
        Backend::Postgres => {
            tx.execute_script(POSTGRES_LOCK).await?;
            CREATE_TABLE_POSTGRES
        }
    };
    tx.execute_script(create).await?;
    tx.commit().await
}

fn select_applied() -> sea_query::SelectStatement {
    Query::select()
        .columns([
            LogicoreMigrations::Version,
            LogicoreMigrations::Name,
            LogicoreMigrations::Checksum,
            LogicoreMigrations::AppliedAt,
        ])
        .from(LogicoreMigrations::Table)
        .order_by(LogicoreMigrations::Version, Order::Asc)
        .to_owned()
}
