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
    create_admin(&setup, "split-admin@example.com", "split admin password");
    let users = setup.start_roles(&["service", "users"], &["users"]);
    (setup, users)
}

/// Creates an admin account with `logicore users create`.
fn create_admin(setup: &Setup, email: &str, password: &str) {
    let mut create = setup.command(&[
        "users",
        "create",
        "--email",
        email,
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
        writeln!(stdin, "{password}").unwrap();
    }
    assert!(child.wait().unwrap().success());
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

/// The key every role of a split test shares.
const TOKEN_KEY: &str = "split-test internal key, long enough";

/// Roles in processes of their own on one database, with the same keys.
pub struct Deployment {
    database: Database,
    database_url: String,
    keys: String,
    _shared: tempfile::TempDir,
}

impl Deployment {
    pub fn new(database: Database) -> Deployment {
        let shared = tempfile::tempdir().unwrap();
        let database_url = match &database {
            Database::Sqlite => format!("sqlite://{}", shared.path().join("shared.db").display()),
            Database::Postgres(url) => url.clone(),
        };
        let keys = Setup::new(Database::Sqlite)
            .command(&["keys", "generate"])
            .output()
            .unwrap();
        Deployment {
            database,
            database_url,
            keys: String::from_utf8(keys.stdout).unwrap().trim().to_owned(),
            _shared: shared,
        }
    }

    /// The setup of one role that finds `instances` (service, address) through discovery.
    pub fn role(&self, instances: &[(&str, String)]) -> Setup {
        let mut setup = Setup::new(self.database.clone())
            .env("LOGICORE_DATABASE__URL", &self.database_url)
            .env("LOGICORE_ENCRYPTION_KEYS", &self.keys)
            .env("LOGICORE_INTERNAL__TOKEN_KEY", TOKEN_KEY);
        for (service, addr) in instances {
            setup = setup.env(
                &format!("LOGICORE_DISCOVERY__STATIC__{}", service.to_uppercase()),
                &format!("[\"http://{addr}\"]"),
            );
        }
        setup
    }

    /// Starts `logicore service users` with the bootstrap admin of the suite.
    pub fn users(&self) -> Platform {
        let setup = self.role(&[]);
        create_admin(
            &setup,
            crate::support::ADMIN_EMAIL,
            crate::support::ADMIN_PASSWORD,
        );
        setup.start_roles(&["service", "users"], &["users"])
    }
}

/// Every role in its own process on one database: users, catalog, orders, a worker and a
/// gateway. Orders reserve and release stock at the catalog over HTTP with service tokens;
/// the worker sends the confirmation.
#[tokio::test]
async fn orders_elsewhere_reserve_stock_at_the_catalog_over_http() {
    use crate::orders::{eml_files, get, order, place, product_with_stock, stock};
    use crate::support::{customer_token, eventually};

    for database in Database::all().await {
        let label = database.label();
        let deployment = Deployment::new(database);
        let role = |instances: &[(&str, String)]| deployment.role(instances);

        let users = deployment.users();
        let users_addr = users.addr("users").to_string();
        let catalog_setup = role(&[("users", users_addr.clone())]);
        let catalog = catalog_setup.start_roles(&["service", "catalog"], &["catalog"]);
        let catalog_addr = catalog.addr("catalog").to_string();
        let orders_setup = role(&[
            ("users", users_addr.clone()),
            ("catalog", catalog_addr.clone()),
        ]);
        let orders = orders_setup.start_roles(&["service", "orders"], &["orders"]);
        let worker_setup = role(&[("catalog", catalog_addr.clone())]);
        let _worker = worker_setup.start_roles(&["worker"], &["admin"]);
        let gateway_setup = role(&[
            ("users", users_addr),
            ("catalog", catalog_addr.clone()),
            ("orders", orders.addr("orders").to_string()),
        ]);
        let gateway = gateway_setup.start_roles(&["gateway"], &["gateway", "admin"]);

        let product = product_with_stock(&gateway, "SPLIT-1", 2).await;
        let ada = customer_token(&gateway, "ada-split@example.com").await;
        let (status, first) = place(&gateway, &ada, &order(&product, 2), Some("split-1")).await;
        assert_eq!(status, StatusCode::CREATED, "{label}: {first}");
        assert_eq!(first["items"][0]["sku"], "SPLIT-1", "{label}");
        assert_eq!(first["total_cents"], 2500, "{label}");
        assert_eq!(stock(&gateway, &product).await, 0, "{label}");
        let (status, replay) = place(&gateway, &ada, &order(&product, 2), Some("split-1")).await;
        assert_eq!(status, StatusCode::CREATED, "{label}");
        assert_eq!(replay["id"], first["id"], "{label}");
        let (status, short) = place(&gateway, &ada, &order(&product, 1), None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{label}: {short}");
        assert!(
            short["detail"].as_str().unwrap().contains("/items/0"),
            "{label}: {short}"
        );

        let id = first["id"].as_str().unwrap().to_owned();
        let (status, _) = get(&gateway, &ada, &format!("/api/v1/orders/{id}")).await;
        assert_eq!(status, StatusCode::OK, "{label}");
        let bob = customer_token(&gateway, "bob-split@example.com").await;
        let (status, _) = get(&gateway, &bob, &format!("/api/v1/orders/{id}")).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{label}");

        // The worker (elsewhere too) sends the confirmation.
        let expected = format!("order-{id}@logicore.eml");
        eventually("the confirmation e-mail", 30, async || {
            eml_files(&worker_setup).contains(&expected).then_some(())
        })
        .await;

        let cancel = gateway
            .client
            .post(gateway.url(&format!("/api/v1/orders/{id}/cancel")))
            .bearer_auth(&ada)
            .send()
            .await
            .unwrap();
        assert_eq!(cancel.status(), StatusCode::OK, "{label}");
        eventually("the stock back at the catalog", 30, async || {
            (stock(&gateway, &product).await == 2).then_some(())
        })
        .await;

        // Past the gateway: the orders service checks bearer tokens itself, and the
        // catalog's internal API wants a service token.
        let direct = reqwest::Client::new()
            .get(format!("http://{}/api/v1/orders", orders.addr("orders")))
            .header("x-user-id", "someone")
            .header("x-user-roles", "admin")
            .send()
            .await
            .unwrap();
        assert_eq!(direct.status(), StatusCode::UNAUTHORIZED, "{label}");
        let internal = reqwest::Client::new()
            .delete(format!(
                "http://{catalog_addr}/internal/v1/stock/reservations/{id}"
            ))
            .bearer_auth(&ada)
            .send()
            .await
            .unwrap();
        assert_eq!(internal.status(), StatusCode::UNAUTHORIZED, "{label}");
    }
}

#[test]
fn an_orders_service_without_a_catalog_or_a_key_exits_2() {
    let no_catalog = Setup::new(Database::Sqlite).env("LOGICORE_INTERNAL__TOKEN_KEY", TOKEN_KEY);
    let output = no_catalog.command(&["service", "orders"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("discovery.static.catalog"), "{stderr}");

    let no_key = Setup::new(Database::Sqlite).env(
        "LOGICORE_DISCOVERY__STATIC__CATALOG",
        "[\"http://127.0.0.1:4002\"]",
    );
    let output = no_key.command(&["service", "orders"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("internal.token_key"), "{stderr}");

    let short_key = no_key.env("LOGICORE_INTERNAL__TOKEN_KEY", "short");
    let output = short_key.command(&["service", "orders"]).output().unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("internal.token_key is shorter"), "{stderr}");
}
