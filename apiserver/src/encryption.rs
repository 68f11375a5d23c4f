//! Secrets encrypted at rest: AES-256-GCM, envelope style.
//!
//! - The key-encryption key (KEK) is a file of each server, `DATA/pki/secrets-encryption.key`
//!   (0600): made by `--init`, handed to joining servers with the CA key (`Bootstrap`), and
//!   derived from the CA key when a data dir made by an older Berth has none (so every member
//!   of such a cluster derives the same one).
//! - The data-encryption keys (DEKs) live in the replicated store, wrapped by the KEK, in the
//!   Secret `berth-system/secrets-encryption-keys`: one data entry per named key (`key1`,
//!   `key2`, ...), the write key named by its `secrets-encryption.berth.dev/write-key`
//!   annotation. Every member has them (Raft), and nothing in the store, the Raft log or a
//!   snapshot is readable without a KEK from some server's disk.
//! - A Secret's `data` values are sealed by the API server BEFORE the write is proposed (the
//!   Raft log holds ciphertext, as Kubernetes encrypts before etcd): each value becomes
//!   `k8s:enc:aesgcm:v1:KEYNAME:` + base64(12-byte nonce || ciphertext || tag), with
//!   `secrets/NAMESPACE/NAME/KEY` as additional data so a value cannot be moved to another
//!   Secret or key. Reads, list, watch events and write replies are opened again, so clients
//!   see base64 `data` as always. Values without the prefix (written before encryption
//!   existed) read as they are and are sealed at their next write or at a rotation.
//! - Rotation (`berth secrets-encryption rotate`) adds a key, makes it the write key,
//!   rewrites every Secret (sealed with the new key), then drops the old keys.

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine as _;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use serde_json::Value;

/// Kubernetes' aesgcm provider prefix; the key name and `:` follow.
pub const PREFIX: &str = "k8s:enc:aesgcm:v1:";
/// The KEK file under `DATA/pki/`.
pub const KEK_FILE: &str = "secrets-encryption.key";
/// Where the wrapped data-encryption keys are stored.
pub const KEYRING_NAMESPACE: &str = "berth-system";
pub const KEYRING_NAME: &str = "secrets-encryption-keys";
/// The keyring Secret's type.
pub const KEYRING_TYPE: &str = "berth.dev/secrets-encryption-keys";
/// Annotation of the keyring naming the key new writes use.
pub const WRITE_KEY_ANNOTATION: &str = "secrets-encryption.berth.dev/write-key";

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

/// What went wrong encrypting or decrypting. Messages never hold a value or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncryptionError {
    #[error(
        "Secret {secret}: data key {key:?} is encrypted with key {key_name:?}, which is not in \
         the keyring ({KEYRING_NAMESPACE}/{KEYRING_NAME}): the key was dropped before this \
         Secret was re-encrypted; restore the key, or delete and re-create the Secret"
    )]
    UnknownKey {
        secret: String,
        key: String,
        key_name: String,
    },
    #[error(
        "Secret {secret}: data key {key:?} cannot be decrypted with key {key_name:?} (the \
         value is damaged or was not written for this Secret)"
    )]
    Decrypt {
        secret: String,
        key: String,
        key_name: String,
    },
    #[error(
        "Secret {secret}: data key {key:?} is encrypted but this cluster has no secrets \
         encryption keyring ({KEYRING_NAMESPACE}/{KEYRING_NAME})"
    )]
    NoKeyring { secret: String, key: String },
    #[error(
        "cannot unwrap data-encryption key {0:?} of {KEYRING_NAMESPACE}/{KEYRING_NAME}: this \
         server's DATA/pki/{KEK_FILE} is not the cluster's (copy it from another server, 0600)"
    )]
    WrongKek(String),
    #[error("the secrets encryption keyring {KEYRING_NAMESPACE}/{KEYRING_NAME} is invalid: {0}")]
    BadKeyring(String),
    #[error("secrets encryption key file {path}: {message}")]
    KekFile { path: String, message: String },
    #[error("secrets encryption: {0}")]
    Crypto(String),
}

fn crypto(what: &str) -> EncryptionError {
    EncryptionError::Crypto(format!("{what} failed"))
}

fn cipher(key: &[u8; 32]) -> Result<LessSafeKey, EncryptionError> {
    UnboundKey::new(&AES_256_GCM, key)
        .map(LessSafeKey::new)
        .map_err(|_| crypto("AES-256-GCM key setup"))
}

