//! The OAuth 2.1 authorization server and OpenID Connect provider: authorization code with
//! PKCE S256 (required), exact redirect URIs, single-use codes (a replayed code revokes what
//! it issued), refresh-token rotation, revocation (RFC 7009), introspection (RFC 7662),
//! metadata (RFC 8414 and OpenID Connect discovery), ID tokens (RS256) and userinfo.

pub mod http;
pub mod page;
pub mod store;

use std::collections::BTreeMap;
use std::sync::Arc;

use aws_lc_rs::constant_time::verify_slices_are_equal;
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use logicore_platform::config::OAuthClientConfig;
use logicore_platform::http::FieldError;
use serde::Serialize;
use serde_json::{Value, json};
use uuid::Uuid;

pub use logicore_platform::auth::redirect_uri_problem;

use crate::error::UsersError;
use crate::service::{AccessClaims, UsersService, now, random_token, token_hash};
use crate::store::{Grant, UserRow};
use store::{ClientRow, CodeRow, OAuthStore};

/// How long an authorization code can be redeemed.
pub const CODE_TTL: std::time::Duration = std::time::Duration::from_secs(60);
/// Scopes this server grants.
pub const SCOPES: [&str; 4] = ["openid", "profile", "email", "offline_access"];
/// Shortest `state` accepted: shorter values carry too little entropy to protect the client.
pub const MIN_STATE_LEN: usize = 8;

/// How a client authenticates at the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    /// HTTP Basic with the client id and secret.
    ClientSecretBasic,
    /// `client_id` and `client_secret` in the form body.
    ClientSecretPost,
    /// A public client: no secret (PKCE protects its codes).
    None,
}

impl AuthMethod {
    /// Parses an RFC 7591 `token_endpoint_auth_method` (empty = `client_secret_basic`).
    pub fn parse(text: &str) -> Option<AuthMethod> {
        match text {
            "" | "client_secret_basic" => Some(AuthMethod::ClientSecretBasic),
            "client_secret_post" => Some(AuthMethod::ClientSecretPost),
            "none" => Some(AuthMethod::None),
            _ => None,
        }
    }

    /// The RFC 7591 name.
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::ClientSecretBasic => "client_secret_basic",
            AuthMethod::ClientSecretPost => "client_secret_post",
            AuthMethod::None => "none",
        }
    }
}

/// An OAuth client.
#[derive(Debug, Clone)]
pub struct Client {
    /// Its id.
    pub client_id: String,
    /// SHA-256 of its secret; `None` for a public client.
    secret_hash: Option<String>,
    /// Display name.
    pub client_name: String,
    /// Exact redirect URIs.
    pub redirect_uris: Vec<String>,
    /// Token endpoint authentication.
    pub auth_method: AuthMethod,
    /// One of the platform's own clients: its tokens carry the account's roles.
    pub first_party: bool,
}

impl Client {
    fn from_row(row: ClientRow) -> Client {
        Client {
            client_id: row.client_id,
            secret_hash: row.secret_hash,
            client_name: row.client_name,
            redirect_uris: serde_json::from_str(&row.redirect_uris).unwrap_or_default(),
            auth_method: AuthMethod::parse(&row.token_endpoint_auth_method)
                .unwrap_or(AuthMethod::ClientSecretBasic),
            first_party: false,
        }
    }

    fn from_config(config: &OAuthClientConfig) -> Client {
        let secret = config.client_secret.expose();
        Client {
            client_id: config.client_id.clone(),
            secret_hash: (!secret.is_empty()).then(|| token_hash(secret)),
            client_name: if config.client_name.is_empty() {
                config.client_id.clone()
            } else {
                config.client_name.clone()
            },
            redirect_uris: config.redirect_uris.clone(),
            auth_method: AuthMethod::parse(&config.token_endpoint_auth_method)
                .unwrap_or(AuthMethod::ClientSecretBasic),
            first_party: config.first_party,
        }
    }

    /// Returns true when `secret` is this client's (constant time).
    fn secret_matches(&self, secret: &str) -> bool {
        self.secret_hash.as_ref().is_some_and(|hash| {
            verify_slices_are_equal(hash.as_bytes(), token_hash(secret).as_bytes()).is_ok()
        })
    }
}

