//! Sign-in with an external OpenID Connect provider, tested against a second `logicore up`
//! acting as the provider: real server, real client, real browser redirects (followed by
//! hand so each hop is checked).

use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, COOKIE, LOCATION, SET_COOKIE};
use serde_json::{Value, json};

use crate::oauth::{browser, form, pkce, query_of};
use crate::support::{Database, Platform, Setup};

const ALICE: (&str, &str) = ("alice@example.com", "alice password 1");
const MALLORY: (&str, &str) = ("mallory@example.com", "mallory password 1");

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts a sign-in at the relying party `rp` (with `query`, an authorization request of its
/// own sign-in page, if any), signs in at the provider as `who`, and returns the callback URL
/// with the browser-binding cookie.
async fn through_provider(rp: &Platform, query: &str, who: (&str, &str)) -> (String, String) {
    let started = browser()
        .get(rp.url(&format!("/api/v1/auth/providers/corp{query}")))
        .send()
        .await
        .unwrap();
    assert_eq!(started.status(), StatusCode::FOUND);
    let cookie = started.headers()[SET_COOKIE].to_str().unwrap();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );
    let cookie = cookie.split(';').next().unwrap().to_owned();
    let at_provider = started.headers()[LOCATION].to_str().unwrap().to_owned();
    let params = query_of(&at_provider);
    assert_eq!(params["code_challenge_method"], "S256");
    assert!(params["scope"].contains("openid"));
    let signed_in = browser()
        .post(&at_provider)
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(&[("email", who.0), ("password", who.1)]))
        .send()
        .await
        .unwrap();
    assert_eq!(signed_in.status(), StatusCode::SEE_OTHER);
    let callback = signed_in.headers()[LOCATION].to_str().unwrap().to_owned();
    assert!(
        callback.starts_with(&rp.url("/api/v1/auth/providers/corp/callback")),
        "{callback}"
    );
    (callback, cookie)
}

async fn get_with_cookie(url: &str, cookie: Option<&str>) -> reqwest::Response {
    let mut request = browser().get(url);
    if let Some(cookie) = cookie {
        request = request.header(COOKIE, cookie);
    }
    request.send().await.unwrap()
}

async fn me(platform: &Platform, token: &str) -> Value {
    let (status, account) = crate::users::me(platform, token).await;
    assert_eq!(status, StatusCode::OK);
    account
}

