//! Periodic clean-up by the worker role: completed jobs, processed-event records and events
//! every consumer has read are deleted once older than the retention, so the queue and the
//! outbox stay small on a platform that runs for months. Dead jobs are kept (they wait for
//! an operator). Several processes may run it at once: the deletes do not conflict.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::bus::Bus;
use crate::jobs::Jobs;

/// When and what to clean.
#[derive(Debug, Clone, Copy)]
pub struct HousekeepingSettings {
    /// Pause between two rounds (the first comes one pause after the start).
    pub every: Duration,
    /// How long finished jobs and read events are kept.
    pub keep: Duration,
    /// True on the embedded bus: an event goes once every consumer's cursor passed it.
    /// False with RabbitMQ: an event goes once published (older than `keep`).
    pub events_read_by_cursors: bool,
}

impl Default for HousekeepingSettings {
    fn default() -> Self {
        HousekeepingSettings {
            every: Duration::from_secs(10 * 60),
            keep: Duration::from_secs(7 * 24 * 3600),
            events_read_by_cursors: true,
        }
    }
}

/// Cleans `jobs` and `bus` every `settings.every` until `shutdown`.
pub async fn run(
    jobs: Jobs,
    bus: Bus,
    settings: HousekeepingSettings,
    shutdown: CancellationToken,
) {
    let keep = chrono::Duration::from_std(settings.keep).unwrap_or(chrono::Duration::MAX);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(settings.every) => {}
        }
        let before = chrono::Utc::now() - keep;
        match jobs.purge(before).await {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged completed jobs"),
            Err(err) => tracing::warn!(error = %err, "purging completed jobs failed"),
        }
        let purged = if settings.events_read_by_cursors {
            bus.purge(before).await
        } else {
            bus.purge_published(before).await
        };
        match purged {
            Ok(0) => {}
            Ok(purged) => tracing::info!(purged, "purged read events and processed-event records"),
            Err(err) => tracing::warn!(error = %err, "purging read events failed"),
        }
    }
}
