//! Wake-ups between processes on PostgreSQL: jobs and events committed through another
//! connection pool (another process) and announced after the commit are picked up by this
//! one's worker and relay through the notifications, long before their next poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use logicore_platform::bus::embedded::BusSettings;
use logicore_platform::bus::{Bus, ConsumeFuture, Consumer, Event, NewEvent};
use logicore_platform::config::SqliteSynchronous;
use logicore_platform::db::{Db, DbOptions, Tx, apply_migrations};
use logicore_platform::jobs::worker::{KindSettings, Worker, WorkerSettings};
use logicore_platform::jobs::{Backoff, Jobs, NewJob};
use logicore_platform::testing::{self, TestDb};
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// Far longer than the test waits: only a notification can make things happen in time.
const NEVER: Duration = Duration::from_secs(3600);

struct Counter {
    handled: AtomicU32,
}

impl Consumer for Counter {
    fn name(&self) -> &str {
        "wakeup-counter"
    }

    fn topics(&self) -> &[&str] {
        &["#"]
    }

    fn handle<'a>(&'a self, _tx: &'a mut Tx, _event: &'a Event) -> ConsumeFuture<'a> {
        Box::pin(async move {
            self.handled.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

async fn wait_for(what: &str, count: &AtomicU32, expected: u32) {
    for _ in 0..400 {
        if count.load(Ordering::SeqCst) >= expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{what} did not happen within 10 s (polls are an hour apart)");
}

#[tokio::test]
async fn jobs_and_events_of_another_process_are_picked_up_at_once() {
    let Some(base) = testing::postgres_url() else {
        eprintln!("skipped: LOGICORE_TEST_POSTGRES_URL is not set (SQLite processes poll)");
        return;
    };
    let here = TestDb::postgres(&base).await;
    let migrations = [
        logicore_platform::jobs::MIGRATIONS,
        logicore_platform::bus::MIGRATIONS,
    ]
    .concat();
    apply_migrations(&here.db, &migrations).await.unwrap();
    let options = DbOptions {
        max_connections: 2,
        sqlite_synchronous: SqliteSynchronous::Normal,
        slow_query: Duration::from_secs(5),
    };
    let there = Db::connect(&here.url, &options).await.unwrap();

    let shutdown = CancellationToken::new();
    let jobs = Jobs::new(here.db.clone());
    let bus = Bus::new(here.db.clone());
    let runs = Arc::new(AtomicU32::new(0));
    let mut worker = Worker::new(
        jobs.clone(),
        WorkerSettings {
            concurrency: 4,
            lease: Duration::from_secs(30),
            poll_interval: NEVER,
            shutdown_grace: Duration::from_secs(5),
        },
    );
    let counted = Arc::clone(&runs);
    let retries = KindSettings {
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
    };
    worker.register("ping", retries, move |_| {
        let counted = Arc::clone(&counted);
        async move {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let settings = BusSettings {
        poll_interval: NEVER,
        batch: 64,
        ..BusSettings::default()
    };
    let counter = Arc::new(Counter {
        handled: AtomicU32::new(0),
    });
    let tasks = [
        tokio::spawn(worker.run(shutdown.clone())),
        tokio::spawn(bus.clone().run_relay(settings, shutdown.clone())),
        tokio::spawn(bus.clone().run_consumer(
            Arc::clone(&counter) as Arc<dyn Consumer>,
            settings,
            shutdown.clone(),
        )),
        tokio::spawn(logicore_platform::wakeups::run(
            here.db.clone(),
            jobs.clone(),
            bus.clone(),
            shutdown.clone(),
        )),
    ];
    // Let the worker and the relay fall asleep on their hour-long polls.
    tokio::time::sleep(Duration::from_millis(500)).await;

    // "Another process": its own pool, its own queue and bus handles, no local wake-up.
    let their_jobs = Jobs::new(there.clone());
    let their_bus = Bus::new(there.clone());
    for round in 1..=3 {
        let mut tx = there.begin().await.unwrap();
        their_jobs
            .enqueue(&mut tx, NewJob::new("ping", json!({ "round": round })))
            .await
            .unwrap();
        their_bus
            .publish(
                &mut tx,
                NewEvent::new("test", "thing.happened", None, json!({ "round": round })),
            )
            .await
            .unwrap();
        tx.commit().await.unwrap();
        // What a writer does after its commit: wake the workers and relays everywhere.
        their_jobs.wake();
        their_bus.wake();
        wait_for("the job of another process", &runs, round).await;
        wait_for("the event of another process", &counter.handled, round).await;
    }

    shutdown.cancel();
    for task in tasks {
        task.await.unwrap();
    }
    there.close().await;
}
