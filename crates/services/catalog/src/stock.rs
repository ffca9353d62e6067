//! The catalog as the orders service's [`Stock`] when both run in one process.

use logicore_contracts::OrderId;
use logicore_contracts::stock::{ReserveLine, ReservedLine, Stock, StockFuture};

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
}
