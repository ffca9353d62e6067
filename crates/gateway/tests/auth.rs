//! Token verification at the edge, against a real JWKS server.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly by unwrapping")]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use axum::Router;
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use logicore_gateway::auth::{AuthError, Authenticator, JwksOptions};
use logicore_platform::config::{IssuerConfig, JwtAlgorithm, Secret};
use serde_json::{Value, json};

const LEEWAY: Duration = Duration::from_secs(30);

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn claims(extra: Value) -> Value {
    let mut claims =
        json!({"sub": "user-1", "roles": ["customer"], "exp": now() + 600, "iat": now()});
    for (key, value) in extra.as_object().unwrap() {
        claims[key] = value.clone();
    }
    claims
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret),
    )
    .unwrap()
}

fn hs256_issuer(secret: &str) -> IssuerConfig {
    IssuerConfig {
        name: "supabase".into(),
        hs256_secret: Secret::new(secret),
        algorithms: vec![JwtAlgorithm::HS256],
        ..IssuerConfig::default()
    }
}

fn authenticator(issuers: &[IssuerConfig], options: JwksOptions) -> Authenticator {
    Authenticator::new(issuers, LEEWAY, options)
}

#[tokio::test]
async fn hs256_tokens_are_verified_with_their_claims() {
    let auth = authenticator(&[hs256_issuer("shared-secret")], JwksOptions::default());
    let token = hs256(b"shared-secret", &claims(json!({"roles": "admin ops"})));
    let principal = auth.verify(&token).await.unwrap();
    assert_eq!(principal.subject, "user-1");
    assert_eq!(principal.roles, ["admin", "ops"]);
    assert_eq!(principal.issuer, "supabase");
}

#[tokio::test]
async fn forged_expired_premature_and_unsigned_tokens_are_refused() {
    let auth = authenticator(&[hs256_issuer("shared-secret")], JwksOptions::default());
    let forged = hs256(b"guessed-secret", &claims(json!({})));
    assert!(matches!(
        auth.verify(&forged).await,
        Err(AuthError::Invalid(_))
    ));

    let expired = hs256(b"shared-secret", &claims(json!({"exp": now() - 120})));
    assert_eq!(auth.verify(&expired).await, Err(AuthError::Expired));
    let within_leeway = hs256(b"shared-secret", &claims(json!({"exp": now() - 5})));
    assert!(
        auth.verify(&within_leeway).await.is_ok(),
        "leeway allows clock skew"
    );

    let premature = hs256(b"shared-secret", &claims(json!({"nbf": now() + 600})));
    assert!(auth.verify(&premature).await.is_err());

    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims(json!({})).to_string());
    for unsigned in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
    ] {
        assert!(
            auth.verify(&unsigned).await.is_err(),
            "alg none accepted: {unsigned}"
        );
    }
    assert!(auth.verify("not-a-jwt").await.is_err());
    let no_subject = hs256(b"shared-secret", &json!({"exp": now() + 60}));
    assert!(auth.verify(&no_subject).await.is_err());
}

#[tokio::test]
async fn issuer_and_audience_are_checked_when_configured() {
    let issuer = IssuerConfig {
        issuer: "https://idp.example".into(),
        audience: "logicore".into(),
        ..hs256_issuer("shared-secret")
    };
    let auth = authenticator(&[issuer], JwksOptions::default());
    let good = hs256(
        b"shared-secret",
        &claims(json!({"iss": "https://idp.example", "aud": "logicore"})),
    );
    assert!(auth.verify(&good).await.is_ok());
    let wrong_iss = hs256(
        b"shared-secret",
        &claims(json!({"iss": "https://evil.example", "aud": "logicore"})),
    );
    assert!(auth.verify(&wrong_iss).await.is_err());
    let wrong_aud = hs256(
        b"shared-secret",
        &claims(json!({"iss": "https://idp.example", "aud": "other"})),
    );
    assert!(auth.verify(&wrong_aud).await.is_err());
}

/// An Ed25519 signing key and its public JWK.
struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    public_x: String,
}

impl SigningKey {
    fn generate(kid: &str) -> SigningKey {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
        SigningKey {
            kid: kid.to_owned(),
            pkcs8: pkcs8.as_ref().to_vec(),
            public_x: URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
        }
    }

    fn jwk(&self) -> Value {
        json!({"kty": "OKP", "crv": "Ed25519", "x": self.public_x, "kid": self.kid, "alg": "EdDSA", "use": "sig"})
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &EncodingKey::from_ed_der(&self.pkcs8)).unwrap()
    }
}

/// A JWKS endpoint whose key set the test can replace, counting fetches.
struct JwksServer {
    addr: SocketAddr,
    keys: Arc<Mutex<Value>>,
    fetches: Arc<AtomicUsize>,
}

