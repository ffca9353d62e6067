//! Sign-in with external OpenID Connect providers (`[[auth.providers]]`): this service is the
//! client — discovery, authorization code with PKCE S256, the ID token checked against the
//! provider's JWKS (issuer, audience, expiry, nonce) — and links accounts by `sub`, or by
//! e-mail when the provider says it verified the address.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use logicore_platform::config::ProviderConfig;
use logicore_platform::http::{ErrorCode, Problem};
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::error::UsersError;
use crate::oauth::store::ProviderLoginRow;
use crate::oauth::{AuthorizeCheck, OAuthServer, form_encode, parse_form, with_query};
use crate::service::{Tokens, now, random_password, random_token, token_hash};
use crate::store::UserRow;

/// How long a sign-in at a provider may take.
const LOGIN_TTL: Duration = Duration::from_secs(10 * 60);
/// How long discovery documents and key sets are trusted before being read again.
const METADATA_TTL: Duration = Duration::from_secs(3600);
/// The least time between two JWKS reads prompted by an unknown `kid`.
const JWKS_REFRESH_MIN: Duration = Duration::from_secs(10);
/// Name of the cookie binding a provider sign-in to the browser that started it.
pub const BROWSER_COOKIE: &str = "logicore_provider_login";

/// Why a provider sign-in failed.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// No provider of that name.
    #[error("no such sign-in provider")]
    Unknown,
    /// The callback does not belong to a sign-in this browser started, or the provider
    /// answered with an error.
    #[error("{0}")]
    BadCallback(String),
    /// The provider could not be reached or answered nonsense.
    #[error("the sign-in provider failed: {0}")]
    Provider(String),
    /// The ID token did not verify.
    #[error("the provider's ID token is not valid: {0}")]
    BadIdToken(String),
    /// The e-mail address is not verified by the provider and no account is linked yet.
    #[error("the provider has not verified this e-mail address; it cannot be linked to an account")]
    Unverified,
    /// Our side failed.
    #[error(transparent)]
    Users(#[from] UsersError),
}

impl From<ProviderError> for Problem {
    fn from(error: ProviderError) -> Problem {
        match error {
            ProviderError::Unknown => Problem::not_found("sign-in provider"),
            ProviderError::BadCallback(_) => {
                Problem::new(ErrorCode::Unauthorized, error.to_string())
            }
            ProviderError::Provider(_) => Problem::new(ErrorCode::BadGateway, error.to_string()),
            ProviderError::BadIdToken(_) => {
                Problem::new(ErrorCode::Unauthorized, error.to_string())
            }
            ProviderError::Unverified => Problem::new(ErrorCode::Forbidden, error.to_string()),
            ProviderError::Users(err) => err.into(),
        }
    }
}

/// A provider's OpenID Connect discovery document (the fields we use).
#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
}

#[derive(Debug, Default)]
struct Cached {
    discovery: Option<(Instant, Discovery)>,
    jwks: Option<(Instant, jsonwebtoken::jwk::JwkSet)>,
}

#[derive(Debug)]
struct Provider {
    config: ProviderConfig,
    cached: Mutex<Cached>,
}

/// What a completed provider sign-in gives.
#[derive(Debug)]
pub enum SignedIn {
    /// The platform's own tokens (the sign-in started at the API).
    Tokens(Tokens),
    /// The redirect back to an OAuth client (the sign-in started on the authorization page).
    Redirect(String),
}

/// A started sign-in: where to send the browser and the cookie to set.
#[derive(Debug)]
pub struct Started {
    /// The provider's authorization URL.
    pub location: String,
    /// The browser-binding cookie's value.
    pub cookie: String,
}

/// The configured providers; cheap to clone.
#[derive(Debug, Clone)]
pub struct Providers {
    providers: Arc<BTreeMap<String, Provider>>,
    http: reqwest::Client,
    oauth: OAuthServer,
}

/// The claims of a provider's ID token we use.
#[derive(Debug, Deserialize)]
struct IdClaims {
    sub: String,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    email_verified: Option<bool>,
    #[serde(default)]
    name: Option<String>,
}

