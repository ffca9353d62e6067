//! Catalog storage: the only place with SQL. Constraint violations become domain errors here.

use chrono::{DateTime, Utc};
use logicore_contracts::{CategoryId, ProductId};
use logicore_platform::db::{self, Db, Tx, Violation};
use sea_query::{Expr, ExprTrait, Iden, Order, Query, SelectStatement};
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
}

impl CatalogStore {
    /// Wraps the database handle.
    pub fn new(db: Db) -> Self {
        CatalogStore { db }
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
        self.write(&insert, product_violation).await.map(drop)
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
        Ok(self.write(&update, product_violation).await? > 0)
    }

    /// Deletes a product; false when it does not exist.
    pub async fn delete_product(&self, id: ProductId) -> Result<bool, CatalogError> {
        let delete = Query::delete()
            .from_table(Products::Table)
            .and_where(Expr::col(Products::Id).eq(id.as_uuid()))
            .to_owned();
        Ok(self.write(&delete, product_violation).await? > 0)
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
            .map_err(|err| match db::violation(&err) {
                Some(violation) => translate(violation),
                None => CatalogError::Storage(err),
            })?;
        tx.commit().await?;
        Ok(affected)
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
