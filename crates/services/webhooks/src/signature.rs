//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256 of
//! "<webhook-id>.<webhook-timestamp>.<body>">`, keyed with the base64-decoded bytes after
//! the secret's `whsec_` prefix. During a secret rotation a message carries one signature per
//! valid secret, separated by spaces.

use aws_lc_rs::hmac;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// The prefix of endpoint secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// Random bytes in a new secret (Svix uses 24).
const SECRET_BYTES: usize = 24;

/// A new endpoint secret: `whsec_` + base64 of random bytes.
pub fn generate_secret() -> String {
    let mut bytes = [0u8; SECRET_BYTES];
    // The system RNG failing is not recoverable for a secret generator.
    aws_lc_rs::rand::fill(&mut bytes).unwrap_or_else(|_| {
        panic!("the system random number generator failed");
    });
    format!("{SECRET_PREFIX}{}", STANDARD.encode(bytes))
}

/// The signing key of a `whsec_` secret; `None` when it is not one.
pub fn key_bytes(secret: &str) -> Option<Vec<u8>> {
    STANDARD
        .decode(secret.strip_prefix(SECRET_PREFIX)?)
        .ok()
        .filter(|bytes| !bytes.is_empty())
}

/// One `v1,<signature>` of `body` sent as message `id` at `timestamp` (Unix seconds).
pub fn sign(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let key = hmac::Key::new(hmac::HMAC_SHA256, key);
    let mut context = hmac::Context::with_key(&key);
    context.update(id.as_bytes());
    context.update(b".");
    context.update(timestamp.to_string().as_bytes());
    context.update(b".");
    context.update(body);
    format!("v1,{}", STANDARD.encode(context.sign().as_ref()))
}

/// The `webhook-signature` header value: one signature per key, space-separated.
pub fn header(keys: &[Vec<u8>], id: &str, timestamp: i64, body: &[u8]) -> String {
    keys.iter()
        .map(|key| sign(key, id, timestamp, body))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_round_trip_to_their_key() {
        let secret = generate_secret();
        assert!(secret.starts_with("whsec_"));
        assert_eq!(key_bytes(&secret).unwrap().len(), SECRET_BYTES);
        assert_ne!(generate_secret(), secret);
        assert!(key_bytes("not-a-secret").is_none());
    }

    #[test]
    fn the_reference_example_signs_the_same() {
        // The example of the Standard Webhooks specification.
        let key = key_bytes("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let body = br#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
