//! The orders HTTP contract in process, with the real catalog as the stock, on every
//! database of the run: creation and its idempotency, stock reservation and release, the
//! status machine, who sees what, the events in the outbox, and the clean-up of a creation
//! that died half-way. Concurrency: the last unit goes to exactly one order; one
//! Idempotency-Key sent many times at once makes one order.
#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use http::{Method, Request, StatusCode, header};
use http_body_util::BodyExt;
use logicore_catalog::CatalogService;
use logicore_contracts::stock::{ReserveLine, Stock};
use logicore_contracts::{OrderId, ProductId};
use logicore_orders::store::OrderStore;
use logicore_orders::{MIGRATIONS, OrdersService, router};
use logicore_platform::auth::Principal;
use logicore_platform::bus::{self, Bus};
use logicore_platform::db::{Db, apply_migrations};
use logicore_platform::jobs::{self, JobState, Jobs};
use logicore_platform::testing::TestDb;
use serde_json::{Value, json};
use tower::ServiceExt;

struct App {
    router: Router,
    orders: OrdersService,
    catalog: CatalogService,
    jobs: Jobs,
    db: Db,
    label: &'static str,
    _db: TestDb,
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: Value,
}

fn principal(subject: &str, role: &str) -> Arc<Principal> {
    Arc::new(Principal {
        subject: subject.to_owned(),
        roles: vec![role.to_owned()],
        issuer: "test".to_owned(),
    })
}

/// The catalog as a service in another process would be: reservations in its own
/// transactions only, so the orders service runs its saga.
struct Elsewhere(CatalogService);

impl Stock for Elsewhere {
    fn reserve<'a>(
        &'a self,
        order: OrderId,
        lines: &'a [ReserveLine],
    ) -> logicore_contracts::stock::StockFuture<'a, Vec<logicore_contracts::stock::ReservedLine>>
    {
        self.0.reserve(order, lines)
    }

    fn release(&self, order: OrderId) -> logicore_contracts::stock::StockFuture<'_, ()> {
        self.0.release(order)
    }
}

impl App {
    /// One app per database of the run and per topology: the catalog in this process (one
    /// transaction per order) and elsewhere (the saga).
    async fn all() -> Vec<App> {
        let mut apps = Vec::new();
        for (test_db, local) in TestDb::all()
            .await
            .into_iter()
            .map(|db| (db, true))
            .chain(TestDb::all().await.into_iter().map(|db| (db, false)))
        {
            let label = match (test_db.label(), local) {
                ("sqlite", true) => "sqlite, catalog here",
                ("sqlite", false) => "sqlite, catalog elsewhere",
                (_, true) => "postgres, catalog here",
                _ => "postgres, catalog elsewhere",
            };
            let stock = |catalog: CatalogService| {
                if local {
                    Arc::new(catalog) as Arc<dyn Stock>
                } else {
                    Arc::new(Elsewhere(catalog))
                }
            };
            apps.push(App::with_stock(test_db, label, stock).await);
        }
        apps
    }

    /// The app on a migrated `test_db`, the orders service reaching the catalog through
    /// the stock `stock` makes of it.
    async fn with_stock(
        test_db: TestDb,
        label: &'static str,
        stock: impl FnOnce(CatalogService) -> Arc<dyn Stock>,
    ) -> App {
        let db = test_db.db.clone();
        let migrations = [
            jobs::MIGRATIONS,
            bus::MIGRATIONS,
            logicore_catalog::MIGRATIONS,
            MIGRATIONS,
        ]
        .concat();
        apply_migrations(&db, &migrations).await.unwrap();
        let catalog = CatalogService::new(db.clone());
        let jobs = Jobs::new(db.clone());
        let orders = OrdersService::new(
            OrderStore::new(db.clone()),
            Bus::new(db.clone()),
            jobs.clone(),
            stock(catalog.clone()),
        );
        let (router, _) = router(orders.clone());
        App {
            router,
            orders,
            catalog,
            jobs,
            db,
            label,
            _db: test_db,
        }
    }

