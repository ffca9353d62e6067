//! The same asynchronous suite on every bus backend and database of the run: the embedded
//! log always, RabbitMQ when `LOGICORE_TEST_AMQP_URL` is set (CI), each on SQLite and (with
//! `LOGICORE_TEST_POSTGRES_URL`) PostgreSQL. Consumers see only committed events, each wanted
//! event once; a failing handler is retried without loss or duplicate; a redelivered event has
//! no second effect. On RabbitMQ also: any AMQP client can bind its own queue and read the
//! CloudEvents, and a connection cut and restored (through a relay the test controls) while
//! events are written loses and doubles nothing.
//!
//! Every test uses its own event-type prefix and consumer names, so tests sharing a broker
//! do not see each other's events; their queues are deleted at the end.
#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use logicore_platform::bus::amqp::{AmqpSettings, EXCHANGE, queue_name};
use logicore_platform::bus::embedded::BusSettings;
use logicore_platform::bus::{Bus, ConsumeError, ConsumeFuture, Consumer, Event, NewEvent};
use logicore_platform::db::{Db, Tx, apply_migrations};
use logicore_platform::testing::{self, TcpRelay, TestDb};
use sea_query::Query;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone)]
enum Backend {
    Embedded,
    Amqp(String),
}

impl Backend {
    async fn all() -> Vec<Backend> {
        let mut all = vec![Backend::Embedded];
        if let Some(url) = testing::amqp_url().await {
            all.push(Backend::Amqp(url));
        } else {
            eprintln!("RabbitMQ not in this run: LOGICORE_TEST_AMQP_URL is not set");
        }
        all
    }

    fn label(&self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Amqp(_) => "rabbitmq",
        }
    }
}

/// Records each event it handles in `effects`, inside the bus transaction (no unique key:
/// a second effect would show); fails the first `fail_first` calls for `*.poison` events.
struct Recorder {
    name: String,
    topics: Vec<String>,
    topic_refs: Vec<&'static str>,
    fail_first: AtomicU32,
}

impl Recorder {
    fn new(name: String, topics: Vec<String>, fail_first: u32) -> Arc<Recorder> {
        // The trait hands out `&[&str]`; leak the few test strings once.
        let topic_refs = topics
            .iter()
            .map(|topic| &*Box::leak(topic.clone().into_boxed_str()))
            .collect();
        Arc::new(Recorder {
            name,
            topics,
            topic_refs,
            fail_first: AtomicU32::new(fail_first),
        })
    }
}

impl Consumer for Recorder {
    fn name(&self) -> &str {
        &self.name
    }

    fn topics(&self) -> &[&str] {
        debug_assert_eq!(self.topics.len(), self.topic_refs.len());
        &self.topic_refs
    }

    fn handle<'a>(&'a self, tx: &'a mut Tx, event: &'a Event) -> ConsumeFuture<'a> {
        Box::pin(async move {
            if event.event_type.ends_with(".poison")
                && self
                    .fail_first
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                        left.checked_sub(1)
                    })
                    .is_ok()
            {
                return Err(ConsumeError::Retry("not yet".into()));
            }
            let insert = Query::insert()
                .into_table("effects")
                .columns(["consumer", "event_id", "event_type"])
                .values_panic([
                    self.name.clone().into(),
                    event.id.to_string().into(),
                    event.event_type.clone().into(),
                ])
                .to_owned();
            tx.execute(&insert).await?;
            Ok(())
        })
    }
}

/// One database and one bus backend with a relay and consumers running.
struct Rig {
    db: Db,
    bus: Bus,
    backend: Backend,
    prefix: String,
    shutdown: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    consumers: Vec<String>,
    /// Queues the relay declares (RabbitMQ), as the platform declares its consumers'.
    declared: Vec<(String, Vec<String>)>,
    label: String,
    _db: TestDb,
}

