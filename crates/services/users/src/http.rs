//! HTTP handlers of the users service.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use logicore_platform::auth::{Caller, Permission};
use logicore_platform::http::json::parse_object;
use logicore_platform::http::problem::ProblemBody;
use logicore_platform::http::{Json, PageRequest, Problem, QueryMap};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::service::{Tokens, UsersService};
use crate::store::UserRow;

/// Registration body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterIn {
    /// E-mail address (the sign-in name, case-insensitive).
    pub email: String,
    /// 8-256 characters.
    pub password: String,
    /// Display name.
    pub name: String,
}

/// Sign-in body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginIn {
    /// E-mail address.
    pub email: String,
    /// Password.
    pub password: String,
}

/// Refresh and sign-out body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshIn {
    /// The refresh token of the last sign-in or refresh.
    pub refresh_token: String,
}

/// A user as shown to clients.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserOut {
    /// Id.
    pub id: String,
    /// E-mail address.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Roles.
    pub roles: Vec<String>,
    /// The SSN, masked (`***-**-6789`), or null.
    pub ssn: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
}

impl UserOut {
    fn of(service: &UsersService, user: UserRow) -> UserOut {
        UserOut {
            id: user.id.to_string(),
            roles: user.role_list(),
            ssn: service.masked_ssn(&user),
            email: user.email,
            name: user.name,
            created_at: user.created_at,
        }
    }
}

