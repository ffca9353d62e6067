//! The OAuth 2.1 authorization server and OpenID Connect provider of `logicore up`, driven
//! as a client would through the gateway: registration, the sign-in form, code + PKCE,
//! ID tokens checked against the JWKS, userinfo, refresh rotation, revocation,
//! introspection — and every attack the issue names.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use reqwest::StatusCode;
use reqwest::header::{CONTENT_TYPE, LOCATION, WWW_AUTHENTICATE};
use serde_json::{Value, json};

use crate::support::{ADMIN_EMAIL, ADMIN_PASSWORD, Database, Platform, Setup};

const REDIRECT: &str = "http://127.0.0.1:9/callback";
const OTHER_REDIRECT: &str = "http://127.0.0.1:9/other";

/// A PKCE pair.
pub struct Pkce {
    pub verifier: String,
    pub challenge: String,
}

pub fn pkce() -> Pkce {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).unwrap();
    let verifier = URL_SAFE_NO_PAD.encode(bytes);
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, verifier.as_bytes());
    Pkce {
        challenge: URL_SAFE_NO_PAD.encode(digest.as_ref()),
        verifier,
    }
}

pub fn form(pairs: &[(&str, &str)]) -> String {
    let mut serializer = form_urlencoded::Serializer::new(String::new());
    for (name, value) in pairs {
        serializer.append_pair(name, value);
    }
    serializer.finish()
}

/// The query parameters of a redirect `Location`.
pub fn query_of(location: &str) -> std::collections::BTreeMap<String, String> {
    let query = location.split_once('?').map_or("", |(_, query)| query);
    form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .collect()
}

/// A client that does not follow redirects (the test reads them).
pub fn browser() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

/// A registered client: id and secret (none for a public client).
struct Registered {
    id: String,
    secret: Option<String>,
}

async fn register_client(platform: &Platform, method: &str) -> Registered {
    let request = platform
        .client
        .post(platform.url("/api/v1/admin/oauth-clients"))
        .json(&json!({
            "client_name": "Shop <front>",
            "redirect_uris": [REDIRECT, OTHER_REDIRECT],
            "token_endpoint_auth_method": method,
        }));
    let reply = platform.as_admin(request).await.send().await.unwrap();
    assert_eq!(reply.status(), StatusCode::CREATED);
    let client: Value = reply.json().await.unwrap();
    assert_eq!(client["token_endpoint_auth_method"], method);
    assert_eq!(client["redirect_uris"], json!([REDIRECT, OTHER_REDIRECT]));
    Registered {
        id: client["client_id"].as_str().unwrap().to_owned(),
        secret: client["client_secret"].as_str().map(str::to_owned),
    }
}

fn authorize_query(client: &str, redirect: &str, pkce: &Pkce, extra: &[(&str, &str)]) -> String {
    let mut pairs = vec![
        ("response_type", "code"),
        ("client_id", client),
        ("redirect_uri", redirect),
        ("state", "state-1234567"),
        ("code_challenge", pkce.challenge.as_str()),
        ("code_challenge_method", "S256"),
        ("scope", "openid email profile"),
        ("nonce", "nonce-42"),
    ];
    for (name, value) in extra {
        pairs.retain(|(existing, _)| existing != name);
        if !value.is_empty() {
            pairs.push((name, value));
        }
    }
    form(&pairs)
}

/// Posts the sign-in form of `query`; returns the status and `Location`.
async fn sign_in(
    platform: &Platform,
    query: &str,
    email: &str,
    password: &str,
) -> (StatusCode, Option<String>) {
    let reply = browser()
        .post(platform.url(&format!("/oauth/authorize?{query}")))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(form(&[("email", email), ("password", password)]))
        .send()
        .await
        .unwrap();
    let location = reply
        .headers()
        .get(LOCATION)
        .map(|value| value.to_str().unwrap().to_owned());
    (reply.status(), location)
}

