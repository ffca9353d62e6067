//! Accounts through the gateway of `logicore up`: register, sign in, the caller's account with
//! the issued token (verified by the gateway against the users service's JWKS), refresh
//! rotation with reuse detection, sign-out.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::support::{Database, Platform, Setup};

pub async fn me(platform: &Platform, token: &str) -> (StatusCode, Value) {
    let reply = platform
        .client
        .get(platform.url("/api/v1/users/me"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    (status, reply.json().await.unwrap())
}

#[tokio::test]
async fn register_sign_in_and_read_the_account_with_the_token() {
    for database in Database::all().await {
        let setup = Setup::new(database);
        let platform = setup.start();
        let account =
            json!({"email": "Ada@Example.com", "password": "correct horse", "name": "Ada"});
        let (status, user) = platform.post_json("/api/v1/auth/register", &account).await;
        assert_eq!(status, StatusCode::CREATED, "{user}");
        assert_eq!(user["email"], "ada@example.com");
        assert_eq!(user["roles"], json!(["customer"]));
        assert!(user.get("password").is_none() && user.get("password_hash").is_none());

        let (status, taken) = platform.post_json("/api/v1/auth/register", &account).await;
        assert_eq!(status, StatusCode::CONFLICT, "{taken}");
        let (status, invalid) = platform
            .post_json(
                "/api/v1/auth/register",
                &json!({"email": "nobody", "password": "short", "name": ""}),
            )
            .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        let fields: Vec<&str> = invalid["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|error| error["field"].as_str().unwrap())
            .collect();
        assert_eq!(fields, ["/email", "/password", "/name"]);

        let (status, wrong) = platform
            .post_json(
                "/api/v1/auth/login",
                &json!({"email": "ada@example.com", "password": "wrong horse"}),
            )
            .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let (_, unknown) = platform
            .post_json(
                "/api/v1/auth/login",
                &json!({"email": "nobody@example.com", "password": "wrong horse"}),
            )
            .await;
        assert_eq!(wrong["detail"], unknown["detail"], "one message for both");

        let (status, tokens) = platform
            .post_json(
                "/api/v1/auth/login",
                &json!({"email": "ADA@example.com", "password": "correct horse"}),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_eq!(tokens["token_type"], "Bearer");
        assert_eq!(tokens["expires_in"], 900);
        let access = tokens["access_token"].as_str().unwrap();
        let header = jsonwebtoken::decode_header(access).unwrap();
        assert_eq!(header.alg, jsonwebtoken::Algorithm::EdDSA);

        let (status, account) = me(&platform, access).await;
        assert_eq!(status, StatusCode::OK, "{account}");
        assert_eq!(account["id"], user["id"]);
        let (status, _) = me(&platform, "not-a-token").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);
        let anonymous = platform
            .client
            .get(platform.url("/api/v1/users/me"))
            .send()
            .await
            .unwrap();
        assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);

        let jwks: Value = platform
            .client
            .get(platform.url("/.well-known/jwks.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(jwks["keys"][0]["kty"], "OKP");
        assert_eq!(jwks["keys"][0]["kid"].as_str(), header.kid.as_deref());
    }
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_reused_one_revokes_its_family() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let account = json!({"email": "bo@example.com", "password": "long enough", "name": "Bo"});
    platform.post_json("/api/v1/auth/register", &account).await;
    let (_, first) = platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "bo@example.com", "password": "long enough"}),
        )
        .await;
    let refresh = |token: &Value| json!({"refresh_token": token});

    let (status, second) = platform
        .post_json("/api/v1/auth/refresh", &refresh(&first["refresh_token"]))
        .await;
    assert_eq!(status, StatusCode::OK, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"]);
    assert_eq!(
        me(&platform, second["access_token"].as_str().unwrap())
            .await
            .0,
        StatusCode::OK
    );

    // The first token again: stolen and replayed, or replayed by mistake. Both copies die.
    let (status, _) = platform
        .post_json("/api/v1/auth/refresh", &refresh(&first["refresh_token"]))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = platform
        .post_json("/api/v1/auth/refresh", &refresh(&second["refresh_token"]))
        .await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "the whole family is revoked"
    );

    // A new sign-in works, and signing out ends its refresh token.
    let (_, third) = platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "bo@example.com", "password": "long enough"}),
        )
        .await;
    let logout = platform
        .client
        .post(platform.url("/api/v1/auth/logout"))
        .json(&refresh(&third["refresh_token"]))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    let (status, _) = platform
        .post_json("/api/v1/auth/refresh", &refresh(&third["refresh_token"]))
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

