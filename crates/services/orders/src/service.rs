//! Order operations.
//!
//! Where the catalog keeps its stock in this process's database (`logicore up`, and the
//! worker), placing an order is one transaction: reserve the stock, write the order and its
//! `order.created` event, commit — all or nothing.
//!
//! When the catalog is elsewhere, creating an order is a small saga over two services, made
//! crash-safe with the durable job queue:
//! 1. one transaction writes the order as `pending` (holding the caller's `Idempotency-Key`)
//!    together with an `orders.abandon` job due after [`ABANDON_AFTER`];
//! 2. the catalog reserves the stock for the order id (all or nothing, idempotent);
//! 3. one transaction completes the order (`created`), writes `order.created` to the outbox
//!    and cancels the abandon job.
//!
//! A refused reservation deletes the pending order at once. A process that dies between the
//! steps leaves the abandon job, which gives the stock back and deletes the pending order,
//! so a failed create never keeps a reservation.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SubsecRound, Utc};
use logicore_contracts::OrderId;
use logicore_contracts::stock::{ReserveLine, ReservedLine, Stock, StockError};
use logicore_platform::auth::{Permission, Principal};
use logicore_platform::bus::{Bus, NewEvent};
use logicore_platform::db::Tx;
use logicore_platform::http::{FieldError, Page, PageRequest, Problem, pagination};
use logicore_platform::jobs::{Jobs, NewJob};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::SERVICE_NAME;
use crate::domain::{Order, OrderIn, OrderLine, OrderStatus};
use crate::error::OrderError;
use crate::store::{Inserted, OrderStore, StoredOrder};

/// How long an order may stay `pending` before its abandon job cleans up.
pub const ABANDON_AFTER: Duration = Duration::from_secs(120);

/// Job kind: clean up an order whose creation did not finish.
pub const ABANDON_JOB: &str = "orders.abandon";
/// Job kind: give a cancelled order's stock back.
pub const RELEASE_JOB: &str = "orders.release_stock";

/// How a create was answered.
#[derive(Debug)]
pub struct Created {
    /// The order.
    pub order: Order,
    /// True when an earlier request with the same `Idempotency-Key` made it.
    pub replayed: bool,
}

/// The orders service; cheap to clone.
#[derive(Clone)]
pub struct OrdersService {
    store: OrderStore,
    bus: Bus,
    jobs: Jobs,
    stock: Arc<dyn Stock>,
}

impl std::fmt::Debug for OrdersService {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OrdersService")
            .finish_non_exhaustive()
    }
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn abandon_key(id: OrderId) -> String {
    format!("{ABANDON_JOB}:{id}")
}

/// Checks an `Idempotency-Key` header value: 1–255 visible ASCII characters.
pub fn check_idempotency_key(key: &str) -> Result<(), OrderError> {
    if (1..=255).contains(&key.len()) && key.bytes().all(|byte| byte.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(OrderError::Invalid(vec![FieldError::new(
            "header:idempotency-key",
            "must be 1-255 visible ASCII characters",
        )]))
    }
}

/// SHA-256 (hex) of a JSON body with its object keys in sorted order, so the same request
/// written with its keys in another order has the same fingerprint.
fn fingerprint(body: &Value) -> String {
    logicore_platform::crypto::sha256_hex(body.to_string().as_bytes())
}

impl OrdersService {
    /// The service over a migrated database, publishing on `bus`, scheduling on `jobs`,
    /// reserving through `stock`.
    pub fn new(store: OrderStore, bus: Bus, jobs: Jobs, stock: Arc<dyn Stock>) -> OrdersService {
        OrdersService {
            store,
            bus,
            jobs,
            stock,
        }
    }

    /// Places an order for `caller` (see the module documentation).
    pub async fn create(
        &self,
        caller: &Principal,
        body: Value,
        key: Option<&str>,
    ) -> Result<Created, OrderError> {
        if !caller.may(Permission::Shop) {
            return Err(OrderError::Forbidden);
        }
        if let Some(key) = key {
            check_idempotency_key(key)?;
        }
        let hash = fingerprint(&body);
        if let Some(key) = key
            && let Some(stored) = self.store.by_key(&caller.subject, key).await?
        {
            return replay(stored, &hash);
        }
        let input = logicore_platform::http::json::parse_object::<OrderIn>(body)
            .map_err(|problem| OrderError::Rejected(Box::new(problem)))?
            .parse()
            .map_err(OrderError::Invalid)?;
        let created = now();
        let order = Order {
            id: OrderId::generate(),
            user_id: caller.subject.clone(),
            status: OrderStatus::Pending,
            items: Vec::new(),
            total_cents: 0,
            currency: String::new(),
            shipping_address: input.shipping_address,
            created_at: created,
            updated_at: created,
        };
        let mut tx = self.store.db().begin().await?;
        let reserved_here = match self.stock.reserve_in(&mut tx, order.id, &input.lines) {
            Some(reserving) => Some(reserving.await),
            None => None,
        };
        match reserved_here {
            Some(reserved) => {
                let reserved = reserved.map_err(stock_error)?;
                self.create_at_once(tx, order, &reserved, caller, key, &hash)
                    .await
            }
            None => {
                drop(tx);
                self.create_by_saga(order, &input.lines, caller, key, &hash)
                    .await
            }
        }
    }

