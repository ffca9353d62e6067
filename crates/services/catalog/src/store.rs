//! Catalog storage: the only place with SQL. Constraint violations become domain errors here.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use logicore_contracts::stock::{ReserveLine, ReservedLine};
use logicore_contracts::{CategoryId, OrderId, ProductId};
use logicore_platform::bus::{Bus, NewEvent};
use logicore_platform::db::{self, Backend, Db, Tx, Violation};
use sea_query::{CaseStatement, Expr, ExprTrait, Iden, LockType, Order, Query, SelectStatement};
use uuid::Uuid;

use crate::domain::{Category, CategoryFields, Product, ProductFields};
use crate::error::CatalogError;

#[derive(Iden, Clone, Copy)]
enum Categories {
    Table,
    Id,
    Name,
    Slug,
    Description,
    CreatedAt,
    UpdatedAt,
}

#[derive(Iden, Clone, Copy)]
enum Products {
    Table,
    Id,
    Sku,
    Name,
    Description,
    PriceCents,
    Currency,
    Stock,
    CategoryId,
    CreatedAt,
    UpdatedAt,
}

#[derive(Debug, sqlx::FromRow)]
struct CategoryRow {
    id: Uuid,
    name: String,
    slug: String,
    description: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<CategoryRow> for Category {
    fn from(row: CategoryRow) -> Category {
        Category {
            id: CategoryId(row.id),
            fields: CategoryFields {
                name: row.name,
                slug: row.slug,
                description: row.description,
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct ProductRow {
    id: Uuid,
    sku: String,
    name: String,
    description: Option<String>,
    price_cents: i64,
    currency: String,
    stock: i64,
    category_id: Option<Uuid>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl From<ProductRow> for Product {
    fn from(row: ProductRow) -> Product {
        Product {
            id: ProductId(row.id),
            fields: ProductFields {
                sku: row.sku,
                name: row.name,
                description: row.description,
                price_cents: row.price_cents,
                currency: row.currency.trim_end().to_owned(),
                stock: row.stock,
                category_id: row.category_id.map(CategoryId),
            },
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }
}

/// Reads and writes categories and products.
#[derive(Debug, Clone)]
pub struct CatalogStore {
    db: Db,
    /// Where product events go (in the transaction of the change), when attached.
    bus: Option<Bus>,
}

impl CatalogStore {
    /// Wraps the database handle.
    pub fn new(db: Db) -> Self {
        CatalogStore { db, bus: None }
    }

    /// Writes `product.created|updated|deleted` events through `bus`'s outbox, in the
    /// transaction of each product change.
    pub fn with_events(mut self, bus: Bus) -> Self {
        self.bus = Some(bus);
        self
    }

    /// Publishes `product.<what>` carrying the product as stored in `tx` (before a delete,
    /// after any other change).
    async fn product_event(
        &self,
        tx: &mut Tx,
        id: ProductId,
        what: &str,
    ) -> Result<(), sqlx::Error> {
        let Some(bus) = &self.bus else {
            return Ok(());
        };
        let select = select_products()
            .and_where(Expr::col(Products::Id).eq(id.as_uuid()))
            .to_owned();
        let Some(row) = tx.fetch_optional::<ProductRow>(&select).await? else {
            return Ok(());
        };
        let data = serde_json::to_value(crate::dto::ProductOut::from(Product::from(row)))
            .unwrap_or_default();
        let event = NewEvent::new(
            crate::SERVICE_NAME,
            &format!("product.{what}"),
            Some(id.to_string()),
            data,
        );
        bus.publish(tx, event).await.map(drop)
    }

    /// Returns up to `limit` categories after `after`, in creation order.
    pub async fn list_categories(
        &self,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<Category>, CatalogError> {
        let mut select = select_categories();
        if let Some(after) = after {
            select.and_where(Expr::col(Categories::Id).gt(after));
        }
        select.order_by(Categories::Id, Order::Asc).limit(limit);
        let rows: Vec<CategoryRow> = self.db.fetch_all(&select).await?;
        Ok(rows.into_iter().map(Category::from).collect())
    }

    /// Returns one category by id.
    pub async fn get_category(&self, id: CategoryId) -> Result<Option<Category>, CatalogError> {
        let select = select_categories()
            .and_where(Expr::col(Categories::Id).eq(id.as_uuid()))
            .to_owned();
        let row: Option<CategoryRow> = self.db.fetch_optional(&select).await?;
        Ok(row.map(Category::from))
    }

    /// Returns one category by slug.
    pub async fn find_category_by_slug(
        &self,
        slug: &str,
    ) -> Result<Option<Category>, CatalogError> {
        let select = select_categories()
            .and_where(Expr::col(Categories::Slug).eq(slug))
            .to_owned();
        let row: Option<CategoryRow> = self.db.fetch_optional(&select).await?;
        Ok(row.map(Category::from))
    }

    /// Inserts a category.
    pub async fn insert_category(&self, category: &Category) -> Result<(), CatalogError> {
        let fields = &category.fields;
        let insert = Query::insert()
            .into_table(Categories::Table)
            .columns([
                Categories::Id,
                Categories::Name,
                Categories::Slug,
                Categories::Description,
                Categories::CreatedAt,
                Categories::UpdatedAt,
            ])
            .values_panic([
                category.id.as_uuid().into(),
                fields.name.clone().into(),
                fields.slug.clone().into(),
                fields.description.clone().into(),
                category.created_at.into(),
                category.updated_at.into(),
            ])
            .to_owned();
        self.write(&insert, category_violation).await.map(drop)
    }

    /// Replaces the writable fields of a category; false when it does not exist.
    pub async fn update_category(
        &self,
        id: CategoryId,
        fields: &CategoryFields,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let update = Query::update()
            .table(Categories::Table)
            .value(Categories::Name, fields.name.clone())
            .value(Categories::Slug, fields.slug.clone())
            .value(Categories::Description, fields.description.clone())
            .value(Categories::UpdatedAt, now)
            .and_where(Expr::col(Categories::Id).eq(id.as_uuid()))
            .to_owned();
        Ok(self.write(&update, category_violation).await? > 0)
    }

    /// Deletes a category; false when it does not exist.
    pub async fn delete_category(&self, id: CategoryId) -> Result<bool, CatalogError> {
        let delete = Query::delete()
            .from_table(Categories::Table)
            .and_where(Expr::col(Categories::Id).eq(id.as_uuid()))
            .to_owned();
        Ok(self.write(&delete, category_violation).await? > 0)
    }

    /// Returns up to `limit` products after `after`, optionally of one category.
    pub async fn list_products(
        &self,
        category: Option<CategoryId>,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<Product>, CatalogError> {
        let mut select = select_products();
        if let Some(category) = category {
            select.and_where(Expr::col(Products::CategoryId).eq(category.as_uuid()));
        }
        if let Some(after) = after {
            select.and_where(Expr::col(Products::Id).gt(after));
        }
        select.order_by(Products::Id, Order::Asc).limit(limit);
        let rows: Vec<ProductRow> = self.db.fetch_all(&select).await?;
        Ok(rows.into_iter().map(Product::from).collect())
    }

    /// Returns one product by id.
    pub async fn get_product(&self, id: ProductId) -> Result<Option<Product>, CatalogError> {
        let select = select_products()
            .and_where(Expr::col(Products::Id).eq(id.as_uuid()))
            .to_owned();
        let row: Option<ProductRow> = self.db.fetch_optional(&select).await?;
        Ok(row.map(Product::from))
    }

    /// Inserts a product.
    pub async fn insert_product(&self, product: &Product) -> Result<(), CatalogError> {
        let fields = &product.fields;
        let insert = Query::insert()
            .into_table(Products::Table)
            .columns([
                Products::Id,
                Products::Sku,
                Products::Name,
                Products::Description,
                Products::PriceCents,
                Products::Currency,
                Products::Stock,
                Products::CategoryId,
                Products::CreatedAt,
                Products::UpdatedAt,
            ])
            .values_panic([
                product.id.as_uuid().into(),
                fields.sku.clone().into(),
                fields.name.clone().into(),
                fields.description.clone().into(),
                fields.price_cents.into(),
                fields.currency.clone().into(),
                fields.stock.into(),
                fields.category_id.map(|id| id.as_uuid()).into(),
                product.created_at.into(),
                product.updated_at.into(),
            ])
            .to_owned();
        self.write_product(&insert, product.id, "created")
            .await
            .map(drop)
    }

    /// Replaces the writable fields of a product; false when it does not exist.
    pub async fn update_product(
        &self,
        id: ProductId,
        fields: &ProductFields,
        now: DateTime<Utc>,
    ) -> Result<bool, CatalogError> {
        let update = Query::update()
            .table(Products::Table)
            .value(Products::Sku, fields.sku.clone())
            .value(Products::Name, fields.name.clone())
            .value(Products::Description, fields.description.clone())
            .value(Products::PriceCents, fields.price_cents)
            .value(Products::Currency, fields.currency.clone())
            .value(Products::Stock, fields.stock)
            .value(
                Products::CategoryId,
                fields.category_id.map(|id| id.as_uuid()),
            )
            .value(Products::UpdatedAt, now)
            .and_where(Expr::col(Products::Id).eq(id.as_uuid()))
            .to_owned();
        Ok(self.write_product(&update, id, "updated").await? > 0)
    }

    /// Deletes a product; false when it does not exist.
    pub async fn delete_product(&self, id: ProductId) -> Result<bool, CatalogError> {
        let delete = Query::delete()
            .from_table(Products::Table)
            .and_where(Expr::col(Products::Id).eq(id.as_uuid()))
            .to_owned();
        Ok(self.write_product(&delete, id, "deleted").await? > 0)
    }

    /// Runs one product write in its own transaction with its event (the product as it was
    /// for a delete, as it is for the rest).
    async fn write_product(
        &self,
        statement: &impl db::SqlxBinder,
        id: ProductId,
        what: &str,
    ) -> Result<u64, CatalogError> {
        let mut tx: Tx = self.db.begin().await?;
        if what == "deleted" {
            self.product_event(&mut tx, id, what).await?;
        }
        let affected = tx
            .execute(statement)
            .await
            .map_err(|err| translated(err, product_violation))?;
        if affected == 0 {
            // Nothing changed (no such product): no event either.
            return Ok(0);
        }
        if what != "deleted" {
            self.product_event(&mut tx, id, what).await?;
        }
        tx.commit().await?;
        if let Some(bus) = &self.bus {
            bus.wake();
        }
        Ok(affected)
    }

    /// Runs one write in its own transaction, translating constraint violations.
    async fn write(
        &self,
        statement: &impl db::SqlxBinder,
        translate: fn(Violation) -> CatalogError,
    ) -> Result<u64, CatalogError> {
        let mut tx: Tx = self.db.begin().await?;
        let affected = tx
            .execute(statement)
            .await
            .map_err(|err| translated(err, translate))?;
        tx.commit().await?;
        Ok(affected)
    }
}

/// A storage error, its constraint violations turned into domain errors by `translate`.
fn translated(err: sqlx::Error, translate: fn(Violation) -> CatalogError) -> CatalogError {
    match db::violation(&err) {
        Some(violation) => translate(violation),
        None => CatalogError::Storage(err),
    }
}

fn category_violation(violation: Violation) -> CatalogError {
    match violation {
        Violation::Unique => CatalogError::SlugTaken,
        Violation::ForeignKey => CatalogError::CategoryInUse,
    }
}

fn product_violation(violation: Violation) -> CatalogError {
    match violation {
        Violation::Unique => CatalogError::SkuTaken,
        Violation::ForeignKey => CatalogError::UnknownCategory,
    }
}

fn select_categories() -> SelectStatement {
    Query::select()
        .columns([
            Categories::Id,
            Categories::Name,
            Categories::Slug,
            Categories::Description,
            Categories::CreatedAt,
            Categories::UpdatedAt,
        ])
        .from(Categories::Table)
        .to_owned()
}

fn select_products() -> SelectStatement {
    Query::select()
        .columns([
            Products::Id,
            Products::Sku,
            Products::Name,
            Products::Description,
            Products::PriceCents,
            Products::Currency,
            Products::Stock,
            Products::CategoryId,
            Products::CreatedAt,
            Products::UpdatedAt,
        ])
        .from(Products::Table)
        .to_owned()
}

#[derive(Iden, Clone, Copy)]
enum StockReservations {
    Table,
    OrderId,
    Line,
    ProductId,
    Quantity,
    Sku,
    Name,
    UnitPriceCents,
    Currency,
}

#[derive(Debug, sqlx::FromRow)]
struct ReservationRow {
    product_id: Uuid,
    quantity: i32,
    sku: String,
    name: String,
    unit_price_cents: i64,
    currency: String,
}

impl From<ReservationRow> for ReservedLine {
    fn from(row: ReservationRow) -> ReservedLine {
        ReservedLine {
            product_id: ProductId(row.product_id),
            sku: row.sku,
            name: row.name,
            quantity: u32::try_from(row.quantity).unwrap_or(0),
            unit_price_cents: row.unit_price_cents,
            currency: row.currency,
        }
    }
}

#[derive(Debug, sqlx::FromRow)]
struct TakenRow {
    id: Uuid,
    sku: String,
    name: String,
    price_cents: i64,
    currency: String,
}

#[derive(Debug, sqlx::FromRow)]
struct StockRow {
    stock: i64,
}

/// Why a reservation could not be made.
#[derive(Debug)]
pub enum ReserveFailure {
    /// A line's product does not exist.
    Unknown(usize),
    /// A line asks for more than is in stock.
    Short(usize, i64),
    /// The database failed.
    Storage(sqlx::Error),
}

impl From<sqlx::Error> for ReserveFailure {
    fn from(error: sqlx::Error) -> Self {
        ReserveFailure::Storage(error)
    }
}

fn reservation_lines(order: OrderId) -> SelectStatement {
    Query::select()
        .columns([
            StockReservations::ProductId,
            StockReservations::Quantity,
            StockReservations::Sku,
            StockReservations::Name,
            StockReservations::UnitPriceCents,
            StockReservations::Currency,
        ])
        .from(StockReservations::Table)
        .and_where(Expr::col(StockReservations::OrderId).eq(order.as_uuid()))
        .order_by(StockReservations::Line, Order::Asc)
        .to_owned()
}

impl CatalogStore {
    /// Takes `lines` out of stock for `order` in one transaction (all or nothing) and records
    /// the reservation; returns the recorded lines when `order` already has a reservation.
    pub async fn reserve(
        &self,
        order: OrderId,
        lines: &[ReserveLine],
        now: DateTime<Utc>,
    ) -> Result<Vec<ReservedLine>, ReserveFailure> {
        let mut tx = self.db.begin().await?;
        let existing: Vec<ReservationRow> = tx.fetch_all(&reservation_lines(order)).await?;
        if !existing.is_empty() {
            return Ok(existing.into_iter().map(ReservedLine::from).collect());
        }
        let reserved = Self::reserve_in(&mut tx, order, lines, now).await?;
        tx.commit().await?;
        Ok(reserved)
    }

    /// Takes each line's quantity (summed per product) from products that have enough;
    /// returns the products taken by id. Any product missing from the answer means the whole
    /// reservation fails, and the caller rolls back what was taken.
    ///
    /// One statement takes them all. On PostgreSQL its subquery locks the rows in id order
    /// first (`ORDER BY id FOR UPDATE`: the update itself would lock them in whatever order
    /// its plan visits them), so two orders never wait on each other's row locks in a cycle;
    /// SQLite has one writer and no such waits.
    async fn take_stock(
        tx: &mut Tx,
        lines: &[ReserveLine],
        now: DateTime<Utc>,
    ) -> Result<HashMap<Uuid, TakenRow>, sqlx::Error> {
        let mut wanted: BTreeMap<Uuid, i64> = BTreeMap::new();
        for line in lines {
            *wanted.entry(line.product_id.as_uuid()).or_default() += i64::from(line.quantity);
        }
        let ids = || Expr::col(Products::Id).is_in(wanted.keys().copied());
        let chosen = match tx.backend() {
            Backend::Postgres if wanted.len() > 1 => {
                let mut locked = Query::select()
                    .column(Products::Id)
                    .from(Products::Table)
                    .and_where(ids())
                    .order_by(Products::Id, Order::Asc)
                    .to_owned();
                locked.lock(LockType::Update);
                // The plain condition too, so the plan finds the rows by their key.
                ids().and(Expr::col(Products::Id).in_subquery(locked))
            }
            _ => ids(),
        };
        let quantity: Expr = match (wanted.len(), wanted.values().next()) {
            (1, Some(only)) => Expr::val(*only),
            _ => wanted
                .iter()
                .fold(CaseStatement::new(), |case, (id, quantity)| {
                    case.case(Expr::col(Products::Id).eq(*id), *quantity)
                })
                .into(),
        };
        let take = Query::update()
            .table(Products::Table)
            .value(
                Products::Stock,
                Expr::col(Products::Stock).sub(quantity.clone()),
            )
            .value(Products::UpdatedAt, now)
            .and_where(chosen)
            .and_where(Expr::col(Products::Stock).gte(quantity))
            .returning(Query::returning().columns([
                Products::Id,
                Products::Sku,
                Products::Name,
                Products::PriceCents,
                Products::Currency,
            ]))
            .to_owned();
        let rows: Vec<TakenRow> = tx.fetch_all(&take).await?;
        Ok(rows.into_iter().map(|row| (row.id, row)).collect())
    }

    /// Takes `lines` out of stock for a new `order` (one that has no reservation: it is
    /// being written in the same transaction) inside the caller's transaction; nothing is
    /// committed, and after an error the caller rolls back.
    pub async fn reserve_in(
        tx: &mut Tx,
        order: OrderId,
        lines: &[ReserveLine],
        now: DateTime<Utc>,
    ) -> Result<Vec<ReservedLine>, ReserveFailure> {
        let taken = Self::take_stock(tx, lines, now).await?;
        // The first line (in product order) whose product could not be taken tells why.
        let mut by_product: Vec<(usize, &ReserveLine)> = lines.iter().enumerate().collect();
        by_product.sort_by_key(|(_, line)| line.product_id);
        if let Some(&(index, line)) = by_product
            .iter()
            .find(|(_, line)| !taken.contains_key(&line.product_id.as_uuid()))
        {
            let left = Query::select()
                .column(Products::Stock)
                .from(Products::Table)
                .and_where(Expr::col(Products::Id).eq(line.product_id.as_uuid()))
                .to_owned();
            let left: Option<StockRow> = tx.fetch_optional(&left).await?;
            return Err(match left {
                None => ReserveFailure::Unknown(index),
                Some(row) => ReserveFailure::Short(index, row.stock),
            });
        }
        let reserved: Vec<Option<ReservedLine>> = lines
            .iter()
            .map(|line| {
                let taken = taken.get(&line.product_id.as_uuid())?;
                Some(ReservedLine {
                    product_id: line.product_id,
                    sku: taken.sku.clone(),
                    name: taken.name.clone(),
                    quantity: line.quantity,
                    unit_price_cents: taken.price_cents,
                    currency: taken.currency.clone(),
                })
            })
            .collect();
        let reserved: Vec<ReservedLine> = reserved.into_iter().flatten().collect();
        let mut insert = Query::insert()
            .into_table(StockReservations::Table)
            .columns([
                StockReservations::OrderId,
                StockReservations::Line,
                StockReservations::ProductId,
                StockReservations::Quantity,
                StockReservations::Sku,
                StockReservations::Name,
                StockReservations::UnitPriceCents,
                StockReservations::Currency,
            ])
            .to_owned();
        for (index, line) in reserved.iter().enumerate() {
            insert.values_panic([
                order.as_uuid().into(),
                i32::try_from(index).unwrap_or(i32::MAX).into(),
                line.product_id.as_uuid().into(),
                i32::try_from(line.quantity).unwrap_or(i32::MAX).into(),
                line.sku.clone().into(),
                line.name.clone().into(),
                line.unit_price_cents.into(),
                line.currency.clone().into(),
            ]);
        }
        // The order is new (see above): no reservation of it can exist.
        tx.execute_later(&insert).await?;
        Ok(reserved)
    }

    /// Puts `order`'s reserved units back and forgets the reservation; returns the products
    /// whose stock changed.
    pub async fn release(
        &self,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Vec<ProductId>, sqlx::Error> {
        let mut tx = self.db.begin().await?;
        let released = Self::release_in(&mut tx, order, now).await?;
        tx.commit().await?;
        Ok(released)
    }

    /// [`CatalogStore::release`] inside the caller's transaction (nothing is committed).
    ///
    /// The reservation is deleted first and only the transaction whose delete found it gives
    /// the stock back: two releases racing (the order service and its retry job, say) give
    /// back once, since the second delete waits for the first and then finds nothing.
    pub async fn release_in(
        tx: &mut Tx,
        order: OrderId,
        now: DateTime<Utc>,
    ) -> Result<Vec<ProductId>, sqlx::Error> {
        let forget = Query::delete()
            .from_table(StockReservations::Table)
            .and_where(Expr::col(StockReservations::OrderId).eq(order.as_uuid()))
            .returning(Query::returning().columns([
                StockReservations::ProductId,
                StockReservations::Quantity,
                StockReservations::Sku,
                StockReservations::Name,
                StockReservations::UnitPriceCents,
                StockReservations::Currency,
            ]))
            .to_owned();
        let mut lines: Vec<ReservationRow> = tx.fetch_all(&forget).await?;
        // Products are locked in id order, as reservations lock them: no deadlock.
        lines.sort_by_key(|line| line.product_id);
        for line in &lines {
            let give_back = Query::update()
                .table(Products::Table)
                .value(
                    Products::Stock,
                    Expr::col(Products::Stock).add(i64::from(line.quantity)),
                )
                .value(Products::UpdatedAt, now)
                .and_where(Expr::col(Products::Id).eq(line.product_id))
                .to_owned();
            tx.execute(&give_back).await?;
        }
        Ok(lines
            .into_iter()
            .map(|line| ProductId(line.product_id))
            .collect())
    }
}