/// A registered client as answered once: the secret is shown only now.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct RegisteredClient {
    /// The client's id.
    pub client_id: String,
    /// Its secret (confidential clients only; shown once).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
    /// Display name.
    pub client_name: String,
    /// Exact redirect URIs.
    pub redirect_uris: Vec<String>,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub token_endpoint_auth_method: String,
    /// Registration time (seconds since the epoch).
    pub client_id_issued_at: i64,
    /// 0: the secret does not expire.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret_expires_at: Option<i64>,
}

/// An OAuth error (RFC 6749 §5.2): `{"error", "error_description"}`.
#[derive(Debug, Clone)]
pub struct OAuthError {
    /// HTTP status.
    pub status: ::http::StatusCode,
    /// The error code.
    pub error: &'static str,
    /// Human-readable detail.
    pub description: String,
    /// Answer with a `WWW-Authenticate: Basic` challenge (client authentication failed).
    pub challenge: bool,
}

impl OAuthError {
    fn new(error: &'static str, description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: ::http::StatusCode::BAD_REQUEST,
            error,
            description: description.into(),
            challenge: false,
        }
    }

    fn invalid_request(description: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_request", description)
    }

    fn invalid_grant(description: impl Into<String>) -> OAuthError {
        OAuthError::new("invalid_grant", description)
    }

    fn invalid_client(description: impl Into<String>) -> OAuthError {
        OAuthError {
            status: ::http::StatusCode::UNAUTHORIZED,
            challenge: true,
            ..OAuthError::new("invalid_client", description)
        }
    }

    fn server(error: &UsersError) -> OAuthError {
        tracing::error!(error = %error, "the authorization server failed");
        OAuthError {
            status: ::http::StatusCode::INTERNAL_SERVER_ERROR,
            ..OAuthError::new("server_error", "the authorization server failed")
        }
    }
}

impl From<UsersError> for OAuthError {
    fn from(error: UsersError) -> OAuthError {
        OAuthError::server(&error)
    }
}

impl From<sqlx::Error> for OAuthError {
    fn from(error: sqlx::Error) -> OAuthError {
        OAuthError::server(&UsersError::Storage(error))
    }
}

/// The outcome of checking an authorization request.
#[derive(Debug)]
pub enum AuthorizeCheck {
    /// The client or redirect URI cannot be trusted: answer with an error page, never a
    /// redirect (RFC 6749 §4.1.2.1).
    Refuse(String),
    /// Send the error back to the client's redirect URI.
    Redirect(String),
    /// A valid request.
    Valid(Box<Authorization>),
}

/// A valid authorization request.
#[derive(Debug, Clone)]
pub struct Authorization {
    /// The client.
    pub client: Client,
    /// The (registered) redirect URI.
    pub redirect_uri: String,
    /// Requested scope (space-separated, known scopes only).
    pub scope: String,
    /// The client's state, returned as is.
    pub state: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// OpenID Connect nonce.
    pub nonce: Option<String>,
}

/// The token endpoint's answer.
#[derive(Debug, Clone, Serialize)]
pub struct TokenResponse {
    /// JWT access token.
    pub access_token: String,
    /// `Bearer`.
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    /// Opaque, single use.
    pub refresh_token: String,
    /// Granted scope.
    pub scope: String,
    /// OpenID Connect ID token (scope `openid`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

/// Parses `application/x-www-form-urlencoded` text; a parameter given twice is an error
/// (RFC 6749 §3.1).
pub fn parse_form(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut params = BTreeMap::new();
    for (name, value) in form_urlencoded::parse(text.as_bytes()) {
        if params
            .insert(name.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(format!("parameter `{name}` is repeated"));
        }
    }
    Ok(params)
}

/// `params` as `application/x-www-form-urlencoded` text.
pub fn form_encode(params: &[(&str, &str)]) -> String {
    let mut query = form_urlencoded::Serializer::new(String::new());
    for (name, value) in params {
        query.append_pair(name, value);
    }
    query.finish()
}

/// `uri` with `params` appended to its query.
pub fn with_query(uri: &str, params: &[(&str, &str)]) -> String {
    let separator = if uri.contains('?') { '&' } else { '?' };
    format!("{uri}{separator}{}", form_encode(params))
}

fn is_pkce_value(text: &str, lengths: std::ops::RangeInclusive<usize>) -> bool {
    lengths.contains(&text.len())
        && text
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || b"-._~".contains(&byte))
}