    async fn send(
        &self,
        who: &Arc<Principal>,
        method: Method,
        uri: &str,
        body: Option<Value>,
        key: Option<&str>,
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(key) = key {
            request = request.header("idempotency-key", key);
        }
        let body = match body {
            Some(json) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        let mut request = request.body(body).unwrap();
        request.extensions_mut().insert(Arc::clone(who));
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn place(&self, who: &Arc<Principal>, body: Value, key: Option<&str>) -> Reply {
        self.send(who, Method::POST, "/api/v1/orders", Some(body), key)
            .await
    }

    async fn product(&self, sku: &str, price: i64, stock: i64) -> ProductId {
        let fields = logicore_catalog::dto::ProductIn {
            sku: Some(sku.into()),
            name: Some(format!("Product {sku}")),
            price_cents: Some(price),
            currency: Some("EUR".into()),
            stock: Some(stock),
            ..Default::default()
        }
        .parse()
        .unwrap();
        self.catalog.create_product(fields).await.unwrap().id
    }

    async fn stock(&self, id: ProductId) -> i64 {
        self.catalog.get_product(id).await.unwrap().fields.stock
    }

    async fn events(&self) -> Vec<(String, Value)> {
        let select = sea_query::Query::select()
            .columns(["type", "data"])
            .from("outbox")
            .order_by("seq", sea_query::Order::Asc)
            .to_owned();
        let rows: Vec<(String, String)> = self.db.fetch_all(&select).await.unwrap();
        rows.into_iter()
            .map(|(kind, data)| (kind, serde_json::from_str(&data).unwrap()))
            .collect()
    }
}

fn order_body(lines: &[(ProductId, i64)]) -> Value {
    json!({
        "items": lines.iter().map(|(id, quantity)| json!({"product_id": id, "quantity": quantity})).collect::<Vec<_>>(),
        "shipping_address": {"name": "Ada Lovelace", "line1": "1 Analytical Way", "city": "London", "postal_code": "N1 9GU", "country": "GB"}
    })
}

#[tokio::test]
async fn an_order_reserves_stock_prices_its_lines_and_publishes_order_created() {
    for app in App::all().await {
        let label = app.label;
        let alice = principal("alice", "customer");
        let pen = app.product("PEN", 250, 10).await;
        let ink = app.product("INK", 1200, 3).await;
        let placed = app
            .place(&alice, order_body(&[(pen, 4), (ink, 1)]), None)
            .await;
        assert_eq!(
            placed.status,
            StatusCode::CREATED,
            "{label}: {}",
            placed.body
        );
        let order = placed.body;
        assert_eq!(order["status"], "created");
        assert_eq!(order["user_id"], "alice");
        assert_eq!(order["total_cents"], 4 * 250 + 1200);
        assert_eq!(order["currency"], "EUR");
        assert_eq!(order["items"][0]["sku"], "PEN");
        assert_eq!(order["items"][0]["unit_price_cents"], 250);
        assert_eq!(order["items"][1]["quantity"], 1);
        assert_eq!(order["shipping_address"]["country"], "GB");
        assert_eq!(order["shipping_address"]["line2"], Value::Null);
        let location = placed.headers[header::LOCATION]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            location,
            format!("/api/v1/orders/{}", order["id"].as_str().unwrap())
        );
        assert_eq!(
            (app.stock(pen).await, app.stock(ink).await),
            (6, 2),
            "{label}"
        );

        let events = app.events().await;
        assert_eq!(events.len(), 1, "{label}");
        assert_eq!(events[0].0, "order.created");
        assert_eq!(
            events[0].1, order,
            "{label}: the event carries the representation"
        );
        // No abandon job is left behind by a creation that finished.
        let waiting = app.jobs.list(Some(JobState::Available), 100).await.unwrap();
        assert!(waiting.is_empty(), "{label}: {waiting:?}");

        let fetched = app.send(&alice, Method::GET, &location, None, None).await;
        assert_eq!(fetched.status, StatusCode::OK);
        assert_eq!(fetched.body, order);
    }
}

#[tokio::test]
async fn an_idempotency_key_replays_the_same_order_and_refuses_another_body() {
    for app in App::all().await {
        let label = app.label;
        let alice = principal("alice", "customer");
        let bob = principal("bob", "customer");
        let pen = app.product("PEN", 250, 10).await;
        let body = order_body(&[(pen, 2)]);
        let first = app.place(&alice, body.clone(), Some("k-1")).await;
        assert_eq!(first.status, StatusCode::CREATED, "{label}");
        // Keys in another order: the same request.
        let reordered: Value = serde_json::from_str(&body.to_string()).unwrap();
        let again = app.place(&alice, reordered, Some("k-1")).await;
        assert_eq!(again.status, StatusCode::CREATED, "{label}");
        assert_eq!(again.body, first.body);
        assert_eq!(again.headers["idempotent-replayed"], "true");
        assert_eq!(app.stock(pen).await, 8, "{label}: reserved once");

        let other = app
            .place(&alice, order_body(&[(pen, 3)]), Some("k-1"))
            .await;
        assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY, "{label}");
        assert_eq!(other.body["type"], "/problems/idempotency-key-reused");
        assert_eq!(app.stock(pen).await, 8, "{label}");

        // Keys belong to their user.
        let bobs = app.place(&bob, body.clone(), Some("k-1")).await;
        assert_eq!(bobs.status, StatusCode::CREATED, "{label}");
        assert_ne!(bobs.body["id"], first.body["id"]);

        let bad_key = app.place(&alice, body, Some("")).await;
        assert_eq!(bad_key.status, StatusCode::BAD_REQUEST, "{label}");
        assert_eq!(bad_key.body["errors"][0]["field"], "header:idempotency-key");
    }
}