impl JwksServer {
    async fn start(keys: Value) -> JwksServer {
        let keys = Arc::new(Mutex::new(keys));
        let fetches = Arc::new(AtomicUsize::new(0));
        let (served, counted) = (Arc::clone(&keys), Arc::clone(&fetches));
        let app = Router::new().route(
            "/jwks.json",
            get(move || {
                counted.fetch_add(1, Ordering::SeqCst);
                let body = served.lock().unwrap().clone();
                async move { axum::Json(body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        JwksServer {
            addr,
            keys,
            fetches,
        }
    }

    fn issuer(&self) -> IssuerConfig {
        IssuerConfig {
            name: "idp".into(),
            jwks_url: format!("http://{}/jwks.json", self.addr),
            ..IssuerConfig::default()
        }
    }

    fn publish(&self, keys: &[&SigningKey]) {
        let jwks: Vec<Value> = keys.iter().map(|key| key.jwk()).collect();
        *self.keys.lock().unwrap() = json!({"keys": jwks});
    }
}

fn eager_refresh() -> JwksOptions {
    JwksOptions {
        min_refresh_interval: Duration::ZERO,
        ..JwksOptions::default()
    }
}

#[tokio::test]
async fn jwks_tokens_verify_and_unknown_kids_and_public_key_hmacs_are_refused() {
    let key = SigningKey::generate("k1");
    let server = JwksServer::start(json!({"keys": []})).await;
    server.publish(&[&key]);
    let auth = authenticator(&[server.issuer()], eager_refresh());

    let principal = auth.verify(&key.sign(&claims(json!({})))).await.unwrap();
    assert_eq!(principal.issuer, "idp");

    let stranger = SigningKey::generate("k-unknown");
    assert!(
        auth.verify(&stranger.sign(&claims(json!({}))))
            .await
            .is_err(),
        "unknown kid"
    );

    // Alg confusion: HMAC "signed" with the issuer's public key, naming its kid.
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("k1".into());
    for secret in [
        key.public_x.as_bytes().to_vec(),
        URL_SAFE_NO_PAD.decode(&key.public_x).unwrap(),
    ] {
        let confused = jsonwebtoken::encode(
            &header,
            &claims(json!({})),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert!(
            auth.verify(&confused).await.is_err(),
            "HS256 with a public key accepted"
        );
    }

    // A symmetric key smuggled into the JWKS is ignored.
    *server.keys.lock().unwrap() = json!({"keys": [{"kty": "oct", "k": URL_SAFE_NO_PAD.encode(b"s"), "kid": "sym", "alg": "HS256"}]});
    let mut header = Header::new(Algorithm::HS256);
    header.kid = Some("sym".into());
    let smuggled =
        jsonwebtoken::encode(&header, &claims(json!({})), &EncodingKey::from_secret(b"s")).unwrap();
    assert!(auth.verify(&smuggled).await.is_err());
}

#[tokio::test]
async fn a_rotated_key_is_picked_up_without_a_restart() {
    let old = SigningKey::generate("2026-old");
    let server = JwksServer::start(json!({"keys": []})).await;
    server.publish(&[&old]);
    let auth = authenticator(&[server.issuer()], eager_refresh());
    assert!(auth.verify(&old.sign(&claims(json!({})))).await.is_ok());

    let new = SigningKey::generate("2026-new");
    server.publish(&[&new, &old]);
    let principal = auth
        .verify(&new.sign(&claims(json!({"sub": "user-2"}))))
        .await
        .unwrap();
    assert_eq!(principal.subject, "user-2");
}

#[tokio::test]
async fn unknown_kids_refresh_the_jwks_at_most_once_per_interval() {
    let key = SigningKey::generate("k1");
    let server = JwksServer::start(json!({"keys": []})).await;
    server.publish(&[&key]);
    let options = JwksOptions {
        min_refresh_interval: Duration::from_secs(3600),
        ..JwksOptions::default()
    };
    let auth = authenticator(&[server.issuer()], options);
    assert!(auth.verify(&key.sign(&claims(json!({})))).await.is_ok());
    assert_eq!(server.fetches.load(Ordering::SeqCst), 1);
    for index in 0..5 {
        let attacker = SigningKey::generate(&format!("random-{index}"));
        assert!(
            auth.verify(&attacker.sign(&claims(json!({}))))
                .await
                .is_err()
        );
    }
    assert_eq!(
        server.fetches.load(Ordering::SeqCst),
        1,
        "a flood of unknown kids must not hammer the IdP"
    );
}

#[tokio::test]
async fn verified_tokens_are_served_from_the_cache() {
    let key = SigningKey::generate("k1");
    let server = JwksServer::start(json!({"keys": []})).await;
    server.publish(&[&key]);
    let auth = authenticator(&[server.issuer()], eager_refresh());
    let token = key.sign(&claims(json!({})));
    assert!(auth.verify(&token).await.is_ok());
    // The key disappears from the JWKS and the fetch count stays: the cached verdict holds
    // until the token expires, without another signature check or JWKS lookup.
    server.publish(&[]);
    let fetches = server.fetches.load(Ordering::SeqCst);
    assert!(auth.verify(&token).await.is_ok());
    assert_eq!(server.fetches.load(Ordering::SeqCst), fetches);
}

/// The platform's own signing keys (what the users service publishes) verify at the edge.
#[tokio::test]
async fn tokens_of_the_platform_signing_keys_verify_through_their_jwks() {
    use logicore_platform::auth::signing::{self, SigningKey as PlatformKey};
    let key = PlatformKey::generate();
    let server = JwksServer::start(signing::jwks([&key])).await;
    let auth = authenticator(&[server.issuer()], eager_refresh());
    let token = key.sign(&claims(json!({}))).unwrap();
    let principal = auth.verify(&token).await.unwrap();
    assert_eq!(principal.subject, "user-1");
    let stranger = PlatformKey::generate().sign(&claims(json!({}))).unwrap();
    assert!(auth.verify(&stranger).await.is_err(), "unknown kid");
}
