//! The embedded event bus on every database of the run: events exist only when their
//! transaction commits, every consumer gets every event it wants exactly once in effect
//! (cursor, effects and processed ids in one transaction), cursors survive a restart, a
//! failing handler holds back only itself, and concurrent writers with concurrent relays
//! leave no gap a consumer could skip.
#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use logicore_platform::bus::embedded::BusSettings;
use logicore_platform::bus::{self, Bus, ConsumeError, ConsumeFuture, Consumer, Event, NewEvent};
use logicore_platform::db::{Db, Tx, apply_migrations};
use logicore_platform::testing::TestDb;
use sea_query::{Expr, ExprTrait, Query};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn bus(test_db: &TestDb) -> Bus {
    apply_migrations(&test_db.db, bus::MIGRATIONS)
        .await
        .unwrap();
    let mut tx = test_db.db.begin().await.unwrap();
    tx.execute_script(
        "CREATE TABLE seen (consumer TEXT NOT NULL, event_id TEXT NOT NULL, \
         event_type TEXT NOT NULL, n INTEGER NOT NULL)",
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();
    Bus::new(test_db.db.clone())
}

/// Records every event it handles in `seen`, inside the bus transaction; fails the first
/// `fail_first` calls for events of type `poison`.
struct Recorder {
    name: &'static str,
    topics: Vec<&'static str>,
    fail_first: AtomicU32,
    calls: AtomicU32,
}

impl Recorder {
    fn new(name: &'static str, topics: &[&'static str]) -> Arc<Recorder> {
        Arc::new(Recorder {
            name,
            topics: topics.to_vec(),
            fail_first: AtomicU32::new(0),
            calls: AtomicU32::new(0),
        })
    }
}

impl Consumer for Recorder {
    fn name(&self) -> &str {
        self.name
    }

    fn topics(&self) -> &[&str] {
        &self.topics
    }

    fn handle<'a>(&'a self, tx: &'a mut Tx, event: &'a Event) -> ConsumeFuture<'a> {
        Box::pin(async move {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            if event.event_type == "poison"
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
                .into_table("seen")
                .columns(["consumer", "event_id", "event_type", "n"])
                .values_panic([
                    self.name.into(),
                    event.id.to_string().into(),
                    event.event_type.clone().into(),
                    i64::from(n).into(),
                ])
                .to_owned();
            tx.execute(&insert).await?;
            Ok(())
        })
    }
}

#[derive(sqlx::FromRow)]
struct Seen {
    event_id: String,
    event_type: String,
}

async fn seen(db: &Db, consumer: &str) -> Vec<Seen> {
    let select = Query::select()
        .columns(["event_id", "event_type"])
        .from("seen")
        .and_where(Expr::col("consumer").eq(consumer))
        .order_by("n", sea_query::Order::Asc)
        .to_owned();
    db.fetch_all(&select).await.unwrap()
}

async fn publish(bus: &Bus, event_type: &str, n: i64) -> Uuid {
    let mut tx = bus.db().begin().await.unwrap();
    let id = bus
        .publish(
            &mut tx,
            NewEvent::new("test", event_type, Some(n.to_string()), json!({"n": n})),
        )
        .await
        .unwrap();
    tx.commit().await.unwrap();
    bus.wake();
    id
}

async fn drain(bus: &Bus, consumer: &dyn Consumer) {
    bus.relay_once(10_000).await.unwrap();
    while bus.consume_once(consumer, 7).await.unwrap() > 0 {}
}

#[tokio::test]
async fn events_are_published_only_with_their_transaction_and_reach_each_consumer_once() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let bus = bus(&test_db).await;

        // Rolled back: no event.
        let mut tx = bus.db().begin().await.unwrap();
        bus.publish(
            &mut tx,
            NewEvent::new("test", "order.created", None, json!({})),
        )
        .await
        .unwrap();
        drop(tx);

        let mut ids = Vec::new();
        for n in 0..20 {
            let event_type = if n % 2 == 0 {
                "order.created"
            } else {
                "product.updated"
            };
            ids.push((publish(&bus, event_type, n).await, event_type));
        }
        let orders = Recorder::new("orders-only", &["order.*"]);
        let everything = Recorder::new("everything", &["#"]);
        drain(&bus, orders.as_ref()).await;
        drain(&bus, everything.as_ref()).await;
        // Read again: nothing new, nothing twice.
        drain(&bus, orders.as_ref()).await;
        drain(&bus, everything.as_ref()).await;

        let all: Vec<String> = seen(bus.db(), "everything")
            .await
            .into_iter()
            .map(|seen| seen.event_id)
            .collect();
        let expected: Vec<String> = ids.iter().map(|(id, _)| id.to_string()).collect();
        assert_eq!(all, expected, "{label}: every event once, in order");
        let order_events = seen(bus.db(), "orders-only").await;
        assert_eq!(order_events.len(), 10, "{label}");
        assert!(
            order_events
                .iter()
                .all(|seen| seen.event_type == "order.created"),
            "{label}"
        );
    }
}

