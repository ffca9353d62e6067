//! The users service on every database of the run: SSNs stored encrypted and shown masked.
#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

use std::sync::Arc;
use std::time::Duration;

use logicore_platform::crypto::KeyRing;
use logicore_platform::db::apply_migrations;
use logicore_platform::testing::TestDb;
use logicore_users::store::UsersStore;
use logicore_users::{MIGRATIONS, TokenSettings, UsersService};
use serde_json::json;

fn settings() -> TokenSettings {
    TokenSettings {
        issuer: "http://test".into(),
        access_ttl: Duration::from_secs(60),
        refresh_ttl: Duration::from_secs(600),
        key_file: None,
        leeway: Duration::from_secs(30),
        clients: Vec::new(),
        providers: Vec::new(),
    }
}

/// Migrates `test_db` (the users tables and the outbox their events go to).
async fn migrate(test_db: &TestDb) {
    apply_migrations(
        &test_db.db,
        &[logicore_platform::bus::MIGRATIONS, MIGRATIONS].concat(),
    )
    .await
    .unwrap();
}

/// The service on a migrated `test_db` with a fresh key ring.
async fn service_on(test_db: &TestDb) -> UsersService {
    migrate(test_db).await;
    let ring = Arc::new(KeyRing::parse(&KeyRing::generate_entry(), "test").unwrap());
    UsersService::start(test_db.db.clone(), ring, settings())
        .await
        .unwrap()
}

#[tokio::test]
async fn ssns_are_stored_encrypted_bound_to_their_row_and_shown_masked() {
    for test_db in TestDb::all().await {
        migrate(&test_db).await;
        let ring = Arc::new(KeyRing::parse(&KeyRing::generate_entry(), "test").unwrap());
        let service = UsersService::start(test_db.db.clone(), Arc::clone(&ring), settings())
            .await
            .unwrap();
        let user = service
            .register("ssn@example.com".into(), "long enough".into(), "S".into())
            .await
            .unwrap();
        let subject = user.id.to_string();
        let updated = service
            .update_me(&subject, &json!({"ssn": "123-45-6789", "name": "S. N."}))
            .await
            .unwrap();
        assert_eq!(updated.name, "S. N.");
        assert_eq!(service.masked_ssn(&updated).as_deref(), Some("***-**-6789"));

        let stored = UsersStore::new(test_db.db.clone())
            .get_user(user.id)
            .await
            .unwrap()
            .unwrap()
            .ssn
            .unwrap();
        assert!(stored.starts_with("v1:"), "{}: {stored}", test_db.label());
        assert!(!stored.contains("123-45-6789"));

        // The ciphertext copied to another account does not decrypt there.
        let other = service
            .register("other@example.com".into(), "long enough".into(), "O".into())
            .await
            .unwrap();
        let mut moved = other.clone();
        moved.ssn = Some(stored);
        assert_eq!(service.masked_ssn(&moved), None);

        let refused = service
            .update_me(&subject, &json!({"ssn": "123456789", "colour": "red"}))
            .await
            .unwrap_err();
        let logicore_users::UsersError::Invalid(errors) = refused else {
            panic!("not a validation error");
        };
        let fields: Vec<&str> = errors.iter().map(|error| error.field.as_str()).collect();
        assert_eq!(fields, ["/colour", "/ssn"]);

        let cleared = service
            .update_me(&subject, &json!({"ssn": null}))
            .await
            .unwrap();
        assert_eq!(cleared.ssn, None);
    }
}