    /// The order, its stock reservation (already in `tx`) and its event, in one commit.
    async fn create_at_once(
        &self,
        mut tx: Tx,
        mut order: Order,
        reserved: &[ReservedLine],
        caller: &Principal,
        key: Option<&str>,
        hash: &str,
    ) -> Result<Created, OrderError> {
        price(&mut order, reserved)?;
        if let Inserted::KeyTaken = self.store.insert(&mut tx, &order, key, hash).await? {
            // Another request with this key committed first: roll back, answer with its order.
            drop(tx);
            return self.replay_key(caller, key, hash).await;
        }
        self.publish(&mut tx, "order.created", &order).await?;
        tx.commit().await?;
        self.bus.wake();
        let products: Vec<_> = reserved.iter().map(|line| line.product_id).collect();
        let _ = self.stock.committed(&products).await;
        metrics::counter!("orders_created_total").increment(1);
        Ok(Created {
            order,
            replayed: false,
        })
    }

    /// The saga of the module documentation, for a catalog in another process.
    async fn create_by_saga(
        &self,
        mut order: Order,
        lines: &[ReserveLine],
        caller: &Principal,
        key: Option<&str>,
        hash: &str,
    ) -> Result<Created, OrderError> {
        // 1. The pending order and its timeout.
        let mut tx = self.store.db().begin().await?;
        if let Inserted::KeyTaken = self.store.insert(&mut tx, &order, key, hash).await? {
            drop(tx);
            return self.replay_key(caller, key, hash).await;
        }
        let abandon = NewJob::new(ABANDON_JOB, json!({ "order_id": order.id }))
            .at(order.created_at + chrono::Duration::from_std(ABANDON_AFTER).unwrap_or_default())
            .unique(abandon_key(order.id))
            .max_attempts(25);
        self.jobs.enqueue(&mut tx, abandon).await?;
        tx.commit().await?;

        // 2. The stock.
        let reserved = match self.stock.reserve(order.id, lines).await {
            Ok(reserved) => reserved,
            Err(error) => {
                if matches!(error, StockError::Unavailable { .. }) {
                    // The outcome is unknown: the catalog may still commit the reservation
                    // after this call gave up on it (a timeout). Give back what is there now
                    // (best effort), and again after the timeout, when a late commit is in.
                    let _ = self.stock.release(order.id).await;
                    self.forget_pending_releasing_later(order.id).await;
                    return Err(stock_error(error));
                }
                self.forget_pending(order.id).await;
                return Err(stock_error(error));
            }
        };
        if let Err(error) = price(&mut order, &reserved) {
            if self.stock.release(order.id).await.is_ok() {
                self.forget_pending(order.id).await;
            }
            return Err(error);
        }

        // 3. The order, its event, no more timeout.
        let completed = async {
            let mut tx = self.store.db().begin().await?;
            if !self.store.complete(&mut tx, &order).await? {
                return Ok(false);
            }
            self.publish(&mut tx, "order.created", &order).await?;
            self.jobs.cancel(&mut tx, &abandon_key(order.id)).await?;
            tx.commit().await?;
            Ok::<bool, sqlx::Error>(true)
        }
        .await;
        match completed {
            Ok(true) => {
                self.bus.wake();
                metrics::counter!("orders_created_total").increment(1);
                Ok(Created {
                    order,
                    replayed: false,
                })
            }
            Ok(false) => Err(OrderError::Conflict(
                "the order timed out while it was being created; nothing was ordered".into(),
            )),
            Err(err) => {
                // The abandon job gives the stock back if this cannot.
                if self.stock.release(order.id).await.is_ok() {
                    self.forget_pending(order.id).await;
                }
                Err(OrderError::Storage(err))
            }
        }
    }

    /// The answer for a key another request holds: its order, or "being processed".
    async fn replay_key(
        &self,
        caller: &Principal,
        key: Option<&str>,
        hash: &str,
    ) -> Result<Created, OrderError> {
        let key = key.unwrap_or_default();
        match self.store.by_key(&caller.subject, key).await? {
            Some(stored) => replay(stored, hash),
            None => Err(OrderError::Conflict(
                "a request with this Idempotency-Key is being processed; retry".into(),
            )),
        }
    }

