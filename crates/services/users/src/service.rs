//! Accounts and tokens: registration, sign-in, refresh-token rotation, signing keys.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, SubsecRound, Utc};
use logicore_platform::auth::password;
use logicore_platform::auth::signing::{self, SigningKey};
use logicore_platform::crypto::masking::mask_ssn;
use logicore_platform::crypto::{FieldContext, KeyRing};
use logicore_platform::db::Db;
use logicore_platform::http::FieldError;
use serde::Serialize;
use serde_json::Value;
use uuid::Uuid;

use crate::error::UsersError;
use crate::store::{UserRow, UsersStore};

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
pub async fn rotate_signing_key(db: &Db, ring: &KeyRing) -> Result<String, UsersError> {
    let key = SigningKey::generate();
    UsersStore::new(db.clone())
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
    insert_account(store, email, password_text, name, roles.join(",")).await
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
}

fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn random_token() -> String {
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

fn token_hash(token: &str) -> String {
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
        if let Some(path) = &settings.key_file {
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
                "signing tokens with the key of auth.signing_key_file"
            );
            return Ok(UsersService {
                store,
                ring,
                settings: Arc::new(settings),
                keys: Arc::new(RwLock::new(vec![Arc::new(key)])),
                failures: failure_counts(),
            });
        }
        if store.signing_keys().await?.is_empty() {
            let key = SigningKey::generate();
            store
                .insert_signing_key(key.kid(), &key.encrypted_private_key(&ring), now())
                .await?;
            tracing::info!(kid = key.kid(), "generated the first token-signing key");
        }
        let service = UsersService {
            store,
            ring,
            settings: Arc::new(settings),
            keys: Arc::new(RwLock::new(Vec::new())),
            failures: failure_counts(),
        };
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
        let mut successor: Option<DateTime<Utc>> = None;
        for row in rows {
            let expired = successor.is_some_and(|newer| now - newer > grace);
            successor = Some(row.created_at);
            if expired {
                continue;
            }
            let key = SigningKey::from_encrypted(&row.kid, &row.private_key, &self.ring)
                .map_err(|err| UsersError::Keys(err.to_string()))?;
            keys.push(Arc::new(key));
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

    fn active_key(&self) -> Result<Arc<SigningKey>, UsersError> {
        let keys = self
            .keys
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        keys.first()
            .cloned()
            .ok_or_else(|| UsersError::Keys("no signing key".into()))
    }

    /// Verifies an access token this service issued (signature with a published key, `aud`,
    /// `exp` with 30 s of leeway) and returns its caller; used when no gateway vouched for
    /// the request (the users role on its own).
    pub fn verify(&self, token: &str) -> Option<logicore_platform::auth::Principal> {
        #[derive(serde::Deserialize)]
        struct Verified {
            sub: String,
            #[serde(default)]
            roles: Vec<String>,
        }
        let header = jsonwebtoken::decode_header(token).ok()?;
        let kid = header.kid?;
        let key = {
            let keys = self
                .keys
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            keys.iter().find(|key| key.kid() == kid).cloned()?
        };
        let jwk = key.jwk();
        let decoding = jsonwebtoken::DecodingKey::from_ed_components(jwk["x"].as_str()?).ok()?;
        let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::EdDSA);
        validation.set_audience(&[AUDIENCE]);
        validation.leeway = 30;
        let claims = jsonwebtoken::decode::<Verified>(token, &decoding, &validation)
            .ok()?
            .claims;
        Some(logicore_platform::auth::Principal {
            subject: claims.sub,
            roles: claims.roles,
            issuer: "logicore".to_owned(),
        })
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
        let user = user.ok_or(UsersError::BadCredentials)?;
        let mut tx = self.store.begin().await?;
        let refresh = random_token();
        let now = now();
        self.store
            .insert_refresh(
                &mut tx,
                &token_hash(&refresh),
                user.id,
                Uuid::now_v7(),
                now + self.settings.refresh_ttl,
                now,
            )
            .await?;
        tx.commit().await?;
        self.tokens(&user, refresh)
    }

    /// Exchanges a refresh token for new tokens (rotation). A token used twice revokes its
    /// whole family: whoever holds either copy must sign in again.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens, UsersError> {
        let hash = token_hash(refresh_token);
        let now = now();
        let mut tx = self.store.begin().await?;
        let Some(row) = self.store.find_refresh(&mut tx, &hash).await? else {
            return Err(UsersError::BadRefreshToken);
        };
        if row.used_at.is_some() && row.revoked_at.is_none() {
            self.store
                .revoke_family(&mut tx, row.family_id, now)
                .await?;
            tx.commit().await?;
            tracing::warn!(user = %row.user_id, "a rotated refresh token was used again; its family is revoked");
            return Err(UsersError::BadRefreshToken);
        }
        if row.revoked_at.is_some() || row.used_at.is_some() || row.expires_at <= now {
            return Err(UsersError::BadRefreshToken);
        }
        self.store.mark_used(&mut tx, &hash, now).await?;
        let next = random_token();
        self.store
            .insert_refresh(
                &mut tx,
                &token_hash(&next),
                row.user_id,
                row.family_id,
                now + self.settings.refresh_ttl,
                now,
            )
            .await?;
        tx.commit().await?;
        let user = self
            .store
            .get_user(row.user_id)
            .await?
            .ok_or(UsersError::BadRefreshToken)?;
        self.tokens(&user, next)
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

    fn tokens(&self, user: &UserRow, refresh_token: String) -> Result<Tokens, UsersError> {
        let key = self.active_key()?;
        let issued = Utc::now().timestamp();
        let ttl = self.settings.access_ttl.as_secs();
        let claims = Claims {
            iss: &self.settings.issuer,
            aud: AUDIENCE,
            sub: user.id.to_string(),
            roles: user.role_list(),
            iat: issued,
            exp: issued + i64::try_from(ttl).unwrap_or(i64::MAX),
            jti: Uuid::now_v7().to_string(),
        };
        let access_token = key
            .sign(&claims)
            .map_err(|err| UsersError::Keys(err.to_string()))?;
        Ok(Tokens {
            access_token,
            token_type: "Bearer",
            expires_in: ttl,
            refresh_token,
        })
    }
}
