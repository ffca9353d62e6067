//! A TCP relay the test controls: put it between the platform and a backend, then cut it.

pub use logicore_platform::testing::TcpRelay as Relay;
