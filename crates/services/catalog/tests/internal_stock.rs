//! The internal stock API over real HTTP, called by the orders service's client
//! (`contracts::stock::HttpStock`), on every backend of the run.
#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

use std::time::Duration;

use logicore_catalog::domain::ProductFields;
use logicore_catalog::{CatalogService, MIGRATIONS};
use logicore_contracts::stock::{HttpStock, ReserveLine, Stock, StockError};
use logicore_contracts::{OrderId, ProductId};
use logicore_platform::auth::ServiceTokens;
use logicore_platform::db::apply_migrations;
use logicore_platform::testing::TestDb;

const KEY: &str = "a shared internal key, 32+ chars long";

/// Serves the catalog's internal routes on a free port; returns its base URL.
async fn serve(service: CatalogService, key: Option<&str>) -> String {
    let tokens = key.map(|key| ServiceTokens::new(key, "catalog").unwrap());
    let router = logicore_catalog::internal::router(service, tokens);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn client(instances: Vec<String>, key: &str) -> HttpStock {
    HttpStock::new(
        instances,
        ServiceTokens::new(key, "orders").unwrap(),
        Duration::from_secs(5),
    )
}

async fn product(service: &CatalogService, sku: &str, stock: i64) -> ProductId {
    let fields = ProductFields {
        sku: sku.to_owned(),
        name: format!("Pallet {sku}"),
        description: None,
        price_cents: 1299,
        currency: "EUR".to_owned(),
        stock,
        category_id: None,
    };
    service.create_product(fields).await.unwrap().id
}

async fn stock_of(service: &CatalogService, id: ProductId) -> i64 {
    service.get_product(id).await.unwrap().fields.stock
}

#[tokio::test]
async fn reservations_over_http_are_all_or_nothing_idempotent_and_released() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        apply_migrations(&test_db.db, MIGRATIONS).await.unwrap();
        let service = CatalogService::new(test_db.db.clone());
        let base = serve(service.clone(), Some(KEY)).await;
        // The first instance listed is down: calls go on to the next.
        let stock = client(vec!["http://127.0.0.1:9".to_owned(), base], KEY);
        let pallets = product(&service, "PAL-1", 5).await;
        let crates = product(&service, "CRT-1", 1).await;

        let order = OrderId::generate();
        let lines = [
            ReserveLine {
                product_id: pallets,
                quantity: 2,
            },
            ReserveLine {
                product_id: crates,
                quantity: 1,
            },
        ];
        let reserved = stock.reserve(order, &lines).await.unwrap();
        assert_eq!(reserved.len(), 2, "{label}");
        assert_eq!(reserved[0].sku, "PAL-1");
        assert_eq!(reserved[0].unit_price_cents, 1299);
        assert_eq!(stock_of(&service, pallets).await, 3, "{label}");
        assert_eq!(
            stock.reserve(order, &lines).await.unwrap(),
            reserved,
            "{label}: a repeated call returns the same reservation"
        );
        assert_eq!(stock_of(&service, pallets).await, 3, "{label}: taken once");

        // Short on the second line: nothing is taken from the first.
        let refused = stock.reserve(OrderId::generate(), &lines).await;
        assert_eq!(
            refused,
            Err(StockError::Insufficient {
                line: 1,
                available: 0
            }),
            "{label}"
        );
        assert_eq!(stock_of(&service, pallets).await, 3, "{label}");
        let unknown = [ReserveLine {
            product_id: ProductId::generate(),
            quantity: 1,
        }];
        assert_eq!(
            stock.reserve(OrderId::generate(), &unknown).await,
            Err(StockError::UnknownProduct { line: 0 }),
            "{label}"
        );

        // Two lines of one product take their sum, or nothing when the sum is short.
        let twice = |first, second| {
            [first, second].map(|quantity| ReserveLine {
                product_id: pallets,
                quantity,
            })
        };
        assert_eq!(
            stock.reserve(OrderId::generate(), &twice(2, 2)).await,
            Err(StockError::Insufficient {
                line: 0,
                available: 3
            }),
            "{label}"
        );
        let both = OrderId::generate();
        let reserved_twice = stock.reserve(both, &twice(1, 2)).await.unwrap();
        assert_eq!(
            reserved_twice
                .iter()
                .map(|line| line.quantity)
                .collect::<Vec<_>>(),
            [1, 2],
            "{label}"
        );
        assert_eq!(stock_of(&service, pallets).await, 0, "{label}");
        stock.release(both).await.unwrap();
        assert_eq!(stock_of(&service, pallets).await, 3, "{label}");

        // Releases racing each other (the orders service and its retry job) give back once.
        let mut releases = tokio::task::JoinSet::new();
        for _ in 0..8 {
            let stock = stock.clone();
            releases.spawn(async move { stock.release(order).await });
        }
        while let Some(released) = releases.join_next().await {
            released.unwrap().unwrap();
        }
        stock.release(order).await.unwrap();
        assert_eq!(
            stock_of(&service, pallets).await,
            5,
            "{label}: given back once"
        );
        assert_eq!(stock_of(&service, crates).await, 1, "{label}");
    }
}

