//! Users storage: the only place with SQL.

use chrono::{DateTime, Utc};
use logicore_platform::bus::{Bus, NewEvent};
use logicore_platform::db::{self, Db, Tx, Violation};
use sea_query::{Expr, ExprTrait, Iden, Order, Query};
use uuid::Uuid;

use crate::error::UsersError;

#[derive(Iden, Clone, Copy)]
enum Users {
    Table,
    Id,
    Email,
    Name,
    PasswordHash,
    Roles,
    Ssn,
    CreatedAt,
    UpdatedAt,
}

#[derive(Iden, Clone, Copy)]
enum SigningKeys {
    Table,
    Kid,
    PrivateKey,
    CreatedAt,
}

#[derive(Iden, Clone, Copy)]
enum RefreshTokens {
    Table,
    TokenHash,
    UserId,
    FamilyId,
    ExpiresAt,
    UsedAt,
    RevokedAt,
    CreatedAt,
    ClientId,
    Scope,
}

/// Every column of `users`, in [`UserRow`]'s order.
const USER_COLUMNS: [Users; 8] = [
    Users::Id,
    Users::Email,
    Users::Name,
    Users::PasswordHash,
    Users::Roles,
    Users::Ssn,
    Users::CreatedAt,
    Users::UpdatedAt,
];

/// A stored account.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    /// Id.
    pub id: Uuid,
    /// Lower-cased e-mail.
    pub email: String,
    /// Display name.
    pub name: String,
    /// Argon2id PHC string.
    pub password_hash: String,
    /// Comma-separated roles.
    pub roles: String,
    /// The SSN, encrypted (`v1:<kid>:...`, bound to `users.ssn` of this id).
    pub ssn: Option<String>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl UserRow {
    /// The roles as a list.
    pub fn role_list(&self) -> Vec<String> {
        self.roles
            .split(',')
            .filter(|role| !role.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// A stored signing key (private key encrypted).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SigningKeyRow {
    /// Key id.
    pub kid: String,
    /// `v1:<kid>:<base64>` ciphertext of the PKCS#8 document.
    pub private_key: String,
    /// When it was made (the newest signs).
    pub created_at: DateTime<Utc>,
}

/// A stored refresh token (by hash).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RefreshRow {
    /// Owner.
    pub user_id: Uuid,
    /// Rotation family.
    pub family_id: Uuid,
    /// End of validity.
    pub expires_at: DateTime<Utc>,
    /// Set once rotated.
    pub used_at: Option<DateTime<Utc>>,
    /// Set when the family was revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// The OAuth client it was issued to (none: the platform's own sign-in).
    pub client_id: Option<String>,
    /// The OAuth scope granted.
    pub scope: Option<String>,
}

/// To whom a refresh token was issued: an OAuth client and scope, or the platform's own
/// sign-in (`None`).
#[derive(Debug, Clone, Copy, Default)]
pub struct Grant<'a> {
    /// The OAuth client.
    pub client_id: Option<&'a str>,
    /// The scope granted to it.
    pub scope: Option<&'a str>,
    /// The client is not first-party: its access tokens carry no privileged role (only
    /// `customer`, when the account has it).
    pub restricted: bool,
}

/// Reads and writes accounts, signing keys and refresh tokens.
#[derive(Debug, Clone)]
pub struct UsersStore {
    db: Db,
}

impl UsersStore {
    /// Wraps the database handle.
    pub fn new(db: Db) -> Self {
        UsersStore { db }
    }

