//! Orders through the gateway of `logicore up`: a customer places an order (stock reserved,
//! Idempotency-Key honoured), sees only their own orders, cancels (stock back); the
//! `order.created` event reaches the users service's consumer and the worker sends exactly
//! one "Order Confirmation" per order — to the file sink by default, to a real SMTP server
//! when `email.url` says so.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{
    Database, Platform, Setup, SmtpServer, customer_token, eventually, header_value,
};

pub async fn product_with_stock(platform: &Platform, sku: &str, stock: i64) -> String {
    let (status, product) = platform
        .post_json(
            "/api/v1/products",
            &json!({"sku": sku, "name": format!("Product {sku}"), "price_cents": 1250, "currency": "EUR", "stock": stock}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{product}");
    product["id"].as_str().unwrap().to_owned()
}

pub fn order(product: &str, quantity: i64) -> Value {
    json!({
        "items": [{"product_id": product, "quantity": quantity}],
        "shipping_address": {"name": "Ada", "line1": "1 Way", "city": "Berlin", "postal_code": "10115", "country": "DE"}
    })
}

pub async fn place(
    platform: &Platform,
    token: &str,
    body: &Value,
    key: Option<&str>,
) -> (StatusCode, Value) {
    let mut request = platform
        .client
        .post(platform.url("/api/v1/orders"))
        .bearer_auth(token)
        .json(body);
    if let Some(key) = key {
        request = request.header("Idempotency-Key", key);
    }
    let reply = request.send().await.unwrap();
    let status = reply.status();
    (status, reply.json().await.unwrap())
}

pub async fn get(platform: &Platform, token: &str, path: &str) -> (StatusCode, Value) {
    let reply = platform
        .client
        .get(platform.url(path))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    (status, reply.json().await.unwrap())
}

pub async fn stock(platform: &Platform, product: &str) -> i64 {
    let (_, product) = platform
        .get_json(&format!("/api/v1/products/{product}"))
        .await;
    product["stock"].as_i64().unwrap()
}

pub fn eml_files(setup: &Setup) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(setup.data_dir().join("outbox")) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".eml"))
        .collect()
}

#[tokio::test]
async fn a_customer_orders_cancels_and_gets_one_confirmation_per_order() {
    for database in Database::all().await {
        let label = database.label();
        let setup = Setup::new(database);
        let platform = setup.start();
        let product = product_with_stock(&platform, "E2E-PEN", 5).await;
        let ada = customer_token(&platform, "ada@example.com").await;
        let bob = customer_token(&platform, "bob@example.com").await;

        let (status, unauthenticated) = platform.get_json("/api/v1/orders").await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{label}: {unauthenticated}"
        );

        let (status, first) = place(&platform, &ada, &order(&product, 2), Some("ada-1")).await;
        assert_eq!(status, StatusCode::CREATED, "{label}: {first}");
        let id = first["id"].as_str().unwrap().to_owned();
        assert_eq!(first["total_cents"], 2500);
        let (status, replay) = place(&platform, &ada, &order(&product, 2), Some("ada-1")).await;
        assert_eq!(
            (status, &replay["id"]),
            (StatusCode::CREATED, &first["id"]),
            "{label}"
        );
        let (status, reused) = place(&platform, &ada, &order(&product, 1), Some("ada-1")).await;
        assert_eq!(
            status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{label}: {reused}"
        );
        let (status, short) = place(&platform, &bob, &order(&product, 4), None).await;
        assert_eq!(status, StatusCode::CONFLICT, "{label}: {short}");
        assert_eq!(stock(&platform, &product).await, 3, "{label}");

        let (status, _) = get(&platform, &bob, &format!("/api/v1/orders/{id}")).await;
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{label}: another customer's order"
        );
        let (_, bobs) = get(&platform, &bob, "/api/v1/orders").await;
        assert_eq!(bobs["items"], json!([]), "{label}");
        let admin = platform.admin_token().await.unwrap();
        let (status, seen) = get(&platform, &admin, &format!("/api/v1/orders/{id}")).await;
        assert_eq!(
            (status, &seen["user_id"]),
            (StatusCode::OK, &first["user_id"])
        );

        // The confirmation: one file, named by the Message-ID, with the order id in it.
        let message_id = format!("<order-{id}@logicore>");
        let files = eventually("the confirmation e-mail", 20, async || {
            let files = eml_files(&setup);
            (!files.is_empty()).then_some(files)
        })
        .await;
        assert_eq!(files, [format!("order-{id}@logicore.eml")], "{label}");
        let text =
            std::fs::read_to_string(setup.data_dir().join("outbox").join(&files[0])).unwrap();
        assert_eq!(
            header_value(&text, "Message-ID").as_deref(),
            Some(message_id.as_str())
        );
        assert_eq!(
            header_value(&text, "Subject").as_deref(),
            Some("Order Confirmation")
        );
        assert!(
            text.contains("ada@example.com") && text.contains(&id),
            "{text}"
        );

        let (status, cancelled) = platform
            .client
            .post(platform.url(&format!("/api/v1/orders/{id}/cancel")))
            .bearer_auth(&ada)
            .send()
            .await
            .map(|reply| reply.status())
            .map(|status| (status, ()))
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{label}: {cancelled:?}");
        assert_eq!(
            stock(&platform, &product).await,
            5,
            "{label}: the stock is back"
        );

        // The jobs admin shows the e-mail job done, and nothing waiting or dead.
        let jobs: Value = platform
            .client
            .get(platform.admin_url("/admin/jobs?state=completed"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let kinds: Vec<&str> = jobs["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|job| job["kind"].as_str().unwrap())
            .collect();
        assert!(
            kinds.contains(&"email.order_confirmation"),
            "{label}: {jobs}"
        );
        assert_eq!(jobs["counts"].get("dead"), None, "{label}: {jobs}");
        assert_eq!(eml_files(&setup).len(), 1, "{label}: still one e-mail");
    }
}

#[tokio::test]
async fn confirmations_go_to_a_real_smtp_server_with_the_order_message_id() {
    let smtp = SmtpServer::start();
    let setup = Setup::new(Database::Sqlite).env("LOGICORE_EMAIL__URL", &smtp.url());
    let platform = setup.start();
    let product = product_with_stock(&platform, "E2E-INK", 10).await;
    let ada = customer_token(&platform, "ada@example.com").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        let (status, placed) = place(&platform, &ada, &order(&product, 1), None).await;
        assert_eq!(status, StatusCode::CREATED, "{placed}");
        ids.push(placed["id"].as_str().unwrap().to_owned());
    }
    let messages = eventually("three messages at the SMTP server", 20, async || {
        let messages = smtp.messages();
        (messages.len() >= 3).then_some(messages)
    })
    .await;
    let mut got: Vec<String> = messages
        .iter()
        .map(|message| header_value(message, "Message-ID").unwrap())
        .collect();
    got.sort();
    let mut expected: Vec<String> = ids
        .iter()
        .map(|id| format!("<order-{id}@logicore>"))
        .collect();
    expected.sort();
    assert_eq!(got, expected);
    for message in &messages {
        assert_eq!(
            header_value(message, "To").as_deref(),
            Some("Customer <ada@example.com>")
        );
        assert_eq!(
            header_value(message, "From").as_deref(),
            Some("LogiCore <no-reply@localhost>")
        );
    }
    assert!(eml_files(&setup).is_empty(), "nothing in the file sink");
}
