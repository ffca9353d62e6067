//! Domain events: a transactional outbox and the bus that carries it to consumers.
//!
//! A service writes its events with [`Bus::publish`] inside the transaction that makes the
//! change, so an event exists exactly when the change commits. A relay then publishes what
//! the outbox holds — on the embedded backend (`bus.url = "embedded://"`) by giving each
//! event its place in one ordered log in the database — and consumers read that log at least
//! once, each from its own durable cursor. A consumer's effects, its cursor and the id of the
//! event it processed are written in one transaction, and an event id already recorded is
//! skipped, so a redelivery has no second effect.
//!
//! Events are CloudEvents 1.0 ([`Event::to_cloudevent`]) with the W3C `traceparent` of the
//! request that caused them.
//!
//! The [`Consumer`] trait is all a service implements; the transport underneath (the
//! embedded log, or RabbitMQ with `bus.url = "amqp://..."`: [`amqp`]) calls [`deliver`] for
//! each event it hands over.

#[cfg(feature = "amqp")]
pub mod amqp;
pub mod embedded;

use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, SubsecRound, Utc};
use sea_query::{Expr, ExprTrait, Iden, OnConflict, Query};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::db::{Db, Migration, Tx};

/// The bus's schema history (outbox, consumer cursors, processed event ids).
pub const MIGRATIONS: &[Migration] = &[Migration {
    version: 2026112611,
    name: "bus: outbox, consumer cursors and processed events",
    sqlite: include_str!("../../migrations/sqlite/2026112611_bus.sql"),
    postgres: include_str!("../../migrations/postgres/2026112611_bus.sql"),
}];

/// The media type of a structured CloudEvent.
pub const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

#[derive(Iden, Clone, Copy)]
pub(crate) enum OutboxColumn {
    #[iden = "outbox"]
    Table,
    Seq,
    Id,
    Type,
    Source,
    Subject,
    Time,
    Data,
    Traceparent,
    Position,
    PublishedAt,
}

#[derive(Iden, Clone, Copy)]
pub(crate) enum ProcessedColumn {
    #[iden = "bus_processed"]
    Table,
    Consumer,
    EventId,
    ProcessedAt,
}

/// An event to publish.
#[derive(Debug, Clone)]
pub struct NewEvent {
    /// `order.created`, `product.updated`, ...
    pub event_type: String,
    /// `/logicore/<service>`.
    pub source: String,
    /// What the event is about (the resource id), when there is one.
    pub subject: Option<String>,
    /// The payload (the resource representation).
    pub data: Value,
}

impl NewEvent {
    /// An event of `event_type` from `service` about `subject` carrying `data`.
    pub fn new(
        service: &str,
        event_type: &str,
        subject: impl Into<Option<String>>,
        data: Value,
    ) -> NewEvent {
        NewEvent {
            event_type: event_type.to_owned(),
            source: format!("/logicore/{service}"),
            subject: subject.into(),
            data,
        }
    }
}

/// A published event as consumers see it.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Unique id (a UUIDv7).
    pub id: Uuid,
    /// Its type.
    pub event_type: String,
    /// Who published it.
    pub source: String,
    /// What it is about.
    pub subject: Option<String>,
    /// When it happened.
    pub time: DateTime<Utc>,
    /// The payload.
    pub data: Value,
    /// The W3C trace context of the request that caused it.
    pub traceparent: Option<String>,
}

impl Event {
    /// The structured-mode CloudEvents 1.0 JSON form (`application/cloudevents+json`).
    pub fn to_cloudevent(&self) -> Value {
        let mut event = json!({
            "specversion": "1.0",
            "id": self.id.to_string(),
            "source": self.source,
            "type": self.event_type,
            "time": self.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "datacontenttype": "application/json",
            "data": self.data,
        });
        if let Some(subject) = &self.subject {
            event["subject"] = json!(subject);
        }
        if let Some(traceparent) = &self.traceparent {
            event["traceparent"] = json!(traceparent);
        }
        event
    }

    /// Reads a structured CloudEvent; `None` when a required attribute is missing or the
    /// spec version is not 1.0.
    pub fn from_cloudevent(value: &Value) -> Option<Event> {
        if value.get("specversion")?.as_str()? != "1.0" {
            return None;
        }
        let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
        Some(Event {
            id: text("id")?.parse().ok()?,
            event_type: text("type")?,
            source: text("source")?,
            subject: text("subject"),
            time: text("time")
                .and_then(|time| DateTime::parse_from_rfc3339(&time).ok())
                .map_or_else(Utc::now, |time| time.with_timezone(&Utc)),
            data: value.get("data").cloned().unwrap_or(Value::Null),
            traceparent: text("traceparent"),
        })
    }
}

