//! Operating the job queue: `logicore jobs list|retry|purge`, the admin API of `logicore
//! worker`, on a database the test fills through the queue's own API.

use logicore_platform::config::ConnectionUrl;
use logicore_platform::db::{Db, DbOptions};
use logicore_platform::jobs::{Jobs, NewJob};
use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Database, Setup};

/// Opens the setup's SQLite database (after a `migrate`) and makes one dead, one waiting and
/// one completed job.
async fn seeded(setup: &Setup) -> (Jobs, uuid::Uuid, uuid::Uuid) {
    assert!(
        setup
            .command(&["migrate"])
            .output()
            .unwrap()
            .status
            .success()
    );
    let url = ConnectionUrl::new(format!(
        "sqlite://{}",
        setup.data_dir().join("logicore.db").display()
    ));
    let options = DbOptions {
        max_connections: 2,
        sqlite_synchronous: Default::default(),
        slow_query: std::time::Duration::from_secs(5),
    };
    let jobs = Jobs::new(Db::connect(&url, &options).await.unwrap());
    let dead = jobs
        .enqueue_now(NewJob::new("email.test", json!({"to": "a@example.com"})).max_attempts(1))
        .await
        .unwrap()
        .unwrap();
    let kinds = ["email.test".to_owned()];
    let claimed = jobs
        .claim("test", &kinds, 10, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    jobs.fail(
        "test",
        &claimed[0],
        "smtp: connection refused",
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    let done = jobs
        .enqueue_now(NewJob::new("report.test", json!({})))
        .await
        .unwrap()
        .unwrap();
    let kinds = ["report.test".to_owned()];
    jobs.claim("test", &kinds, 10, std::time::Duration::from_secs(30))
        .await
        .unwrap();
    jobs.complete("test", &[done]).await.unwrap();
    (jobs, dead, done)
}

fn run(setup: &Setup, args: &[&str]) -> (bool, String, String) {
    let output = setup.command(args).output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test]
async fn jobs_are_listed_retried_and_purged_from_the_command_line() {
    let setup = Setup::new(Database::Sqlite);
    let (jobs, dead, done) = seeded(&setup).await;

    let (ok, listed, _) = run(&setup, &["jobs", "list", "--state", "dead"]);
    assert!(ok);
    assert!(listed.contains(&dead.to_string()), "{listed}");
    assert!(listed.contains("smtp: connection refused") && listed.contains("1/1"));
    assert!(!listed.contains(&done.to_string()));
    let (ok, _, stderr) = run(&setup, &["jobs", "list", "--state", "lost"]);
    assert!(!ok && stderr.contains("--state"), "{stderr}");

    let (ok, said, _) = run(&setup, &["jobs", "retry", &dead.to_string()]);
    assert!(ok, "{said}");
    assert!(said.contains("1 job(s) will run again"));
    let row = jobs
        .list(None, 10)
        .await
        .unwrap()
        .into_iter()
        .find(|row| row.id == dead);
    assert_eq!(
        row.map(|row| (row.state, row.attempts)),
        Some(("available".into(), 0))
    );
    let (ok, _, stderr) = run(&setup, &["jobs", "retry", &done.to_string()]);
    assert!(
        !ok && stderr.contains("no such dead or waiting job"),
        "{stderr}"
    );

    let (ok, said, _) = run(&setup, &["jobs", "purge", "--older-than", "0s"]);
    assert!(ok);
    assert!(said.contains("1 completed job(s) purged"), "{said}");
    jobs.db().close().await;
}

#[tokio::test]
async fn the_worker_role_serves_the_jobs_admin_api() {
    // The worker signs webhooks with encrypted secrets: it needs the keys like other roles.
    let keys = Setup::new(Database::Sqlite)
        .command(&["keys", "generate"])
        .output()
        .unwrap();
    let keys = String::from_utf8(keys.stdout).unwrap();
    let keyless = Setup::new(Database::Sqlite);
    let output = keyless.command(&["worker"]).output().unwrap();
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("field-encryption keys"), "{stderr}");
    let setup = Setup::new(Database::Sqlite).env("LOGICORE_ENCRYPTION_KEYS", keys.trim());
    let (jobs, dead, done) = seeded(&setup).await;
    let worker = setup.start_roles(&["worker"], &["admin"]);
    let listed: Value = worker
        .client
        .get(worker.admin_url("/admin/jobs?state=dead"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"][0]["id"], dead.to_string(), "{listed}");
    assert_eq!(listed["counts"]["dead"], 1);
    assert_eq!(listed["counts"]["completed"], 1);
    let bad = worker
        .client
        .get(worker.admin_url("/admin/jobs?state=lost"))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    let retried = worker
        .client
        .post(worker.admin_url(&format!("/admin/jobs/{dead}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(retried.status(), StatusCode::ACCEPTED);
    let completed = worker
        .client
        .post(worker.admin_url(&format!("/admin/jobs/{done}/retry")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        completed.status(),
        StatusCode::NOT_FOUND,
        "completed jobs stay completed"
    );
    let health = worker
        .client
        .get(worker.admin_url("/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    worker.terminate();
    assert!(worker.wait().success());
    jobs.db().close().await;
}
