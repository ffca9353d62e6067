//! HTTP handlers of the authorization server.

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};
use logicore_platform::auth::{Caller, Permission};
use logicore_platform::http::json::parse_object;
use logicore_platform::http::problem::ProblemBody;
use logicore_platform::http::{Json, Problem};
use serde::Deserialize;
use serde_json::{Value, json};
use utoipa::ToSchema;

use super::{AuthorizeCheck, OAuthError, OAuthServer, RegisteredClient, page, parse_form};
use crate::error::UsersError;

/// Headers of every authorization-server answer: never cached, never framed.
fn protect(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(header::PRAGMA, HeaderValue::from_static("no-cache"));
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
    );
    response
}

fn html(status: StatusCode, body: String) -> Response {
    protect(
        (
            status,
            [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
            body,
        )
            .into_response(),
    )
}

fn redirect(location: &str) -> Response {
    redirect_with(StatusCode::FOUND, location)
}

/// The redirect of a form POST: 303, so the browser follows with a GET and never re-posts the
/// password (RFC 9700 §4.11).
fn redirect_after_post(location: &str) -> Response {
    redirect_with(StatusCode::SEE_OTHER, location)
}

fn redirect_with(status: StatusCode, location: &str) -> Response {
    match HeaderValue::from_str(location) {
        Ok(location) => protect((status, [(header::LOCATION, location)]).into_response()),
        Err(_) => html(
            StatusCode::BAD_REQUEST,
            page::refusal("the redirect URI cannot be used"),
        ),
    }
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        let mut response = (
            self.status,
            Json(json!({"error": self.error, "error_description": self.description})),
        )
            .into_response();
        if self.challenge {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Basic realm=\"logicore\""),
            );
        }
        protect(response)
    }
}

/// Shows the sign-in page of an authorization request (code flow, PKCE S256 required).
#[utoipa::path(get, path = "/oauth/authorize", tag = "oauth",
    params(
        ("response_type" = String, Query, description = "`code`"),
        ("client_id" = String, Query, description = "A registered client"),
        ("redirect_uri" = String, Query, description = "Exactly one of the client's redirect URIs"),
        ("state" = String, Query, description = "Returned as is; at least 8 characters"),
        ("code_challenge" = String, Query, description = "BASE64URL(SHA-256(code_verifier))"),
        ("code_challenge_method" = String, Query, description = "`S256` (`plain` is refused)"),
        ("scope" = Option<String>, Query, description = "Among openid, profile, email"),
        ("nonce" = Option<String>, Query, description = "Copied into the ID token"),
    ),
    responses(
        (status = 200, description = "The sign-in form", content_type = "text/html"),
        (status = 302, description = "An error sent back to the client's redirect URI"),
        (status = 400, description = "Unknown client or redirect URI (never redirected)", content_type = "text/html"),
    ))]
pub async fn authorize_page(
    State(server): State<OAuthServer>,
    RawQuery(query): RawQuery,
) -> Response {
    let query = query.unwrap_or_default();
    match server.check_authorize(&parse_form(&query)).await {
        Ok(AuthorizeCheck::Valid(authorization)) => html(
            StatusCode::OK,
            page::sign_in(
                &authorization.client.client_name,
                &query,
                None,
                &server.provider_names(),
            ),
        ),
        Ok(AuthorizeCheck::Redirect(location)) => redirect(&location),
        Ok(AuthorizeCheck::Refuse(message)) => {
            html(StatusCode::BAD_REQUEST, page::refusal(&message))
        }
        Err(err) => server_failure(&err),
    }
}

fn server_failure(err: &UsersError) -> Response {
    tracing::error!(error = %err, "the authorization endpoint failed");
    html(
        StatusCode::INTERNAL_SERVER_ERROR,
        page::refusal("the sign-in service failed; try again later"),
    )
}

/// Signs in (form fields `email`, `password`) and redirects to the client with a code.
#[utoipa::path(post, path = "/oauth/authorize", tag = "oauth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded",
        description = "`email` and `password`; the query is the authorization request's"),
    responses(
        (status = 302, description = "Back to the client: `code`, `state`, `iss`"),
        (status = 400, description = "Unknown client or redirect URI", content_type = "text/html"),
        (status = 401, description = "Wrong e-mail or password: the form again", content_type = "text/html"),
    ))]