impl Rig {
    async fn start(test_db: TestDb, backend: Backend) -> Rig {
        let db = test_db.db.clone();
        apply_migrations(&db, logicore_platform::bus::MIGRATIONS)
            .await
            .unwrap();
        let mut tx = db.begin().await.unwrap();
        tx.execute_script("CREATE TABLE effects (consumer TEXT, event_id TEXT, event_type TEXT)")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let label = format!("{}/{}", test_db.label(), backend.label());
        Rig {
            bus: Bus::new(db.clone()),
            db,
            backend,
            prefix: format!("t{}", Uuid::new_v4().simple()),
            shutdown: CancellationToken::new(),
            tasks: Vec::new(),
            consumers: Vec::new(),
            declared: Vec::new(),
            label,
            _db: test_db,
        }
    }

    async fn all() -> Vec<Rig> {
        let mut rigs = Vec::new();
        for backend in Backend::all().await {
            for test_db in TestDb::all().await {
                rigs.push(Rig::start(test_db, backend.clone()).await);
            }
        }
        rigs
    }

    fn amqp(&self, url: &str) -> AmqpSettings {
        AmqpSettings {
            max_attempts: 5,
            poll_interval: Duration::from_millis(50),
            queues: self.declared.clone(),
            ..AmqpSettings::new(url)
        }
    }

    /// A consumer's name and topics (under this rig's prefix), not started yet.
    fn plan(&mut self, patterns: &[&str]) -> (String, Vec<String>) {
        let name = format!("{}-{}", self.prefix, self.consumers.len());
        let topics: Vec<String> = patterns
            .iter()
            .map(|pattern| format!("{}.{pattern}", self.prefix))
            .collect();
        self.consumers.push(name.clone());
        (name, topics)
    }

    /// Starts a planned consumer.
    fn start_consumer(
        &mut self,
        name: String,
        topics: Vec<String>,
        fail_first: u32,
        url: Option<&str>,
    ) {
        let consumer: Arc<dyn Consumer> = Recorder::new(name, topics, fail_first);
        let task = match &self.backend {
            Backend::Embedded => tokio::spawn(self.bus.clone().run_consumer(
                consumer,
                Rig::embedded(),
                self.shutdown.clone(),
            )),
            Backend::Amqp(own) => {
                let settings = self.amqp(url.unwrap_or(own));
                tokio::spawn(self.bus.clone().run_amqp_consumer(
                    consumer,
                    settings,
                    self.shutdown.clone(),
                ))
            }
        };
        self.tasks.push(task);
    }

    fn embedded() -> BusSettings {
        BusSettings {
            poll_interval: Duration::from_millis(50),
            batch: 64,
            ..BusSettings::default()
        }
    }

    /// Starts the relay (to `url` instead of the backend's own, when given).
    fn relay(&mut self, url: Option<&str>) {
        let task = match &self.backend {
            Backend::Embedded => tokio::spawn(
                self.bus
                    .clone()
                    .run_relay(Rig::embedded(), self.shutdown.clone()),
            ),
            Backend::Amqp(own) => {
                let settings = self.amqp(url.unwrap_or(own));
                tokio::spawn(
                    self.bus
                        .clone()
                        .run_amqp_relay(settings, self.shutdown.clone()),
                )
            }
        };
        self.tasks.push(task);
    }

    /// A consumer of `patterns` (under this rig's prefix) failing its first `fail_first`
    /// poison events; returns its name.
    fn consumer(&mut self, patterns: &[&str], fail_first: u32, url: Option<&str>) -> String {
        let (name, topics) = self.plan(patterns);
        // As the platform does: the relay declares the queue, so nothing published before
        // the consumer connected is lost.
        self.declared.push((name.clone(), topics.clone()));
        self.start_consumer(name.clone(), topics, fail_first, url);
        name
    }

    /// Writes events of `types` (under the prefix) in one transaction; returns their ids.
    async fn publish(&self, types: &[&str], commit: bool) -> Vec<Uuid> {
        let mut tx = self.db.begin().await.unwrap();
        let mut ids = Vec::new();
        for event_type in types {
            let event = NewEvent::new(
                "test",
                &format!("{}.{event_type}", self.prefix),
                None,
                json!({ "n": ids.len() }),
            );
            ids.push(self.bus.publish(&mut tx, event).await.unwrap());
        }
        if commit {
            tx.commit().await.unwrap();
            self.bus.wake();
        }
        ids
    }

