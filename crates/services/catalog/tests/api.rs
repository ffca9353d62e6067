//! The catalog's HTTP contract, in process, on every backend of the run.

use axum::Router;
use axum::body::Body;
use http::{HeaderMap, Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use logicore_catalog::{CatalogService, MIGRATIONS, router};
use logicore_platform::cache::{QueryCache, RedisStore};
use logicore_platform::db::apply_migrations;
use logicore_platform::testing::TestDb;
use serde_json::{Value, json};
use tower::ServiceExt;

fn query_cache(backend: &str) -> QueryCache {
    let ttl = std::time::Duration::from_secs(60);
    match std::env::var(logicore_platform::testing::REDIS_URL_VAR) {
        Ok(url) if backend != "sqlite" => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .expect("clock")
                .as_nanos();
            let prefix = format!("logicore-test-{}-{nanos}:", std::process::id());
            let store = RedisStore::connect(&url, &prefix).expect("redis URL");
            QueryCache::redis(store, "catalog", ttl)
        }
        _ => QueryCache::memory("catalog", ttl, 1 << 20),
    }
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

struct App {
    router: Router,
    label: &'static str,
    _db: TestDb,
}

impl App {
    async fn all() -> Vec<App> {
        let mut apps = Vec::new();
        for test_db in TestDb::all().await {
            apply_migrations(&test_db.db, MIGRATIONS)
                .await
                .expect("migrations");
            // Reads go through the query cache (Redis with PostgreSQL when the run has one),
            // so every contract test also checks that no cached read outlives a write.
            let cache = query_cache(test_db.label());
            let (router, _) = router(CatalogService::new(test_db.db.clone()).with_cache(cache));
            apps.push(App {
                router,
                label: test_db.label(),
                _db: test_db,
            });
        }
        apps
    }

    async fn send(&self, method: Method, uri: &str, body: Option<Value>) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.raw(request.body(body).expect("request")).await
    }

    async fn raw(&self, request: Request<Body>) -> Reply {
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("JSON body")
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn create_product(&self, sku: &str, category_id: Option<&str>) -> Value {
        let reply = self
            .send(
                Method::POST,
                "/api/v1/products",
                Some(product(sku, category_id)),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{}: {}",
            self.label,
            reply.body
        );
        reply.body
    }

    async fn create_category(&self, name: &str) -> Value {
        let reply = self
            .send(
                Method::POST,
                "/api/v1/product-categories",
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{}: {}",
            self.label,
            reply.body
        );
        reply.body
    }
}

fn product(sku: &str, category_id: Option<&str>) -> Value {
    json!({
        "sku": sku,
        "name": format!("Pallet {sku}"),
        "price_cents": 1299,
        "currency": "EUR",
        "stock": 10,
        "category_id": category_id,
    })
}

fn fields(reply: &Reply) -> Vec<String> {
    reply.body["errors"]
        .as_array()
        .map(|errors| {
            errors
                .iter()
                .map(|e| e["field"].as_str().expect("field is a string").to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn a_created_product_reads_back_with_every_field() {
    for app in App::all().await {
        let created = app.create_product("PAL-1", None).await;
        let id = created["id"].as_str().unwrap();
        let reply = app
            .send(Method::GET, &format!("/api/v1/products/{id}"), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", app.label);
        assert_eq!(reply.body, created, "{}", app.label);
        for field in [
            "sku",
            "name",
            "price_cents",
            "currency",
            "stock",
            "created_at",
            "updated_at",
        ] {
            assert!(
                !reply.body[field].is_null(),
                "{}: {field} missing",
                app.label
            );
        }
        assert_eq!(reply.body["description"], Value::Null);
    }
}

#[tokio::test]
async fn duplicate_skus_and_slugs_conflict() {
    for app in App::all().await {
        app.create_product("DUP-1", None).await;
        let reply = app
            .send(
                Method::POST,
                "/api/v1/products",
                Some(product("DUP-1", None)),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", app.label);
        assert_eq!(reply.body["type"], "/problems/conflict");
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );

        app.create_category("Heavy Freight").await;
        let reply = app
            .send(
                Method::POST,
                "/api/v1/product-categories",
                Some(json!({"name": "heavy freight"})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CONFLICT, "{}", app.label);
    }
}

#[tokio::test]
async fn invalid_fields_are_all_named() {
    for app in App::all().await {
        let body =
            json!({"sku": "X-1", "name": " ", "price_cents": -5, "currency": "EURO", "stock": 1});
        let reply = app.send(Method::POST, "/api/v1/products", Some(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", app.label);
        assert_eq!(reply.body["type"], "/problems/validation");
        assert_eq!(fields(&reply), ["/name", "/price_cents", "/currency"]);

        let reply = app
            .send(Method::POST, "/api/v1/products", Some(json!({"name": "x"})))
            .await;
        assert_eq!(
            fields(&reply),
            ["/sku", "/price_cents", "/currency", "/stock"]
        );

        let mut body = product("X-2", None);
        body["price_cents"] = json!("12");
        let reply = app.send(Method::POST, "/api/v1/products", Some(body)).await;
        assert_eq!(fields(&reply), ["/price_cents"], "{}", reply.body);
    }
}

#[tokio::test]
async fn unknown_fields_are_refused_and_read_only_fields_ignored() {
    for app in App::all().await {
        let mut body = product("RO-1", None);
        body["colour"] = json!("red");
        let reply = app.send(Method::POST, "/api/v1/products", Some(body)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(fields(&reply), ["/colour"]);

        let mut body = product("RO-1", None);
        body["id"] = json!("00000000-0000-0000-0000-000000000000");
        body["created_at"] = json!("1999-01-01T00:00:00Z");
        let created = app.create_product_body(body).await;
        assert_ne!(created["id"], "00000000-0000-0000-0000-000000000000");
        assert_ne!(created["created_at"], "1999-01-01T00:00:00Z");
    }
}

impl App {
    async fn create_product_body(&self, body: Value) -> Value {
        let reply = self
            .send(Method::POST, "/api/v1/products", Some(body))
            .await;
        assert_eq!(
            reply.status,
            StatusCode::CREATED,
            "{}: {}",
            self.label,
            reply.body
        );
        reply.body
    }
}

#[tokio::test]
async fn unknown_and_malformed_ids_are_not_found() {
    for app in App::all().await {
        for path in [
            "/api/v1/products/0190c0de-0000-7000-8000-000000000000",
            "/api/v1/products/not-a-uuid",
            "/api/v1/product-categories/42",
        ] {
            let reply = app.send(Method::GET, path, None).await;
            assert_eq!(reply.status, StatusCode::NOT_FOUND, "{}: {path}", app.label);
            assert_eq!(reply.body["type"], "/problems/not-found");
            assert_eq!(reply.body["status"], 404);
        }
        let reply = app
            .send(
                Method::DELETE,
                "/api/v1/products/0190c0de-0000-7000-8000-000000000000",
                None,
            )
            .await;
        assert_eq!(reply.status, StatusCode::NOT_FOUND);
    }
}

#[tokio::test]
async fn put_replaces_and_patch_merges() {
    for app in App::all().await {
        let mut body = product("UPD-1", None);
        body["description"] = json!("wooden");
        let created = app.create_product_body(body).await;
        let uri = format!("/api/v1/products/{}", created["id"].as_str().unwrap());

        let patched = app
            .send(
                Method::PATCH,
                &uri,
                Some(json!({"stock": 3, "description": null})),
            )
            .await;
        assert_eq!(
            patched.status,
            StatusCode::OK,
            "{}: {}",
            app.label,
            patched.body
        );
        assert_eq!(patched.body["stock"], 3);
        assert_eq!(patched.body["description"], Value::Null);
        assert_eq!(patched.body["sku"], "UPD-1");

        let replaced = app
            .send(Method::PUT, &uri, Some(json!({"sku": "UPD-2", "name": "New", "price_cents": 1, "currency": "USD", "stock": 0})))
            .await;
        assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
        assert_eq!(replaced.body["sku"], "UPD-2");
        assert_eq!(replaced.body["created_at"], created["created_at"]);

        let incomplete = app
            .send(Method::PUT, &uri, Some(json!({"name": "only"})))
            .await;
        assert_eq!(incomplete.status, StatusCode::BAD_REQUEST);

        let removing_required = app
            .send(Method::PATCH, &uri, Some(json!({"name": null})))
            .await;
        assert_eq!(fields(&removing_required), ["/name"]);
    }
}

#[tokio::test]
async fn categories_with_products_cannot_be_deleted() {
    for app in App::all().await {
        let category = app.create_category("Containers").await;
        assert_eq!(category["slug"], "containers");
        let category_id = category["id"].as_str().unwrap();
        let product = app.create_product("CON-1", Some(category_id)).await;

        let uri = format!("/api/v1/product-categories/{category_id}");
        let reply = app.send(Method::DELETE, &uri, None).await;
        assert_eq!(
            reply.status,
            StatusCode::CONFLICT,
            "{}: {}",
            app.label,
            reply.body
        );

        let product_uri = format!("/api/v1/products/{}", product["id"].as_str().unwrap());
        assert_eq!(
            app.send(Method::DELETE, &product_uri, None).await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            app.send(Method::DELETE, &uri, None).await.status,
            StatusCode::NO_CONTENT
        );
        assert_eq!(
            app.send(Method::GET, &uri, None).await.status,
            StatusCode::NOT_FOUND
        );
    }
}

#[tokio::test]
async fn an_unknown_category_id_is_a_validation_error() {
    for app in App::all().await {
        let body = product("ORPHAN-1", Some("0190c0de-0000-7000-8000-000000000000"));
        let reply = app.send(Method::POST, "/api/v1/products", Some(body)).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_REQUEST,
            "{}: {}",
            app.label,
            reply.body
        );
        assert_eq!(fields(&reply), ["/category_id"]);
    }
}

#[tokio::test]
async fn lists_page_with_cursors_and_filter_by_category_id_or_slug() {
    for app in App::all().await {
        let tools = app.create_category("Tools").await;
        let tools_id = tools["id"].as_str().unwrap();
        for index in 0..5 {
            app.create_product(&format!("T-{index}"), Some(tools_id))
                .await;
        }
        app.create_product("OTHER-1", None).await;

        let mut seen = Vec::new();
        let mut uri = "/api/v1/products?category=tools&limit=2".to_owned();
        loop {
            let reply = app.send(Method::GET, &uri, None).await;
            assert_eq!(
                reply.status,
                StatusCode::OK,
                "{}: {}",
                app.label,
                reply.body
            );
            for item in reply.body["items"].as_array().unwrap() {
                seen.push(item["sku"].as_str().unwrap().to_owned());
            }
            match reply.body["next_cursor"].as_str() {
                Some(cursor) => {
                    uri = format!("/api/v1/products?category=tools&limit=2&cursor={cursor}")
                }
                None => break,
            }
        }
        assert_eq!(seen, ["T-0", "T-1", "T-2", "T-3", "T-4"], "{}", app.label);

        let by_id = app
            .send(
                Method::GET,
                &format!("/api/v1/products?category={tools_id}&limit=200"),
                None,
            )
            .await;
        assert_eq!(by_id.body["items"].as_array().unwrap().len(), 5);
        let all = app
            .send(Method::GET, "/api/v1/products?limit=500", None)
            .await;
        assert_eq!(all.body["items"].as_array().unwrap().len(), 6);
        let unknown = app
            .send(Method::GET, "/api/v1/products?category=nope", None)
            .await;
        assert_eq!(unknown.body["items"], json!([]));

        let bad = app
            .send(Method::GET, "/api/v1/products?limit=0", None)
            .await;
        assert_eq!(fields(&bad), ["query:limit"]);
        let bad = app
            .send(Method::GET, "/api/v1/products?cursor=zzzz", None)
            .await;
        assert_eq!(fields(&bad), ["query:cursor"]);
    }
}

#[tokio::test]
async fn category_listing_is_publicly_cacheable_and_gets_honour_if_none_match() {
    for app in App::all().await {
        app.create_category("Crates").await;
        let reply = app
            .send(Method::GET, "/api/v1/product-categories", None)
            .await;
        assert_eq!(reply.headers[header::CACHE_CONTROL], "public, max-age=3600");
        let etag = reply.headers[header::ETAG].to_str().unwrap().to_owned();
        assert!(etag.starts_with("W/\""), "{etag}");

        let request = Request::get("/api/v1/product-categories")
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .unwrap();
        let reply = app.raw(request).await;
        assert_eq!(reply.status, StatusCode::NOT_MODIFIED, "{}", app.label);
        assert_eq!(reply.headers[header::ETAG].to_str().unwrap(), etag);
        assert_eq!(reply.headers[header::CACHE_CONTROL], "public, max-age=3600");

        app.create_category("Drums").await;
        let request = Request::get("/api/v1/product-categories")
            .header(header::IF_NONE_MATCH, &etag)
            .body(Body::empty())
            .unwrap();
        assert_eq!(app.raw(request).await.status, StatusCode::OK);
    }
}

#[tokio::test]
async fn malformed_bodies_and_wrong_content_types_are_problems() {
    for app in App::all().await {
        let request = Request::post("/api/v1/products")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from("{\"sku\": "))
            .unwrap();
        let reply = app.raw(request).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST);
        assert_eq!(reply.body["type"], "/problems/malformed-body");

        let request = Request::post("/api/v1/products")
            .header(header::CONTENT_TYPE, "text/plain")
            .body(Body::from(product("CT-1", None).to_string()))
            .unwrap();
        let reply = app.raw(request).await;
        assert_eq!(reply.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        assert_eq!(reply.body["type"], "/problems/unsupported-media-type");

        let reply = app.send(Method::POST, "/api/v1/products/x", None).await;
        assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(
            reply.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}

#[tokio::test]
async fn deleted_products_and_categories_are_gone_at_once_even_when_read_before() {
    for app in App::all().await {
        let category = app.create_category("Gone soon").await;
        let product = app.create_product("GONE-1", None).await;
        for (kind, id) in [
            ("products", product["id"].as_str().unwrap()),
            ("product-categories", category["id"].as_str().unwrap()),
        ] {
            let uri = format!("/api/v1/{kind}/{id}");
            // Read twice: the second read is served from the query cache.
            for _ in 0..2 {
                let read = app.send(Method::GET, &uri, None).await;
                assert_eq!(read.status, StatusCode::OK, "{}: {uri}", app.label);
            }
            let deleted = app.send(Method::DELETE, &uri, None).await;
            assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", app.label);
            let read = app.send(Method::GET, &uri, None).await;
            assert_eq!(read.status, StatusCode::NOT_FOUND, "{}: {uri}", app.label);
        }
    }
}

/// With the write guard (as in `up`), writes need a caller with the role admin or
/// catalog_manager; reads stay open.
#[tokio::test]
async fn guarded_writes_need_a_catalog_role() {
    use std::sync::Arc;

    use logicore_platform::auth::Principal;

    let test_db = TestDb::sqlite().await;
    apply_migrations(&test_db.db, MIGRATIONS)
        .await
        .expect("migrations");
    let (router, _) = router(CatalogService::new(test_db.db.clone()).with_write_guard());
    let send = |roles: Option<&[&str]>| {
        let mut request = Request::builder()
            .method(Method::POST)
            .uri("/api/v1/products")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(product("GUARD-1", None).to_string()))
            .expect("request");
        if let Some(roles) = roles {
            request.extensions_mut().insert(Arc::new(Principal {
                subject: "u1".into(),
                roles: roles.iter().map(|role| (*role).to_owned()).collect(),
                issuer: "logicore".into(),
            }));
        }
        router.clone().oneshot(request)
    };
    assert_eq!(send(None).await.unwrap().status(), StatusCode::UNAUTHORIZED);
    assert_eq!(
        send(Some(&["customer"])).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(Some(&["catalog_manager"])).await.unwrap().status(),
        StatusCode::CREATED
    );
    let read = router
        .clone()
        .oneshot(
            Request::builder()
                .uri("/api/v1/products")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK, "reads need no caller");
}
