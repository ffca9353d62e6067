//! Wake-ups between processes sharing a PostgreSQL database: triggers on `jobs` and
//! `outbox` notify a channel per schema at commit (migrations 2026112615/16); a process
//! listens and wakes its workers and relay at once instead of at their next poll. SQLite has
//! no such channel: processes sharing a file poll.

use sqlx::postgres::PgListener;

use super::{Db, Pools};

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    /// Jobs were inserted.
    Jobs,
    /// Events were written to the outbox.
    Events,
}

impl Topic {
    fn prefix(self) -> &'static str {
        match self {
            Topic::Jobs => "lc_jobs_",
            Topic::Events => "lc_events_",
        }
    }
}

/// A listening connection.
#[derive(Debug)]
pub struct Notifications {
    listener: PgListener,
    channels: Vec<(String, Topic)>,
}

impl Db {
    /// Listens to `topics` of this database's schema; `None` on SQLite.
    pub async fn listen(&self, topics: &[Topic]) -> Result<Option<Notifications>, sqlx::Error> {
        let Pools::Postgres(pool) = &self.pools else {
            return Ok(None);
        };
        // The same suffix as the triggers compute, on a connection with the same search_path.
        let suffix: String = sqlx::query_scalar("SELECT left(md5(current_schema()), 16)")
            .fetch_one(pool)
            .await?;
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