#[tokio::test]
async fn signing_in_through_another_logicore_links_accounts_by_verified_email() {
    for database in Database::all().await {
        // The provider: Alice's account is made by an admin (verified address), Mallory
        // registered herself (unverified).
        let idp_setup = Setup::new(Database::Sqlite);
        let idp = idp_setup.start();
        let port = free_port();
        let callback = format!("http://127.0.0.1:{port}/api/v1/auth/providers/corp/callback");
        let request = idp
            .client
            .post(idp.url("/api/v1/admin/oauth-clients"))
            .json(&json!({"client_name": "Shop", "redirect_uris": [callback]}));
        let client: Value = idp
            .as_admin(request)
            .await
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let request = idp
            .client
            .post(idp.url("/api/v1/admin/users"))
            .json(&json!({
                "email": ALICE.0, "password": ALICE.1, "name": "Alice", "roles": ["customer"]
            }));
        assert_eq!(
            idp.as_admin(request).await.send().await.unwrap().status(),
            StatusCode::CREATED
        );
        let mallory = json!({"email": MALLORY.0, "password": MALLORY.1, "name": "Mallory"});
        assert_eq!(
            idp.post_json("/api/v1/auth/register", &mallory).await.0,
            StatusCode::CREATED
        );

        // The relying party, on its fixed port, with an OAuth client of its own.
        let rp_setup = Setup::new(database)
            .env("LOGICORE_GATEWAY__LISTEN", &format!("127.0.0.1:{port}"))
            .config(&format!(
                "[[auth.providers]]\nname = \"corp\"\nissuer = \"{issuer}\"\n\
                 client_id = \"{id}\"\nclient_secret = \"{secret}\"\n\n\
                 [[auth.clients]]\nclient_id = \"spa\"\nredirect_uris = [\"http://127.0.0.1:9/cb\"]\n\
                 token_endpoint_auth_method = \"none\"\n",
                issuer = idp.url("").trim_end_matches('/'),
                id = client["client_id"].as_str().unwrap(),
                secret = client["client_secret"].as_str().unwrap(),
            ));
        let rp = rp_setup.start();
        // Alice already has an account here, under the same address.
        let local = json!({"email": ALICE.0, "password": "a local password", "name": "Alice L."});
        let (_, alice_here) = rp.post_json("/api/v1/auth/register", &local).await;
        assert_eq!(
            rp.post_json(
                "/api/v1/auth/register",
                &json!({
                    "email": MALLORY.0, "password": "mallory local 1", "name": "M"
                })
            )
            .await
            .0,
            StatusCode::CREATED
        );

        // Alice signs in through the provider: linked to her account by the verified e-mail.
        let (callback_url, cookie) = through_provider(&rp, "", ALICE).await;
        let answer = get_with_cookie(&callback_url, Some(&cookie)).await;
        assert_eq!(answer.status(), StatusCode::OK);
        let tokens: Value = answer.json().await.unwrap();
        let account = me(&rp, tokens["access_token"].as_str().unwrap()).await;
        assert_eq!(account["id"], alice_here["id"], "linked, not duplicated");

        // The callback is single use, and bound to the browser that started it.
        let replay = get_with_cookie(&callback_url, Some(&cookie)).await;
        assert_eq!(replay.status(), StatusCode::UNAUTHORIZED);
        let (callback_url, _) = through_provider(&rp, "", ALICE).await;
        let elsewhere = get_with_cookie(&callback_url, None).await;
        assert_eq!(elsewhere.status(), StatusCode::UNAUTHORIZED);

        // An address the provider did not verify is never linked to an existing account.
        let (callback_url, cookie) = through_provider(&rp, "", MALLORY).await;
        let refused = get_with_cookie(&callback_url, Some(&cookie)).await;
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);

        // From the relying party's own authorization page: the provider sign-in continues the
        // OAuth request of its client, which gets a code for Alice.
        let spa_pkce = pkce();
        let query = form(&[
            ("response_type", "code"),
            ("client_id", "spa"),
            ("redirect_uri", "http://127.0.0.1:9/cb"),
            ("state", "spa-state-123"),
            ("code_challenge", &spa_pkce.challenge),
            ("code_challenge_method", "S256"),
            ("scope", "openid email"),
        ]);
        let page = browser()
            .get(rp.url(&format!("/oauth/authorize?{query}")))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(page.contains("Sign in with corp"), "{page}");
        let (callback_url, cookie) = through_provider(&rp, &format!("?{query}"), ALICE).await;
        let back = get_with_cookie(&callback_url, Some(&cookie)).await;
        assert_eq!(back.status(), StatusCode::FOUND);
        let location = back.headers()[LOCATION].to_str().unwrap().to_owned();
        assert!(location.starts_with("http://127.0.0.1:9/cb?"), "{location}");
        let params = query_of(&location);
        assert_eq!(params["state"], "spa-state-123");
        let redeemed = rp
            .client
            .post(rp.url("/oauth/token"))
            .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form(&[
                ("grant_type", "authorization_code"),
                ("code", &params["code"]),
                ("redirect_uri", "http://127.0.0.1:9/cb"),
                ("code_verifier", &spa_pkce.verifier),
                ("client_id", "spa"),
            ]))
            .send()
            .await
            .unwrap();
        assert_eq!(redeemed.status(), StatusCode::OK);
        let tokens: Value = redeemed.json().await.unwrap();
        assert_eq!(
            me(&rp, tokens["access_token"].as_str().unwrap()).await["id"],
            alice_here["id"]
        );
    }
}
