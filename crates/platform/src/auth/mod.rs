//! Authentication and authorization building blocks shared by services: password hashing,
//! token-signing keys, and the verified caller with its role permissions.

pub mod authenticator;
pub mod password;
pub mod principal;
pub mod redirect;
pub mod service_token;
pub mod signing;

pub use authenticator::{AuthError, Authenticator, JwksOptions};
pub use principal::{Caller, Permission, Principal, bearer_token, guard_writes, verify_bearer};
pub use redirect::{redirect_uri_matches, redirect_uri_problem};
pub use service_token::{CallingService, ServiceTokens, require_service_token};