/// Sign-in, registration and the other `/api/v1/auth` endpoints are rate limited per client
/// IP by default (30 a minute).
#[tokio::test]
async fn the_auth_endpoints_are_rate_limited_by_default() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let bogus = json!({"refresh_token": "nothing"});
    for attempt in 1..=30 {
        let (status, _) = platform.post_json("/api/v1/auth/refresh", &bogus).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "attempt {attempt}");
    }
    let (status, problem) = platform.post_json("/api/v1/auth/refresh", &bogus).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{problem}");
    assert_eq!(problem["type"], "/problems/rate-limited");
}

/// The first start creates the admin from `LOGICORE_ADMIN_EMAIL` / `LOGICORE_ADMIN_PASSWORD`;
/// `logicore users create` adds accounts with roles (password from stdin).
#[tokio::test]
async fn the_bootstrap_admin_and_users_create() {
    let setup = Setup::new(Database::Sqlite)
        .env("LOGICORE_ADMIN_EMAIL", "root@example.com")
        .env("LOGICORE_ADMIN_PASSWORD", "bootstrap secret");
    let platform = setup.start();
    let (status, tokens) = platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "root@example.com", "password": "bootstrap secret"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (_, admin) = me(&platform, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(admin["roles"], json!(["admin"]));
    platform.terminate();
    assert!(platform.wait().success());

    let mut create = setup.command(&[
        "users",
        "create",
        "--email",
        "ops@example.com",
        "--role",
        "ops",
        "--password-stdin",
    ]);
    create
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = create.spawn().unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(b"operations secret\n")
            .unwrap();
    }
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("ops@example.com"));

    let refused = setup
        .command(&[
            "users",
            "create",
            "--email",
            "x@example.com",
            "--role",
            "wizard",
        ])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("roles"));

    let again = setup.start();
    let (status, tokens) = again
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "ops@example.com", "password": "operations secret"}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (_, ops) = me(&again, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(ops["roles"], json!(["ops"]));
}

/// `PATCH /api/v1/users/me` changes the name and the SSN, which only ever comes back masked.
#[tokio::test]
async fn the_ssn_is_accepted_and_only_shown_masked() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let account = json!({"email": "sam@example.com", "password": "long enough", "name": "Sam"});
    platform.post_json("/api/v1/auth/register", &account).await;
    let (_, tokens) = platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "sam@example.com", "password": "long enough"}),
        )
        .await;
    let token = tokens["access_token"].as_str().unwrap();
    let patched = platform
        .client
        .patch(platform.url("/api/v1/users/me"))
        .bearer_auth(token)
        .json(&json!({"ssn": "123-45-6789", "name": "Samuel"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    let body: Value = patched.json().await.unwrap();
    assert_eq!(
        (body["ssn"].as_str(), body["name"].as_str()),
        (Some("***-**-6789"), Some("Samuel"))
    );
    let (_, again) = me(&platform, token).await;
    assert_eq!(again["ssn"], "***-**-6789");
    let invalid = platform
        .client
        .patch(platform.url("/api/v1/users/me"))
        .bearer_auth(token)
        .json(&json!({"ssn": "12-345-6789"}))
        .send()
        .await
        .unwrap();
    assert_eq!(invalid.status(), StatusCode::BAD_REQUEST);
}

/// `keys rotate` then `keys rewrap` on a stopped platform: the stored values move to the new
/// key and the platform reads them after a restart.
#[tokio::test]
async fn keys_rotate_and_rewrap_from_the_command_line() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let account = json!({"email": "kim@example.com", "password": "long enough", "name": "Kim"});
    platform.post_json("/api/v1/auth/register", &account).await;
    let login = json!({"email": "kim@example.com", "password": "long enough"});
    let (_, tokens) = platform.post_json("/api/v1/auth/login", &login).await;
    let patched = platform
        .client
        .patch(platform.url("/api/v1/users/me"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .json(&json!({"ssn": "987-65-4321"}))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), StatusCode::OK);
    platform.terminate();
    assert!(platform.wait().success());

    for args in [&["keys", "rotate"][..], &["keys", "rewrap"]] {
        let output = setup.command(args).output().unwrap();
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        if args[1] == "rewrap" {
            let said = String::from_utf8_lossy(&output.stdout);
            // The SSN and the two signing keys (Ed25519 and RSA).
            assert!(said.starts_with("3 value(s) re-encrypted"), "{said}");
        }
    }

    let again = setup.start();
    let (_, tokens) = again.post_json("/api/v1/auth/login", &login).await;
    let (status, account) = me(&again, tokens["access_token"].as_str().unwrap()).await;
    assert_eq!(status, StatusCode::OK, "{account}");
    assert_eq!(account["ssn"], "***-**-4321");
}

/// `PUT /api/v1/users/me/payment-method`: a Luhn-valid card comes back masked with its
/// brand; an invalid one is 400 naming the field.
#[tokio::test]
async fn payment_methods_are_checked_and_shown_masked() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let account = json!({"email": "pay@example.com", "password": "long enough", "name": "Pay"});
    platform.post_json("/api/v1/auth/register", &account).await;
    let (_, tokens) = platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "pay@example.com", "password": "long enough"}),
        )
        .await;
    let token = tokens["access_token"].as_str().unwrap();
    let put = |card: &'static str| {
        platform
            .client
            .put(platform.url("/api/v1/users/me/payment-method"))
            .bearer_auth(token)
            .json(&json!({"card_number": card, "exp_month": 12, "exp_year": 2099}))
            .send()
    };
    let accepted = put("5555555555554444").await.unwrap();
    assert_eq!(accepted.status(), StatusCode::OK);
    let body: Value = accepted.json().await.unwrap();
    assert_eq!(
        body,
        json!({"card_number": "************4444", "brand": "mastercard", "exp_month": 12, "exp_year": 2099})
    );
    let refused = put("4242424242424241").await.unwrap();
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let problem: Value = refused.json().await.unwrap();
    assert_eq!(problem["errors"][0]["field"], "/card_number");
}

