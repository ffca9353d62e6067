//! Start, stop and crash: graceful shutdown and durability across restarts.

use std::time::Duration;

use reqwest::StatusCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{Database, Setup, product};

#[tokio::test]
async fn data_survives_a_restart_and_a_kill_9() {
    for database in Database::all().await {
        let label = database.label();
        let setup = Setup::new(database);

        let platform = setup.start();
        let (_, first) = platform
            .post_json("/api/v1/products", &product("KEEP-1"))
            .await;
        platform.terminate();
        assert!(platform.wait().success(), "{label}: clean stop");

        let platform = setup.start();
        let (_, second) = platform
            .post_json("/api/v1/products", &product("KEEP-2"))
            .await;
        platform.kill();

        let platform = setup.start();
        for created in [first, second] {
            let uri = format!("/api/v1/products/{}", created["id"].as_str().unwrap());
            let (status, read) = platform.get_json(&uri).await;
            assert_eq!(status, StatusCode::OK, "{label}: {} lost", created["sku"]);
            assert_eq!(read, created, "{label}");
        }
    }
}

/// A request whose body is still arriving when SIGTERM comes in is completed, then the process
/// exits 0.
#[tokio::test]
async fn an_in_flight_request_completes_during_shutdown() {
    let setup = Setup::new(Database::Sqlite).env(
        "LOGICORE_LOG__LEVEL",
        "info,logicore_platform::http::request_context=debug",
    );
    let platform = setup.start();
    let body = product("INFLIGHT-1").to_string();
    let (first_half, second_half) = body.split_at(body.len() / 2);

    let mut stream = tokio::net::TcpStream::connect(platform.addr("gateway"))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/products HTTP/1.1\r\nHost: x\r\n{}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        platform.admin_header().await,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(first_half.as_bytes()).await.unwrap();
    stream.flush().await.unwrap();
    // The server has parsed the head and is reading the body: the request is in flight.
    // (The admin's sign-in started a request of its own before.)
    while platform.wait_for_message("request started")["path"] != "/api/v1/products" {}

    platform.terminate();
    platform.wait_for_message("shutdown requested");
    // The listener is closed and the server drains while this body is still incomplete.
    loop {
        let draining = platform.wait_for_message("draining");
        if draining["addr"] == platform.addr("gateway").to_string() {
            break;
        }
    }
    stream.write_all(second_half.as_bytes()).await.unwrap();

    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut reply))
        .await
        .expect("a reply before the timeout")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 201"), "{reply}");
    assert!(platform.wait().success(), "exit code 0 after draining");
}
