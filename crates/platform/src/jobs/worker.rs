//! The worker: claims jobs in batches, runs their handlers with bounded concurrency, completes
//! them in batches, keeps their leases alive, rescues the jobs of dead workers, and on shutdown
//! lets running jobs finish (within the grace) and gives back the rest.

use std::collections::HashMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{Backoff, Job, Jobs, random_unit};

/// Why a job attempt failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JobError {
    /// Try again later (with backoff), unless this was the last attempt.
    #[error("{0}")]
    Retry(String),
    /// Try again no earlier than after this delay (e.g. a `Retry-After`).
    #[error("{message}")]
    RetryAfter {
        /// Why.
        message: String,
        /// The least delay.
        delay: Duration,
    },
    /// Never retry: the job is dead now.
    #[error("{0}")]
    Discard(String),
}

type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), JobError>> + Send>>;
type Handler = Arc<dyn Fn(Job) -> HandlerFuture + Send + Sync>;

/// How the jobs of one kind are run.
#[derive(Debug, Clone, Copy, Default)]
pub struct KindSettings {
    /// Retry delays.
    pub backoff: Backoff,
}

/// Worker settings (`[jobs]`).
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Jobs run at once.
    pub concurrency: u32,
    /// How long a claim holds without a heartbeat.
    pub lease: Duration,
    /// How often the queue is looked at when nothing woke the worker.
    pub poll_interval: Duration,
    /// How long running jobs may take to finish after shutdown starts.
    pub shutdown_grace: Duration,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            concurrency: 16,
            lease: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Runs the handlers of the registered kinds over a [`Jobs`] queue.
pub struct Worker {
    jobs: Jobs,
    id: String,
    settings: WorkerSettings,
    handlers: HashMap<String, (Handler, KindSettings)>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Worker")
            .field("id", &self.id)
            .field("kinds", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What became of one attempt.
struct Outcome {
    job: Job,
    result: Result<(), JobError>,
    took: Duration,
}

impl Worker {
    /// A worker over `jobs` with a unique id (host, process and a random part).
    pub fn new(jobs: Jobs, settings: WorkerSettings) -> Worker {
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "host".to_owned());
        let id = format!(
            "{host}/{}/{}",
            std::process::id(),
            &Uuid::new_v4().simple().to_string()[..8]
        );
        Worker {
            jobs,
            id,
            settings,
            handlers: HashMap::new(),
        }
    }

    /// This worker's id (it marks the jobs it holds).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Registers the handler of `kind`.
    pub fn register<F, Fut>(&mut self, kind: &str, settings: KindSettings, handler: F)
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), JobError>> + Send + 'static,
    {
        let handler: Handler = Arc::new(move |job| Box::pin(handler(job)));
        self.handlers.insert(kind.to_owned(), (handler, settings));
    }

