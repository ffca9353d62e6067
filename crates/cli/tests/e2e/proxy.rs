//! The gateway as a reverse proxy in front of a real HTTP upstream run by the test.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Uri};
use axum::response::IntoResponse;
use axum::routing::{any, get};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};
use tokio::sync::Notify;

use crate::support::{Database, Platform, Setup, file_log_events};

const STREAMED_BYTES: usize = 50 * 1024 * 1024;
const CHUNK: usize = 1024 * 1024;

/// An upstream that echoes what it received, answers slowly, or streams 50 MiB in two phases:
/// one chunk, then the rest only after `gate` is notified.
async fn start_upstream(gate: Arc<Notify>) -> SocketAddr {
    let app = Router::new()
        .route("/echo/{*rest}", any(echo))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(5)).await;
                "late"
            }),
        )
        .route("/stream", get(move || stream(Arc::clone(&gate))))
        .route("/big", get(big_json))
        .route("/cached", get(counted))
        .route("/sensitive", get(sensitive))
        .route("/sensitive-raw", get(sensitive));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Counts its calls (over every upstream of the test binary: compare differences) and says
/// who asked; tagged for purges, with no freshness of its own.
async fn counted(headers: HeaderMap) -> impl IntoResponse {
    static CALLS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    let header = |name: &str| {
        headers
            .get(name)
            .map(|value| value.to_str().unwrap().to_owned())
    };
    (
        [("cache-tag", "products")],
        axum::Json(json!({
            "call": call,
            "auth": header("authorization"),
            "forwarded_for": header("x-forwarded-for"),
        })),
    )
}

/// JSON with card numbers and an SSN at several depths, and a strong ETag.
async fn sensitive() -> impl IntoResponse {
    (
        [("etag", "\"s1\"")],
        axum::Json(json!({
            "customer": {"name": "Ada", "ssn": "123-45-6789"},
            "payments": [{"card_number": "4242424242424242", "amount": 100}],
        })),
    )
}

async fn echo(uri: Uri, headers: HeaderMap) -> axum::Json<Value> {
    let mut seen = Map::new();
    for name in headers.keys() {
        let values: Vec<&str> = headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        seen.insert(name.as_str().to_owned(), json!(values.join(", ")));
    }
    axum::Json(json!({"uri": uri.to_string(), "headers": seen}))
}

/// 8 KiB of JSON with a strong ETag; `?no-transform` adds `Cache-Control: no-transform`.
async fn big_json(uri: Uri) -> axum::response::Response {
    let items: Vec<Value> = (0..100)
        .map(|i| json!({"index": i, "label": "pallet-of-goods"}))
        .collect();
    let mut response = axum::Json(json!({"items": items})).into_response();
    response
        .headers_mut()
        .insert("etag", "\"v1\"".parse().unwrap());
    if uri.query() == Some("no-transform") {
        response
            .headers_mut()
            .insert("cache-control", "public, no-transform".parse().unwrap());
    }
    response
}

async fn stream(gate: Arc<Notify>) -> Body {
    let chunks = futures_util::stream::unfold(0usize, move |sent| {
        let gate = Arc::clone(&gate);
        async move {
            if sent >= STREAMED_BYTES {
                return None;
            }
            if sent == CHUNK {
                gate.notified().await;
            }
            Some((Ok::<_, std::io::Error>(vec![b'x'; CHUNK]), sent + CHUNK))
        }
    });
    Body::from_stream(chunks)
}

fn gateway_in_front_of(upstream: SocketAddr, extra: &str) -> (Setup, Platform) {
    gateway_with(upstream, extra, "")
}

/// A gateway routing to `upstream`, with extra `[gateway]` keys and extra TOML at the end.
fn gateway_with(upstream: SocketAddr, extra: &str, tail: &str) -> (Setup, Platform) {
    let config = format!(
        "[gateway]\n{extra}\n\
         [[gateway.routes]]\nprefix = \"/echo\"\nservice = \"upstream\"\n\
         [[gateway.routes]]\nprefix = \"/slow\"\nservice = \"upstream\"\ntimeout = \"300ms\"\n\
         [[gateway.routes]]\nprefix = \"/stream\"\nservice = \"upstream\"\n\
         [[gateway.routes]]\nprefix = \"/big\"\nservice = \"upstream\"\n\
         [[gateway.routes]]\nprefix = \"/down\"\nservice = \"down\"\n\
         [discovery.static]\nupstream = [\"http://{upstream}\"]\ndown = [\"http://{}\"]\n{tail}",
        closed_port()
    );
    let setup = Setup::new(Database::Sqlite).config(&config);
    let platform = setup.start_roles(&["gateway"], &["gateway", "admin"]);
    (setup, platform)
}

