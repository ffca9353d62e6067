//! The embedded bus (`bus.url = "embedded://"`): the outbox is the log.
//!
//! The relay publishes committed events by giving them a `position` in one ordered log, in
//! transactions that run one at a time (an advisory lock on PostgreSQL, the single writer on
//! SQLite), so a position is only ever visible after every smaller one. Each consumer reads
//! the log after its durable cursor and, in one transaction per batch, runs its handler,
//! records the event ids and moves its cursor: a crash before the commit redelivers the
//! batch, and the recorded ids make a redelivery a no-op.

use std::sync::Arc;
use std::time::Duration;

use sea_query::{Expr, ExprTrait, Iden, OnConflict, Order, Query};
use tokio_util::sync::CancellationToken;

use super::{
    Bus, ConsumeError, Consumer, Event, Listener, OutboxColumn, StoredEvent, deliver_batch, now,
};
use crate::db::Backend;

/// An arbitrary constant: the PostgreSQL advisory lock that serialises relays.
const RELAY_LOCK: i64 = 0x6c6f_6769_636f_7265;

#[derive(Iden, Clone, Copy)]
pub(crate) enum CursorColumn {
    #[iden = "bus_cursors"]
    Table,
    Consumer,
    Position,
    UpdatedAt,
}

/// Relay and consumer settings.
#[derive(Debug, Clone, Copy)]
pub struct BusSettings {
    /// How often the outbox and the log are looked at when nothing woke them (events written
    /// by another process).
    pub poll_interval: Duration,
    /// Events per relay or consumer transaction.
    pub batch: u32,
    /// How long the relay and each consumer wait after a round that did not fill a batch
    /// before the next, so that under load each write transaction carries many events
    /// instead of one (each would otherwise take a turn of the single SQLite writer, or a
    /// PostgreSQL commit, per order). It is what an event may wait at each step when idle.
    pub linger: Duration,
}

impl Default for BusSettings {
    fn default() -> Self {
        BusSettings {
            poll_interval: Duration::from_millis(100),
            batch: 256,
            linger: Duration::from_millis(5),
        }
    }
}

/// Waits `linger` unless `shutdown` comes first; false on shutdown.
async fn linger(linger: Duration, shutdown: &CancellationToken) -> bool {
    if linger.is_zero() {
        return !shutdown.is_cancelled();
    }
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(linger) => true,
    }
}

/// Up to `limit` published events after log position `after`, in log order.
fn events_after(after: i64, limit: u32) -> sea_query::SelectStatement {
    let mut columns = super::EVENT_COLUMNS.to_vec();
    columns.push(OutboxColumn::Position);
    Query::select()
        .columns(columns)
        .from(OutboxColumn::Table)
        .and_where(Expr::col(OutboxColumn::Position).gt(after))
        .order_by(OutboxColumn::Position, Order::Asc)
        .limit(u64::from(limit))
        .to_owned()
}

#[derive(Debug, sqlx::FromRow)]
struct EventRow {
    #[sqlx(flatten)]
    event: StoredEvent,
    position: i64,
}

impl EventRow {
    fn into_event(self) -> (i64, Event) {
        (self.position, self.event.into_event())
    }
}

#[derive(Debug, sqlx::FromRow)]
struct CursorRow {
    position: i64,
}