    /// Events in the outbox the relay has not published yet.
    async fn unpublished(&self) -> i64 {
        let select = Query::select()
            .expr(sea_query::Expr::col("seq").count())
            .from("outbox")
            .and_where(sea_query::Expr::col("position").is_null())
            .to_owned();
        let rows: Vec<(i64,)> = self.db.fetch_all(&select).await.unwrap();
        rows[0].0
    }

    /// Effects per event id of `consumer`.
    async fn effects(&self, consumer: &str) -> HashMap<String, u32> {
        let select = Query::select()
            .column("event_id")
            .from("effects")
            .and_where(sea_query::Expr::col("consumer").eq(consumer))
            .to_owned();
        let rows: Vec<(String,)> = self.db.fetch_all(&select).await.unwrap();
        let mut counts = HashMap::new();
        for (id,) in rows {
            *counts.entry(id).or_default() += 1;
        }
        counts
    }

    async fn wait_for_effects(&self, consumer: &str, expected: usize) -> HashMap<String, u32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let effects = self.effects(consumer).await;
            if effects.len() >= expected {
                return effects;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: {consumer} saw {} of {expected} events ({} still unpublished)",
                    self.label,
                    effects.len(),
                    self.unpublished().await
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        for task in self.tasks.drain(..) {
            task.await.unwrap();
        }
        if let Backend::Amqp(url) = &self.backend {
            delete_queues(url, &self.consumers).await;
        }
    }
}

use sea_query::ExprTrait;

async fn delete_queues(url: &str, consumers: &[String]) {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for consumer in consumers {
        for queue in [queue_name(consumer), format!("logicore.dead.{consumer}")] {
            channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await
                .unwrap();
        }
    }
    let _ = connection.close(200, "done".into()).await;
}

fn ids(events: &[Uuid]) -> Vec<String> {
    events.iter().map(Uuid::to_string).collect()
}

#[tokio::test]
async fn committed_events_reach_each_consumer_that_wants_them_once() {
    for mut rig in Rig::all().await {
        let label = rig.label.clone();
        let orders = rig.consumer(&["order.*"], 0, None);
        let everything = rig.consumer(&["#"], 0, None);
        rig.relay(None);

        let mut order_events = Vec::new();
        let mut all_events = Vec::new();
        for _ in 0..10 {
            let written = rig
                .publish(
                    &["order.created", "product.updated", "order.cancelled"],
                    true,
                )
                .await;
            order_events.extend([written[0], written[2]]);
            all_events.extend(written);
        }
        let rolled_back = rig.publish(&["order.created"], false).await;

        let seen = rig.wait_for_effects(&everything, all_events.len()).await;
        let seen_orders = rig.wait_for_effects(&orders, order_events.len()).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let seen = {
            let again = rig.effects(&everything).await;
            assert_eq!(again, seen, "{label}: nothing more arrived");
            again
        };
        assert_eq!(seen.len(), all_events.len(), "{label}");
        assert!(seen.values().all(|count| *count == 1), "{label}: {seen:?}");
        for id in ids(&all_events) {
            assert!(seen.contains_key(&id), "{label}: {id} missing");
        }
        assert_eq!(rig.effects(&orders).await, seen_orders);
        let mut wanted = ids(&order_events);
        let mut got: Vec<String> = seen_orders.keys().cloned().collect();
        wanted.sort();
        got.sort();
        assert_eq!(got, wanted, "{label}: order.* only");
        assert!(
            !seen.contains_key(&rolled_back[0].to_string()),
            "{label}: a rolled-back event was delivered"
        );
        rig.stop().await;
    }
}

#[tokio::test]
async fn a_failing_handler_is_retried_without_loss_or_duplicate() {
    for mut rig in Rig::all().await {
        let label = rig.label.clone();
        let consumer = rig.consumer(&["#"], 3, None);
        rig.relay(None);
        let written = rig
            .publish(&["thing.one", "thing.poison", "thing.two"], true)
            .await;
        let seen = rig.wait_for_effects(&consumer, 3).await;
        assert_eq!(seen.len(), 3, "{label}");
        assert!(seen.values().all(|count| *count == 1), "{label}: {seen:?}");
        for id in ids(&written) {
            assert!(seen.contains_key(&id), "{label}");
        }
        rig.stop().await;
    }
}