    /// Runs until `shutdown` is cancelled; then running jobs get `shutdown_grace` to finish
    /// and whatever still runs is given back to the queue.
    pub async fn run(self, shutdown: CancellationToken) {
        let Worker {
            jobs,
            id,
            settings,
            handlers,
        } = self;
        if handlers.is_empty() {
            tracing::info!("no job kinds registered: the worker has nothing to run");
            return;
        }
        let worker = Arc::new(id);
        let handlers = Arc::new(handlers);
        let kinds: Vec<String> = handlers.keys().cloned().collect();
        let permits = Arc::new(Semaphore::new(settings.concurrency.max(1) as usize));
        let (outcomes, finished) = mpsc::unbounded_channel::<Outcome>();
        let background = CancellationToken::new();
        // Heartbeats stop with this future, even when it is dropped half-way (a task aborted
        // like a crashed process): leases then expire as they would after a crash.
        let _upkeep_stops_with_run = background.clone().drop_guard();
        let completer = tokio::spawn(complete_batches(
            jobs.clone(),
            Arc::clone(&worker),
            Arc::clone(&handlers),
            finished,
        ));
        let upkeep = tokio::spawn(upkeep(
            jobs.clone(),
            Arc::clone(&worker),
            settings.lease,
            background.clone(),
        ));
        let mut running = tokio::task::JoinSet::new();
        tracing::info!(worker = %worker, kinds = ?kinds, concurrency = settings.concurrency, "worker started");
        // Claim in batches: wait until a quarter of the slots are free (every slot when the
        // worker is idle), so a busy worker does not claim one job per transaction.
        let batch_floor = Ord::max(settings.concurrency / 4, 1);
        loop {
            let free = tokio::select! {
                () = shutdown.cancelled() => break,
                held = Arc::clone(&permits).acquire_many_owned(batch_floor) => {
                    let Ok(permits_held) = held else { break };
                    drop(permits_held);
                    permits.available_permits()
                }
            };
            // Claim ahead: as many again as there are slots. A claim waits its turn for the
            // database (behind every order on SQLite's single writer), and jobs that are
            // already here start the moment a slot frees instead of after that wait.
            let prefetch = settings.concurrency as usize;
            let limit = u32::try_from(free + prefetch).unwrap_or(u32::MAX).min(500);
            // Listen before claiming, so a wake-up during the claim is not lost.
            let woken = jobs.woken();
            tokio::pin!(woken);
            woken.as_mut().enable();
            let claimed = match jobs.claim(&worker, &kinds, limit, settings.lease).await {
                Ok(claimed) => claimed,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot claim jobs; retrying");
                    tokio::select! {
                        () = shutdown.cancelled() => break,
                        () = tokio::time::sleep(settings.poll_interval) => continue,
                    }
                }
            };
            if claimed.is_empty() {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = woken => {}
                    () = tokio::time::sleep(settings.poll_interval) => {}
                }
                continue;
            }
            // Jobs start in chunks as slots free: one task per chunk runs its jobs
            // concurrently (a task per job would wake another runtime thread for every job,
            // which costs more than a no-op job). Jobs not started when shutdown comes stay
            // claimed by this worker and are given back below.
            let mut waiting = std::collections::VecDeque::from(claimed);
            let mut stopping = false;
            while !waiting.is_empty() {
                let free_now = permits.available_permits().min(waiting.len());
                let held = match u32::try_from(free_now) {
                    Ok(count @ 1..) => Arc::clone(&permits).try_acquire_many_owned(count).ok(),
                    _ => None,
                };
                let mut held = match held {
                    Some(held) => held,
                    // Wait for a quarter of the slots (or the jobs left), not slot by slot.
                    None => {
                        let want = u32::try_from(waiting.len())
                            .unwrap_or(u32::MAX)
                            .min(batch_floor);
                        tokio::select! {
                            () = shutdown.cancelled() => {
                                stopping = true;
                                break;
                            }
                            held = Arc::clone(&permits).acquire_many_owned(want) => match held {
                                Ok(held) => held,
                                Err(_) => break,
                            },
                        }
                    }
                };
                let chunk = waiting
                    .drain(..held.num_permits())
                    .filter_map(|job| {
                        let (handler, _) = handlers.get(&job.kind)?;
                        Some((job, Arc::clone(handler), held.split(1)?))
                    })
                    .collect();
                run_chunk(&mut running, chunk, &outcomes);
            }
            if stopping {
                break;
            }
            // Reap finished tasks so the set does not grow.
            while running.try_join_next().is_some() {}
        }
        // Shutdown: no new claims; running jobs get the grace period.
        let deadline = tokio::time::sleep(settings.shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                next = running.join_next() => if next.is_none() { break },
                () = &mut deadline => {
                    tracing::warn!(unfinished = running.len(), "jobs still running at the end of the grace period are given back");
                    running.abort_all();
                    while running.join_next().await.is_some() {}
                    break;
                }
            }
        }
        drop(outcomes);
        let _ = completer.await;
        background.cancel();
        let _ = upkeep.await;
        match jobs.release(&worker).await {
            Ok(0) => {}
            Ok(released) => tracing::info!(released, "unfinished jobs given back to the queue"),
            Err(err) => {
                tracing::warn!(error = %err, "cannot give back unfinished jobs; their leases will expire")
            }
        }
        tracing::info!(worker = %worker, "worker stopped");
    }
}

