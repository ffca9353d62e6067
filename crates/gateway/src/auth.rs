//! Authentication at the edge: the platform's bearer-token verifier (shared with services that
//! run on their own).

pub use logicore_platform::auth::Principal;
pub use logicore_platform::auth::authenticator::*;