/// Whether the AMQP-style topic `pattern` (`order.*` matches one word, `#` any number,
/// words separated by dots) matches `event_type`.
pub fn topic_matches(pattern: &str, event_type: &str) -> bool {
    fn matches(pattern: &[&str], words: &[&str]) -> bool {
        match pattern.split_first() {
            None => words.is_empty(),
            Some((&"#", rest)) => (0..=words.len()).any(|skip| matches(rest, &words[skip..])),
            Some((&word, rest)) => words.split_first().is_some_and(|(first, others)| {
                (word == "*" || word == *first) && matches(rest, others)
            }),
        }
    }
    let pattern: Vec<&str> = pattern.split('.').collect();
    let words: Vec<&str> = event_type.split('.').collect();
    matches(&pattern, &words)
}

/// The outcome of a consumer's handling of one event.
#[derive(Debug, thiserror::Error)]
pub enum ConsumeError {
    /// The database failed; the event is delivered again.
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// The handler could not process the event now; it is delivered again.
    #[error("{0}")]
    Retry(String),
}

/// The future a [`Consumer`] returns.
pub type ConsumeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), ConsumeError>> + Send + 'a>>;

/// Something that reacts to events. Its work is done inside the transaction it is given,
/// which also records the event as processed, so effects happen once even when the event is
/// delivered twice (enqueueing a job is the usual effect: the job does the slow part).
pub trait Consumer: Send + Sync + 'static {
    /// A durable name: the cursor and the processed ids are kept under it (and, on RabbitMQ,
    /// the queue is named after it).
    fn name(&self) -> &str;

    /// The event types it wants, as topic patterns (`order.*`, `#`).
    fn topics(&self) -> &[&str];

    /// Handles one event inside `tx`.
    fn handle<'a>(&'a self, tx: &'a mut Tx, event: &'a Event) -> ConsumeFuture<'a>;

    /// Handles several events inside `tx` (each wanted and none processed before); by
    /// default one at a time. Consumers that can do a batch in fewer statements override it.
    fn handle_batch<'a>(&'a self, tx: &'a mut Tx, events: &'a [Event]) -> ConsumeFuture<'a> {
        Box::pin(async move {
            for event in events {
                self.handle(tx, event).await?;
            }
            Ok(())
        })
    }

    /// Called after a transaction with this consumer's effects committed (to wake the job
    /// worker for the jobs it enqueued, say).
    fn committed(&self) {}

    /// True when handling an event twice has no second effect by construction (the
    /// consumer's own writes are keyed by the event id): the bus then skips recording
    /// processed event ids for it, one insert per event less.
    fn idempotent(&self) -> bool {
        false
    }
}

/// Whether `consumer` wants events of `event_type`.
pub fn wants(consumer: &dyn Consumer, event_type: &str) -> bool {
    matches_any(consumer.topics(), event_type)
}

/// True when one of `topics` matches `event_type`.
fn matches_any(topics: &[&str], event_type: &str) -> bool {
    topics
        .iter()
        .any(|pattern| topic_matches(pattern, event_type))
}

/// The future a [`Listener`] returns.
pub type ListenFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// An ephemeral subscriber with idempotent effects outside the database (a cache purger):
/// no cursor, no processed ids, no transaction. It sees the events published after it
/// started, on every backend; each process has its own subscription.
pub trait Listener: Send + Sync + 'static {
    /// Its name (logs).
    fn name(&self) -> &str;

    /// AMQP-style topic patterns of the event types it wants.
    fn topics(&self) -> &[&str];

    /// Handles events it wants (at least once, usually once).
    fn on_events<'a>(&'a self, events: &'a [Event]) -> ListenFuture<'a>;

    /// Called when the subscription was re-established after a lost connection: events sent
    /// in between were missed (a cache purger forgets everything it might have kept).
    fn resubscribed(&self) -> ListenFuture<'_> {
        Box::pin(async {})
    }
}

/// The events of `events` whose type matches one of `topics`.
pub(crate) fn wanted_by(topics: &[&str], events: Vec<Event>) -> Vec<Event> {
    events
        .into_iter()
        .filter(|event| matches_any(topics, &event.event_type))
        .collect()
}

/// Hands `event` to `consumer` inside `tx` unless the consumer processed it before (or does
/// not want it); records it as processed. Returns false when nothing was done (a redelivery).
pub async fn deliver(
    tx: &mut Tx,
    consumer: &dyn Consumer,
    event: &Event,
) -> Result<bool, ConsumeError> {
    Ok(deliver_batch(tx, consumer, std::slice::from_ref(event)).await? == 1)
}

