//! The database going away degrades, never corrupts: 503 problems, `/ready` failing, recovery.

use reqwest::StatusCode;

use crate::relay::Relay;
use crate::support::{Database, Setup, product};

/// Rewrites the host and port of a PostgreSQL URL to go through `relay`.
pub fn through(url: &str, relay: &Relay) -> String {
    let (scheme, rest) = url.split_once("://").expect("URL with a scheme");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let userinfo = authority
        .rsplit_once('@')
        .map(|(user, _)| format!("{user}@"))
        .unwrap_or_default();
    format!("{scheme}://{userinfo}{}{path}", relay.addr)
}

pub fn backend_addr(url: &str) -> std::net::SocketAddr {
    let rest = url.split_once("://").expect("scheme").1;
    let authority = rest.split('/').next().expect("authority");
    let host_port = authority
        .rsplit_once('@')
        .map_or(authority, |(_, host)| host);
    let host_port = if host_port.contains(':') {
        host_port.to_owned()
    } else {
        format!("{host_port}:5432")
    };
    host_port
        .replace("localhost", "127.0.0.1")
        .parse()
        .expect("host:port")
}

/// The relay runs on this test's runtime while `start()` blocks a thread: multi-threaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_answers_503_and_the_platform_recovers() {
    let databases = Database::all().await;
    let Some(Database::Postgres(url)) = databases
        .into_iter()
        .find(|db| matches!(db, Database::Postgres(_)))
    else {
        eprintln!("skipped: this test needs LOGICORE_TEST_POSTGRES_URL (a server it can cut off)");
        return;
    };
    let relay = Relay::start(backend_addr(&url)).await;
    let setup = Setup::new(Database::Postgres(through(&url, &relay)));
    let platform = setup.start();
    let client = &platform.client;

    let (_, created) = platform
        .post_json("/api/v1/products", &product("OUTAGE-1"))
        .await;

    relay.cut();
    let (status, problem) = platform
        .post_json("/api/v1/products", &product("OUTAGE-2"))
        .await;
    assert_eq!(
        status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{problem} {:?}",
        platform.recent_problems()
    );
    assert_eq!(problem["type"], "/problems/unavailable");
    let ready = client
        .get(platform.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
    let health = client
        .get(platform.admin_url("/health"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        health.status(),
        StatusCode::OK,
        "liveness does not depend on the database"
    );

    relay.restore();
    let ready = client
        .get(platform.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), StatusCode::OK);
    let (_, listed) = platform.get_json("/api/v1/products").await;
    let skus: Vec<&str> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["sku"].as_str().unwrap())
        .collect();
    assert_eq!(
        skus,
        ["OUTAGE-1"],
        "the first product kept, the refused one not half-written"
    );
    assert_eq!(listed["items"][0], created);
}
