//! The RabbitMQ backend of the bus (`bus.url = "amqp://..."`).
//!
//! Events still enter through the outbox, in the transaction of the change. The relay
//! publishes them to the durable topic exchange [`EXCHANGE`] with the event type as routing
//! key, as persistent CloudEvents (`application/cloudevents+json`), and marks them published
//! only once RabbitMQ confirmed them (publisher confirms): a relay dying in between publishes
//! them again, and consumers skip what they processed. Each [`Consumer`] reads its own durable
//! queue `logicore.<name>`, bound with its topics and dead-lettered to [`DEAD_EXCHANGE`]
//! (into `logicore.dead.<name>`); a message is acknowledged after the consumer's transaction
//! (its effects and the processed event id) committed. Connections are re-established with
//! backoff. Any AMQP client can bind its own queue to [`EXCHANGE`] and read the events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering as AtomicOrdering};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, BasicRejectOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use sea_query::{Expr, ExprTrait, LockBehavior, LockType, Order, Query};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{
    Bus, CLOUDEVENTS_JSON, ConsumeError, Consumer, Event, Listener, OutboxColumn, StoredEvent,
    deliver, now,
};
use crate::db::{Backend, is_unavailable};
use crate::jobs::{Backoff, random_unit};

/// The exchange every event is published to (topic, durable).
pub const EXCHANGE: &str = "logicore.events";

/// Where messages a consumer gave up on go (topic, durable; routing key = consumer name).
pub const DEAD_EXCHANGE: &str = "logicore.dead";

/// Settings of the RabbitMQ backend.
#[derive(Debug, Clone)]
pub struct AmqpSettings {
    /// `amqp://user:pass@host:5672/vhost`.
    pub url: String,
    /// Events per relay round.
    pub batch: u32,
    /// Unacknowledged messages a consumer holds.
    pub prefetch: u16,
    /// Attempts of a failing handler before its message is dead-lettered (database
    /// outages are waited out, not counted).
    pub max_attempts: u32,
    /// How often the outbox is looked at when nothing woke the relay.
    pub poll_interval: Duration,
    /// The consumers' queues (name, topics) the relay declares before publishing, so an
    /// event published before a consumer first connected still reaches its queue.
    pub queues: Vec<(String, Vec<String>)>,
}

impl AmqpSettings {
    /// Defaults for `url`.
    pub fn new(url: impl Into<String>) -> AmqpSettings {
        AmqpSettings {
            url: url.into(),
            batch: 256,
            prefetch: 64,
            max_attempts: 10,
            poll_interval: Duration::from_millis(100),
            queues: Vec::new(),
        }
    }
}

/// Why a relay or consumer session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("RabbitMQ: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("RabbitMQ refused (nacked) a published event")]
    Nacked,
    #[error("the consumer stream ended")]
    StreamEnded,
    #[error("the connection stalled while {0}")]
    Stalled(&'static str),
}

const RECONNECT: Backoff = Backoff {
    base: Duration::from_millis(200),
    cap: Duration::from_secs(10),
};

fn short(text: &str) -> ShortString {
    text.into()
}

/// Bound on connecting and on waiting for RabbitMQ's answer to a publication: a connection
/// that dies silently ends the session instead of stalling it.
const AMQP_TIMEOUT: Duration = Duration::from_secs(10);

async fn connect(url: &str) -> Result<Connection, SessionError> {
    tokio::time::timeout(
        AMQP_TIMEOUT,
        Connection::connect(url, ConnectionProperties::default()),
    )
    .await
    .map_err(|_| SessionError::Stalled("connecting"))?
    .map_err(SessionError::from)
}

/// The next message with the event it carries (`None` when it is no CloudEvent), or `None`
/// on shutdown (the connection is closed: unacknowledged messages go back to the queue).
async fn next_message(
    connection: &Connection,
    deliveries: &mut lapin::Consumer,
    shutdown: &CancellationToken,
    failures: &AtomicU32,
) -> Result<Option<(lapin::message::Delivery, Option<Event>)>, SessionError> {
    let next = tokio::select! {
        () = shutdown.cancelled() => {
            let _ = connection.close(200, short("shutdown")).await;
            return Ok(None);
        }
        next = next_delivery(connection, deliveries) => next,
    };
    let delivery = next?;
    failures.store(0, AtomicOrdering::Relaxed);
    let event = serde_json::from_slice(&delivery.data)
        .ok()
        .and_then(|value| Event::from_cloudevent(&value));
    Ok(Some((delivery, event)))
}