pub async fn authorize_submit(
    State(server): State<OAuthServer>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = query.unwrap_or_default();
    let authorization = match server.check_authorize(&parse_form(&query)).await {
        Ok(AuthorizeCheck::Valid(authorization)) => authorization,
        Ok(AuthorizeCheck::Redirect(location)) => return redirect_after_post(&location),
        Ok(AuthorizeCheck::Refuse(message)) => {
            return html(StatusCode::BAD_REQUEST, page::refusal(&message));
        }
        Err(err) => return server_failure(&err),
    };
    let again = |status: StatusCode, message: &str| {
        html(
            status,
            page::sign_in(
                &authorization.client.client_name,
                &query,
                Some(message),
                &server.provider_names(),
            ),
        )
    };
    let form = match form_body(&headers, &body) {
        Ok(form) => form,
        Err(message) => return again(StatusCode::BAD_REQUEST, &message),
    };
    let (Some(email), Some(password)) = (form.get("email"), form.get("password")) else {
        return again(StatusCode::BAD_REQUEST, "Enter your e-mail and password.");
    };
    match server
        .approve(&authorization, email, password.clone())
        .await
    {
        Ok(location) => redirect_after_post(&location),
        Err(UsersError::BadCredentials) => {
            again(StatusCode::UNAUTHORIZED, "Wrong e-mail or password.")
        }
        Err(UsersError::TooManyAttempts) => again(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed sign-ins for this account; try again later.",
        ),
        Err(err) => server_failure(&err),
    }
}

/// The parameters of a form body (`application/x-www-form-urlencoded`).
fn form_body(headers: &HeaderMap, body: &Bytes) -> Result<BTreeMap<String, String>, String> {
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .is_some_and(|value| {
            value
                .trim()
                .eq_ignore_ascii_case("application/x-www-form-urlencoded")
        });
    if !form {
        return Err("the body must be application/x-www-form-urlencoded".to_owned());
    }
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
    parse_form(text)
}

/// The form parameters and authenticated client of a token, revocation or introspection
/// request.
async fn client_request(
    server: &OAuthServer,
    headers: &HeaderMap,
    body: &Bytes,
) -> Result<(super::Client, BTreeMap<String, String>), OAuthError> {
    let params = form_body(headers, body).map_err(OAuthError::invalid_request)?;
    let authorization = headers
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok());
    let client = server.authenticate_client(authorization, &params).await?;
    Ok((client, params))
}

/// Issues tokens: `authorization_code` (with `code_verifier`) or `refresh_token` (rotated).
#[utoipa::path(post, path = "/oauth/token", tag = "oauth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "access_token, token_type, expires_in, refresh_token, scope, id_token (openid)"),
        (status = 400, description = "RFC 6749 §5.2 error (`invalid_grant`, ...)"),
        (status = 401, description = "`invalid_client`"),
    ))]
pub async fn token(
    State(server): State<OAuthServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (client, params) = client_request(&server, &headers, &body).await?;
    let tokens = server.token(&client, &params).await?;
    Ok(protect(Json(tokens).into_response()))
}

/// Revokes a refresh token (and its session) or an access token (RFC 7009).
#[utoipa::path(post, path = "/oauth/revoke", tag = "oauth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "Revoked, or nothing to revoke"),
        (status = 401, description = "`invalid_client`"),
    ))]
pub async fn revoke(
    State(server): State<OAuthServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (client, params) = client_request(&server, &headers, &body).await?;
    let token = params
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is missing"))?;
    server.revoke(&client, token).await?;
    Ok(protect(StatusCode::OK.into_response()))
}

/// Says whether a token is active and what it carries (RFC 7662); confidential clients only.
#[utoipa::path(post, path = "/oauth/introspect", tag = "oauth",
    request_body(content = String, content_type = "application/x-www-form-urlencoded"),
    responses(
        (status = 200, description = "`{\"active\": ...}` and the token's claims"),
        (status = 401, description = "`invalid_client`"),
    ))]