#[tokio::test]
async fn a_redelivered_event_has_no_second_effect_and_cursors_survive_a_restart() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let bus = bus(&test_db).await;
        let consumer = Recorder::new("durable", &["#"]);
        for n in 0..5 {
            publish(&bus, "order.created", n).await;
        }
        drain(&bus, consumer.as_ref()).await;
        assert!(bus.cursor("durable").await.unwrap() > 0, "{label}");

        // A redelivery (as RabbitMQ may do) is skipped by its recorded id.
        let event = Event {
            id: Uuid::parse_str(&seen(bus.db(), "durable").await[0].event_id).unwrap(),
            event_type: "order.created".into(),
            source: "/logicore/test".into(),
            subject: None,
            time: chrono::Utc::now(),
            data: json!({}),
            traceparent: None,
        };
        let mut tx = bus.db().begin().await.unwrap();
        assert!(
            !bus::deliver(&mut tx, consumer.as_ref(), &event)
                .await
                .unwrap()
        );
        tx.commit().await.unwrap();
        // In a batch, only the event not processed before is handled.
        let unseen = Event {
            id: Uuid::now_v7(),
            ..event.clone()
        };
        let calls = consumer.calls.load(Ordering::SeqCst);
        let mut tx = bus.db().begin().await.unwrap();
        let handled = bus::deliver_batch(&mut tx, consumer.as_ref(), &[event.clone(), unseen])
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(handled, 1, "{label}");
        assert_eq!(consumer.calls.load(Ordering::SeqCst), calls + 1, "{label}");
        assert_eq!(seen(bus.db(), "durable").await.len(), 6, "{label}");

        // A new process (a new Bus over the same database) continues after the cursor.
        let restarted = Bus::new(test_db.db.clone());
        let fresh = Recorder::new("durable", &["#"]);
        for n in 5..8 {
            publish(&restarted, "order.created", n).await;
        }
        drain(&restarted, fresh.as_ref()).await;
        assert_eq!(
            fresh.calls.load(Ordering::SeqCst),
            3,
            "{label}: only the new events"
        );
        assert_eq!(seen(bus.db(), "durable").await.len(), 9, "{label}");
    }
}