fn closed_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Sends `request` to the echo route and returns the headers the upstream received.
async fn echoed(request: reqwest::RequestBuilder) -> Value {
    let reply = request.send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    reply.json::<Value>().await.unwrap()["headers"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_and_identity_headers_never_reach_the_upstream() {
    let upstream = start_upstream(Arc::new(Notify::new())).await;
    let (_setup, platform) = gateway_in_front_of(upstream, "");
    let request = platform
        .client
        .get(platform.url("/echo/a?b=1"))
        .header("connection", "keep-alive, x-private-hop")
        .header("x-private-hop", "secret")
        .header("keep-alive", "timeout=5")
        .header("te", "trailers")
        .header("proxy-authorization", "Basic Zm9vOmJhcg==")
        .header("x-user-id", "admin")
        .header("x-user-roles", "admin")
        .header("x-forwarded-for", "6.6.6.6")
        .header("x-forwarded-proto", "https")
        .header("x-request-id", "hop-test")
        .header(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        );
    let headers = echoed(request).await;
    for forbidden in [
        "x-private-hop",
        "keep-alive",
        "te",
        "proxy-authorization",
        "x-user-id",
        "x-user-roles",
    ] {
        assert!(
            headers.get(forbidden).is_none(),
            "{forbidden} reached the upstream: {headers}"
        );
    }
    assert_eq!(
        headers["x-forwarded-for"], "127.0.0.1",
        "untrusted client values are replaced"
    );
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(
        headers["x-forwarded-host"],
        platform.addr("gateway").to_string()
    );
    assert!(
        headers["forwarded"]
            .as_str()
            .unwrap()
            .starts_with("for=127.0.0.1;"),
        "{headers}"
    );
    assert_eq!(headers["x-request-id"], "hop-test");
    assert_eq!(
        headers["traceparent"],
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    );
    assert_eq!(headers["host"], upstream.to_string());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_trusted_proxies_are_extended() {
    let upstream = start_upstream(Arc::new(Notify::new())).await;
    let (_setup, platform) = gateway_in_front_of(upstream, "trusted_proxies = [\"127.0.0.0/8\"]");
    let request = platform
        .client
        .get(platform.url("/echo/x"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("x-forwarded-proto", "https");
    let headers = echoed(request).await;
    assert_eq!(headers["x-forwarded-for"], "203.0.113.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "https");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_is_502_and_a_slow_one_504() {
    let upstream_addr = start_upstream(Arc::new(Notify::new())).await;
    let (_setup, platform) = gateway_in_front_of(upstream_addr, "");

    let down = platform
        .client
        .get(platform.url("/down/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(down.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(down.headers()["content-type"], "application/problem+json");
    assert_eq!(
        down.json::<Value>().await.unwrap()["type"],
        "/problems/bad-gateway"
    );

    let slow = platform
        .client
        .get(platform.url("/slow"))
        .send()
        .await
        .unwrap();
    assert_eq!(slow.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(
        slow.json::<Value>().await.unwrap()["type"],
        "/problems/upstream-timeout"
    );
}

/// The upstream sends its second chunk only after the client got the first one through the
/// gateway: a gateway that buffered the response would never deliver anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_50_mib_response_streams_through_without_buffering() {
    let gate = Arc::new(Notify::new());
    let upstream = start_upstream(Arc::clone(&gate)).await;
    let (_setup, platform) = gateway_in_front_of(upstream, "");

    let mut reply = platform
        .client
        .get(platform.url("/stream"))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::OK);
    let first = tokio::time::timeout(Duration::from_secs(20), reply.chunk())
        .await
        .expect("the first chunk arrives before the upstream finished")
        .unwrap()
        .expect("a chunk");
    let mut received = first.len();
    gate.notify_one();
    while let Some(chunk) = reply.chunk().await.unwrap() {
        received += chunk.len();
    }
    assert_eq!(received, STREAMED_BYTES);
}

async fn decode(coding: &str, bytes: &[u8]) -> Vec<u8> {
    use async_compression::tokio::bufread::{BrotliDecoder, GzipDecoder, ZstdDecoder};
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    match coding {
        "br" => BrotliDecoder::new(bytes)
            .read_to_end(&mut out)
            .await
            .unwrap(),
        "zstd" => ZstdDecoder::new(bytes).read_to_end(&mut out).await.unwrap(),
        "gzip" => GzipDecoder::new(bytes).read_to_end(&mut out).await.unwrap(),
        other => panic!("unexpected coding {other}"),
    };
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn responses_are_compressed_as_negotiated_and_decode_to_the_original() {
    let upstream = start_upstream(Arc::new(Notify::new())).await;
    let (_setup, platform) = gateway_in_front_of(upstream, "");
    let plain = platform
        .client
        .get(platform.url("/big"))
        .send()
        .await
        .unwrap();
    assert!(
        plain.headers().get("content-encoding").is_none(),
        "no Accept-Encoding, no coding"
    );
    assert_eq!(plain.headers()["vary"], "accept-encoding");
    let original = plain.bytes().await.unwrap();

    for (accept, expected) in [
        ("gzip", "gzip"),
        ("br;q=1, gzip;q=0.5", "br"),
        ("zstd", "zstd"),
        ("gzip, br", "br"),
    ] {
        let reply = platform
            .client
            .get(platform.url("/big"))
            .header("accept-encoding", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(
            reply.headers()["content-encoding"],
            expected,
            "Accept-Encoding: {accept}"
        );
        assert_eq!(reply.headers()["vary"], "accept-encoding");
        assert_eq!(
            reply.headers()["etag"],
            "W/\"v1\"",
            "a strong ETag turns weak"
        );
        assert!(
            reply.headers().get("content-length").is_none()
                || reply.headers()["content-length"] != original.len().to_string().as_str()
        );
        let encoded = reply.bytes().await.unwrap();
        assert!(
            encoded.len() < original.len() / 2,
            "{expected}: {} bytes",
            encoded.len()
        );
        assert_eq!(
            decode(expected, &encoded).await,
            original,
            "{expected} round trip"
        );
    }

    let kept = platform
        .client
        .get(platform.url("/big?no-transform"))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert!(
        kept.headers().get("content-encoding").is_none(),
        "no-transform is respected"
    );
    assert_eq!(kept.headers()["etag"], "\"v1\"");
}

fn hs256(claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_secret(b"edge-secret");
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), claims, &key).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_policies_answer_401_and_403_and_pass_the_verified_identity() {
    let upstream = start_upstream(Arc::new(Notify::new())).await;
    let tail = "[[gateway.routes]]\nprefix = \"/echo/admin\"\nservice = \"upstream\"\nauth = \"required\"\nroles = [\"admin\"]\n\
                [[gateway.auth.issuers]]\nname = \"supabase\"\nhs256_secret = \"edge-secret\"\nalgorithms = [\"HS256\"]\n";
    let (_setup, platform) = gateway_with(upstream, "", tail);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 600;
    let url = platform.url("/echo/admin/orders");

    let anonymous = platform.client.get(&url).send().await.unwrap();
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(anonymous.headers()["www-authenticate"], "Bearer");
    assert_eq!(
        anonymous.json::<Value>().await.unwrap()["type"],
        "/problems/unauthorized"
    );

    let forged = format!(
        "{}x",
        hs256(&json!({"sub": "u1", "roles": ["admin"], "exp": exp}))
    );
    let reply = platform
        .client
        .get(&url)
        .bearer_auth(forged)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);

    let expired = hs256(&json!({"sub": "u1", "roles": ["admin"], "exp": exp - 3600}));
    let reply = platform
        .client
        .get(&url)
        .bearer_auth(expired)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::UNAUTHORIZED);

    let customer = hs256(&json!({"sub": "u2", "roles": ["customer"], "exp": exp}));
    let reply = platform
        .client
        .get(&url)
        .bearer_auth(customer)
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        reply.json::<Value>().await.unwrap()["type"],
        "/problems/forbidden"
    );

    let admin = hs256(&json!({"sub": "u3", "roles": ["admin", "ops"], "exp": exp}));
    let request = platform
        .client
        .get(&url)
        .bearer_auth(&admin)
        .header("x-user-id", "someone-else");
    let headers = echoed(request).await;
    assert_eq!(
        headers["x-user-id"], "u3",
        "the verified subject, never the client's"
    );
    assert_eq!(headers["x-user-roles"], "admin,ops");

    // Optional routes ignore a missing token but refuse a bad one.
    let open = platform
        .client
        .get(platform.url("/echo/public"))
        .send()
        .await
        .unwrap();
    assert_eq!(open.status(), StatusCode::OK);
    let bad = platform
        .client
        .get(platform.url("/echo/public"))
        .bearer_auth("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::UNAUTHORIZED);

    let metrics = platform
        .client
        .get(platform.admin_url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains(r#"gateway_auth_total{issuer="supabase",outcome="forbidden"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"gateway_auth_total{issuer="supabase",outcome="ok"} 1"#),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_routes_under_load_and_keeps_the_old_config_when_the_file_is_bad() {
    use std::sync::atomic::{AtomicBool, Ordering};

    let upstream = start_upstream(Arc::new(Notify::new())).await;
    let (setup, platform) = gateway_in_front_of(upstream, "");
    let config_path = setup.config_file.clone().expect("config file");
    let original = std::fs::read_to_string(&config_path).unwrap();

    // Keep-alive load for the whole reload sequence; every answer must be a 200.
    let stop = Arc::new(AtomicBool::new(false));
    let (client, url, running) = (
        platform.client.clone(),
        platform.url("/echo/load"),
        Arc::clone(&stop),
    );
    let load = tokio::spawn(async move {
        let (mut ok, mut failures) = (0u32, Vec::new());
        while !running.load(Ordering::SeqCst) && ok < 200_000 {
            match client.get(&url).send().await {
                Ok(reply) if reply.status() == StatusCode::OK => ok += 1,
                Ok(reply) => failures.push(reply.status().to_string()),
                Err(err) => failures.push(err.to_string()),
            }
        }
        (ok, failures)
    });

    let extra = platform
        .client
        .get(platform.url("/extra/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(extra.status(), StatusCode::NOT_FOUND);
    let added =
        format!("{original}\n[[gateway.routes]]\nprefix = \"/extra\"\nservice = \"upstream\"\n");
    std::fs::write(&config_path, added).unwrap();
    platform.signal("HUP");
    let reloaded = platform.wait_for_message("config reloaded");
    assert!(reloaded["routes"].as_u64().unwrap() >= 6, "{reloaded}");
    let extra = platform
        .client
        .get(platform.url("/extra/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        extra.status(),
        StatusCode::NOT_FOUND,
        "the upstream's own 404: routed now"
    );
    let problem = extra
        .headers()
        .get("content-type")
        .is_some_and(|value| value == "application/problem+json");
    assert!(
        !problem,
        "answered by the upstream, not by the gateway's route miss"
    );

    std::fs::write(&config_path, "[gateway]\nlisten_typo = 1\n").unwrap();
    platform.signal("HUP");
    let refused = platform.wait_for_message("config reload refused; the previous config stays");
    assert!(
        refused["error"]
            .as_str()
            .unwrap()
            .contains("gateway.listen_typo"),
        "{refused}"
    );
    let still = platform
        .client
        .get(platform.url("/echo/still"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        still.status(),
        StatusCode::OK,
        "the previous config stays in force"
    );

    stop.store(true, Ordering::SeqCst);
    let (ok, failures) = load.await.unwrap();
    assert!(ok > 0, "the load ran");
    assert!(
        failures.is_empty(),
        "requests failed during reloads: {failures:?}"
    );
}

/// A dead upstream trips its breaker (configured per upstream), after which the gateway answers
/// 503 with `Retry-After` by itself; the state shows in `/admin/upstreams` and `/metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_upstream_opens_its_breaker_visibly() {
    let upstream_addr = start_upstream(Arc::new(Notify::new())).await;
    let tail = "[gateway.upstreams.down.breaker]\nmin_calls = 3\nopen_duration = \"60s\"\n";
    let (_setup, platform) = gateway_with(upstream_addr, "", tail);

    // One GET: a try and two retries, all refused connections: three failed calls.
    let first = gateway_get(&platform, "/down/x").await;
    assert_eq!(first.status(), StatusCode::BAD_GATEWAY);
    let refused = gateway_get(&platform, "/down/x").await;
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(
        refused.json::<Value>().await.unwrap()["type"],
        "/problems/upstream-unavailable"
    );
    // The other upstream is not affected.
    let fine = gateway_get(&platform, "/echo/x").await;
    assert_eq!(fine.status(), StatusCode::OK);

    let upstreams: Value = admin_get(&platform, "/admin/upstreams")
        .await
        .json()
        .await
        .unwrap();
    let by_service = |name: &str| {
        upstreams["upstreams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|upstream| upstream["service"] == name)
            .unwrap()
            .clone()
    };
    assert_eq!(by_service("down")["breaker"], "open");
    assert_eq!(by_service("upstream")["breaker"], "closed");

    let metrics = admin_get(&platform, "/metrics").await.text().await.unwrap();
    for expected in [
        r#"gateway_breaker_state{upstream="down"} 1"#,
        r#"gateway_breaker_rejections_total{upstream="down"} 1"#,
        r#"gateway_retries_total{upstream="down",outcome="retried"} 2"#,
        r#"gateway_breaker_transitions_total{upstream="down",state="open"} 1"#,
    ] {
        assert!(
            metrics.contains(expected),
            "missing {expected} in\n{metrics}"
        );
    }
}

async fn gateway_get(platform: &Platform, path: &str) -> reqwest::Response {
    platform
        .client
        .get(platform.url(path))
        .send()
        .await
        .unwrap()
}

async fn admin_get(platform: &Platform, path: &str) -> reqwest::Response {
    platform
        .client
        .get(platform.admin_url(path))
        .send()
        .await
        .unwrap()
}

/// A cached route: MISS then HIT with `Age`, credentials bypass the cache and their response
/// is never served to anyone else, the coding is part of the key, purges by tag work from the
/// admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_route_hits_bypasses_credentials_and_purges_by_tag() {
    let upstream_addr = start_upstream(Arc::new(Notify::new())).await;
    let tail = "[[gateway.routes]]\nprefix = \"/cached\"\nservice = \"upstream\"\nauth = \"none\"\n\
                cache = { enabled = true, ttl = \"60s\" }\n";
    let (_setup, platform) = gateway_with(upstream_addr, "", tail);
    let fetch = |auth: Option<&'static str>, coding: Option<&'static str>| {
        let mut request = platform.client.get(platform.url("/cached"));
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        if let Some(coding) = coding {
            request = request.header("accept-encoding", coding);
        }
        async move {
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), StatusCode::OK);
            let x_cache = response.headers()["x-cache"].to_str().unwrap().to_owned();
            assert!(!response.headers().contains_key("cache-tag"));
            let has_age = response.headers().contains_key("age");
            let body: Value = response.json().await.unwrap();
            (body, x_cache, has_age)
        }
    };

    let (first, x_cache, _) = fetch(None, None).await;
    assert_eq!(x_cache, "MISS");
    assert_eq!(
        first["forwarded_for"], "127.0.0.1",
        "fetches carry forwarding headers"
    );
    let (again, x_cache, has_age) = fetch(None, None).await;
    assert_eq!((&again, x_cache.as_str(), has_age), (&first, "HIT", true));

    let (alice, x_cache, _) = fetch(Some("Bearer alice"), None).await;
    assert_eq!(x_cache, "BYPASS");
    assert_eq!(alice["auth"], "Bearer alice");
    let (anonymous, x_cache, _) = fetch(None, None).await;
    assert_eq!((&anonymous, x_cache.as_str()), (&first, "HIT"));
    let (bob, _, _) = fetch(Some("Bearer bob"), None).await;
    assert_eq!(bob["auth"], "Bearer bob", "never alice's response");
    // Naming Authorization in Connection (so the proxy strips it) does not hide it from the
    // cache: still a bypass, never stored for others.
    let hidden = platform
        .client
        .get(platform.url("/cached"))
        .header("authorization", "Bearer carol")
        .header("connection", "authorization")
        .send()
        .await
        .unwrap();
    assert_eq!(hidden.headers()["x-cache"], "BYPASS");
    let (after, x_cache, _) = fetch(None, None).await;
    assert_eq!((&after, x_cache.as_str()), (&first, "HIT"));

    let (gzip_variant, x_cache, _) = fetch(None, Some("gzip")).await;
    assert_eq!(x_cache, "MISS", "another coding is another entry");
    assert_ne!(gzip_variant["call"], first["call"]);

    let purge = |body: Value| {
        platform
            .client
            .post(platform.admin_url("/admin/cache/purge"))
            .json(&body)
            .send()
    };
    let purged = purge(json!({"tags": ["products"]})).await.unwrap();
    assert_eq!(purged.status(), StatusCode::OK);
    assert_eq!(purged.json::<Value>().await.unwrap(), json!({"purged": 2}));
    let (_, x_cache, _) = fetch(None, None).await;
    assert_eq!(x_cache, "MISS", "purged");
    let purged = purge(json!({"keys": ["/cached"]})).await.unwrap();
    assert_eq!(purged.json::<Value>().await.unwrap(), json!({"purged": 1}));

    let refused = purge(json!({})).await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let refused = purge(json!({"tag": ["x"]})).await.unwrap();
    assert_eq!(
        refused.status(),
        StatusCode::BAD_REQUEST,
        "unknown field named"
    );

    let metrics = admin_get(&platform, "/metrics").await.text().await.unwrap();
    for result in ["hit", "miss", "bypass"] {
        let line = format!("gateway_cache_requests_total{{result=\"{result}\"}}");
        assert!(metrics.contains(&line), "missing {line}");
    }
    assert!(metrics.contains(r#"gateway_cache_purged_total{selector="tag"} 2"#));
    assert!(metrics.contains(r#"gateway_cache_purged_total{selector="key"} 1"#));
}

/// A route limited per client IP: the limit's worth of requests with `RateLimit-*` headers
/// counting down, then 429 problem+json with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_route_answers_429_with_retry_after() {
    let upstream_addr = start_upstream(Arc::new(Notify::new())).await;
    let tail = "[[gateway.routes]]\nprefix = \"/limited\"\nservice = \"upstream\"\n\
                rate_limit = { per_ip = \"3/min\" }\n";
    let (_setup, platform) = gateway_with(upstream_addr, "", tail);
    for remaining in (0..3).rev() {
        let response = gateway_get(&platform, "/limited/x").await;
        assert_ne!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["ratelimit-limit"], "3");
        assert_eq!(
            response.headers()["ratelimit-remaining"],
            remaining.to_string().as_str()
        );
        assert!(response.headers().contains_key("ratelimit-reset"));
    }
    let refused = gateway_get(&platform, "/limited/x").await;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = refused.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=20).contains(&retry_after), "{retry_after}");
    assert_eq!(refused.headers()["ratelimit-remaining"], "0");
    assert_eq!(
        refused.json::<Value>().await.unwrap()["type"],
        "/problems/rate-limited"
    );
    // Other routes are not limited.
    assert_eq!(
        gateway_get(&platform, "/echo/x").await.status(),
        StatusCode::OK
    );
    let metrics = admin_get(&platform, "/metrics").await.text().await.unwrap();
    assert!(metrics.contains(r#"gateway_rate_limit_total{scope="ip",outcome="limited"} 1"#));
}

/// Two gateway processes on one Redis (`cache.url`) share one rate limit and one response
/// cache.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_on_one_redis_share_rate_limits_and_cached_responses() {
    let Some(redis) = logicore_platform::testing::PrivateRedis::start() else {
        eprintln!("skipped: needs the redis-server binary");
        return;
    };
    let upstream_addr = start_upstream(Arc::new(Notify::new())).await;
    let tail = format!(
        "[[gateway.routes]]\nprefix = \"/limited\"\nservice = \"upstream\"\n\
         rate_limit = {{ per_ip = \"3/min\" }}\n\
         [[gateway.routes]]\nprefix = \"/cached\"\nservice = \"upstream\"\nauth = \"none\"\n\
         cache = {{ enabled = true, ttl = \"60s\" }}\n\
         [cache]\nurl = \"redis://127.0.0.1:{}\"\n",
        redis.port()
    );
    let (_first_setup, first) = gateway_with(upstream_addr, "", &tail);
    let (_second_setup, second) = gateway_with(upstream_addr, "", &tail);

    let statuses = [
        gateway_get(&first, "/limited/x").await.status(),
        gateway_get(&second, "/limited/x").await.status(),
        gateway_get(&first, "/limited/x").await.status(),
        gateway_get(&second, "/limited/x").await.status(),
    ];
    assert_eq!(
        statuses.map(|status| status == StatusCode::TOO_MANY_REQUESTS),
        [false, false, false, true],
        "three per minute across both gateways: {statuses:?}"
    );

    let miss = gateway_get(&first, "/cached").await;
    assert_eq!(miss.headers()["x-cache"], "MISS");
    let stored: Value = miss.json().await.unwrap();
    let hit = gateway_get(&second, "/cached").await;
    assert_eq!(
        hit.headers()["x-cache"],
        "HIT",
        "served what the other gateway stored"
    );
    assert_eq!(hit.json::<Value>().await.unwrap(), stored);
}

/// Routes with `masking = true` mask card numbers and SSNs at any depth; others do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn masked_routes_hide_card_numbers_and_ssns_at_any_depth() {
    let upstream_addr = start_upstream(Arc::new(Notify::new())).await;
    let tail = "[[gateway.routes]]\nprefix = \"/sensitive\"\nservice = \"upstream\"\nmasking = true\n\
                [[gateway.routes]]\nprefix = \"/sensitive-raw\"\nservice = \"upstream\"\n";
    let (_setup, platform) = gateway_with(upstream_addr, "", tail);
    let masked = gateway_get(&platform, "/sensitive").await;
    assert_eq!(masked.status(), StatusCode::OK);
    assert!(!masked.headers().contains_key("etag"), "the body changed");
    let body: Value = masked.json().await.unwrap();
    assert_eq!(body["customer"]["ssn"], "***-**-6789");
    assert_eq!(body["payments"][0]["card_number"], "************4242");
    assert_eq!(body["payments"][0]["amount"], 100);
    let raw: Value = gateway_get(&platform, "/sensitive-raw")
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        raw["customer"]["ssn"], "123-45-6789",
        "masking is per route"
    );
}

/// CORS at the edge: a listed origin's preflight is answered by the gateway and its requests
/// carry the CORS headers; another origin's preflight is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_and_responses_follow_the_allow_list() {
    let upstream_addr = start_upstream(Arc::new(Notify::new())).await;
    let tail = "[cors]\nallowed_origins = [\"https://shop.example.com\"]\n";
    let (_setup, platform) = gateway_with(upstream_addr, "", tail);
    let preflight = |origin: &'static str| {
        platform
            .client
            .request(reqwest::Method::OPTIONS, platform.url("/echo/x"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "content-type")
            .send()
    };
    let allowed = preflight("https://shop.example.com").await.unwrap();
    assert_eq!(allowed.status(), StatusCode::NO_CONTENT);
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        "https://shop.example.com"
    );
    assert_eq!(
        allowed.headers()["access-control-allow-headers"],
        "content-type"
    );
    let refused = preflight("https://evil.example").await.unwrap();
    assert_eq!(refused.status(), StatusCode::FORBIDDEN);

    let response = platform
        .client
        .get(platform.url("/echo/x"))
        .header("origin", "https://shop.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["access-control-allow-origin"],
        "https://shop.example.com"
    );
    let bare = gateway_get(&platform, "/echo/x").await;
    assert!(!bare.headers().contains_key("access-control-allow-origin"));
    assert_eq!(
        bare.headers()["vary"],
        "origin",
        "caches keep origins apart"
    );
}

/// Logs never carry credentials or sensitive values: requests with a bearer token, a
/// password, a card number and an SSN in the body (answered, refused and failed ones) leave
/// none of them in the log file, at debug level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_contain_tokens_passwords_card_numbers_or_ssns() {
    let upstream_addr = start_upstream(Arc::new(Notify::new())).await;
    let (setup, platform) = gateway_with(upstream_addr, "", "[log]\nlevel = \"debug\"\n");
    let secrets = [
        "secret-token-5f1c9e",
        "hunter2-password-77",
        "4111111111111111",
        "123-45-6789",
    ];
    let body = json!({"password": secrets[1], "card_number": secrets[2], "ssn": secrets[3]});
    for path in ["/echo/x", "/down/x", "/nowhere"] {
        let _ = platform
            .client
            .post(platform.url(&format!("{path}?q=1")))
            .header("authorization", format!("Bearer {}", secrets[0]))
            .json(&body)
            .send()
            .await
            .unwrap();
    }
    platform.terminate();
    assert!(platform.wait().success());
    let lines: Vec<String> = file_log_events(&setup.data_dir().join("logs"))
        .iter()
        .map(Value::to_string)
        .collect();
    assert!(lines.len() > 3, "the requests were logged: {lines:?}");
    for line in &lines {
        for secret in secrets {
            assert!(
                !line.contains(secret),
                "`{secret}` leaked into the log: {line}"
            );
        }
    }
}
