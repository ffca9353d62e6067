//! Field-level encryption (SPEC §7): AES-256-GCM with random 96-bit nonces and associated data
//! binding each value to its table, column and row, under a key ring whose first key is active.
//!
//! Stored form: `v1:<kid>:<base64(nonce ‖ ciphertext ‖ tag)>`. A value copied to another row or
//! column, or altered in any way, fails to decrypt. Old keys stay in the ring to decrypt what
//! they encrypted until `logicore keys rewrap` has moved everything to the active key.
//!
//! The ring comes from `LOGICORE_ENCRYPTION_KEYS` (`kid:base64key,...`) or, failing that, from
//! the key file (`crypto.key_file`, default `<data-dir>/encryption.keys`: one `kid:base64key`
//! per line, first active, `#` comments), which `logicore up` creates (mode 0600) on first
//! start when there is no key anywhere.

pub mod masking;

use std::fmt;
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

/// The environment variable holding the key ring.
pub const KEYS_VAR: &str = "LOGICORE_ENCRYPTION_KEYS";
/// Bytes of an AES-256 key.
const KEY_LEN: usize = 32;
/// The version prefix of the stored form.
const VERSION: &str = "v1";

/// What is wrong with a key ring, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(String);

/// Why a stored value could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecryptError {
    /// Not `v1:<kid>:<base64>`.
    #[error("not an encrypted value (expected v1:<kid>:<base64>)")]
    Malformed,
    /// Encrypted under a key the ring does not have.
    #[error(
        "encrypted with key `{0}`, which is not in the key ring; add it to {KEYS_VAR} or the key file"
    )]
    UnknownKey(String),
    /// Tampered with, or moved to another table, column or row.
    #[error("the value does not authenticate (tampered with, or moved from another row or column)")]
    Forged,
}

/// Where an encrypted value lives: the associated data it is bound to.
#[derive(Debug, Clone, Copy)]
pub struct FieldContext<'a> {
    /// Table name.
    pub table: &'a str,
    /// Column name.
    pub column: &'a str,
    /// The row's id.
    pub row: &'a str,
}

impl FieldContext<'_> {
    fn associated_data(&self) -> Vec<u8> {
        // Lengths keep "a|b" + "c" apart from "a" + "b|c".
        let mut data = Vec::with_capacity(64);
        for part in [VERSION, self.table, self.column, self.row] {
            data.extend_from_slice(&(part.len() as u32).to_be_bytes());
            data.extend_from_slice(part.as_bytes());
        }
        data
    }
}

struct RingKey {
    kid: String,
    key: LessSafeKey,
}

/// The keys of the process, the first one active.
pub struct KeyRing {
    keys: Vec<RingKey>,
}

impl fmt::Debug for KeyRing {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|key| key.kid.as_str()).collect();
        formatter
            .debug_struct("KeyRing")
            .field("kids", &kids)
            .finish_non_exhaustive()
    }
}

/// Where a ring was loaded from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// `LOGICORE_ENCRYPTION_KEYS`.
    Environment,
    /// The key file.
    File(PathBuf),
    /// The key file, created just now.
    Generated(PathBuf),
}

fn valid_kid(kid: &str) -> bool {
    (1..=32).contains(&kid.len())
        && kid
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_'))
}