/// nonce || ciphertext || tag.
fn seal_raw(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, EncryptionError> {
    let mut nonce = [0u8; NONCE_LEN];
    SystemRandom::new()
        .fill(&mut nonce)
        .map_err(|_| crypto("random nonce"))?;
    let mut buf = plaintext.to_vec();
    cipher(key)?
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| crypto("AES-256-GCM seal"))?;
    let mut out = nonce.to_vec();
    out.extend_from_slice(&buf);
    Ok(out)
}

/// None when the bytes are not authentic under `key` and `aad`.
fn open_raw(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if sealed.len() < NONCE_LEN + AES_256_GCM.tag_len() {
        return None;
    }
    let (nonce, ct) = sealed.split_at(NONCE_LEN);
    let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
    let mut buf = ct.to_vec();
    let plain = cipher(key)
        .ok()?
        .open_in_place(nonce, Aad::from(aad), &mut buf)
        .ok()?;
    Some(plain.to_vec())
}

fn random_key() -> Result<[u8; 32], EncryptionError> {
    let mut k = [0u8; 32];
    SystemRandom::new()
        .fill(&mut k)
        .map_err(|_| crypto("random key"))?;
    Ok(k)
}

/// The key-encryption key of a server (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct Kek([u8; 32]);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

impl Kek {
    pub fn generate() -> Result<Kek, EncryptionError> {
        random_key().map(Kek)
    }

    /// The KEK of a cluster made before Berth had one: the same on every member.
    pub fn derive_from_ca_key(ca_key_pem: &str) -> Kek {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(b"berth secrets-encryption kek v1\0");
        ctx.update(ca_key_pem.as_bytes());
        let mut k = [0u8; 32];
        k.copy_from_slice(ctx.finish().as_ref());
        Kek(k)
    }

    pub fn to_base64(&self) -> String {
        B64.encode(self.0)
    }

    pub fn from_base64(s: &str) -> Result<Kek, String> {
        let b = B64.decode(s.trim()).map_err(|_| "not base64".to_string())?;
        let k: [u8; 32] = b
            .try_into()
            .map_err(|b: Vec<u8>| format!("{} bytes, expected 32", b.len()))?;
        Ok(Kek(k))
    }

    /// Write to `DIR/secrets-encryption.key` (0600).
    pub fn write(&self, dir: &Path) -> Result<(), EncryptionError> {
        let path = dir.join(KEK_FILE);
        berth_tls::write_private(&path, format!("{}\n", self.to_base64()).as_bytes()).map_err(|e| {
            EncryptionError::KekFile {
                path: path.display().to_string(),
                message: e.to_string(),
            }
        })
    }