impl Providers {
    /// The providers of `configs`, signing in through `oauth`'s users service.
    pub fn new(configs: &[ProviderConfig], oauth: OAuthServer) -> Providers {
        let providers = configs
            .iter()
            .map(|config| {
                (
                    config.name.clone(),
                    Provider {
                        config: config.clone(),
                        cached: Mutex::new(Cached::default()),
                    },
                )
            })
            .collect();
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .unwrap_or_default();
        Providers {
            providers: Arc::new(providers),
            http,
            oauth,
        }
    }

    /// The names of the configured providers.
    pub fn names(&self) -> Vec<String> {
        self.providers.keys().cloned().collect()
    }

    fn provider(&self, name: &str) -> Result<&Provider, ProviderError> {
        self.providers.get(name).ok_or(ProviderError::Unknown)
    }

    /// Where the provider sends the browser back.
    pub fn callback_uri(&self, name: &str) -> String {
        format!(
            "{}/api/v1/auth/providers/{name}/callback",
            self.oauth.issuer()
        )
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, ProviderError> {
        let reply = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|err| ProviderError::Provider(format!("{url}: {err}")))?;
        if !reply.status().is_success() {
            return Err(ProviderError::Provider(format!(
                "{url} answered {}",
                reply.status()
            )));
        }
        reply
            .json()
            .await
            .map_err(|err| ProviderError::Provider(format!("{url}: {err}")))
    }

    async fn discovery(&self, provider: &Provider) -> Result<Discovery, ProviderError> {
        let mut cached = provider.cached.lock().await;
        if let Some((read, discovery)) = &cached.discovery
            && read.elapsed() < METADATA_TTL
        {
            return Ok(discovery.clone());
        }
        let issuer = provider.config.issuer.trim_end_matches('/');
        let discovery: Discovery = self
            .get_json(&format!("{issuer}/.well-known/openid-configuration"))
            .await?;
        // OpenID Connect Discovery §4.3: the document must name the issuer we asked.
        if discovery.issuer.trim_end_matches('/') != issuer {
            return Err(ProviderError::Provider(format!(
                "the discovery document names issuer {} instead of {issuer}",
                discovery.issuer
            )));
        }
        cached.discovery = Some((Instant::now(), discovery.clone()));
        Ok(discovery)
    }

    /// The provider's key of `kid`, reading the JWKS again (at most every 10 s) when the key
    /// is not known yet.
    async fn key(
        &self,
        provider: &Provider,
        jwks_uri: &str,
        kid: &str,
    ) -> Result<jsonwebtoken::jwk::Jwk, ProviderError> {
        let mut cached = provider.cached.lock().await;
        let fresh = |read: &Instant, limit: Duration| read.elapsed() < limit;
        if let Some((read, set)) = &cached.jwks {
            if let Some(key) = set.find(kid)
                && fresh(read, METADATA_TTL)
            {
                return Ok(key.clone());
            }
            if fresh(read, JWKS_REFRESH_MIN) {
                return Err(ProviderError::BadIdToken(format!("unknown key `{kid}`")));
            }
        }
        let set: jsonwebtoken::jwk::JwkSet = self.get_json(jwks_uri).await?;
        let key = set.find(kid).cloned();
        cached.jwks = Some((Instant::now(), set));
        key.ok_or_else(|| ProviderError::BadIdToken(format!("unknown key `{kid}`")))
    }

