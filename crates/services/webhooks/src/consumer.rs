//! The fan-out consumer: each event becomes one delivery, with its `webhooks.deliver` job,
//! per subscribed endpoint — in the consumer's transaction, keyed by endpoint and event, so
//! an event is fanned out exactly once even when the bus redelivers it.

use logicore_platform::bus::{ConsumeFuture, Consumer, Event, topic_matches};
use logicore_platform::db::Tx;
use logicore_platform::jobs::{Backoff, NewJob};
use serde_json::json;
use uuid::Uuid;

use crate::WebhooksService;
use crate::service::{DELIVER_JOB, now};
use crate::store::{NewDelivery, WebhookStore};

/// The consumer's name (its cursor).
pub const CONSUMER_NAME: &str = "webhooks.fan-out";

/// Fans events out to the endpoints that asked for them.
#[derive(Debug, Clone)]
pub struct FanOut {
    service: WebhooksService,
}

impl FanOut {
    /// The consumer of `service`.
    pub fn new(service: WebhooksService) -> FanOut {
        FanOut { service }
    }

    /// Fans a batch of events out with one endpoint query, one insert and one enqueue.
    async fn fan_out(&self, tx: &mut Tx, events: &[Event]) -> Result<(), sqlx::Error> {
        // Events about a user's resources (orders) also go to that user's endpoints.
        fn user_of(event: &Event) -> Option<&str> {
            event.data.get("user_id").and_then(|id| id.as_str())
        }
        let mut users: Vec<&str> = events.iter().filter_map(user_of).collect();
        users.sort_unstable();
        users.dedup();
        let endpoints = WebhookStore::subscribers_in(tx, &users).await?;
        if endpoints.is_empty() {
            return Ok(());
        }
        let patterns: Vec<Vec<String>> = endpoints
            .iter()
            .map(|endpoint| endpoint.event_types())
            .collect();
        let mut deliveries = Vec::new();
        for event in events {
            let user = user_of(event);
            let mut body = None;
            for (endpoint, patterns) in endpoints.iter().zip(&patterns) {
                let audience = endpoint.receives_all || Some(endpoint.owner_id.as_str()) == user;
                let wanted = patterns
                    .iter()
                    .any(|pattern| topic_matches(pattern, &event.event_type));
                if !(audience && wanted) {
                    continue;
                }
                let body = body.get_or_insert_with(|| {
                    json!({
                        "type": event.event_type,
                        "timestamp": event.time.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                        "data": event.data,
                    })
                    .to_string()
                });
                deliveries.push(NewDelivery {
                    id: Uuid::now_v7(),
                    endpoint_id: endpoint.id,
                    event_id: event.id,
                    event_type: event.event_type.clone(),
                    body: body.clone(),
                });
            }
        }
        if deliveries.is_empty() {
            return Ok(());
        }
        // A redelivered event inserts nothing and enqueues nothing.
        let inserted = WebhookStore::insert_deliveries_in(tx, &deliveries, now()).await?;
        if inserted.is_empty() {
            return Ok(());
        }
        let attempts = self.service.scheduled_attempts();
        let jobs = inserted
            .iter()
            .map(|id| {
                NewJob::new(DELIVER_JOB, json!({ "delivery_id": id }))
                    .unique(format!("webhook-delivery:{id}"))
                    .max_attempts(attempts)
            })
            .collect();
        self.service.jobs().enqueue_many(tx, jobs).await?;
        Ok(())
    }
}

/// The retry timing of deliveries is decided by the handler (the schedule), not by the
/// queue's backoff.
pub const NO_BACKOFF: Backoff = Backoff {
    base: std::time::Duration::ZERO,
    cap: std::time::Duration::ZERO,
};

impl Consumer for FanOut {
    fn name(&self) -> &str {
        CONSUMER_NAME
    }

    fn topics(&self) -> &[&str] {
        &["#"]
    }

    fn handle<'a>(&'a self, tx: &'a mut Tx, event: &'a Event) -> ConsumeFuture<'a> {
        Box::pin(async move { Ok(self.fan_out(tx, std::slice::from_ref(event)).await?) })
    }

    fn handle_batch<'a>(&'a self, tx: &'a mut Tx, events: &'a [Event]) -> ConsumeFuture<'a> {
        Box::pin(async move { Ok(self.fan_out(tx, events).await?) })
    }

    fn committed(&self) {
        self.service.jobs().wake();
    }

    /// Deliveries are unique per endpoint and event: a redelivered event adds nothing.
    fn idempotent(&self) -> bool {
        true
    }
}