#[tokio::test]
async fn a_refused_order_leaves_no_reservation_and_names_the_field() {
    for app in App::all().await {
        let label = app.label;
        let alice = principal("alice", "customer");
        let pen = app.product("PEN", 250, 10).await;
        let ink = app.product("INK", 1200, 1).await;

        let short = app
            .place(&alice, order_body(&[(pen, 5), (ink, 2)]), Some("k"))
            .await;
        assert_eq!(
            short.status,
            StatusCode::CONFLICT,
            "{label}: {}",
            short.body
        );
        assert!(
            short.body["detail"].as_str().unwrap().contains("/items/1"),
            "{}",
            short.body
        );
        assert_eq!(
            (app.stock(pen).await, app.stock(ink).await),
            (10, 1),
            "{label}: nothing taken"
        );

        let unknown = ProductId::generate();
        let missing = app
            .place(&alice, order_body(&[(pen, 1), (unknown, 1)]), None)
            .await;
        assert_eq!(missing.status, StatusCode::BAD_REQUEST, "{label}");
        assert_eq!(missing.body["errors"][0]["field"], "/items/1/product_id");
        assert_eq!(app.stock(pen).await, 10, "{label}");

        let invalid = app
            .place(&alice, json!({"items": [{"product_id": pen, "quantity": 0}], "shipping_address": {"name": "A", "line1": "B", "city": "C", "postal_code": "D", "country": "ZZ"}}), None)
            .await;
        assert_eq!(invalid.status, StatusCode::BAD_REQUEST, "{label}");
        let fields: Vec<&str> = invalid.body["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|error| error["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["/items/0/quantity", "/shipping_address/country"]);
        let unknown_field = app
            .place(&alice, json!({"items": [], "coupon": "x"}), None)
            .await;
        assert_eq!(unknown_field.status, StatusCode::BAD_REQUEST, "{label}");
        assert!(
            unknown_field.body.to_string().contains("coupon"),
            "{}",
            unknown_field.body
        );

        // The key of the refused order is free again; nothing pending is left anywhere.
        let retried = app
            .place(&alice, order_body(&[(pen, 5), (ink, 1)]), Some("k"))
            .await;
        assert_eq!(
            retried.status,
            StatusCode::CREATED,
            "{label}: {}",
            retried.body
        );
        assert_eq!(
            app.events().await.len(),
            1,
            "{label}: only the placed order's event"
        );
        let waiting = app.jobs.list(Some(JobState::Available), 100).await.unwrap();
        assert!(waiting.is_empty(), "{label}: {waiting:?}");
    }
}