    /// Starts a sign-in at `name`; `authorize_query` is the authorization request it
    /// continues (from our sign-in page), if any.
    pub async fn start(
        &self,
        name: &str,
        authorize_query: Option<String>,
    ) -> Result<Started, ProviderError> {
        let provider = self.provider(name)?;
        let discovery = self.discovery(provider).await?;
        let state = random_token();
        let nonce = random_token();
        let verifier = random_token();
        let cookie = random_token();
        let challenge = URL_SAFE_NO_PAD.encode(aws_lc_rs::digest::digest(
            &aws_lc_rs::digest::SHA256,
            verifier.as_bytes(),
        ));
        let started = now();
        let login = ProviderLoginRow {
            provider: name.to_owned(),
            browser_hash: token_hash(&cookie),
            code_verifier: verifier,
            nonce: nonce.clone(),
            authorize_query,
            expires_at: started + LOGIN_TTL,
        };
        self.oauth
            .store()
            .insert_provider_login(&token_hash(&state), &login, started)
            .await?;
        let scopes = if provider.config.scopes.is_empty() {
            "openid email profile".to_owned()
        } else {
            provider.config.scopes.join(" ")
        };
        let callback = self.callback_uri(name);
        let location = with_query(
            &discovery.authorization_endpoint,
            &[
                ("response_type", "code"),
                ("client_id", &provider.config.client_id),
                ("redirect_uri", &callback),
                ("scope", &scopes),
                ("state", &state),
                ("nonce", &nonce),
                ("code_challenge", &challenge),
                ("code_challenge_method", "S256"),
            ],
        );
        Ok(Started { location, cookie })
    }

    /// Completes a sign-in: checks the callback against the sign-in this browser started,
    /// redeems the code, verifies the ID token, and signs the linked account in.
    pub async fn callback(
        &self,
        name: &str,
        query: &str,
        cookie: Option<&str>,
    ) -> Result<SignedIn, ProviderError> {
        let provider = self.provider(name)?;
        let params = parse_form(query).map_err(ProviderError::BadCallback)?;
        let state = params
            .get("state")
            .ok_or_else(|| ProviderError::BadCallback("state is missing".into()))?;
        let login = self
            .oauth
            .store()
            .take_provider_login(&token_hash(state))
            .await?
            .filter(|login| login.provider == name && login.expires_at > now())
            .ok_or_else(|| {
                ProviderError::BadCallback("unknown, used or expired sign-in state".into())
            })?;
        let same_browser = cookie.is_some_and(|cookie| {
            aws_lc_rs::constant_time::verify_slices_are_equal(
                token_hash(cookie).as_bytes(),
                login.browser_hash.as_bytes(),
            )
            .is_ok()
        });
        if !same_browser {
            return Err(ProviderError::BadCallback(
                "this sign-in was started in another browser".into(),
            ));
        }
        let discovery = self.discovery(provider).await?;
        // RFC 9207: an answer naming another issuer is a mix-up attack.
        if let Some(iss) = params.get("iss")
            && iss.trim_end_matches('/') != discovery.issuer.trim_end_matches('/')
        {
            return Err(ProviderError::BadCallback(
                "the answer comes from another issuer".into(),
            ));
        }
        if let Some(error) = params.get("error") {
            return Err(ProviderError::BadCallback(format!(
                "the provider refused the sign-in: {error}"
            )));
        }
        let code = params
            .get("code")
            .ok_or_else(|| ProviderError::BadCallback("code is missing".into()))?;
        let id_token = self
            .redeem(provider, &discovery, code, &login.code_verifier)
            .await?;
        let claims = self
            .verify_id_token(provider, &discovery, &id_token, &login.nonce)
            .await?;
        let user = self.account(name, claims).await?;
        match &login.authorize_query {
            Some(query) => match self.oauth.check_authorize(&parse_form(query)).await? {
                AuthorizeCheck::Valid(authorization) => Ok(SignedIn::Redirect(
                    self.oauth.issue_code(&authorization, &user).await?,
                )),
                AuthorizeCheck::Redirect(location) => Ok(SignedIn::Redirect(location)),
                AuthorizeCheck::Refuse(message) => Err(ProviderError::BadCallback(message)),
            },
            None => Ok(SignedIn::Tokens(self.oauth.users().sign_in(&user).await?)),
        }
    }

