//! OAuth storage: clients, authorization codes, revoked access tokens.

use chrono::{DateTime, Utc};
use logicore_platform::db::{Db, Tx};
use sea_query::{Expr, ExprTrait, Iden, OnConflict, Query};
use uuid::Uuid;

use crate::error::UsersError;

#[derive(Iden, Clone, Copy)]
enum OauthClients {
    Table,
    ClientId,
    SecretHash,
    ClientName,
    RedirectUris,
    TokenEndpointAuthMethod,
    CreatedAt,
}

#[derive(Iden, Clone, Copy)]
enum OauthCodes {
    Table,
    CodeHash,
    ClientId,
    UserId,
    RedirectUri,
    Scope,
    CodeChallenge,
    Nonce,
    FamilyId,
    AccessJti,
    AuthTime,
    ExpiresAt,
    UsedAt,
    CreatedAt,
}

#[derive(Iden, Clone, Copy)]
enum RevokedTokens {
    Table,
    Jti,
    ExpiresAt,
}

#[derive(Iden, Clone, Copy)]
enum Users {
    Table,
    Id,
    EmailVerified,
}

/// A registered OAuth client.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ClientRow {
    /// Its id.
    pub client_id: String,
    /// SHA-256 of its secret (confidential clients).
    pub secret_hash: Option<String>,
    /// Display name.
    pub client_name: String,
    /// JSON array of exact redirect URIs.
    pub redirect_uris: String,
    /// `client_secret_basic`, `client_secret_post` or `none`.
    pub token_endpoint_auth_method: String,
    /// Registration time.
    pub created_at: DateTime<Utc>,
}

/// An authorization code (stored by hash).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CodeRow {
    /// The client it was issued to.
    pub client_id: String,
    /// The account that signed in.
    pub user_id: Uuid,
    /// The redirect URI of the authorization request.
    pub redirect_uri: String,
    /// Granted scope (space-separated).
    pub scope: String,
    /// PKCE S256 challenge.
    pub code_challenge: String,
    /// OpenID Connect nonce.
    pub nonce: Option<String>,
    /// The refresh-token family its tokens belong to.
    pub family_id: Uuid,
    /// The access token issued with it.
    pub access_jti: Option<String>,
    /// When the account signed in.
    pub auth_time: DateTime<Utc>,
    /// End of validity.
    pub expires_at: DateTime<Utc>,
    /// Set when redeemed.
    pub used_at: Option<DateTime<Utc>>,
}

const CLIENT_COLUMNS: [OauthClients; 6] = [
    OauthClients::ClientId,
    OauthClients::SecretHash,
    OauthClients::ClientName,
    OauthClients::RedirectUris,
    OauthClients::TokenEndpointAuthMethod,
    OauthClients::CreatedAt,
];

const CODE_COLUMNS: [OauthCodes; 12] = [
    OauthCodes::ClientId,
    OauthCodes::UserId,
    OauthCodes::RedirectUri,
    OauthCodes::Scope,
    OauthCodes::CodeChallenge,
    OauthCodes::Nonce,
    OauthCodes::FamilyId,
    OauthCodes::AccessJti,
    OauthCodes::AuthTime,
    OauthCodes::ExpiresAt,
    OauthCodes::UsedAt,
    OauthCodes::CodeHash,
];

/// Reads and writes OAuth state.
#[derive(Debug, Clone)]
pub struct OAuthStore {
    db: Db,
}

impl OAuthStore {
    /// Wraps the database handle.
    pub fn new(db: Db) -> Self {
        OAuthStore { db }
    }

    /// Opens a write transaction.
    pub async fn begin(&self) -> Result<Tx, UsersError> {
        Ok(self.db.begin().await?)
    }

