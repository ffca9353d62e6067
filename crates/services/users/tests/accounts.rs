//! The users service on every database of the run: SSNs stored encrypted and shown masked.

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
    }
}

#[tokio::test]
async fn ssns_are_stored_encrypted_bound_to_their_row_and_shown_masked() {
    for test_db in TestDb::all().await {
        apply_migrations(&test_db.db, MIGRATIONS).await.unwrap();
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
