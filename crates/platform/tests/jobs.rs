//! The job queue and worker on every database of the run: transactional enqueue, exactly one
//! completion per job across workers, retries with backoff, dead jobs and their retry, unique
//! keys, scheduling, a crashed worker's jobs rescued, a clean shutdown.
#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use logicore_platform::db::apply_migrations;
use logicore_platform::jobs::worker::{JobError, KindSettings, Worker, WorkerSettings};
use logicore_platform::jobs::{Backoff, JobState, Jobs, MIGRATIONS, NewJob};
use logicore_platform::testing::TestDb;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

async fn queue(test_db: &TestDb) -> Jobs {
    apply_migrations(&test_db.db, MIGRATIONS).await.unwrap();
    Jobs::new(test_db.db.clone())
}

fn settings(lease: Duration) -> WorkerSettings {
    WorkerSettings {
        concurrency: 8,
        lease,
        poll_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(5),
    }
}

fn quick_retries() -> KindSettings {
    KindSettings {
        backoff: Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(50),
        },
    }
}

/// Runs of each job id.
type Runs = Arc<Mutex<HashMap<Uuid, u32>>>;

fn counting_worker(jobs: &Jobs, lease: Duration, runs: &Runs, delay: Duration) -> Worker {
    let mut worker = Worker::new(jobs.clone(), settings(lease));
    let runs = Arc::clone(runs);
    worker.register("count", quick_retries(), move |job| {
        let runs = Arc::clone(&runs);
        async move {
            tokio::time::sleep(delay).await;
            *runs.lock().unwrap().entry(job.id).or_default() += 1;
            Ok(())
        }
    });
    worker
}

async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("timed out waiting until {what}");
}

async fn state_of(jobs: &Jobs, id: Uuid) -> (String, i32) {
    let row = jobs
        .list(None, 10_000)
        .await
        .unwrap()
        .into_iter()
        .find(|row| row.id == id)
        .unwrap();
    (row.state, row.attempts)
}

#[tokio::test]
async fn jobs_exist_only_when_their_transaction_commits_and_run_once_across_workers() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let jobs = queue(&test_db).await;
        let mut tx = jobs.db().begin().await.unwrap();
        jobs.enqueue(&mut tx, NewJob::new("count", json!({"n": -1})))
            .await
            .unwrap();
        drop(tx); // rolled back
        assert!(jobs.list(None, 10).await.unwrap().is_empty(), "{label}");

        let mut tx = jobs.db().begin().await.unwrap();
        for n in 0..300 {
            jobs.enqueue(&mut tx, NewJob::new("count", json!({ "n": n })))
                .await
                .unwrap();
        }
        tx.commit().await.unwrap();

        let runs: Runs = Arc::default();
        let stop = CancellationToken::new();
        let workers: Vec<_> = (0..2)
            .map(|_| {
                let worker = counting_worker(&jobs, Duration::from_secs(30), &runs, Duration::ZERO);
                tokio::spawn(worker.run(stop.clone()))
            })
            .collect();
        wait_until("300 jobs ran", || runs.lock().unwrap().len() == 300).await;
        stop.cancel();
        for worker in workers {
            worker.await.unwrap();
        }
        assert!(
            runs.lock().unwrap().values().all(|runs| *runs == 1),
            "{label}: a job ran twice"
        );
        let completed = jobs.list(Some(JobState::Completed), 1000).await.unwrap();
        assert_eq!(completed.len(), 300, "{label}");
        assert_eq!(
            jobs.purge(chrono::Utc::now() + chrono::Duration::seconds(1))
                .await
                .unwrap(),
            300
        );
    }
}

