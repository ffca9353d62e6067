//! Split roles: `logicore gateway` in front of `logicore service catalog` and `logicore service
//! users`, over HTTP; services verify forwarded tokens themselves.

use reqwest::StatusCode;
use serde_json::json;

use crate::support::{Database, Platform, Setup, product};

/// A users service on its own, with an admin account made by `logicore users create`.
fn users_role() -> (Setup, Platform) {
    let generated = Setup::new(Database::Sqlite)
        .command(&["keys", "generate"])
        .output()
        .unwrap();
    let keys = String::from_utf8(generated.stdout).unwrap();
    let setup = Setup::new(Database::Sqlite).env("LOGICORE_ENCRYPTION_KEYS", keys.trim());
    let mut create = setup.command(&[
        "users",
        "create",
        "--email",
        "split-admin@example.com",
        "--role",
        "admin",
        "--password-stdin",
    ]);
    let mut child = create
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().unwrap();
        stdin.write_all(b"split admin password\n").unwrap();
    }
    assert!(child.wait().unwrap().success());
    let users = setup.start_roles(&["service", "users"], &["users"]);
    (setup, users)
}

async fn token_of(platform: &Platform, email: &str, password: &str) -> String {
    let (status, tokens) = platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens["access_token"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn the_gateway_role_routes_to_a_catalog_service_elsewhere() {
    let (_users_setup, users) = users_role();
    let users_instances = format!("[\"http://{}\"]", users.addr("users"));
    for database in Database::all().await {
        let label = database.label();
        let catalog_setup =
            Setup::new(database).env("LOGICORE_DISCOVERY__STATIC__USERS", &users_instances);
        let catalog = catalog_setup.start_roles(&["service", "catalog"], &["catalog"]);
        let instances = format!("[\"http://{}\"]", catalog.addr("catalog"));
        let gateway_setup = Setup::new(Database::Sqlite)
            .env("LOGICORE_DISCOVERY__STATIC__CATALOG", &instances)
            .env("LOGICORE_DISCOVERY__STATIC__USERS", &users_instances);
        let gateway = gateway_setup.start_roles(&["gateway"], &["gateway", "admin"]);
        let admin = token_of(&gateway, "split-admin@example.com", "split admin password").await;
        let post = |path: &str, body: &serde_json::Value| {
            gateway
                .client
                .post(gateway.url(path))
                .bearer_auth(&admin)
                .json(body)
                .send()
        };

        let reply = post("/api/v1/product-categories", &json!({"name": "Flatbeds"}))
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::CREATED, "{label}");
        let category: serde_json::Value = reply.json().await.unwrap();
        let mut body = product("FLAT-1");
        body["category_id"] = category["id"].clone();
        let reply = post("/api/v1/products", &body).await.unwrap();
        assert_eq!(reply.status(), StatusCode::CREATED, "{label}");
        let created: serde_json::Value = reply.json().await.unwrap();

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

        let reply = post("/api/v1/products", &body).await.unwrap();
        assert_eq!(
            reply.status(),
            StatusCode::CONFLICT,
            "{label}: problems pass through"
        );
        let problem: serde_json::Value = reply.json().await.unwrap();
        assert_eq!(problem["type"], "/problems/conflict");

        // Straight to the catalog, past the gateway: it verifies tokens itself and never
        // believes identity headers.
        let direct = format!("http://{}/api/v1/products", catalog.addr("catalog"));
        let mut other = product("FLAT-2");
        other["category_id"] = category["id"].clone();
        let anonymous = catalog
            .client
            .post(&direct)
            .header("x-user-id", "someone")
            .header("x-user-roles", "admin")
            .json(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED, "{label}");
        let forged = catalog
            .client
            .post(&direct)
            .bearer_auth("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4Iiwicm9sZXMiOlsiYWRtaW4iXX0.")
            .json(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(forged.status(), StatusCode::UNAUTHORIZED, "{label}");
        let customer = json!({"email": "c@example.com", "password": "long enough", "name": "C"});
        gateway.post_json("/api/v1/auth/register", &customer).await;
        let customer = token_of(&gateway, "c@example.com", "long enough").await;
        let refused = catalog
            .client
            .post(&direct)
            .bearer_auth(&customer)
            .json(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN, "{label}");
        let allowed = catalog
            .client
            .post(&direct)
            .bearer_auth(&admin)
            .json(&other)
            .send()
            .await
            .unwrap();
        assert_eq!(allowed.status(), StatusCode::CREATED, "{label}");

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
    let (_users_setup, users) = users_role();
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
