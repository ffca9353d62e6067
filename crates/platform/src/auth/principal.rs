//! Who is calling, as services see it, and what their roles allow (RBAC).
//!
//! In `logicore up` the gateway verifies the bearer token and hands the [`Principal`] to the
//! in-process services as a request extension; handlers take it with the [`Caller`]
//! extractor (401 when absent) and check permissions with [`Caller::require`] (403).

use std::sync::Arc;

use axum::extract::FromRequestParts;
use http::request::Parts;

use crate::http::{ErrorCode, Problem};

/// A verified caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The `sub` claim.
    pub subject: String,
    /// Roles from the issuer's roles claim.
    pub roles: Vec<String>,
    /// The name of the issuer that vouched for it.
    pub issuer: String,
}

/// Something a role may be allowed to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Create, change and delete products and categories.
    CatalogWrite,
    /// Use `/api/v1/admin/*`: users, roles, OAuth clients.
    Administer,
    /// Read operational data (jobs, upstreams) without changing accounts.
    Operate,
    /// See every order, not only one's own.
    ReadAllOrders,
    /// Place orders and manage one's own resources.
    Shop,
}

/// The permissions of a role (`admin`, `catalog_manager`, `ops`, `customer`); unknown roles
/// have none.
pub fn permissions_of(role: &str) -> &'static [Permission] {
    use Permission::*;
    match role {
        "admin" => &[CatalogWrite, Administer, Operate, ReadAllOrders, Shop],
        "catalog_manager" => &[CatalogWrite, Shop],
        "ops" => &[Operate, ReadAllOrders],
        "customer" => &[Shop],
        _ => &[],
    }
}

impl Principal {
    /// Returns true when one of the caller's roles grants `permission`.
    pub fn may(&self, permission: Permission) -> bool {
        self.roles
            .iter()
            .any(|role| permissions_of(role).contains(&permission))
    }
}

/// The verified caller of a request; rejects with 401 problem+json when there is none.
#[derive(Debug, Clone)]
pub struct Caller(pub Arc<Principal>);

impl Caller {
    /// Returns `Ok` when the caller has `permission`, else a 403 problem.
    pub fn require(&self, permission: Permission) -> Result<(), Problem> {
        if self.0.may(permission) {
            Ok(())
        } else {
            Err(Problem::new(
                ErrorCode::Forbidden,
                "your roles do not allow this",
            ))
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Arc<Principal>>()
            .map(|principal| Caller(Arc::clone(principal)))
            .ok_or_else(|| {
                Problem::new(
                    ErrorCode::Unauthorized,
                    "sign in first: this needs a bearer token",
                )
            })
    }
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| {
            // The scheme is case-insensitive (RFC 9110 §11.1).
            let (scheme, token) = value.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then_some(token)
        })
        .map(str::trim)
        .filter(|token| !token.is_empty())
}

/// Middleware for a service running on its own (split roles): a bearer token is verified
/// here, against the platform's JWKS, and becomes the request's [`Principal`]; identity
/// headers from the network are never believed. A request without a token goes on
/// anonymous (handlers decide); a token that does not verify is 401.
pub async fn verify_bearer(
    axum::extract::State(authenticator): axum::extract::State<crate::auth::Authenticator>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    if request.extensions().get::<Arc<Principal>>().is_none() {
        let token = bearer_token(request.headers()).map(str::to_owned);
        if let Some(token) = token {
            match authenticator.verify(&token).await {
                Ok(principal) => {
                    request.extensions_mut().insert(principal);
                }
                Err(err) => {
                    return Problem::new(ErrorCode::Unauthorized, err.to_string()).into_response();
                }
            }
        }
    }
    next.run(request).await
}

/// Middleware for a service router: requests other than GET, HEAD and OPTIONS need a caller
/// (401) whose roles grant `permission` (403).
pub async fn guard_writes(
    axum::extract::State(permission): axum::extract::State<Permission>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let safe = matches!(
        *request.method(),
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    if !safe {
        let caller = request.extensions().get::<Arc<Principal>>();
        let Some(caller) = caller else {
            return Problem::new(
                ErrorCode::Unauthorized,
                "sign in first: this needs a bearer token",
            )
            .into_response();
        };
        if !caller.may(permission) {
            return Problem::new(ErrorCode::Forbidden, "your roles do not allow this")
                .into_response();
        }
    }
    next.run(request).await
}

#[cfg(test)]
mod tests {
    use axum::extract::FromRequestParts;

    use super::*;

    fn principal(roles: &[&str]) -> Principal {
        Principal {
            subject: "u1".into(),
            roles: roles.iter().map(|role| (*role).to_owned()).collect(),
            issuer: "logicore".into(),
        }
    }

    #[test]
    fn roles_grant_their_permissions_only() {
        assert!(principal(&["admin"]).may(Permission::Administer));
        assert!(principal(&["catalog_manager"]).may(Permission::CatalogWrite));
        assert!(!principal(&["catalog_manager"]).may(Permission::Administer));
        assert!(!principal(&["customer"]).may(Permission::CatalogWrite));
        assert!(principal(&["customer", "ops"]).may(Permission::ReadAllOrders));
        assert!(
            !principal(&["superuser"]).may(Permission::Shop),
            "unknown roles grant nothing"
        );
    }

    #[tokio::test]
    async fn the_extractor_gives_401_without_a_caller_and_403_without_the_permission() {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        let missing = Caller::from_request_parts(&mut parts, &())
            .await
            .unwrap_err();
        assert_eq!(missing.code, ErrorCode::Unauthorized);

        parts.extensions.insert(Arc::new(principal(&["customer"])));
        let caller = Caller::from_request_parts(&mut parts, &()).await.unwrap();
        assert!(caller.require(Permission::Shop).is_ok());
        let refused = caller.require(Permission::CatalogWrite).unwrap_err();
        assert_eq!(refused.code, ErrorCode::Forbidden);
    }
}
