//! Mail to customers about their orders: the order-confirmation e-mail.
//!
//! The users service owns the customers' addresses, so it reacts to `order.created`: its
//! consumer enqueues one `email.order_confirmation` job per order (unique key per order, in
//! the bus transaction), and the job sends the message with the deterministic Message-ID
//! `<order-<id>@logicore>` of SPEC §5, at most 3 attempts as the seed had it.

use logicore_platform::bus::{ConsumeError, ConsumeFuture, Consumer, Event};
use logicore_platform::db::{Db, Tx};
use logicore_platform::email::{Email, EmailError, Mailer, Sent};
use logicore_platform::jobs::worker::{JobError, KindSettings, Worker};
use logicore_platform::jobs::{Job, Jobs, NewJob};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::store::UsersStore;

/// The job kind that sends an order confirmation.
pub const ORDER_CONFIRMATION_JOB: &str = "email.order_confirmation";
/// Attempts of an e-mail job (the seed's Bull setting).
pub const EMAIL_ATTEMPTS: u32 = 3;

/// The `Message-ID` of the confirmation of order `id`.
pub fn order_message_id(order_id: &str) -> String {
    format!("<order-{order_id}@logicore>")
}

/// Consumes `order.created`: one confirmation job per order.
#[derive(Debug)]
pub struct OrderConfirmations {
    users: UsersStore,
    jobs: Jobs,
}

impl OrderConfirmations {
    /// Over the users in `db`, enqueueing on `jobs`.
    pub fn new(db: Db, jobs: Jobs) -> OrderConfirmations {
        OrderConfirmations {
            users: UsersStore::new(db),
            jobs,
        }
    }

    /// One confirmation job per order of `events` whose customer has an account here, with
    /// one lookup and one insert for the whole batch.
    async fn enqueue(&self, tx: &mut Tx, events: &[Event]) -> Result<(), ConsumeError> {
        let orders: Vec<(&Value, &str, Uuid)> = events
            .iter()
            .filter_map(|event| {
                let order = &event.data;
                let order_id = order.get("id").and_then(Value::as_str);
                let user_id = order
                    .get("user_id")
                    .and_then(Value::as_str)
                    .and_then(|id| Uuid::parse_str(id).ok());
                if order_id.is_none() || user_id.is_none() {
                    tracing::warn!(event = %event.id, "order.created without an order id or a user id: no e-mail");
                }
                Some((order, order_id?, user_id?))
            })
            .collect();
        let ids: Vec<Uuid> = orders.iter().map(|(_, _, user)| *user).collect();
        let users = self
            .users
            .get_users(&ids)
            .await
            .map_err(|err| ConsumeError::Retry(err.to_string()))?;
        let mut jobs = Vec::with_capacity(orders.len());
        for (order, order_id, user_id) in orders {
            let Some(user) = users.iter().find(|user| user.id == user_id) else {
                tracing::warn!(order = order_id, user = %user_id, "the customer of an order has no account here: no e-mail");
                continue;
            };
            jobs.push(
                NewJob::new(
                    ORDER_CONFIRMATION_JOB,
                    json!({ "to": user.email, "name": user.name, "order": order }),
                )
                .unique(format!("{ORDER_CONFIRMATION_JOB}:{order_id}"))
                .max_attempts(EMAIL_ATTEMPTS),
            );
        }
        self.jobs.enqueue_many(tx, jobs).await?;
        Ok(())
    }
}

impl Consumer for OrderConfirmations {
    fn name(&self) -> &str {
        "users.order-confirmations"
    }

    fn topics(&self) -> &[&str] {
        &["order.created"]
    }

    fn handle<'a>(&'a self, tx: &'a mut Tx, event: &'a Event) -> ConsumeFuture<'a> {
        Box::pin(self.enqueue(tx, std::slice::from_ref(event)))
    }

    fn handle_batch<'a>(&'a self, tx: &'a mut Tx, events: &'a [Event]) -> ConsumeFuture<'a> {
        Box::pin(self.enqueue(tx, events))
    }

    fn committed(&self) {
        self.jobs.wake();
    }
}

/// The confirmation e-mail of a job payload (`to`, `name`, `order`).
pub fn confirmation_email(payload: &Value) -> Option<Email> {
    let order = payload.get("order")?;
    let order_id = order.get("id")?.as_str()?;
    let currency = order.get("currency").and_then(Value::as_str).unwrap_or("");
    let money = |cents: i64| format!("{}.{:02} {currency}", cents / 100, (cents % 100).abs());
    let mut text = format!(
        "Hello {},\n\nthank you for your order {order_id}.\n\n",
        payload.get("name").and_then(Value::as_str).unwrap_or("")
    );
    for item in order.get("items")?.as_array()? {
        let quantity = item.get("quantity").and_then(Value::as_i64).unwrap_or(0);
        let price = item
            .get("unit_price_cents")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        text.push_str(&format!(
            "  {quantity} x {} ({}) at {}\n",
            item.get("name").and_then(Value::as_str).unwrap_or(""),
            item.get("sku").and_then(Value::as_str).unwrap_or(""),
            money(price)
        ));
    }
    let total = order
        .get("total_cents")
        .and_then(Value::as_i64)
        .unwrap_or(0);
    text.push_str(&format!("\nTotal: {}\n\nLogiCore\n", money(total)));
    Some(Email {
        message_id: order_message_id(order_id),
        to: payload.get("to")?.as_str()?.to_owned(),
        to_name: payload
            .get("name")
            .and_then(Value::as_str)
            .filter(|name| !name.is_empty())
            .map(str::to_owned),
        subject: "Order Confirmation".to_owned(),
        text,
    })
}

async fn send_confirmation(mailer: &Mailer, job: &Job) -> Result<(), JobError> {
    let email = confirmation_email(&job.payload)
        .ok_or_else(|| JobError::Discard("the payload is not an order confirmation".into()))?;
    match mailer.send(&email).await {
        Ok(Sent::Delivered) => {
            metrics::counter!("emails_sent_total", "kind" => "order_confirmation").increment(1);
            Ok(())
        }
        Ok(Sent::AlreadySent) => Ok(()),
        Err(EmailError::Invalid(message)) => Err(JobError::Discard(message)),
        Err(EmailError::Transient(message)) => Err(JobError::Retry(message)),
    }
}

/// Registers the e-mail jobs of the users service.
pub fn register_jobs(worker: &mut Worker, mailer: Mailer) {
    worker.register(
        ORDER_CONFIRMATION_JOB,
        KindSettings::default(),
        move |job| {
            let mailer = mailer.clone();
            async move { send_confirmation(&mailer, &job).await }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confirmation_names_the_order_and_has_its_message_id() {
        let payload = json!({
            "to": "ada@example.com",
            "name": "Ada",
            "order": {"id": "0190-abc", "currency": "EUR", "total_cents": 1450,
                      "items": [{"name": "Pen", "sku": "PEN", "quantity": 2, "unit_price_cents": 725}]}
        });
        let email = confirmation_email(&payload).unwrap_or_else(|| panic!("no e-mail"));
        assert_eq!(email.message_id, "<order-0190-abc@logicore>");
        assert_eq!(email.subject, "Order Confirmation");
        assert!(email.text.contains("0190-abc"), "{}", email.text);
        assert!(
            email.text.contains("2 x Pen (PEN) at 7.25 EUR"),
            "{}",
            email.text
        );
        assert!(email.text.contains("Total: 14.50 EUR"), "{}", email.text);
        assert!(confirmation_email(&json!({"to": "a@b.c"})).is_none());
    }
}