#[tokio::test]
async fn customers_see_their_own_orders_and_admins_see_all() {
    for app in App::all().await {
        let label = app.label;
        let alice = principal("alice", "customer");
        let bob = principal("bob", "customer");
        let admin = principal("root", "admin");
        let pen = app.product("PEN", 250, 100).await;
        let mut alices = Vec::new();
        for _ in 0..3 {
            let placed = app.place(&alice, order_body(&[(pen, 1)]), None).await;
            alices.push(placed.body["id"].as_str().unwrap().to_owned());
        }
        let bobs = app.place(&bob, order_body(&[(pen, 1)]), None).await;
        let bobs = bobs.body["id"].as_str().unwrap().to_owned();

        let mine = app
            .send(&alice, Method::GET, "/api/v1/orders?limit=2", None, None)
            .await;
        assert_eq!(mine.status, StatusCode::OK);
        let ids: Vec<&str> = mine.body["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["id"].as_str().unwrap())
            .collect();
        assert_eq!(
            ids,
            [alices[2].as_str(), alices[1].as_str()],
            "{label}: newest first"
        );
        let cursor = mine.body["next_cursor"].as_str().unwrap();
        let rest = app
            .send(
                &alice,
                Method::GET,
                &format!("/api/v1/orders?limit=2&cursor={cursor}"),
                None,
                None,
            )
            .await;
        assert_eq!(rest.body["items"].as_array().unwrap().len(), 1, "{label}");
        assert_eq!(rest.body["next_cursor"], Value::Null);

        let others = app
            .send(
                &alice,
                Method::GET,
                &format!("/api/v1/orders/{bobs}"),
                None,
                None,
            )
            .await;
        assert_eq!(
            others.status,
            StatusCode::NOT_FOUND,
            "{label}: another's order is not found"
        );
        let cancel_others = app
            .send(
                &alice,
                Method::POST,
                &format!("/api/v1/orders/{bobs}/cancel"),
                None,
                None,
            )
            .await;
        assert_eq!(cancel_others.status, StatusCode::NOT_FOUND, "{label}");
        let not_an_id = app
            .send(&alice, Method::GET, "/api/v1/orders/nope", None, None)
            .await;
        assert_eq!(not_an_id.status, StatusCode::NOT_FOUND);

        let all = app
            .send(&admin, Method::GET, "/api/v1/orders", None, None)
            .await;
        assert_eq!(all.body["items"].as_array().unwrap().len(), 4, "{label}");
        let any = app
            .send(
                &admin,
                Method::GET,
                &format!("/api/v1/orders/{bobs}"),
                None,
                None,
            )
            .await;
        assert_eq!(any.status, StatusCode::OK);

        let set_by_customer = app
            .send(
                &alice,
                Method::PUT,
                &format!("/api/v1/orders/{}/status", alices[0]),
                Some(json!({"status": "confirmed"})),
                None,
            )
            .await;
        assert_eq!(set_by_customer.status, StatusCode::FORBIDDEN, "{label}");
    }
}

#[tokio::test]
async fn the_status_machine_moves_forward_and_cancel_gives_the_stock_back() {
    for app in App::all().await {
        let label = app.label;
        let alice = principal("alice", "customer");
        let admin = principal("root", "admin");
        let pen = app.product("PEN", 250, 10).await;
        let place = || app.place(&alice, order_body(&[(pen, 3)]), None);
        let shipped = place().await.body["id"].as_str().unwrap().to_owned();
        let (app_ref, admin_ref) = (&app, &admin);
        let status = |id: &str, status: &str| {
            let uri = format!("/api/v1/orders/{id}/status");
            let body = json!({"status": status});
            async move {
                app_ref
                    .send(admin_ref, Method::PUT, &uri, Some(body), None)
                    .await
            }
        };
        assert_eq!(
            status(&shipped, "shipped").await.status,
            StatusCode::CONFLICT,
            "{label}: created → shipped skips a step"
        );
        assert_eq!(
            status(&shipped, "confirmed").await.body["status"],
            "confirmed"
        );
        assert_eq!(status(&shipped, "shipped").await.body["status"], "shipped");
        let late_cancel = app
            .send(
                &alice,
                Method::POST,
                &format!("/api/v1/orders/{shipped}/cancel"),
                None,
                None,
            )
            .await;
        assert_eq!(late_cancel.status, StatusCode::CONFLICT, "{label}");
        assert_eq!(
            status(&shipped, "delivered").await.body["status"],
            "delivered"
        );
        let unknown = status(&shipped, "lost").await;
        assert_eq!(unknown.status, StatusCode::BAD_REQUEST);
        assert_eq!(unknown.body["errors"][0]["field"], "/status");
        assert_eq!(app.stock(pen).await, 7, "{label}");

        let cancelled = place().await.body["id"].as_str().unwrap().to_owned();
        assert_eq!(app.stock(pen).await, 4, "{label}");
        let cancel = app
            .send(
                &alice,
                Method::POST,
                &format!("/api/v1/orders/{cancelled}/cancel"),
                None,
                None,
            )
            .await;
        assert_eq!(cancel.status, StatusCode::OK, "{label}: {}", cancel.body);
        assert_eq!(cancel.body["status"], "cancelled");
        assert_eq!(app.stock(pen).await, 7, "{label}: the stock is back");
        let again = app
            .send(
                &alice,
                Method::POST,
                &format!("/api/v1/orders/{cancelled}/cancel"),
                None,
                None,
            )
            .await;
        assert_eq!(again.status, StatusCode::CONFLICT, "{label}");
        // The release job finds nothing left to give back.
        let id: OrderId = cancelled.parse().unwrap();
        app.orders.release_stock(id).await.unwrap();
        assert_eq!(app.stock(pen).await, 7, "{label}: released once");

        let kinds: Vec<String> = app
            .events()
            .await
            .into_iter()
            .map(|(kind, _)| kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "order.created",
                "order.status_changed",
                "order.status_changed",
                "order.status_changed",
                "order.created",
                "order.status_changed",
                "order.cancelled"
            ],
            "{label}"
        );
    }
}