/// Runs a chunk of started jobs (each holding its slot) in one task; their outcomes go to
/// the completer.
fn run_chunk(
    running: &mut tokio::task::JoinSet<()>,
    chunk: Vec<(Job, Handler, tokio::sync::OwnedSemaphorePermit)>,
    outcomes: &mpsc::UnboundedSender<Outcome>,
) {
    if chunk.is_empty() {
        return;
    }
    let outcomes = outcomes.clone();
    running.spawn(async move {
        let mut jobs: FuturesUnordered<_> = chunk
            .into_iter()
            .map(|(job, handler, permit)| async move {
                let started = Instant::now();
                // The outcome keeps what failing needs, not the payload.
                let outcome_job = Job {
                    payload: serde_json::Value::Null,
                    kind: job.kind.clone(),
                    ..job
                };
                let result = AssertUnwindSafe(handler(job))
                    .catch_unwind()
                    .await
                    .unwrap_or_else(|_| Err(JobError::Retry("the handler panicked".into())));
                drop(permit);
                Outcome {
                    job: outcome_job,
                    result,
                    took: started.elapsed(),
                }
            })
            .collect();
        while let Some(outcome) = jobs.next().await {
            let _ = outcomes.send(outcome);
        }
    });
}

/// Writes outcomes: successes in batches (one statement each), failures one by one.
async fn complete_batches(
    jobs: Jobs,
    worker: Arc<String>,
    handlers: Arc<HashMap<String, (Handler, KindSettings)>>,
    mut finished: mpsc::UnboundedReceiver<Outcome>,
) {
    let mut batch = Vec::with_capacity(256);
    while finished.recv_many(&mut batch, 256).await > 0 {
        let mut done = Vec::with_capacity(batch.len());
        // Metric handles once per kind and batch, not per job.
        let mut per_kind: HashMap<String, (metrics::Histogram, u64)> = HashMap::new();
        for outcome in batch.drain(..) {
            let kind = outcome.job.kind.clone();
            let (durations, completed) = per_kind.entry(kind.clone()).or_insert_with(|| {
                (
                    metrics::histogram!("jobs_duration_seconds", "kind" => kind.clone()),
                    0,
                )
            });
            durations.record(outcome.took.as_secs_f64());
            match outcome.result {
                Ok(()) => {
                    *completed += 1;
                    done.push(outcome.job.id);
                }
                Err(error) => {
                    let backoff = handlers
                        .get(&kind)
                        .map_or_else(Backoff::default, |(_, settings)| settings.backoff);
                    let (retry_in, job) = match &error {
                        JobError::Retry(_) => (
                            backoff.delay(outcome.job.attempt, random_unit()),
                            outcome.job,
                        ),
                        JobError::RetryAfter { delay, .. } => (
                            backoff
                                .delay(outcome.job.attempt, random_unit())
                                .max(*delay),
                            outcome.job,
                        ),
                        JobError::Discard(_) => (
                            Duration::ZERO,
                            Job {
                                max_attempts: outcome.job.attempt,
                                ..outcome.job
                            },
                        ),
                    };
                    match jobs.fail(&worker, &job, &error.to_string(), retry_in).await {
                        Ok(state) => {
                            metrics::counter!("jobs_failed_total", "kind" => kind.clone(), "state" => state.as_str())
                                .increment(1);
                            tracing::warn!(job = %job.id, kind, attempt = job.attempt, error = %error,
                                next = state.as_str(), retry_in_ms = retry_in.as_millis() as u64, "job attempt failed");
                        }
                        Err(err) => {
                            tracing::error!(job = %job.id, error = %err, "cannot record a failed attempt; the lease will expire")
                        }
                    }
                }
            }
        }
        for (kind, (_, completed)) in per_kind {
            if completed > 0 {
                metrics::counter!("jobs_completed_total", "kind" => kind).increment(completed);
            }
        }
        if let Err(err) = jobs.complete(&worker, &done).await {
            tracing::error!(error = %err, jobs = done.len(), "cannot mark jobs completed; they will run again when their leases expire");
        }
        jobs.after_finishing(done.len() as u64);
    }
}

/// Heartbeats (every third of the lease) and rescue of expired leases.
async fn upkeep(jobs: Jobs, worker: Arc<String>, lease: Duration, stop: CancellationToken) {
    let mut every = tokio::time::interval((lease / 3).max(Duration::from_millis(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        if let Err(err) = jobs.heartbeat(&worker, lease).await {
            tracing::warn!(error = %err, "job heartbeat failed");
        }
        match jobs.rescue().await {
            Ok(0) => {}
            Ok(rescued) => {
                tracing::warn!(rescued, "jobs of a lost worker returned to the queue");
                jobs.wake();
            }
            Err(err) => tracing::warn!(error = %err, "cannot rescue expired jobs"),
        }
    }
}