/// Hands the events of `events` that `consumer` wants and has not processed before to it in
/// one batch inside `tx`, recording them as processed with one statement; returns how many
/// it handled.
pub async fn deliver_batch(
    tx: &mut Tx,
    consumer: &dyn Consumer,
    events: &[Event],
) -> Result<usize, ConsumeError> {
    let wanted: Vec<&Event> = events
        .iter()
        .filter(|event| wants(consumer, &event.event_type))
        .collect();
    if wanted.is_empty() {
        return Ok(0);
    }
    if consumer.idempotent() {
        let fresh: Vec<Event> = wanted.into_iter().cloned().collect();
        consumer.handle_batch(tx, &fresh).await?;
        count_consumed(consumer, &fresh);
        return Ok(fresh.len());
    }
    let processed_at = now();
    let mut record = Query::insert()
        .into_table(ProcessedColumn::Table)
        .columns([
            ProcessedColumn::Consumer,
            ProcessedColumn::EventId,
            ProcessedColumn::ProcessedAt,
        ])
        .on_conflict(
            OnConflict::columns([ProcessedColumn::Consumer, ProcessedColumn::EventId])
                .do_nothing()
                .to_owned(),
        )
        .returning_col(ProcessedColumn::EventId)
        .to_owned();
    for event in &wanted {
        record.values_panic([consumer.name().into(), event.id.into(), processed_at.into()]);
    }
    let recorded: Vec<(Uuid,)> = tx.fetch_all(&record).await?;
    let wanted_count = wanted.len();
    let fresh: Vec<Event> = wanted
        .into_iter()
        .filter(|event| recorded.iter().any(|(id,)| *id == event.id))
        .cloned()
        .collect();
    let redelivered = wanted_count - fresh.len();
    if redelivered > 0 {
        metrics::counter!("bus_redeliveries_skipped_total", "consumer" => consumer.name().to_owned())
            .increment(redelivered as u64);
    }
    if fresh.is_empty() {
        return Ok(0);
    }
    consumer.handle_batch(tx, &fresh).await?;
    count_consumed(consumer, &fresh);
    Ok(fresh.len())
}

fn count_consumed(consumer: &dyn Consumer, events: &[Event]) {
    for event in events {
        metrics::counter!("bus_events_consumed_total", "consumer" => consumer.name().to_owned(), "type" => event.event_type.clone())
            .increment(1);
    }
}

/// The outbox columns of a [`StoredEvent`].
pub(crate) const EVENT_COLUMNS: [OutboxColumn; 7] = [
    OutboxColumn::Id,
    OutboxColumn::Type,
    OutboxColumn::Source,
    OutboxColumn::Subject,
    OutboxColumn::Time,
    OutboxColumn::Data,
    OutboxColumn::Traceparent,
];

/// An outbox row's event columns.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct StoredEvent {
    id: Uuid,
    #[sqlx(rename = "type")]
    event_type: String,
    source: String,
    subject: Option<String>,
    time: DateTime<Utc>,
    data: String,
    traceparent: Option<String>,
}

impl StoredEvent {
    pub(crate) fn into_event(self) -> Event {
        Event {
            id: self.id,
            event_type: self.event_type,
            source: self.source,
            subject: self.subject,
            time: self.time,
            data: serde_json::from_str(&self.data).unwrap_or(Value::Null),
            traceparent: self.traceparent,
        }
    }
}

pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

/// The W3C `traceparent` of the request being handled on this task (its trace id, a new
/// span id), if any.
pub fn current_traceparent() -> Option<String> {
    crate::http::request_context::with_current(|info| {
        let span = Uuid::new_v4().simple().to_string();
        format!("00-{}-{}-01", info.trace_id(), &span[..16])
    })
}

/// The event bus over the application database; cheap to clone.
#[derive(Debug, Clone)]
pub struct Bus {
    db: Db,
}