/// Signs in and returns the code of the redirect.
async fn code_for(platform: &Platform, client: &str, redirect: &str, pkce: &Pkce) -> String {
    let query = authorize_query(client, redirect, pkce, &[]);
    let (status, location) = sign_in(platform, &query, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(
        status,
        StatusCode::SEE_OTHER,
        "a form POST is followed by a GET"
    );
    let location = location.unwrap();
    assert!(location.starts_with(redirect), "{location}");
    let params = query_of(&location);
    assert_eq!(params["state"], "state-1234567");
    params["code"].clone()
}

/// Posts a form to a client endpoint, authenticated with HTTP Basic when there is a secret.
async fn client_post(
    platform: &Platform,
    path: &str,
    client: &Registered,
    pairs: &[(&str, &str)],
) -> (StatusCode, Value, reqwest::header::HeaderMap) {
    let mut pairs = pairs.to_vec();
    let mut request = platform
        .client
        .post(platform.url(path))
        .header(CONTENT_TYPE, "application/x-www-form-urlencoded");
    match &client.secret {
        Some(secret) => {
            let basic = STANDARD.encode(format!("{}:{secret}", client.id));
            request = request.header("authorization", format!("Basic {basic}"));
        }
        None => pairs.push(("client_id", client.id.as_str())),
    }
    let reply = request.body(form(&pairs)).send().await.unwrap();
    let status = reply.status();
    let headers = reply.headers().clone();
    let text = reply.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        headers,
    )
}

async fn redeem(
    platform: &Platform,
    client: &Registered,
    code: &str,
    redirect: &str,
    verifier: &str,
) -> (StatusCode, Value) {
    let (status, body, headers) = client_post(
        platform,
        "/oauth/token",
        client,
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect),
            ("code_verifier", verifier),
        ],
    )
    .await;
    assert_eq!(headers["cache-control"], "no-store");
    (status, body)
}

/// The refresh grant.
async fn refresh(platform: &Platform, client: &Registered, token: &str) -> (StatusCode, Value) {
    let (status, body, _) = client_post(
        platform,
        "/oauth/token",
        client,
        &[("grant_type", "refresh_token"), ("refresh_token", token)],
    )
    .await;
    (status, body)
}

/// Asserts an RFC 6749 error answer.
fn assert_error(answer: (StatusCode, Value), status: StatusCode, error: &str) {
    assert_eq!(
        (answer.0, answer.1["error"].as_str()),
        (status, Some(error)),
        "{}",
        answer.1
    );
}

