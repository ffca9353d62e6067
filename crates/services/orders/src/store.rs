//! Order storage: the only place with SQL.

use chrono::{DateTime, Utc};
use logicore_contracts::OrderId;
use logicore_platform::db::{self, Db, Tx, Violation};
use sea_query::{Expr, ExprTrait, Iden, Order as SortOrder, Query, SelectStatement};
use uuid::Uuid;

use crate::domain::{Address, Order, OrderLine, OrderStatus};

#[derive(Iden, Clone, Copy)]
enum Orders {
    Table,
    Id,
    UserId,
    Status,
    Items,
    TotalCents,
    Currency,
    ShippingAddress,
    IdempotencyKey,
    RequestHash,
    CreatedAt,
    UpdatedAt,
}

#[derive(Debug, sqlx::FromRow)]
struct OrderRow {
    id: Uuid,
    user_id: String,
    status: String,
    items: String,
    total_cents: i64,
    currency: String,
    shipping_address: String,
    request_hash: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

/// An order with the fingerprint of the request that created it.
#[derive(Debug, Clone)]
pub struct StoredOrder {
    /// The order (status `pending` while being created).
    pub order: Order,
    /// SHA-256 of the creating request's body, when it had an `Idempotency-Key`.
    pub request_hash: Option<String>,
}

impl TryFrom<OrderRow> for StoredOrder {
    type Error = sqlx::Error;

    fn try_from(row: OrderRow) -> Result<StoredOrder, sqlx::Error> {
        let decode = |what: &str, error: serde_json::Error| {
            sqlx::Error::Decode(format!("orders.{what} of {}: {error}", row.id).into())
        };
        let items: Vec<OrderLine> =
            serde_json::from_str(&row.items).map_err(|err| decode("items", err))?;
        let shipping_address: Address = serde_json::from_str(&row.shipping_address)
            .map_err(|err| decode("shipping_address", err))?;
        let status = OrderStatus::parse(&row.status).ok_or_else(|| {
            sqlx::Error::Decode(format!("unknown order status {}", row.status).into())
        })?;
        Ok(StoredOrder {
            order: Order {
                id: OrderId(row.id),
                user_id: row.user_id,
                status,
                items,
                total_cents: row.total_cents,
                currency: row.currency,
                shipping_address,
                created_at: row.created_at,
                updated_at: row.updated_at,
            },
            request_hash: row.request_hash,
        })
    }
}

fn select_orders() -> SelectStatement {
    Query::select()
        .columns([
            Orders::Id,
            Orders::UserId,
            Orders::Status,
            Orders::Items,
            Orders::TotalCents,
            Orders::Currency,
            Orders::ShippingAddress,
            Orders::RequestHash,
            Orders::CreatedAt,
            Orders::UpdatedAt,
        ])
        .from(Orders::Table)
        .to_owned()
}

fn json(value: &impl serde::Serialize) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_owned())
}

/// Order storage over the application database; cheap to clone.
#[derive(Debug, Clone)]
pub struct OrderStore {
    db: Db,
}

/// What [`OrderStore::insert_pending`] found.
#[derive(Debug)]
pub enum Inserted {
    /// The pending order is written.
    New,
    /// Another order of this user holds the idempotency key.
    KeyTaken,
}

impl OrderStore {
    /// Wraps the database handle.
    pub fn new(db: Db) -> OrderStore {
        OrderStore { db }
    }

    /// The database.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Writes `order` (as it is: `pending` without lines in the saga, or complete) with its
    /// idempotency key.
    pub async fn insert(
        &self,
        tx: &mut Tx,
        order: &Order,
        key: Option<&str>,
        request_hash: &str,
    ) -> Result<Inserted, sqlx::Error> {
        let insert = Query::insert()
            .into_table(Orders::Table)
            .columns([
                Orders::Id,
                Orders::UserId,
                Orders::Status,
                Orders::Items,
                Orders::TotalCents,
                Orders::Currency,
                Orders::ShippingAddress,
                Orders::IdempotencyKey,
                Orders::RequestHash,
                Orders::CreatedAt,
                Orders::UpdatedAt,
            ])
            .values_panic([
                order.id.as_uuid().into(),
                order.user_id.clone().into(),
                order.status.as_str().into(),
                json(&order.items).into(),
                order.total_cents.into(),
                order.currency.clone().into(),
                json(&order.shipping_address).into(),
                key.map(str::to_owned).into(),
                key.map(|_| request_hash.to_owned()).into(),
                order.created_at.into(),
                order.updated_at.into(),
            ])
            .to_owned();
        if key.is_none() {
            // Nothing to tell apart without a key (the id is fresh): on SQLite the row goes
            // to the connection with the transaction's next statement or its commit.
            tx.execute_later(&insert).await?;
            return Ok(Inserted::New);
        }
        match tx.execute(&insert).await {
            Ok(_) => Ok(Inserted::New),
            Err(err) if db::violation(&err) == Some(Violation::Unique) => Ok(Inserted::KeyTaken),
            Err(err) => Err(err),
        }
    }