    /// The database handle.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Runs one write in its own transaction.
    async fn write(&self, statement: &impl db::SqlxBinder) -> Result<(), UsersError> {
        let mut tx = self.db.begin().await?;
        tx.execute(statement).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Inserts an account; a taken e-mail is [`UsersError::EmailTaken`].
    pub async fn insert_user(&self, user: &UserRow) -> Result<(), UsersError> {
        let insert = Query::insert()
            .into_table(Users::Table)
            .columns(USER_COLUMNS)
            .values_panic([
                user.id.into(),
                user.email.clone().into(),
                user.name.clone().into(),
                user.password_hash.clone().into(),
                user.roles.clone().into(),
                user.ssn.clone().into(),
                user.created_at.into(),
                user.updated_at.into(),
            ])
            .to_owned();
        let mut tx: Tx = self.db.begin().await?;
        tx.execute(&insert)
            .await
            .map_err(|err| match db::violation(&err) {
                Some(Violation::Unique) => UsersError::EmailTaken,
                _ => UsersError::Storage(err),
            })?;
        // SPEC §5: `user.registered` with `{id,email,name}`, in the same transaction.
        let bus = Bus::new(self.db.clone());
        let event = NewEvent::new(
            crate::SERVICE_NAME,
            "user.registered",
            Some(user.id.to_string()),
            serde_json::json!({"id": user.id, "email": user.email, "name": user.name}),
        );
        bus.publish(&mut tx, event).await?;
        tx.commit().await?;
        bus.wake();
        Ok(())
    }

    fn select_users() -> sea_query::SelectStatement {
        Query::select()
            .columns(USER_COLUMNS)
            .from(Users::Table)
            .to_owned()
    }

    /// Finds an account by (lower-cased) e-mail.
    pub async fn find_by_email(&self, email: &str) -> Result<Option<UserRow>, UsersError> {
        let select = Self::select_users()
            .and_where(Expr::col(Users::Email).eq(email))
            .to_owned();
        Ok(self.db.fetch_optional(&select).await?)
    }

    /// Finds an account by id.
    pub async fn get_user(&self, id: Uuid) -> Result<Option<UserRow>, UsersError> {
        let select = Self::select_users()
            .and_where(Expr::col(Users::Id).eq(id))
            .to_owned();
        Ok(self.db.fetch_optional(&select).await?)
    }

    /// Finds the accounts with these ids (those that exist).
    pub async fn get_users(&self, ids: &[Uuid]) -> Result<Vec<UserRow>, UsersError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let select = Self::select_users()
            .and_where(Expr::col(Users::Id).is_in(ids.iter().copied()))
            .to_owned();
        Ok(self.db.fetch_all(&select).await?)
    }

    /// Changes an account's name and encrypted SSN.
    pub async fn update_profile(
        &self,
        id: Uuid,
        name: &str,
        ssn: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        let update = Query::update()
            .table(Users::Table)
            .value(Users::Name, name)
            .value(Users::Ssn, ssn.map(str::to_owned))
            .value(Users::UpdatedAt, now)
            .and_where(Expr::col(Users::Id).eq(id))
            .to_owned();
        self.write(&update).await
    }

