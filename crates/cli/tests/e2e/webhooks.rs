//! Webhooks through the gateway of `logicore up`: a customer registers an endpoint, places
//! an order, and their receiver gets `order.created` signed per Standard Webhooks (checked
//! with the reference crate); the delivery is listed over the API.

use std::sync::{Arc, Mutex};

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::orders::{order, place, product_with_stock};
use crate::support::{Database, Setup, customer_token, eventually};

/// The requests a receiver got: headers and body.
pub type Received = Arc<Mutex<Vec<(http::HeaderMap, Vec<u8>)>>>;

/// A receiver recording each request's headers and body; it answers 204.
pub async fn receiver() -> (String, Received) {
    let received: Received = Arc::default();
    let log = Arc::clone(&received);
    let app =
        axum::Router::new().fallback(move |headers: http::HeaderMap, body: axum::body::Bytes| {
            let log = Arc::clone(&log);
            async move {
                log.lock().unwrap().push((headers, body.to_vec()));
                http::StatusCode::NO_CONTENT
            }
        });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/hooks"), received)
}

#[tokio::test]
async fn a_customer_receives_their_order_events_signed() {
    for database in Database::all().await {
        let label = database.label();
        let setup = Setup::new(database).env("LOGICORE_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true");
        let platform = setup.start();
        let (url, received) = receiver().await;
        let ada = customer_token(&platform, "ada-hooks@example.com").await;
        let created = platform
            .client
            .post(platform.url("/api/v1/webhooks/endpoints"))
            .bearer_auth(&ada)
            .json(&json!({"url": url, "event_types": ["order.*"], "description": "shop"}))
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED, "{label}");
        let endpoint: Value = created.json().await.unwrap();
        let secret = endpoint["secret"].as_str().unwrap().to_owned();

        let product = product_with_stock(&platform, "HOOK-1", 3).await;
        let (status, placed) = place(&platform, &ada, &order(&product, 1), None).await;
        assert_eq!(status, StatusCode::CREATED, "{label}: {placed}");

        let (headers, body) = eventually("the order.created webhook", 30, async || {
            received.lock().unwrap().first().cloned()
        })
        .await;
        standardwebhooks::Webhook::new(&secret)
            .unwrap()
            .verify(&body, &headers)
            .unwrap();
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["type"], "order.created", "{label}");
        assert_eq!(body["data"]["id"], placed["id"], "{label}");

        let deliveries = format!(
            "/api/v1/webhooks/endpoints/{}/deliveries",
            endpoint["id"].as_str().unwrap()
        );
        let listed: Value = eventually("the delivery recorded", 30, async || {
            let reply = platform
                .client
                .get(platform.url(&deliveries))
                .bearer_auth(&ada)
                .send()
                .await
                .unwrap();
            let listed: Value = reply.json().await.unwrap();
            (listed["items"][0]["status"] == "delivered").then_some(listed)
        })
        .await;
        assert_eq!(listed["items"][0]["response_status"], 204, "{label}");

        // Without a token the gateway refuses the webhooks API.
        let (status, _) = platform.get_json("/api/v1/webhooks/endpoints").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{label}");
    }
}
