//! Token-signing keys: Ed25519 (JWT `alg` EdDSA) with a `kid`, published as a JWKS.
//!
//! Private keys are PKCS#8 documents; at rest they are encrypted with the field-encryption
//! key ring, bound to the `signing_keys.private_key` column of their `kid`, so the database
//! alone never yields a usable key.

use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use serde_json::{Value, json};

use crate::crypto::{DecryptError, FieldContext, KeyRing};

/// Table and column the encrypted private keys are bound to.
const TABLE: &str = "signing_keys";
const COLUMN: &str = "private_key";

/// One signing key.
pub struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    public: Vec<u8>,
    encoding: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

/// Why a key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    /// The stored private key did not decrypt.
    #[error("signing key `{kid}`: {source}")]
    Decrypt {
        /// The key.
        kid: String,
        /// Why.
        source: DecryptError,
    },
    /// The bytes are not an Ed25519 PKCS#8 document.
    #[error("signing key `{0}` is not an Ed25519 PKCS#8 key")]
    NotEd25519(String),
    /// Encoding the token failed.
    #[error("cannot sign: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
}

impl SigningKey {
    /// A new random key; `kid` is derived from its public key.
    pub fn generate() -> SigningKey {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let Ok(document) = Ed25519KeyPair::generate_pkcs8(&rng) else {
            panic!("the system random number generator failed");
        };
        let pkcs8 = document.as_ref().to_vec();
        let Ok(key) = SigningKey::from_pkcs8_with_kid(String::new(), pkcs8) else {
            panic!("aws-lc-rs produced an unreadable Ed25519 key");
        };
        key.with_derived_kid()
    }

    /// Names the key after its public key (a thumbprint-like id, stable for the key).
    fn with_derived_kid(self) -> SigningKey {
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &self.public);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        SigningKey { kid, ..self }
    }

    fn from_pkcs8_with_kid(kid: String, pkcs8: Vec<u8>) -> Result<SigningKey, SigningError> {
        let pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| SigningError::NotEd25519(kid.clone()))?;
        Ok(SigningKey {
            public: pair.public_key().as_ref().to_vec(),
            encoding: EncodingKey::from_ed_der(&pkcs8),
            pkcs8,
            kid,
        })
    }

    /// Restores a key stored with [`SigningKey::encrypted_private_key`].
    pub fn from_encrypted(
        kid: &str,
        stored: &str,
        ring: &KeyRing,
    ) -> Result<SigningKey, SigningError> {
        let pkcs8 = ring
            .decrypt(stored, context(kid))
            .map_err(|source| SigningError::Decrypt {
                kid: kid.to_owned(),
                source,
            })?;
        SigningKey::from_pkcs8_with_kid(kid.to_owned(), pkcs8)
    }

    /// Restores a key from an unencrypted PKCS#8 PEM (`auth.signing_key_file`).
    pub fn from_pem(pem: &str) -> Result<SigningKey, SigningError> {
        let body: String = pem
            .lines()
            .filter(|line| !line.starts_with("-----"))
            .collect();
        let der = base64::engine::general_purpose::STANDARD
            .decode(body.trim())
            .map_err(|_| SigningError::NotEd25519("pem".into()))?;
        Ok(SigningKey::from_pkcs8_with_kid(String::new(), der)?.with_derived_kid())
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The private key encrypted for storage in `signing_keys.private_key`.
    pub fn encrypted_private_key(&self, ring: &KeyRing) -> String {
        ring.encrypt(&self.pkcs8, context(&self.kid))
    }

    /// The public key as a JWK (`OKP`, `Ed25519`).
    pub fn jwk(&self) -> Value {
        json!({
            "kty": "OKP",
            "crv": "Ed25519",
            "x": URL_SAFE_NO_PAD.encode(&self.public),
            "kid": self.kid,
            "alg": "EdDSA",
            "use": "sig",
        })
    }

    /// Signs `claims` as a JWT with this key's `kid`.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, SigningError> {
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.encoding)?)
    }
}

fn context(kid: &str) -> FieldContext<'_> {
    FieldContext {
        table: TABLE,
        column: COLUMN,
        row: kid,
    }
}

/// A JWKS document of `keys`.
pub fn jwks<'a>(keys: impl IntoIterator<Item = &'a SigningKey>) -> Value {
    json!({ "keys": keys.into_iter().map(SigningKey::jwk).collect::<Vec<_>>() })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::jwk::JwkSet;
    use jsonwebtoken::{DecodingKey, Validation};

    use super::*;

    fn ring() -> KeyRing {
        let entry = KeyRing::generate_entry();
        KeyRing::parse(&entry, "test").unwrap()
    }

    #[test]
    fn tokens_verify_against_the_published_jwks() {
        let key = SigningKey::generate();
        let token = key
            .sign(&json!({"sub": "user-1", "roles": ["customer"], "exp": 4_102_444_800u64}))
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::EdDSA);
        assert_eq!(header.kid.as_deref(), Some(key.kid()));

        let set: JwkSet = serde_json::from_value(jwks([&key])).unwrap();
        let jwk = set.find(key.kid()).unwrap();
        let decoding = DecodingKey::from_jwk(jwk).unwrap();
        let claims =
            jsonwebtoken::decode::<Value>(&token, &decoding, &Validation::new(Algorithm::EdDSA))
                .unwrap()
                .claims;
        assert_eq!(claims["sub"], "user-1");

        let other = SigningKey::generate();
        let other_set: JwkSet = serde_json::from_value(jwks([&other])).unwrap();
        let wrong = DecodingKey::from_jwk(&other_set.keys[0]).unwrap();
        assert!(
            jsonwebtoken::decode::<Value>(&token, &wrong, &Validation::new(Algorithm::EdDSA))
                .is_err()
        );
    }

    #[test]
    fn private_keys_are_stored_encrypted_and_bound_to_their_kid() {
        let ring = ring();
        let key = SigningKey::generate();
        let stored = key.encrypted_private_key(&ring);
        assert!(stored.starts_with("v1:"));
        let restored = SigningKey::from_encrypted(key.kid(), &stored, &ring).unwrap();
        assert_eq!(restored.jwk(), key.jwk());
        // The same ciphertext under another key id does not decrypt.
        assert!(matches!(
            SigningKey::from_encrypted("another-kid", &stored, &ring),
            Err(SigningError::Decrypt { .. })
        ));
    }

    #[test]
    fn a_pem_key_file_is_read() {
        let key = SigningKey::generate();
        let pem = format!(
            "-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n",
            base64::engine::general_purpose::STANDARD.encode(&key.pkcs8)
        );
        let read = SigningKey::from_pem(&pem).unwrap();
        assert_eq!((read.kid(), read.jwk()), (key.kid(), key.jwk()));
        assert!(
            SigningKey::from_pem("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")
                .is_err()
        );
    }
}