/// The authorization server; cheap to clone.
#[derive(Debug, Clone)]
pub struct OAuthServer {
    users: UsersService,
    store: OAuthStore,
    /// Clients from the configuration, by id.
    configured: Arc<BTreeMap<String, Client>>,
}

impl OAuthServer {
    /// The server over the users service's database and keys.
    pub fn new(users: UsersService) -> OAuthServer {
        let db = users.store().db().clone();
        let configured = users
            .settings()
            .clients
            .iter()
            .map(|config| (config.client_id.clone(), Client::from_config(config)))
            .collect();
        OAuthServer {
            users,
            store: OAuthStore::new(db),
            configured: Arc::new(configured),
        }
    }

    /// The users service behind it.
    pub fn users(&self) -> &UsersService {
        &self.users
    }

    /// The storage.
    pub(crate) fn store(&self) -> &OAuthStore {
        &self.store
    }

    /// Names of the external sign-in providers (offered on the sign-in page).
    pub fn provider_names(&self) -> Vec<&str> {
        self.users
            .settings()
            .providers
            .iter()
            .map(|provider| provider.name.as_str())
            .collect()
    }

    /// The issuer (`iss` of tokens, base of the endpoints).
    pub fn issuer(&self) -> &str {
        self.users.settings().issuer.trim_end_matches('/')
    }

    /// A client by id: configured ones first, then registered ones.
    pub async fn client(&self, client_id: &str) -> Result<Option<Client>, UsersError> {
        if let Some(client) = self.configured.get(client_id) {
            return Ok(Some(client.clone()));
        }
        Ok(self
            .store
            .get_client(client_id)
            .await?
            .map(Client::from_row))
    }

    /// Registers a client (RFC 7591 field names); the secret is returned once.
    pub async fn register_client(
        &self,
        client_name: String,
        redirect_uris: Vec<String>,
        method: Option<String>,
    ) -> Result<RegisteredClient, UsersError> {
        let mut errors = Vec::new();
        let client_name = client_name.trim().to_owned();
        if client_name.is_empty() || client_name.chars().count() > 200 {
            errors.push(FieldError::new("/client_name", "must be 1-200 characters"));
        }
        if redirect_uris.is_empty() {
            errors.push(FieldError::new("/redirect_uris", "needs at least one URI"));
        }
        for (index, uri) in redirect_uris.iter().enumerate() {
            if let Some(problem) = redirect_uri_problem(uri) {
                errors.push(FieldError::new(format!("/redirect_uris/{index}"), problem));
            }
        }
        let method = AuthMethod::parse(method.as_deref().unwrap_or(""));
        if method.is_none() {
            errors.push(FieldError::new(
                "/token_endpoint_auth_method",
                "must be client_secret_basic, client_secret_post or none",
            ));
        }
        let (Some(method), true) = (method, errors.is_empty()) else {
            return Err(UsersError::Invalid(errors));
        };
        let secret = (method != AuthMethod::None).then(random_token);
        let issued = now();
        let row = ClientRow {
            client_id: Uuid::now_v7().simple().to_string(),
            secret_hash: secret.as_deref().map(token_hash),
            client_name,
            redirect_uris: serde_json::to_string(&redirect_uris).unwrap_or_default(),
            token_endpoint_auth_method: method.name().to_owned(),
            created_at: issued,
        };
        self.store.insert_client(&row).await?;
        Ok(RegisteredClient {
            client_id: row.client_id,
            client_secret_expires_at: secret.as_ref().map(|_| 0),
            client_secret: secret,
            client_name: row.client_name,
            redirect_uris,
            token_endpoint_auth_method: method.name().to_owned(),
            client_id_issued_at: issued.timestamp(),
        })
    }

