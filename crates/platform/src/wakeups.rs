//! Cross-process wake-ups: on PostgreSQL, jobs and events written by another process (a
//! split `logicore service orders`, say) wake this process's worker and event relay at once:
//! the writer's `Jobs::wake`/`Bus::wake` send a coalesced `NOTIFY` after its commit
//! ([`crate::db::Db::announce`]) and this task listens ([`crate::db::Notifications`]).
//! Polling stays as the fallback; on SQLite it is the only way.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::db::{Db, Topic};
use crate::jobs::Jobs;

/// Pause before listening again after the connection could not be re-established.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Wakes `jobs`' workers and `bus`' relay whenever another process commits jobs or events,
/// until `shutdown`. Returns at once on SQLite.
pub async fn run(db: Db, jobs: Jobs, bus: Bus, shutdown: CancellationToken) {
    let wake_all = || {
        jobs.wake_local();
        bus.wake_local();
    };
    loop {
        let listening = tokio::select! {
            () = shutdown.cancelled() => return,
            listening = db.listen(&[Topic::Jobs, Topic::Events]) => listening,
        };
        let mut notifications = match listening {
            Ok(Some(notifications)) => notifications,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for wake-ups; polling meanwhile");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(RETRY_AFTER) => continue,
                }
            }
        };
        // What was written before the listening started is picked up now.
        wake_all();
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return,
                received = notifications.recv() => received,
            };
            match received {
                Ok(Some(Topic::Jobs)) => jobs.wake_local(),
                Ok(Some(Topic::Events)) => bus.wake_local(),
                // Reconnecting: whatever came meanwhile was missed.
                Ok(None) => wake_all(),
                Err(err) => {
                    // Listen afresh (a new connection, then everything is woken once).
                    tracing::warn!(error = %err, "lost the wake-up channel; polling meanwhile");
                    tokio::select! {
                        () = shutdown.cancelled() => return,
                        () = tokio::time::sleep(RETRY_AFTER) => break,
                    }
                }
            }
        }
    }
}
