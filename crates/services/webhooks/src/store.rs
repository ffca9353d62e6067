//! Webhook storage: the only place with SQL.

use chrono::{DateTime, Utc};
use logicore_platform::db::{Db, SqlxBinder, Tx};
use sea_query::{Expr, ExprTrait, Iden, OnConflict, Order as SortOrder, Query, SelectStatement};
use uuid::Uuid;

use crate::domain::{Attempt, Delivery, DeliveryStatus};

#[derive(Iden, Clone, Copy)]
enum WebhookEndpoints {
    Table,
    Id,
    OwnerId,
    ReceivesAll,
    Url,
    EventTypes,
    Description,
    Secret,
    PreviousSecret,
    PreviousSecretUntil,
    Disabled,
    DisabledReason,
    CreatedAt,
    UpdatedAt,
}

#[derive(Iden, Clone, Copy)]
enum WebhookDeliveries {
    Table,
    Id,
    EndpointId,
    EventId,
    EventType,
    Body,
    Status,
    Attempt,
    ResponseStatus,
    LatencyMs,
    Error,
    CreatedAt,
    UpdatedAt,
    NextAttemptAt,
}

#[derive(Iden, Clone, Copy)]
enum WebhookAttempts {
    Table,
    DeliveryId,
    Attempt,
    ResponseStatus,
    LatencyMs,
    ResponseExcerpt,
    Error,
    CreatedAt,
}

/// An endpoint as stored (secrets encrypted).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRow {
    /// Its id.
    pub id: Uuid,
    /// The owning user.
    pub owner_id: String,
    /// Receives every event (an admin's endpoint), not only its owner's.
    pub receives_all: bool,
    /// Target URL.
    pub url: String,
    /// JSON array of types or patterns.
    pub event_types: String,
    /// Free text.
    pub description: Option<String>,
    /// The encrypted secret.
    pub secret: String,
    /// The encrypted secret before the last rotation.
    pub previous_secret: Option<String>,
    /// Until when the previous secret also signs.
    pub previous_secret_until: Option<DateTime<Utc>>,
    /// Deliveries stopped.
    pub disabled: bool,
    /// Why.
    pub disabled_reason: Option<String>,
    /// Created.
    pub created_at: DateTime<Utc>,
    /// Last changed.
    pub updated_at: DateTime<Utc>,
}

impl EndpointRow {
    /// The event types or patterns.
    pub fn event_types(&self) -> Vec<String> {
        serde_json::from_str(&self.event_types).unwrap_or_default()
    }
}

#[derive(Debug, sqlx::FromRow)]
struct DeliveryRow {
    id: Uuid,
    endpoint_id: Uuid,
    event_id: Uuid,
    event_type: String,
    status: String,
    attempt: i32,
    response_status: Option<i32>,
    latency_ms: Option<i64>,
    error: Option<String>,
    created_at: DateTime<Utc>,
    next_attempt_at: Option<DateTime<Utc>>,
}