#[tokio::test]
async fn failures_are_retried_with_backoff_then_dead_and_retried_by_hand() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let jobs = queue(&test_db).await;
        let flaky = jobs
            .enqueue_now(NewJob::new("flaky", json!({})).max_attempts(5))
            .await
            .unwrap()
            .unwrap();
        let doomed = jobs
            .enqueue_now(NewJob::new("doomed", json!({})).max_attempts(3))
            .await
            .unwrap()
            .unwrap();
        let discarded = jobs
            .enqueue_now(NewJob::new("discard", json!({})).max_attempts(5))
            .await
            .unwrap()
            .unwrap();
        let healed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut worker = Worker::new(jobs.clone(), settings(Duration::from_secs(30)));
        worker.register("flaky", quick_retries(), |job| async move {
            if job.attempt < 3 {
                Err(JobError::Retry(format!("attempt {} fails", job.attempt)))
            } else {
                Ok(())
            }
        });
        let heal = Arc::clone(&healed);
        worker.register("doomed", quick_retries(), move |_| {
            let healed = heal.load(std::sync::atomic::Ordering::SeqCst);
            async move {
                if healed {
                    Ok(())
                } else {
                    Err(JobError::Retry("the receiver is down".into()))
                }
            }
        });
        worker.register("discard", quick_retries(), |_| async {
            Err(JobError::Discard("malformed payload".into()))
        });
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run(stop.clone()));

        let mut states = HashMap::new();
        for _ in 0..200 {
            for id in [flaky, doomed, discarded] {
                states.insert(id, state_of(&jobs, id).await);
            }
            if states[&flaky].0 == "completed" && states[&doomed].0 == "dead" {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        assert_eq!(states[&flaky], ("completed".to_owned(), 3), "{label}");
        assert_eq!(states[&doomed], ("dead".to_owned(), 3), "{label}");
        assert_eq!(
            states[&discarded],
            ("dead".to_owned(), 1),
            "{label}: never retried"
        );
        let dead = jobs.list(Some(JobState::Dead), 10).await.unwrap();
        assert!(
            dead.iter()
                .any(|row| row.last_error.as_deref() == Some("the receiver is down"))
        );

        // Fixed, retried by hand: it runs again and completes.
        healed.store(true, std::sync::atomic::Ordering::SeqCst);
        assert!(jobs.retry(doomed).await.unwrap());
        assert!(
            !jobs.retry(flaky).await.unwrap(),
            "{label}: completed jobs stay completed"
        );
        wait_until_state(&jobs, doomed, "completed").await;
        stop.cancel();
        running.await.unwrap();
    }
}

async fn wait_until_state(jobs: &Jobs, id: Uuid, state: &str) {
    for _ in 0..400 {
        if state_of(jobs, id).await.0 == state {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("job {id} never reached {state}");
}

#[tokio::test]
async fn unique_keys_and_schedules_are_honoured() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let jobs = queue(&test_db).await;
        let first = jobs
            .enqueue_now(NewJob::new("count", json!({})).unique("order-1-mail"))
            .await
            .unwrap();
        let again = jobs
            .enqueue_now(NewJob::new("count", json!({})).unique("order-1-mail"))
            .await
            .unwrap();
        assert!(first.is_some() && again.is_none(), "{label}");

        let later = chrono::Utc::now() + chrono::Duration::milliseconds(1500);
        let scheduled = jobs
            .enqueue_now(NewJob::new("count", json!({})).at(later))
            .await
            .unwrap()
            .unwrap();
        let runs: Runs = Arc::default();
        let stop = CancellationToken::new();
        let worker = counting_worker(&jobs, Duration::from_secs(30), &runs, Duration::ZERO);
        let running = tokio::spawn(worker.run(stop.clone()));
        wait_until("the unique job ran", || runs.lock().unwrap().len() == 1).await;
        assert!(
            !runs.lock().unwrap().contains_key(&scheduled),
            "{label}: not before run_at"
        );
        wait_until("the scheduled job ran", || {
            runs.lock().unwrap().contains_key(&scheduled)
        })
        .await;
        assert!(chrono::Utc::now() >= later, "{label}");
        stop.cancel();
        running.await.unwrap();
    }
}

/// A worker that dies (its task aborted: no release, no completion) loses nothing: after the
/// lease another worker runs its jobs.
#[tokio::test]
async fn a_dead_workers_jobs_run_again_after_their_lease() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let jobs = queue(&test_db).await;
        let mut tx = jobs.db().begin().await.unwrap();
        let mut ids = Vec::new();
        for n in 0..20 {
            let job = NewJob::new("count", json!({ "n": n }));
            ids.push(jobs.enqueue(&mut tx, job).await.unwrap().unwrap());
        }
        tx.commit().await.unwrap();

        let lease = Duration::from_secs(1);
        let stuck: Runs = Arc::default();
        let doomed = counting_worker(&jobs, lease, &stuck, Duration::from_secs(3600));
        let crashed = tokio::spawn(doomed.run(CancellationToken::new()));
        wait_until_running(&jobs, 8).await;
        crashed.abort();
        let _ = crashed.await;

        let runs: Runs = Arc::default();
        let stop = CancellationToken::new();
        let rescuer = counting_worker(&jobs, lease, &runs, Duration::ZERO);
        let running = tokio::spawn(rescuer.run(stop.clone()));
        wait_until("every job ran", || runs.lock().unwrap().len() == 20).await;
        stop.cancel();
        running.await.unwrap();
        assert!(stuck.lock().unwrap().is_empty());
        for id in ids {
            let (state, attempts) = state_of(&jobs, id).await;
            assert_eq!(state, "completed", "{label}");
            assert!(attempts <= 2, "{label}: {attempts}");
        }
    }
}

