//! Stock reservations: what the orders service asks of the catalog.
//!
//! The catalog implements [`Stock`]; the assembly hands the orders service either the
//! catalog itself (same process) or a client that calls it over HTTP. A reservation is keyed
//! by the order id, all-or-nothing, and idempotent: reserving again for the same order
//! returns the same lines without taking more stock, and releasing twice gives back once.

use std::future::Future;
use std::pin::Pin;

use logicore_platform::db::Tx;
use serde::{Deserialize, Serialize};

use crate::{OrderId, ProductId};

/// One line to reserve.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveLine {
    /// The product.
    pub product_id: ProductId,
    /// Units (≥ 1).
    pub quantity: u32,
}

/// One reserved line with the product as it was when reserved (the price the order keeps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReservedLine {
    /// The product.
    pub product_id: ProductId,
    /// Its SKU.
    pub sku: String,
    /// Its name.
    pub name: String,
    /// Units reserved.
    pub quantity: u32,
    /// Unit price in minor units.
    pub unit_price_cents: i64,
    /// ISO 4217 currency of the price.
    pub currency: String,
}

/// Why a reservation was refused or could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "error", rename_all = "snake_case")]
pub enum StockError {
    /// No product has this id (`line` is its index in the request).
    #[error("no product has this id")]
    UnknownProduct {
        /// Index of the line.
        line: usize,
    },
    /// Fewer units in stock than asked.
    #[error("not enough stock")]
    Insufficient {
        /// Index of the line.
        line: usize,
        /// Units left.
        available: i64,
    },
    /// The catalog could not be reached or failed; nothing was reserved, or the same call
    /// may be repeated safely.
    #[error("the catalog is unavailable: {message}")]
    Unavailable {
        /// What went wrong.
        message: String,
    },
}

/// The future of a [`Stock`] call.
pub type StockFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, StockError>> + Send + 'a>>;

/// Stock levels, as the orders service sees them.
pub trait Stock: Send + Sync + 'static {
    /// Takes `lines` out of stock for `order`, all or nothing; repeating it for the same order
    /// returns the first reservation.
    fn reserve<'a>(
        &'a self,
        order: OrderId,
        lines: &'a [ReserveLine],
    ) -> StockFuture<'a, Vec<ReservedLine>>;

    /// Puts what was reserved for `order` back in stock (a no-op when nothing is reserved).
    fn release(&self, order: OrderId) -> StockFuture<'_, ()>;

    /// Reserves for a new `order` (written in the same transaction, so it has no
    /// reservation yet) inside the caller's transaction when the stock is kept in the
    /// caller's database (the catalog in the same process); `None` when it is elsewhere and
    /// the caller must use [`Stock::reserve`] around its own transaction. After an error the
    /// caller rolls its transaction back; after its commit it calls [`Stock::committed`].
    fn reserve_in<'a>(
        &'a self,
        _tx: &'a mut Tx,
        _order: OrderId,
        _lines: &'a [ReserveLine],
    ) -> Option<StockFuture<'a, Vec<ReservedLine>>> {
        None
    }

    /// Releases inside the caller's transaction, like [`Stock::reserve_in`]; returns the
    /// products whose stock changed.
    fn release_in<'a>(
        &'a self,
        _tx: &'a mut Tx,
        _order: OrderId,
    ) -> Option<StockFuture<'a, Vec<ProductId>>> {
        None
    }

    /// Tells the stock's owner that a transaction of the caller changed the stock of
    /// `products` and committed (cached copies must go).
    fn committed<'a>(&'a self, _products: &'a [ProductId]) -> StockFuture<'a, ()> {
        Box::pin(async { Ok(()) })
    }
}

/// The catalog's internal stock API, as served by a catalog on its own and called by
/// [`HttpStock`]: `PUT {RESERVATIONS_PATH}/{order_id}` with a [`ReserveRequest`] answers 200
/// with a [`ReserveResponse`], or a problem+json with a `stock_error` member (a
/// [`StockError`]) when refused; `DELETE {RESERVATIONS_PATH}/{order_id}` answers 204. Both
/// need a service token (`platform::auth::service_token`).
pub const RESERVATIONS_PATH: &str = "/internal/v1/stock/reservations";

/// Body of a reservation call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReserveRequest {
    /// What to reserve, all or nothing.
    pub lines: Vec<ReserveLine>,
}

/// Answer of a reservation call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReserveResponse {
    /// The reserved lines, in request order.
    pub lines: Vec<ReservedLine>,
}

mod http;

pub use http::HttpStock;
