//! Accounts and tokens: registration, sign-in, refresh-token rotation, signing keys.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SubsecRound, Utc};
use logicore_platform::auth::password;
use logicore_platform::auth::signing::{self, KeyAlgorithm, SigningKey};
use logicore_platform::crypto::masking::mask_ssn;
use logicore_platform::crypto::{FieldContext, KeyRing};
use logicore_platform::db::Db;
use logicore_platform::http::FieldError;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::error::UsersError;
use crate::store::{Grant, RefreshRow, UserRow, UsersStore};

/// Role given at registration.
pub const DEFAULT_ROLE: &str = "customer";
/// `aud` of issued access tokens.
pub const AUDIENCE: &str = "logicore";

/// Token settings from `[auth]`.
#[derive(Debug, Clone)]
pub struct TokenSettings {
    /// `iss` of issued tokens.
    pub issuer: String,
    /// Access token lifetime.
    pub access_ttl: Duration,
    /// Refresh token lifetime.
    pub refresh_ttl: Duration,
    /// A PKCS#8 PEM Ed25519 key to sign with instead of generated ones
    /// (`auth.signing_key_file`).
    pub key_file: Option<std::path::PathBuf>,
    /// Clock skew allowed when verifying tokens.
    pub leeway: Duration,
    /// OAuth clients from the configuration (`[[auth.clients]]`).
    pub clients: Vec<logicore_platform::config::OAuthClientConfig>,
    /// External OpenID Connect providers (`[[auth.providers]]`).
    pub providers: Vec<logicore_platform::config::ProviderConfig>,
}

/// A sign-in's tokens.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Tokens {
    /// A JWT (EdDSA) for `Authorization: Bearer`.
    pub access_token: String,
    /// Always `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque; exchange it at `/api/v1/auth/refresh` (single use).
    pub refresh_token: String,
}

#[derive(Serialize)]
struct Claims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: String,
    roles: Vec<String>,
    iat: i64,
    exp: i64,
    jti: String,
    /// The sign-in session (refresh-token family): revoking it ends the session.
    sid: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    client_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    scope: Option<&'a str>,
}

/// The claims of an access token this service signed.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct AccessClaims {
    /// Issuer.
    pub iss: String,
    /// The account.
    pub sub: String,
    /// Its roles when the token was issued.
    #[serde(default)]
    pub roles: Vec<String>,
    /// Issued at (seconds).
    pub iat: i64,
    /// Expiry (seconds).
    pub exp: i64,
    /// Token id.
    pub jti: String,
    /// The sign-in session (refresh-token family).
    #[serde(default)]
    pub sid: Option<String>,
    /// The OAuth client it was issued to.
    #[serde(default)]
    pub client_id: Option<String>,
    /// The OAuth scope.
    #[serde(default)]
    pub scope: Option<String>,
}

/// Failed sign-ins per account before it is locked out for [`LOCKOUT`].
pub const MAX_FAILED_SIGN_INS: u32 = 10;
/// How long failed sign-ins are remembered (and the lockout lasts).
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);

fn failure_counts() -> moka::sync::Cache<String, u32> {
    moka::sync::Cache::builder()
        .max_capacity(100_000)
        .time_to_live(LOCKOUT)
        .build()
}

/// How often a running service looks for a new signing key.
const KEY_RELOAD_INTERVAL: Duration = Duration::from_secs(5);
/// Clock skew allowed on top of the token lifetime before an old key leaves the JWKS.
const KEY_GRACE: Duration = Duration::from_secs(60);

/// Makes a new signing key (`logicore keys jwt-rotate`): running services publish it and sign
/// with it within seconds; older keys stay in the JWKS until their tokens have expired.
/// Both algorithms are rotated: the Ed25519 key of access tokens and the RSA key of ID tokens.
/// Returns the new Ed25519 key's id.
pub async fn rotate_signing_key(db: &Db, ring: &KeyRing) -> Result<String, UsersError> {
    let store = UsersStore::new(db.clone());
    let rsa = tokio::task::spawn_blocking(SigningKey::generate_rsa)
        .await
        .map_err(|err| UsersError::Keys(err.to_string()))?;
    store
        .insert_signing_key(rsa.kid(), &rsa.encrypted_private_key(ring), now())
        .await?;
    let key = SigningKey::generate();
    store
        .insert_signing_key(key.kid(), &key.encrypted_private_key(ring), now())
        .await?;
    Ok(key.kid().to_owned())
}

