//! The seam between LogiCore services: typed ids, DTOs and API traits with clients that hide
//! whether the service runs in this process or elsewhere.
//!
//! Services depend on this crate and on `platform`, never on each other.

pub mod ids;
pub mod stock;

pub use ids::{CategoryId, OrderId, ProductId};
