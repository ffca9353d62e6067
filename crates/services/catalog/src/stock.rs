//! The catalog as the orders service's [`Stock`] when both run in one process: reservations
//! and releases then happen inside the orders transaction (one database, one commit).

use logicore_contracts::stock::{ReserveLine, ReservedLine, Stock, StockFuture};
use logicore_contracts::{OrderId, ProductId};
use logicore_platform::db::Tx;

use crate::CatalogService;

impl Stock for CatalogService {
    fn reserve<'a>(
        &'a self,
        order: OrderId,
        lines: &'a [ReserveLine],
    ) -> StockFuture<'a, Vec<ReservedLine>> {
        Box::pin(self.reserve_stock(order, lines))
    }

    fn release(&self, order: OrderId) -> StockFuture<'_, ()> {
        Box::pin(self.release_stock(order))
    }

    fn reserve_in<'a>(
        &'a self,
        tx: &'a mut Tx,
        order: OrderId,
        lines: &'a [ReserveLine],
    ) -> Option<StockFuture<'a, Vec<ReservedLine>>> {
        Some(Box::pin(CatalogService::reserve_stock_in(tx, order, lines)))
    }

    fn release_in<'a>(
        &'a self,
        tx: &'a mut Tx,
        order: OrderId,
    ) -> Option<StockFuture<'a, Vec<ProductId>>> {
        Some(Box::pin(CatalogService::release_stock_in(tx, order)))
    }

    fn committed<'a>(&'a self, products: &'a [ProductId]) -> StockFuture<'a, ()> {
        Box::pin(async move {
            self.stock_committed(products).await;
            Ok(())
        })
    }
}
