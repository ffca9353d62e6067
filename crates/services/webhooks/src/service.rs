//! Webhook endpoints as their owners manage them: create (the secret shown once), list,
//! read, delete, rotate the secret, and look at and retry deliveries.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use logicore_platform::auth::{Permission, Principal};
use logicore_platform::crypto::{FieldContext, KeyRing};
use logicore_platform::http::FieldError;
use logicore_platform::http::json::parse_object;
use logicore_platform::http::pagination::{self, Page, PageRequest};
use logicore_platform::jobs::{Jobs, NewJob};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::domain::{Attempt, Delivery, DeliveryStatus, Endpoint, EndpointIn};
use crate::error::WebhookError;
use crate::guard::{GuardedResolver, TargetGuard};
use crate::signature;
use crate::store::{EndpointRow, WebhookStore};

/// The job kind of one delivery attempt series.
pub const DELIVER_JOB: &str = "webhooks.deliver";

/// A pending delivery this long past its due time has no job left behind it.
pub const STUCK_AFTER: Duration = Duration::from_secs(10 * 60);

/// How long the secret before a rotation keeps signing beside the new one.
pub const ROTATION_OVERLAP: Duration = Duration::from_secs(24 * 3600);

/// `[webhooks]` as the service uses it.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// The SSRF guard (`allow_private_targets`).
    pub guard: TargetGuard,
    /// Time a receiver has to answer.
    pub timeout: Duration,
    /// Delay before each attempt (the first is usually 0).
    pub retry_schedule: Vec<Duration>,
}

/// The webhooks service; cheap to clone.
#[derive(Clone)]
pub struct WebhooksService {
    pub(crate) store: WebhookStore,
    pub(crate) jobs: Jobs,
    pub(crate) ring: Arc<KeyRing>,
    pub(crate) settings: Arc<WebhookSettings>,
    pub(crate) client: reqwest::Client,
}

impl std::fmt::Debug for WebhooksService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("WebhooksService")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

pub(crate) fn now() -> DateTime<Utc> {
    use chrono::SubsecRound;
    Utc::now().trunc_subsecs(6)
}

/// Where an endpoint secret lives: the associated data its encryption is bound to.
fn secret_field<'a>(row: &'a str, column: &'a str) -> FieldContext<'a> {
    FieldContext {
        table: "webhook_endpoints",
        column,
        row,
    }
}

impl WebhooksService {
    /// The service over `store`, enqueueing deliveries on `jobs`, keeping secrets encrypted
    /// with `ring`.
    pub fn new(
        store: WebhookStore,
        jobs: Jobs,
        ring: Arc<KeyRing>,
        settings: WebhookSettings,
    ) -> WebhooksService {
        let client = reqwest::Client::builder()
            // Every name is resolved and checked by the guard; connections use the checked
            // addresses.
            .dns_resolver(GuardedResolver::new(settings.guard))
            .no_proxy()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(settings.timeout)
            .user_agent(concat!("LogiCore-Webhooks/", env!("CARGO_PKG_VERSION")))
            .build()
            // Never fall back to a client without the guard: without a TLS backend the
            // process cannot do its job anyway.
            .expect("the webhook HTTP client (TLS backend) cannot be built");
        WebhooksService {
            store,
            jobs,
            ring,
            settings: Arc::new(settings),
            client,
        }
    }

    /// The job queue deliveries go through.
    pub fn jobs(&self) -> &Jobs {
        &self.jobs
    }

    pub(crate) fn encrypt(&self, id: &Uuid, column: &'static str, secret: &str) -> String {
        self.ring
            .encrypt(secret.as_bytes(), secret_field(&id.to_string(), column))
    }

    pub(crate) fn decrypt(
        &self,
        id: &Uuid,
        column: &'static str,
        stored: &str,
    ) -> Result<String, WebhookError> {
        let bytes = self
            .ring
            .decrypt(stored, secret_field(&id.to_string(), column))
            .map_err(|err| WebhookError::Secret(err.to_string()))?;
        String::from_utf8(bytes).map_err(|err| WebhookError::Secret(err.to_string()))
    }