    /// Checks an authorization request's parameters (RFC 6749 §4.1.1 with PKCE S256
    /// required and `state` required).
    pub async fn check_authorize(
        &self,
        params: &Result<BTreeMap<String, String>, String>,
    ) -> Result<AuthorizeCheck, UsersError> {
        let empty = BTreeMap::new();
        let (params, repeated) = match params {
            Ok(params) => (params, None),
            Err(problem) => (&empty, Some(problem.clone())),
        };
        let get = |name: &str| params.get(name).map(String::as_str);
        let Some(client_id) = get("client_id") else {
            return Ok(AuthorizeCheck::Refuse(
                repeated.unwrap_or_else(|| "client_id is missing".to_owned()),
            ));
        };
        let Some(client) = self.client(client_id).await? else {
            return Ok(AuthorizeCheck::Refuse("unknown client_id".to_owned()));
        };
        let Some(redirect_uri) = get("redirect_uri") else {
            return Ok(AuthorizeCheck::Refuse("redirect_uri is missing".to_owned()));
        };
        if !client
            .redirect_uris
            .iter()
            .any(|uri| logicore_platform::auth::redirect_uri_matches(uri, redirect_uri))
        {
            return Ok(AuthorizeCheck::Refuse(
                "redirect_uri is not registered for this client (exact match required)".into(),
            ));
        }
        let state = get("state").unwrap_or("");
        let issuer = self.issuer().to_owned();
        let redirect = |error: &str, description: &str| {
            let mut params = vec![
                ("error", error),
                ("error_description", description),
                ("iss", issuer.as_str()),
            ];
            if !state.is_empty() {
                params.push(("state", state));
            }
            Ok(AuthorizeCheck::Redirect(with_query(redirect_uri, &params)))
        };
        if let Some(problem) = &repeated {
            return redirect("invalid_request", problem);
        }
        if get("response_type") != Some("code") {
            return redirect(
                "unsupported_response_type",
                "only response_type=code is supported",
            );
        }
        if state.len() < MIN_STATE_LEN {
            return redirect(
                "invalid_request",
                "state is required (at least 8 characters)",
            );
        }
        let Some(challenge) = get("code_challenge") else {
            return redirect("invalid_request", "code_challenge is required (PKCE)");
        };
        if get("code_challenge_method") != Some("S256") {
            return redirect(
                "invalid_request",
                "code_challenge_method must be S256 (plain is not allowed)",
            );
        }
        if challenge.len() != 43 || !is_pkce_value(challenge, 43..=43) {
            return redirect(
                "invalid_request",
                "code_challenge must be a base64url SHA-256 (43 characters)",
            );
        }
        // OpenID Connect Core §3.1.2.1: scope values we do not know are ignored.
        let mut scope: Vec<&str> = get("scope")
            .unwrap_or("")
            .split_whitespace()
            .filter(|scope| SCOPES.contains(scope))
            .collect();
        scope.dedup();
        // This server keeps no sign-in session: it can never answer without showing its form.
        if get("prompt").is_some_and(|prompt| prompt.split_whitespace().any(|p| p == "none")) {
            return redirect("login_required", "the user must sign in");
        }
        let nonce = get("nonce").filter(|nonce| !nonce.is_empty());
        if nonce.is_some_and(|nonce| nonce.len() > 255) {
            return redirect("invalid_request", "nonce is longer than 255 characters");
        }
        Ok(AuthorizeCheck::Valid(Box::new(Authorization {
            redirect_uri: redirect_uri.to_owned(),
            scope: scope.join(" "),
            state: state.to_owned(),
            code_challenge: challenge.to_owned(),
            nonce: nonce.map(str::to_owned),
            client,
        })))
    }

    /// Signs the account in and issues a code; returns the redirect to the client.
    pub async fn approve(
        &self,
        authorization: &Authorization,
        email: &str,
        password: String,
    ) -> Result<String, UsersError> {
        let user = self.users.authenticate(email, password).await?;
        self.issue_code(authorization, &user).await
    }

    /// Issues a code to the client of `authorization` for `user` (signed in) and returns the
    /// redirect to the client.
    pub async fn issue_code(
        &self,
        authorization: &Authorization,
        user: &UserRow,
    ) -> Result<String, UsersError> {
        let code = random_token();
        let issued = now();
        let row = CodeRow {
            client_id: authorization.client.client_id.clone(),
            user_id: user.id,
            redirect_uri: authorization.redirect_uri.clone(),
            scope: authorization.scope.clone(),
            code_challenge: authorization.code_challenge.clone(),
            nonce: authorization.nonce.clone(),
            family_id: Uuid::now_v7(),
            access_jti: None,
            auth_time: issued,
            expires_at: issued + CODE_TTL,
            used_at: None,
        };
        self.store
            .insert_code(&token_hash(&code), &row, issued)
            .await?;
        Ok(with_query(
            &authorization.redirect_uri,
            &[
                ("code", &code),
                ("state", &authorization.state),
                ("iss", self.issuer()),
            ],
        ))
    }