async fn introspect(platform: &Platform, client: &Registered, token: &str) -> Value {
    let (status, body, _) =
        client_post(platform, "/oauth/introspect", client, &[("token", token)]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn userinfo(platform: &Platform, token: &str) -> (StatusCode, Value) {
    let reply = platform
        .client
        .get(platform.url("/oauth/userinfo"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = reply.status();
    (status, reply.json().await.unwrap_or(Value::Null))
}

/// Checks an ID token against the published JWKS as a relying party would.
async fn verify_id_token(platform: &Platform, token: &str, audience: &str) -> Value {
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(
        header.alg,
        jsonwebtoken::Algorithm::RS256,
        "ID tokens are RS256"
    );
    let (_, jwks) = platform.get_json("/.well-known/jwks.json").await;
    let set: jsonwebtoken::jwk::JwkSet = serde_json::from_value(jwks).unwrap();
    let jwk = set.find(header.kid.as_deref().unwrap()).unwrap();
    let key = jsonwebtoken::DecodingKey::from_jwk(jwk).unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_audience(&[audience]);
    validation.set_issuer(&[platform.url("").trim_end_matches('/')]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .unwrap()
        .claims
}

#[tokio::test]
async fn code_flow_with_pkce_issues_tokens_an_id_token_and_userinfo() {
    for database in Database::all().await {
        let setup = Setup::new(database);
        let platform = setup.start();
        let issuer = platform.url("").trim_end_matches('/').to_owned();

        let (status, metadata) = platform
            .get_json("/.well-known/oauth-authorization-server")
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(metadata["issuer"], issuer);
        assert_eq!(
            metadata["code_challenge_methods_supported"],
            json!(["S256"])
        );
        assert_eq!(metadata["token_endpoint"], format!("{issuer}/oauth/token"));
        let (_, discovery) = platform.get_json("/.well-known/openid-configuration").await;
        assert_eq!(
            discovery["userinfo_endpoint"],
            format!("{issuer}/oauth/userinfo")
        );
        assert!(
            discovery["id_token_signing_alg_values_supported"]
                .as_array()
                .unwrap()
                .contains(&json!("RS256"))
        );

        let client = register_client(&platform, "client_secret_basic").await;
        assert!(client.secret.is_some());
        let pkce = pkce();

        // The sign-in page, escaped and not frameable.
        let query = authorize_query(&client.id, REDIRECT, &pkce, &[]);
        let page = browser()
            .get(platform.url(&format!("/oauth/authorize?{query}")))
            .send()
            .await
            .unwrap();
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()["x-frame-options"], "DENY");
        let html = page.text().await.unwrap();
        assert!(html.contains("<form method=\"post\""), "{html}");
        assert!(html.contains("Shop &lt;front&gt;") && !html.contains("Shop <front>"));

        // A wrong password shows the form again; nothing goes to the client.
        let (status, location) = sign_in(&platform, &query, ADMIN_EMAIL, "wrong password").await;
        assert_eq!((status, location), (StatusCode::UNAUTHORIZED, None));

        let (status, location) = sign_in(&platform, &query, ADMIN_EMAIL, ADMIN_PASSWORD).await;
        assert_eq!(status, StatusCode::SEE_OTHER);
        let params = query_of(location.as_deref().unwrap());
        assert_eq!(params["state"], "state-1234567");
        assert_eq!(params["iss"], issuer, "RFC 9207 iss");
        let (status, tokens) = redeem(
            &platform,
            &client,
            &params["code"],
            REDIRECT,
            &pkce.verifier,
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{tokens}");
        assert_eq!(tokens["token_type"], "Bearer");
        assert_eq!(tokens["scope"], "openid email profile");
        let access = tokens["access_token"].as_str().unwrap();
        let refresh_token = tokens["refresh_token"].as_str().unwrap();

        let id_claims =
            verify_id_token(&platform, tokens["id_token"].as_str().unwrap(), &client.id).await;
        assert_eq!(id_claims["nonce"], "nonce-42");
        assert_eq!(id_claims["email"], ADMIN_EMAIL);
        assert_eq!(id_claims["email_verified"], true, "operator-made account");
        assert!(id_claims["auth_time"].is_i64() && id_claims["at_hash"].is_string());

        // The access token works at the gateway like any platform token.
        let me = platform
            .client
            .get(platform.url("/api/v1/users/me"))
            .bearer_auth(access)
            .send()
            .await
            .unwrap();
        assert_eq!(me.status(), StatusCode::OK);
        let (status, info) = userinfo(&platform, access).await;
        assert_eq!(status, StatusCode::OK, "{info}");
        assert_eq!(info["sub"], id_claims["sub"]);
        assert_eq!(info["email"], ADMIN_EMAIL);
        assert_eq!(info["email_verified"], true);
        assert_eq!(info["name"], "Administrator");

        let active = introspect(&platform, &client, access).await;
        assert_eq!(active["active"], true);
        assert_eq!(active["client_id"], client.id.as_str());
        assert_eq!(active["scope"], "openid email profile");
        let active = introspect(&platform, &client, refresh_token).await;
        assert_eq!(active["active"], true);
        assert_eq!(active["client_id"], client.id.as_str());
        assert_eq!(
            introspect(&platform, &client, "not-a-token").await,
            json!({"active": false})
        );

        // Refresh rotates; the spent token used again revokes the session.
        let (status, rotated) = refresh(&platform, &client, refresh_token).await;
        assert_eq!(status, StatusCode::OK, "{rotated}");
        assert_ne!(rotated["refresh_token"].as_str().unwrap(), refresh_token);
        assert!(rotated["id_token"].is_string());
        let reused = refresh(&platform, &client, refresh_token).await;
        assert_error(reused, StatusCode::BAD_REQUEST, "invalid_grant");
        let next = rotated["refresh_token"].as_str().unwrap();
        assert_eq!(introspect(&platform, &client, next).await["active"], false);
        let newest_access = rotated["access_token"].as_str().unwrap();
        assert_eq!(
            introspect(&platform, &client, newest_access).await["active"],
            false,
            "the whole session is revoked"
        );

        // Revocation (RFC 7009) of a fresh grant's access token.
        let pkce = crate::oauth::pkce();
        let code = code_for(&platform, &client.id, REDIRECT, &pkce).await;
        let (_, tokens) = redeem(&platform, &client, &code, REDIRECT, &pkce.verifier).await;
        let access = tokens["access_token"].as_str().unwrap();
        let (status, _, _) =
            client_post(&platform, "/oauth/revoke", &client, &[("token", access)]).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            introspect(&platform, &client, access).await["active"],
            false
        );
        assert_eq!(
            userinfo(&platform, access).await.0,
            StatusCode::UNAUTHORIZED
        );
        let (status, _, _) =
            client_post(&platform, "/oauth/revoke", &client, &[("token", "unknown")]).await;
        assert_eq!(status, StatusCode::OK, "unknown tokens are not an error");
    }
}

#[tokio::test]
async fn client_registration_is_for_admins_and_checks_redirect_uris() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let body = json!({"client_name": "x", "redirect_uris": ["http://evil.example/cb"]});
    let reply = platform
        .as_admin(
            platform
                .client
                .post(platform.url("/api/v1/admin/oauth-clients"))
                .json(&body),
        )
        .await
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::BAD_REQUEST);
    let problem: Value = reply.json().await.unwrap();
    assert_eq!(
        problem["errors"][0]["field"], "/redirect_uris/0",
        "{problem}"
    );

    let (status, _) = platform
        .post_json(
            "/api/v1/auth/register",
            &json!({"email": "eve@example.com", "password": "eve password", "name": "Eve"}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (_, tokens) = platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": "eve@example.com", "password": "eve password"}),
        )
        .await;
    let reply = platform
        .client
        .post(platform.url("/api/v1/admin/oauth-clients"))
        .bearer_auth(tokens["access_token"].as_str().unwrap())
        .json(&json!({"client_name": "x", "redirect_uris": [REDIRECT]}))
        .send()
        .await
        .unwrap();
    assert_eq!(reply.status(), StatusCode::FORBIDDEN);
}

#[tokio::test]
async fn authorization_requests_that_cannot_be_trusted_are_refused() {
    let setup = Setup::new(Database::Sqlite).config(&format!(
        "[[auth.clients]]\nclient_id = \"spa\"\nclient_name = \"Web shop\"\n\
             redirect_uris = [\"{REDIRECT}\"]\ntoken_endpoint_auth_method = \"none\"\n"
    ));
    let platform = setup.start();
    let client = "spa";
    let pkce = pkce();
    let get = |query: String| {
        let url = platform.url(&format!("/oauth/authorize?{query}"));
        async move { browser().get(url).send().await.unwrap() }
    };

    // Never redirected: unknown client, unregistered or missing redirect URI.
    for query in [
        authorize_query("nobody", REDIRECT, &pkce, &[]),
        authorize_query(client, "http://127.0.0.1:9/elsewhere", &pkce, &[]),
        authorize_query(client, REDIRECT, &pkce, &[("redirect_uri", "")]),
        authorize_query(client, &format!("{REDIRECT}/"), &pkce, &[]),
    ] {
        let reply = get(query.clone()).await;
        assert_eq!(reply.status(), StatusCode::BAD_REQUEST, "{query}");
        assert!(reply.headers().get(LOCATION).is_none(), "{query}");
    }

    // Sent back to the (registered) client with an RFC 6749 error and the state.
    for (extra, error) in [
        (vec![("code_challenge_method", "plain")], "invalid_request"),
        (vec![("code_challenge_method", "")], "invalid_request"),
        (vec![("code_challenge", "")], "invalid_request"),
        (
            vec![("response_type", "token")],
            "unsupported_response_type",
        ),
        (vec![("prompt", "none")], "login_required"),
    ] {
        let reply = get(authorize_query(client, REDIRECT, &pkce, &extra)).await;
        assert_eq!(reply.status(), StatusCode::FOUND, "{extra:?}");
        let location = reply.headers()[LOCATION].to_str().unwrap();
        assert!(location.starts_with(REDIRECT), "{location}");
        let params = query_of(location);
        assert_eq!(params["error"], error, "{extra:?}");
        assert_eq!(params["state"], "state-1234567");
        assert!(!params.contains_key("code"));
    }
    // A missing (or too short) state is refused too, and no state is made up.
    for state in ["", "short"] {
        let reply = get(authorize_query(
            client,
            REDIRECT,
            &pkce,
            &[("state", state)],
        ))
        .await;
        assert_eq!(reply.status(), StatusCode::FOUND);
        let params = query_of(reply.headers()[LOCATION].to_str().unwrap());
        assert_eq!(params["error"], "invalid_request");
        assert_eq!(
            params.get("state").map(String::as_str),
            (!state.is_empty()).then_some(state)
        );
    }
    // A POST carrying a bad request signs nobody in.
    let query = authorize_query(
        client,
        REDIRECT,
        &pkce,
        &[("code_challenge_method", "plain")],
    );
    let (status, location) = sign_in(&platform, &query, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    assert_eq!(status, StatusCode::SEE_OTHER);
    assert!(!query_of(&location.unwrap()).contains_key("code"));
}

#[tokio::test]
async fn stolen_or_replayed_codes_buy_nothing() {
    let setup = Setup::new(Database::Sqlite);
    let platform = setup.start();
    let client = register_client(&platform, "client_secret_basic").await;
    let other = register_client(&platform, "client_secret_post").await;
    let public = register_client(&platform, "none").await;
    assert!(public.secret.is_none());

    // A wrong verifier fails, and burns the code.
    let pkce = pkce();
    let code = code_for(&platform, &client.id, REDIRECT, &pkce).await;
    let wrong = crate::oauth::pkce();
    let (status, body) = redeem(&platform, &client, &code, REDIRECT, &wrong.verifier).await;
    assert_error((status, body), StatusCode::BAD_REQUEST, "invalid_grant");
    let (status, _) = redeem(&platform, &client, &code, REDIRECT, &pkce.verifier).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // A missing verifier is an invalid request.
    let code = code_for(&platform, &client.id, REDIRECT, &pkce).await;
    let (status, body, _) = client_post(
        &platform,
        "/oauth/token",
        &client,
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
        ],
    )
    .await;
    assert_error((status, body), StatusCode::BAD_REQUEST, "invalid_request");

    // The redirect URI at the token endpoint must be the authorization request's.
    let code = code_for(&platform, &client.id, REDIRECT, &pkce).await;
    let (status, body) = redeem(&platform, &client, &code, OTHER_REDIRECT, &pkce.verifier).await;
    assert_error((status, body), StatusCode::BAD_REQUEST, "invalid_grant");

    // Another client cannot redeem it.
    let code = code_for(&platform, &client.id, REDIRECT, &pkce).await;
    let secret = other.secret.clone().unwrap();
    let (status, body, _) = client_post(
        &platform,
        "/oauth/token",
        &Registered {
            id: other.id.clone(),
            secret: None,
        },
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("redirect_uri", REDIRECT),
            ("code_verifier", &pkce.verifier),
            ("client_secret", &secret),
        ],
    )
    .await;
    assert_error((status, body), StatusCode::BAD_REQUEST, "invalid_grant");

    // A wrong secret is invalid_client with a Basic challenge.
    let impostor = Registered {
        id: client.id.clone(),
        secret: Some("guess".into()),
    };
    let (status, body, headers) = client_post(
        &platform,
        "/oauth/token",
        &impostor,
        &[("grant_type", "authorization_code"), ("code", &code)],
    )
    .await;
    assert_error((status, body), StatusCode::UNAUTHORIZED, "invalid_client");
    assert!(
        headers[WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );

    // Replay: the second redemption fails and revokes what the first one issued.
    let code = code_for(&platform, &client.id, REDIRECT, &pkce).await;
    let (status, first) = redeem(&platform, &client, &code, REDIRECT, &pkce.verifier).await;
    assert_eq!(status, StatusCode::OK);
    let access = first["access_token"].as_str().unwrap();
    assert_eq!(userinfo(&platform, access).await.0, StatusCode::OK);
    let (status, replay) = redeem(&platform, &client, &code, REDIRECT, &pkce.verifier).await;
    assert_error((status, replay), StatusCode::BAD_REQUEST, "invalid_grant");
    assert_eq!(
        introspect(&platform, &client, access).await["active"],
        false
    );
    assert_eq!(
        userinfo(&platform, access).await.0,
        StatusCode::UNAUTHORIZED
    );
    let answer = refresh(&platform, &client, first["refresh_token"].as_str().unwrap()).await;
    assert_error(answer, StatusCode::BAD_REQUEST, "invalid_grant");

    // A public client redeems with PKCE alone, but may not introspect.
    let code = code_for(&platform, &public.id, REDIRECT, &pkce).await;
    let (status, tokens) = redeem(&platform, &public, &code, REDIRECT, &pkce.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let (status, _, _) = client_post(
        &platform,
        "/oauth/introspect",
        &public,
        &[("token", tokens["access_token"].as_str().unwrap())],
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // A platform sign-in's refresh token is not an OAuth client's.
    let (_, login) = platform
        .post_json(
            "/api/v1/auth/login",
            &json!({"email": ADMIN_EMAIL, "password": ADMIN_PASSWORD}),
        )
        .await;
    let answer = refresh(&platform, &public, login["refresh_token"].as_str().unwrap()).await;
    assert_error(answer, StatusCode::BAD_REQUEST, "invalid_grant");
}

/// Tokens a client receives open only what they should: a partner's carry no admin role, an ID
/// token is no access token, a refresh cannot widen the scope (and a refused one spends
/// nothing), userinfo tells only what the scope grants.
#[tokio::test]
async fn client_tokens_are_limited_to_their_client_and_scope() {
    let setup = Setup::new(Database::Sqlite).config(&format!(
        "[[auth.clients]]\nclient_id = \"console\"\nredirect_uris = [\"{REDIRECT}\"]\n\
         token_endpoint_auth_method = \"none\"\nfirst_party = true\n"
    ));
    let platform = setup.start();
    let partner = register_client(&platform, "client_secret_basic").await;
    let console = Registered {
        id: "console".into(),
        secret: None,
    };
    let admin_users = |token: String| {
        let request = platform
            .client
            .get(platform.url("/api/v1/admin/users"))
            .header("authorization", format!("bearer {token}"));
        async move { request.send().await.unwrap().status() }
    };

    let pkce = pkce();
    let scope = [("scope", "openid email offline_access unknown-scope")];
    let query = authorize_query(&partner.id, REDIRECT, &pkce, &scope);
    let (_, location) = sign_in(&platform, &query, ADMIN_EMAIL, ADMIN_PASSWORD).await;
    let code = query_of(&location.unwrap())["code"].clone();
    let (status, tokens) = redeem(&platform, &partner, &code, REDIRECT, &pkce.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    assert_eq!(
        tokens["scope"], "openid email offline_access",
        "unknown scopes are ignored"
    );
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(
        introspect(&platform, &partner, &access).await["roles"],
        json!([])
    );
    assert_eq!(
        admin_users(access.clone()).await,
        StatusCode::FORBIDDEN,
        "a partner never holds the admin role"
    );
    let id_token = tokens["id_token"].as_str().unwrap().to_owned();
    let (status, _) = crate::users::me(&platform, &id_token).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "an ID token is not an access token"
    );

    // Userinfo by POST; the scope decides the claims.
    let info: Value = platform
        .client
        .post(platform.url("/oauth/userinfo"))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["email"], ADMIN_EMAIL);
    assert!(info.get("name").is_none(), "no profile scope: {info}");

    // A wider scope is refused without spending the refresh token; a narrower one is granted.
    let refresh_token = tokens["refresh_token"].as_str().unwrap();
    let (status, widened, _) = client_post(
        &platform,
        "/oauth/token",
        &partner,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("scope", "openid profile"),
        ],
    )
    .await;
    assert_error((status, widened), StatusCode::BAD_REQUEST, "invalid_scope");
    let (status, narrowed, _) = client_post(
        &platform,
        "/oauth/token",
        &partner,
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("scope", "openid"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{narrowed}");
    assert_eq!(narrowed["scope"], "openid");
    let (_, info) = userinfo(&platform, narrowed["access_token"].as_str().unwrap()).await;
    assert!(info.get("email").is_none(), "{info}");

    // The platform's own (first-party) client acts with the account's roles.
    let code = code_for(&platform, &console.id, REDIRECT, &pkce).await;
    let (status, tokens) = redeem(&platform, &console, &code, REDIRECT, &pkce.verifier).await;
    assert_eq!(status, StatusCode::OK, "{tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    assert_eq!(admin_users(access).await, StatusCode::OK);

    // A native app's loopback redirect matches on any port (RFC 8252 §7.3).
    let ephemeral = "http://127.0.0.1:53124/callback";
    let code = code_for(&platform, &console.id, ephemeral, &pkce).await;
    let (status, _) = redeem(&platform, &console, &code, ephemeral, &pkce.verifier).await;
    assert_eq!(status, StatusCode::OK);
}