    fn endpoint(&self, row: EndpointRow, secret: Option<String>) -> Endpoint {
        Endpoint {
            id: row.id,
            event_types: row.event_types(),
            url: row.url,
            description: row.description,
            secret,
            disabled: row.disabled,
            disabled_reason: row.disabled_reason,
            owner_id: row.owner_id,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    /// The endpoint `id` when `caller` may see it (its owner, or an admin).
    async fn visible(&self, caller: &Principal, id: Uuid) -> Result<EndpointRow, WebhookError> {
        match self.store.endpoint(id).await? {
            Some(row) if row.owner_id == caller.subject || caller.may(Permission::Administer) => {
                Ok(row)
            }
            _ => Err(WebhookError::NotFound("webhook endpoint")),
        }
    }

    /// Creates an endpoint of `caller`; the answer carries its secret (shown only here and
    /// on rotation). An admin's endpoints receive every event, a customer's only the events
    /// about their own orders.
    pub async fn create(&self, caller: &Principal, body: Value) -> Result<Endpoint, WebhookError> {
        let input: EndpointIn = parse_object(body)?;
        let fields = input
            .check(&self.settings.guard)
            .map_err(WebhookError::Invalid)?;
        self.check_resolution(&fields.url).await?;
        let id = Uuid::now_v7();
        let secret = signature::generate_secret();
        let now = now();
        let row = EndpointRow {
            id,
            owner_id: caller.subject.clone(),
            receives_all: caller.may(Permission::Administer),
            url: fields.url,
            event_types: serde_json::to_string(&fields.event_types).unwrap_or_default(),
            description: fields.description,
            secret: self.encrypt(&id, "secret", &secret),
            previous_secret: None,
            previous_secret_until: None,
            disabled: false,
            disabled_reason: None,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_endpoint(&row).await?;
        Ok(self.endpoint(row, Some(secret)))
    }

    /// Refuses a URL whose name resolves to a non-public address now (it is checked again
    /// at every delivery; a name that does not resolve yet is accepted).
    async fn check_resolution(&self, url: &str) -> Result<(), WebhookError> {
        let Ok(url) = reqwest::Url::parse(url) else {
            return Ok(());
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Ok(());
        };
        let Ok(addrs) = tokio::net::lookup_host((host, port)).await else {
            return Ok(());
        };
        for addr in addrs {
            if let Err(refused) = self.settings.guard.check_ip(host, addr.ip()) {
                return Err(WebhookError::Invalid(vec![FieldError::new(
                    "/url", refused.0,
                )]));
            }
        }
        Ok(())
    }

    /// The caller's endpoints (an admin's list has everyone's), newest first.
    pub async fn list(
        &self,
        caller: &Principal,
        page: &PageRequest,
    ) -> Result<Page<Endpoint>, WebhookError> {
        let before = cursor(page)?;
        let owner = (!caller.may(Permission::Administer)).then_some(caller.subject.as_str());
        let rows = self
            .store
            .endpoints(owner, before, u64::from(page.limit) + 1)
            .await?;
        let items = rows
            .into_iter()
            .map(|row| self.endpoint(row, None))
            .collect();
        Ok(Page::from_overfetch(
            items,
            page.limit,
            |endpoint: &Endpoint| endpoint.id.as_bytes().to_vec(),
        ))
    }

    /// One endpoint (without its secret).
    pub async fn get(&self, caller: &Principal, id: Uuid) -> Result<Endpoint, WebhookError> {
        let row = self.visible(caller, id).await?;
        Ok(self.endpoint(row, None))
    }

    /// Deletes an endpoint; its pending deliveries stop.
    pub async fn delete(&self, caller: &Principal, id: Uuid) -> Result<(), WebhookError> {
        self.visible(caller, id).await?;
        self.store.delete_endpoint(id).await?;
        Ok(())
    }

    /// A new secret; the previous one keeps signing beside it for [`ROTATION_OVERLAP`], so
    /// receivers can switch without losing a message.
    pub async fn rotate_secret(
        &self,
        caller: &Principal,
        id: Uuid,
    ) -> Result<Endpoint, WebhookError> {
        let row = self.visible(caller, id).await?;
        let current = self.decrypt(&id, "secret", &row.secret)?;
        let secret = signature::generate_secret();
        let now = now();
        let until = now + chrono::Duration::from_std(ROTATION_OVERLAP).unwrap_or_default();
        self.store
            .rotate_secret(
                id,
                self.encrypt(&id, "secret", &secret),
                self.encrypt(&id, "previous_secret", &current),
                until,
                now,
            )
            .await?;
        let row = self.visible(caller, id).await?;
        Ok(self.endpoint(row, Some(secret)))
    }

    /// Re-encrypts every endpoint secret stored under a key other than the active one
    /// (`logicore keys rewrap`); returns (values re-encrypted, endpoints looked at).
    pub async fn rewrap(&self) -> Result<(u64, u64), WebhookError> {
        const BATCH: u64 = 500;
        let (mut rewrapped, mut seen) = (0, 0);
        let mut before = None;
        loop {
            let rows = self.store.endpoints(None, before, BATCH).await?;
            let Some(last) = rows.last() else {
                return Ok((rewrapped, seen));
            };
            before = Some(last.id);
            for row in &rows {
                seen += 1;
                let stale_previous = row
                    .previous_secret
                    .as_deref()
                    .is_some_and(|stored| self.ring.needs_rewrap(stored));
                if !self.ring.needs_rewrap(&row.secret) && !stale_previous {
                    continue;
                }
                let secret = self.decrypt(&row.id, "secret", &row.secret)?;
                let previous = match &row.previous_secret {
                    Some(stored) => Some(self.encrypt(
                        &row.id,
                        "previous_secret",
                        &self.decrypt(&row.id, "previous_secret", stored)?,
                    )),
                    None => None,
                };
                self.store
                    .rewrap_secrets(row.id, self.encrypt(&row.id, "secret", &secret), previous)
                    .await?;
                rewrapped += 1 + u64::from(stale_previous);
            }
        }
    }

    /// The signing keys of an endpoint now: its secret, and the previous one while a
    /// rotation overlaps.
    pub(crate) fn signing_keys(&self, row: &EndpointRow) -> Result<Vec<Vec<u8>>, WebhookError> {
        let mut keys = Vec::with_capacity(2);
        let current = self.decrypt(&row.id, "secret", &row.secret)?;
        keys.extend(signature::key_bytes(&current));
        if let (Some(previous), Some(until)) = (&row.previous_secret, row.previous_secret_until)
            && until > Utc::now()
        {
            let previous = self.decrypt(&row.id, "previous_secret", previous)?;
            keys.extend(signature::key_bytes(&previous));
        }
        Ok(keys)
    }

    /// The deliveries of an endpoint, newest first.
    pub async fn deliveries(
        &self,
        caller: &Principal,
        endpoint: Uuid,
        page: &PageRequest,
    ) -> Result<Page<Delivery>, WebhookError> {
        self.visible(caller, endpoint).await?;
        let before = cursor(page)?;
        let items = self
            .store
            .deliveries(endpoint, before, u64::from(page.limit) + 1)
            .await?;
        Ok(Page::from_overfetch(
            items,
            page.limit,
            |delivery: &Delivery| delivery.id.as_bytes().to_vec(),
        ))
    }

    async fn visible_delivery(
        &self,
        caller: &Principal,
        endpoint: Uuid,
        delivery: Uuid,
    ) -> Result<Delivery, WebhookError> {
        self.visible(caller, endpoint).await?;
        match self.store.delivery(delivery).await? {
            Some(found) if found.endpoint_id == endpoint => Ok(found),
            _ => Err(WebhookError::NotFound("delivery")),
        }
    }

    /// Every attempt of a delivery, first first.
    pub async fn attempts(
        &self,
        caller: &Principal,
        endpoint: Uuid,
        delivery: Uuid,
    ) -> Result<Vec<Attempt>, WebhookError> {
        self.visible_delivery(caller, endpoint, delivery).await?;
        Ok(self.store.attempts(delivery).await?)
    }

    /// Sends a delivery again now, once (whatever its state, unless it is already
    /// pending); answers the delivery as it is queued.
    pub async fn retry(
        &self,
        caller: &Principal,
        endpoint: Uuid,
        delivery: Uuid,
    ) -> Result<Delivery, WebhookError> {
        let found = self.visible_delivery(caller, endpoint, delivery).await?;
        // A pending delivery whose next attempt is long overdue lost its job (a worker died
        // on its last attempt): it may be sent again like a failed one.
        let overdue = found.next_attempt_at.is_none_or(|due| {
            due < Utc::now() - chrono::Duration::from_std(STUCK_AFTER).unwrap_or_default()
        });
        if found.status == DeliveryStatus::Pending && !overdue {
            return Err(WebhookError::Conflict(
                "this delivery is already waiting for its next attempt".into(),
            ));
        }
        let row = self.visible(caller, endpoint).await?;
        if row.disabled {
            return Err(WebhookError::Conflict(
                "the endpoint is disabled: nothing is sent to it".into(),
            ));
        }
        let now = now();
        let mut tx = self.store.db().begin().await?;
        WebhookStore::reopen_in(&mut tx, delivery, now).await?;
        let job = NewJob::new(
            DELIVER_JOB,
            json!({ "delivery_id": delivery, "manual": true }),
        )
        .unique(format!(
            "webhook-delivery:{delivery}:retry:{}",
            Uuid::now_v7()
        ))
        .max_attempts(1);
        if self.jobs.enqueue(&mut tx, job).await?.is_none() {
            return Err(WebhookError::Conflict(
                "this delivery is already being sent again".into(),
            ));
        }
        tx.commit().await?;
        self.jobs.wake();
        self.store
            .delivery(delivery)
            .await?
            .ok_or(WebhookError::NotFound("delivery"))
    }
}

fn cursor(page: &PageRequest) -> Result<Option<Uuid>, WebhookError> {
    match &page.after {
        None => Ok(None),
        Some(bytes) => Uuid::from_slice(bytes)
            .map(Some)
            .map_err(|_| WebhookError::Rejected(Box::new(pagination::invalid_cursor()))),
    }
}