    /// Authenticates the client of a token, revocation or introspection request: HTTP Basic
    /// (`client_secret_basic`), a secret in the body (`client_secret_post`), or only a
    /// `client_id` for a public client.
    pub async fn authenticate_client(
        &self,
        authorization: Option<&str>,
        params: &BTreeMap<String, String>,
    ) -> Result<Client, OAuthError> {
        let (client_id, secret) = match authorization {
            Some(header) => {
                let Some(encoded) = header
                    .strip_prefix("Basic ")
                    .or_else(|| header.strip_prefix("basic "))
                else {
                    return Err(OAuthError::invalid_client(
                        "only HTTP Basic client authentication is supported",
                    ));
                };
                if params.contains_key("client_secret") {
                    return Err(OAuthError::invalid_request(
                        "use one client authentication method",
                    ));
                }
                let decoded = STANDARD
                    .decode(encoded.trim())
                    .ok()
                    .and_then(|bytes| String::from_utf8(bytes).ok())
                    .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
                let (id, secret) = decoded
                    .split_once(':')
                    .ok_or_else(|| OAuthError::invalid_client("malformed Basic credentials"))?;
                // RFC 6749 §2.3.1: both are form-urlencoded before Basic encoding.
                let decode = |text: &str| {
                    form_urlencoded::parse(format!("x={text}").as_bytes())
                        .next()
                        .map(|(_, value)| value.into_owned())
                        .unwrap_or_default()
                };
                let secret = decode(secret);
                (decode(id), (!secret.is_empty()).then_some(secret))
            }
            None => (
                params.get("client_id").cloned().ok_or_else(|| {
                    OAuthError::invalid_client("client authentication is required")
                })?,
                params.get("client_secret").cloned(),
            ),
        };
        if let (Some(_), Some(body_id)) = (authorization, params.get("client_id"))
            && *body_id != client_id
        {
            return Err(OAuthError::invalid_client("client_id does not match"));
        }
        let client = self
            .client(&client_id)
            .await?
            .ok_or_else(|| OAuthError::invalid_client("client authentication failed"))?;
        match (&client.secret_hash, secret) {
            (Some(_), Some(secret)) if client.secret_matches(&secret) => Ok(client),
            (None, None) => Ok(client),
            (None, Some(_)) => Err(OAuthError::invalid_client("a public client has no secret")),
            (Some(_), _) => Err(OAuthError::invalid_client("client authentication failed")),
        }
    }

    /// The token endpoint (`authorization_code` and `refresh_token` grants).
    pub async fn token(
        &self,
        client: &Client,
        params: &BTreeMap<String, String>,
    ) -> Result<TokenResponse, OAuthError> {
        match params.get("grant_type").map(String::as_str) {
            Some("authorization_code") => self.redeem_code(client, params).await,
            Some("refresh_token") => self.refresh(client, params).await,
            Some(_) => Err(OAuthError::new(
                "unsupported_grant_type",
                "grant_type must be authorization_code or refresh_token",
            )),
            None => Err(OAuthError::invalid_request("grant_type is missing")),
        }
    }

