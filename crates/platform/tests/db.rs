//! The storage layer on every backend of the run (SQLite; PostgreSQL when configured).

use logicore_platform::db::{
    Db, Migration, Violation, apply_migrations, migration_status, violation,
};
use logicore_platform::testing::TestDb;
use sea_query::{Expr, ExprTrait, Iden, Query};

#[derive(Iden)]
enum Counters {
    Table,
    Name,
    Value,
}

const COUNTERS: Migration = Migration {
    version: 1,
    name: "counters",
    sqlite: "CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL);",
    postgres: "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL);",
};

#[derive(Debug, sqlx::FromRow)]
struct Counter {
    value: i64,
}

async fn read_counter(db: &Db) -> i64 {
    let select = Query::select()
        .column(Counters::Value)
        .from(Counters::Table)
        .and_where(Expr::col(Counters::Name).eq("hits"))
        .to_owned();
    let row: Option<Counter> = db.fetch_optional(&select).await.expect("counter query");
    row.map_or(0, |row| row.value)
}

#[tokio::test]
async fn migrations_apply_once_and_report_status() {
    for test_db in TestDb::all().await {
        let db = &test_db.db;
        assert_eq!(
            apply_migrations(db, &[COUNTERS]).await.unwrap(),
            [1],
            "{}",
            test_db.label()
        );
        assert!(apply_migrations(db, &[COUNTERS]).await.unwrap().is_empty());
        let status = migration_status(db, &[COUNTERS]).await.unwrap();
        assert!(status[0].applied_at.is_some(), "{}", test_db.label());
    }
}

#[tokio::test]
async fn a_changed_migration_is_refused() {
    for test_db in TestDb::all().await {
        apply_migrations(&test_db.db, &[COUNTERS]).await.unwrap();
        let edited = Migration {
            sqlite: "CREATE TABLE counters (name TEXT);",
            postgres: "CREATE TABLE counters (name TEXT);",
            ..COUNTERS
        };
        let err = apply_migrations(&test_db.db, &[edited]).await.unwrap_err();
        assert!(
            err.to_string().contains("changed"),
            "{}: {err}",
            test_db.label()
        );
    }
}

/// Many concurrent read-modify-write transactions: none fails (no SQLITE_BUSY), none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_write_transactions_queue_instead_of_failing() {
    for test_db in TestDb::all().await {
        let db = test_db.db.clone();
        apply_migrations(&db, &[COUNTERS]).await.unwrap();
        let insert = Query::insert()
            .into_table(Counters::Table)
            .columns([Counters::Name, Counters::Value])
            .values_panic(["hits".into(), 0i64.into()])
            .to_owned();
        let mut tx = db.begin().await.unwrap();
        tx.execute(&insert).await.unwrap();
        tx.commit().await.unwrap();

        let mut tasks = Vec::new();
        for _ in 0..40 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let mut tx = db.begin().await?;
                let select = Query::select()
                    .column(Counters::Value)
                    .from(Counters::Table)
                    .and_where(Expr::col(Counters::Name).eq("hits"))
                    .to_owned();
                let current: Counter = tx.fetch_optional(&select).await?.expect("row exists");
                let update = Query::update()
                    .table(Counters::Table)
                    .value(Counters::Value, current.value + 1)
                    .and_where(Expr::col(Counters::Name).eq("hits"))
                    .to_owned();
                tx.execute(&update).await?;
                tx.commit().await
            }));
        }
        for task in tasks {
            task.await
                .unwrap()
                .unwrap_or_else(|err| panic!("{}: {err}", test_db.label()));
        }
        // Serialised writers (SQLite's single writer; PostgreSQL's row lock is not taken by a
        // plain SELECT, so only SQLite guarantees the exact count here).
        if test_db.label() == "sqlite" {
            assert_eq!(read_counter(&db).await, 40);
        } else {
            assert!(read_counter(&db).await >= 1);
        }
    }
}

#[tokio::test]
async fn restricted_deletes_and_duplicates_are_classified_on_every_backend() {
    for test_db in TestDb::all().await {
        let mut tx = test_db.db.begin().await.unwrap();
        tx.execute_script(
            "CREATE TABLE parents (id INTEGER PRIMARY KEY);
             CREATE TABLE children (id INTEGER PRIMARY KEY,
                 parent_id INTEGER REFERENCES parents (id) ON DELETE RESTRICT);
             INSERT INTO parents (id) VALUES (1);
             INSERT INTO children (id, parent_id) VALUES (1, 1);",
        )
        .await
        .unwrap();
        tx.commit().await.unwrap();

        let mut tx = test_db.db.begin().await.unwrap();
        let err = tx
            .execute_script("DELETE FROM parents WHERE id = 1")
            .await
            .unwrap_err();
        assert_eq!(
            violation(&err),
            Some(Violation::ForeignKey),
            "{}: {err}",
            test_db.label()
        );
        drop(tx);

        let mut tx = test_db.db.begin().await.unwrap();
        let err = tx
            .execute_script("INSERT INTO parents (id) VALUES (1)")
            .await
            .unwrap_err();
        assert_eq!(
            violation(&err),
            Some(Violation::Unique),
            "{}: {err}",
            test_db.label()
        );
    }
}