#[tokio::test]
async fn a_creation_that_died_after_reserving_is_undone_by_its_abandon_job() {
    for app in App::all().await {
        let label = app.label;
        let alice = principal("alice", "customer");
        let pen = app.product("PEN", 250, 10).await;
        // A process dies between the reservation and the completion: simulate the state it
        // leaves (a pending order with its key and abandon job, stock reserved).
        let placed = app
            .place(&alice, order_body(&[(pen, 1)]), Some("once"))
            .await;
        let id: OrderId = placed.body["id"].as_str().unwrap().parse().unwrap();
        let ghost = OrderId::generate();
        let now = chrono::Utc::now();
        let pending = logicore_orders::domain::Order {
            id: ghost,
            user_id: "alice".into(),
            status: logicore_orders::domain::OrderStatus::Pending,
            items: Vec::new(),
            total_cents: 0,
            currency: String::new(),
            shipping_address: serde_json::from_value(order_body(&[])["shipping_address"].clone())
                .unwrap(),
            created_at: now,
            updated_at: now,
        };
        let store = OrderStore::new(app.db.clone());
        let mut tx = app.db.begin().await.unwrap();
        store
            .insert(&mut tx, &pending, Some("ghost-key"), "hash")
            .await
            .unwrap();
        tx.commit().await.unwrap();
        let ghost_lines = [ReserveLine {
            product_id: pen,
            quantity: 4,
        }];
        let first = app.catalog.reserve(ghost, &ghost_lines).await.unwrap();
        // Reserving again for the same order (a retried call) takes nothing more.
        let again = app.catalog.reserve(ghost, &ghost_lines).await.unwrap();
        assert_eq!(first, again, "{label}");
        assert_eq!(app.stock(pen).await, 5);
        // Meanwhile the key answers "being processed".
        let retry = app.place(&alice, json!({"x": 1}), Some("ghost-key")).await;
        assert_eq!(
            retry.status,
            StatusCode::UNPROCESSABLE_ENTITY,
            "{label}: another body"
        );
        // The abandon job of a completed order does nothing; of the ghost it gives back.
        app.orders.abandon(id).await.unwrap();
        app.orders.abandon(ghost).await.unwrap();
        app.orders.abandon(ghost).await.unwrap();
        assert_eq!(
            app.stock(pen).await,
            9,
            "{label}: the ghost's reservation is back, once"
        );
        assert!(
            store.get(ghost).await.unwrap().is_none(),
            "{label}: the ghost is gone"
        );
        let still = app
            .send(
                &alice,
                Method::GET,
                &format!("/api/v1/orders/{id}"),
                None,
                None,
            )
            .await;
        assert_eq!(still.status, StatusCode::OK, "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_last_unit_goes_to_exactly_one_of_many_concurrent_orders() {
    for app in App::all().await {
        let label = app.label;
        let app = Arc::new(app);
        let pen = app.product("PEN", 250, 1).await;
        let tasks: Vec<_> = (0..16)
            .map(|n| {
                let app = Arc::clone(&app);
                tokio::spawn(async move {
                    let buyer = principal(&format!("buyer-{n}"), "customer");
                    app.place(&buyer, order_body(&[(pen, 1)]), None)
                        .await
                        .status
                })
            })
            .collect();
        let mut statuses = Vec::new();
        for task in tasks {
            statuses.push(task.await.unwrap());
        }
        let created = statuses
            .iter()
            .filter(|status| **status == StatusCode::CREATED)
            .count();
        let conflicts = statuses
            .iter()
            .filter(|status| **status == StatusCode::CONFLICT)
            .count();
        assert_eq!((created, conflicts), (1, 15), "{label}: {statuses:?}");
        assert_eq!(app.stock(pen).await, 0, "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_idempotency_key_sent_concurrently_makes_one_order() {
    for app in App::all().await {
        let label = app.label;
        let app = Arc::new(app);
        let pen = app.product("PEN", 250, 100).await;
        let alice = principal("alice", "customer");
        let tasks: Vec<_> = (0..12)
            .map(|_| {
                let app = Arc::clone(&app);
                let alice = Arc::clone(&alice);
                tokio::spawn(async move {
                    let reply = app
                        .place(&alice, order_body(&[(pen, 2)]), Some("same"))
                        .await;
                    (reply.status, reply.body["id"].as_str().map(str::to_owned))
                })
            })
            .collect();
        let mut ids = Vec::new();
        for task in tasks {
            let (status, id) = task.await.unwrap();
            // Either the order, or "being processed, retry" while the first one runs.
            assert!(
                status == StatusCode::CREATED || status == StatusCode::CONFLICT,
                "{label}: {status}"
            );
            ids.extend(id);
        }
        ids.dedup();
        assert_eq!(ids.len(), 1, "{label}: {ids:?}");
        assert_eq!(app.stock(pen).await, 98, "{label}: one reservation");
        let listed = app
            .send(&alice, Method::GET, "/api/v1/orders", None, None)
            .await;
        assert_eq!(listed.body["items"].as_array().unwrap().len(), 1, "{label}");
    }
}

/// A catalog that gives up answering before its reservation commits (a timeout): the call
/// says "unavailable", the reservation lands a moment later.
struct LateCommit(CatalogService);

impl Stock for LateCommit {
    fn reserve<'a>(
        &'a self,
        order: OrderId,
        lines: &'a [ReserveLine],
    ) -> logicore_contracts::stock::StockFuture<'a, Vec<logicore_contracts::stock::ReservedLine>>
    {
        let (catalog, lines) = (self.0.clone(), lines.to_vec());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            catalog.reserve(order, &lines).await.unwrap();
        });
        Box::pin(async {
            Err(logicore_contracts::stock::StockError::Unavailable {
                message: "timed out".into(),
            })
        })
    }

    fn release(&self, order: OrderId) -> logicore_contracts::stock::StockFuture<'_, ()> {
        self.0.release(order)
    }
}

