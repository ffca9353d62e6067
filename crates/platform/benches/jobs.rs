//! Job queue benchmark: end-to-end throughput (enqueue → a no-op handler → complete) and
//! pickup latency (commit of the enqueue → the handler starts), on SQLite or PostgreSQL.
//!
//! ```sh
//! cargo bench -p logicore-platform --bench jobs -- sqlite
//! LOGICORE_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!     cargo bench -p logicore-platform --bench jobs -- postgres
//! ```
//! Options after the backend: `--jobs N` (default 200000), `--concurrency C` (default 256),
//! `--samples S` pickup samples (default 2000).
#![expect(clippy::unwrap_used, reason = "a benchmark fails loudly")]
#![expect(clippy::print_stdout, reason = "a benchmark prints its report")]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use logicore_platform::config::ConnectionUrl;
use logicore_platform::db::{Db, DbOptions, apply_migrations};
use logicore_platform::jobs::worker::{KindSettings, Worker, WorkerSettings};
use logicore_platform::jobs::{Jobs, MIGRATIONS, NewJob};
use serde_json::json;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

struct Options {
    backend: String,
    jobs: u64,
    concurrency: u32,
    samples: usize,
}

fn options() -> Options {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    let value = |name: &str| {
        args.iter()
            .position(|arg| arg == name)
            .and_then(|index| args.get(index + 1))
            .cloned()
    };
    Options {
        backend: args.first().cloned().unwrap_or_else(|| "sqlite".into()),
        jobs: value("--jobs").map_or(200_000, |text| text.parse().unwrap()),
        concurrency: value("--concurrency").map_or(256, |text| text.parse().unwrap()),
        samples: value("--samples").map_or(2000, |text| text.parse().unwrap()),
    }
}

async fn open(backend: &str) -> (Db, Option<tempfile::TempDir>) {
    let db_options = DbOptions {
        max_connections: 16,
        sqlite_synchronous: Default::default(),
        slow_query: Duration::from_secs(10),
    };
    let (url, dir) = match backend {
        "postgres" => {
            let base = logicore_platform::testing::postgres_url()
                .expect("set LOGICORE_TEST_POSTGRES_URL for the postgres run");
            (
                ConnectionUrl::new(logicore_platform::testing::fresh_schema_url(&base).await),
                None,
            )
        }
        _ => {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("bench.db").display());
            (ConnectionUrl::new(url), Some(dir))
        }
    };
    let db = Db::connect(&url, &db_options).await.unwrap();
    apply_migrations(&db, MIGRATIONS).await.unwrap();
    (db, dir)
}

fn worker(
    jobs: &Jobs,
    concurrency: u32,
    on_run: impl Fn(&serde_json::Value) + Send + Sync + 'static,
) -> Worker {
    let mut worker = Worker::new(
        jobs.clone(),
        WorkerSettings {
            concurrency,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(10),
        },
    );
    let on_run = Arc::new(on_run);
    worker.register("noop", KindSettings::default(), move |job| {
        let on_run = Arc::clone(&on_run);
        async move {
            on_run(&job.payload);
            Ok(())
        }
    });
    worker
}

/// Enqueues `total` jobs in transactions of 100 while a worker runs them; returns the time
/// from the first enqueue to the last completion.
async fn throughput(db: &Db, total: u64, concurrency: u32) -> Duration {
    let jobs = Jobs::new(db.clone());
    let completed = Arc::new(AtomicU64::new(0));
    let done = Arc::new(Notify::new());
    let (counter, signal) = (Arc::clone(&completed), Arc::clone(&done));
    let worker = worker(&jobs, concurrency, move |_| {
        if counter.fetch_add(1, Ordering::Relaxed) + 1 == total {
            signal.notify_one();
        }
    });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    let started = Instant::now();
    let producer = {
        let jobs = jobs.clone();
        tokio::spawn(async move {
            let mut enqueued = 0;
            while enqueued < total {
                let batch = 100.min(total - enqueued);
                let mut tx = jobs.db().begin().await.unwrap();
                let new = (0..batch).map(|_| NewJob::new("noop", json!({}))).collect();
                jobs.enqueue_many(&mut tx, new).await.unwrap();
                tx.commit().await.unwrap();
                enqueued += batch;
                jobs.wake();
            }
        })
    };
    producer.await.unwrap();
    done.notified().await;
    let handled = started.elapsed();
    // The handlers ran; wait for the completions to be written.
    loop {
        let counts = jobs.counts().await.unwrap();
        let finished = counts
            .iter()
            .find(|(state, _)| state == "completed")
            .map_or(0, |(_, count)| *count);
        if u64::try_from(finished).unwrap_or(0) >= total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let elapsed = started.elapsed();
    println!(
        "  handlers done after {:.2} s, completions written after {:.2} s",
        handled.as_secs_f64(),
        elapsed.as_secs_f64()
    );
    shutdown.cancel();
    running.await.unwrap();
    elapsed
}

/// Enqueues one job at a time into an idle worker; returns the delays from the enqueue's
/// commit to the handler's start, sorted.
async fn pickup(db: &Db, samples: usize) -> Vec<Duration> {
    let jobs = Jobs::new(db.clone());
    let base = Instant::now();
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<(u64, Duration)>();
    let worker = worker(&jobs, 16, move |payload| {
        let sent = payload["sent_ns"].as_u64().unwrap();
        let now = u64::try_from(base.elapsed().as_nanos()).unwrap();
        let _ = sender.send((sent, Duration::from_nanos(now.saturating_sub(sent))));
    });
    let shutdown = CancellationToken::new();
    let running = tokio::spawn(worker.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut delays = Vec::with_capacity(samples);
    for _ in 0..samples {
        let mut tx = jobs.db().begin().await.unwrap();
        // The clock is read just before the commit: the delay includes the commit.
        let sent = u64::try_from(base.elapsed().as_nanos()).unwrap();
        jobs.enqueue(&mut tx, NewJob::new("noop", json!({ "sent_ns": sent })))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        jobs.wake();
        let (_, delay) = receiver.recv().await.unwrap();
        delays.push(delay);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    shutdown.cancel();
    running.await.unwrap();
    delays.sort();
    delays
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn main() {
    let options = options();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (db, _dir) = open(&options.backend).await;
        println!(
            "jobs benchmark on {} — {} no-op jobs, concurrency {}",
            options.backend, options.jobs, options.concurrency
        );
        let elapsed = throughput(&db, options.jobs, options.concurrency).await;
        println!(
            "throughput: {:.0} jobs/s end to end (enqueue 100/txn → claim → no-op → complete)",
            options.jobs as f64 / elapsed.as_secs_f64()
        );
        let delays = pickup(&db, options.samples).await;
        println!(
            "pickup ({} samples, idle worker, same process): p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            delays.len(),
            percentile(&delays, 0.5).as_secs_f64() * 1e3,
            percentile(&delays, 0.9).as_secs_f64() * 1e3,
            percentile(&delays, 0.99).as_secs_f64() * 1e3,
            delays.last().copied().unwrap_or_default().as_secs_f64() * 1e3,
        );
    });
}
