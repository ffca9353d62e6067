//! The catalog through the gateway of `logicore up`.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Database, Setup, file_log_events, product, raw_http};

#[tokio::test]
async fn up_serves_the_catalog_through_the_gateway() {
    for database in Database::all().await {
        let label = database.label();
        let setup = Setup::new(database);
        let platform = setup.start();
        let client = &platform.client;

        let empty: Value = client
            .get(platform.url("/api/v1/products"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(empty, json!({"items": [], "next_cursor": null}), "{label}");

        let (status, category) = platform
            .post_json(
                "/api/v1/product-categories",
                &json!({"name": "Reefer Containers"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{label}");
        assert_eq!(category["slug"], "reefer-containers");

        let mut body = product("REEF-40");
        body["category_id"] = category["id"].clone();
        let created = platform
            .as_admin(client.post(platform.url("/api/v1/products")))
            .await
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(created.status(), StatusCode::CREATED, "{label}");
        let location = created.headers()["location"].to_str().unwrap().to_owned();
        let created: Value = created.json().await.unwrap();
        assert_eq!(
            location,
            format!("/api/v1/products/{}", created["id"].as_str().unwrap())
        );

        let (_, listed) = platform
            .get_json("/api/v1/products?category=reefer-containers")
            .await;
        assert_eq!(listed["items"][0]["sku"], "REEF-40", "{label}");

        let categories = client
            .get(platform.url("/api/v1/product-categories"))
            .send()
            .await
            .unwrap();
        assert_eq!(
            categories.headers()["cache-control"],
            "public, max-age=3600"
        );
        let etag = categories.headers()["etag"].clone();
        let revalidated = client
            .get(platform.url("/api/v1/product-categories"))
            .header("if-none-match", etag)
            .send()
            .await
            .unwrap();
        assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED, "{label}");
    }
}

#[tokio::test]
async fn health_readiness_and_request_ids() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let client = &platform.client;

    let health = client.get(platform.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    let admin_health = client
        .get(platform.admin_url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(admin_health.status(), StatusCode::OK);
    let ready: Value = client
        .get(platform.admin_url("/ready"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["checks"]["database"], "ok");

    let echoed = client
        .get(platform.url("/api/v1/products"))
        .header("x-request-id", "trace-me.42")
        .send()
        .await
        .unwrap();
    assert_eq!(echoed.headers()["x-request-id"], "trace-me.42");
    let replaced = client
        .get(platform.url("/api/v1/products"))
        .header("x-request-id", "not valid!")
        .send()
        .await
        .unwrap();
    let generated = replaced.headers()["x-request-id"].to_str().unwrap();
    assert!(uuid_is_v7(generated), "{generated}");

    let access = platform.wait_for_message("request");
    for field in [
        "timestamp",
        "level",
        "service",
        "request_id",
        "trace_id",
        "method",
        "path",
        "status",
        "duration_ms",
        "ip",
        "user_agent",
    ] {
        assert!(
            !access[field].is_null(),
            "access log lacks {field}: {access}"
        );
    }
    assert!(
        access
            .as_object()
            .unwrap()
            .values()
            .all(|value| !value.is_object()),
        "nested: {access}"
    );

    // Lines are written in batches (every 100 ms), to stdout first and then to the file.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let in_file = file_log_events(&setup.data_dir().join("logs"));
        if in_file
            .iter()
            .any(|event| event["message"] == "request" && event["request_id"] == "trace-me.42")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the access log of the tagged request is not in the log file"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn uuid_is_v7(text: &str) -> bool {
    text.len() == 36 && text.as_bytes()[14] == b'7'
}

#[tokio::test]
async fn bad_input_gets_a_problem_and_loses_nothing() {
    let setup = Setup::new(Database::Sqlite).env("LOGICORE_GATEWAY__BODY_LIMIT", "4KiB");
    let platform = setup.start();
    let client = &platform.client;

    let mut bad = product("BAD-1");
    bad["price_cents"] = json!(-1);
    bad["currency"] = json!("XXX1");
    bad["name"] = json!("");
    let reply = platform
        .as_admin(client.post(platform.url("/api/v1/products")))
        .await
        .json(&bad)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    assert_eq!(reply.headers()["content-type"], "application/problem+json");
    let problem: Value = reply.json().await.unwrap();
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["/name", "/price_cents", "/currency"]);

    let malformed = platform
        .as_admin(client.post(platform.url("/api/v1/products")))
        .await
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(malformed.status(), StatusCode::BAD_REQUEST);

    let wrong_type = platform
        .as_admin(client.post(platform.url("/api/v1/products")))
        .await
        .header("content-type", "application/x-www-form-urlencoded")
        .body("sku=X")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong_type.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);

    // A chunked body (no Content-Length) over the limit is cut off while it streams.
    let mut request = format!(
        "POST /api/v1/products HTTP/1.1\r\nHost: x\r\n{}Content-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
        platform.admin_header().await
    );
    for _ in 0..8 {
        request.push_str(&format!("400\r\n{}\r\n", " ".repeat(1024)));
    }
    request.push_str("0\r\n\r\n");
    let reply = raw_http(platform.addr("gateway"), request.as_bytes()).await;
    assert!(reply.starts_with("HTTP/1.1 413"), "{reply}");
    assert!(reply.contains("/problems/payload-too-large"), "{reply}");

    let huge_header = "x".repeat(20 * 1024);
    let too_large = client
        .get(platform.url("/api/v1/products"))
        .header("x-padding", huge_header)
        .send()
        .await
        .unwrap();
    assert_eq!(
        too_large.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );

    let missing = client
        .get(platform.url("/api/v1/products/not-a-uuid"))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);
    let unrouted = client.get(platform.url("/nowhere")).send().await.unwrap();
    assert_eq!(unrouted.status(), StatusCode::NOT_FOUND);
    assert_eq!(
        unrouted.headers()["content-type"],
        "application/problem+json"
    );

    // Nothing was stored by any of the refused requests.
    let listed: Value = client
        .get(platform.url("/api/v1/products"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"], json!([]));
}

#[tokio::test]
async fn openapi_describes_every_endpoint_and_docs_work_offline() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let client = &platform.client;

    let api: Value = client
        .get(platform.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(api["openapi"].as_str().unwrap().starts_with("3.1"));
    let expected = [
        ("/api/v1/products", ["get", "post"].as_slice()),
        (
            "/api/v1/products/{id}",
            ["get", "put", "patch", "delete"].as_slice(),
        ),
        ("/api/v1/product-categories", ["get", "post"].as_slice()),
        (
            "/api/v1/product-categories/{id}",
            ["get", "put", "patch", "delete"].as_slice(),
        ),
        ("/api/v1/auth/register", ["post"].as_slice()),
        ("/api/v1/auth/login", ["post"].as_slice()),
        ("/api/v1/auth/refresh", ["post"].as_slice()),
        ("/api/v1/auth/logout", ["post"].as_slice()),
        ("/api/v1/users/me", ["get", "patch"].as_slice()),
        ("/api/v1/users/me/payment-method", ["put"].as_slice()),
        ("/api/v1/admin/users", ["get", "post"].as_slice()),
        ("/api/v1/admin/users/{id}/roles", ["put"].as_slice()),
        ("/.well-known/jwks.json", ["get"].as_slice()),
    ];
    for (path, methods) in expected {
        for method in methods {
            assert!(
                api["paths"][path][method].is_object(),
                "{method} {path} is not documented"
            );
        }
    }

    let docs = client.get(platform.url("/docs/")).send().await.unwrap();
    assert_eq!(docs.status(), StatusCode::OK);
    let html = docs.text().await.unwrap();
    assert!(html.contains("swagger"), "not the API reference page");
    for marker in ["src=\"http", "href=\"http", "src=\"//", "href=\"//"] {
        assert!(
            !html.contains(marker),
            "/docs loads something from elsewhere: {marker}"
        );
    }
    let script = client
        .get(platform.url("/docs/swagger-ui-bundle.js"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        script.status(),
        StatusCode::OK,
        "the bundle is served by the binary itself"
    );
}

#[tokio::test]
async fn catalog_listings_compress_and_their_weak_etags_survive() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    for index in 0..20 {
        let (status, _) = platform
            .post_json("/api/v1/products", &product(&format!("GZ-{index}")))
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }
    let client = &platform.client;
    let plain = client
        .get(platform.url("/api/v1/products"))
        .send()
        .await
        .unwrap();
    let etag = plain.headers()["etag"].clone();
    assert!(plain.bytes().await.unwrap().len() > 1024);

    let gzipped = client
        .get(platform.url("/api/v1/products"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(gzipped.headers()["content-encoding"], "gzip");
    assert_eq!(
        gzipped.headers()["etag"],
        etag,
        "the weak ETag of the identity body is kept"
    );

    let revalidated = client
        .get(platform.url("/api/v1/products"))
        .header("accept-encoding", "gzip")
        .header("if-none-match", etag)
        .send()
        .await
        .unwrap();
    assert_eq!(revalidated.status(), StatusCode::NOT_MODIFIED);

    let (status, small) = platform
        .post_json("/api/v1/product-categories", &json!({"name": "Tiny"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let uri = format!(
        "/api/v1/product-categories/{}",
        small["id"].as_str().unwrap()
    );
    let reply = client
        .get(platform.url(&uri))
        .header("accept-encoding", "gzip, br")
        .send()
        .await
        .unwrap();
    assert!(
        reply.headers().get("content-encoding").is_none(),
        "bodies under min_size stay as they are"
    );
}

/// `promtool` checks the exposition when `LOGICORE_TEST_PROMTOOL` names it (CI does); the
/// labels are checked here either way.
#[tokio::test]
async fn metrics_are_exposed_with_route_templates_and_pass_promtool() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let client = &platform.client;
    let (_, created) = platform
        .post_json("/api/v1/products", &product("MET-1"))
        .await;
    let uri = format!("/api/v1/products/{}", created["id"].as_str().unwrap());
    assert_eq!(
        client
            .get(platform.url(&uri))
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
    client.get(platform.url("/nowhere")).send().await.unwrap();

    let reply = client
        .get(platform.admin_url("/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    assert!(
        reply.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = reply.text().await.unwrap();
    for expected in [
        r#"http_request_duration_seconds_bucket{service="gateway",method="GET",route="/api/v1/products/{id}",status="200",le="0.0005"}"#,
        r#"http_request_duration_seconds_count{service="gateway",method="POST",route="/api/v1/products",status="201"} 1"#,
        r#"route="unmatched",status="404""#,
        r#"gateway_upstream_duration_seconds_count{upstream="catalog",outcome="201"} 1"#,
        "process_resident_memory_bytes ",
        "# HELP http_request_duration_seconds ",
        // The product was written through the SQLite writer, which records its use.
        r#"db_sqlite_writer_hold_seconds_bucket{le="0.00005"}"#,
        "db_sqlite_writer_wait_seconds_count ",
        "# HELP db_sqlite_writer_hold_seconds ",
    ] {
        assert!(text.contains(expected), "missing {expected} in:\n{text}");
    }
    assert!(
        !text.contains(created["id"].as_str().unwrap()),
        "raw paths must not become labels"
    );

    if let Ok(promtool) = std::env::var("LOGICORE_TEST_PROMTOOL") {
        use std::io::Write;
        let mut child = std::process::Command::new(&promtool)
            .args(["check", "metrics"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("LOGICORE_TEST_PROMTOOL={promtool} cannot run: {err}"));
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        let output = child.wait_with_output().unwrap();
        assert!(
            output.status.success(),
            "promtool: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    let upstreams: Value = client
        .get(platform.admin_url("/admin/upstreams"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(upstreams["upstreams"][0]["service"], "catalog");
    assert_eq!(upstreams["upstreams"][0]["kind"], "local");
}

/// Slow clients are cut off: a body that does not arrive in time gets 408 and the connection
/// closes; headers that do not arrive in time get the connection closed.
#[tokio::test]
async fn slow_clients_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let setup = Setup::new(Database::Sqlite)
        .env("LOGICORE_GATEWAY__BODY_READ_TIMEOUT", "1s")
        .env("LOGICORE_GATEWAY__HEADER_READ_TIMEOUT", "1s");
    let platform = setup.start();
    let deadline = std::time::Duration::from_secs(20);

    let mut trickle = tokio::net::TcpStream::connect(platform.addr("gateway"))
        .await
        .unwrap();
    let head = format!(
        "POST /api/v1/products HTTP/1.1\r\nHost: x\r\n{}Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"sku\":",
        platform.admin_header().await
    );
    trickle.write_all(head.as_bytes()).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(deadline, trickle.read_to_end(&mut reply))
        .await
        .expect("the gateway answers instead of waiting for ever")
        .unwrap();
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 408"), "{reply}");
    assert!(reply.contains("/problems/request-timeout"), "{reply}");

    let mut stalled = tokio::net::TcpStream::connect(platform.addr("gateway"))
        .await
        .unwrap();
    stalled
        .write_all(b"GET /api/v1/products HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    let closed = tokio::time::timeout(deadline, stalled.read_to_end(&mut rest)).await;
    assert!(
        closed.is_ok(),
        "a client that never finishes its headers is disconnected"
    );

    let (status, _) = platform.get_json("/api/v1/products").await;
    assert_eq!(status, StatusCode::OK, "normal clients are unaffected");
}