/// Creates a customer account.
#[utoipa::path(post, path = "/api/v1/auth/register", tag = "users", request_body = RegisterIn,
    responses(
        (status = 201, description = "Registered", body = UserOut),
        (status = 400, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "E-mail taken", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn register(
    State(service): State<UsersService>,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    let body: RegisterIn = parse_object(body)?;
    let user = service
        .register(body.email, body.password, body.name)
        .await?;
    Ok((StatusCode::CREATED, Json(UserOut::of(&service, user))).into_response())
}

/// Signs in.
#[utoipa::path(post, path = "/api/v1/auth/login", tag = "users", request_body = LoginIn,
    responses(
        (status = 200, description = "Tokens", body = Tokens),
        (status = 401, description = "Invalid e-mail or password", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn login(
    State(service): State<UsersService>,
    Json(body): Json<Value>,
) -> Result<Json<Tokens>, Problem> {
    let body: LoginIn = parse_object(body)?;
    Ok(Json(service.login(&body.email, body.password).await?))
}

/// Exchanges a refresh token for new tokens (the old one is spent).
#[utoipa::path(post, path = "/api/v1/auth/refresh", tag = "users", request_body = RefreshIn,
    responses(
        (status = 200, description = "Tokens", body = Tokens),
        (status = 401, description = "Unknown, spent, revoked or expired", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn refresh(
    State(service): State<UsersService>,
    Json(body): Json<Value>,
) -> Result<Json<Tokens>, Problem> {
    let body: RefreshIn = parse_object(body)?;
    Ok(Json(service.refresh(&body.refresh_token).await?))
}

/// Signs out (revokes the refresh token's family).
#[utoipa::path(post, path = "/api/v1/auth/logout", tag = "users", request_body = RefreshIn,
    responses((status = 204, description = "Signed out")))]
pub async fn logout(
    State(service): State<UsersService>,
    Json(body): Json<Value>,
) -> Result<StatusCode, Problem> {
    let body: RefreshIn = parse_object(body)?;
    service.logout(&body.refresh_token).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The caller's account.
#[utoipa::path(get, path = "/api/v1/users/me", tag = "users",
    responses(
        (status = 200, description = "The account", body = UserOut),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn me(
    State(service): State<UsersService>,
    caller: Caller,
) -> Result<Json<UserOut>, Problem> {
    let user = service.me(&caller.0.subject).await?;
    Ok(Json(UserOut::of(&service, user)))
}

/// Changes the caller's name or SSN (JSON merge patch; the SSN is stored encrypted and only
/// ever shown masked).
#[utoipa::path(patch, path = "/api/v1/users/me", tag = "users",
    responses(
        (status = 200, description = "The account", body = UserOut),
        (status = 400, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn patch_me(
    State(service): State<UsersService>,
    caller: Caller,
    Json(patch): Json<Value>,
) -> Result<Json<UserOut>, Problem> {
    let user = service.update_me(&caller.0.subject, &patch).await?;
    Ok(Json(UserOut::of(&service, user)))
}

/// The public token-signing keys.
#[utoipa::path(get, path = "/.well-known/jwks.json", tag = "users",
    responses((status = 200, description = "JWKS (RFC 7517)")))]
pub async fn jwks(State(service): State<UsersService>) -> Json<Value> {
    Json(service.jwks())
}

/// Payment method body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentMethodIn {
    /// 13-19 digits, Luhn-valid.
    pub card_number: String,
    /// 1-12.
    pub exp_month: i64,
    /// Four digits, not in the past.
    pub exp_year: i64,
}

/// A payment method as shown (the number masked).
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentMethodOut {
    /// `************` and the last four digits.
    pub card_number: String,
    /// `visa`, `mastercard`, `amex`, `discover` or `unknown`.
    pub brand: String,
    /// Expiry month.
    pub exp_month: u32,
    /// Expiry year.
    pub exp_year: i32,
}

/// Sets the caller's card (stored encrypted, shown masked).
#[utoipa::path(put, path = "/api/v1/users/me/payment-method", tag = "users", request_body = PaymentMethodIn,
    responses(
        (status = 200, description = "The payment method", body = PaymentMethodOut),
        (status = 400, description = "Invalid card", body = ProblemBody, content_type = "application/problem+json"),
        (status = 401, description = "No valid token", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn put_payment_method(
    State(service): State<UsersService>,
    caller: Caller,
    Json(body): Json<Value>,
) -> Result<Json<PaymentMethodOut>, Problem> {
    let body: PaymentMethodIn = parse_object(body)?;
    let card = service
        .put_payment_method(
            &caller.0.subject,
            &body.card_number,
            body.exp_month,
            body.exp_year,
        )
        .await?;
    Ok(Json(PaymentMethodOut {
        card_number: card.masked(),
        brand: card.brand.to_owned(),
        exp_month: card.exp_month,
        exp_year: card.exp_year,
    }))
}

/// An account created by an administrator.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AdminUserIn {
    /// E-mail address.
    pub email: String,
    /// 8-256 characters.
    pub password: String,
    /// Display name.
    pub name: String,
    /// Among admin, catalog_manager, ops, customer.
    pub roles: Vec<String>,
}

/// New roles of an account.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RolesIn {
    /// Among admin, catalog_manager, ops, customer.
    pub roles: Vec<String>,
}

/// One page of accounts.
#[derive(Debug, Serialize, ToSchema)]
pub struct UserPage {
    /// The accounts.
    pub items: Vec<UserOut>,
    /// Cursor of the next page, or null.
    pub next_cursor: Option<String>,
}

/// Lists accounts (admin).
#[utoipa::path(get, path = "/api/v1/admin/users", tag = "users",
    params(
        ("limit" = Option<u32>, Query, description = "Items per page (default 50, at most 200)"),
        ("cursor" = Option<String>, Query, description = "Opaque cursor from `next_cursor`"),
    ),
    responses(
        (status = 200, description = "One page of accounts", body = UserPage),
        (status = 403, description = "Not an administrator", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn list_users(
    State(service): State<UsersService>,
    caller: Caller,
    QueryMap(query): QueryMap,
) -> Result<Json<UserPage>, Problem> {
    caller.require(Permission::Administer)?;
    let page = service
        .list_users(&PageRequest::from_query(&query)?)
        .await?;
    Ok(Json(UserPage {
        items: page
            .items
            .into_iter()
            .map(|user| UserOut::of(&service, user))
            .collect(),
        next_cursor: page.next_cursor,
    }))
}

/// Creates an account with roles (admin).
#[utoipa::path(post, path = "/api/v1/admin/users", tag = "users", request_body = AdminUserIn,
    responses(
        (status = 201, description = "Created", body = UserOut),
        (status = 400, description = "Invalid fields", body = ProblemBody, content_type = "application/problem+json"),
        (status = 403, description = "Not an administrator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 409, description = "E-mail taken", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn create_user(
    State(service): State<UsersService>,
    caller: Caller,
    Json(body): Json<Value>,
) -> Result<Response, Problem> {
    caller.require(Permission::Administer)?;
    let body: AdminUserIn = parse_object(body)?;
    let user = service
        .create_user(body.email, body.password, body.name, &body.roles)
        .await?;
    Ok((StatusCode::CREATED, Json(UserOut::of(&service, user))).into_response())
}

/// Replaces an account's roles (admin).
#[utoipa::path(put, path = "/api/v1/admin/users/{id}/roles", tag = "users", request_body = RolesIn,
    params(("id" = String, Path, description = "Account id")),
    responses(
        (status = 200, description = "The account", body = UserOut),
        (status = 403, description = "Not an administrator", body = ProblemBody, content_type = "application/problem+json"),
        (status = 404, description = "No such account", body = ProblemBody, content_type = "application/problem+json"),
    ))]
pub async fn set_roles(
    State(service): State<UsersService>,
    caller: Caller,
    axum::extract::Path(id): axum::extract::Path<String>,
    Json(body): Json<Value>,
) -> Result<Json<UserOut>, Problem> {
    caller.require(Permission::Administer)?;
    let body: RolesIn = parse_object(body)?;
    let user = service.set_roles(&id, &body.roles).await?;
    Ok(Json(UserOut::of(&service, user)))
}