#[tokio::test]
async fn a_reservation_that_commits_after_its_call_gave_up_is_given_back_later() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        let app = App::with_stock(test_db, label, |catalog| Arc::new(LateCommit(catalog))).await;
        let alice = principal("alice", "customer");
        let pen = app.product("PEN", 250, 10).await;
        let refused = app.place(&alice, order_body(&[(pen, 3)]), None).await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{label}");
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        assert_eq!(
            app.stock(pen).await,
            7,
            "{label}: the late reservation is in"
        );

        // A release is due after the abandon timeout; when it runs, the stock is back.
        let due: Vec<_> = app
            .jobs
            .list(Some(JobState::Available), 100)
            .await
            .unwrap()
            .into_iter()
            .filter(|job| job.kind == logicore_orders::service::RELEASE_JOB)
            .collect();
        assert_eq!(due.len(), 1, "{label}");
        assert!(
            due[0].run_at > chrono::Utc::now(),
            "{label}: not before the timeout"
        );
        let order: OrderId = due[0]
            .unique_key
            .as_deref()
            .and_then(|key| key.rsplit(':').next())
            .unwrap()
            .parse()
            .unwrap();
        app.orders.release_stock(order).await.unwrap();
        assert_eq!(app.stock(pen).await, 10, "{label}: given back");
    }
}