#[tokio::test]
async fn a_redelivered_event_has_no_second_effect() {
    for mut rig in Rig::all().await {
        let label = rig.label.clone();
        let consumer = rig.consumer(&["#"], 0, None);
        rig.relay(None);
        let written = rig.publish(&["thing.happened"], true).await;
        rig.wait_for_effects(&consumer, 1).await;
        // The relay died before recording the publication: the event goes out again.
        let mut tx = rig.db.begin().await.unwrap();
        tx.execute_script("UPDATE outbox SET position = NULL, published_at = NULL")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        rig.bus.wake();
        let marker = rig.publish(&["thing.after"], true).await;
        let seen = rig.wait_for_effects(&consumer, 2).await;
        assert_eq!(seen[&written[0].to_string()], 1, "{label}: {seen:?}");
        assert_eq!(seen[&marker[0].to_string()], 1, "{label}");
        rig.stop().await;
    }
}

#[tokio::test]
async fn any_amqp_client_can_bind_its_own_queue_and_read_cloudevents() {
    let Some(url) = testing::amqp_url().await else {
        eprintln!("skipped: LOGICORE_TEST_AMQP_URL is not set");
        return;
    };
    let mut rig = Rig::start(TestDb::sqlite().await, Backend::Amqp(url.clone())).await;
    // An outside client: its own exclusive queue, bound with its own pattern.
    let connection = lapin::Connection::connect(&url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    channel
        .exchange_declare(
            EXCHANGE.into(),
            lapin::ExchangeKind::Topic,
            lapin::options::ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    let queue = channel
        .queue_declare(
            "".into(),
            lapin::options::QueueDeclareOptions {
                exclusive: true,
                ..Default::default()
            },
            Default::default(),
        )
        .await
        .unwrap();
    channel
        .queue_bind(
            queue.name().clone(),
            EXCHANGE.into(),
            format!("{}.order.*", rig.prefix).as_str().into(),
            Default::default(),
            Default::default(),
        )
        .await
        .unwrap();
    rig.relay(None);
    let written = rig.publish(&["order.created"], true).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let message = loop {
        if let Some(message) = channel
            .basic_get(queue.name().clone(), Default::default())
            .await
            .unwrap()
        {
            break message;
        }
        assert!(
            Instant::now() < deadline,
            "nothing reached the outside queue"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let properties = &message.delivery.properties;
    assert_eq!(
        properties.content_type().as_ref().unwrap().as_str(),
        "application/cloudevents+json"
    );
    assert_eq!(*properties.delivery_mode(), Some(2), "persistent");
    assert_eq!(
        message.delivery.routing_key.as_str(),
        format!("{}.order.created", rig.prefix)
    );
    let body: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
    assert_eq!(body["specversion"], "1.0");
    assert_eq!(body["id"], written[0].to_string());
    assert_eq!(body["type"], format!("{}.order.created", rig.prefix));
    let _ = connection.close(200, "done".into()).await;
    rig.stop().await;
}

#[tokio::test]
async fn a_connection_cut_and_restored_loses_and_doubles_nothing() {
    let Some(url) = testing::amqp_url().await else {
        eprintln!("skipped: LOGICORE_TEST_AMQP_URL is not set");
        return;
    };
    for test_db in TestDb::all().await {
        let mut rig = Rig::start(test_db, Backend::Amqp(url.clone())).await;
        let label = rig.label.clone();
        let broker: std::net::SocketAddr = {
            let rest = url.split('@').nth(1).unwrap_or(&url);
            let host = rest.split('/').next().unwrap();
            tokio::net::lookup_host(host).await.unwrap().next().unwrap()
        };
        let relay = TcpRelay::start(broker).await;
        let through = url.replace(
            &url.split('@')
                .nth(1)
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string(),
            &relay.addr.to_string(),
        );
        let consumer = rig.consumer(&["#"], 0, Some(&through));
        rig.relay(Some(&through));

        let mut written = Vec::new();
        for round in 0..60 {
            written.extend(rig.publish(&["order.created", "order.shipped"], true).await);
            if round == 15 || round == 40 {
                relay.cut();
            }
            if round == 24 {
                // The cut holds the relay back: events wait in the outbox.
                assert!(
                    rig.unpublished().await > 0,
                    "{label}: the relay did not notice the cut"
                );
            }
            if round == 25 || round == 50 {
                relay.restore();
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        relay.restore();
        let seen = rig.wait_for_effects(&consumer, written.len()).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let seen_after = rig.effects(&consumer).await;
        assert_eq!(seen_after, seen, "{label}");
        assert_eq!(seen.len(), written.len(), "{label}: every event arrived");
        let doubled: Vec<_> = seen.iter().filter(|(_, count)| **count > 1).collect();
        assert!(doubled.is_empty(), "{label}: doubled {doubled:?}");
        rig.stop().await;
    }
}

#[tokio::test]
async fn events_published_before_a_consumer_first_connected_reach_it() {
    for mut rig in Rig::all().await {
        let label = rig.label.clone();
        let (name, topics) = rig.plan(&["#"]);
        rig.declared.push((name.clone(), topics.clone()));
        rig.relay(None);
        let written = rig.publish(&["thing.early", "thing.earlier"], true).await;
        // Wait until the relay published them, with no consumer connected yet.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if rig.unpublished().await == 0 {
                break;
            }
            assert!(Instant::now() < deadline, "{label}: never published");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        rig.start_consumer(name.clone(), topics, 0, None);
        let seen = rig.wait_for_effects(&name, 2).await;
        for id in ids(&written) {
            assert_eq!(seen.get(&id), Some(&1), "{label}: {id}");
        }
        rig.stop().await;
    }
}

/// Counts what a listener hears.
#[derive(Default)]
struct Ears {
    heard: AtomicU32,
    resubscribed: AtomicU32,
    topics: Vec<&'static str>,
}

impl logicore_platform::bus::Listener for Ears {
    fn name(&self) -> &str {
        "test-ears"
    }

    fn topics(&self) -> &[&str] {
        &self.topics
    }

    fn on_events<'a>(&'a self, events: &'a [Event]) -> logicore_platform::bus::ListenFuture<'a> {
        let heard = u32::try_from(events.len()).unwrap();
        Box::pin(async move {
            self.heard.fetch_add(heard, Ordering::SeqCst);
        })
    }

    fn resubscribed(&self) -> logicore_platform::bus::ListenFuture<'_> {
        Box::pin(async move {
            self.resubscribed.fetch_add(1, Ordering::SeqCst);
        })
    }
}

#[tokio::test]
async fn a_listener_hears_new_events_and_learns_when_it_may_have_missed_some() {
    let Some(url) = testing::amqp_url().await else {
        eprintln!("skipped: LOGICORE_TEST_AMQP_URL is not set");
        return;
    };
    let mut rig = Rig::start(TestDb::sqlite().await, Backend::Amqp(url.clone())).await;
    let host = url
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    let broker = tokio::net::lookup_host(host.as_str())
        .await
        .unwrap()
        .next()
        .unwrap();
    let relay = TcpRelay::start(broker).await;
    let through = url.replace(&host, &relay.addr.to_string());
    let pattern: &'static str = Box::leak(format!("{}.#", rig.prefix).into_boxed_str());
    let ears = Arc::new(Ears {
        topics: vec![pattern],
        ..Ears::default()
    });
    let listening = tokio::spawn(logicore_platform::bus::amqp::run_listener(
        Arc::clone(&ears) as Arc<dyn logicore_platform::bus::Listener>,
        rig.amqp(&through),
        rig.shutdown.clone(),
    ));
    rig.relay(None);
    let heard = async |count: u32| {
        let deadline = Instant::now() + Duration::from_secs(20);
        while ears.heard.load(Ordering::SeqCst) < count {
            assert!(
                Instant::now() < deadline,
                "heard {ears_heard} of {count}",
                ears_heard = ears.heard.load(Ordering::SeqCst)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    // A listener hears what is published after it subscribed (its queue is its own and
    // exists only from then on): give it that moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    rig.publish(&["thing.one"], true).await;
    heard(1).await;
    assert_eq!(
        ears.resubscribed.load(Ordering::SeqCst),
        0,
        "first subscription"
    );

    relay.cut();
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    while ears.resubscribed.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "never told of the gap");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    rig.publish(&["thing.two"], true).await;
    heard(2).await;
    rig.stop().await;
    listening.await.unwrap();
}