impl Bus {
    /// The bus over `db` (its tables come from [`MIGRATIONS`]). Buses over clones of one
    /// handle share their wake-ups: a write through one wakes the relay of another.
    pub fn new(db: Db) -> Bus {
        Bus { db }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes `event` to the outbox inside `tx`; it is published once `tx` commits. Call
    /// [`Bus::wake`] after the commit so this process's relay publishes it at once.
    pub async fn publish(&self, tx: &mut Tx, event: NewEvent) -> Result<Uuid, sqlx::Error> {
        let id = Uuid::now_v7();
        let insert = Query::insert()
            .into_table(OutboxColumn::Table)
            .columns(EVENT_COLUMNS)
            .values_panic([
                id.into(),
                event.event_type.into(),
                event.source.into(),
                event.subject.into(),
                now().into(),
                event.data.to_string().into(),
                current_traceparent().into(),
            ])
            .to_owned();
        // Its id is fresh: nothing can make it fail but a broken transaction.
        tx.execute_later(&insert).await?;
        Ok(id)
    }

    /// Tells the relay of this process, and on PostgreSQL those of every process on the
    /// database (a coalesced `NOTIFY` after the commit), that events were committed.
    pub fn wake(&self) {
        self.db.announce(crate::db::Topic::Events);
    }

    /// Tells this process's relay only (a notification from another process arrived).
    pub fn wake_local(&self) {
        self.db.wake_local(crate::db::Topic::Events);
    }

    /// Deletes processed-event records older than `before` (redeliveries come much sooner)
    /// and the published events every consumer has read before `before`. Returns how many
    /// rows went. Deletes in transactions of [`crate::jobs::PURGE_CHUNK`] rows.
    pub async fn purge(&self, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        self.purge_events(before, true).await
    }

    /// [`Bus::purge`] for the RabbitMQ backend: published events older than `before` go
    /// whatever the (unused) cursors say.
    pub async fn purge_published(&self, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
        self.purge_events(before, false).await
    }

    async fn purge_events(
        &self,
        before: DateTime<Utc>,
        read_by_cursors: bool,
    ) -> Result<u64, sqlx::Error> {
        let chunk = crate::jobs::PURGE_CHUNK;
        let old_records = Query::select()
            .columns([ProcessedColumn::Consumer, ProcessedColumn::EventId])
            .from(ProcessedColumn::Table)
            .and_where(Expr::col(ProcessedColumn::ProcessedAt).lt(before))
            .limit(chunk)
            .to_owned();
        let processed = Query::delete()
            .from_table(ProcessedColumn::Table)
            .and_where(
                Expr::tuple([
                    Expr::col(ProcessedColumn::Consumer),
                    Expr::col(ProcessedColumn::EventId),
                ])
                .in_subquery(old_records),
            )
            .to_owned();
        // Events every consumer has read (none are deleted before a consumer has a cursor).
        let mut read_events = Query::select()
            .column(OutboxColumn::Seq)
            .from(OutboxColumn::Table)
            .and_where(Expr::col(OutboxColumn::Position).is_not_null())
            .and_where(Expr::col(OutboxColumn::Time).lt(before))
            .limit(chunk)
            .to_owned();
        if read_by_cursors {
            read_events.and_where(Expr::col(OutboxColumn::Position).lte(Expr::cust(
                "(SELECT COALESCE(MIN(position), 0) FROM bus_cursors)",
            )));
        }
        let events = Query::delete()
            .from_table(OutboxColumn::Table)
            .and_where(Expr::col(OutboxColumn::Seq).in_subquery(read_events))
            .to_owned();
        let mut count = 0;
        for statement in [processed, events] {
            loop {
                let mut tx = self.db.begin().await?;
                let deleted = tx.execute(&statement).await?;
                tx.commit().await?;
                count += deleted;
                if deleted < chunk {
                    break;
                }
            }
        }
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_patterns_match_like_amqp_topic_exchanges() {
        assert!(topic_matches("order.created", "order.created"));
        assert!(topic_matches("order.*", "order.created"));
        assert!(!topic_matches("order.*", "order.created.late"));
        assert!(!topic_matches("order.*", "product.updated"));
        assert!(topic_matches("#", "order.created"));
        assert!(topic_matches("order.#", "order"));
        assert!(topic_matches("order.#", "order.a.b"));
        assert!(topic_matches("*.updated", "product.updated"));
        assert!(!topic_matches("*.updated", "updated"));
    }

    #[test]
    fn cloudevents_round_trip_with_traceparent() {
        let event = Event {
            id: Uuid::now_v7(),
            event_type: "order.created".into(),
            source: "/logicore/orders".into(),
            subject: Some("abc".into()),
            time: now(),
            data: json!({"id": "abc", "total_cents": 1200}),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        };
        let cloud = event.to_cloudevent();
        assert_eq!(cloud["specversion"], "1.0");
        assert_eq!(cloud["datacontenttype"], "application/json");
        let back = Event::from_cloudevent(&cloud).unwrap();
        assert_eq!(back.id, event.id);
        assert_eq!(back.traceparent, event.traceparent);
        assert_eq!(back.data, event.data);
        assert!(Event::from_cloudevent(&json!({"specversion": "0.3"})).is_none());
    }
}
