//! Durable background jobs in the application's own database, as Oban, River and
//! graphile-worker do it: a job is a row, enqueued in the same transaction as the change that
//! asks for it, claimed in batches under a lease (`FOR UPDATE SKIP LOCKED` on PostgreSQL, the
//! single writer on SQLite), kept alive by heartbeats, retried with capped exponential backoff
//! and full jitter, and dead after its last attempt. A worker that dies loses nothing: its
//! leases expire and the jobs run again (handlers must be idempotent).
//!
//! [`Jobs`] is the queue; [`worker::Worker`] runs handlers over it.

pub mod admin;
pub mod worker;

use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use sea_query::{Expr, ExprTrait, Iden, LockBehavior, LockType, OnConflict, Order, Query};
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::db::{Backend, Db, Migration, Tx};

/// The queue's schema history.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 2026112610,
        name: "jobs: the durable job queue",
        sqlite: include_str!("../../migrations/sqlite/2026112610_jobs.sql"),
        postgres: include_str!("../../migrations/postgres/2026112610_jobs.sql"),
    },
    Migration {
        version: 2026112614,
        name: "jobs: claim index in claim order, eager autovacuum",
        sqlite: include_str!("../../migrations/sqlite/2026112614_jobs_claim_order.sql"),
        postgres: include_str!("../../migrations/postgres/2026112614_jobs_claim_order.sql"),
    },
];

#[derive(Iden, Clone, Copy)]
enum JobColumn {
    #[iden = "jobs"]
    Table,
    Id,
    Kind,
    Payload,
    State,
    Attempts,
    MaxAttempts,
    RunAt,
    LockedBy,
    LockedUntil,
    UniqueKey,
    LastError,
    CreatedAt,
    UpdatedAt,
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for its `run_at` and a worker (new, or to be retried).
    Available,
    /// Claimed by a worker under a lease.
    Running,
    /// Done.
    Completed,
    /// Failed its last attempt; `logicore jobs retry` brings it back.
    Dead,
}

impl JobState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Available => "available",
            JobState::Running => "running",
            JobState::Completed => "completed",
            JobState::Dead => "dead",
        }
    }

    /// Parses a stored or user-given name.
    pub fn parse(text: &str) -> Option<JobState> {
        [
            JobState::Available,
            JobState::Running,
            JobState::Completed,
            JobState::Dead,
        ]
        .into_iter()
        .find(|state| state.as_str() == text)
    }
}

/// A job to enqueue.
#[derive(Debug, Clone)]
pub struct NewJob {
    kind: String,
    payload: Value,
    run_at: Option<DateTime<Utc>>,
    unique_key: Option<String>,
    max_attempts: u32,
}

impl NewJob {
    /// A job of `kind` (the handler's name) with its JSON payload, runnable now, with the
    /// default of 5 attempts.
    pub fn new(kind: impl Into<String>, payload: Value) -> NewJob {
        NewJob {
            kind: kind.into(),
            payload,
            run_at: None,
            unique_key: None,
            max_attempts: 5,
        }
    }

    /// Runs no earlier than `run_at` (scheduled jobs).
    pub fn at(mut self, run_at: DateTime<Utc>) -> NewJob {
        self.run_at = Some(run_at);
        self
    }

    /// At most one job with this key ever exists (until purged): enqueueing it again is a
    /// no-op, so a redelivered event cannot send a second e-mail.
    pub fn unique(mut self, key: impl Into<String>) -> NewJob {
        self.unique_key = Some(key.into());
        self
    }

    /// Attempts before the job is dead.
    pub fn max_attempts(mut self, attempts: u32) -> NewJob {
        self.max_attempts = Ord::max(attempts, 1);
        self
    }
}

/// A claimed job, handed to its handler.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClaimedRow {
    id: Uuid,
    kind: String,
    payload: String,
    attempts: i32,
    max_attempts: i32,
}

/// A job being run.
#[derive(Debug, Clone)]
pub struct Job {
    /// Its id.
    pub id: Uuid,
    /// Its kind.
    pub kind: String,
    /// Its payload.
    pub payload: Value,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
}

