//! Token-signing keys with a `kid`, published as a JWKS: Ed25519 (JWT `alg` EdDSA) signs
//! access tokens; RSA 2048 (RS256) signs OpenID Connect ID tokens, as OIDC requires.
//!
//! Private keys are PKCS#8 documents; at rest they are encrypted with the field-encryption
//! key ring, bound to the `signing_keys.private_key` column of their `kid`, so the database
//! alone never yields a usable key.

use aws_lc_rs::encoding::AsDer;
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

/// A key's signature algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyAlgorithm {
    /// Ed25519, JWT `EdDSA`.
    EdDsa,
    /// RSA PKCS#1 v1.5 with SHA-256, JWT `RS256`.
    Rs256,
}

impl KeyAlgorithm {
    /// The JWT `alg` name.
    pub fn name(self) -> &'static str {
        match self {
            KeyAlgorithm::EdDsa => "EdDSA",
            KeyAlgorithm::Rs256 => "RS256",
        }
    }
}

enum Signer {
    Ed25519(EncodingKey),
    Rsa(Box<aws_lc_rs::rsa::KeyPair>),
}

/// One signing key.
pub struct SigningKey {
    kid: String,
    pkcs8: Vec<u8>,
    /// The JWK's public members (`kty`, `crv`/`x` or `n`/`e`).
    public: serde_json::Map<String, Value>,
    signer: Signer,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("alg", &self.algorithm().name())
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
    /// The bytes are neither an Ed25519 nor an RSA PKCS#8 document.
    #[error("signing key `{0}` is not an Ed25519 or RSA PKCS#8 key")]
    Unreadable(String),
    /// Encoding the token failed.
    #[error("cannot sign: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// The RSA signature failed.
    #[error("cannot sign with the RSA key")]
    Rsa,
}

impl SigningKey {
    /// A new random Ed25519 key; `kid` is derived from its public key.
    pub fn generate() -> SigningKey {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let Ok(document) = Ed25519KeyPair::generate_pkcs8(&rng) else {
            panic!("the system random number generator failed");
        };
        SigningKey::from_generated(document.as_ref().to_vec())
    }

    /// A new random RSA 2048 key (RS256); takes tens of milliseconds.
    pub fn generate_rsa() -> SigningKey {
        let pkcs8 = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048)
            .and_then(|pair| pair.as_der())
            .map(|der| der.as_ref().to_vec());
        let Ok(pkcs8) = pkcs8 else {
            panic!("aws-lc-rs could not generate an RSA key");
        };
        SigningKey::from_generated(pkcs8)
    }

    fn from_generated(pkcs8: Vec<u8>) -> SigningKey {
        let Ok(key) = SigningKey::from_pkcs8_with_kid(String::new(), pkcs8) else {
            panic!("aws-lc-rs produced an unreadable key");
        };
        key.with_derived_kid()
    }

    /// Names the key after its public key (a thumbprint-like id, stable for the key).
    fn with_derived_kid(self) -> SigningKey {
        let public = serde_json::to_vec(&self.public).unwrap_or_default();
        let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, &public);
        let kid = URL_SAFE_NO_PAD.encode(&digest.as_ref()[..12]);
        SigningKey { kid, ..self }
    }

    fn from_pkcs8_with_kid(kid: String, pkcs8: Vec<u8>) -> Result<SigningKey, SigningError> {
        let mut public = serde_json::Map::new();
        let signer = if let Ok(pair) = Ed25519KeyPair::from_pkcs8(&pkcs8) {
            public.insert("kty".into(), "OKP".into());
            public.insert("crv".into(), "Ed25519".into());
            public.insert(
                "x".into(),
                URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()).into(),
            );
            Signer::Ed25519(EncodingKey::from_ed_der(&pkcs8))
        } else if let Ok(pair) = aws_lc_rs::rsa::KeyPair::from_pkcs8(&pkcs8) {
            let (modulus, exponent) = rsa_public_components(pair.public_key().as_ref())
                .ok_or_else(|| SigningError::Unreadable(kid.clone()))?;
            public.insert("kty".into(), "RSA".into());
            public.insert("n".into(), URL_SAFE_NO_PAD.encode(modulus).into());
            public.insert("e".into(), URL_SAFE_NO_PAD.encode(exponent).into());
            Signer::Rsa(Box::new(pair))
        } else {
            return Err(SigningError::Unreadable(kid));
        };
        Ok(SigningKey {
            public,
            signer,
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
            .map_err(|_| SigningError::Unreadable("pem".into()))?;
        Ok(SigningKey::from_pkcs8_with_kid(String::new(), der)?.with_derived_kid())
    }

    /// The key id (`kid`).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The key's algorithm.
    pub fn algorithm(&self) -> KeyAlgorithm {
        match self.signer {
            Signer::Ed25519(_) => KeyAlgorithm::EdDsa,
            Signer::Rsa(_) => KeyAlgorithm::Rs256,
        }
    }

    /// The private key encrypted for storage in `signing_keys.private_key`.
    pub fn encrypted_private_key(&self, ring: &KeyRing) -> String {
        ring.encrypt(&self.pkcs8, context(&self.kid))
    }

    /// The public key as a JWK (`OKP`/`Ed25519` or `RSA`), with `kid`, `alg` and `use`.
    pub fn jwk(&self) -> Value {
        let mut jwk = self.public.clone();
        jwk.insert("kid".into(), self.kid.clone().into());
        jwk.insert("alg".into(), self.algorithm().name().into());
        jwk.insert("use".into(), "sig".into());
        Value::Object(jwk)
    }

    /// Signs `claims` as a JWT with this key's `kid`.
    pub fn sign(&self, claims: &impl Serialize) -> Result<String, SigningError> {
        match &self.signer {
            Signer::Ed25519(encoding) => {
                let mut header = Header::new(Algorithm::EdDSA);
                header.kid = Some(self.kid.clone());
                Ok(jsonwebtoken::encode(&header, claims, encoding)?)
            }
            Signer::Rsa(pair) => {
                let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.kid});
                let payload =
                    serde_json::to_vec(claims).map_err(|err| SigningError::Sign(err.into()))?;
                let signing_input = format!(
                    "{}.{}",
                    URL_SAFE_NO_PAD.encode(header.to_string()),
                    URL_SAFE_NO_PAD.encode(payload)
                );
                let mut signature = vec![0u8; pair.public_modulus_len()];
                pair.sign(
                    &aws_lc_rs::signature::RSA_PKCS1_SHA256,
                    &aws_lc_rs::rand::SystemRandom::new(),
                    signing_input.as_bytes(),
                    &mut signature,
                )
                .map_err(|_| SigningError::Rsa)?;
                Ok(format!(
                    "{signing_input}.{}",
                    URL_SAFE_NO_PAD.encode(signature)
                ))
            }
        }
    }
}