    /// Runs one write in its own transaction.
    async fn write(
        &self,
        statement: &impl logicore_platform::db::SqlxBinder,
    ) -> Result<(), UsersError> {
        let mut tx = self.db.begin().await?;
        tx.execute(statement).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Registers a client.
    pub async fn insert_client(&self, client: &ClientRow) -> Result<(), UsersError> {
        let insert = Query::insert()
            .into_table(OauthClients::Table)
            .columns(CLIENT_COLUMNS)
            .values_panic([
                client.client_id.clone().into(),
                client.secret_hash.clone().into(),
                client.client_name.clone().into(),
                client.redirect_uris.clone().into(),
                client.token_endpoint_auth_method.clone().into(),
                client.created_at.into(),
            ])
            .to_owned();
        self.write(&insert).await
    }

    /// A registered client.
    pub async fn get_client(&self, client_id: &str) -> Result<Option<ClientRow>, UsersError> {
        let select = Query::select()
            .columns(CLIENT_COLUMNS)
            .from(OauthClients::Table)
            .and_where(Expr::col(OauthClients::ClientId).eq(client_id))
            .to_owned();
        Ok(self.db.fetch_optional(&select).await?)
    }

    /// Stores an authorization code by its hash.
    pub async fn insert_code(
        &self,
        hash: &str,
        code: &CodeRow,
        now: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        let mut columns = CODE_COLUMNS.to_vec();
        columns.push(OauthCodes::CreatedAt);
        let insert = Query::insert()
            .into_table(OauthCodes::Table)
            .columns(columns)
            .values_panic([
                code.client_id.clone().into(),
                code.user_id.into(),
                code.redirect_uri.clone().into(),
                code.scope.clone().into(),
                code.code_challenge.clone().into(),
                code.nonce.clone().into(),
                code.family_id.into(),
                code.access_jti.clone().into(),
                code.auth_time.into(),
                code.expires_at.into(),
                code.used_at.into(),
                hash.into(),
                now.into(),
            ])
            .to_owned();
        // Expired codes are of no use to anyone: they go as new ones come.
        let expired = Query::delete()
            .from_table(OauthCodes::Table)
            .and_where(Expr::col(OauthCodes::ExpiresAt).lt(now - chrono::Duration::hours(1)))
            .to_owned();
        let mut tx = self.db.begin().await?;
        tx.execute(&insert).await?;
        tx.execute(&expired).await?;
        tx.commit().await?;
        Ok(())
    }

    /// The code with `hash`, inside `tx`.
    pub async fn find_code(&self, tx: &mut Tx, hash: &str) -> Result<Option<CodeRow>, UsersError> {
        let select = Query::select()
            .columns(CODE_COLUMNS)
            .from(OauthCodes::Table)
            .and_where(Expr::col(OauthCodes::CodeHash).eq(hash))
            .to_owned();
        Ok(tx.fetch_optional(&select).await?)
    }

    /// Marks a code redeemed; false when it already was (a concurrent redemption won).
    pub async fn spend_code(
        &self,
        tx: &mut Tx,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, UsersError> {
        let update = Query::update()
            .table(OauthCodes::Table)
            .value(OauthCodes::UsedAt, now)
            .and_where(Expr::col(OauthCodes::CodeHash).eq(hash))
            .and_where(Expr::col(OauthCodes::UsedAt).is_null())
            .to_owned();
        Ok(tx.execute(&update).await? == 1)
    }

    /// Records the access token issued with a code (revoked if the code is replayed).
    pub async fn set_code_jti(&self, tx: &mut Tx, hash: &str, jti: &str) -> Result<(), UsersError> {
        let update = Query::update()
            .table(OauthCodes::Table)
            .value(OauthCodes::AccessJti, jti)
            .and_where(Expr::col(OauthCodes::CodeHash).eq(hash))
            .to_owned();
        tx.execute(&update).await?;
        Ok(())
    }

    /// Revokes an access token by `jti` until it would have expired anyway.
    pub async fn revoke_jti(
        &self,
        tx: &mut Tx,
        jti: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        let insert = Query::insert()
            .into_table(RevokedTokens::Table)
            .columns([RevokedTokens::Jti, RevokedTokens::ExpiresAt])
            .values_panic([jti.into(), expires_at.into()])
            .on_conflict(
                OnConflict::column(RevokedTokens::Jti)
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        tx.execute(&insert).await?;
        // A revoked token past its expiry is refused anyway.
        let expired = Query::delete()
            .from_table(RevokedTokens::Table)
            .and_where(Expr::col(RevokedTokens::ExpiresAt).lt(Utc::now()))
            .to_owned();
        tx.execute(&expired).await?;
        Ok(())
    }

    /// Returns true when the access token `jti` was revoked.
    pub async fn is_revoked(&self, jti: &str) -> Result<bool, UsersError> {
        let select = Query::select()
            .column(RevokedTokens::Jti)
            .from(RevokedTokens::Table)
            .and_where(Expr::col(RevokedTokens::Jti).eq(jti))
            .to_owned();
        let row: Option<(String,)> = self.db.fetch_optional(&select).await?;
        Ok(row.is_some())
    }

    /// Whether the account's e-mail address is verified (accounts made by operators, or
    /// signed in through a provider that verified it).
    pub async fn email_verified(&self, user: Uuid) -> Result<bool, UsersError> {
        let select = Query::select()
            .column(Users::EmailVerified)
            .from(Users::Table)
            .and_where(Expr::col(Users::Id).eq(user))
            .to_owned();
        let row: Option<(bool,)> = self.db.fetch_optional(&select).await?;
        Ok(row.is_some_and(|(verified,)| verified))
    }

    /// Marks the account's e-mail address verified.
    pub async fn mark_email_verified(&self, user: Uuid) -> Result<(), UsersError> {
        let update = Query::update()
            .table(Users::Table)
            .value(Users::EmailVerified, true)
            .and_where(Expr::col(Users::Id).eq(user))
            .to_owned();
        self.write(&update).await
    }
}

#[derive(Iden, Clone, Copy)]
enum ProviderLogins {
    Table,
    StateHash,
    Provider,
    BrowserHash,
    CodeVerifier,
    Nonce,
    AuthorizeQuery,
    ExpiresAt,
    CreatedAt,
}

#[derive(Iden, Clone, Copy)]
enum UserIdentities {
    Table,
    Provider,
    Subject,
    UserId,
    CreatedAt,
}

/// A sign-in at an external provider under way (stored by the hash of its `state`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ProviderLoginRow {
    /// The provider's name.
    pub provider: String,
    /// Hash of the browser cookie that started it (login CSRF defence).
    pub browser_hash: String,
    /// The PKCE verifier we sent the challenge of.
    pub code_verifier: String,
    /// The nonce the ID token must carry.
    pub nonce: String,
    /// The authorization request (query) it continues, when it started on our sign-in page.
    pub authorize_query: Option<String>,
    /// End of validity.
    pub expires_at: DateTime<Utc>,
}

impl OAuthStore {
    /// Remembers a provider sign-in under way.
    pub async fn insert_provider_login(
        &self,
        state_hash: &str,
        login: &ProviderLoginRow,
        now: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        let insert = Query::insert()
            .into_table(ProviderLogins::Table)
            .columns([
                ProviderLogins::StateHash,
                ProviderLogins::Provider,
                ProviderLogins::BrowserHash,
                ProviderLogins::CodeVerifier,
                ProviderLogins::Nonce,
                ProviderLogins::AuthorizeQuery,
                ProviderLogins::ExpiresAt,
                ProviderLogins::CreatedAt,
            ])
            .values_panic([
                state_hash.into(),
                login.provider.clone().into(),
                login.browser_hash.clone().into(),
                login.code_verifier.clone().into(),
                login.nonce.clone().into(),
                login.authorize_query.clone().into(),
                login.expires_at.into(),
                now.into(),
            ])
            .to_owned();
        let mut tx = self.db.begin().await?;
        tx.execute(&insert).await?;
        // Abandoned sign-ins do not pile up.
        let expired = Query::delete()
            .from_table(ProviderLogins::Table)
            .and_where(Expr::col(ProviderLogins::ExpiresAt).lt(now))
            .to_owned();
        tx.execute(&expired).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Takes (reads and deletes) the provider sign-in of `state_hash`: each is used once.
    pub async fn take_provider_login(
        &self,
        state_hash: &str,
    ) -> Result<Option<ProviderLoginRow>, UsersError> {
        let select = Query::select()
            .columns([
                ProviderLogins::Provider,
                ProviderLogins::BrowserHash,
                ProviderLogins::CodeVerifier,
                ProviderLogins::Nonce,
                ProviderLogins::AuthorizeQuery,
                ProviderLogins::ExpiresAt,
            ])
            .from(ProviderLogins::Table)
            .and_where(Expr::col(ProviderLogins::StateHash).eq(state_hash))
            .to_owned();
        let delete = Query::delete()
            .from_table(ProviderLogins::Table)
            .and_where(Expr::col(ProviderLogins::StateHash).eq(state_hash))
            .to_owned();
        let mut tx = self.db.begin().await?;
        let row: Option<ProviderLoginRow> = tx.fetch_optional(&select).await?;
        let deleted = tx.execute(&delete).await?;
        tx.commit().await?;
        Ok(row.filter(|_| deleted == 1))
    }

    /// The account linked to `subject` at `provider`.
    pub async fn linked_user(
        &self,
        provider: &str,
        subject: &str,
    ) -> Result<Option<Uuid>, UsersError> {
        let select = Query::select()
            .column(UserIdentities::UserId)
            .from(UserIdentities::Table)
            .and_where(Expr::col(UserIdentities::Provider).eq(provider))
            .and_where(Expr::col(UserIdentities::Subject).eq(subject))
            .to_owned();
        let row: Option<(Uuid,)> = self.db.fetch_optional(&select).await?;
        Ok(row.map(|(id,)| id))
    }

    /// Links `subject` at `provider` to an account.
    pub async fn link_user(
        &self,
        provider: &str,
        subject: &str,
        user: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        let insert = Query::insert()
            .into_table(UserIdentities::Table)
            .columns([
                UserIdentities::Provider,
                UserIdentities::Subject,
                UserIdentities::UserId,
                UserIdentities::CreatedAt,
            ])
            .values_panic([provider.into(), subject.into(), user.into(), now.into()])
            .on_conflict(
                OnConflict::columns([UserIdentities::Provider, UserIdentities::Subject])
                    .do_nothing()
                    .to_owned(),
            )
            .to_owned();
        self.write(&insert).await
    }
}