impl From<ClaimedRow> for Job {
    fn from(row: ClaimedRow) -> Job {
        Job {
            id: row.id,
            payload: serde_json::from_str(&row.payload).unwrap_or(Value::Null),
            kind: row.kind,
            attempt: u32::try_from(row.attempts).unwrap_or(1),
            max_attempts: u32::try_from(row.max_attempts).unwrap_or(1),
        }
    }
}

/// Jobs from SQLite's `json_group_array(json_array(hex(id), kind, payload, attempts,
/// max_attempts))`, as claimed (the attempt counted).
fn jobs_from_json(json: &str) -> Vec<Job> {
    let rows: Vec<(String, String, String, i32, i32)> =
        serde_json::from_str(json).unwrap_or_default();
    rows.into_iter()
        .filter_map(|(id, kind, payload, attempts, max_attempts)| {
            Some(Job::from(ClaimedRow {
                id: Uuid::try_parse(&id).ok()?,
                kind,
                payload,
                attempts: attempts + 1,
                max_attempts,
            }))
        })
        .collect()
}

/// A job as listed for operators.
#[derive(Debug, Clone, Serialize, sqlx::FromRow, utoipa::ToSchema)]
pub struct JobRow {
    /// Id.
    pub id: Uuid,
    /// Kind.
    pub kind: String,
    /// `available`, `running`, `completed` or `dead`.
    pub state: String,
    /// Attempts made.
    pub attempts: i32,
    /// Attempts allowed.
    pub max_attempts: i32,
    /// Next (or last) run time.
    pub run_at: DateTime<Utc>,
    /// The last failure.
    pub last_error: Option<String>,
    /// The unique key, if any.
    pub unique_key: Option<String>,
    /// Enqueued.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

/// How a failed attempt is retried: `min(cap, base · 2^(attempt-1))`, of which a uniformly
/// random part is waited ("full jitter").
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    /// Delay before the first retry, before jitter.
    pub base: Duration,
    /// Largest delay.
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(15 * 60),
        }
    }
}

impl Backoff {
    /// The delay after failed attempt `attempt` (1-based), jittered by `unit` in `[0, 1)`.
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let exponent = Ord::min(attempt.saturating_sub(1), 30);
        let ceiling = self.base.saturating_mul(1u32 << exponent).min(self.cap);
        ceiling.mul_f64(unit.clamp(0.0, 1.0))
    }
}

/// A uniformly random number in `[0, 1)`.
pub fn random_unit() -> f64 {
    let mut bytes = [0u8; 8];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        return 0.5;
    }
    (u64::from_le_bytes(bytes) >> 11) as f64 / (1u64 << 53) as f64
}

/// `state = '<state>'` with the value written into the SQL, not bound: only then can SQLite
/// (and PostgreSQL's generic plans) use the partial indexes on `state = 'available'` and
/// `state = 'running'`; with a parameter the claim scans and sorts the whole table.
/// Rows deleted per transaction by purges.
pub const PURGE_CHUNK: u64 = 5_000;