/// Waits for the next message, checking every few seconds that the connection is still up
/// (a consumer stream may stay silent when its connection breaks).
async fn next_delivery(
    connection: &Connection,
    deliveries: &mut lapin::Consumer,
) -> Result<lapin::message::Delivery, SessionError> {
    loop {
        match tokio::time::timeout(Duration::from_secs(5), deliveries.next()).await {
            Ok(Some(delivery)) => return Ok(delivery?),
            Ok(None) => return Err(SessionError::StreamEnded),
            Err(_) if connection.status().connected() => {}
            Err(_) => return Err(SessionError::Stalled("consuming")),
        }
    }
}

/// Declares the exchanges (idempotent).
async fn declare_exchanges(channel: &Channel) -> Result<(), lapin::Error> {
    let durable = ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    };
    for name in [EXCHANGE, DEAD_EXCHANGE] {
        channel
            .exchange_declare(
                short(name),
                ExchangeKind::Topic,
                durable,
                FieldTable::default(),
            )
            .await?;
    }
    Ok(())
}

/// Declares `consumer`'s durable queue bound with `topics`, and its dead-letter queue
/// (idempotent); returns the queue's name.
async fn declare_consumer_queue(
    channel: &Channel,
    consumer: &str,
    topics: &[&str],
) -> Result<String, lapin::Error> {
    let queue = queue_name(consumer);
    let dead_queue = format!("logicore.dead.{consumer}");
    let durable = QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    };
    channel
        .queue_declare(short(&dead_queue), durable, FieldTable::default())
        .await?;
    channel
        .queue_bind(
            short(&dead_queue),
            short(DEAD_EXCHANGE),
            short(consumer),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut arguments = FieldTable::default();
    arguments.insert(
        short("x-dead-letter-exchange"),
        AMQPValue::LongString(DEAD_EXCHANGE.into()),
    );
    arguments.insert(
        short("x-dead-letter-routing-key"),
        AMQPValue::LongString(consumer.into()),
    );
    channel
        .queue_declare(short(&queue), durable, arguments)
        .await?;
    for topic in topics {
        channel
            .queue_bind(
                short(&queue),
                short(EXCHANGE),
                short(topic),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    Ok(queue)
}

/// The name of a consumer's queue.
pub fn queue_name(consumer: &str) -> String {
    format!("logicore.{consumer}")
}

#[derive(Debug, sqlx::FromRow)]
struct PendingRow {
    seq: i64,
    #[sqlx(flatten)]
    event: StoredEvent,
}

/// Runs `session` again and again until it ends cleanly or `shutdown`, pausing with backoff
/// after failures; `session` resets `failures` once it is connected.
async fn reconnecting<'a, F, Fut>(
    role: &'static str,
    name: &str,
    shutdown: &CancellationToken,
    session: F,
) where
    F: Fn(Arc<AtomicU32>) -> Fut,
    Fut: std::future::Future<Output = Result<(), SessionError>> + 'a,
{
    let failures = Arc::new(AtomicU32::new(0));
    loop {
        let result = tokio::select! {
            () = shutdown.cancelled() => return,
            result = session(Arc::clone(&failures)) => result,
        };
        let Err(err) = result else { return };
        let failed = failures
            .fetch_add(1, AtomicOrdering::Relaxed)
            .saturating_add(1);
        let delay = RECONNECT.delay(failed, 0.5 + random_unit() / 2.0);
        metrics::counter!("bus_amqp_reconnects_total", "role" => role).increment(1);
        tracing::warn!(role, name, error = %err, retry_in_ms = delay.as_millis() as u64,
            "lost RabbitMQ; reconnecting");
        if !pause(delay, shutdown).await {
            return;
        }
    }
}

/// Sleeps `delay` unless `shutdown` comes first; false on shutdown.
async fn pause(delay: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(delay) => true,
    }
}

impl Bus {
    /// Runs the relay to RabbitMQ until `shutdown`: publishes committed events with
    /// publisher confirms, then marks them published.
    pub async fn run_amqp_relay(self, settings: AmqpSettings, shutdown: CancellationToken) {
        reconnecting("relay", "outbox", &shutdown, |failures| {
            self.relay_session(&settings, &shutdown, failures)
        })
        .await;
    }

    async fn relay_session(
        &self,
        settings: &AmqpSettings,
        shutdown: &CancellationToken,
        failures: Arc<AtomicU32>,
    ) -> Result<(), SessionError> {
        let connection = connect(&settings.url).await?;
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        declare_exchanges(&channel).await?;
        for (consumer, topics) in &settings.queues {
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            declare_consumer_queue(&channel, consumer, &topics).await?;
        }
        tracing::info!("event relay connected to RabbitMQ");
        loop {
            // Listen before reading, so a commit during the read is not missed.
            let written = self.db.woken(crate::db::Topic::Events);
            tokio::pin!(written);
            written.as_mut().enable();
            let published =
                tokio::time::timeout(AMQP_TIMEOUT, self.publish_to_amqp(&channel, settings.batch))
                    .await
                    .map_err(|_| SessionError::Stalled("publishing"))??;
            failures.store(0, AtomicOrdering::Relaxed);
            if published == u64::from(settings.batch) {
                continue;
            }
            tokio::select! {
                () = shutdown.cancelled() => {
                    let _ = connection.close(200, short("shutdown")).await;
                    return Ok(());
                }
                () = written => {}
                () = tokio::time::sleep(settings.poll_interval) => {}
            }
        }
    }