    /// Read `DIR/secrets-encryption.key`; when absent (a data dir made by an older Berth),
    /// derive it from the CA key and write it.
    pub fn load_or_derive(dir: &Path, ca_key_pem: &str) -> Result<Kek, EncryptionError> {
        let path = dir.join(KEK_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => Kek::from_base64(&text).map_err(|m| EncryptionError::KekFile {
                path: path.display().to_string(),
                message: format!("{m}: it must hold the base64 of 32 bytes"),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let kek = Kek::derive_from_ca_key(ca_key_pem);
                kek.write(dir)?;
                tracing::info!(path = %path.display(), "derived the secrets encryption key of a cluster made before it existed");
                Ok(kek)
            }
            Err(e) => Err(EncryptionError::KekFile {
                path: path.display().to_string(),
                message: e.to_string(),
            }),
        }
    }
}

/// The data-encryption keys, unwrapped.
#[derive(Clone, PartialEq, Eq)]
pub struct Keyring {
    pub write: String,
    keys: BTreeMap<String, [u8; 32]>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("write", &self.write)
            .field("keys", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn wrap_aad(name: &str) -> Vec<u8> {
    format!("{KEYRING_NAME}/{name}").into_bytes()
}

/// Is this stored object the keyring Secret?
pub fn is_keyring(v: &Value) -> bool {
    v["kind"] == "Secret"
        && v["metadata"]["name"] == KEYRING_NAME
        && v["metadata"]["namespace"] == KEYRING_NAMESPACE
}

impl Keyring {
    /// A first keyring: `key1`.
    pub fn new() -> Result<Keyring, EncryptionError> {
        Ok(Keyring {
            write: "key1".into(),
            keys: [("key1".to_string(), random_key()?)].into(),
        })
    }

    /// The key names, oldest first (key2 before key10).
    pub fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.keys.keys().cloned().collect();
        n.sort_by_key(|k| (k.len(), k.clone()));
        n
    }

    /// Add a new key and make it the write key; returns its name.
    pub fn rotate(&mut self) -> Result<String, EncryptionError> {
        let next = self
            .keys
            .keys()
            .filter_map(|k| k.strip_prefix("key")?.parse::<u64>().ok())
            .max()
            .unwrap_or(0)
            + 1;
        let name = format!("key{next}");
        self.keys.insert(name.clone(), random_key()?);
        self.write = name.clone();
        Ok(name)
    }

    /// Keep only the write key; returns the names dropped.
    pub fn drop_old(&mut self) -> Vec<String> {
        let old: Vec<String> = self
            .names()
            .into_iter()
            .filter(|k| *k != self.write)
            .collect();
        self.keys.retain(|k, _| *k == self.write);
        old
    }

    /// Unwrap the keyring Secret (as stored) with `kek`.
    pub fn from_secret(kek: &Kek, v: &Value) -> Result<Keyring, EncryptionError> {
        let bad = |m: &str| EncryptionError::BadKeyring(m.to_string());
        let write = v["metadata"]["annotations"][WRITE_KEY_ANNOTATION]
            .as_str()
            .ok_or_else(|| bad(&format!("no {WRITE_KEY_ANNOTATION} annotation")))?
            .to_string();
        let data = v["data"].as_object().ok_or_else(|| bad("no data"))?;
        let mut keys = BTreeMap::new();
        for (name, wrapped) in data {
            let sealed = wrapped
                .as_str()
                .and_then(|s| B64.decode(s).ok())
                .ok_or_else(|| bad(&format!("key {name:?} is not base64")))?;
            let raw = open_raw(&kek.0, &wrap_aad(name), &sealed)
                .ok_or_else(|| EncryptionError::WrongKek(name.clone()))?;
            let k: [u8; 32] = raw
                .try_into()
                .map_err(|_| bad(&format!("key {name:?} is not 32 bytes")))?;
            keys.insert(name.clone(), k);
        }
        if !keys.contains_key(&write) {
            return Err(bad(&format!("the write key {write:?} is not in it")));
        }
        Ok(Keyring { write, keys })
    }

    /// The keyring Secret to store: every key wrapped by `kek`.
    pub fn to_secret(&self, kek: &Kek) -> Result<Value, EncryptionError> {
        let mut data = serde_json::Map::new();
        for (name, k) in &self.keys {
            data.insert(
                name.clone(),
                B64.encode(seal_raw(&kek.0, &wrap_aad(name), k)?).into(),
            );
        }
        Ok(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {
                "name": KEYRING_NAME,
                "namespace": KEYRING_NAMESPACE,
                "annotations": { WRITE_KEY_ANNOTATION: self.write },
            },
            "type": KEYRING_TYPE,
            "data": data,
        }))
    }

    fn value_aad(secret: &str, key: &str) -> Vec<u8> {
        format!("secrets/{secret}/{key}").into_bytes()
    }

    /// Seal one value (the base64 text a client sent) for data key `key` of `secret`
    /// (`NAMESPACE/NAME`).
    pub fn seal_value(
        &self,
        secret: &str,
        key: &str,
        plain: &str,
    ) -> Result<String, EncryptionError> {
        let k = self
            .keys
            .get(&self.write)
            .ok_or_else(|| EncryptionError::BadKeyring("no write key".into()))?;
        let sealed = seal_raw(k, &Self::value_aad(secret, key), plain.as_bytes())?;
        Ok(format!("{PREFIX}{}:{}", self.write, B64.encode(sealed)))
    }
}

/// The key name of a sealed value, None when it is not sealed.
pub fn key_name_of(value: &str) -> Option<&str> {
    value.strip_prefix(PREFIX)?.split_once(':').map(|(n, _)| n)
}

/// Open one value (as stored) of data key `key` of `secret` (`NAMESPACE/NAME`).
pub fn open_value(
    ring: Option<&Keyring>,
    secret: &str,
    key: &str,
    stored: &str,
) -> Result<String, EncryptionError> {
    let Some(rest) = stored.strip_prefix(PREFIX) else {
        return Ok(stored.to_string());
    };
    let (name, body) = rest.split_once(':').unwrap_or((rest, ""));
    let decrypt = || EncryptionError::Decrypt {
        secret: secret.to_string(),
        key: key.to_string(),
        key_name: name.to_string(),
    };
    let ring = ring.ok_or_else(|| EncryptionError::NoKeyring {
        secret: secret.to_string(),
        key: key.to_string(),
    })?;
    let k = ring
        .keys
        .get(name)
        .ok_or_else(|| EncryptionError::UnknownKey {
            secret: secret.to_string(),
            key: key.to_string(),
            key_name: name.to_string(),
        })?;
    let sealed = B64.decode(body).map_err(|_| decrypt())?;
    let plain = open_raw(k, &Keyring::value_aad(secret, key), &sealed).ok_or_else(decrypt)?;
    String::from_utf8(plain).map_err(|_| decrypt())
}

