//! `logicore keys rewrap` for the users service: every value encrypted under a key other than
//! the active one (token-signing keys, SSNs, card numbers) is decrypted and encrypted again under the active
//! key, in batches, online. It only touches values that still need it, so an interrupted run
//! simply continues where it stopped when started again.

use logicore_platform::auth::signing::SigningKey;
use logicore_platform::crypto::{FieldContext, KeyRing};
use logicore_platform::db::Db;

use crate::error::UsersError;
use crate::store::UsersStore;

/// Rows read per batch.
const BATCH: u64 = 500;

/// Re-encrypts what needs it; `progress` hears (values rewrapped, values looked at) after
/// each batch. Returns the number of values rewrapped.
pub async fn rewrap(
    db: &Db,
    ring: &KeyRing,
    mut progress: impl FnMut(u64, u64),
) -> Result<u64, UsersError> {
    let store = UsersStore::new(db.clone());
    let (mut rewrapped, mut seen) = (0u64, 0u64);
    for row in store.signing_keys().await? {
        seen += 1;
        if ring.needs_rewrap(&row.private_key) {
            let key = SigningKey::from_encrypted(&row.kid, &row.private_key, ring)
                .map_err(|err| UsersError::Keys(err.to_string()))?;
            store
                .replace_signing_key(&row.kid, &key.encrypted_private_key(ring))
                .await?;
            rewrapped += 1;
        }
    }
    progress(rewrapped, seen);
    let mut after = None;
    loop {
        let rows = store.ssns_after(after, BATCH).await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = Some(last.id);
        for row in &rows {
            seen += 1;
            if !ring.needs_rewrap(&row.ssn) {
                continue;
            }
            let id = row.id.to_string();
            let context = FieldContext {
                table: "users",
                column: "ssn",
                row: &id,
            };
            let plain = ring
                .decrypt(&row.ssn, context)
                .map_err(|err| UsersError::Keys(format!("users.ssn of {id}: {err}")))?;
            store
                .replace_ssn(row.id, &row.ssn, &ring.encrypt(&plain, context))
                .await?;
            rewrapped += 1;
        }
        progress(rewrapped, seen);
    }
    let mut after = None;
    loop {
        let rows = store.payments_after(after, BATCH).await?;
        let Some(last) = rows.last() else {
            break;
        };
        after = Some(last.user_id);
        for row in &rows {
            seen += 1;
            if !ring.needs_rewrap(&row.card_number) {
                continue;
            }
            let id = row.user_id.to_string();
            let context = crate::service::card_context(&id);
            let plain = ring.decrypt(&row.card_number, context).map_err(|err| {
                UsersError::Keys(format!("payment_methods.card_number of {id}: {err}"))
            })?;
            store
                .replace_card(
                    row.user_id,
                    &row.card_number,
                    &ring.encrypt(&plain, context),
                )
                .await?;
            rewrapped += 1;
        }
        progress(rewrapped, seen);
    }
    Ok(rewrapped)
}
