//! Service-to-service tokens (SPEC §4 "Trust"): when roles run apart, a service calling
//! another proves it is part of the platform with a short-lived HS256 token signed with
//! `internal.token_key`, which every role shares. The token names the caller (`sub` =
//! `service:<name>`) and the callee (`aud`), so a token minted for one service is refused
//! by another. Identity headers are never believed; user tokens never pass here.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::http::{ErrorCode, Problem};

/// The shortest `internal.token_key` accepted: 32 bytes, the strength of HS256.
pub const MIN_KEY_LEN: usize = 32;

/// How long a minted token is valid.
const TOKEN_TTL: Duration = Duration::from_secs(60);

/// A minted token is reused until this much of its life is left.
const REUSE_UNTIL_LEFT: Duration = Duration::from_secs(20);

/// The `iss` of every service token.
const ISSUER: &str = "logicore-internal";

/// Why `internal.token_key` cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenKeyError {
    /// It is empty.
    #[error("is not set")]
    Missing,
    /// It is shorter than [`MIN_KEY_LEN`].
    #[error("is shorter than {MIN_KEY_LEN} characters")]
    TooShort,
}

#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    aud: String,
    iat: u64,
    exp: u64,
}

/// Mints and checks service tokens with the shared key.
#[derive(Clone)]
pub struct ServiceTokens {
    inner: Arc<Inner>,
}

struct Inner {
    service: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// The last token minted per audience, with its expiry.
    minted: Mutex<Vec<(String, String, u64)>>,
}

impl std::fmt::Debug for ServiceTokens {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ServiceTokens")
            .field("service", &self.inner.service)
            .finish_non_exhaustive()
    }
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

impl ServiceTokens {
    /// Tokens of the service `service` (its name in discovery) signed with `key`.
    pub fn new(key: &str, service: &str) -> Result<ServiceTokens, TokenKeyError> {
        if key.is_empty() {
            return Err(TokenKeyError::Missing);
        }
        if key.len() < MIN_KEY_LEN {
            return Err(TokenKeyError::TooShort);
        }
        Ok(ServiceTokens {
            inner: Arc::new(Inner {
                service: service.to_owned(),
                encoding: EncodingKey::from_secret(key.as_bytes()),
                decoding: DecodingKey::from_secret(key.as_bytes()),
                minted: Mutex::new(Vec::new()),
            }),
        })
    }

    /// A token for calling `audience`; reused while it has a while to live.
    pub fn token_for(&self, audience: &str) -> String {
        let now = now();
        let mut minted = self
            .inner
            .minted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some((_, token, expires)) = minted.iter().find(|(to, _, _)| to == audience)
            && now + REUSE_UNTIL_LEFT.as_secs() < *expires
        {
            return token.clone();
        }
        let claims = Claims {
            iss: ISSUER.to_owned(),
            sub: format!("service:{}", self.inner.service),
            aud: audience.to_owned(),
            iat: now,
            exp: now + TOKEN_TTL.as_secs(),
        };
        // Signing HS256 with a byte key cannot fail.
        let token = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &self.inner.encoding,
        )
        .unwrap_or_default();
        minted.retain(|(to, _, _)| to != audience);
        minted.push((audience.to_owned(), token.clone(), claims.exp));
        token
    }

    /// Checks a token sent to this service; returns the calling service's name.
    pub fn verify(&self, token: &str) -> Result<String, String> {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[&self.inner.service]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = 5;
        let data = jsonwebtoken::decode::<Claims>(token, &self.inner.decoding, &validation)
            .map_err(|err| format!("the service token does not verify: {err}"))?;
        data.claims
            .sub
            .strip_prefix("service:")
            .map(str::to_owned)
            .ok_or_else(|| "the service token names no service".to_owned())
    }
}

/// The service that made an internal call (a request extension set by
/// [`require_service_token`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallingService(pub String);

/// Middleware for internal routes: a valid service token for this service, or 401.
/// Without a key (`None`) every call is refused.
pub async fn require_service_token(
    axum::extract::State(tokens): axum::extract::State<Option<ServiceTokens>>,
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let Some(tokens) = tokens else {
        return Problem::new(
            ErrorCode::Unauthorized,
            "internal calls are refused: internal.token_key is not set on this service",
        )
        .into_response();
    };
    let Some(token) = crate::auth::bearer_token(request.headers()) else {
        return Problem::new(ErrorCode::Unauthorized, "this needs a service token").into_response();
    };
    match tokens.verify(token) {
        Ok(caller) => {
            request.extensions_mut().insert(CallingService(caller));
            next.run(request).await
        }
        Err(message) => Problem::new(ErrorCode::Unauthorized, message).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn a_token_verifies_at_its_audience_only() {
        let orders = ServiceTokens::new(KEY, "orders").unwrap();
        let catalog = ServiceTokens::new(KEY, "catalog").unwrap();
        let users = ServiceTokens::new(KEY, "users").unwrap();
        let token = orders.token_for("catalog");
        assert_eq!(catalog.verify(&token).unwrap(), "orders");
        assert!(users.verify(&token).is_err(), "minted for the catalog");
        assert_eq!(orders.token_for("catalog"), token, "reused while fresh");
    }

    #[test]
    fn another_key_or_a_user_token_is_refused() {
        let orders = ServiceTokens::new("another key of thirty-two chars!", "orders").unwrap();
        let catalog = ServiceTokens::new(KEY, "catalog").unwrap();
        assert!(catalog.verify(&orders.token_for("catalog")).is_err());
        assert!(
            catalog
                .verify("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.")
                .is_err()
        );
    }

    #[test]
    fn short_or_missing_keys_are_refused() {
        assert_eq!(
            ServiceTokens::new("", "orders").unwrap_err(),
            TokenKeyError::Missing
        );
        assert_eq!(
            ServiceTokens::new("short", "orders").unwrap_err(),
            TokenKeyError::TooShort
        );
    }
}
