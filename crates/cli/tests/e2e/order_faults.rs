//! Nothing lost, nothing doubled: a process killed with SIGKILL while its worker is in the
//! middle of sending order confirmations, and the database connection cut while orders are
//! being placed.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;

use crate::orders::{order, product_with_stock};
use crate::outage::{backend_addr, through};
use crate::relay::Relay;
use crate::support::{
    Database, Platform, Setup, SmtpServer, customer_token, eventually, header_value,
};

async fn place(platform: &Platform, token: &str, product: &str) -> Option<String> {
    place_at(
        &platform.client,
        &platform.url("/api/v1/orders"),
        token,
        product,
    )
    .await
}

async fn place_at(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    product: &str,
) -> Option<String> {
    let reply = client
        .post(url)
        .bearer_auth(token)
        .json(&order(product, 1))
        .timeout(Duration::from_secs(30))
        .send()
        .await
        .ok()?;
    if reply.status() != StatusCode::CREATED {
        return None;
    }
    let body: Value = reply.json().await.ok()?;
    body["id"].as_str().map(str::to_owned)
}

fn message_ids(smtp: &SmtpServer) -> Vec<String> {
    smtp.messages()
        .iter()
        .filter_map(|message| header_value(message, "Message-ID"))
        .collect()
}

/// The Message-ID of each order, as the platform promises it.
fn expected_ids(orders: &[String]) -> BTreeSet<String> {
    orders
        .iter()
        .map(|id| format!("<order-{id}@logicore>"))
        .collect()
}

#[tokio::test]
async fn a_worker_killed_mid_batch_still_sends_each_confirmation_under_one_message_id() {
    for database in Database::all().await {
        let label = database.label();
        // Each message takes 100 ms to accept, so the worker is mid-batch when it dies.
        let smtp = SmtpServer::start_slow(Duration::from_millis(100));
        let setup = Setup::new(database)
            .env("LOGICORE_EMAIL__URL", &smtp.url())
            .env("LOGICORE_JOBS__LEASE", "2s")
            .env("LOGICORE_JOBS__CONCURRENCY", "4");
        let first = setup.start();
        let product = product_with_stock(&first, &format!("KILL-{label}"), 100_000).await;
        let token = customer_token(&first, "ada@example.com").await;
        let mut orders = Vec::new();
        for _ in 0..40 {
            orders.push(place(&first, &token, &product).await.expect("order placed"));
        }
        eventually("the first messages", 20, async || {
            (message_ids(&smtp).len() >= 3).then_some(())
        })
        .await;
        first.kill();
        let sent_before = message_ids(&smtp).len();
        assert!(
            sent_before < orders.len(),
            "{label}: every e-mail was sent before the kill ({sent_before}); the test proves nothing"
        );

        // A new process on the same data: expired leases come back, the rest is sent.
        let second = setup.start();
        let expected = expected_ids(&orders);
        let received = eventually("every confirmation", 60, async || {
            let ids: BTreeSet<String> = message_ids(&smtp).into_iter().collect();
            (ids.len() >= expected.len()).then_some(ids)
        })
        .await;
        assert_eq!(
            received, expected,
            "{label}: exactly one distinct Message-ID per order, none foreign"
        );
        let jobs: Value = second
            .client
            .get(second.admin_url("/admin/jobs"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(jobs["counts"].get("dead"), None, "{label}: {jobs}");
        eprintln!(
            "{label}: {} orders, {sent_before} sent before SIGKILL, {} deliveries in all",
            orders.len(),
            message_ids(&smtp).len()
        );
    }
}

/// Four clients place orders continuously while `relay` is cut twice; returns the
/// acknowledged order ids and the number of refused attempts.
async fn order_while_cutting(
    platform: &Platform,
    token: &str,
    product: &str,
    relay: &Relay,
) -> (Vec<String>, usize) {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let orders_url = platform.url("/api/v1/orders");
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (client, url, token, product, stop) = (
                platform.client.clone(),
                orders_url.clone(),
                token.to_owned(),
                product.to_owned(),
                std::sync::Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let (mut acknowledged, mut refused) = (Vec::new(), 0);
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    match place_at(&client, &url, &token, &product).await {
                        Some(id) => acknowledged.push(id),
                        None => {
                            refused += 1;
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                    }
                }
                (acknowledged, refused)
            })
        })
        .collect();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        relay.cut();
        tokio::time::sleep(Duration::from_millis(800)).await;
        relay.restore();
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut acknowledged, mut refused) = (Vec::new(), 0);
    for client in clients {
        let (ids, failures) = client.await.unwrap();
        acknowledged.extend(ids);
        refused += failures;
    }
    (acknowledged, refused)
}

