//! Catalog operations: the rules that span a request (ids, timestamps, lookups by slug).

use chrono::{DateTime, SubsecRound, Utc};
use logicore_contracts::stock::{ReserveLine, ReservedLine, StockError};
use logicore_contracts::{CategoryId, OrderId, ProductId};
use logicore_platform::cache::QueryCache;
use logicore_platform::db::{Db, Tx};
use logicore_platform::http::{Page, PageRequest, Problem, pagination};
use uuid::Uuid;

use crate::domain::{Category, CategoryFields, Product, ProductFields};
use crate::error::CatalogError;
use crate::store::{CatalogStore, ReserveFailure};

/// How `GET /products?category=` names the category.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CategoryFilter {
    /// By id.
    Id(CategoryId),
    /// By slug.
    Slug(String),
}

impl CategoryFilter {
    /// Reads a filter value: a UUID is an id, anything else a slug.
    pub fn parse(text: &str) -> Self {
        match text.parse::<CategoryId>() {
            Ok(id) => CategoryFilter::Id(id),
            Err(_) => CategoryFilter::Slug(text.to_owned()),
        }
    }
}

/// The catalog service; cheap to clone.
#[derive(Debug, Clone)]
pub struct CatalogService {
    store: CatalogStore,
    cache: Option<QueryCache>,
    guard_writes: bool,
}

impl CatalogService {
    /// Creates the service over a database that has the catalog migrations applied.
    pub fn new(db: Db) -> Self {
        CatalogService {
            store: CatalogStore::new(db),
            cache: None,
            guard_writes: false,
        }
    }

    /// Product changes write `product.created|updated|deleted` events (the product as data)
    /// through `bus` in their transaction.
    pub fn with_events(mut self, bus: logicore_platform::bus::Bus) -> Self {
        self.store = self.store.with_events(bus);
        self
    }

    /// Writes need a caller with the `CatalogWrite` permission (roles admin or
    /// catalog_manager), handed over by the gateway as a request extension.
    pub fn with_write_guard(mut self) -> Self {
        self.guard_writes = true;
        self
    }

    /// Whether writes are guarded.
    pub fn guards_writes(&self) -> bool {
        self.guard_writes
    }

    /// Caches product and category reads by id in `cache`; writes invalidate what they
    /// change once committed.
    pub fn with_cache(mut self, cache: QueryCache) -> Self {
        self.cache = Some(cache);
        self
    }

    async fn cached<T, F, Fut>(&self, key: String, load: F) -> Result<T, CatalogError>
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<T, CatalogError>>,
    {
        match &self.cache {
            Some(cache) => cache.get_or_load(&key, load).await,
            None => load().await,
        }
    }

    async fn invalidate(&self, key: String) {
        if let Some(cache) = &self.cache {
            cache.invalidate(&[key]).await;
        }
    }

    /// Returns one page of categories.
    pub async fn list_categories(&self, page: &PageRequest) -> Result<Page<Category>, Problem> {
        let after = cursor_id(page)?;
        let items = self
            .store
            .list_categories(after, u64::from(page.limit) + 1)
            .await?;
        Ok(Page::from_overfetch(items, page.limit, |category| {
            category.id.as_uuid().as_bytes().to_vec()
        }))
    }

    /// Returns one category.
    pub async fn get_category(&self, id: CategoryId) -> Result<Category, CatalogError> {
        self.cached(category_key(id), || async {
            self.store
                .get_category(id)
                .await?
                .ok_or(CatalogError::NotFound("category"))
        })
        .await
    }