#[tokio::test]
async fn calls_without_the_shared_key_are_refused() {
    let test_db = TestDb::sqlite().await;
    apply_migrations(&test_db.db, MIGRATIONS).await.unwrap();
    let service = CatalogService::new(test_db.db.clone());
    let pallets = product(&service, "PAL-1", 5).await;
    let line = [ReserveLine {
        product_id: pallets,
        quantity: 1,
    }];

    let base = serve(service.clone(), Some(KEY)).await;
    let forged = client(vec![base.clone()], "not the shared key, but 32+ chars");
    let refused = forged.reserve(OrderId::generate(), &line).await;
    assert!(
        matches!(&refused, Err(StockError::Unavailable { message }) if message.contains("internal.token_key")),
        "{refused:?}"
    );
    let anonymous = reqwest::Client::new()
        .put(format!(
            "{base}/internal/v1/stock/reservations/{}",
            OrderId::generate()
        ))
        .json(&serde_json::json!({"lines": [{"product_id": pallets, "quantity": 1}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);

    // A catalog without a key refuses every internal call.
    let keyless = serve(service.clone(), None).await;
    let refused = client(vec![keyless], KEY)
        .reserve(OrderId::generate(), &line)
        .await;
    assert!(
        matches!(refused, Err(StockError::Unavailable { .. })),
        "{refused:?}"
    );
    assert_eq!(stock_of(&service, pallets).await, 5);

    // No instance answers at all.
    let down = client(vec!["http://127.0.0.1:9".to_owned()], KEY);
    assert!(matches!(
        down.reserve(OrderId::generate(), &line).await,
        Err(StockError::Unavailable { .. })
    ));
}

/// Orders naming the same products in opposite line orders, many at once, all get their
/// stock: the rows are locked in one order whatever the lines say (on PostgreSQL a cycle
/// would abort one of two waiting transactions as a deadlock).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_reservations_in_opposite_line_orders_all_succeed() {
    for test_db in TestDb::all().await {
        let label = test_db.label();
        apply_migrations(&test_db.db, MIGRATIONS).await.unwrap();
        let service = CatalogService::new(test_db.db.clone());
        let pallets = product(&service, "PAL-X", 1_000_000).await;
        let crates = product(&service, "CRT-X", 1_000_000).await;
        let mut tasks = tokio::task::JoinSet::new();
        for task in 0..16 {
            let service = service.clone();
            tasks.spawn(async move {
                let (first, second) = if task % 2 == 0 {
                    (pallets, crates)
                } else {
                    (crates, pallets)
                };
                let lines = [
                    ReserveLine {
                        product_id: first,
                        quantity: 1,
                    },
                    ReserveLine {
                        product_id: second,
                        quantity: 2,
                    },
                ];
                for _ in 0..20 {
                    service.reserve(OrderId::generate(), &lines).await?;
                }
                Ok::<_, StockError>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.unwrap()
                .unwrap_or_else(|err| panic!("{label}: a reservation failed: {err}"));
        }
        // 160 orders took 1 + 2 of one product each way round: 480 units of each.
        assert_eq!(
            stock_of(&service, pallets).await,
            1_000_000 - 480,
            "{label}"
        );
        assert_eq!(stock_of(&service, crates).await, 1_000_000 - 480, "{label}");
    }
}
