//! Wake-ups, in this process and between processes. Every [`crate::jobs::Jobs`] and
//! [`crate::bus::Bus`] over one database handle shares them, whoever built it.
//!
//! Between processes sharing a PostgreSQL database: after a commit that adds jobs
//! or events, [`Db::announce`] has a background task send `NOTIFY` on a channel of the
//! schema — outside the writer's transaction and coalesced (at most one in flight per topic
//! and process), so busy writers do not queue on PostgreSQL's notification lock at commit.
//! Processes listen with [`Db::listen`] and wake their workers and relay at once instead of
//! at their next poll. SQLite has no such channel: processes sharing a file poll.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::{Notify, OnceCell};

use super::{Db, Pools};

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// Jobs were enqueued.
    Jobs,
    /// Events were written to the outbox.
    Events,
}

impl Topic {
    const ALL: [Topic; 2] = [Topic::Jobs, Topic::Events];

    fn index(self) -> usize {
        match self {
            Topic::Jobs => 0,
            Topic::Events => 1,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Topic::Jobs => "lc_jobs_",
            Topic::Events => "lc_events_",
        }
    }
}

/// The channel of `topic` for the schema of `pool`'s connections, so deployments sharing a
/// database (in different schemas) do not wake each other.
async fn channel_suffix(pool: &PgPool) -> Result<String, sqlx::Error> {
    sqlx::query_scalar("SELECT left(md5(current_schema()), 16)")
        .fetch_one(pool)
        .await
}

/// The in-process wake-ups of one database handle (shared by its clones).
#[derive(Debug, Default)]
pub(crate) struct LocalWakes {
    /// Jobs were enqueued: every waiting worker looks.
    jobs: Notify,
    /// Events were written: the relay publishes (a permit is kept if it is busy).
    events: Notify,
    /// The relay published events: every consumer and listener reads.
    published: Notify,
}

/// Sends the announcements of one process.
#[derive(Debug)]
pub(crate) struct Announcer {
    pool: PgPool,
    pending: [AtomicBool; 2],
    wake: Notify,
    /// The sending task, started on the first announcement and again if its runtime ended.
    task: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    suffix: OnceCell<String>,
}

impl Announcer {
    pub(crate) fn new(pool: PgPool) -> Arc<Announcer> {
        Arc::new(Announcer {
            pool,
            pending: [AtomicBool::new(false), AtomicBool::new(false)],
            wake: Notify::new(),
            task: std::sync::Mutex::new(None),
            suffix: OnceCell::new(),
        })
    }

    fn announce(self: &Arc<Self>, topic: Topic) {
        self.pending[topic.index()].store(true, Ordering::Release);
        {
            let mut task = self
                .task
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let running = task.as_ref().is_some_and(|task| !task.is_finished());
            // Outside a runtime (never in practice) the announcement is simply not sent.
            if !running && let Ok(runtime) = tokio::runtime::Handle::try_current() {
                *task = Some(runtime.spawn(Arc::clone(self).run()));
            }
        }
        self.wake.notify_one();
    }

    async fn run(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            if self.pool.is_closed() {
                return;
            }
            for topic in Topic::ALL {
                if !self.pending[topic.index()].swap(false, Ordering::AcqRel) {
                    continue;
                }
                if let Err(err) = self.send(topic).await {
                    tracing::debug!(error = %err, "cannot announce new work to other processes");
                }
            }
        }
    }

    async fn send(&self, topic: Topic) -> Result<(), sqlx::Error> {
        let suffix = self
            .suffix
            .get_or_try_init(|| channel_suffix(&self.pool))
            .await?;
        let channel = format!("{}{suffix}", topic.prefix());
        super::retry_lost(&self.pool, || {
            sqlx::query("SELECT pg_notify($1, '')")
                .bind(channel.as_str())
                .execute(&self.pool)
        })
        .await
        .map(drop)
    }
}

/// A listening connection.
#[derive(Debug)]
pub struct Notifications {
    listener: PgListener,
    channels: Vec<(String, Topic)>,
}

impl Db {
    /// Tells the workers or relay of this process, and on PostgreSQL the listeners of every
    /// process, that `topic` has new work. Call it after the commit.
    pub fn announce(&self, topic: Topic) {
        self.wake_local(topic);
        if let Some(announcer) = &self.announcer {
            announcer.announce(topic);
        }
    }

    /// Tells this process only (a notification from another process arrived).
    pub fn wake_local(&self, topic: Topic) {
        match topic {
            Topic::Jobs => self.wakes.jobs.notify_waiters(),
            Topic::Events => self.wakes.events.notify_one(),
        }
    }

    /// Resolves at the next wake-up of `topic` (for jobs: one after this was created and
    /// enabled; for events: also one that came while nobody waited).
    pub(crate) fn woken(&self, topic: Topic) -> tokio::sync::futures::Notified<'_> {
        match topic {
            Topic::Jobs => self.wakes.jobs.notified(),
            Topic::Events => self.wakes.events.notified(),
        }
    }

    /// Tells this process's consumers and listeners that the relay published events.
    pub(crate) fn events_published(&self) {
        self.wakes.published.notify_waiters();
    }

    /// Resolves at the next [`Db::events_published`] after this was created and enabled.
    pub(crate) fn published(&self) -> tokio::sync::futures::Notified<'_> {
        self.wakes.published.notified()
    }

    /// Listens to `topics` of this database's schema; `None` on SQLite.
    pub async fn listen(&self, topics: &[Topic]) -> Result<Option<Notifications>, sqlx::Error> {
        let Pools::Postgres(pool) = &self.pools else {
            return Ok(None);
        };
        let suffix = channel_suffix(pool).await?;
        let channels: Vec<(String, Topic)> = topics
            .iter()
            .map(|topic| (format!("{}{suffix}", topic.prefix()), *topic))
            .collect();
        let mut listener = PgListener::connect_with(pool).await?;
        listener
            .listen_all(channels.iter().map(|(channel, _)| channel.as_str()))
            .await?;
        Ok(Some(Notifications { listener, channels }))
    }
}

impl Notifications {
    /// Waits for the next notification: `Some(topic)`, or `None` when the connection was
    /// lost and is being re-established (anything may have been missed meanwhile: wake
    /// everything). An error means reconnecting failed; calling again retries.
    pub async fn recv(&mut self) -> Result<Option<Topic>, sqlx::Error> {
        loop {
            let Some(notification) = self.listener.try_recv().await? else {
                return Ok(None);
            };
            if let Some((_, topic)) = self
                .channels
                .iter()
                .find(|(channel, _)| channel == notification.channel())
            {
                return Ok(Some(*topic));
            }
        }
    }
}