    /// Deletes a pending order and its timeout (best effort: the timeout does it otherwise).
    async fn forget_pending(&self, id: OrderId) {
        self.forget(id, false).await;
    }

    /// [`Self::forget_pending`], leaving a stock release due after [`ABANDON_AFTER`] for a
    /// reservation whose outcome is unknown.
    async fn forget_pending_releasing_later(&self, id: OrderId) {
        self.forget(id, true).await;
    }

    async fn forget(&self, id: OrderId, release_later: bool) {
        let forgotten = async {
            let mut tx = self.store.db().begin().await?;
            self.store.delete_pending(&mut tx, id).await?;
            self.jobs.cancel(&mut tx, &abandon_key(id)).await?;
            if release_later {
                let due = chrono::Utc::now()
                    + chrono::Duration::from_std(ABANDON_AFTER).unwrap_or_default();
                let release = NewJob::new(RELEASE_JOB, json!({ "order_id": id }))
                    .at(due)
                    .unique(format!("{RELEASE_JOB}:{id}"))
                    .max_attempts(25);
                self.jobs.enqueue(&mut tx, release).await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(err) = forgotten {
            tracing::warn!(order = %id, error = %err, "cannot delete a failed pending order; its timeout will");
        }
    }

    async fn publish(
        &self,
        tx: &mut Tx,
        event_type: &str,
        order: &Order,
    ) -> Result<(), sqlx::Error> {
        let data = serde_json::to_value(order).unwrap_or(Value::Null);
        self.bus
            .publish(
                tx,
                NewEvent::new(SERVICE_NAME, event_type, Some(order.id.to_string()), data),
            )
            .await?;
        Ok(())
    }

    /// The order `id` when `caller` may see it (their own, or any with `ReadAllOrders`).
    pub async fn get(&self, caller: &Principal, id: OrderId) -> Result<Order, OrderError> {
        let stored = self.store.get(id).await?.ok_or(OrderError::NotFound)?;
        let order = stored.order;
        let visible = order.status != OrderStatus::Pending
            && (order.user_id == caller.subject || caller.may(Permission::ReadAllOrders));
        if visible {
            Ok(order)
        } else {
            Err(OrderError::NotFound)
        }
    }

    /// One page of the orders `caller` may see, newest first.
    pub async fn list(
        &self,
        caller: &Principal,
        page: &PageRequest,
    ) -> Result<Page<Order>, Problem> {
        let before = match &page.after {
            None => None,
            Some(bytes) => Some(Uuid::from_slice(bytes).map_err(|_| pagination::invalid_cursor())?),
        };
        let user = (!caller.may(Permission::ReadAllOrders)).then_some(caller.subject.as_str());
        let items = self
            .store
            .list(user, before, u64::from(page.limit) + 1)
            .await
            .map_err(OrderError::from)?;
        Ok(Page::from_overfetch(items, page.limit, |order| {
            order.id.as_uuid().as_bytes().to_vec()
        }))
    }

    /// Cancels an order of `caller` (or any, for admins) from created or confirmed; its
    /// stock goes back.
    pub async fn cancel(&self, caller: &Principal, id: OrderId) -> Result<Order, OrderError> {
        let order = self.get(caller, id).await?;
        if order.user_id != caller.subject && !caller.may(Permission::Administer) {
            return Err(OrderError::Forbidden);
        }
        self.change_status(order, OrderStatus::Cancelled).await
    }

    /// Moves an order along the status machine (admins).
    pub async fn set_status(
        &self,
        caller: &Principal,
        id: OrderId,
        status: OrderStatus,
    ) -> Result<Order, OrderError> {
        if !caller.may(Permission::Administer) {
            return Err(OrderError::Forbidden);
        }
        let order = self.get(caller, id).await?;
        self.change_status(order, status).await
    }

    async fn change_status(
        &self,
        mut order: Order,
        next: OrderStatus,
    ) -> Result<Order, OrderError> {
        let from = order.status;
        if !from.may_become(next) {
            return Err(OrderError::Conflict(format!(
                "an order that is {} cannot become {}",
                from.as_str(),
                next.as_str()
            )));
        }
        order.status = next;
        order.updated_at = now();
        let mut tx = self.store.db().begin().await?;
        if !self
            .store
            .set_status(&mut tx, order.id, from, next, order.updated_at)
            .await?
        {
            return Err(OrderError::Conflict(
                "the order changed meanwhile; read it again".into(),
            ));
        }
        self.publish(&mut tx, "order.status_changed", &order)
            .await?;
        let mut released_here = None;
        if next == OrderStatus::Cancelled {
            self.publish(&mut tx, "order.cancelled", &order).await?;
            let releasing = match self.stock.release_in(&mut tx, order.id) {
                Some(releasing) => Some(releasing.await),
                None => None,
            };
            match releasing {
                Some(products) => {
                    let products =
                        products.map_err(|err| OrderError::CatalogUnavailable(err.to_string()))?;
                    released_here = Some(products);
                }
                None => {
                    let release = NewJob::new(RELEASE_JOB, json!({ "order_id": order.id }))
                        .unique(format!("{RELEASE_JOB}:{}", order.id))
                        .max_attempts(25);
                    self.jobs.enqueue(&mut tx, release).await?;
                }
            }
        }
        tx.commit().await?;
        self.bus.wake();
        match released_here {
            Some(products) => {
                let _ = self.stock.committed(&products).await;
            }
            None if next == OrderStatus::Cancelled => {
                // At once when the catalog answers; the job retries otherwise (release is
                // idempotent, so the job then finds nothing left to do).
                if let Err(err) = self.stock.release(order.id).await {
                    tracing::warn!(order = %order.id, error = %err, "stock release deferred to its job");
                }
                self.jobs.wake();
            }
            None => {}
        }
        Ok(order)
    }

    /// The `orders.abandon` job: an order still pending after [`ABANDON_AFTER`] gives its
    /// stock back and is deleted.
    pub async fn abandon(&self, id: OrderId) -> Result<(), OrderError> {
        let Some(stored) = self.store.get(id).await? else {
            return Ok(());
        };
        if stored.order.status != OrderStatus::Pending {
            return Ok(());
        }
        self.stock
            .release(id)
            .await
            .map_err(|err| OrderError::CatalogUnavailable(err.to_string()))?;
        let mut tx = self.store.db().begin().await?;
        if self.store.delete_pending(&mut tx, id).await? {
            tracing::warn!(order = %id, "an order whose creation did not finish was abandoned; its stock is back");
        }
        tx.commit().await?;
        Ok(())
    }

    /// The `orders.release_stock` job.
    pub async fn release_stock(&self, id: OrderId) -> Result<(), OrderError> {
        self.stock
            .release(id)
            .await
            .map_err(|err| OrderError::CatalogUnavailable(err.to_string()))
    }
}

/// The answer to a request whose `Idempotency-Key` was seen before.
fn replay(stored: StoredOrder, hash: &str) -> Result<Created, OrderError> {
    if stored.request_hash.as_deref() != Some(hash) {
        return Err(OrderError::KeyReused);
    }
    if stored.order.status == OrderStatus::Pending {
        return Err(OrderError::Conflict(
            "a request with this Idempotency-Key is being processed; retry".into(),
        ));
    }
    Ok(Created {
        order: stored.order,
        replayed: true,
    })
}

/// Gives `order` its lines, total and currency from the reservation; status `created`.
fn price(order: &mut Order, reserved: &[ReservedLine]) -> Result<(), OrderError> {
    let lines = priced_lines(reserved)?;
    order.total_cents = lines
        .iter()
        .map(|line| line.unit_price_cents * i64::from(line.quantity))
        .sum();
    order.currency = reserved
        .first()
        .map(|line| line.currency.clone())
        .unwrap_or_default();
    order.items = lines;
    order.status = OrderStatus::Created;
    Ok(())
}

/// Order lines from reserved lines; every price must be in one currency.
fn priced_lines(reserved: &[ReservedLine]) -> Result<Vec<OrderLine>, OrderError> {
    let currency = reserved.first().map(|line| line.currency.as_str());
    let mut errors = Vec::new();
    for (index, line) in reserved.iter().enumerate() {
        if Some(line.currency.as_str()) != currency {
            errors.push(FieldError::new(
                format!("/items/{index}/product_id"),
                "is priced in another currency than the first line; order it separately",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(OrderError::Invalid(errors));
    }
    Ok(reserved
        .iter()
        .map(|line| OrderLine {
            product_id: line.product_id,
            sku: line.sku.clone(),
            name: line.name.clone(),
            quantity: line.quantity,
            unit_price_cents: line.unit_price_cents,
        })
        .collect())
}

fn stock_error(error: StockError) -> OrderError {
    match error {
        StockError::UnknownProduct { line } => OrderError::Invalid(vec![FieldError::new(
            format!("/items/{line}/product_id"),
            "no product has this id",
        )]),
        StockError::Insufficient { line, available } => OrderError::Conflict(format!(
            "not enough stock for /items/{line}: {available} left"
        )),
        StockError::Unavailable { message } => OrderError::CatalogUnavailable(message),
    }
}