    /// Exchanges the code at the provider's token endpoint; returns the ID token.
    async fn redeem(
        &self,
        provider: &Provider,
        discovery: &Discovery,
        code: &str,
        verifier: &str,
    ) -> Result<String, ProviderError> {
        let callback = self.callback_uri(&provider.config.name);
        let mut pairs = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", callback.as_str()),
            ("code_verifier", verifier),
        ];
        let secret = provider.config.client_secret.expose();
        let mut request = self.http.post(&discovery.token_endpoint).header(
            http::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        );
        if secret.is_empty() {
            pairs.push(("client_id", &provider.config.client_id));
        } else {
            // RFC 6749 §2.3.1: id and secret are form-urlencoded inside Basic.
            let encode =
                |text: &str| form_urlencoded::byte_serialize(text.as_bytes()).collect::<String>();
            let basic = base64::engine::general_purpose::STANDARD.encode(format!(
                "{}:{}",
                encode(&provider.config.client_id),
                encode(secret)
            ));
            request = request.header(http::header::AUTHORIZATION, format!("Basic {basic}"));
        }
        let reply = request
            .body(form_encode(&pairs))
            .send()
            .await
            .map_err(|err| ProviderError::Provider(err.to_string()))?;
        let status = reply.status();
        let body: serde_json::Value = reply
            .json()
            .await
            .map_err(|err| ProviderError::Provider(err.to_string()))?;
        if !status.is_success() {
            return Err(ProviderError::Provider(format!(
                "the token endpoint answered {status}: {}",
                body["error"].as_str().unwrap_or("no error code")
            )));
        }
        body["id_token"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| ProviderError::Provider("the token answer has no id_token".into()))
    }

    async fn verify_id_token(
        &self,
        provider: &Provider,
        discovery: &Discovery,
        token: &str,
        nonce: &str,
    ) -> Result<IdClaims, ProviderError> {
        use jsonwebtoken::Algorithm;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|err| ProviderError::BadIdToken(err.to_string()))?;
        // Asymmetric algorithms only: a shared-secret token could be forged by any holder.
        if !matches!(
            header.alg,
            Algorithm::RS256
                | Algorithm::RS384
                | Algorithm::RS512
                | Algorithm::PS256
                | Algorithm::ES256
                | Algorithm::ES384
                | Algorithm::EdDSA
        ) {
            return Err(ProviderError::BadIdToken(format!(
                "algorithm {:?} is not accepted",
                header.alg
            )));
        }
        let kid = header
            .kid
            .ok_or_else(|| ProviderError::BadIdToken("no kid".into()))?;
        let jwk = self.key(provider, &discovery.jwks_uri, &kid).await?;
        let key = jsonwebtoken::DecodingKey::from_jwk(&jwk)
            .map_err(|err| ProviderError::BadIdToken(err.to_string()))?;
        let mut validation = jsonwebtoken::Validation::new(header.alg);
        validation.set_issuer(&[discovery.issuer.as_str()]);
        validation.set_audience(&[provider.config.client_id.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.leeway = self.oauth.users().settings().leeway.as_secs();
        let claims = jsonwebtoken::decode::<IdClaims>(token, &key, &validation)
            .map_err(|err| ProviderError::BadIdToken(err.to_string()))?
            .claims;
        if claims.nonce.as_deref() != Some(nonce) {
            return Err(ProviderError::BadIdToken("the nonce does not match".into()));
        }
        Ok(claims)
    }

    /// The account of a provider identity: the one linked to it, else the account with its
    /// e-mail address (verified by the provider), else a new customer account.
    async fn account(&self, name: &str, claims: IdClaims) -> Result<UserRow, ProviderError> {
        let store = self.oauth.store();
        let users = self.oauth.users();
        if let Some(id) = store.linked_user(name, &claims.sub).await? {
            return users
                .store()
                .get_user(id)
                .await?
                .ok_or_else(|| ProviderError::BadCallback("the linked account is gone".into()));
        }
        let (Some(email), Some(true)) = (claims.email.as_deref(), claims.email_verified) else {
            return Err(ProviderError::Unverified);
        };
        let email = email.trim().to_lowercase();
        let user = match users.store().find_by_email(&email).await? {
            Some(user) => user,
            None => {
                let display = claims
                    .name
                    .clone()
                    .filter(|name| !name.trim().is_empty())
                    .unwrap_or_else(|| email.split('@').next().unwrap_or("user").to_owned())
                    .chars()
                    .take(200)
                    .collect();
                let user = users
                    .register(email.clone(), random_password(), display)
                    .await?;
                tracing::info!(user = %user.id, provider = name, "account created at the first sign-in through a provider");
                user
            }
        };
        store.mark_email_verified(user.id).await?;
        store.link_user(name, &claims.sub, user.id, now()).await?;
        tracing::info!(user = %user.id, provider = name, "provider identity linked by verified e-mail");
        Ok(user)
    }
}