async fn wait_until_running(jobs: &Jobs, count: usize) {
    for _ in 0..400 {
        if jobs.list(Some(JobState::Running), 100).await.unwrap().len() >= count {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("jobs never ran");
}

/// Shutdown lets running jobs finish; what cannot finish within the grace goes back to the
/// queue without losing an attempt.
#[tokio::test]
async fn shutdown_finishes_or_gives_back_running_jobs() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let jobs = queue(&test_db).await;
        let quick = jobs
            .enqueue_now(NewJob::new("count", json!({})))
            .await
            .unwrap()
            .unwrap();
        let runs: Runs = Arc::default();
        let stop = CancellationToken::new();
        let worker = counting_worker(
            &jobs,
            Duration::from_secs(30),
            &runs,
            Duration::from_millis(300),
        );
        let running = tokio::spawn(worker.run(stop.clone()));
        wait_until_running(&jobs, 1).await;
        stop.cancel();
        running.await.unwrap();
        assert_eq!(
            state_of(&jobs, quick).await.0,
            "completed",
            "{label}: finished in the grace"
        );

        let slow = jobs
            .enqueue_now(NewJob::new("count", json!({})))
            .await
            .unwrap()
            .unwrap();
        let stop = CancellationToken::new();
        let mut worker_settings = settings(Duration::from_secs(30));
        worker_settings.shutdown_grace = Duration::from_millis(100);
        let mut worker = Worker::new(jobs.clone(), worker_settings);
        worker.register("count", quick_retries(), |_| async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        });
        let running = tokio::spawn(worker.run(stop.clone()));
        wait_until_running(&jobs, 1).await;
        stop.cancel();
        running.await.unwrap();
        assert_eq!(
            state_of(&jobs, slow).await,
            ("available".to_owned(), 0),
            "{label}: given back, the attempt not counted"
        );
    }
}

/// A worker claims ahead of its free slots; jobs it holds but never started go back to the
/// queue at shutdown without losing an attempt, and only `concurrency` ever run at once.
#[tokio::test]
async fn jobs_claimed_ahead_run_within_the_concurrency_and_go_back_unstarted() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let jobs = queue(&test_db).await;
        let mut ids = Vec::new();
        for n in 0..10 {
            let id = jobs
                .enqueue_now(NewJob::new("count", json!({ "n": n })))
                .await
                .unwrap()
                .unwrap();
            ids.push(id);
        }
        let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut worker_settings = settings(Duration::from_secs(30));
        worker_settings.concurrency = 2;
        worker_settings.shutdown_grace = Duration::from_millis(100);
        let mut worker = Worker::new(jobs.clone(), worker_settings);
        let counter = Arc::clone(&started);
        worker.register("count", quick_retries(), move |_| {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
        });
        let stop = CancellationToken::new();
        let running = tokio::spawn(worker.run(stop.clone()));
        // Two running and two claimed ahead.
        wait_until_running(&jobs, 4).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            started.load(std::sync::atomic::Ordering::SeqCst),
            2,
            "{label}: no more than the concurrency at once"
        );
        stop.cancel();
        running.await.unwrap();
        for id in ids {
            assert_eq!(
                state_of(&jobs, id).await,
                ("available".to_owned(), 0),
                "{label}: every job given back without a counted attempt"
            );
        }
    }
}

#[tokio::test]
async fn housekeeping_purges_completed_jobs_and_keeps_the_rest() {
    use logicore_platform::housekeeping::{self, HousekeepingSettings};
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let jobs = queue(&test_db).await;
        apply_migrations(&test_db.db, logicore_platform::bus::MIGRATIONS)
            .await
            .unwrap();
        let mut tx = jobs.db().begin().await.unwrap();
        for n in 0..5 {
            jobs.enqueue(&mut tx, NewJob::new("count", json!({ "n": n })))
                .await
                .unwrap();
        }
        let later = chrono::Utc::now() + chrono::Duration::hours(1);
        let scheduled = jobs
            .enqueue(&mut tx, NewJob::new("count", json!({"n": 5})).at(later))
            .await
            .unwrap()
            .unwrap();
        tx.commit().await.unwrap();
        let runs: Runs = Arc::default();
        let stop = CancellationToken::new();
        let worker = counting_worker(&jobs, Duration::from_secs(30), &runs, Duration::ZERO);
        let worker = tokio::spawn(worker.run(stop.clone()));
        wait_until("5 jobs ran", || runs.lock().unwrap().len() == 5).await;

        let settings = HousekeepingSettings {
            every: Duration::from_millis(50),
            keep: Duration::ZERO,
            events_read_by_cursors: true,
        };
        let bus = logicore_platform::bus::Bus::new(test_db.db.clone());
        let cleaner = tokio::spawn(housekeeping::run(jobs.clone(), bus, settings, stop.clone()));
        for _ in 0..200 {
            if jobs.list(None, 100).await.unwrap().len() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        stop.cancel();
        worker.await.unwrap();
        cleaner.await.unwrap();
        let left = jobs.list(None, 100).await.unwrap();
        assert_eq!(left.len(), 1, "{label}: completed jobs purged");
        assert_eq!(left[0].id, scheduled, "{label}: the waiting job is kept");
    }
}
