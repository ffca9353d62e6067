//! Passwords: Argon2id (OWASP parameters: 19 MiB, 2 passes, 1 lane) with a random 128-bit
//! salt, stored as a PHC string. Hashing runs on the blocking pool, never on the async
//! threads. Verifying against an unknown account uses a dummy hash so that a wrong e-mail
//! and a wrong password take the same time.

use std::sync::LazyLock;

use argon2::{Argon2, PasswordHasher, PasswordVerifier};

/// Shortest password accepted (SPEC §3).
pub const MIN_LENGTH: usize = 8;
/// Longest password accepted (SPEC §3).
pub const MAX_LENGTH: usize = 256;

/// Why a password is refused, for the `errors[]` of a 400.
pub fn policy_violation(password: &str) -> Option<&'static str> {
    let length = password.chars().count();
    if length < MIN_LENGTH {
        Some("must be at least 8 characters")
    } else if length > MAX_LENGTH {
        Some("must be at most 256 characters")
    } else {
        None
    }
}

fn hash_now(password: &[u8]) -> String {
    let mut salt = [0u8; 16];
    if aws_lc_rs::rand::fill(&mut salt).is_err() {
        panic!("the system random number generator failed");
    }
    match Argon2::default().hash_password_with_salt(password, &salt) {
        Ok(hash) => hash.to_string(),
        // Only invalid parameters or salt lengths fail, and ours are fixed.
        Err(err) => panic!("Argon2 refused fixed parameters: {err}"),
    }
}

/// Hashes `password` (on the blocking pool).
pub async fn hash(password: String) -> String {
    match tokio::task::spawn_blocking(move || hash_now(password.as_bytes())).await {
        Ok(hash) => hash,
        Err(err) => std::panic::resume_unwind(err.into_panic()),
    }
}

/// A hash of nothing in particular, to verify against when the account does not exist.
static DUMMY: LazyLock<String> = LazyLock::new(|| hash_now(b"no such account"));

/// Checks `password` against `stored` (a PHC string), or against a dummy hash when there is
/// no account, so both failures cost the same. A malformed stored hash never matches.
pub async fn verify(password: String, stored: Option<String>) -> bool {
    let checked = tokio::task::spawn_blocking(move || {
        let exists = stored.is_some();
        let stored = stored.unwrap_or_else(|| DUMMY.clone());
        let matches = Argon2::default()
            .verify_password(password.as_bytes(), stored.as_str())
            .is_ok();
        exists && matches
    })
    .await;
    checked.unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_differ_by_salt() {
        let first = hash("correct horse".to_owned()).await;
        let second = hash("correct horse".to_owned()).await;
        assert!(
            first.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{first}"
        );
        assert_ne!(first, second, "random salts");
        assert!(verify("correct horse".to_owned(), Some(first.clone())).await);
        assert!(!verify("wrong horse".to_owned(), Some(first)).await);
        assert!(!verify("correct horse".to_owned(), None).await);
        assert!(!verify("x".to_owned(), Some("not a hash".to_owned())).await);
    }

    #[test]
    fn the_policy_counts_characters() {
        assert!(policy_violation("1234567").is_some());
        assert!(policy_violation("12345678").is_none());
        assert!(policy_violation("é".repeat(256).as_str()).is_none());
        assert!(policy_violation(&"a".repeat(257)).is_some());
    }
}