    /// Completes a pending order with its lines, total and status `created`; false when it
    /// is no longer pending (abandoned meanwhile).
    pub async fn complete(&self, tx: &mut Tx, order: &Order) -> Result<bool, sqlx::Error> {
        let update = Query::update()
            .table(Orders::Table)
            .value(Orders::Status, order.status.as_str())
            .value(Orders::Items, json(&order.items))
            .value(Orders::TotalCents, order.total_cents)
            .value(Orders::Currency, order.currency.clone())
            .value(Orders::UpdatedAt, order.updated_at)
            .and_where(Expr::col(Orders::Id).eq(order.id.as_uuid()))
            .and_where(Expr::col(Orders::Status).eq(OrderStatus::Pending.as_str()))
            .to_owned();
        Ok(tx.execute(&update).await? == 1)
    }

    /// Deletes an order that is still pending; false when it is not.
    pub async fn delete_pending(&self, tx: &mut Tx, id: OrderId) -> Result<bool, sqlx::Error> {
        let delete = Query::delete()
            .from_table(Orders::Table)
            .and_where(Expr::col(Orders::Id).eq(id.as_uuid()))
            .and_where(Expr::col(Orders::Status).eq(OrderStatus::Pending.as_str()))
            .to_owned();
        Ok(tx.execute(&delete).await? == 1)
    }

    /// Moves an order from `from` to `to` (compare-and-set); false when it was not in `from`.
    pub async fn set_status(
        &self,
        tx: &mut Tx,
        id: OrderId,
        from: OrderStatus,
        to: OrderStatus,
        now: DateTime<Utc>,
    ) -> Result<bool, sqlx::Error> {
        let update = Query::update()
            .table(Orders::Table)
            .value(Orders::Status, to.as_str())
            .value(Orders::UpdatedAt, now)
            .and_where(Expr::col(Orders::Id).eq(id.as_uuid()))
            .and_where(Expr::col(Orders::Status).eq(from.as_str()))
            .to_owned();
        Ok(tx.execute(&update).await? == 1)
    }

    /// The order with this id, in any status.
    pub async fn get(&self, id: OrderId) -> Result<Option<StoredOrder>, sqlx::Error> {
        let select = select_orders()
            .and_where(Expr::col(Orders::Id).eq(id.as_uuid()))
            .to_owned();
        let row: Option<OrderRow> = self.db.fetch_optional(&select).await?;
        row.map(StoredOrder::try_from).transpose()
    }

    /// The order of `user` created with idempotency `key`.
    pub async fn by_key(&self, user: &str, key: &str) -> Result<Option<StoredOrder>, sqlx::Error> {
        let select = select_orders()
            .and_where(Expr::col(Orders::UserId).eq(user))
            .and_where(Expr::col(Orders::IdempotencyKey).eq(key))
            .to_owned();
        let row: Option<OrderRow> = self.db.fetch_optional(&select).await?;
        row.map(StoredOrder::try_from).transpose()
    }

    /// Up to `limit` visible orders (of `user`, or everyone's), newest first, older than
    /// `before`.
    pub async fn list(
        &self,
        user: Option<&str>,
        before: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<Order>, sqlx::Error> {
        let mut select = select_orders()
            .and_where(Expr::col(Orders::Status).ne(OrderStatus::Pending.as_str()))
            .order_by(Orders::Id, SortOrder::Desc)
            .limit(limit)
            .to_owned();
        if let Some(user) = user {
            select.and_where(Expr::col(Orders::UserId).eq(user));
        }
        if let Some(before) = before {
            select.and_where(Expr::col(Orders::Id).lt(before));
        }
        let rows: Vec<OrderRow> = self.db.fetch_all(&select).await?;
        rows.into_iter()
            .map(|row| StoredOrder::try_from(row).map(|stored| stored.order))
            .collect()
    }
}
