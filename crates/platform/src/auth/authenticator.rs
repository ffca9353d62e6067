//! Bearer JWTs checked against the configured issuers: by the gateway at the edge, and by
//! services running on their own (split roles), which never believe identity from the network.
//!
//! Each issuer has an algorithm allow-list; a JWKS issuer only ever verifies with the public
//! keys its JWKS lists (an `HS256` token "signed" with such a public key is refused, and
//! symmetric keys in a JWKS are ignored), an HS256 issuer only with its shared secret, and
//! `alg: none` is never accepted. `exp` is required, `nbf` checked, both with `auth.leeway`;
//! `iss` and `aud` when the issuer sets them. Verified tokens are cached until they expire, so
//! a signature is checked once per token, not once per request.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::config::{IssuerConfig, JwtAlgorithm};
use jsonwebtoken::jwk::{AlgorithmParameters, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

/// Verified tokens kept at most.
const TOKEN_CACHE_ENTRIES: u64 = 100_000;

use crate::auth::Principal;

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The token has expired (beyond the leeway).
    #[error("the token has expired")]
    Expired,
    /// The token is malformed, forged, from an unknown issuer or key, or fails a claim check.
    #[error("the token is not valid: {0}")]
    Invalid(String),
}

/// Options of JWKS issuers.
#[derive(Debug, Clone, Copy)]
pub struct JwksOptions {
    /// Unknown `kid`s refresh the JWKS at most this often.
    pub min_refresh_interval: Duration,
    /// Time a JWKS fetch may take.
    pub fetch_timeout: Duration,
}

impl Default for JwksOptions {
    fn default() -> Self {
        JwksOptions {
            min_refresh_interval: Duration::from_secs(1),
            fetch_timeout: Duration::from_secs(5),
        }
    }
}

/// Verifies bearer tokens; cheap to clone.
#[derive(Clone)]
pub struct Authenticator {
    issuers: Arc<Vec<Issuer>>,
    cache: moka::sync::Cache<String, Arc<CachedPrincipal>>,
    leeway: u64,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self
            .issuers
            .iter()
            .map(|issuer| issuer.name.as_str())
            .collect();
        f.debug_struct("Authenticator")
            .field("issuers", &names)
            .finish()
    }
}

struct CachedPrincipal {
    principal: Arc<Principal>,
    expires_at: u64,
}

struct Issuer {
    name: String,
    expected_issuer: Option<String>,
    audience: Option<String>,
    algorithms: Vec<Algorithm>,
    roles_claim: String,
    keys: KeySource,
}

enum KeySource {
    Shared(DecodingKey),
    Jwks(Jwks),
}

struct Jwks {
    url: String,
    client: reqwest::Client,
    options: JwksOptions,
    keys: RwLock<Arc<HashMap<String, DecodingKey>>>,
    /// Serialises refreshes; holds when the last one happened.
    last_refresh: tokio::sync::Mutex<Option<tokio::time::Instant>>,
}

impl Authenticator {
    /// Builds the verifier of `[[gateway.auth.issuers]]`; issuers with neither a JWKS URL nor
    /// a shared secret (the platform's own before the users service exists) verify nothing.
    pub fn new(issuers: &[IssuerConfig], leeway: Duration, options: JwksOptions) -> Self {
        let client = reqwest::Client::builder()
            .timeout(options.fetch_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        let issuers = issuers
            .iter()
            .filter_map(|config| {
                let keys = if !config.hs256_secret.is_empty() {
                    KeySource::Shared(DecodingKey::from_secret(
                        config.hs256_secret.expose().as_bytes(),
                    ))
                } else if !config.jwks_url.is_empty() {
                    KeySource::Jwks(Jwks {
                        url: config.jwks_url.clone(),
                        client: client.clone(),
                        options,
                        keys: RwLock::new(Arc::new(HashMap::new())),
                        last_refresh: tokio::sync::Mutex::new(None),
                    })
                } else {
                    return None;
                };
                let shared = matches!(keys, KeySource::Shared(_));
                let algorithms = config
                    .algorithms
                    .iter()
                    .map(|algorithm| to_algorithm(*algorithm))
                    // A shared secret verifies HMAC only; a JWKS never verifies HMAC.
                    .filter(|algorithm| {
                        (algorithm.family() == jsonwebtoken::AlgorithmFamily::Hmac) == shared
                    })
                    .collect();
                Some(Issuer {
                    name: config.name.clone(),
                    expected_issuer: Some(config.issuer.clone()).filter(|text| !text.is_empty()),
                    audience: Some(config.audience.clone()).filter(|text| !text.is_empty()),
                    algorithms,
                    roles_claim: config.roles_claim.clone(),
                    keys,
                })
            })
            .collect();
        Authenticator {
            issuers: Arc::new(issuers),
            cache: moka::sync::Cache::new(TOKEN_CACHE_ENTRIES),
            leeway: leeway.as_secs(),
        }
    }

    /// Returns true when at least one issuer can verify tokens.
    pub fn has_issuers(&self) -> bool {
        !self.issuers.is_empty()
    }

    /// Verifies a bearer token and returns its principal.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let now = unix_now();
        if let Some(cached) = self.cache.get(token) {
            if cached.expires_at + self.leeway >= now {
                return Ok(Arc::clone(&cached.principal));
            }
            self.cache.invalidate(token);
            return Err(AuthError::Expired);
        }
        let header = jsonwebtoken::decode_header(token)
            .map_err(|err| AuthError::Invalid(format!("malformed token ({err})")))?;
        let unverified: Map<String, Value> = jsonwebtoken::dangerous::insecure_decode_claims(token)
            .map_err(|err| AuthError::Invalid(format!("malformed claims ({err})")))?;
        let claimed_issuer = unverified.get("iss").and_then(Value::as_str);

        let mut last_error =
            AuthError::Invalid("no configured issuer accepts this token".to_owned());
        for issuer in self.candidates(header.alg, claimed_issuer) {
            let key = match &issuer.keys {
                KeySource::Shared(key) => key.clone(),
                KeySource::Jwks(jwks) => {
                    let Some(kid) = header.kid.as_deref() else {
                        last_error = AuthError::Invalid("the token has no kid".to_owned());
                        continue;
                    };
                    match jwks.key(kid).await {
                        Some(key) => key,
                        None => {
                            last_error = AuthError::Invalid(format!("unknown key id `{kid}`"));
                            continue;
                        }
                    }
                }
            };
            if key.family() != header.alg.family() {
                last_error = AuthError::Invalid("the key does not match the algorithm".to_owned());
                continue;
            }
            match self.check(issuer, token, header.alg, &key) {
                Ok((principal, expires_at)) => {
                    let principal = Arc::new(principal);
                    let cached = CachedPrincipal {
                        principal: Arc::clone(&principal),
                        expires_at,
                    };
                    self.cache.insert(token.to_owned(), Arc::new(cached));
                    return Ok(principal);
                }
                Err(err) => last_error = err,
            }
        }
        Err(last_error)
    }

