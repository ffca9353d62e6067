//! Split roles: `logicore gateway` in front of `logicore service catalog`, over HTTP.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Database, Setup, product};

#[tokio::test]
async fn the_gateway_role_routes_to_a_catalog_service_elsewhere() {
    for database in Database::all().await {
        let label = database.label();
        let catalog_setup = Setup::new(database);
        let catalog = catalog_setup.start_roles(&["service", "catalog"], &["catalog"]);
        let instances = format!("[\"http://{}\"]", catalog.addr("catalog"));
        let gateway_setup =
            Setup::new(Database::Sqlite).env("LOGICORE_DISCOVERY__STATIC__CATALOG", &instances);
        let gateway = gateway_setup.start_roles(&["gateway"], &["gateway", "admin"]);

        let (status, category) = gateway
            .post_json("/api/v1/product-categories", &json!({"name": "Flatbeds"}))
            .await;
        assert_eq!(status, StatusCode::CREATED, "{label}: {category}");
        let mut body = product("FLAT-1");
        body["category_id"] = category["id"].clone();
        let (status, created) = gateway.post_json("/api/v1/products", &body).await;
        assert_eq!(status, StatusCode::CREATED, "{label}: {created}");

        let (_, listed) = gateway.get_json("/api/v1/products?category=flatbeds").await;
        assert_eq!(listed["items"][0], created, "{label}");

        let reply = gateway
            .client
            .get(gateway.url("/api/v1/product-categories"))
            .header("x-request-id", "split-1")
            .send()
            .await
            .unwrap();
        assert_eq!(reply.headers()["x-request-id"], "split-1");
        assert_eq!(reply.headers()["cache-control"], "public, max-age=3600");
        let etag = reply.headers()["etag"].clone();
        let revalidated = gateway
            .client
            .get(gateway.url("/api/v1/product-categories"))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED, "{label}");

        let (status, problem) = gateway.post_json("/api/v1/products", &body).await;
        assert_eq!(
            status,
            StatusCode::CONFLICT,
            "{label}: problems pass through: {problem}"
        );
        assert_eq!(problem["type"], "/problems/conflict");
        // The catalog's own listener answers liveness.
        let health = catalog
            .client
            .get(format!("http://{}/health", catalog.addr("catalog")))
            .send()
            .await
            .unwrap();
        assert_eq!(health.status(), StatusCode::OK);
    }
}

#[test]
fn a_gateway_route_to_an_unknown_service_exits_2() {
    let setup = Setup::new(Database::Sqlite)
        .config("[[gateway.routes]]\nprefix = \"/erp\"\nservice = \"erp\"\n");
    let output = setup.command(&["gateway"]).output().expect("run logicore");
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("gateway.routes[0].service"), "{stderr}");
}

/// `logicore gateway` in front of `logicore service users`: accounts, tokens verified by the
/// gateway through the users instance's JWKS, and by the users service itself.
#[tokio::test]
async fn the_gateway_role_fronts_a_users_service_elsewhere() {
    let generated = Setup::new(Database::Sqlite)
        .command(&["keys", "generate"])
        .output()
        .unwrap();
    let keys = String::from_utf8(generated.stdout).unwrap();
    let users_setup = Setup::new(Database::Sqlite).env("LOGICORE_ENCRYPTION_KEYS", keys.trim());
    let users = users_setup.start_roles(&["service", "users"], &["users"]);
    let instances = format!("[\"http://{}\"]", users.addr("users"));
    let gateway_setup =
        Setup::new(Database::Sqlite).env("LOGICORE_DISCOVERY__STATIC__USERS", &instances);
    let gateway = gateway_setup.start_roles(&["gateway"], &["gateway", "admin"]);

    let account = json!({"email": "split@example.com", "password": "long enough", "name": "S"});
    let (status, user) = gateway.post_json("/api/v1/auth/register", &account).await;
    assert_eq!(status, StatusCode::CREATED, "{user}");
    let (status, tokens) = gateway
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "split@example.com", "password": "long enough"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let me = gateway
        .client
        .get(gateway.url("/api/v1/users/me"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), StatusCode::OK);
    let me: serde_json::Value = me.json().await.unwrap();
    assert_eq!(me["email"], "split@example.com");
    let forged = gateway
        .client
        .get(gateway.url("/api/v1/users/me"))
        .bearer_auth("not.a.token")
        .send()
        .await
        .unwrap();
    assert_eq!(forged.status(), StatusCode::UNAUTHORIZED);
    // Straight to the users service, without the gateway: it checks its own tokens.
    let direct = users
        .client
        .get(format!("http://{}/api/v1/users/me", users.addr("users")))
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), StatusCode::UNAUTHORIZED);
}
