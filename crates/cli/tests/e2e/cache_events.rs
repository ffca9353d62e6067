//! Cached product answers purged by product events: in `logicore up` (the embedded log), and
//! with two `logicore gateway` instances on memory caches in front of a catalog elsewhere
//! (RabbitMQ: each gateway has its own subscription).

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::orders::product_with_stock;
use crate::support::{Database, Platform, Setup, eventually};

/// Product answers cached for five minutes: only an event purge can refresh them sooner.
const CACHED_PRODUCTS: &str = "[[gateway.routes]]\nprefix = \"/api/v1/products\"\n\
    service = \"catalog\"\ncache = { enabled = true, ttl = \"300s\" }\n";

async fn fetch(platform: &Platform, path: &str) -> (String, Value) {
    let reply = platform
        .client
        .get(platform.url(path))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK, "{path}");
    let x_cache = reply.headers()["x-cache"].to_str().unwrap().to_owned();
    (x_cache, reply.json().await.unwrap())
}

/// Reads `path` until it is served from the cache.
async fn until_cached(platform: &Platform, path: &str) -> Value {
    eventually("a cache hit", 10, async || {
        let (x_cache, body) = fetch(platform, path).await;
        (x_cache == "HIT").then_some(body)
    })
    .await
}

async fn rename(platform: &Platform, via: &Platform, product: &str, name: &str) {
    let request = platform
        .client
        .patch(via.url(&format!("/api/v1/products/{product}")))
        .json(&json!({ "name": name }));
    let reply = platform.as_admin(request).await.send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_changed_product_is_purged_from_the_gateway_cache_by_its_event() {
    for database in Database::all().await {
        let label = database.label();
        let setup = Setup::new(database).config(CACHED_PRODUCTS);
        let platform = setup.start();
        let product = product_with_stock(&platform, "PURGE-1", 5).await;
        let path = format!("/api/v1/products/{product}");
        let cached = until_cached(&platform, &path).await;
        until_cached(&platform, "/api/v1/products").await;
        assert_eq!(cached["name"], "Product PURGE-1", "{label}");

        rename(&platform, &platform, &product, "Renamed pallet").await;
        eventually("the renamed product", 10, async || {
            let (_, body) = fetch(&platform, &path).await;
            (body["name"] == "Renamed pallet").then_some(())
        })
        .await;
        eventually("the renamed product in the list", 10, async || {
            let (_, body) = fetch(&platform, "/api/v1/products").await;
            (body["items"][0]["name"] == "Renamed pallet").then_some(())
        })
        .await;
    }
}

/// Two gateways on memory caches in front of a catalog elsewhere, events through RabbitMQ:
/// a change made through one gateway is purged from both (each has its own subscription).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_gateway_instance_purges_its_own_cache() {
    let Some(url) = logicore_platform::testing::amqp_url().await else {
        eprintln!("skipped: this test needs LOGICORE_TEST_AMQP_URL");
        return;
    };
    let _turn = crate::support::rabbitmq_turn().await;
    for database in Database::all().await {
        let label = database.label();
        crate::order_faults::delete_consumer_queues(&url).await;
        let deployment = crate::split::Deployment::new(database);
        let users = deployment.users();
        let users_addr = users.addr("users").to_string();
        let catalog = deployment
            .role(&[("users", users_addr.clone())])
            .start_roles(&["service", "catalog"], &["catalog"]);
        let catalog_addr = catalog.addr("catalog").to_string();
        // The worker relays the catalog's events to RabbitMQ.
        let _worker = deployment
            .role(&[("catalog", catalog_addr.clone())])
            .env("LOGICORE_BUS__URL", &url)
            .start_roles(&["worker"], &["admin"]);
        let gateway = || {
            deployment
                .role(&[
                    ("users", users_addr.clone()),
                    ("catalog", catalog_addr.clone()),
                ])
                .env("LOGICORE_BUS__URL", &url)
                .config(CACHED_PRODUCTS)
                .start_roles(&["gateway"], &["gateway", "admin"])
        };
        let (first, second) = (gateway(), gateway());

        let product = product_with_stock(&first, "PURGE-2", 5).await;
        let path = format!("/api/v1/products/{product}");
        until_cached(&first, &path).await;
        until_cached(&second, &path).await;

        rename(&first, &first, &product, "Renamed crate").await;
        for (name, gateway) in [("first", &first), ("second", &second)] {
            eventually("the renamed product", 15, async || {
                let (_, body) = fetch(gateway, &path).await;
                (body["name"] == "Renamed crate").then_some(())
            })
            .await;
            eprintln!("{label}: the {name} gateway forgot the old product");
        }
    }
    crate::order_faults::delete_consumer_queues(&url).await;
}