impl KeyRing {
    /// Parses `kid:base64key` entries separated by commas or newlines (`#` starts a comment).
    /// `origin` names where they came from, for messages.
    pub fn parse(text: &str, origin: &str) -> Result<KeyRing, KeyError> {
        let mut keys: Vec<RingKey> = Vec::new();
        let entries = text
            .lines()
            .map(|line| line.split('#').next().unwrap_or(""))
            .flat_map(|line| line.split(','))
            .map(str::trim)
            .filter(|entry| !entry.is_empty());
        for (index, entry) in entries.enumerate() {
            let position = index + 1;
            let Some((kid, encoded)) = entry.split_once(':') else {
                return Err(KeyError(format!(
                    "{origin}: key {position} is not `kid:base64key`"
                )));
            };
            if !valid_kid(kid) {
                return Err(KeyError(format!(
                    "{origin}: key id `{kid}` must be 1-32 of [A-Za-z0-9_-]"
                )));
            }
            let bytes = BASE64
                .decode(encoded.trim())
                .map_err(|_| KeyError(format!("{origin}: key `{kid}` is not valid base64")))?;
            if bytes.len() != KEY_LEN {
                return Err(KeyError(format!(
                    "{origin}: key `{kid}` has {} bytes; AES-256 needs {KEY_LEN} (generate one with `logicore keys generate`)",
                    bytes.len()
                )));
            }
            if keys.iter().any(|known| known.kid == kid) {
                return Err(KeyError(format!("{origin}: key id `{kid}` appears twice")));
            }
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| KeyError(format!("{origin}: key `{kid}` is unusable")))?;
            keys.push(RingKey {
                kid: kid.to_owned(),
                key: LessSafeKey::new(unbound),
            });
        }
        if keys.is_empty() {
            return Err(KeyError(format!("{origin}: no keys")));
        }
        Ok(KeyRing { keys })
    }

    /// Loads the ring: `env_value` (the content of `LOGICORE_ENCRYPTION_KEYS`) if set, else the
    /// key file. With `generate` (only `logicore up`), a missing file is created with a fresh
    /// key; otherwise a missing ring is an error saying what to set.
    pub fn load(
        env_value: Option<&str>,
        key_file: &Path,
        generate: bool,
    ) -> Result<(KeyRing, KeySource), KeyError> {
        if let Some(value) = env_value.filter(|value| !value.trim().is_empty()) {
            return Ok((KeyRing::parse(value, KEYS_VAR)?, KeySource::Environment));
        }
        match std::fs::read_to_string(key_file) {
            Ok(text) => {
                let origin = key_file.display().to_string();
                Ok((
                    KeyRing::parse(&text, &origin)?,
                    KeySource::File(key_file.to_owned()),
                ))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound && generate => {
                let entry = KeyRing::generate_entry();
                write_key_file(key_file, &format!("{entry}\n"))?;
                let origin = key_file.display().to_string();
                Ok((
                    KeyRing::parse(&entry, &origin)?,
                    KeySource::Generated(key_file.to_owned()),
                ))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err(KeyError(format!(
                "no field-encryption keys: set {KEYS_VAR} (kid:base64key,...) or create {} \
                 (`logicore keys generate` prints a key; `logicore up` creates the file on first start)",
                key_file.display()
            ))),
            Err(err) => Err(KeyError(format!(
                "cannot read the key file {}: {err}",
                key_file.display()
            ))),
        }
    }

    /// A new `kid:base64key` entry: a random 256-bit key under a dated id.
    pub fn generate_entry() -> String {
        let mut key = [0u8; KEY_LEN];
        fill_random(&mut key);
        let mut tag = [0u8; 3];
        fill_random(&mut tag);
        let kid = format!(
            "k{}-{}",
            chrono::Utc::now().format("%Y%m%d"),
            tag.iter()
                .map(|byte| format!("{byte:02x}"))
                .collect::<String>()
        );
        format!("{kid}:{}", BASE64.encode(key))
    }

    /// The id of the active key.
    pub fn active_kid(&self) -> &str {
        &self.keys[0].kid
    }

    /// Every key id, the active one first.
    pub fn kids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|key| key.kid.as_str())
    }

    /// Encrypts `plaintext` for the field `context` under the active key.
    pub fn encrypt(&self, plaintext: &[u8], context: FieldContext<'_>) -> String {
        let active = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        fill_random(&mut nonce);
        let mut sealed = plaintext.to_vec();
        let aad = context.associated_data();
        // Sealing only fails for inputs over AES-GCM's 64 GiB limit.
        if active
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(aad.as_slice()),
                &mut sealed,
            )
            .is_err()
        {
            panic!(
                "a field value too large to encrypt ({} bytes)",
                plaintext.len()
            );
        }
        let mut out = Vec::with_capacity(NONCE_LEN + sealed.len());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        format!("{VERSION}:{}:{}", active.kid, BASE64.encode(out))
    }

    /// Decrypts a stored value of the field `context`.
    pub fn decrypt(
        &self,
        stored: &str,
        context: FieldContext<'_>,
    ) -> Result<Vec<u8>, DecryptError> {
        let (kid, encoded) = parse_stored(stored)?;
        let key = self
            .keys
            .iter()
            .find(|key| key.kid == kid)
            .ok_or_else(|| DecryptError::UnknownKey(kid.to_owned()))?;
        let bytes = BASE64
            .decode(encoded)
            .map_err(|_| DecryptError::Malformed)?;
        if bytes.len() < NONCE_LEN + AES_256_GCM.tag_len() {
            return Err(DecryptError::Malformed);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| DecryptError::Malformed)?;
        let mut in_out = sealed.to_vec();
        let aad = context.associated_data();
        let plaintext = key
            .key
            .open_in_place(nonce, Aad::from(aad.as_slice()), &mut in_out)
            .map_err(|_| DecryptError::Forged)?;
        Ok(plaintext.to_vec())
    }

    /// Returns true when `stored` is encrypted under a key other than the active one.
    pub fn needs_rewrap(&self, stored: &str) -> bool {
        parse_stored(stored).is_ok_and(|(kid, _)| kid != self.active_kid())
    }
}