    /// Issuers that allow `alg`, those naming the token's `iss` first.
    fn candidates(&self, alg: Algorithm, claimed_issuer: Option<&str>) -> Vec<&Issuer> {
        let allowed = self
            .issuers
            .iter()
            .filter(|issuer| issuer.algorithms.contains(&alg));
        let (named, unnamed): (Vec<&Issuer>, Vec<&Issuer>) =
            allowed.partition(|issuer| issuer.expected_issuer.is_some());
        let matching = named
            .into_iter()
            .filter(|issuer| issuer.expected_issuer.as_deref() == claimed_issuer);
        matching.chain(unnamed).collect()
    }

    fn check(
        &self,
        issuer: &Issuer,
        token: &str,
        alg: Algorithm,
        key: &DecodingKey,
    ) -> Result<(Principal, u64), AuthError> {
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &issuer.audience {
            Some(audience) => validation.set_audience(&[audience]),
            None => validation.validate_aud = false,
        }
        if let Some(expected) = &issuer.expected_issuer {
            validation.set_issuer(&[expected]);
        }
        let data =
            jsonwebtoken::decode::<Map<String, Value>>(token, key, &validation).map_err(|err| {
                match err.kind() {
                    jsonwebtoken::errors::ErrorKind::ExpiredSignature => AuthError::Expired,
                    _ => AuthError::Invalid(err.to_string()),
                }
            })?;
        let claims = data.claims;
        let subject = claims
            .get("sub")
            .and_then(Value::as_str)
            .ok_or_else(|| AuthError::Invalid("`sub` must be a string".to_owned()))?
            .to_owned();
        let expires_at = claims.get("exp").and_then(Value::as_u64).unwrap_or(0);
        let roles = roles_from(claims.get(&issuer.roles_claim));
        Ok((
            Principal {
                subject,
                roles,
                issuer: issuer.name.clone(),
            },
            expires_at,
        ))
    }
}

/// Reads roles from an array of strings or a space/comma separated string.
fn roles_from(claim: Option<&Value>) -> Vec<String> {
    match claim {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect(),
        Some(Value::String(text)) => text
            .split([' ', ','])
            .filter(|role| !role.is_empty())
            .map(str::to_owned)
            .collect(),
        _ => Vec::new(),
    }
}

impl Jwks {
    /// Returns the key `kid`, refreshing the JWKS (at most once per interval) when unknown.
    async fn key(&self, kid: &str) -> Option<DecodingKey> {
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        let mut last_refresh = self.last_refresh.lock().await;
        // Another request may have refreshed while this one waited.
        if let Some(key) = self.cached(kid) {
            return Some(key);
        }
        let now = tokio::time::Instant::now();
        if last_refresh.is_some_and(|at| now.duration_since(at) < self.options.min_refresh_interval)
        {
            return None;
        }
        *last_refresh = Some(now);
        match self.fetch().await {
            Ok(keys) => {
                tracing::info!(url = %self.url, keys = keys.len(), "jwks refreshed");
                if let Ok(mut current) = self.keys.write() {
                    *current = Arc::new(keys);
                }
            }
            Err(err) => tracing::warn!(url = %self.url, error = %err, "jwks refresh failed"),
        }
        self.cached(kid)
    }

    fn cached(&self, kid: &str) -> Option<DecodingKey> {
        self.keys.read().ok()?.get(kid).cloned()
    }

    async fn fetch(&self) -> Result<HashMap<String, DecodingKey>, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|err| err.to_string())?;
        if !response.status().is_success() {
            return Err(format!("status {}", response.status()));
        }
        let set: JwkSet = response.json().await.map_err(|err| err.to_string())?;
        let mut keys = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = &jwk.common.key_id else {
                continue;
            };
            // Symmetric keys do not belong in a JWKS; using one would allow forgery.
            if matches!(jwk.algorithm, AlgorithmParameters::OctetKey(_)) {
                continue;
            }
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                keys.insert(kid.clone(), key);
            }
        }
        Ok(keys)
    }
}

fn to_algorithm(algorithm: JwtAlgorithm) -> Algorithm {
    match algorithm {
        JwtAlgorithm::EdDSA => Algorithm::EdDSA,
        JwtAlgorithm::RS256 => Algorithm::RS256,
        JwtAlgorithm::ES256 => Algorithm::ES256,
        JwtAlgorithm::HS256 => Algorithm::HS256,
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}