/// Roles an account may be given.
pub const ROLES: [&str; 4] = ["admin", "catalog_manager", "ops", "customer"];

/// Creates an account with `roles` (operators: `logicore users create`, the bootstrap
/// admin). Validation as for registration, and every role must be known.
pub async fn create_account(
    db: &Db,
    email: String,
    password_text: String,
    name: String,
    roles: &[String],
) -> Result<UserRow, UsersError> {
    create_with_roles(
        &UsersStore::new(db.clone()),
        email,
        password_text,
        name,
        roles,
    )
    .await
}

async fn create_with_roles(
    store: &UsersStore,
    email: String,
    password_text: String,
    name: String,
    roles: &[String],
) -> Result<UserRow, UsersError> {
    let mut errors = check_account(&email, &password_text, &name);
    errors.extend(check_roles(roles));
    if !errors.is_empty() {
        return Err(UsersError::Invalid(errors));
    }
    let user = insert_account(store, email, password_text, name, roles.join(",")).await?;
    // An operator vouches for the addresses of the accounts they make.
    crate::oauth::store::OAuthStore::new(store.db().clone())
        .mark_email_verified(user.id)
        .await?;
    Ok(user)
}

/// The field error of a role list that is empty or names an unknown role.
fn check_roles(roles: &[String]) -> Option<FieldError> {
    (roles.is_empty() || roles.iter().any(|role| !ROLES.contains(&role.as_str()))).then(|| {
        FieldError::new(
            "/roles",
            "roles must be among admin, catalog_manager, ops, customer",
        )
    })
}

/// Field errors of an account's e-mail, password and name.
fn check_account(email: &str, password_text: &str, name: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let email = email.trim().to_lowercase();
    let valid_email = (3..=254).contains(&email.len())
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty()
                && domain.contains('.')
                && !domain.starts_with('.')
                && !domain.ends_with('.')
        })
        && !email.chars().any(char::is_whitespace);
    if !valid_email {
        errors.push(FieldError::new("/email", "must be an e-mail address"));
    }
    if let Some(problem) = password::policy_violation(password_text) {
        errors.push(FieldError::new("/password", problem));
    }
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 200 {
        errors.push(FieldError::new("/name", "must be 1-200 characters"));
    }
    errors
}

async fn insert_account(
    store: &UsersStore,
    email: String,
    password_text: String,
    name: String,
    roles: String,
) -> Result<UserRow, UsersError> {
    let now = now();
    let user = UserRow {
        id: Uuid::now_v7(),
        email: email.trim().to_lowercase(),
        name: name.trim().to_owned(),
        password_hash: password::hash(password_text).await,
        roles,
        ssn: None,
        created_at: now,
        updated_at: now,
    };
    store.insert_user(&user).await?;
    Ok(user)
}

/// The first start's admin: when no account has the `admin` role, one is created from
/// `email` and `password`, or with a generated password that is returned (to be shown once).
pub async fn ensure_admin(
    db: &Db,
    email: &str,
    password_text: Option<String>,
) -> Result<Option<(UserRow, Option<String>)>, UsersError> {
    let store = UsersStore::new(db.clone());
    if store.any_admin().await? {
        return Ok(None);
    }
    let generated = password_text
        .is_none()
        .then(|| random_token()[..24].to_owned());
    let password_text = password_text
        .or_else(|| generated.clone())
        .unwrap_or_default();
    let user = create_account(
        db,
        email.to_owned(),
        password_text,
        "Administrator".to_owned(),
        &["admin".to_owned()],
    )
    .await?;
    Ok(Some((user, generated)))
}

/// The users service; cheap to clone.
#[derive(Debug, Clone)]
pub struct UsersService {
    store: UsersStore,
    ring: Arc<KeyRing>,
    settings: Arc<TokenSettings>,
    /// Signing keys, the active (newest) first.
    keys: Arc<RwLock<Vec<Arc<SigningKey>>>>,
    /// Recent failed sign-ins by (lower-cased) e-mail, in this process.
    failures: moka::sync::Cache<String, u32>,
    /// `auth.signing_key_file`'s key: it signs access tokens.
    file_key: Option<Arc<SigningKey>>,
}