fn parse_stored(stored: &str) -> Result<(&str, &str), DecryptError> {
    let mut parts = stored.splitn(3, ':');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(VERSION), Some(kid), Some(encoded)) if !kid.is_empty() => Ok((kid, encoded)),
        _ => Err(DecryptError::Malformed),
    }
}

fn fill_random(bytes: &mut [u8]) {
    // The system RNG failing is not something the process can work around.
    if aws_lc_rs::rand::fill(bytes).is_err() {
        panic!("the system random number generator failed");
    }
}

/// The SHA-256 of `bytes` as lower-case hex (fingerprints and checksums, not secrets).
pub fn sha256_hex(bytes: &[u8]) -> String {
    aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Replaces the key file's content atomically (a new file, owner-only, renamed over it).
pub fn replace_key_file(path: &Path, content: &str) -> Result<(), KeyError> {
    let staged = path.with_extension("keys.new");
    let _ = std::fs::remove_file(&staged);
    write_key_file(&staged, content)?;
    std::fs::rename(&staged, path).map_err(|err| {
        KeyError(format!(
            "cannot replace the key file {}: {err}",
            path.display()
        ))
    })
}

/// Writes a new key file readable by its owner only (created, never overwritten).
fn write_key_file(path: &Path, content: &str) -> Result<(), KeyError> {
    use std::io::Write;
    let fail = |err: std::io::Error| {
        KeyError(format!(
            "cannot create the key file {}: {err}",
            path.display()
        ))
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options.open(path).map_err(fail)?;
    file.write_all(content.as_bytes()).map_err(fail)?;
    file.sync_all().map_err(fail)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CARD: FieldContext<'static> = FieldContext {
        table: "payment_methods",
        column: "card_number",
        row: "0192f1c2-0000-7000-8000-000000000001",
    };

    fn ring(spec: &str) -> KeyRing {
        KeyRing::parse(spec, "test").unwrap()
    }

    fn key(byte: u8) -> String {
        BASE64.encode([byte; KEY_LEN])
    }

    #[test]
    fn values_round_trip_in_the_stored_form() {
        let keys = ring(&format!("k1:{}", key(1)));
        let stored = keys.encrypt(b"4111111111111111", CARD);
        assert!(stored.starts_with("v1:k1:"), "{stored}");
        assert!(!stored.contains("4111"));
        assert_eq!(keys.decrypt(&stored, CARD).unwrap(), b"4111111111111111");
        // Random nonces: the same value encrypts differently each time.
        assert_ne!(keys.encrypt(b"4111111111111111", CARD), stored);
    }

    #[test]
    fn a_value_moved_to_another_row_column_or_table_fails() {
        let keys = ring(&format!("k1:{}", key(1)));
        let stored = keys.encrypt(b"123-45-6789", CARD);
        for moved in [
            FieldContext {
                row: "another-row",
                ..CARD
            },
            FieldContext {
                column: "ssn",
                ..CARD
            },
            FieldContext {
                table: "users",
                ..CARD
            },
        ] {
            assert_eq!(keys.decrypt(&stored, moved), Err(DecryptError::Forged));
        }
    }

    #[test]
    fn tampered_values_fail() {
        let keys = ring(&format!("k1:{}", key(1)));
        let stored = keys.encrypt(b"secret", CARD);
        let (prefix, encoded) = stored.rsplit_once(':').unwrap();
        let mut bytes = BASE64.decode(encoded).unwrap();
        for index in [0, NONCE_LEN, bytes.len() - 1] {
            bytes[index] ^= 1;
            let tampered = format!("{prefix}:{}", BASE64.encode(&bytes));
            assert_eq!(
                keys.decrypt(&tampered, CARD),
                Err(DecryptError::Forged),
                "byte {index}"
            );
            bytes[index] ^= 1;
        }
        assert_eq!(
            keys.decrypt("v1:k1:AAAA", CARD),
            Err(DecryptError::Malformed)
        );
        assert_eq!(keys.decrypt("plain", CARD), Err(DecryptError::Malformed));
        // The same ciphertext claimed by another key id fails too.
        let other = ring(&format!("k2:{},k1:{}", key(2), key(1)));
        let relabelled = stored.replacen("v1:k1:", "v1:k2:", 1);
        assert_eq!(other.decrypt(&relabelled, CARD), Err(DecryptError::Forged));
    }

    #[test]
    fn rotation_keeps_old_values_readable_and_flags_them_for_rewrap() {
        let old = ring(&format!("k1:{}", key(1)));
        let stored = old.encrypt(b"value", CARD);
        let rotated = ring(&format!("k2:{},k1:{}", key(2), key(1)));
        assert_eq!(rotated.active_kid(), "k2");
        assert_eq!(rotated.decrypt(&stored, CARD).unwrap(), b"value");
        assert!(rotated.needs_rewrap(&stored));
        let rewrapped = rotated.encrypt(&rotated.decrypt(&stored, CARD).unwrap(), CARD);
        assert!(!rotated.needs_rewrap(&rewrapped));
        let without_old = ring(&format!("k2:{}", key(2)));
        assert_eq!(
            without_old.decrypt(&stored, CARD),
            Err(DecryptError::UnknownKey("k1".into()))
        );
    }

    #[test]
    fn malformed_rings_say_what_is_wrong() {
        for (spec, says) in [
            ("", "no keys"),
            ("justakey", "kid:base64key"),
            ("k1:!!!", "not valid base64"),
            ("k1:AAAA", "needs 32"),
            ("bad kid:AAAA", "must be 1-32"),
        ] {
            let err = KeyRing::parse(spec, KEYS_VAR).unwrap_err();
            assert!(err.to_string().contains(says), "{spec}: {err}");
            assert!(err.to_string().starts_with(KEYS_VAR), "{err}");
        }
        let twice = format!("k1:{},k1:{}", key(1), key(2));
        assert!(
            KeyRing::parse(&twice, "x")
                .unwrap_err()
                .to_string()
                .contains("twice")
        );
    }

    #[test]
    fn the_key_file_is_generated_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("encryption.keys");
        let missing = KeyRing::load(None, &path, false).unwrap_err();
        assert!(missing.to_string().contains(KEYS_VAR), "{missing}");

        let (generated, source) = KeyRing::load(None, &path, true).unwrap();
        assert_eq!(source, KeySource::Generated(path.clone()));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let stored = generated.encrypt(b"kept", CARD);
        let (reloaded, source) = KeyRing::load(None, &path, true).unwrap();
        assert_eq!(source, KeySource::File(path.clone()));
        assert_eq!(reloaded.decrypt(&stored, CARD).unwrap(), b"kept");

        let env = format!("e1:{}", key(9));
        let (from_env, source) = KeyRing::load(Some(&env), &path, true).unwrap();
        assert_eq!(
            (from_env.active_kid(), source),
            ("e1", KeySource::Environment)
        );
    }
}