fn secret_id(v: &Value) -> String {
    format!(
        "{}/{}",
        v["metadata"]["namespace"].as_str().unwrap_or("default"),
        v["metadata"]["name"].as_str().unwrap_or("")
    )
}

/// Seal every `data` value of Secret `v` with the write key. A value whose stored version in
/// `previous` is already sealed with the write key and opens to the same text keeps that
/// ciphertext, so re-applying an unchanged Secret changes nothing.
pub fn seal_secret(
    ring: &Keyring,
    v: &mut Value,
    previous: Option<&Value>,
) -> Result<(), EncryptionError> {
    let id = secret_id(v);
    let Some(data) = v.get_mut("data").and_then(|d| d.as_object_mut()) else {
        return Ok(());
    };
    for (k, val) in data.iter_mut() {
        let Some(plain) = val.as_str() else { continue };
        if plain.starts_with(PREFIX) {
            continue;
        }
        let reuse = previous
            .and_then(|p| p["data"][k].as_str())
            .filter(|old| key_name_of(old) == Some(ring.write.as_str()))
            .filter(|old| open_value(Some(ring), &id, k, old).ok().as_deref() == Some(plain))
            .map(str::to_string);
        *val = Value::String(match reuse {
            Some(old) => old,
            None => ring.seal_value(&id, k, plain)?,
        });
    }
    Ok(())
}

/// Secret `v` with every `data` value opened (the keyring itself is returned as stored).
pub fn reveal_secret(ring: Option<&Keyring>, v: &Value) -> Result<Value, EncryptionError> {
    if is_keyring(v) {
        return Ok(v.clone());
    }
    let id = secret_id(v);
    let mut out = v.clone();
    if let Some(data) = out.get_mut("data").and_then(|d| d.as_object_mut()) {
        for (k, val) in data.iter_mut() {
            if let Some(s) = val.as_str() {
                if s.starts_with(PREFIX) {
                    *val = Value::String(open_value(ring, &id, k, s)?);
                }
            }
        }
    }
    Ok(out)
}