fn in_state(state: JobState) -> Expr {
    Expr::cust(format!("state = '{}'", state.as_str()))
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn chrono_duration(duration: Duration) -> chrono::Duration {
    chrono::Duration::from_std(duration).unwrap_or(chrono::Duration::MAX)
}

/// The job queue over the application database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Jobs {
    db: Db,
    /// Jobs finished since the last vacuum.
    finished: std::sync::Arc<std::sync::atomic::AtomicU64>,
    /// A vacuum is running.
    vacuuming: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Jobs {
    /// The queue in `db` (its tables come from [`MIGRATIONS`]).
    pub fn new(db: Db) -> Jobs {
        Jobs {
            db,
            finished: std::sync::Arc::default(),
            vacuuming: std::sync::Arc::default(),
        }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Runs one statement in a transaction of its own; returns the rows it changed.
    async fn write(&self, statement: &impl crate::db::SqlxBinder) -> Result<u64, sqlx::Error> {
        self.db.begin().await?.commit_after(statement).await
    }

    /// Enqueues `job` inside `tx`, so it exists exactly when the change that asks for it
    /// commits. Returns its id, or `None` when a job with its unique key exists. Call
    /// [`Jobs::wake`] after the commit to have a worker of this process pick it up at once.
    pub async fn enqueue(&self, tx: &mut Tx, job: NewJob) -> Result<Option<Uuid>, sqlx::Error> {
        let id = Uuid::now_v7();
        let inserted = self.insert(tx, vec![(id, job)]).await?;
        Ok((inserted == 1).then_some(id))
    }

    /// Enqueues `jobs` inside `tx` with one statement; returns how many were enqueued (a job
    /// whose unique key exists is left out).
    pub async fn enqueue_many(&self, tx: &mut Tx, jobs: Vec<NewJob>) -> Result<u64, sqlx::Error> {
        let jobs = jobs.into_iter().map(|job| (Uuid::now_v7(), job)).collect();
        self.insert(tx, jobs).await
    }

    async fn insert(&self, tx: &mut Tx, jobs: Vec<(Uuid, NewJob)>) -> Result<u64, sqlx::Error> {
        if jobs.is_empty() {
            return Ok(0);
        }
        let created = now();
        let mut insert = Query::insert()
            .into_table(JobColumn::Table)
            .columns([
                JobColumn::Id,
                JobColumn::Kind,
                JobColumn::Payload,
                JobColumn::State,
                JobColumn::Attempts,
                JobColumn::MaxAttempts,
                JobColumn::RunAt,
                JobColumn::UniqueKey,
                JobColumn::CreatedAt,
                JobColumn::UpdatedAt,
            ])
            .on_conflict(
                OnConflict::column(JobColumn::UniqueKey)
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        for (id, job) in jobs {
            insert.values_panic([
                id.into(),
                job.kind.into(),
                job.payload.to_string().into(),
                JobState::Available.as_str().into(),
                0i32.into(),
                i32::try_from(job.max_attempts).unwrap_or(i32::MAX).into(),
                job.run_at.unwrap_or(created).into(),
                job.unique_key.into(),
                created.into(),
                created.into(),
            ]);
        }
        tx.execute(&insert).await
    }

    /// Deletes the waiting job with `unique_key` inside `tx` (a timeout that is no longer
    /// needed); false when there is none waiting.
    pub async fn cancel(&self, tx: &mut Tx, unique_key: &str) -> Result<bool, sqlx::Error> {
        let delete = Query::delete()
            .from_table(JobColumn::Table)
            .and_where(Expr::col(JobColumn::UniqueKey).eq(unique_key))
            .and_where(in_state(JobState::Available))
            .to_owned();
        Ok(tx.execute(&delete).await? == 1)
    }

    /// Enqueues `job` in a transaction of its own and wakes this process's workers.
    pub async fn enqueue_now(&self, job: NewJob) -> Result<Option<Uuid>, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let id = self.enqueue(&mut tx, job).await?;
        tx.commit().await?;
        self.wake();
        Ok(id)
    }

    /// Records `count` finished jobs and, on PostgreSQL, vacuums the queue table once enough
    /// have finished since the last time: every finished job leaves a dead entry in the claim
    /// index, and autovacuum (by default at most once a minute) comes too late for a busy
    /// queue, so claims would walk over ever more dead entries.
    pub(crate) fn after_finishing(&self, count: u64) {
        const VACUUM_EVERY: u64 = 20_000;
        use std::sync::atomic::Ordering;
        if self.db.backend() != Backend::Postgres
            || self.finished.fetch_add(count, Ordering::Relaxed) + count < VACUUM_EVERY
            || self.vacuuming.swap(true, Ordering::AcqRel)
        {
            return;
        }
        self.finished.store(0, Ordering::Relaxed);
        // Off the completion path: completions go on while the table is vacuumed.
        let (db, vacuuming) = (self.db.clone(), std::sync::Arc::clone(&self.vacuuming));
        tokio::spawn(async move {
            if let Err(err) = db.maintain("VACUUM (ANALYZE, SKIP_LOCKED) jobs").await {
                tracing::warn!(error = %err, "cannot vacuum the jobs table");
            }
            vacuuming.store(false, Ordering::Release);
        });
    }

    /// Tells the workers of this process, and on PostgreSQL those of every process on the
    /// database (a coalesced `NOTIFY` after the commit), that jobs are waiting.
    pub fn wake(&self) {
        self.db.announce(crate::db::Topic::Jobs);
    }

    /// Tells this process's workers only (a notification from another process arrived).
    pub fn wake_local(&self) {
        self.db.wake_local(crate::db::Topic::Jobs);
    }

    /// Resolves when [`Jobs::wake`] is called after this was created and enabled.
    pub(crate) fn woken(&self) -> tokio::sync::futures::Notified<'_> {
        self.db.woken(crate::db::Topic::Jobs)
    }

    /// Claims up to `limit` runnable jobs of `kinds` for `worker` for `lease`; each claim
    /// counts as an attempt.
    pub async fn claim(
        &self,
        worker: &str,
        kinds: &[String],
        limit: u32,
        lease: Duration,
    ) -> Result<Vec<Job>, sqlx::Error> {
        let claimed = now();
        let runnable = |columns: &[JobColumn]| {
            let mut select = Query::select()
                .columns(columns.iter().copied())
                .from(JobColumn::Table)
                .and_where(in_state(JobState::Available))
                .and_where(Expr::col(JobColumn::RunAt).lte(claimed))
                .and_where(Expr::col(JobColumn::Kind).is_in(kinds.iter().cloned()))
                .order_by(JobColumn::RunAt, Order::Asc)
                .order_by(JobColumn::Id, Order::Asc)
                .limit(u64::from(limit))
                .to_owned();
            select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
            select
        };
        let mut update = Query::update()
            .table(JobColumn::Table)
            .value(JobColumn::State, JobState::Running.as_str())
            .value(JobColumn::Attempts, Expr::col(JobColumn::Attempts).add(1))
            .value(JobColumn::LockedBy, worker)
            .value(JobColumn::LockedUntil, claimed + chrono_duration(lease))
            .value(JobColumn::UpdatedAt, claimed)
            .and_where(Expr::col(JobColumn::Id).in_subquery(runnable(&[JobColumn::Id])))
            .to_owned();
        let mut tx = self.db.begin().await?;
        match tx.backend() {
            Backend::Postgres => {
                update.returning(Query::returning().columns([
                    JobColumn::Id,
                    JobColumn::Kind,
                    JobColumn::Payload,
                    JobColumn::Attempts,
                    JobColumn::MaxAttempts,
                ]));
                let rows: Vec<ClaimedRow> = tx.fetch_all(&update).await?;
                tx.commit().await?;
                Ok(rows.into_iter().map(Job::from).collect())
            }
            // The batch is read as one JSON row and then marked, inside one write transaction
            // of the single writer (nobody else can claim in between, and the same ordered
            // selection finds the same rows): SQLite rows cross a thread one by one in sqlx,
            // so one row instead of hundreds is most of the cost of a claim. The read, the
            // marking and the commit go to the connection together.
            Backend::Sqlite => {
                let batch = Query::select()
                    .expr(Expr::cust(
                        "json_group_array(json_array(hex(id), kind, payload, attempts, max_attempts))",
                    ))
                    .from_subquery(
                        runnable(&[
                            JobColumn::Id,
                            JobColumn::Kind,
                            JobColumn::Payload,
                            JobColumn::Attempts,
                            JobColumn::MaxAttempts,
                        ]),
                        "batch",
                    )
                    .to_owned();
                let rows: Vec<(String,)> = tx.fetch_then_commit(&batch, &update).await?;
                Ok(rows
                    .first()
                    .map_or_else(Vec::new, |(json,)| jobs_from_json(json)))
            }
        }
    }

    /// Marks jobs of `worker` completed (one statement for the batch).
    pub async fn complete(&self, worker: &str, ids: &[Uuid]) -> Result<u64, sqlx::Error> {
        if ids.is_empty() {
            return Ok(0);
        }
        let update = Query::update()
            .table(JobColumn::Table)
            .value(JobColumn::State, JobState::Completed.as_str())
            .value(JobColumn::LockedBy, Option::<String>::None)
            .value(JobColumn::LockedUntil, Option::<DateTime<Utc>>::None)
            .value(JobColumn::UpdatedAt, now())
            .and_where(Expr::col(JobColumn::Id).is_in(ids.iter().copied()))
            .and_where(Expr::col(JobColumn::LockedBy).eq(worker))
            .to_owned();
        let done = self.write(&update).await?;
        Ok(done)
    }

    /// Records a failed attempt of `job`: available again after `retry_in`, or dead after
    /// its last attempt.
    pub async fn fail(
        &self,
        worker: &str,
        job: &Job,
        error: &str,
        retry_in: Duration,
    ) -> Result<JobState, sqlx::Error> {
        let failed = now();
        let state = if job.attempt >= job.max_attempts {
            JobState::Dead
        } else {
            JobState::Available
        };
        let error: String = error.chars().take(2000).collect();
        let update = Query::update()
            .table(JobColumn::Table)
            .value(JobColumn::State, state.as_str())
            .value(JobColumn::RunAt, failed + chrono_duration(retry_in))
            .value(JobColumn::LastError, error)
            .value(JobColumn::LockedBy, Option::<String>::None)
            .value(JobColumn::LockedUntil, Option::<DateTime<Utc>>::None)
            .value(JobColumn::UpdatedAt, failed)
            .and_where(Expr::col(JobColumn::Id).eq(job.id))
            .and_where(Expr::col(JobColumn::LockedBy).eq(worker))
            .to_owned();
        self.write(&update).await?;
        Ok(state)
    }

    /// Extends the leases of `worker`'s running jobs.
    pub async fn heartbeat(&self, worker: &str, lease: Duration) -> Result<u64, sqlx::Error> {
        let beat = now();
        let update = Query::update()
            .table(JobColumn::Table)
            .value(JobColumn::LockedUntil, beat + chrono_duration(lease))
            .and_where(in_state(JobState::Running))
            .and_where(Expr::col(JobColumn::LockedBy).eq(worker))
            .to_owned();
        let extended = self.write(&update).await?;
        Ok(extended)
    }

    /// Gives back `worker`'s running jobs without counting the attempt (a clean shutdown).
    pub async fn release(&self, worker: &str) -> Result<u64, sqlx::Error> {
        let released = now();
        let update = Query::update()
            .table(JobColumn::Table)
            .value(JobColumn::State, JobState::Available.as_str())
            .value(JobColumn::Attempts, Expr::col(JobColumn::Attempts).sub(1))
            .value(JobColumn::LockedBy, Option::<String>::None)
            .value(JobColumn::LockedUntil, Option::<DateTime<Utc>>::None)
            .value(JobColumn::RunAt, released)
            .value(JobColumn::UpdatedAt, released)
            .and_where(in_state(JobState::Running))
            .and_where(Expr::col(JobColumn::LockedBy).eq(worker))
            .to_owned();
        let count = self.write(&update).await?;
        Ok(count)
    }

    /// Returns jobs whose lease expired (their worker died) to the queue: available again,
    /// or dead when that was their last attempt. Returns how many.
    pub async fn rescue(&self) -> Result<u64, sqlx::Error> {
        let rescued = now();
        let expired = |state: JobState| {
            Query::update()
                .table(JobColumn::Table)
                .value(JobColumn::State, state.as_str())
                .value(JobColumn::LockedBy, Option::<String>::None)
                .value(JobColumn::LockedUntil, Option::<DateTime<Utc>>::None)
                .value(JobColumn::RunAt, rescued)
                .value(JobColumn::UpdatedAt, rescued)
                .and_where(in_state(JobState::Running))
                .and_where(Expr::col(JobColumn::LockedUntil).lt(rescued))
                .to_owned()
        };
        let mut dead = expired(JobState::Dead);
        dead.value(
            JobColumn::LastError,
            "the lease expired on the last attempt (worker lost)",
        )
        .and_where(Expr::col(JobColumn::Attempts).gte(Expr::col(JobColumn::MaxAttempts)));
        let mut tx = self.db.begin().await?;
        let mut count = tx.execute(&dead).await?;
        count += tx.execute(&expired(JobState::Available)).await?;
        tx.commit().await?;
        Ok(count)
    }

    /// Jobs in `state` (all when `None`), newest change first, at most `limit`.
    pub async fn list(
        &self,
        state: Option<JobState>,
        limit: u64,
    ) -> Result<Vec<JobRow>, sqlx::Error> {
        let mut select = Query::select()
            .columns([
                JobColumn::Id,
                JobColumn::Kind,
                JobColumn::State,
                JobColumn::Attempts,
                JobColumn::MaxAttempts,
                JobColumn::RunAt,
                JobColumn::LastError,
                JobColumn::UniqueKey,
                JobColumn::CreatedAt,
                JobColumn::UpdatedAt,
            ])
            .from(JobColumn::Table)
            .order_by(JobColumn::UpdatedAt, Order::Desc)
            .limit(limit)
            .to_owned();
        if let Some(state) = state {
            select.and_where(Expr::col(JobColumn::State).eq(state.as_str()));
        }
        self.db.fetch_all(&select).await
    }

    /// Makes a dead (or waiting) job runnable now with a fresh set of attempts; false when
    /// there is no such job or it is running or completed.
    pub async fn retry(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        let retried = now();
        let update = Query::update()
            .table(JobColumn::Table)
            .value(JobColumn::State, JobState::Available.as_str())
            .value(JobColumn::Attempts, 0i32)
            .value(JobColumn::RunAt, retried)
            .value(JobColumn::UpdatedAt, retried)
            .and_where(Expr::col(JobColumn::Id).eq(id))
            .and_where(
                Expr::col(JobColumn::State)
                    .is_in([JobState::Dead.as_str(), JobState::Available.as_str()]),
            )
            .to_owned();
        let changed = self.write(&update).await?;
        if changed == 1 {
            self.wake();
        }
        Ok(changed == 1)
    }

    /// Deletes completed jobs last changed before `before`; returns how many. Deletes in
    /// transactions of [`PURGE_CHUNK`] jobs, so the queue keeps running meanwhile.
    pub async fn purge(&self, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        let mut purged = 0;
        loop {
            let ids = Query::select()
                .column(JobColumn::Id)
                .from(JobColumn::Table)
                .and_where(in_state(JobState::Completed))
                .and_where(Expr::col(JobColumn::UpdatedAt).lt(before))
                .limit(PURGE_CHUNK)
                .to_owned();
            let delete = Query::delete()
                .from_table(JobColumn::Table)
                .and_where(Expr::col(JobColumn::Id).in_subquery(ids))
                .to_owned();
            let deleted = self.write(&delete).await?;
            purged += deleted;
            if deleted < PURGE_CHUNK {
                return Ok(purged);
            }
        }
    }

    /// How many jobs are in each state.
    pub async fn counts(&self) -> Result<Vec<(String, i64)>, sqlx::Error> {
        let select = Query::select()
            .column(JobColumn::State)
            .expr(Expr::col(JobColumn::Id).count())
            .from(JobColumn::Table)
            .group_by_col(JobColumn::State)
            .to_owned();
        self.db.fetch_all(&select).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_jitters_below_it() {
        let backoff = Backoff {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(60),
        };
        assert_eq!(
            backoff.delay(1, 0.999_999),
            Duration::from_secs(1).mul_f64(0.999_999)
        );
        assert_eq!(backoff.delay(3, 0.5), Duration::from_secs(2));
        assert_eq!(
            backoff.delay(10, 0.5),
            Duration::from_secs(30),
            "capped at 60 s"
        );
        assert_eq!(backoff.delay(u32::MAX, 1.0), Duration::from_secs(60));
        assert_eq!(backoff.delay(2, 0.0), Duration::ZERO);
        for _ in 0..1000 {
            let unit = random_unit();
            assert!((0.0..1.0).contains(&unit));
        }
    }
}
