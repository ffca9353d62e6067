//! Request and response bodies (SPEC §3 resource shapes) and their parsing into domain types.

use chrono::{DateTime, Utc};
use logicore_contracts::CategoryId;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::{self, Category, CategoryFields, Checker, Product, ProductFields};
use crate::error::CatalogError;

/// A category as written by clients (`POST`, `PUT`; `PATCH` merges into it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CategoryIn {
    /// Display name (required, 1–200 characters).
    #[schema(required = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// URL-safe unique name; derived from the name when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub slug: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl CategoryIn {
    /// Checks every field; all errors are reported together.
    pub fn parse(self) -> Result<CategoryFields, CatalogError> {
        let mut checker = Checker::default();
        let name = domain::check_name(&mut checker, "/name", self.name);
        let slug = domain::check_slug(&mut checker, self.slug, name.as_deref());
        let description = domain::check_description(&mut checker, self.description);
        checker
            .finish(|| {
                Some(CategoryFields {
                    name: name?,
                    slug: slug?,
                    description,
                })
            })
            .map_err(CatalogError::Invalid)
    }
}

impl From<&CategoryFields> for CategoryIn {
    fn from(fields: &CategoryFields) -> Self {
        CategoryIn {
            name: Some(fields.name.clone()),
            slug: Some(fields.slug.clone()),
            description: fields.description.clone(),
        }
    }
}

/// A category as the API returns it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct CategoryOut {
    /// Id.
    pub id: Uuid,
    /// Display name.
    pub name: String,
    /// URL-safe unique name.
    pub slug: String,
    /// Free text, or null.
    pub description: Option<String>,
    /// Creation time (RFC 3339, UTC).
    pub created_at: DateTime<Utc>,
    /// Last change (RFC 3339, UTC).
    pub updated_at: DateTime<Utc>,
}

impl From<Category> for CategoryOut {
    fn from(category: Category) -> Self {
        CategoryOut {
            id: category.id.as_uuid(),
            name: category.fields.name,
            slug: category.fields.slug,
            description: category.fields.description,
            created_at: category.created_at,
            updated_at: category.updated_at,
        }
    }
}

/// A product as written by clients (`POST`, `PUT`; `PATCH` merges into it).
#[derive(Debug, Clone, Default, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProductIn {
    /// Stock-keeping unit, unique (1–64 of `[A-Za-z0-9._-]`).
    #[schema(required = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sku: Option<String>,
    /// Display name (1–200 characters).
    #[schema(required = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Free text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Price in minor units (≥ 0).
    #[schema(required = true, minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub price_cents: Option<i64>,
    /// ISO 4217 currency code.
    #[schema(required = true, example = "EUR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Units in stock (≥ 0).
    #[schema(required = true, minimum = 0)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stock: Option<i64>,
    /// Category id, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub category_id: Option<Uuid>,
}

impl ProductIn {
    /// Checks every field; all errors are reported together.
    pub fn parse(self) -> Result<ProductFields, CatalogError> {
        let mut checker = Checker::default();
        let sku = domain::check_sku(&mut checker, self.sku);
        let name = domain::check_name(&mut checker, "/name", self.name);
        let description = domain::check_description(&mut checker, self.description);
        let price_cents =
            domain::check_non_negative(&mut checker, "/price_cents", self.price_cents);
        let currency = domain::check_currency(&mut checker, self.currency);
        let stock = domain::check_non_negative(&mut checker, "/stock", self.stock);
        checker
            .finish(|| {
                Some(ProductFields {
                    sku: sku?,
                    name: name?,
                    description,
                    price_cents: price_cents?,
                    currency: currency?,
                    stock: stock?,
                    category_id: self.category_id.map(CategoryId),
                })
            })
            .map_err(CatalogError::Invalid)
    }
}

impl From<&ProductFields> for ProductIn {
    fn from(fields: &ProductFields) -> Self {
        ProductIn {
            sku: Some(fields.sku.clone()),
            name: Some(fields.name.clone()),
            description: fields.description.clone(),
            price_cents: Some(fields.price_cents),
            currency: Some(fields.currency.clone()),
            stock: Some(fields.stock),
            category_id: fields.category_id.map(|id| id.as_uuid()),
        }
    }
}

/// A product as the API returns it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ProductOut {
    /// Id.
    pub id: Uuid,
    /// Stock-keeping unit.
    pub sku: String,
    /// Display name.
    pub name: String,
    /// Free text, or null.
    pub description: Option<String>,
    /// Price in minor units.
    pub price_cents: i64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Units in stock.
    pub stock: i64,
    /// Category id, or null.
    pub category_id: Option<Uuid>,
    /// Creation time (RFC 3339, UTC).
    pub created_at: DateTime<Utc>,
    /// Last change (RFC 3339, UTC).
    pub updated_at: DateTime<Utc>,
}

impl From<Product> for ProductOut {
    fn from(product: Product) -> Self {
        let fields = product.fields;
        ProductOut {
            id: product.id.as_uuid(),
            sku: fields.sku,
            name: fields.name,
            description: fields.description,
            price_cents: fields.price_cents,
            currency: fields.currency,
            stock: fields.stock,
            category_id: fields.category_id.map(|id| id.as_uuid()),
            created_at: product.created_at,
            updated_at: product.updated_at,
        }
    }
}

/// One page of categories.
#[derive(Debug, Serialize, ToSchema)]
pub struct CategoryPage {
    /// The categories of this page.
    pub items: Vec<CategoryOut>,
    /// Cursor of the next page, or null on the last one.
    pub next_cursor: Option<String>,
}

/// One page of products.
#[derive(Debug, Serialize, ToSchema)]
pub struct ProductPage {
    /// The products of this page.
    pub items: Vec<ProductOut>,
    /// Cursor of the next page, or null on the last one.
    pub next_cursor: Option<String>,
}