    /// Publishes up to `limit` unpublished events and marks those RabbitMQ confirmed.
    async fn publish_to_amqp(&self, channel: &Channel, limit: u32) -> Result<u64, SessionError> {
        let mut select = Query::select()
            .column(OutboxColumn::Seq)
            .columns(super::EVENT_COLUMNS)
            .from(OutboxColumn::Table)
            .and_where(Expr::col(OutboxColumn::Position).is_null())
            .order_by(OutboxColumn::Seq, Order::Asc)
            .limit(u64::from(limit))
            .to_owned();
        let postgres = self.db.backend() == Backend::Postgres;
        // PostgreSQL: relays of several processes take different rows (locked until the
        // commit). SQLite has one writer and usually one relay: read without holding it.
        let mut tx = None;
        let rows: Vec<PendingRow> = if postgres {
            select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
            let mut locked = self.db.begin().await?;
            let rows = locked.fetch_all(&select).await?;
            tx = Some(locked);
            rows
        } else {
            self.db.fetch_all(&select).await?
        };
        if rows.is_empty() {
            return Ok(0);
        }
        let mut confirms = Vec::with_capacity(rows.len());
        for row in &rows {
            let event = row.event.clone().into_event();
            let body = serde_json::to_vec(&event.to_cloudevent()).unwrap_or_default();
            let mut headers = FieldTable::default();
            if let Some(traceparent) = &event.traceparent {
                headers.insert(
                    short("traceparent"),
                    AMQPValue::LongString(traceparent.as_str().into()),
                );
            }
            let properties = BasicProperties::default()
                .with_content_type(short(CLOUDEVENTS_JSON))
                .with_delivery_mode(2)
                .with_message_id(short(&event.id.to_string()))
                .with_type(short(&event.event_type))
                .with_timestamp(u64::try_from(event.time.timestamp()).unwrap_or_default())
                .with_headers(headers);
            let confirm = channel
                .basic_publish(
                    short(EXCHANGE),
                    short(&event.event_type),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?;
            confirms.push(confirm);
        }
        for confirm in confirms {
            let confirmation = tokio::time::timeout(AMQP_TIMEOUT, confirm)
                .await
                .map_err(|_| SessionError::Stalled("waiting for publisher confirms"))??;
            if let Confirmation::Nack(_) = confirmation {
                return Err(SessionError::Nacked);
            }
        }
        let seqs: Vec<i64> = rows.iter().map(|row| row.seq).collect();
        let position = if postgres {
            Expr::cust("nextval('outbox_position_seq')")
        } else {
            Expr::col(OutboxColumn::Seq)
        };
        let mark = Query::update()
            .table(OutboxColumn::Table)
            .value(OutboxColumn::Position, position)
            .value(OutboxColumn::PublishedAt, now())
            .and_where(Expr::col(OutboxColumn::Seq).is_in(seqs))
            .and_where(Expr::col(OutboxColumn::Position).is_null())
            .to_owned();
        let mut tx = match tx {
            Some(tx) => tx,
            None => self.db.begin().await?,
        };
        let published = tx.execute(&mark).await?;
        tx.commit().await?;
        metrics::counter!("bus_events_published_total").increment(published);
        Ok(published)
    }

    /// Runs `consumer` on its RabbitMQ queue until `shutdown`.
    pub async fn run_amqp_consumer(
        self,
        consumer: Arc<dyn Consumer>,
        settings: AmqpSettings,
        shutdown: CancellationToken,
    ) {
        reconnecting("consumer", consumer.name(), &shutdown, |failures| {
            self.consumer_session(consumer.as_ref(), &settings, &shutdown, failures)
        })
        .await;
    }

    async fn consumer_session(
        &self,
        consumer: &dyn Consumer,
        settings: &AmqpSettings,
        shutdown: &CancellationToken,
        failures: Arc<AtomicU32>,
    ) -> Result<(), SessionError> {
        let connection = connect(&settings.url).await?;
        let channel = connection.create_channel().await?;
        declare_exchanges(&channel).await?;
        let queue = declare_consumer_queue(&channel, consumer.name(), consumer.topics()).await?;
        channel
            .basic_qos(settings.prefetch, BasicQosOptions::default())
            .await?;
        let mut deliveries = channel
            .basic_consume(
                short(&queue),
                short(&format!("{}-{}", consumer.name(), Uuid::new_v4().simple())),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        tracing::info!(consumer = consumer.name(), queue = %queue, "event consumer connected to RabbitMQ");
        loop {
            let Some((delivery, event)) =
                next_message(&connection, &mut deliveries, shutdown, &failures).await?
            else {
                return Ok(());
            };
            let Some(event) = event else {
                tracing::error!(
                    consumer = consumer.name(),
                    "a message is not a CloudEvent; dead-lettering it"
                );
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
                continue;
            };
            if self
                .consume_amqp(consumer, &event, settings, shutdown)
                .await
            {
                tokio::time::timeout(AMQP_TIMEOUT, delivery.ack(BasicAckOptions::default()))
                    .await
                    .map_err(|_| SessionError::Stalled("acknowledging"))??;
            } else if shutdown.is_cancelled() {
                let _ = connection.close(200, short("shutdown")).await;
                return Ok(());
            } else {
                metrics::counter!("bus_events_dead_lettered_total", "consumer" => consumer.name().to_owned())
                    .increment(1);
                delivery
                    .reject(BasicRejectOptions { requeue: false })
                    .await?;
            }
        }
    }

    /// Hands one event to `consumer` in a transaction of its own, retrying: true once
    /// done (or already done before), false when the handler kept failing (dead-letter it)
    /// or on shutdown.
    async fn consume_amqp(
        &self,
        consumer: &dyn Consumer,
        event: &Event,
        settings: &AmqpSettings,
        shutdown: &CancellationToken,
    ) -> bool {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
        };
        let mut handler_failures = 0u32;
        let mut attempt = 0u32;
        loop {
            attempt = attempt.saturating_add(1);
            let result: Result<(), ConsumeError> = async {
                let mut tx = self.db.begin().await?;
                deliver(&mut tx, consumer, event).await?;
                tx.commit().await?;
                Ok(())
            }
            .await;
            let err = match result {
                Ok(()) => {
                    consumer.committed();
                    return true;
                }
                Err(err) => err,
            };
            let outage = matches!(&err, ConsumeError::Database(db) if is_unavailable(db));
            if !outage {
                handler_failures += 1;
                if handler_failures >= settings.max_attempts {
                    tracing::error!(consumer = consumer.name(), event = %event.id, error = %err,
                        "event consumer gave up on an event; it goes to the dead-letter queue");
                    return false;
                }
            }
            metrics::counter!("bus_consumer_failures_total", "consumer" => consumer.name().to_owned())
                .increment(1);
            let delay = backoff.delay(attempt, 0.5 + random_unit() / 2.0);
            tracing::warn!(consumer = consumer.name(), event = %event.id, error = %err,
                retry_in_ms = delay.as_millis() as u64, "event consumer failed; retrying");
            if !pause(delay, shutdown).await {
                return false;
            }
        }
    }
}

/// Runs `listener` until `shutdown` on a queue of its own: exclusive, server-named, deleted
/// with the connection (each process its own subscription; no database needed).
pub async fn run_listener(
    listener: Arc<dyn Listener>,
    settings: AmqpSettings,
    shutdown: CancellationToken,
) {
    let sessions = AtomicU32::new(0);
    reconnecting("listener", listener.name(), &shutdown, |failures| {
        listener_session(listener.as_ref(), &settings, &shutdown, failures, &sessions)
    })
    .await;
}

async fn listener_session(
    listener: &dyn Listener,
    settings: &AmqpSettings,
    shutdown: &CancellationToken,
    failures: Arc<AtomicU32>,
    sessions: &AtomicU32,
) -> Result<(), SessionError> {
    let connection = connect(&settings.url).await?;
    let channel = connection.create_channel().await?;
    declare_exchanges(&channel).await?;
    let queue = channel
        .queue_declare(
            short(""),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    for topic in listener.topics() {
        channel
            .queue_bind(
                queue.name().clone(),
                short(EXCHANGE),
                short(topic),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
    }
    let mut deliveries = channel
        .basic_consume(
            queue.name().clone(),
            short(listener.name()),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    tracing::info!(
        listener = listener.name(),
        "event listener subscribed on RabbitMQ"
    );
    if sessions.fetch_add(1, AtomicOrdering::Relaxed) > 0 {
        // Events sent while the queue was gone were missed.
        listener.resubscribed().await;
    }
    loop {
        let Some((_, event)) =
            next_message(&connection, &mut deliveries, shutdown, &failures).await?
        else {
            return Ok(());
        };
        if let Some(event) = event {
            listener.on_events(std::slice::from_ref(&event)).await;
        }
    }
}