/// Rotate then rewrap: every encrypted value moves to the new key, after which the old key
/// can be dropped from the ring; a second run has nothing to do.
#[tokio::test]
async fn rotate_and_rewrap_round_trip() {
    for test_db in TestDb::all().await {
        migrate(&test_db).await;
        let old_entry = KeyRing::generate_entry().replacen(':', "a:", 1);
        let old = Arc::new(KeyRing::parse(&old_entry, "old").unwrap());
        let service = UsersService::start(test_db.db.clone(), Arc::clone(&old), settings())
            .await
            .unwrap();
        for index in 0..3 {
            let user = service
                .register(
                    format!("r{index}@example.com"),
                    "long enough".into(),
                    "R".into(),
                )
                .await
                .unwrap();
            service
                .update_me(
                    &user.id.to_string(),
                    &json!({"ssn": format!("123-45-000{index}")}),
                )
                .await
                .unwrap();
        }

        let new_entry = KeyRing::generate_entry().replacen(':', "b:", 1);
        let rotated = KeyRing::parse(&format!("{new_entry}\n{old_entry}"), "rotated").unwrap();
        let mut reports = Vec::new();
        let rewrapped = logicore_users::rewrap::rewrap(&test_db.db, &rotated, |done, seen| {
            reports.push((done, seen));
        })
        .await
        .unwrap();
        assert_eq!(
            rewrapped,
            5,
            "{}: 3 SSNs and the two signing keys (Ed25519 and RSA)",
            test_db.label()
        );
        assert_eq!(reports.last(), Some(&(5, 5)));
        let again = logicore_users::rewrap::rewrap(&test_db.db, &rotated, |_, _| {})
            .await
            .unwrap();
        assert_eq!(again, 0, "resumable: nothing left to do");

        // Only the new key now: everything still reads.
        let new_only = Arc::new(KeyRing::parse(&new_entry, "new").unwrap());
        let restarted = UsersService::start(test_db.db.clone(), new_only, settings())
            .await
            .unwrap();
        let store = UsersStore::new(test_db.db.clone());
        let user = store
            .find_by_email("r2@example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(restarted.masked_ssn(&user).as_deref(), Some("***-**-0002"));
    }
}

/// `auth.signing_key_file`: tokens are signed with that key and only it is published.
#[tokio::test]
async fn a_configured_pem_key_signs_the_tokens() {
    use aws_lc_rs::signature::Ed25519KeyPair;
    use base64::Engine;

    let test_db = TestDb::sqlite().await;
    migrate(&test_db).await;
    let rng = aws_lc_rs::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pem = format!(
        "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
        base64::engine::general_purpose::STANDARD.encode(pkcs8.as_ref())
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("signing.pem");
    std::fs::write(&path, &pem).unwrap();
    let expected = logicore_platform::auth::signing::SigningKey::from_pem(&pem).unwrap();

    let ring = Arc::new(KeyRing::parse(&KeyRing::generate_entry(), "test").unwrap());
    let with_file = TokenSettings {
        key_file: Some(path),
        ..settings()
    };
    let service = UsersService::start(test_db.db.clone(), ring, with_file)
        .await
        .unwrap();
    let jwks = service.jwks();
    // The file key signs access tokens; a generated RSA key signs ID tokens (RS256).
    let keys = jwks["keys"].as_array().unwrap();
    assert_eq!(keys.len(), 2, "{jwks}");
    assert_eq!(keys[0]["kid"], expected.kid());
    assert_eq!(keys[1]["alg"], "RS256");
    service
        .register("pem@example.com".into(), "long enough".into(), "P".into())
        .await
        .unwrap();
    let tokens = service
        .login("pem@example.com", "long enough".into())
        .await
        .unwrap();
    let header = jsonwebtoken::decode_header(&tokens.access_token).unwrap();
    assert_eq!(header.kid.as_deref(), Some(expected.kid()));

    let missing = TokenSettings {
        key_file: Some(dir.path().join("absent.pem")),
        ..settings()
    };
    let ring = Arc::new(KeyRing::parse(&KeyRing::generate_entry(), "test").unwrap());
    let err = UsersService::start(test_db.db.clone(), ring, missing)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("auth.signing_key_file"), "{err}");
}

/// The same refresh token presented many times at once: one rotation wins, the others count as
/// reuse and revoke the family, so no second live chain is ever born.
#[tokio::test]
async fn concurrent_refreshes_of_one_token_leave_no_second_chain() {
    for test_db in TestDb::all().await {
        let service = service_on(&test_db).await;
        service
            .register("race@example.com".into(), "long enough".into(), "R".into())
            .await
            .unwrap();
        let tokens = service
            .login("race@example.com", "long enough".into())
            .await
            .unwrap();
        let attempts: Vec<_> = (0..8)
            .map(|_| {
                let service = service.clone();
                let token = tokens.refresh_token.clone();
                tokio::spawn(async move { service.refresh(&token).await })
            })
            .collect();
        let mut successors = Vec::new();
        for attempt in attempts {
            if let Ok(next) = attempt.await.unwrap() {
                successors.push(next.refresh_token);
            }
        }
        assert!(
            successors.len() <= 1,
            "{}: {} chains",
            test_db.label(),
            successors.len()
        );
        for successor in successors {
            assert!(
                service.refresh(&successor).await.is_err(),
                "{}: the concurrent reuse revoked the family",
                test_db.label()
            );
        }
    }
}

#[tokio::test]
async fn a_new_account_publishes_user_registered_with_it() {
    for test_db in TestDb::all().await {
        let service = service_on(&test_db).await;
        let user = service
            .register("new@example.com".into(), "long enough".into(), "Nia".into())
            .await
            .unwrap();
        let taken = service
            .register("new@example.com".into(), "long enough".into(), "Nia".into())
            .await;
        assert!(taken.is_err());
        let select = sea_query::Query::select()
            .columns(["type", "subject", "data"])
            .from("outbox")
            .to_owned();
        let events: Vec<(String, Option<String>, String)> =
            test_db.db.fetch_all(&select).await.unwrap();
        assert_eq!(
            events.len(),
            1,
            "{}: one event, none for the refused",
            test_db.label()
        );
        let (event_type, subject, data) = &events[0];
        assert_eq!(event_type, "user.registered");
        assert_eq!(subject.as_deref(), Some(user.id.to_string().as_str()));
        let data: serde_json::Value = serde_json::from_str(data).unwrap();
        assert_eq!(
            data,
            json!({"id": user.id, "email": "new@example.com", "name": "Nia"})
        );
    }
}