/// Starts a sign-in at a provider: a redirect to it, and a cookie binding the sign-in to this
/// browser. A query is the authorization request of our sign-in page it continues.
#[utoipa::path(get, path = "/api/v1/auth/providers/{name}", tag = "users",
    params(("name" = String, Path, description = "A provider of `[[auth.providers]]`")),
    responses(
        (status = 302, description = "To the provider's authorization endpoint"),
        (status = 404, description = "No such provider", body = logicore_platform::http::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 502, description = "The provider's discovery failed", body = logicore_platform::http::problem::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn start(
    axum::extract::State(providers): axum::extract::State<Providers>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
) -> Result<axum::response::Response, Problem> {
    use axum::response::IntoResponse;
    let started = providers
        .start(&name, query.filter(|query| !query.is_empty()))
        .await?;
    let secure = if providers.oauth.issuer().starts_with("https://") {
        "; Secure"
    } else {
        ""
    };
    let cookie = format!(
        "{BROWSER_COOKIE}={}; Path=/api/v1/auth/providers; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
        started.cookie,
        LOGIN_TTL.as_secs()
    );
    Ok((
        http::StatusCode::FOUND,
        [
            (http::header::LOCATION, started.location),
            (http::header::SET_COOKIE, cookie),
            (http::header::CACHE_CONTROL, "no-store".to_owned()),
        ],
    )
        .into_response())
}

/// The provider's redirect back: signs the linked account in — the platform's tokens, or the
/// redirect to the OAuth client whose authorization request started it.
#[utoipa::path(get, path = "/api/v1/auth/providers/{name}/callback", tag = "users",
    params(("name" = String, Path, description = "A provider of `[[auth.providers]]`")),
    responses(
        (status = 200, description = "Tokens", body = Tokens),
        (status = 302, description = "Back to the OAuth client with a code"),
        (status = 401, description = "Not a sign-in this browser started, or the ID token did not verify", body = logicore_platform::http::problem::ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "E-mail address not verified by the provider", body = logicore_platform::http::problem::ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn callback(
    axum::extract::State(providers): axum::extract::State<Providers>,
    axum::extract::Path(name): axum::extract::Path<String>,
    axum::extract::RawQuery(query): axum::extract::RawQuery,
    headers: http::HeaderMap,
) -> Result<axum::response::Response, Problem> {
    use axum::response::IntoResponse;
    let cookie = headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == BROWSER_COOKIE)
        .map(|(_, value)| value.to_owned());
    let signed_in = providers
        .callback(&name, &query.unwrap_or_default(), cookie.as_deref())
        .await?;
    let clear = format!(
        "{BROWSER_COOKIE}=; Path=/api/v1/auth/providers; Max-Age=0; HttpOnly; SameSite=Lax"
    );
    let mut response = match signed_in {
        SignedIn::Tokens(tokens) => logicore_platform::http::Json(tokens).into_response(),
        SignedIn::Redirect(location) => (
            http::StatusCode::FOUND,
            [(http::header::LOCATION, location)],
        )
            .into_response(),
    };
    let headers = response.headers_mut();
    if let Ok(clear) = http::HeaderValue::from_str(&clear) {
        headers.insert(http::header::SET_COOKIE, clear);
    }
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-store"),
    );
    Ok(response)
}