async fn login(platform: &Platform, email: &str, password: &str) -> String {
    let (status, tokens) = platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": email, "password": password}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    tokens["access_token"].as_str().unwrap().to_owned()
}

/// The admin endpoints: list and create accounts, change roles; others get 403.
#[tokio::test]
async fn administrators_manage_accounts_and_roles() {
    let setup = Setup::new(Database::Sqlite)
        .env("LOGICORE_ADMIN_EMAIL", "root@example.com")
        .env("LOGICORE_ADMIN_PASSWORD", "bootstrap secret");
    let platform = setup.start();
    let admin = login(&platform, "root@example.com", "bootstrap secret").await;
    let created = platform
        .client
        .post(platform.url("/api/v1/admin/users"))
        .bearer_auth(&admin)
        .json(&json!({"email": "cm@example.com", "password": "long enough", "name": "CM", "roles": ["catalog_manager"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let created: Value = created.json().await.unwrap();
    assert_eq!(created["roles"], json!(["catalog_manager"]));

    let listed: Value = platform
        .client
        .get(platform.url("/api/v1/admin/users?limit=1"))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert!(
        listed["next_cursor"].is_string(),
        "two accounts, one per page"
    );

    let manager = login(&platform, "cm@example.com", "long enough").await;
    let forbidden = platform
        .client
        .get(platform.url("/api/v1/admin/users"))
        .bearer_auth(&manager)
        .send()
        .await
        .unwrap();
    assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);

    let id = created["id"].as_str().unwrap();
    let changed = platform
        .client
        .put(platform.url(&format!("/api/v1/admin/users/{id}/roles")))
        .bearer_auth(&admin)
        .json(&json!({"roles": ["ops", "customer"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
    let renewed = login(&platform, "cm@example.com", "long enough").await;
    let (_, account) = me(&platform, &renewed).await;
    assert_eq!(account["roles"], json!(["ops", "customer"]));
    let unknown = platform
        .client
        .put(platform.url("/api/v1/admin/users/0192f1c2-0000-7000-8000-000000000000/roles"))
        .bearer_auth(&admin)
        .json(&json!({"roles": ["ops"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), StatusCode::NOT_FOUND);
}

/// In `up`, catalog writes need the role admin or catalog_manager; a customer's token is not
/// enough, no token is 401; reads stay public.
#[tokio::test]
async fn catalog_writes_need_a_catalog_role() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let account = json!({"email": "c@example.com", "password": "long enough", "name": "C"});
    platform.post_json("/api/v1/auth/register", &account).await;
    let customer = login(&platform, "c@example.com", "long enough").await;
    let write = |token: Option<&str>| {
        let mut request = platform
            .client
            .post(platform.url("/api/v1/products"))
            .json(&crate::support::product("RBAC-1"));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    assert_eq!(
        write(None).await.unwrap().status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        write(Some(&customer)).await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    let (status, _) = platform
        .post_json("/api/v1/products", &crate::support::product("RBAC-2"))
        .await;
    assert_eq!(status, StatusCode::CREATED, "the admin may");
    let (status, _) = platform.get_json("/api/v1/products").await;
    assert_eq!(status, StatusCode::OK, "reads are public");
}

/// `logicore keys jwt-rotate` on a running platform: it starts signing with the new key
/// within seconds, tokens of the old key keep working, and no request fails meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_key_rotation_without_a_failed_request() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let email = crate::support::ADMIN_EMAIL;
    let password = crate::support::ADMIN_PASSWORD;
    let old_token = login(&platform, email, password).await;
    let old_kid = jsonwebtoken::decode_header(&old_token)
        .unwrap()
        .kid
        .unwrap();

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let (url, stop, token) = (
            platform.url("/api/v1/users/me"),
            std::sync::Arc::clone(&stop),
            old_token.clone(),
        );
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            let (mut ok, mut failed) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let status = client
                    .get(&url)
                    .bearer_auth(&token)
                    .send()
                    .await
                    .unwrap()
                    .status();
                match status {
                    StatusCode::OK => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        })
    };

    let rotated = setup.command(&["keys", "jwt-rotate"]).output().unwrap();
    assert!(
        rotated.status.success(),
        "{}",
        String::from_utf8_lossy(&rotated.stderr)
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let new_token = loop {
        let token = login(&platform, email, password).await;
        if jsonwebtoken::decode_header(&token).unwrap().kid.unwrap() != old_kid {
            break token;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still signing with the old key"
        );
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    };
    let (status, _) = me(&platform, &new_token).await;
    assert_eq!(status, StatusCode::OK, "the gateway learns the new key");
    let (status, _) = me(&platform, &old_token).await;
    assert_eq!(status, StatusCode::OK, "old tokens live out their lifetime");

    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(ok > 0);
    assert_eq!(failed, 0, "no request failed during the rotation");
    let jwks: Value = platform.get_json("/.well-known/jwks.json").await.1;
    let access_keys = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|key| key["alg"] == "EdDSA")
        .count();
    assert_eq!(access_keys, 2, "both access-token keys published");
}

/// A full flow (register, sign in, refresh, SSN, card, a failed sign-in, sign out) at debug
/// level leaves no password, token, card number or SSN in any log line.
#[tokio::test]
async fn a_full_flow_leaves_no_secret_in_the_logs() {
    let setup = Setup::new(Database::Sqlite).env("LOGICORE_LOG__LEVEL", "debug");
    let platform = setup.start();
    let password = "flow password 7731";
    let account = json!({"email": "flow@example.com", "password": password, "name": "Flow"});
    platform.post_json("/api/v1/auth/register", &account).await;
    let (_, tokens) = platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "flow@example.com", "password": password}),
        )
        .await;
    let (_, refreshed) = platform
        .post_json(
            "/api/v1/auth/refresh",
            &json!({"refresh_token": tokens["refresh_token"]}),
        )
        .await;
    let access = refreshed["access_token"].as_str().unwrap().to_owned();
    let ssn = "321-54-9876";
    let card = "4111111111111111";
    for (method, path, body) in [
        (
            reqwest::Method::PATCH,
            "/api/v1/users/me",
            json!({"ssn": ssn}),
        ),
        (
            reqwest::Method::PUT,
            "/api/v1/users/me/payment-method",
            json!({"card_number": card, "exp_month": 1, "exp_year": 2099}),
        ),
    ] {
        let reply = platform
            .client
            .request(method, platform.url(path))
            .bearer_auth(&access)
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
    }
    platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "flow@example.com", "password": "wrong flow password"}),
        )
        .await;
    let logout = platform
        .client
        .post(platform.url("/api/v1/auth/logout"))
        .json(&json!({"refresh_token": refreshed["refresh_token"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(logout.status(), StatusCode::NO_CONTENT);
    platform.terminate();
    assert!(platform.wait().success());

    let secrets = [
        password,
        "wrong flow password",
        tokens["access_token"].as_str().unwrap(),
        tokens["refresh_token"].as_str().unwrap(),
        &access,
        refreshed["refresh_token"].as_str().unwrap(),
        ssn,
        card,
        crate::support::ADMIN_PASSWORD,
    ];
    let lines: Vec<String> = crate::support::file_log_events(&setup.data_dir().join("logs"))
        .iter()
        .map(Value::to_string)
        .collect();
    assert!(lines.len() > 10, "the flow was logged");
    for line in &lines {
        for secret in secrets {
            assert!(
                !line.contains(secret),
                "a secret leaked into the log: {line}"
            );
        }
    }
}

/// After ten failed sign-ins an account is locked for a while, even for the right password;
/// other accounts are not affected.
#[tokio::test]
async fn repeated_failed_sign_ins_lock_the_account() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    for email in ["target@example.com", "bystander@example.com"] {
        let account = json!({"email": email, "password": "right password", "name": "T"});
        platform.post_json("/api/v1/auth/register", &account).await;
    }
    let platform = &platform;
    let attempt = |email: &'static str, password: &'static str| async move {
        platform
            .post_json(
                "/api/v1/auth/login",
                &json!({"email": email, "password": password}),
            )
            .await
    };
    for _ in 0..10 {
        assert_eq!(
            attempt("target@example.com", "guess").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let (status, problem) = attempt("target@example.com", "right password").await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{problem}");
    assert_eq!(
        attempt("bystander@example.com", "right password").await.0,
        StatusCode::OK
    );
}