/// The key names the stored values of Secret `v` are sealed with (None: not sealed).
pub fn key_names_in(v: &Value) -> Vec<Option<String>> {
    v["data"]
        .as_object()
        .map(|d| {
            d.values()
                .map(|x| x.as_str().and_then(key_name_of).map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// A server's view of the keyring: its KEK and the last keyring it unwrapped (by the
/// keyring Secret's resourceVersion, so a rotation is seen at once).
pub struct SecretCodec {
    kek: Kek,
    cache: std::sync::Mutex<Option<(u64, std::sync::Arc<Keyring>)>>,
}

impl SecretCodec {
    pub fn new(kek: Kek) -> SecretCodec {
        SecretCodec {
            kek,
            cache: std::sync::Mutex::new(None),
        }
    }

    pub fn kek(&self) -> &Kek {
        &self.kek
    }

    /// The keyring as `store` holds it now (None: none yet).
    pub fn keyring(
        &self,
        store: &crate::store::Store,
    ) -> Result<Option<std::sync::Arc<Keyring>>, EncryptionError> {
        let key = crate::store::ObjectKey::new(
            berth_proto::Kind::Secret,
            KEYRING_NAMESPACE,
            KEYRING_NAME,
        );
        let Ok(stored) = store.get(&key) else {
            return Ok(None);
        };
        let rv = crate::store::resource_version_of(&stored);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((at, ring)) = cache.as_ref() {
            if *at == rv {
                return Ok(Some(ring.clone()));
            }
        }
        let ring = std::sync::Arc::new(Keyring::from_secret(&self.kek, &stored)?);
        *cache = Some((rv, ring.clone()));
        Ok(Some(ring))
    }

    /// `v` as a client sees it: a Secret's values opened, anything else as it is.
    pub fn reveal(&self, store: &crate::store::Store, v: &Value) -> Result<Value, EncryptionError> {
        if v["kind"] != "Secret" || is_keyring(v) {
            return Ok(v.clone());
        }
        let sealed = v["data"].as_object().is_some_and(|d| {
            d.values()
                .any(|x| x.as_str().is_some_and(|s| s.starts_with(PREFIX)))
        });
        if !sealed {
            return Ok(v.clone());
        }
        let ring = self.keyring(store)?;
        reveal_secret(ring.as_deref(), v)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn secret(ns: &str, name: &str, data: Value) -> Value {
        json!({"kind": "Secret", "metadata": {"name": name, "namespace": ns}, "data": data})
    }

    #[test]
    fn a_sealed_secret_round_trips_and_holds_neither_the_value_nor_its_base64() {
        let ring = Keyring::new().unwrap();
        let b64 = B64.encode("hunter2-password");
        let mut s = secret("default", "db", json!({ "password": b64 }));
        seal_secret(&ring, &mut s, None).unwrap();
        let stored = s.to_string();
        assert!(
            !stored.contains("hunter2") && !stored.contains(&b64),
            "{stored}"
        );
        assert!(s["data"]["password"]
            .as_str()
            .unwrap()
            .starts_with("k8s:enc:aesgcm:v1:key1:"));
        let back = reveal_secret(Some(&ring), &s).unwrap();
        assert_eq!(back["data"]["password"], b64);
        // Re-sealing the same plaintext against the stored version keeps the ciphertext.
        let mut again = secret("default", "db", json!({ "password": b64 }));
        seal_secret(&ring, &mut again, Some(&s)).unwrap();
        assert_eq!(again, s);
    }

    #[test]
    fn a_value_moved_to_another_secret_or_key_does_not_open() {
        let ring = Keyring::new().unwrap();
        let mut s = secret("default", "db", json!({ "a": "eA==" }));
        seal_secret(&ring, &mut s, None).unwrap();
        let moved = secret("default", "other", json!({ "a": s["data"]["a"].clone() }));
        let e = reveal_secret(Some(&ring), &moved).unwrap_err();
        assert!(matches!(e, EncryptionError::Decrypt { .. }), "{e}");
        let moved = secret("default", "db", json!({ "b": s["data"]["a"].clone() }));
        assert!(reveal_secret(Some(&ring), &moved).is_err());
    }

    #[test]
    fn a_missing_or_dropped_key_or_wrong_kek_is_a_clear_error_never_a_panic() {
        let mut ring = Keyring::new().unwrap();
        let mut s = secret("default", "db", json!({ "a": "eA==" }));
        seal_secret(&ring, &mut s, None).unwrap();
        let e = reveal_secret(None, &s).unwrap_err();
        assert!(
            e.to_string().contains("no secrets encryption keyring"),
            "{e}"
        );
        ring.rotate().unwrap();
        ring.drop_old();
        let e = reveal_secret(Some(&ring), &s).unwrap_err();
        assert!(
            e.to_string()
                .contains("key \"key1\", which is not in the keyring"),
            "{e}"
        );
        assert!(!e.to_string().contains("eA=="));
        // Garbage after the prefix.
        let bad = secret("default", "db", json!({ "a": "k8s:enc:aesgcm:v1:key2:!!" }));
        assert!(reveal_secret(Some(&ring), &bad).is_err());
        let bad = secret("default", "db", json!({ "a": "k8s:enc:aesgcm:v1:" }));
        assert!(reveal_secret(Some(&ring), &bad).is_err());
        // The keyring under another KEK.
        let kek = Kek::generate().unwrap();
        let stored = ring.to_secret(&kek).unwrap();
        assert_eq!(Keyring::from_secret(&kek, &stored).unwrap(), ring);
        let e = Keyring::from_secret(&Kek::generate().unwrap(), &stored).unwrap_err();
        assert!(matches!(e, EncryptionError::WrongKek(_)), "{e}");
        assert!(!stored.to_string().contains(&B64.encode(ring.keys["key2"])));
    }

    #[test]
    fn rotation_adds_a_write_key_and_dropping_keeps_only_it() {
        let mut ring = Keyring::new().unwrap();
        assert_eq!(ring.rotate().unwrap(), "key2");
        assert_eq!(ring.names(), vec!["key1", "key2"]);
        let mut s = secret("ns", "x", json!({ "a": "eA==" }));
        seal_secret(&ring, &mut s, None).unwrap();
        assert_eq!(key_names_in(&s), vec![Some("key2".to_string())]);
        assert_eq!(ring.drop_old(), vec!["key1"]);
        assert_eq!(ring.names(), vec!["key2"]);
        assert_eq!(reveal_secret(Some(&ring), &s).unwrap()["data"]["a"], "eA==");
    }

    #[test]
    fn the_kek_of_an_older_cluster_is_derived_the_same_everywhere_and_kept_in_a_0600_file() {
        let dir = tempfile::tempdir().unwrap();
        let a = Kek::load_or_derive(dir.path(), "CA KEY").unwrap();
        assert_eq!(a, Kek::derive_from_ca_key("CA KEY"));
        let b = Kek::load_or_derive(dir.path(), "another").unwrap();
        assert_eq!(a, b, "once written, the file is used");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join(KEK_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