    /// Creates a category.
    pub async fn create_category(&self, fields: CategoryFields) -> Result<Category, CatalogError> {
        let now = now();
        let category = Category {
            id: CategoryId::generate(),
            fields,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_category(&category).await?;
        Ok(category)
    }

    /// Replaces a category's fields.
    pub async fn replace_category(
        &self,
        id: CategoryId,
        fields: CategoryFields,
    ) -> Result<Category, CatalogError> {
        if !self.store.update_category(id, &fields, now()).await? {
            return Err(CatalogError::NotFound("category"));
        }
        self.invalidate(category_key(id)).await;
        self.get_category(id).await
    }

    /// Deletes a category that has no products.
    pub async fn delete_category(&self, id: CategoryId) -> Result<(), CatalogError> {
        if !self.store.delete_category(id).await? {
            return Err(CatalogError::NotFound("category"));
        }
        self.invalidate(category_key(id)).await;
        Ok(())
    }

    /// Returns one page of products, optionally of one category.
    pub async fn list_products(
        &self,
        filter: Option<CategoryFilter>,
        page: &PageRequest,
    ) -> Result<Page<Product>, Problem> {
        let after = cursor_id(page)?;
        let category = match filter {
            None => None,
            Some(CategoryFilter::Id(id)) => Some(id),
            Some(CategoryFilter::Slug(slug)) => {
                match self.store.find_category_by_slug(&slug).await? {
                    Some(category) => Some(category.id),
                    None => {
                        return Ok(Page::from_overfetch(Vec::new(), page.limit, |_| Vec::new()));
                    }
                }
            }
        };
        let items = self
            .store
            .list_products(category, after, u64::from(page.limit) + 1)
            .await?;
        Ok(Page::from_overfetch(items, page.limit, |product| {
            product.id.as_uuid().as_bytes().to_vec()
        }))
    }

    /// Returns one product.
    pub async fn get_product(&self, id: ProductId) -> Result<Product, CatalogError> {
        self.cached(product_key(id), || async {
            self.store
                .get_product(id)
                .await?
                .ok_or(CatalogError::NotFound("product"))
        })
        .await
    }

    /// Creates a product.
    pub async fn create_product(&self, fields: ProductFields) -> Result<Product, CatalogError> {
        let now = now();
        let product = Product {
            id: ProductId::generate(),
            fields,
            created_at: now,
            updated_at: now,
        };
        self.store.insert_product(&product).await?;
        Ok(product)
    }

    /// Replaces a product's fields.
    pub async fn replace_product(
        &self,
        id: ProductId,
        fields: ProductFields,
    ) -> Result<Product, CatalogError> {
        if !self.store.update_product(id, &fields, now()).await? {
            return Err(CatalogError::NotFound("product"));
        }
        self.invalidate(product_key(id)).await;
        self.get_product(id).await
    }

    /// Deletes a product.
    pub async fn delete_product(&self, id: ProductId) -> Result<(), CatalogError> {
        if !self.store.delete_product(id).await? {
            return Err(CatalogError::NotFound("product"));
        }
        self.invalidate(product_key(id)).await;
        Ok(())
    }
}

impl CatalogService {
    /// Reserves stock for an order (see [`logicore_contracts::stock::Stock`]); the cached
    /// products whose stock changed are invalidated after the commit.
    pub async fn reserve_stock(
        &self,
        order: OrderId,
        lines: &[ReserveLine],
    ) -> Result<Vec<ReservedLine>, StockError> {
        match self.store.reserve(order, lines, now()).await {
            Ok(reserved) => {
                for line in &reserved {
                    self.invalidate(product_key(line.product_id)).await;
                }
                Ok(reserved)
            }
            Err(failure) => Err(stock_error(failure)),
        }
    }

    /// Reserves inside the caller's transaction (same database); see
    /// [`logicore_contracts::stock::Stock::reserve_in`].
    pub async fn reserve_stock_in(
        tx: &mut Tx,
        order: OrderId,
        lines: &[ReserveLine],
    ) -> Result<Vec<ReservedLine>, StockError> {
        CatalogStore::reserve_in(tx, order, lines, now())
            .await
            .map_err(stock_error)
    }

    /// Releases inside the caller's transaction (same database).
    pub async fn release_stock_in(
        tx: &mut Tx,
        order: OrderId,
    ) -> Result<Vec<ProductId>, StockError> {
        CatalogStore::release_in(tx, order, now())
            .await
            .map_err(|err| StockError::Unavailable {
                message: err.to_string(),
            })
    }

    /// Drops the cached copies of products whose stock changed in a committed transaction.
    pub async fn stock_committed(&self, products: &[ProductId]) {
        for product in products {
            self.invalidate(product_key(*product)).await;
        }
    }

    /// Gives an order's reserved stock back.
    pub async fn release_stock(&self, order: OrderId) -> Result<(), StockError> {
        let released =
            self.store
                .release(order, now())
                .await
                .map_err(|err| StockError::Unavailable {
                    message: err.to_string(),
                })?;
        for product in released {
            self.invalidate(product_key(product)).await;
        }
        Ok(())
    }
}

fn stock_error(failure: ReserveFailure) -> StockError {
    match failure {
        ReserveFailure::Unknown(line) => StockError::UnknownProduct { line },
        ReserveFailure::Short(line, available) => StockError::Insufficient { line, available },
        ReserveFailure::Storage(err) => StockError::Unavailable {
            message: err.to_string(),
        },
    }
}

fn product_key(id: ProductId) -> String {
    format!("product:{id}")
}

fn category_key(id: CategoryId) -> String {
    format!("category:{id}")
}

/// Timestamps are kept to the microsecond, PostgreSQL's precision, so both backends agree.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn cursor_id(page: &PageRequest) -> Result<Option<Uuid>, Problem> {
    match &page.after {
        None => Ok(None),
        Some(bytes) => Uuid::from_slice(bytes)
            .map(Some)
            .map_err(|_| pagination::invalid_cursor()),
    }
}