    /// Up to `limit` accounts after `after`, by id.
    pub async fn list_users(
        &self,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<UserRow>, UsersError> {
        let mut select = Self::select_users();
        if let Some(after) = after {
            select.and_where(Expr::col(Users::Id).gt(after));
        }
        select.order_by(Users::Id, Order::Asc).limit(limit);
        Ok(self.db.fetch_all(&select).await?)
    }

    /// Replaces an account's roles; false when there is no such account.
    pub async fn set_roles(
        &self,
        id: Uuid,
        roles: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, UsersError> {
        let update = Query::update()
            .table(Users::Table)
            .value(Users::Roles, roles)
            .value(Users::UpdatedAt, now)
            .and_where(Expr::col(Users::Id).eq(id))
            .to_owned();
        let mut tx = self.db.begin().await?;
        let changed = tx.execute(&update).await?;
        tx.commit().await?;
        Ok(changed > 0)
    }

    /// Returns true when some account has the `admin` role.
    pub async fn any_admin(&self) -> Result<bool, UsersError> {
        let select = Query::select()
            .column(Users::Roles)
            .from(Users::Table)
            .to_owned();
        let rows: Vec<(String,)> = self.db.fetch_all(&select).await?;
        Ok(rows
            .iter()
            .any(|(roles,)| roles.split(',').any(|role| role == "admin")))
    }

    /// Every signing key, newest first.
    pub async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, UsersError> {
        let select = Query::select()
            .columns([
                SigningKeys::Kid,
                SigningKeys::PrivateKey,
                SigningKeys::CreatedAt,
            ])
            .from(SigningKeys::Table)
            .order_by(SigningKeys::CreatedAt, Order::Desc)
            .to_owned();
        Ok(self.db.fetch_all(&select).await?)
    }

    /// Stores a signing key.
    pub async fn insert_signing_key(
        &self,
        kid: &str,
        private_key: &str,
        now: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        let insert = Query::insert()
            .into_table(SigningKeys::Table)
            .columns([
                SigningKeys::Kid,
                SigningKeys::PrivateKey,
                SigningKeys::CreatedAt,
            ])
            .values_panic([kid.into(), private_key.into(), now.into()])
            .to_owned();
        self.write(&insert).await
    }

    /// Stores a new refresh token (by hash) of `family`.
    #[expect(clippy::too_many_arguments, reason = "one column each")]
    pub async fn insert_refresh(
        &self,
        tx: &mut Tx,
        hash: &str,
        user: Uuid,
        family: Uuid,
        grant: Grant<'_>,
        expires_at: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        let insert = Query::insert()
            .into_table(RefreshTokens::Table)
            .columns([
                RefreshTokens::TokenHash,
                RefreshTokens::UserId,
                RefreshTokens::FamilyId,
                RefreshTokens::ClientId,
                RefreshTokens::Scope,
                RefreshTokens::ExpiresAt,
                RefreshTokens::CreatedAt,
            ])
            .values_panic([
                hash.into(),
                user.into(),
                family.into(),
                grant.client_id.map(str::to_owned).into(),
                grant.scope.map(str::to_owned).into(),
                expires_at.into(),
                now.into(),
            ])
            .to_owned();
        tx.execute(&insert).await?;
        Ok(())
    }

    /// Opens a write transaction.
    pub async fn begin(&self) -> Result<Tx, UsersError> {
        Ok(self.db.begin().await?)
    }

    fn select_refresh(hash: &str) -> sea_query::SelectStatement {
        Query::select()
            .columns([
                RefreshTokens::UserId,
                RefreshTokens::FamilyId,
                RefreshTokens::ExpiresAt,
                RefreshTokens::UsedAt,
                RefreshTokens::RevokedAt,
                RefreshTokens::ClientId,
                RefreshTokens::Scope,
            ])
            .from(RefreshTokens::Table)
            .and_where(Expr::col(RefreshTokens::TokenHash).eq(hash))
            .to_owned()
    }

    /// Finds a refresh token by hash, inside `tx`.
    pub async fn find_refresh(
        &self,
        tx: &mut Tx,
        hash: &str,
    ) -> Result<Option<RefreshRow>, UsersError> {
        Ok(tx.fetch_optional(&Self::select_refresh(hash)).await?)
    }

    /// Finds a refresh token by hash (a read, outside any transaction).
    pub async fn peek_refresh(&self, hash: &str) -> Result<Option<RefreshRow>, UsersError> {
        Ok(self.db.fetch_optional(&Self::select_refresh(hash)).await?)
    }

    /// Marks a live refresh token used (rotated); false when it no longer was live (a
    /// concurrent rotation or revocation got there first).
    pub async fn mark_used(
        &self,
        tx: &mut Tx,
        hash: &str,
        now: DateTime<Utc>,
    ) -> Result<bool, UsersError> {
        let update = Query::update()
            .table(RefreshTokens::Table)
            .value(RefreshTokens::UsedAt, now)
            .and_where(Expr::col(RefreshTokens::TokenHash).eq(hash))
            .and_where(Expr::col(RefreshTokens::UsedAt).is_null())
            .and_where(Expr::col(RefreshTokens::RevokedAt).is_null())
            .to_owned();
        Ok(tx.execute(&update).await? == 1)
    }

    /// Returns true when the session (refresh-token family) was revoked.
    pub async fn family_revoked(&self, family: Uuid) -> Result<bool, UsersError> {
        let select = Query::select()
            .column(RefreshTokens::FamilyId)
            .from(RefreshTokens::Table)
            .and_where(Expr::col(RefreshTokens::FamilyId).eq(family))
            .and_where(Expr::col(RefreshTokens::RevokedAt).is_not_null())
            .limit(1)
            .to_owned();
        let row: Option<(Uuid,)> = self.db.fetch_optional(&select).await?;
        Ok(row.is_some())
    }

    /// Revokes every token of a family.
    pub async fn revoke_family(
        &self,
        tx: &mut Tx,
        family: Uuid,
        now: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        let update = Query::update()
            .table(RefreshTokens::Table)
            .value(RefreshTokens::RevokedAt, now)
            .and_where(Expr::col(RefreshTokens::FamilyId).eq(family))
            .and_where(Expr::col(RefreshTokens::RevokedAt).is_null())
            .to_owned();
        tx.execute(&update).await?;
        Ok(())
    }
}

/// A row with an encrypted value, for re-encryption.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EncryptedUserField {
    /// The account.
    pub id: Uuid,
    /// The ciphertext.
    pub ssn: String,
}

impl UsersStore {
    /// Accounts with an SSN after `after` (by id), at most `limit`.
    pub async fn ssns_after(
        &self,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<EncryptedUserField>, UsersError> {
        let mut select = Query::select()
            .columns([Users::Id, Users::Ssn])
            .from(Users::Table)
            .and_where(Expr::col(Users::Ssn).is_not_null())
            .order_by(Users::Id, Order::Asc)
            .limit(limit)
            .to_owned();
        if let Some(after) = after {
            select.and_where(Expr::col(Users::Id).gt(after));
        }
        Ok(self.db.fetch_all(&select).await?)
    }

    /// Replaces an SSN ciphertext, unless it changed meanwhile.
    pub async fn replace_ssn(&self, id: Uuid, old: &str, new: &str) -> Result<(), UsersError> {
        self.replace_ciphertext((Users::Table, Users::Id, Users::Ssn), id, old, new)
            .await
    }

    /// Replaces `old` by `new` in the `column` of the row `id` of `table` (compare-and-set,
    /// so a value changed meanwhile is left alone).
    async fn replace_ciphertext<T: Iden + Copy + 'static>(
        &self,
        (table, key, column): (T, T, T),
        id: Uuid,
        old: &str,
        new: &str,
    ) -> Result<(), UsersError> {
        let update = Query::update()
            .table(table)
            .value(column, new)
            .and_where(Expr::col(key).eq(id))
            .and_where(Expr::col(column).eq(old))
            .to_owned();
        self.write(&update).await
    }