    async fn redeem_code(
        &self,
        client: &Client,
        params: &BTreeMap<String, String>,
    ) -> Result<TokenResponse, OAuthError> {
        let get = |name: &str| params.get(name).map(String::as_str);
        let code = get("code").ok_or_else(|| OAuthError::invalid_request("code is missing"))?;
        let verifier = get("code_verifier")
            .ok_or_else(|| OAuthError::invalid_request("code_verifier is missing (PKCE)"))?;
        let hash = token_hash(code);
        let issued = now();
        let mut tx = self.store.begin().await?;
        let row = self
            .store
            .find_code(&mut tx, &hash)
            .await?
            .filter(|row| row.client_id == client.client_id)
            .ok_or_else(|| OAuthError::invalid_grant("unknown authorization code"))?;
        let user = self.users.store().get_user(row.user_id).await?;
        if !self.store.spend_code(&mut tx, &hash, issued).await? {
            // A replay: whoever holds the code (and what it bought) is not to be trusted.
            let users = self.users.store();
            users.revoke_family(&mut tx, row.family_id, issued).await?;
            if let Some(jti) = &row.access_jti {
                let expires = issued + self.users.settings().access_ttl;
                self.store.revoke_jti(&mut tx, jti, expires).await?;
            }
            tx.commit().await?;
            tracing::warn!(client = %client.client_id, user = %row.user_id,
                "an authorization code was used twice; the tokens it issued are revoked");
            return Err(OAuthError::invalid_grant(
                "the authorization code was already used",
            ));
        }
        // The code is spent whatever happens next: a wrong verifier burns it.
        let failure = if row.expires_at <= issued {
            Some("the authorization code has expired")
        } else if get("redirect_uri") != Some(row.redirect_uri.as_str()) {
            Some("redirect_uri does not match the authorization request")
        } else if !is_pkce_value(verifier, 43..=128)
            || URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
                &aws_lc_rs::digest::SHA256,
                verifier.as_bytes(),
            )) != row.code_challenge
        {
            Some("code_verifier does not match the code_challenge")
        } else {
            None
        };
        if let Some(failure) = failure {
            tx.commit().await?;
            return Err(OAuthError::invalid_grant(failure));
        }
        let Some(user) = user else {
            tx.commit().await?;
            return Err(OAuthError::invalid_grant("the account no longer exists"));
        };
        let grant = Grant {
            client_id: Some(&client.client_id),
            scope: Some(&row.scope),
            restricted: !client.first_party,
        };
        let refresh = self
            .users
            .new_refresh(&mut tx, user.id, row.family_id, grant)
            .await?;
        let (tokens, jti) = self.users.tokens(&user, row.family_id, grant, refresh)?;
        // Everything that can fail happens before the commit: a client never loses a code
        // to an answer it did not get.
        let response = self
            .respond(
                &user,
                client,
                &row.scope,
                tokens,
                row.nonce.as_deref(),
                Some(row.auth_time),
            )
            .await?;
        self.store.set_code_jti(&mut tx, &hash, &jti).await?;
        tx.commit().await?;
        Ok(response)
    }

    async fn refresh(
        &self,
        client: &Client,
        params: &BTreeMap<String, String>,
    ) -> Result<TokenResponse, OAuthError> {
        let token = params
            .get("refresh_token")
            .ok_or_else(|| OAuthError::invalid_request("refresh_token is missing"))?;
        // The scope is checked before the token is spent: a refused request costs nothing.
        if let (Some(asked), Some(row)) = (
            params.get("scope"),
            self.users.store().peek_refresh(&token_hash(token)).await?,
        ) {
            let granted = row.scope.unwrap_or_default();
            if asked
                .split_whitespace()
                .any(|asked| !granted.split_whitespace().any(|granted| granted == asked))
            {
                return Err(OAuthError::new(
                    "invalid_scope",
                    "a refresh cannot widen the granted scope",
                ));
            }
        }
        let (user, row, next) = match self.users.rotate(token, Some(&client.client_id)).await {
            Ok(rotated) => rotated,
            Err(UsersError::BadRefreshToken) => {
                return Err(OAuthError::invalid_grant(
                    "the refresh token is unknown, spent, revoked or expired",
                ));
            }
            Err(err) => return Err(err.into()),
        };
        // A narrower scope applies to these tokens; the refresh token keeps the grant.
        let scope = params
            .get("scope")
            .map_or_else(|| row.scope.clone().unwrap_or_default(), Clone::clone);
        let grant = Grant {
            client_id: Some(&client.client_id),
            scope: Some(&scope),
            restricted: !client.first_party,
        };
        let (tokens, _) = self.users.tokens(&user, row.family_id, grant, next)?;
        self.respond(&user, client, &scope, tokens, None, None)
            .await
    }

    /// Adds the scope and, for `openid`, an ID token.
    async fn respond(
        &self,
        user: &UserRow,
        client: &Client,
        scope: &str,
        tokens: crate::service::Tokens,
        nonce: Option<&str>,
        auth_time: Option<DateTime<Utc>>,
    ) -> Result<TokenResponse, OAuthError> {
        let id_token = if scope.split_whitespace().any(|scope| scope == "openid") {
            Some(
                self.id_token(user, client, scope, &tokens.access_token, nonce, auth_time)
                    .await?,
            )
        } else {
            None
        };
        Ok(TokenResponse {
            access_token: tokens.access_token,
            token_type: "Bearer",
            expires_in: tokens.expires_in,
            refresh_token: tokens.refresh_token,
            scope: scope.to_owned(),
            id_token,
        })
    }

    async fn id_token(
        &self,
        user: &UserRow,
        client: &Client,
        scope: &str,
        access_token: &str,
        nonce: Option<&str>,
        auth_time: Option<DateTime<Utc>>,
    ) -> Result<String, UsersError> {
        let key = self.users.id_token_key()?;
        let issued = Utc::now().timestamp();
        let ttl = i64::try_from(self.users.settings().access_ttl.as_secs()).unwrap_or(900);
        // at_hash: the left half of the access token's SHA-256 (OpenID Connect Core §3.1.3.6).
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, access_token.as_bytes());
        let mut claims = json!({
            "iss": self.issuer(),
            "sub": user.id.to_string(),
            "aud": client.client_id,
            "iat": issued,
            "exp": issued + ttl,
            "at_hash": URL_SAFE_NO_PAD.encode(&digest.as_ref()[..16]),
        });
        self.add_profile(&mut claims, user, scope).await?;
        if let Some(nonce) = nonce {
            claims["nonce"] = nonce.into();
        }
        if let Some(auth_time) = auth_time {
            claims["auth_time"] = auth_time.timestamp().into();
        }
        key.sign(&claims)
            .map_err(|err| UsersError::Keys(err.to_string()))
    }

    /// RFC 7009: revokes a refresh token (its whole session) or an access token of `client`.
    /// Unknown tokens and tokens of other clients are answered the same way (nothing to do).
    pub async fn revoke(&self, client: &Client, token: &str) -> Result<(), UsersError> {
        let users = self.users.store();
        if let Some(row) = users.peek_refresh(&token_hash(token)).await? {
            if row.client_id.as_deref() == Some(client.client_id.as_str()) {
                let mut tx = users.begin().await?;
                users.revoke_family(&mut tx, row.family_id, now()).await?;
                tx.commit().await?;
            }
            return Ok(());
        }
        if let Some(claims) = self.users.verify_access(token, false)
            && claims.client_id.as_deref() == Some(client.client_id.as_str())
        {
            let mut tx = self.store.begin().await?;
            let expires = DateTime::from_timestamp(claims.exp, 0).unwrap_or_else(now);
            self.store.revoke_jti(&mut tx, &claims.jti, expires).await?;
            tx.commit().await?;
        }
        Ok(())
    }

    /// The claims of a live access token: signed by us, not expired, not revoked, its
    /// session not revoked.
    pub async fn live_access(&self, token: &str) -> Result<Option<AccessClaims>, UsersError> {
        let Some(claims) = self.users.verify_access(token, true) else {
            return Ok(None);
        };
        if self.store.is_revoked(&claims.jti).await? {
            return Ok(None);
        }
        if let Some(family) = claims
            .sid
            .as_deref()
            .and_then(|sid| Uuid::parse_str(sid).ok())
            && self.users.store().family_revoked(family).await?
        {
            return Ok(None);
        }
        Ok(Some(claims))
    }

    /// RFC 7662 introspection.
    pub async fn introspect(&self, token: &str) -> Result<Value, UsersError> {
        let inactive = json!({"active": false});
        if let Some(row) = self.users.store().peek_refresh(&token_hash(token)).await? {
            if row.used_at.is_some()
                || row.revoked_at.is_some()
                || row.expires_at <= now()
                || self.users.store().family_revoked(row.family_id).await?
            {
                return Ok(inactive);
            }
            let mut answer = json!({
                "active": true,
                "sub": row.user_id.to_string(),
                "exp": row.expires_at.timestamp(),
                "iss": self.issuer(),
            });
            if let Some(client) = row.client_id {
                answer["client_id"] = client.into();
            }
            if let Some(scope) = row.scope {
                answer["scope"] = scope.into();
            }
            return Ok(answer);
        }
        let Some(claims) = self.live_access(token).await? else {
            return Ok(inactive);
        };
        let mut answer = json!({
            "active": true,
            "token_type": "Bearer",
            "sub": claims.sub,
            "exp": claims.exp,
            "iat": claims.iat,
            "iss": claims.iss,
            "aud": crate::service::AUDIENCE,
            "jti": claims.jti,
            "roles": claims.roles,
        });
        if let Some(client) = claims.client_id {
            answer["client_id"] = client.into();
        }
        if let Some(scope) = claims.scope {
            answer["scope"] = scope.into();
        }
        Ok(answer)
    }

    /// OpenID Connect userinfo for a live access token with scope `openid`.
    pub async fn userinfo(&self, claims: &AccessClaims) -> Result<Option<Value>, UsersError> {
        let Ok(id) = Uuid::parse_str(&claims.sub) else {
            return Ok(None);
        };
        let Some(user) = self.users.store().get_user(id).await? else {
            return Ok(None);
        };
        let mut info = json!({"sub": user.id.to_string()});
        self.add_profile(&mut info, &user, claims.scope.as_deref().unwrap_or(""))
            .await?;
        Ok(Some(info))
    }

    /// The claims the scope grants (OpenID Connect Core §5.4): `email` and `email_verified`
    /// with `email`, `name` with `profile`.
    async fn add_profile(
        &self,
        claims: &mut Value,
        user: &UserRow,
        scope: &str,
    ) -> Result<(), UsersError> {
        let has = |wanted: &str| scope.split_whitespace().any(|scope| scope == wanted);
        if has("email") {
            claims["email"] = user.email.clone().into();
            claims["email_verified"] = self.store.email_verified(user.id).await?.into();
        }
        if has("profile") {
            claims["name"] = user.name.clone().into();
        }
        Ok(())
    }

    /// RFC 8414 authorization server metadata.
    pub fn metadata(&self) -> Value {
        let issuer = self.issuer();
        json!({
            "issuer": issuer,
            "authorization_endpoint": format!("{issuer}/oauth/authorize"),
            "token_endpoint": format!("{issuer}/oauth/token"),
            "jwks_uri": format!("{issuer}/.well-known/jwks.json"),
            "revocation_endpoint": format!("{issuer}/oauth/revoke"),
            "introspection_endpoint": format!("{issuer}/oauth/introspect"),
            "userinfo_endpoint": format!("{issuer}/oauth/userinfo"),
            "scopes_supported": SCOPES,
            "response_types_supported": ["code"],
            "response_modes_supported": ["query"],
            "grant_types_supported": ["authorization_code", "refresh_token"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported":
                ["client_secret_basic", "client_secret_post", "none"],
            "revocation_endpoint_auth_methods_supported":
                ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint_auth_methods_supported":
                ["client_secret_basic", "client_secret_post"],
            "authorization_response_iss_parameter_supported": true,
            "request_parameter_supported": false,
            "request_uri_parameter_supported": false,
        })
    }

    /// OpenID Connect discovery: the metadata plus the provider's own fields.
    pub fn openid_configuration(&self) -> Value {
        let mut metadata = self.metadata();
        metadata["subject_types_supported"] = json!(["public"]);
        metadata["id_token_signing_alg_values_supported"] = json!(["RS256"]);
        metadata["claims_supported"] = json!([
            "iss",
            "sub",
            "aud",
            "exp",
            "iat",
            "auth_time",
            "nonce",
            "at_hash",
            "email",
            "email_verified",
            "name"
        ]);
        metadata
    }

    /// Marks accounts made by operators as having a verified e-mail address.
    pub async fn mark_email_verified(&self, user: Uuid) -> Result<(), UsersError> {
        self.store.mark_email_verified(user).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_refuse_repeated_parameters() {
        let params = parse_form("a=1&b=two%20words").unwrap();
        assert_eq!(params["b"], "two words");
        assert!(parse_form("a=1&a=2").unwrap_err().contains("`a`"));
    }

    #[test]
    fn queries_are_appended() {
        assert_eq!(
            with_query("https://a/cb", &[("code", "x y"), ("state", "s")]),
            "https://a/cb?code=x+y&state=s"
        );
        assert_eq!(
            with_query("https://a/cb?k=v", &[("code", "c")]),
            "https://a/cb?k=v&code=c"
        );
    }
}