pub async fn introspect(
    State(server): State<OAuthServer>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, OAuthError> {
    let (client, params) = client_request(&server, &headers, &body).await?;
    if client.secret_hash.is_none() {
        return Err(OAuthError::invalid_client(
            "introspection needs a confidential client",
        ));
    }
    let token = params
        .get("token")
        .ok_or_else(|| OAuthError::invalid_request("token is missing"))?;
    Ok(protect(
        Json(server.introspect(token).await?).into_response(),
    ))
}

fn bearer_challenge(status: StatusCode, error: Option<&str>) -> Response {
    let challenge = match error {
        Some(error) => format!("Bearer realm=\"logicore\", error=\"{error}\""),
        None => "Bearer realm=\"logicore\"".to_owned(),
    };
    let body = error.map_or_else(|| json!({}), |error| json!({"error": error}));
    let mut response = (status, Json(body)).into_response();
    if let Ok(value) = HeaderValue::from_str(&challenge) {
        response
            .headers_mut()
            .insert(header::WWW_AUTHENTICATE, value);
    }
    protect(response)
}

/// OpenID Connect userinfo: `sub`, and by scope `email`, `email_verified` (scope `email`) and
/// `name` (scope `profile`). GET or POST.
#[utoipa::path(get, path = "/oauth/userinfo", tag = "oauth",
    responses(
        (status = 200, description = "The signed-in account's claims"),
        (status = 401, description = "No live access token"),
        (status = 403, description = "The token lacks scope openid"),
    ))]
pub async fn userinfo(State(server): State<OAuthServer>, headers: HeaderMap) -> Response {
    let Some(token) = logicore_platform::auth::bearer_token(&headers) else {
        return bearer_challenge(StatusCode::UNAUTHORIZED, None);
    };
    let claims = match server.live_access(token).await {
        Ok(Some(claims)) => claims,
        Ok(None) => return bearer_challenge(StatusCode::UNAUTHORIZED, Some("invalid_token")),
        Err(err) => return OAuthError::from(err).into_response(),
    };
    let openid = claims
        .scope
        .as_deref()
        .unwrap_or("")
        .split_whitespace()
        .any(|scope| scope == "openid");
    if !openid {
        return bearer_challenge(StatusCode::FORBIDDEN, Some("insufficient_scope"));
    }
    match server.userinfo(&claims).await {
        Ok(Some(info)) => protect(Json(info).into_response()),
        Ok(None) => bearer_challenge(StatusCode::UNAUTHORIZED, Some("invalid_token")),
        Err(err) => OAuthError::from(err).into_response(),
    }
}

/// OpenID Connect userinfo by POST (OpenID Connect Core §5.3.1).
#[utoipa::path(post, path = "/oauth/userinfo", tag = "oauth",
    responses(
        (status = 200, description = "The signed-in account's claims"),
        (status = 401, description = "No live access token"),
    ))]
pub async fn userinfo_post(server: State<OAuthServer>, headers: HeaderMap) -> Response {
    userinfo(server, headers).await
}

/// Authorization server metadata (RFC 8414).
#[utoipa::path(get, path = "/.well-known/oauth-authorization-server", tag = "oauth",
    responses((status = 200, description = "RFC 8414 metadata")))]
pub async fn metadata(State(server): State<OAuthServer>) -> Json<Value> {
    Json(server.metadata())
}

/// OpenID Connect discovery.
#[utoipa::path(get, path = "/.well-known/openid-configuration", tag = "oauth",
    responses((status = 200, description = "OpenID Provider metadata")))]
pub async fn openid_configuration(State(server): State<OAuthServer>) -> Json<Value> {
    Json(server.openid_configuration())
}

/// A client registration (RFC 7591 field names).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClientIn {
    /// Shown on the sign-in page.
    pub client_name: String,
    /// Exact redirect URIs: https, http on a loopback host, or a private-use scheme.
    pub redirect_uris: Vec<String>,
    /// `client_secret_basic` (default), `client_secret_post` or `none` (public client).
    pub token_endpoint_auth_method: Option<String>,
}

/// Registers an OAuth client (admin); a confidential client's secret is shown only now.
#[utoipa::path(post, path = "/api/v1/admin/oauth-clients", tag = "oauth", request_body = ClientIn,
    responses(
        (status = 201, description = "Registered", body = RegisteredClient),
        (status = 400, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn register_client(
    State(server): State<OAuthServer>,
    caller: Caller,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    caller.require(Permission::Administer)?;
    let body: ClientIn = parse_object(body)?;
    let client = server
        .register_client(
            body.client_name,
            body.redirect_uris,
            body.token_endpoint_auth_method,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(client)).into_response())
}