#[tokio::test]
async fn a_failing_handler_is_retried_and_nothing_is_lost_or_doubled() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let bus = bus(&test_db).await;
        let consumer = Recorder::new("flaky", &["#"]);
        consumer.fail_first.store(3, Ordering::SeqCst);
        let shutdown = CancellationToken::new();
        let settings = BusSettings {
            poll_interval: Duration::from_millis(20),
            batch: 16,
            ..BusSettings::default()
        };
        let relay = tokio::spawn(bus.clone().run_relay(settings, shutdown.clone()));
        let runner = tokio::spawn(bus.clone().run_consumer(
            Arc::clone(&consumer) as Arc<dyn Consumer>,
            settings,
            shutdown.clone(),
        ));
        let mut expected = Vec::new();
        for n in 0..30 {
            let event_type = if n == 10 { "poison" } else { "order.created" };
            expected.push(publish(&bus, event_type, n).await.to_string());
        }
        for _ in 0..400 {
            if seen(bus.db(), "flaky").await.len() >= 30 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        shutdown.cancel();
        relay.await.unwrap();
        runner.await.unwrap();
        let got: Vec<String> = seen(bus.db(), "flaky")
            .await
            .into_iter()
            .map(|seen| seen.event_id)
            .collect();
        assert_eq!(got, expected, "{label}: all, once, in order");
        assert_eq!(consumer.fail_first.load(Ordering::SeqCst), 0, "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_and_relays_leave_no_gap_behind_a_running_consumer() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let bus = bus(&test_db).await;
        let consumer = Recorder::new("racer", &["#"]);
        let shutdown = CancellationToken::new();
        let settings = BusSettings {
            poll_interval: Duration::from_millis(5),
            batch: 50,
            ..BusSettings::default()
        };
        // Two relays, as two worker processes would run.
        let relays = [
            tokio::spawn(bus.clone().run_relay(settings, shutdown.clone())),
            tokio::spawn(Bus::new(test_db.db.clone()).run_relay(settings, shutdown.clone())),
        ];
        let runner = tokio::spawn(bus.clone().run_consumer(
            Arc::clone(&consumer) as Arc<dyn Consumer>,
            settings,
            shutdown.clone(),
        ));
        let writers: Vec<_> = (0..4)
            .map(|writer| {
                let bus = bus.clone();
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    for n in 0..100 {
                        // Several events per transaction, and transactions that stay open a
                        // moment so commits overtake each other on PostgreSQL.
                        let mut tx = bus.db().begin().await.unwrap();
                        for k in 0..3 {
                            let id = bus
                                .publish(
                                    &mut tx,
                                    NewEvent::new(
                                        "test",
                                        "order.created",
                                        None,
                                        json!({"w": writer, "n": n, "k": k}),
                                    ),
                                )
                                .await
                                .unwrap();
                            ids.push(id.to_string());
                        }
                        if writer == 0 || n % 7 == writer {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        tx.commit().await.unwrap();
                        bus.wake();
                    }
                    ids
                })
            })
            .collect();
        let mut expected = Vec::new();
        for writer in writers {
            expected.extend(writer.await.unwrap());
        }
        for _ in 0..600 {
            if seen(bus.db(), "racer").await.len() >= expected.len() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        shutdown.cancel();
        for relay in relays {
            relay.await.unwrap();
        }
        runner.await.unwrap();
        // Drain what is left: a skipped event would not come now (it is behind the cursor),
        // a doubled one would show in the count.
        drain(&bus, consumer.as_ref()).await;
        let mut got: Vec<String> = seen(bus.db(), "racer")
            .await
            .into_iter()
            .map(|seen| seen.event_id)
            .collect();
        got.sort();
        expected.sort();
        assert_eq!(got.len(), expected.len(), "{label}: every event once");
        assert_eq!(got, expected, "{label}");
    }
}

#[tokio::test]
async fn published_events_carry_the_cloudevents_attributes() {
    for test_db in TestDb::all().await {
        let bus = bus(&test_db).await;
        let id = publish(&bus, "order.created", 7).await;
        bus.relay_once(100).await.unwrap();
        struct Capture(std::sync::Mutex<Vec<Event>>);
        impl Consumer for Capture {
            fn name(&self) -> &str {
                "capture"
            }
            fn topics(&self) -> &[&str] {
                &["order.created"]
            }
            fn handle<'a>(&'a self, _tx: &'a mut Tx, event: &'a Event) -> ConsumeFuture<'a> {
                self.0.lock().unwrap().push(event.clone());
                Box::pin(async { Ok(()) })
            }
        }
        let capture = Capture(std::sync::Mutex::new(Vec::new()));
        bus.consume_once(&capture, 10).await.unwrap();
        let events = capture.0.into_inner().unwrap();
        assert_eq!(events.len(), 1);
        let cloud = events[0].to_cloudevent();
        assert_eq!(cloud["id"], id.to_string());
        assert_eq!(cloud["specversion"], "1.0");
        assert_eq!(cloud["source"], "/logicore/test");
        assert_eq!(cloud["type"], "order.created");
        assert_eq!(cloud["subject"], "7");
        assert_eq!(cloud["data"], json!({"n": 7}));
        assert!(cloud["time"].as_str().unwrap().ends_with('Z'));
    }
}

#[tokio::test]
async fn purge_keeps_what_a_consumer_has_not_read() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let bus = bus(&test_db).await;
        let consumer = Recorder::new("reader", &["#"]);
        for n in 0..4 {
            publish(&bus, "order.created", n).await;
        }
        drain(&bus, consumer.as_ref()).await;
        publish(&bus, "order.created", 4).await;
        bus.relay_once(100).await.unwrap();
        let future = chrono::Utc::now() + chrono::Duration::hours(1);
        // 4 processed ids + 4 read events; the unread fifth event stays.
        assert_eq!(bus.purge(future).await.unwrap(), 8, "{label}");
        let late = Recorder::new("reader", &["#"]);
        drain(&bus, late.as_ref()).await;
        assert_eq!(late.calls.load(Ordering::SeqCst), 1, "{label}");
        let count = Query::select()
            .expr(Expr::col("event_id").count())
            .from("seen")
            .to_owned();
        let rows: Vec<(i64,)> = bus.db().fetch_all(&count).await.unwrap();
        assert_eq!(rows[0].0, 5, "{label}");
    }
}