impl From<DeliveryRow> for Delivery {
    fn from(row: DeliveryRow) -> Delivery {
        Delivery {
            id: row.id,
            endpoint_id: row.endpoint_id,
            event_id: row.event_id,
            event_type: row.event_type,
            attempt: row.attempt,
            status: DeliveryStatus::parse(&row.status).unwrap_or(DeliveryStatus::Failed),
            response_status: row.response_status,
            latency_ms: row.latency_ms,
            error: row.error,
            created_at: row.created_at,
            next_attempt_at: row.next_attempt_at,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct BodyRow {
    body: String,
}

#[derive(Debug, sqlx::FromRow)]
struct AttemptRow {
    attempt: i32,
    response_status: Option<i32>,
    latency_ms: i64,
    response_excerpt: Option<String>,
    error: Option<String>,
    created_at: DateTime<Utc>,
}

/// A new delivery of one event to one endpoint.
#[derive(Debug, Clone)]
pub struct NewDelivery {
    /// Its id.
    pub id: Uuid,
    /// The endpoint.
    pub endpoint_id: Uuid,
    /// The event.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The request body every attempt sends.
    pub body: String,
}

/// The outcome of one attempt, to record.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    /// The delivery.
    pub delivery_id: Uuid,
    /// Its number.
    pub attempt: i32,
    /// HTTP status, when an answer came.
    pub response_status: Option<i32>,
    /// Duration.
    pub latency_ms: i64,
    /// The first bytes of the answer.
    pub response_excerpt: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// The delivery's status after it.
    pub status: DeliveryStatus,
    /// The next attempt, when one comes.
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// When it was made.
    pub at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: [WebhookEndpoints; 13] = [
    WebhookEndpoints::Id,
    WebhookEndpoints::OwnerId,
    WebhookEndpoints::ReceivesAll,
    WebhookEndpoints::Url,
    WebhookEndpoints::EventTypes,
    WebhookEndpoints::Description,
    WebhookEndpoints::Secret,
    WebhookEndpoints::PreviousSecret,
    WebhookEndpoints::PreviousSecretUntil,
    WebhookEndpoints::Disabled,
    WebhookEndpoints::DisabledReason,
    WebhookEndpoints::CreatedAt,
    WebhookEndpoints::UpdatedAt,
];

fn select_endpoints() -> SelectStatement {
    Query::select()
        .columns(ENDPOINT_COLUMNS)
        .from(WebhookEndpoints::Table)
        .to_owned()
}

fn select_deliveries() -> SelectStatement {
    Query::select()
        .columns([
            WebhookDeliveries::Id,
            WebhookDeliveries::EndpointId,
            WebhookDeliveries::EventId,
            WebhookDeliveries::EventType,
            WebhookDeliveries::Status,
            WebhookDeliveries::Attempt,
            WebhookDeliveries::ResponseStatus,
            WebhookDeliveries::LatencyMs,
            WebhookDeliveries::Error,
            WebhookDeliveries::CreatedAt,
            WebhookDeliveries::NextAttemptAt,
        ])
        .from(WebhookDeliveries::Table)
        .to_owned()
}

/// Webhook tables.
#[derive(Debug, Clone)]
pub struct WebhookStore {
    db: Db,
}

impl WebhookStore {
    /// The store over `db` (tables from the crate's migrations).
    pub fn new(db: Db) -> WebhookStore {
        WebhookStore { db }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Runs one statement in a transaction of its own; returns the rows it changed.
    async fn write(&self, statement: &impl SqlxBinder) -> Result<u64, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let changed = tx.execute(statement).await?;
        tx.commit().await?;
        Ok(changed)
    }

    /// Inserts an endpoint.
    pub async fn insert_endpoint(&self, row: &EndpointRow) -> Result<(), sqlx::Error> {
        let insert = Query::insert()
            .into_table(WebhookEndpoints::Table)
            .columns(ENDPOINT_COLUMNS)
            .values_panic([
                row.id.into(),
                row.owner_id.clone().into(),
                row.receives_all.into(),
                row.url.clone().into(),
                row.event_types.clone().into(),
                row.description.clone().into(),
                row.secret.clone().into(),
                row.previous_secret.clone().into(),
                row.previous_secret_until.into(),
                row.disabled.into(),
                row.disabled_reason.clone().into(),
                row.created_at.into(),
                row.updated_at.into(),
            ])
            .to_owned();
        self.write(&insert).await.map(drop)
    }

    /// One endpoint.
    pub async fn endpoint(&self, id: Uuid) -> Result<Option<EndpointRow>, sqlx::Error> {
        let select = select_endpoints()
            .and_where(Expr::col(WebhookEndpoints::Id).eq(id))
            .to_owned();
        self.db.fetch_optional(&select).await
    }

    /// Endpoints of `owner` (all with `None`), newest first, before `before`.
    pub async fn endpoints(
        &self,
        owner: Option<&str>,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<EndpointRow>, sqlx::Error> {
        let mut select = select_endpoints()
            .order_by(WebhookEndpoints::Id, SortOrder::Desc)
            .limit(limit)
            .to_owned();
        if let Some(owner) = owner {
            select.and_where(Expr::col(WebhookEndpoints::OwnerId).eq(owner));
        }
        if let Some(before) = before {
            select.and_where(Expr::col(WebhookEndpoints::Id).lt(before));
        }
        self.db.fetch_all(&select).await
    }

    /// Deletes an endpoint with its deliveries; false when there was none.
    pub async fn delete_endpoint(&self, id: Uuid) -> Result<bool, sqlx::Error> {
        let delete = Query::delete()
            .from_table(WebhookEndpoints::Table)
            .and_where(Expr::col(WebhookEndpoints::Id).eq(id))
            .to_owned();
        Ok(self.write(&delete).await? == 1)
    }

    /// Replaces the secret; the old one keeps signing until `until`.
    pub async fn rotate_secret(
        &self,
        id: Uuid,
        secret: String,
        previous: String,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let update = Query::update()
            .table(WebhookEndpoints::Table)
            .value(WebhookEndpoints::Secret, secret)
            .value(WebhookEndpoints::PreviousSecret, previous)
            .value(WebhookEndpoints::PreviousSecretUntil, until)
            .value(WebhookEndpoints::UpdatedAt, now)
            .and_where(Expr::col(WebhookEndpoints::Id).eq(id))
            .to_owned();
        self.write(&update).await.map(drop)
    }

    /// Re-encrypts the secrets of one endpoint (key rotation).
    pub async fn rewrap_secrets(
        &self,
        id: Uuid,
        secret: String,
        previous: Option<String>,
    ) -> Result<(), sqlx::Error> {
        let update = Query::update()
            .table(WebhookEndpoints::Table)
            .value(WebhookEndpoints::Secret, secret)
            .value(WebhookEndpoints::PreviousSecret, previous)
            .and_where(Expr::col(WebhookEndpoints::Id).eq(id))
            .to_owned();
        self.write(&update).await.map(drop)
    }

    /// The enabled endpoints events about `users`' resources may go to: every admin
    /// endpoint, and those of the users.
    pub async fn subscribers_in(
        tx: &mut Tx,
        users: &[&str],
    ) -> Result<Vec<EndpointRow>, sqlx::Error> {
        let mut audience = Expr::col(WebhookEndpoints::ReceivesAll).eq(true);
        if !users.is_empty() {
            audience =
                audience.or(Expr::col(WebhookEndpoints::OwnerId).is_in(users.iter().copied()));
        }
        let select = select_endpoints()
            .and_where(Expr::col(WebhookEndpoints::Disabled).eq(false))
            .and_where(audience)
            .to_owned();
        tx.fetch_all(&select).await
    }

    /// Inserts deliveries inside the consumer's transaction; one per endpoint and event
    /// (a redelivered event adds none). Returns the ids of those inserted.
    pub async fn insert_deliveries_in(
        tx: &mut Tx,
        deliveries: &[NewDelivery],
        now: DateTime<Utc>,
    ) -> Result<Vec<Uuid>, sqlx::Error> {
        if deliveries.is_empty() {
            return Ok(Vec::new());
        }
        let mut insert = Query::insert()
            .into_table(WebhookDeliveries::Table)
            .columns([
                WebhookDeliveries::Id,
                WebhookDeliveries::EndpointId,
                WebhookDeliveries::EventId,
                WebhookDeliveries::EventType,
                WebhookDeliveries::Body,
                WebhookDeliveries::Status,
                WebhookDeliveries::Attempt,
                WebhookDeliveries::CreatedAt,
                WebhookDeliveries::UpdatedAt,
                WebhookDeliveries::NextAttemptAt,
            ])
            .on_conflict(
                OnConflict::columns([WebhookDeliveries::EndpointId, WebhookDeliveries::EventId])
                    .do_nothing()
                    .to_owned(),
            )
            .returning_col(WebhookDeliveries::Id)
            .to_owned();
        for delivery in deliveries {
            insert.values_panic([
                delivery.id.into(),
                delivery.endpoint_id.into(),
                delivery.event_id.into(),
                delivery.event_type.clone().into(),
                delivery.body.clone().into(),
                DeliveryStatus::Pending.as_str().into(),
                0.into(),
                now.into(),
                now.into(),
                now.into(),
            ]);
        }
        let inserted: Vec<(Uuid,)> = tx.fetch_all(&insert).await?;
        Ok(inserted.into_iter().map(|(id,)| id).collect())
    }

    /// One delivery.
    pub async fn delivery(&self, id: Uuid) -> Result<Option<Delivery>, sqlx::Error> {
        let select = select_deliveries()
            .and_where(Expr::col(WebhookDeliveries::Id).eq(id))
            .to_owned();
        Ok(self
            .db
            .fetch_optional::<DeliveryRow>(&select)
            .await?
            .map(Delivery::from))
    }

    /// The body every attempt of a delivery sends.
    pub async fn delivery_body(&self, id: Uuid) -> Result<Option<String>, sqlx::Error> {
        let select = Query::select()
            .column(WebhookDeliveries::Body)
            .from(WebhookDeliveries::Table)
            .and_where(Expr::col(WebhookDeliveries::Id).eq(id))
            .to_owned();
        Ok(self
            .db
            .fetch_optional::<BodyRow>(&select)
            .await?
            .map(|row| row.body))
    }

    /// Deliveries of an endpoint, newest first, before `before`.
    pub async fn deliveries(
        &self,
        endpoint: Uuid,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<Delivery>, sqlx::Error> {
        let mut select = select_deliveries()
            .and_where(Expr::col(WebhookDeliveries::EndpointId).eq(endpoint))
            .order_by(WebhookDeliveries::Id, SortOrder::Desc)
            .limit(limit)
            .to_owned();
        if let Some(before) = before {
            select.and_where(Expr::col(WebhookDeliveries::Id).lt(before));
        }
        let rows: Vec<DeliveryRow> = self.db.fetch_all(&select).await?;
        Ok(rows.into_iter().map(Delivery::from).collect())
    }

    /// Every attempt of a delivery, first first.
    pub async fn attempts(&self, delivery: Uuid) -> Result<Vec<Attempt>, sqlx::Error> {
        let select = Query::select()
            .columns([
                WebhookAttempts::Attempt,
                WebhookAttempts::ResponseStatus,
                WebhookAttempts::LatencyMs,
                WebhookAttempts::ResponseExcerpt,
                WebhookAttempts::Error,
                WebhookAttempts::CreatedAt,
            ])
            .from(WebhookAttempts::Table)
            .and_where(Expr::col(WebhookAttempts::DeliveryId).eq(delivery))
            .order_by(WebhookAttempts::Attempt, SortOrder::Asc)
            .to_owned();
        let rows: Vec<AttemptRow> = self.db.fetch_all(&select).await?;
        Ok(rows
            .into_iter()
            .map(|row| Attempt {
                attempt: row.attempt,
                response_status: row.response_status,
                latency_ms: row.latency_ms,
                response_excerpt: row.response_excerpt,
                error: row.error,
                created_at: row.created_at,
            })
            .collect())
    }

    /// Records an attempt and the delivery's new state in one transaction; with
    /// `disable`, the endpoint stops receiving (with that reason).
    pub async fn record_attempt(
        &self,
        record: &AttemptRecord,
        endpoint: Uuid,
        disable: Option<&str>,
    ) -> Result<(), sqlx::Error> {
        let log = Query::insert()
            .into_table(WebhookAttempts::Table)
            .columns([
                WebhookAttempts::DeliveryId,
                WebhookAttempts::Attempt,
                WebhookAttempts::ResponseStatus,
                WebhookAttempts::LatencyMs,
                WebhookAttempts::ResponseExcerpt,
                WebhookAttempts::Error,
                WebhookAttempts::CreatedAt,
            ])
            .values_panic([
                record.delivery_id.into(),
                record.attempt.into(),
                record.response_status.into(),
                record.latency_ms.into(),
                record.response_excerpt.clone().into(),
                record.error.clone().into(),
                record.at.into(),
            ])
            // A worker that died after logging re-runs the same attempt: the last word wins.
            .on_conflict(
                OnConflict::columns([WebhookAttempts::DeliveryId, WebhookAttempts::Attempt])
                    .update_columns([
                        WebhookAttempts::ResponseStatus,
                        WebhookAttempts::LatencyMs,
                        WebhookAttempts::ResponseExcerpt,
                        WebhookAttempts::Error,
                        WebhookAttempts::CreatedAt,
                    ])
                    .to_owned(),
            )
            .to_owned();
        let update = Query::update()
            .table(WebhookDeliveries::Table)
            .value(WebhookDeliveries::Attempt, record.attempt)
            .value(WebhookDeliveries::Status, record.status.as_str())
            .value(WebhookDeliveries::ResponseStatus, record.response_status)
            .value(WebhookDeliveries::LatencyMs, record.latency_ms)
            .value(WebhookDeliveries::Error, record.error.clone())
            .value(WebhookDeliveries::NextAttemptAt, record.next_attempt_at)
            .value(WebhookDeliveries::UpdatedAt, record.at)
            .and_where(Expr::col(WebhookDeliveries::Id).eq(record.delivery_id))
            .to_owned();
        let mut tx = self.db.begin().await?;
        tx.execute(&log).await?;
        tx.execute(&update).await?;
        if let Some(reason) = disable {
            let disable = Query::update()
                .table(WebhookEndpoints::Table)
                .value(WebhookEndpoints::Disabled, true)
                .value(WebhookEndpoints::DisabledReason, reason)
                .value(WebhookEndpoints::UpdatedAt, record.at)
                .and_where(Expr::col(WebhookEndpoints::Id).eq(endpoint))
                .to_owned();
            tx.execute(&disable).await?;
        }
        tx.commit().await
    }

    /// Marks a delivery given up without an attempt (its endpoint is disabled).
    pub async fn give_up(
        &self,
        delivery: Uuid,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let update = Query::update()
            .table(WebhookDeliveries::Table)
            .value(WebhookDeliveries::Status, DeliveryStatus::Failed.as_str())
            .value(WebhookDeliveries::Error, reason)
            .value(WebhookDeliveries::NextAttemptAt, None::<DateTime<Utc>>)
            .value(WebhookDeliveries::UpdatedAt, now)
            .and_where(Expr::col(WebhookDeliveries::Id).eq(delivery))
            .to_owned();
        self.write(&update).await.map(drop)
    }

    /// Makes a delivery pending again inside `tx` (a manual retry).
    pub async fn reopen_in(
        tx: &mut Tx,
        delivery: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), sqlx::Error> {
        let update = Query::update()
            .table(WebhookDeliveries::Table)
            .value(WebhookDeliveries::Status, DeliveryStatus::Pending.as_str())
            .value(WebhookDeliveries::NextAttemptAt, now)
            .value(WebhookDeliveries::UpdatedAt, now)
            .and_where(Expr::col(WebhookDeliveries::Id).eq(delivery))
            .to_owned();
        tx.execute(&update).await.map(drop)
    }
}