pub(crate) fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

pub(crate) fn random_token() -> String {
    let mut bytes = [0u8; 32];
    if aws_lc_rs::rand::fill(&mut bytes).is_err() {
        panic!("the system random number generator failed");
    }
    URL_SAFE_NO_PAD.encode(bytes)
}

fn ssn_context(row: &str) -> FieldContext<'_> {
    FieldContext {
        table: "users",
        column: "ssn",
        row,
    }
}

/// Where card numbers are stored, for their associated data.
pub fn card_context(row: &str) -> FieldContext<'_> {
    FieldContext {
        table: "payment_methods",
        column: "card_number",
        row,
    }
}

fn is_ssn(text: &str) -> bool {
    let bytes = text.as_bytes();
    bytes.len() == 11
        && bytes.iter().enumerate().all(|(index, byte)| match index {
            3 | 6 => *byte == b'-',
            _ => byte.is_ascii_digit(),
        })
}

/// A random password for accounts created without one: 24 characters (144 bits).
pub fn random_password() -> String {
    random_token()[..24].to_owned()
}

pub(crate) fn token_hash(token: &str) -> String {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
    URL_SAFE_NO_PAD.encode(digest.as_ref())
}

impl UsersService {
    /// Opens the service: loads the signing keys (decrypting them with `ring`), creating the
    /// first one when there is none.
    pub async fn start(
        db: Db,
        ring: Arc<KeyRing>,
        settings: TokenSettings,
    ) -> Result<Self, UsersError> {
        let store = UsersStore::new(db);
        let file_key = match &settings.key_file {
            None => None,
            Some(path) => {
                let pem = std::fs::read_to_string(path).map_err(|err| {
                    UsersError::Keys(format!(
                        "config key `auth.signing_key_file`: cannot read {}: {err}",
                        path.display()
                    ))
                })?;
                let key = SigningKey::from_pem(&pem).map_err(|err| {
                    UsersError::Keys(format!("config key `auth.signing_key_file`: {err}"))
                })?;
                tracing::info!(
                    kid = key.kid(),
                    alg = key.algorithm().name(),
                    "signing access tokens with the key of auth.signing_key_file"
                );
                Some(Arc::new(key))
            }
        };
        let service = UsersService {
            store,
            ring,
            settings: Arc::new(settings),
            keys: Arc::new(RwLock::new(Vec::new())),
            failures: failure_counts(),
            file_key,
        };
        service.reload_keys().await?;
        // The first start makes one key of each algorithm: Ed25519 for access tokens, RSA for
        // ID tokens (a configured key file replaces the first, and the second when it is RSA).
        let wanted: &[KeyAlgorithm] = match service.file_key.as_ref().map(|key| key.algorithm()) {
            None => &[KeyAlgorithm::Rs256, KeyAlgorithm::EdDsa],
            Some(KeyAlgorithm::EdDsa) => &[KeyAlgorithm::Rs256],
            Some(KeyAlgorithm::Rs256) => &[],
        };
        for &algorithm in wanted {
            if service.active_key(algorithm).is_ok() {
                continue;
            }
            let key = match algorithm {
                KeyAlgorithm::EdDsa => SigningKey::generate(),
                KeyAlgorithm::Rs256 => tokio::task::spawn_blocking(SigningKey::generate_rsa)
                    .await
                    .map_err(|err| UsersError::Keys(err.to_string()))?,
            };
            service
                .store
                .insert_signing_key(key.kid(), &key.encrypted_private_key(&service.ring), now())
                .await?;
            tracing::info!(
                kid = key.kid(),
                alg = algorithm.name(),
                "generated a token-signing key"
            );
        }
        service.reload_keys().await?;
        // A key made by `logicore keys jwt-rotate` (another process) is picked up by itself.
        let reloading = service.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(KEY_RELOAD_INTERVAL);
            every.tick().await;
            loop {
                every.tick().await;
                if let Err(err) = reloading.reload_keys().await {
                    tracing::warn!(error = %err, "cannot reload the token-signing keys");
                }
            }
        });
        Ok(service)
    }

    /// Reads the signing keys again: the newest signs; an older one stays published until
    /// the last token it signed has expired (its successor's age is over the token lifetime
    /// plus a minute of clock skew).
    pub async fn reload_keys(&self) -> Result<(), UsersError> {
        let rows = self.store.signing_keys().await?;
        let now = Utc::now();
        let grace = chrono::Duration::from_std(self.settings.access_ttl + KEY_GRACE)
            .unwrap_or(chrono::Duration::MAX);
        let mut keys = Vec::new();
        // The newest key of each algorithm seen so far (rows come newest first).
        let mut successors: Vec<(KeyAlgorithm, DateTime<Utc>)> = Vec::new();
        for row in rows {
            let key = SigningKey::from_encrypted(&row.kid, &row.private_key, &self.ring)
                .map_err(|err| UsersError::Keys(err.to_string()))?;
            let successor = successors
                .iter()
                .find(|(algorithm, _)| *algorithm == key.algorithm())
                .map(|(_, created)| *created);
            if successor.is_none() {
                successors.push((key.algorithm(), row.created_at));
            }
            if successor.is_some_and(|newer| now - newer > grace) {
                continue;
            }
            keys.push(Arc::new(key));
        }
        if let Some(file_key) = &self.file_key {
            // Database keys serve only what the file key cannot: RS256 ID tokens.
            keys.retain(|key| {
                file_key.algorithm() == KeyAlgorithm::EdDsa
                    && key.algorithm() == KeyAlgorithm::Rs256
            });
            keys.insert(0, Arc::clone(file_key));
        }
        let changed = {
            let current = self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            current
                .iter()
                .map(|key| key.kid())
                .ne(keys.iter().map(|key| key.kid()))
        };
        if changed {
            if let Some(active) = keys.first() {
                tracing::info!(
                    active = active.kid(),
                    published = keys.len(),
                    "token-signing keys loaded"
                );
            }
            *self
                .keys
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = keys;
        }
        Ok(())
    }

    /// The newest key of `algorithm`.
    fn active_key(&self, algorithm: KeyAlgorithm) -> Result<Arc<SigningKey>, UsersError> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.iter()
            .find(|key| key.algorithm() == algorithm)
            .cloned()
            .ok_or_else(|| UsersError::Keys(format!("no {} signing key", algorithm.name())))
    }

    /// The key that signs access tokens: the configured key file's, else the newest Ed25519
    /// key.
    pub(crate) fn access_key(&self) -> Result<Arc<SigningKey>, UsersError> {
        match &self.file_key {
            Some(key) => Ok(Arc::clone(key)),
            None => self.active_key(KeyAlgorithm::EdDsa),
        }
    }

    /// The key that signs ID tokens: the newest RSA key (RS256, as OpenID Connect requires).
    pub(crate) fn id_token_key(&self) -> Result<Arc<SigningKey>, UsersError> {
        self.active_key(KeyAlgorithm::Rs256)
    }

    /// Verifies an access token this service issued (signature with a published key, `aud`,
    /// `exp` with `auth.leeway`) and returns its caller; used when no gateway vouched for
    /// the request (the users role on its own).
    pub fn verify(&self, token: &str) -> Option<logicore_platform::auth::Principal> {
        let claims = self.verify_access(token, true)?;
        Some(logicore_platform::auth::Principal {
            subject: claims.sub,
            roles: claims.roles,
            issuer: "logicore".to_owned(),
        })
    }

    /// The claims of an access token this service signed (`aud` = `logicore`, a published
    /// key); `check_expiry` false accepts an expired one (revocation).
    pub(crate) fn verify_access(&self, token: &str, check_expiry: bool) -> Option<AccessClaims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let kid = header.kid?;
        let key = {
            let keys = self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            keys.iter().find(|key| key.kid() == kid).cloned()?
        };
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(key.jwk()).ok()?;
        let decoding = jsonwebtoken::DecodingKey::from_jwk(&jwk).ok()?;
        let algorithm = match key.algorithm() {
            KeyAlgorithm::EdDsa => jsonwebtoken::Algorithm::EdDSA,
            KeyAlgorithm::Rs256 => jsonwebtoken::Algorithm::RS256,
        };
        let mut validation = jsonwebtoken::Validation::new(algorithm);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = self.settings.leeway.as_secs();
        validation.validate_exp = check_expiry;
        if !check_expiry {
            validation.required_spec_claims.remove("exp");
        }
        jsonwebtoken::decode::<AccessClaims>(token, &decoding, &validation)
            .ok()
            .map(|data| data.claims)
    }

    /// The public keys as a JWKS document.
    pub fn jwks(&self) -> Value {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        signing::jwks(keys.iter().map(AsRef::as_ref))
    }

    /// Creates a customer account.
    pub async fn register(
        &self,
        email: String,
        password_text: String,
        name: String,
    ) -> Result<UserRow, UsersError> {
        let errors = check_account(&email, &password_text, &name);
        if !errors.is_empty() {
            return Err(UsersError::Invalid(errors));
        }
        insert_account(
            &self.store,
            email,
            password_text,
            name,
            DEFAULT_ROLE.to_owned(),
        )
        .await
    }

    /// Signs in with e-mail and password; the same error (and cost) for an unknown e-mail
    /// and a wrong password.
    pub async fn login(&self, email: &str, password_text: String) -> Result<Tokens, UsersError> {
        let user = self.authenticate(email, password_text).await?;
        self.sign_in(&user).await
    }

    /// Starts a session for `user` (already authenticated): access and refresh tokens.
    pub async fn sign_in(&self, user: &UserRow) -> Result<Tokens, UsersError> {
        let family = Uuid::now_v7();
        let mut tx = self.store.begin().await?;
        let refresh = self
            .new_refresh(&mut tx, user.id, family, Grant::default())
            .await?;
        tx.commit().await?;
        Ok(self.tokens(user, family, Grant::default(), refresh)?.0)
    }

    /// Checks an e-mail and password (per-account lockout included); the same error (and
    /// cost) for an unknown e-mail and a wrong password.
    pub(crate) async fn authenticate(
        &self,
        email: &str,
        password_text: String,
    ) -> Result<UserRow, UsersError> {
        let email = email.trim().to_lowercase();
        // Per account (the gateway limits per IP): guessing one account's password from many
        // addresses stops after a few tries, for everyone, until the window passes.
        if self.failures.get(&email).unwrap_or(0) >= MAX_FAILED_SIGN_INS {
            return Err(UsersError::TooManyAttempts);
        }
        let user = self.store.find_by_email(&email).await?;
        let stored = user.as_ref().map(|user| user.password_hash.clone());
        if !password::verify(password_text, stored).await {
            let failed = self.failures.get(&email).unwrap_or(0) + 1;
            self.failures.insert(email, failed);
            return Err(UsersError::BadCredentials);
        }
        self.failures.invalidate(&email);
        user.ok_or(UsersError::BadCredentials)
    }

    /// Stores a new refresh token of `family` (in `tx`) and returns it.
    pub(crate) async fn new_refresh(
        &self,
        tx: &mut logicore_platform::db::Tx,
        user: Uuid,
        family: Uuid,
        grant: Grant<'_>,
    ) -> Result<String, UsersError> {
        let refresh = random_token();
        let now = now();
        self.store
            .insert_refresh(
                tx,
                &token_hash(&refresh),
                user,
                family,
                grant,
                now + self.settings.refresh_ttl,
                now,
            )
            .await?;
        Ok(refresh)
    }

    /// Exchanges a refresh token for new tokens (rotation). A token used twice revokes its
    /// whole family: whoever holds either copy must sign in again.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, UsersError> {
        let (user, row, next) = self.rotate(refresh_token, None).await?;
        Ok(self.tokens(&user, row.family_id, Grant::default(), next)?.0)
    }

    /// Spends `refresh_token` (issued to `client`, or to the platform's own sign-in when
    /// `None`) and stores its successor: the account, the spent token's row and the new
    /// token. A token used twice revokes its whole family.
    pub(crate) async fn rotate(
        &self,
        refresh_token: &str,
        client: Option<&str>,
    ) -> Result<(UserRow, RefreshRow, String), UsersError> {
        let hash = token_hash(refresh_token);
        let now = now();
        let mut tx = self.store.begin().await?;
        let Some(row) = self.store.find_refresh(&mut tx, &hash).await? else {
            return Err(UsersError::BadRefreshToken);
        };
        if row.client_id.as_deref() != client {
            return Err(UsersError::BadRefreshToken);
        }
        if row.used_at.is_some() && row.revoked_at.is_none() {
            self.store
                .revoke_family(&mut tx, row.family_id, now)
                .await?;
            tx.commit().await?;
            tracing::warn!(user = %row.user_id, "a rotated refresh token was used again; its family is revoked");
            return Err(UsersError::BadRefreshToken);
        }
        if row.revoked_at.is_some()
            || row.used_at.is_some()
            || row.expires_at <= now
            || self.store.family_revoked(row.family_id).await?
        {
            return Err(UsersError::BadRefreshToken);
        }
        if !self.store.mark_used(&mut tx, &hash, now).await? {
            // A concurrent use of the same token won the race: this one is the reuse.
            self.store
                .revoke_family(&mut tx, row.family_id, now)
                .await?;
            tx.commit().await?;
            tracing::warn!(user = %row.user_id, "a refresh token was used twice at once; its family is revoked");
            return Err(UsersError::BadRefreshToken);
        }
        let grant = Grant {
            client_id: row.client_id.as_deref(),
            scope: row.scope.as_deref(),
            restricted: false,
        };
        let next = self
            .new_refresh(&mut tx, row.user_id, row.family_id, grant)
            .await?;
        tx.commit().await?;
        let user = self
            .store
            .get_user(row.user_id)
            .await?
            .ok_or(UsersError::BadRefreshToken)?;
        Ok((user, row, next))
    }

    /// Signs out: the refresh token's family is revoked (unknown tokens are fine).
    pub async fn logout(&self, refresh_token: &str) -> Result<(), UsersError> {
        let mut tx = self.store.begin().await?;
        if let Some(row) = self
            .store
            .find_refresh(&mut tx, &token_hash(refresh_token))
            .await?
        {
            self.store
                .revoke_family(&mut tx, row.family_id, now())
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The SSN of `user`, masked (`***-**-6789`); `None` when there is none. A stored value
    /// that does not decrypt is logged and not shown.
    pub fn masked_ssn(&self, user: &UserRow) -> Option<String> {
        let stored = user.ssn.as_deref()?;
        let id = user.id.to_string();
        match self.ring.decrypt(stored, ssn_context(&id)) {
            Ok(plain) => Some(mask_ssn(&String::from_utf8_lossy(&plain))),
            Err(err) => {
                tracing::error!(user = %user.id, error = %err, "a stored SSN does not decrypt");
                None
            }
        }
    }

    /// Applies a JSON merge patch (`name`, `ssn`; `null` removes the SSN) to the account of
    /// `subject`; the SSN is stored encrypted.
    pub async fn update_me(&self, subject: &str, patch: &Value) -> Result<UserRow, UsersError> {
        let user = self.me(subject).await?;
        let Value::Object(fields) = patch else {
            return Err(UsersError::Invalid(vec![FieldError::new(
                "",
                "must be a JSON object",
            )]));
        };
        let mut errors = Vec::new();
        let mut name = user.name.clone();
        let mut ssn = user.ssn.clone();
        for (field, value) in fields {
            match (field.as_str(), value) {
                ("name", Value::String(text))
                    if !text.trim().is_empty() && text.trim().chars().count() <= 200 =>
                {
                    name = text.trim().to_owned();
                }
                ("name", _) => errors.push(FieldError::new("/name", "must be 1-200 characters")),
                ("ssn", Value::Null) => ssn = None,
                ("ssn", Value::String(text)) if is_ssn(text) => {
                    let id = user.id.to_string();
                    ssn = Some(self.ring.encrypt(text.as_bytes(), ssn_context(&id)));
                }
                ("ssn", _) => errors.push(FieldError::new("/ssn", "must be NNN-NN-NNNN")),
                ("id" | "email" | "roles" | "created_at", _) => {}
                (other, _) => errors.push(FieldError::new(format!("/{other}"), "unknown field")),
            }
        }
        if !errors.is_empty() {
            return Err(UsersError::Invalid(errors));
        }
        self.store
            .update_profile(user.id, &name, ssn.as_deref(), now())
            .await?;
        self.me(subject).await
    }

    /// Sets the caller's card; the number is stored encrypted (bound to the account) and
    /// returned masked.
    pub async fn put_payment_method(
        &self,
        subject: &str,
        number: &str,
        exp_month: i64,
        exp_year: i64,
    ) -> Result<crate::payment::Card, UsersError> {
        let user = self.me(subject).await?;
        let card =
            crate::payment::check_card(number, exp_month, exp_year).map_err(UsersError::Invalid)?;
        let id = user.id.to_string();
        let row = crate::store::PaymentRow {
            user_id: user.id,
            card_number: self.ring.encrypt(card.number.as_bytes(), card_context(&id)),
            brand: card.brand.to_owned(),
            exp_month: i32::try_from(card.exp_month).unwrap_or(1),
            exp_year: card.exp_year,
        };
        self.store.put_payment(&row, now()).await?;
        Ok(card)
    }

    /// One page of accounts (administrators).
    pub async fn list_users(
        &self,
        page: &logicore_platform::http::PageRequest,
    ) -> Result<logicore_platform::http::Page<UserRow>, logicore_platform::http::Problem> {
        let after = match &page.after {
            None => None,
            Some(bytes) => Some(
                Uuid::from_slice(bytes)
                    .map_err(|_| logicore_platform::http::pagination::invalid_cursor())?,
            ),
        };
        let items = self
            .store
            .list_users(after, u64::from(page.limit) + 1)
            .await?;
        Ok(logicore_platform::http::Page::from_overfetch(
            items,
            page.limit,
            |user| user.id.as_bytes().to_vec(),
        ))
    }

    /// Creates an account with roles (administrators).
    pub async fn create_user(
        &self,
        email: String,
        password_text: String,
        name: String,
        roles: &[String],
    ) -> Result<UserRow, UsersError> {
        create_with_roles(&self.store, email, password_text, name, roles).await
    }

    /// Replaces an account's roles (administrators); new tokens carry them.
    pub async fn set_roles(&self, id: &str, roles: &[String]) -> Result<UserRow, UsersError> {
        if let Some(error) = check_roles(roles) {
            return Err(UsersError::Invalid(vec![error]));
        }
        let id = Uuid::parse_str(id).map_err(|_| UsersError::NotFound)?;
        if !self.store.set_roles(id, &roles.join(","), now()).await? {
            return Err(UsersError::NotFound);
        }
        self.store.get_user(id).await?.ok_or(UsersError::NotFound)
    }

    /// The account of `subject` (a token's `sub`).
    pub async fn me(&self, subject: &str) -> Result<UserRow, UsersError> {
        let id = Uuid::parse_str(subject).map_err(|_| UsersError::NotFound)?;
        self.store.get_user(id).await?.ok_or(UsersError::NotFound)
    }

    /// Signs an access token for `user` (session `family`, OAuth `grant`) and returns the
    /// tokens with the access token's `jti`.
    pub(crate) fn tokens(
        &self,
        user: &UserRow,
        family: Uuid,
        grant: Grant<'_>,
        refresh_token: String,
    ) -> Result<(Tokens, String), UsersError> {
        let key = self.access_key()?;
        let issued = Utc::now().timestamp();
        let ttl = self.settings.access_ttl.as_secs();
        let jti = Uuid::now_v7().to_string();
        let claims = Claims {
            iss: &self.settings.issuer,
            aud: AUDIENCE,
            sub: user.id.to_string(),
            roles: user
                .role_list()
                .into_iter()
                .filter(|role| !grant.restricted || role == DEFAULT_ROLE)
                .collect(),
            iat: issued,
            exp: issued + i64::try_from(ttl).unwrap_or(i64::MAX),
            jti: jti.clone(),
            sid: family.to_string(),
            client_id: grant.client_id,
            scope: grant.scope,
        };
        let access_token = key
            .sign(&claims)
            .map_err(|err| UsersError::Keys(err.to_string()))?;
        Ok((
            Tokens {
                access_token,
                token_type: "Bearer",
                expires_in: ttl,
                refresh_token,
            },
            jti,
        ))
    }

    /// The settings this service runs with.
    pub(crate) fn settings(&self) -> &TokenSettings {
        &self.settings
    }

    /// The storage.
    pub(crate) fn store(&self) -> &UsersStore {
        &self.store
    }
}