/// The modulus and public exponent (big-endian, no leading zeros) of a DER `RSAPublicKey`
/// (RFC 8017: `SEQUENCE { INTEGER n, INTEGER e }`).
fn rsa_public_components(der: &[u8]) -> Option<(&[u8], &[u8])> {
    /// One DER element of `tag` at the start of `input`: (contents, rest).
    fn element(input: &[u8], tag: u8) -> Option<(&[u8], &[u8])> {
        let (&found, input) = input.split_first()?;
        if found != tag {
            return None;
        }
        let (&first, mut input) = input.split_first()?;
        let length = if first < 0x80 {
            usize::from(first)
        } else {
            let count = usize::from(first & 0x7f);
            if count == 0 || count > 4 || input.len() < count {
                return None;
            }
            let (bytes, rest) = input.split_at(count);
            input = rest;
            bytes
                .iter()
                .fold(0usize, |length, byte| (length << 8) | usize::from(*byte))
        };
        (input.len() >= length).then(|| input.split_at(length))
    }
    fn unsigned(integer: &[u8]) -> &[u8] {
        let zeros = integer.iter().take_while(|byte| **byte == 0).count();
        &integer[zeros.min(integer.len().saturating_sub(1))..]
    }
    let (sequence, _) = element(der, 0x30)?;
    let (modulus, rest) = element(sequence, 0x02)?;
    let (exponent, _) = element(rest, 0x02)?;
    Some((unsigned(modulus), unsigned(exponent)))
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
    fn rsa_tokens_verify_against_the_published_jwks() {
        let key = SigningKey::generate_rsa();
        assert_eq!(key.algorithm(), KeyAlgorithm::Rs256);
        let token = key
            .sign(&json!({"sub": "user-1", "exp": 4_102_444_800u64}))
            .unwrap();
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.alg, Algorithm::RS256);
        assert_eq!(header.kid.as_deref(), Some(key.kid()));

        let set: JwkSet = serde_json::from_value(jwks([&key])).unwrap();
        let decoding = DecodingKey::from_jwk(set.find(key.kid()).unwrap()).unwrap();
        let claims =
            jsonwebtoken::decode::<Value>(&token, &decoding, &Validation::new(Algorithm::RS256))
                .unwrap()
                .claims;
        assert_eq!(claims["sub"], "user-1");
        assert_eq!(key.jwk()["e"], "AQAB");

        // A flipped payload byte breaks the signature.
        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(br#"{"sub":"user-2","exp":4102444800}"#);
        let forged = parts.join(".");
        assert!(
            jsonwebtoken::decode::<Value>(&forged, &decoding, &Validation::new(Algorithm::RS256))
                .is_err()
        );

        // Stored and restored, it is the same key.
        let ring = ring();
        let restored =
            SigningKey::from_encrypted(key.kid(), &key.encrypted_private_key(&ring), &ring)
                .unwrap();
        assert_eq!(restored.jwk(), key.jwk());
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