    /// Replaces a signing key's ciphertext.
    pub async fn replace_signing_key(&self, kid: &str, new: &str) -> Result<(), UsersError> {
        let update = Query::update()
            .table(SigningKeys::Table)
            .value(SigningKeys::PrivateKey, new)
            .and_where(Expr::col(SigningKeys::Kid).eq(kid))
            .to_owned();
        self.write(&update).await
    }
}

#[derive(Iden, Clone, Copy)]
enum PaymentMethods {
    Table,
    UserId,
    CardNumber,
    Brand,
    ExpMonth,
    ExpYear,
    UpdatedAt,
}

/// A stored payment method (card number encrypted).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PaymentRow {
    /// The account.
    pub user_id: Uuid,
    /// Ciphertext bound to `payment_methods.card_number` of the account.
    pub card_number: String,
    /// Card network.
    pub brand: String,
    /// Expiry month.
    pub exp_month: i32,
    /// Expiry year.
    pub exp_year: i32,
}

impl UsersStore {
    /// Sets (replaces) the payment method of an account.
    pub async fn put_payment(
        &self,
        row: &PaymentRow,
        now: DateTime<Utc>,
    ) -> Result<(), UsersError> {
        let delete = Query::delete()
            .from_table(PaymentMethods::Table)
            .and_where(Expr::col(PaymentMethods::UserId).eq(row.user_id))
            .to_owned();
        let insert = Query::insert()
            .into_table(PaymentMethods::Table)
            .columns([
                PaymentMethods::UserId,
                PaymentMethods::CardNumber,
                PaymentMethods::Brand,
                PaymentMethods::ExpMonth,
                PaymentMethods::ExpYear,
                PaymentMethods::UpdatedAt,
            ])
            .values_panic([
                row.user_id.into(),
                row.card_number.clone().into(),
                row.brand.clone().into(),
                row.exp_month.into(),
                row.exp_year.into(),
                now.into(),
            ])
            .to_owned();
        let mut tx = self.db.begin().await?;
        tx.execute(&delete).await?;
        tx.execute(&insert).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Payment methods after `after` (by account), at most `limit`, for re-encryption.
    pub async fn payments_after(
        &self,
        after: Option<Uuid>,
        limit: u64,
    ) -> Result<Vec<PaymentRow>, UsersError> {
        let mut select = Query::select()
            .columns([
                PaymentMethods::UserId,
                PaymentMethods::CardNumber,
                PaymentMethods::Brand,
                PaymentMethods::ExpMonth,
                PaymentMethods::ExpYear,
            ])
            .from(PaymentMethods::Table)
            .order_by(PaymentMethods::UserId, Order::Asc)
            .limit(limit)
            .to_owned();
        if let Some(after) = after {
            select.and_where(Expr::col(PaymentMethods::UserId).gt(after));
        }
        Ok(self.db.fetch_all(&select).await?)
    }

    /// Replaces a card number ciphertext, unless it changed meanwhile.
    pub async fn replace_card(&self, user: Uuid, old: &str, new: &str) -> Result<(), UsersError> {
        let columns = (
            PaymentMethods::Table,
            PaymentMethods::UserId,
            PaymentMethods::CardNumber,
        );
        self.replace_ciphertext(columns, user, old, new).await
    }
}