/// The relay runs on this test's runtime while `start()` blocks a thread: multi-threaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_acknowledged_while_the_database_connection_is_cut_are_never_lost() {
    let Some(Database::Postgres(url)) = Database::all()
        .await
        .into_iter()
        .find(|db| matches!(db, Database::Postgres(_)))
    else {
        eprintln!("skipped: this test needs LOGICORE_TEST_POSTGRES_URL (a server it can cut off)");
        return;
    };
    let relay = Relay::start(backend_addr(&url)).await;
    // Jobs claimed just before a cut whose claim answer was lost run again when their lease
    // ends: a short lease keeps the test short.
    let setup =
        Setup::new(Database::Postgres(through(&url, &relay))).env("LOGICORE_JOBS__LEASE", "6s");
    let platform = setup.start();
    let product = product_with_stock(&platform, "CUT-1", 100_000).await;
    let token = customer_token(&platform, "ada@example.com").await;

    let (acknowledged, refused) = order_while_cutting(&platform, &token, &product, &relay).await;
    assert!(
        refused > 0,
        "the cuts refused nothing; the test proves nothing"
    );
    assert!(
        acknowledged.len() > 10,
        "too few orders: {}",
        acknowledged.len()
    );

    // Every acknowledged order exists, and its order.created event reached the consumer:
    // its confirmation e-mail is in the file sink.
    for id in &acknowledged {
        let reply = platform
            .client
            .get(platform.url(&format!("/api/v1/orders/{id}")))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            reply.status(),
            StatusCode::OK,
            "order {id} was acknowledged and lost"
        );
    }
    let outbox = setup.data_dir().join("outbox");
    let expected: BTreeSet<String> = acknowledged
        .iter()
        .map(|id| format!("order-{id}@logicore.eml"))
        .collect();
    let files = eventually(
        "a confirmation for every acknowledged order",
        60,
        async || {
            let files: BTreeSet<String> = std::fs::read_dir(&outbox)
                .ok()?
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".eml"))
                .collect();
            expected.is_subset(&files).then_some(files)
        },
    )
    .await;
    // Orders refused with an error may still have been placed (the answer was lost), and
    // their e-mails are fine; none may be missing.
    assert!(expected.is_subset(&files));
    eprintln!(
        "{} orders acknowledged, {refused} refused during the cuts, {} e-mails",
        acknowledged.len(),
        files.len()
    );
}

/// `up` on RabbitMQ (`bus.url = "amqp://..."`) through a relay the test cuts twice while
/// orders are placed: every order's `order.created` reaches both consumers — one
/// confirmation e-mail per order, one webhook per order at a real receiver, none twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_placed_while_the_rabbitmq_connection_is_cut_lose_no_event() {
    let Some(url) = logicore_platform::testing::amqp_url().await else {
        eprintln!("skipped: this test needs LOGICORE_TEST_AMQP_URL");
        return;
    };
    let _turn = crate::support::rabbitmq_turn().await;
    let broker_host = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let broker = tokio::net::lookup_host(broker_host.as_str())
        .await
        .unwrap()
        .next()
        .unwrap();
    for database in Database::all().await {
        let label = database.label();
        // The consumers' queues are durable and named by consumer: start from empty ones.
        delete_consumer_queues(&url).await;
        let relay = Relay::start(broker).await;
        let through_relay = url.replace(&broker_host, &relay.addr.to_string());
        let (hook_url, received) = crate::webhooks::receiver().await;
        let setup = Setup::new(database)
            .env("LOGICORE_BUS__URL", &through_relay)
            .env("LOGICORE_WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true");
        let platform = setup.start();
        let (status, endpoint) = platform
            .post_json(
                "/api/v1/webhooks/endpoints",
                &serde_json::json!({"url": hook_url, "event_types": ["order.created"]}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{label}: {endpoint}");
        let product = product_with_stock(&platform, "AMQP-1", 100_000).await;
        let token = customer_token(&platform, "ada@example.com").await;

        let (acknowledged, _) = order_while_cutting(&platform, &token, &product, &relay).await;
        assert!(acknowledged.len() > 10, "{label}: too few orders");

        let outbox = setup.data_dir().join("outbox");
        let expected: BTreeSet<String> = acknowledged
            .iter()
            .map(|id| format!("order-{id}@logicore.eml"))
            .collect();
        eventually("a confirmation for every order", 60, async || {
            let files: BTreeSet<String> = std::fs::read_dir(&outbox)
                .ok()?
                .flatten()
                .map(|entry| entry.file_name().to_string_lossy().into_owned())
                .filter(|name| name.ends_with(".eml"))
                .collect();
            (files == expected).then_some(())
        })
        .await;
        let wanted: BTreeSet<String> = acknowledged.iter().cloned().collect();
        let webhooks = eventually("a webhook for every order", 60, async || {
            let bodies = received.lock().unwrap().clone();
            (bodies.len() >= wanted.len()).then_some(bodies)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let webhooks_after = received.lock().unwrap().len();
        assert_eq!(webhooks_after, webhooks.len(), "{label}: late duplicates");
        let orders: Vec<String> = webhooks
            .iter()
            .map(|(_, body)| {
                let body: Value = serde_json::from_slice(body).unwrap();
                body["data"]["id"].as_str().unwrap().to_owned()
            })
            .collect();
        let distinct: BTreeSet<String> = orders.iter().cloned().collect();
        assert_eq!(distinct, wanted, "{label}: one webhook per order");
        assert_eq!(orders.len(), wanted.len(), "{label}: none twice");
        eprintln!(
            "{label}: {} orders over RabbitMQ with two cuts",
            acknowledged.len()
        );
        platform.terminate();
    }
    delete_consumer_queues(&url).await;
}

/// Deletes the queues of the platform's consumers on the shared broker.
pub async fn delete_consumer_queues(url: &str) {
    let connection = lapin::Connection::connect(url, lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = connection.create_channel().await.unwrap();
    for consumer in ["users.order-confirmations", "webhooks.fan-out"] {
        for queue in [
            format!("logicore.{consumer}"),
            format!("logicore.dead.{consumer}"),
        ] {
            channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await
                .unwrap();
        }
    }
    let _ = connection.close(200, "done".into()).await;
}