impl Bus {
    /// Publishes up to `limit` committed events (gives them their log positions); returns
    /// how many.
    pub async fn relay_once(&self, limit: u32) -> Result<u64, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let published = match tx.backend() {
            // The writer is single, so sequence numbers already follow commit order; the
            // update and the commit reach the connection together.
            Backend::Sqlite => {
                let pending = Query::select()
                    .column(OutboxColumn::Seq)
                    .from(OutboxColumn::Table)
                    .and_where(Expr::col(OutboxColumn::Position).is_null())
                    .order_by(OutboxColumn::Seq, Order::Asc)
                    .limit(u64::from(limit))
                    .to_owned();
                let publish = Query::update()
                    .table(OutboxColumn::Table)
                    .value(OutboxColumn::Position, Expr::col(OutboxColumn::Seq))
                    .value(OutboxColumn::PublishedAt, now())
                    .and_where(Expr::col(OutboxColumn::Seq).in_subquery(pending))
                    .to_owned();
                let published = tx.commit_after(&publish).await?;
                return Ok(self.after_publishing(published));
            }
            // Relays take turns (the lock is held to the commit), so positions become visible
            // in order; within a batch they follow the write order (PostgreSQL evaluates the
            // volatile nextval() after ORDER BY and LIMIT).
            Backend::Postgres => {
                tx.execute_script(&format!("SELECT pg_advisory_xact_lock({RELAY_LOCK})"))
                    .await?;
                tx.execute_script(&format!(
                    "UPDATE outbox SET position = numbered.position, published_at = now() \
                     FROM (SELECT seq, nextval('outbox_position_seq') AS position FROM outbox \
                           WHERE position IS NULL ORDER BY seq LIMIT {limit}) AS numbered \
                     WHERE outbox.seq = numbered.seq"
                ))
                .await?
            }
        };
        tx.commit().await?;
        Ok(self.after_publishing(published))
    }

    /// Counts `published` events and wakes this process's consumers; returns the count.
    fn after_publishing(&self, published: u64) -> u64 {
        if published > 0 {
            metrics::counter!("bus_events_published_total").increment(published);
            self.db.events_published();
        }
        published
    }

    /// Runs the relay until `shutdown`: publishes whenever this process committed events
    /// (see [`Bus::wake`]) and every `poll_interval` for the events of other processes.
    pub async fn run_relay(self, settings: BusSettings, shutdown: CancellationToken) {
        loop {
            match self.relay_once(settings.batch).await {
                Ok(published) if published == u64::from(settings.batch) => continue,
                Ok(_) => {}
                Err(err) => tracing::warn!(error = %err, "event relay failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = self.db.woken(crate::db::Topic::Events) => {}
                () = tokio::time::sleep(settings.poll_interval) => {}
            }
            if !linger(settings.linger, &shutdown).await {
                return;
            }
        }
    }

    /// The position `consumer` has read up to (0 before its first event).
    pub async fn cursor(&self, consumer: &str) -> Result<i64, sqlx::Error> {
        Ok(self.stored_cursor(consumer).await?.unwrap_or(0))
    }

    async fn stored_cursor(&self, consumer: &str) -> Result<Option<i64>, sqlx::Error> {
        let select = Query::select()
            .column(CursorColumn::Position)
            .from(CursorColumn::Table)
            .and_where(Expr::col(CursorColumn::Consumer).eq(consumer))
            .to_owned();
        let row: Option<CursorRow> = self.db.fetch_optional(&select).await?;
        Ok(row.map(|row| row.position))
    }

    /// The cursor of `consumer`, created at the start of the log on its first read.
    async fn registered_cursor(&self, consumer: &str) -> Result<i64, sqlx::Error> {
        match self.stored_cursor(consumer).await? {
            Some(position) => Ok(position),
            None => {
                self.register(consumer).await?;
                Ok(0)
            }
        }
    }

    /// Creates `consumer`'s cursor at the start of the log when it has none.
    async fn register(&self, consumer: &str) -> Result<(), sqlx::Error> {
        let insert = Query::insert()
            .into_table(CursorColumn::Table)
            .columns([
                CursorColumn::Consumer,
                CursorColumn::Position,
                CursorColumn::UpdatedAt,
            ])
            .values_panic([consumer.into(), 0i64.into(), now().into()])
            .on_conflict(
                OnConflict::column(CursorColumn::Consumer)
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        let mut tx = self.db.begin().await?;
        tx.execute(&insert).await?;
        tx.commit().await
    }

    /// Hands `consumer` up to `limit` events after its cursor, in one transaction that also
    /// moves the cursor; returns how many events were read (0 when it is up to date).
    pub async fn consume_once(
        &self,
        consumer: &dyn Consumer,
        limit: u32,
    ) -> Result<usize, ConsumeError> {
        let cursor = self.registered_cursor(consumer.name()).await?;
        let select = events_after(cursor, limit);
        let rows: Vec<EventRow> = self.db.fetch_all(&select).await?;
        let Some(last) = rows.last().map(|row| row.position) else {
            return Ok(0);
        };
        let read = rows.len();
        let events: Vec<Event> = rows.into_iter().map(|row| row.into_event().1).collect();
        let mut tx = self.db.begin().await?;
        deliver_batch(&mut tx, consumer, &events).await?;
        // Compare-and-set: a second runner of the same consumer that got here first wins and
        // this batch rolls back (its effects were skipped as redeliveries or are undone).
        let advance = Query::update()
            .table(CursorColumn::Table)
            .value(CursorColumn::Position, last)
            .value(CursorColumn::UpdatedAt, now())
            .and_where(Expr::col(CursorColumn::Consumer).eq(consumer.name()))
            .and_where(Expr::col(CursorColumn::Position).eq(cursor))
            .to_owned();
        if tx.execute(&advance).await? != 1 {
            return Ok(0);
        }
        tx.commit().await?;
        consumer.committed();
        Ok(read)
    }

    /// Runs `consumer` until `shutdown`. A batch that fails is retried one event at a time
    /// with growing delays, so one bad event holds back only itself and what follows it.
    pub async fn run_consumer(
        self,
        consumer: Arc<dyn Consumer>,
        settings: BusSettings,
        shutdown: CancellationToken,
    ) {
        let name = consumer.name().to_owned();
        let mut batch = Ord::max(settings.batch, 1);
        let mut failures = 0u32;
        tracing::info!(consumer = %name, topics = ?consumer.topics(), "event consumer started");
        loop {
            // Subscribe before reading so a publication during the read is not missed.
            let published = self.db.published();
            tokio::pin!(published);
            published.as_mut().enable();
            let wait = match self.consume_once(consumer.as_ref(), batch).await {
                // A full batch: more are likely waiting.
                Ok(read) if read == batch as usize => {
                    batch = Ord::max(settings.batch, 1);
                    failures = 0;
                    continue;
                }
                Ok(_) => {
                    batch = Ord::max(settings.batch, 1);
                    failures = 0;
                    settings.poll_interval
                }
                Err(err) => {
                    failures = failures.saturating_add(1);
                    batch = 1;
                    let delay = crate::jobs::Backoff {
                        base: Duration::from_millis(100),
                        // Short enough that a consumer is back soon after an outage ends.
                        cap: Duration::from_secs(5),
                    }
                    .delay(failures, 0.5 + crate::jobs::random_unit() / 2.0);
                    metrics::counter!("bus_consumer_failures_total", "consumer" => name.clone())
                        .increment(1);
                    tracing::warn!(consumer = %name, error = %err, attempt = failures,
                        retry_in_ms = delay.as_millis() as u64, "event consumer failed; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = published => {}
                () = tokio::time::sleep(wait) => {}
            }
            if !linger(settings.linger, &shutdown).await {
                return;
            }
        }
    }

    /// Runs `listener` until `shutdown` on the events published from now on (the position
    /// is kept in memory: a restarted process starts from its own start again).
    pub async fn run_listener(
        self,
        listener: Arc<dyn Listener>,
        settings: BusSettings,
        shutdown: CancellationToken,
    ) {
        let mut position: Option<i64> = None;
        loop {
            let published = self.db.published();
            tokio::pin!(published);
            published.as_mut().enable();
            let read = match position {
                None => self.log_end().await.map(|end| {
                    position = Some(end);
                    0
                }),
                Some(after) => self
                    .listen_once(listener.as_ref(), after, settings.batch)
                    .await
                    .map(|(read, last)| {
                        position = Some(last);
                        read
                    }),
            };
            let wait = match read {
                Ok(read) if read == settings.batch as usize => continue,
                Ok(_) => settings.poll_interval,
                Err(err) => {
                    tracing::warn!(listener = listener.name(), error = %err, "event listener failed; retrying");
                    Duration::from_secs(1)
                }
            };
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = published => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// The position of the last published event (0 for none).
    async fn log_end(&self) -> Result<i64, sqlx::Error> {
        let select = Query::select()
            .expr(Expr::cust("COALESCE(MAX(position), 0)"))
            .from(OutboxColumn::Table)
            .to_owned();
        let rows: Vec<(i64,)> = self.db.fetch_all(&select).await?;
        Ok(rows.first().map_or(0, |(end,)| *end))
    }

    /// Hands the events after `after` to `listener`; returns how many were read and the
    /// position reached.
    async fn listen_once(
        &self,
        listener: &dyn Listener,
        after: i64,
        limit: u32,
    ) -> Result<(usize, i64), sqlx::Error> {
        let select = events_after(after, limit);
        let rows: Vec<EventRow> = self.db.fetch_all(&select).await?;
        let Some(last) = rows.last().map(|row| row.position) else {
            return Ok((0, after));
        };
        let read = rows.len();
        let events = rows.into_iter().map(|row| row.into_event().1).collect();
        let wanted = super::wanted_by(listener.topics(), events);
        if !wanted.is_empty() {
            listener.on_events(&wanted).await;
        }
        Ok((read, last))
    }
}
