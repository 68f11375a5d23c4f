//! Image trust: ECDSA P-256 keys, cosign-format signatures over manifest digests, and the one
//! check ([`check_image`]) that both the API server (admission) and the agents (just before a
//! container starts) run, so the two cannot disagree.
//!
//! **Format (interoperable with cosign).** Keys are ECDSA P-256 with SHA-256, the key type of
//! `cosign generate-key-pair`: public keys are PEM `PUBLIC KEY` (SubjectPublicKeyInfo), private
//! keys PEM `PRIVATE KEY` (unencrypted PKCS#8, as `openssl genpkey` writes; cosign's own
//! encrypted key files are refused with a conversion hint). What is signed is cosign's
//! "simple signing" payload for the manifest digest ([`simple_signing_payload`]); the signature
//! is ASN.1 DER, base64 (what `cosign sign-blob` prints), so `cosign verify-blob --key K.pub
//! --signature SIG PAYLOAD` accepts a Berth signature. The crypto is `ring`'s (already in the
//! tree for TLS).
//!
//! **What verification reads.** Only store objects ([`TrustLookup`]): the policies, the
//! `ImageTag` a tag resolves through, the `TrustKey`s and the `ImageSignature`s. A signature
//! counts when it verifies for its exact payload under a key that is trusted *now*, and the
//! payload names the image's repository and digest.

use std::fmt;

use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{
    EcdsaKeyPair, KeyPair as _, UnparsedPublicKey, ECDSA_P256_SHA256_ASN1,
    ECDSA_P256_SHA256_ASN1_SIGNING,
};

use crate::image::{sha256_digest, tag_object_name, ImageRef};
use crate::types::{ClusterImagePolicy, ImagePolicy, ImageSignature, ImageTag, PodSpec, TrustKey};
use crate::{DynObject, Kind};

/// The name of the one `ClusterImagePolicy`.
pub const CLUSTER_POLICY_NAME: &str = "cluster";
/// The name of a namespace's `ImagePolicy`.
pub const NAMESPACE_POLICY_NAME: &str = "default";
/// cosign's simple-signing payload type.
pub const PAYLOAD_TYPE: &str = "cosign container image signature";

/// The DER prefix of a P-256 SubjectPublicKeyInfo with an uncompressed point:
/// SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING (0 unused bits) ... }.
const P256_SPKI_PREFIX: [u8; 26] = [
    0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08, 0x2a,
    0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
];
/// id-ecPublicKey, to tell "EC but another curve" from "not EC at all".
const EC_PUBLIC_KEY_OID: [u8; 9] = [0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];

/// A key that could not be read or used. The message says what was wrong and what to do; it
/// never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct KeyError(pub String);

fn key_err(m: impl Into<String>) -> KeyError {
    KeyError(m.into())
}

/// The DER inside the first PEM block of `text`, which must be labelled `want`.
fn pem_block(text: &str, want: &str, what: &str) -> Result<Vec<u8>, KeyError> {
    let Some(start) = text.find("-----BEGIN ") else {
        return Err(key_err(format!(
            "not PEM: expected a \"-----BEGIN {want}-----\" block ({what})"
        )));
    };
    let after = &text[start + "-----BEGIN ".len()..];
    let Some(label_end) = after.find("-----") else {
        return Err(key_err(
            "malformed PEM: the BEGIN line does not end with -----",
        ));
    };
    let label = &after[..label_end];
    if label != want {
        let hint = match label {
            "ENCRYPTED SIGSTORE PRIVATE KEY" | "ENCRYPTED COSIGN PRIVATE KEY" => {
                "; cosign's encrypted key files are not supported: make a key with `berth trust \
                 key generate`, or `openssl genpkey -algorithm EC -pkeyopt \
                 ec_paramgen_curve:P-256 -out KEY.pem`, and add its public key"
            }
            "EC PRIVATE KEY" => {
                "; convert it to PKCS#8 with `openssl pkcs8 -topk8 -nocrypt -in KEY -out KEY.pem`"
            }
            "ENCRYPTED PRIVATE KEY" => {
                "; decrypt it with `openssl pkcs8 -in KEY -out KEY.pem` (unencrypted PKCS#8)"
            }
            "PUBLIC KEY" => "; this is a public key, a private key (PRIVATE KEY) is needed here",
            "PRIVATE KEY" => {
                "; this is a private key: pass its public key (`openssl pkey -in KEY -pubout`)"
            }
            _ => "",
        };
        return Err(key_err(format!(
            "PEM block is {label:?}, expected {want:?} ({what}){hint}"
        )));
    }
    let body = &after[label_end + 5..];
    let end_line = format!("-----END {want}-----");
    let Some(end) = body.find(&end_line) else {
        return Err(key_err(format!("malformed PEM: no \"{end_line}\" line")));
    };
    let b64: String = body[..end]
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64.as_bytes())
        .map_err(|e| {
            key_err(format!(
                "malformed PEM: the {want} block is not base64 ({e})"
            ))
        })
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

/// An ECDSA P-256 public key.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    /// SubjectPublicKeyInfo DER (prefix + 65-byte uncompressed point).
    spki: Vec<u8>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({})", self.fingerprint())
    }
}

impl PublicKey {
    /// Parse a PEM `PUBLIC KEY` (cosign.pub, `openssl pkey -pubout`).
    pub fn from_pem(text: &str) -> Result<PublicKey, KeyError> {
        let der = pem_block(
            text,
            "PUBLIC KEY",
            "an ECDSA P-256 public key, e.g. cosign.pub or `openssl pkey -in KEY -pubout`",
        )?;
        Self::from_spki_der(&der)
    }

    pub fn from_spki_der(der: &[u8]) -> Result<PublicKey, KeyError> {
        if der.len() == 91 && der[..26] == P256_SPKI_PREFIX && der[26] == 0x04 {
            return Ok(PublicKey { spki: der.to_vec() });
        }
        let is_ec = der
            .windows(EC_PUBLIC_KEY_OID.len())
            .any(|w| w == EC_PUBLIC_KEY_OID);
        Err(key_err(if is_ec && der.len() == 59 {
            "the key is a compressed P-256 point; write it uncompressed \
             (`openssl pkey -pubin -in KEY.pub -pubout -ec_conv_form uncompressed`)"
                .to_string()
        } else if is_ec {
            "the key is an elliptic-curve key on another curve: Berth trusts ECDSA P-256 keys \
             (what cosign generate-key-pair makes)"
                .to_string()
        } else {
            "the key is not an ECDSA P-256 key (RSA and Ed25519 are not supported): Berth \
             trusts ECDSA P-256 keys, as cosign makes them"
                .to_string()
        }))
    }

    fn from_point(point: &[u8]) -> PublicKey {
        let mut spki = P256_SPKI_PREFIX.to_vec();
        spki.extend_from_slice(point);
        PublicKey { spki }
    }

    pub fn to_pem(&self) -> String {
        pem_encode("PUBLIC KEY", &self.spki)
    }

    /// `sha256:<hex>` of the SubjectPublicKeyInfo DER.
    pub fn fingerprint(&self) -> String {
        sha256_digest(&self.spki)
    }

    /// Is `signature` (ASN.1 DER) a valid signature of `message` by this key?
    pub fn verify(&self, message: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_ASN1, &self.spki[26..])
            .verify(message, signature)
            .is_ok()
    }
}

/// An ECDSA P-256 private key. Its `Debug` shows only the public key's fingerprint.
pub struct PrivateKey {
    pair: EcdsaKeyPair,
    pkcs8: Vec<u8>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PrivateKey(public {})", self.public_key().fingerprint())
    }
}

impl PrivateKey {
    /// A new random key.
    pub fn generate() -> Result<PrivateKey, KeyError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| key_err("could not generate a key: the system random source failed"))?;
        Self::from_pkcs8_der(doc.as_ref())
    }

    /// Parse a PEM `PRIVATE KEY` (unencrypted PKCS#8).
    pub fn from_pem(text: &str) -> Result<PrivateKey, KeyError> {
        let der = pem_block(
            text,
            "PRIVATE KEY",
            "an unencrypted PKCS#8 ECDSA P-256 private key, as `berth trust key generate` or \
             `openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256` write",
        )?;
        Self::from_pkcs8_der(&der)
    }

    fn from_pkcs8_der(der: &[u8]) -> Result<PrivateKey, KeyError> {
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, der, &SystemRandom::new())
                .map_err(|e| {
                    key_err(format!(
                        "not a usable ECDSA P-256 PKCS#8 private key ({e}); Berth signs with \
                         P-256 keys whose PKCS#8 includes the public key, as `berth trust key \
                         generate` and `openssl genpkey` write them"
                    ))
                })?;
        Ok(PrivateKey {
            pair,
            pkcs8: der.to_vec(),
        })
    }

    /// PEM `PRIVATE KEY` (PKCS#8). A secret: write it only to a 0600 file.
    pub fn to_pem(&self) -> String {
        pem_encode("PRIVATE KEY", &self.pkcs8)
    }

    pub fn public_key(&self) -> PublicKey {
        PublicKey::from_point(self.pair.public_key().as_ref())
    }

    /// ASN.1 DER signature of `message` (ECDSA P-256, SHA-256).
    pub fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.pair
            .sign(&SystemRandom::new(), message)
            .map(|s| s.as_ref().to_vec())
            .map_err(|_| key_err("signing failed: the system random source failed"))
    }
}

/// Base64 (standard, padded) of a DER signature, as cosign prints it.
pub fn encode_signature(der: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(der)
}

pub fn decode_signature(s: &str) -> Result<Vec<u8>, KeyError> {
    base64::engine::general_purpose::STANDARD
        .decode(s.trim().as_bytes())
        .map_err(|e| key_err(format!("the signature is not base64: {e}")))
}

/// cosign's simple-signing payload for `repository@digest`, byte for byte as cosign writes it.
pub fn simple_signing_payload(repository: &str, digest: &str) -> String {
    let q = |s: &str| serde_json::Value::String(s.to_string()).to_string();
    format!(
        "{{\"critical\":{{\"identity\":{{\"docker-reference\":{}}},\"image\":{{\"docker-manifest-digest\":{}}},\"type\":{}}},\"optional\":null}}",
        q(repository),
        q(digest),
        q(PAYLOAD_TYPE)
    )
}

/// What a simple-signing payload says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    pub docker_reference: String,
    pub digest: String,
}

/// Read a simple-signing payload (structure only; nothing is verified here).
pub fn parse_payload(s: &str) -> Result<Payload, KeyError> {
    #[derive(serde::Deserialize)]
    struct P {
        critical: Critical,
    }
    #[derive(serde::Deserialize)]
    struct Critical {
        identity: Identity,
        image: Image,
        #[serde(rename = "type")]
        type_: String,
    }
    #[derive(serde::Deserialize)]
    struct Identity {
        #[serde(rename = "docker-reference")]
        docker_reference: String,
    }
    #[derive(serde::Deserialize)]
    struct Image {
        #[serde(rename = "docker-manifest-digest")]
        digest: String,
    }
    let p: P = serde_json::from_str(s).map_err(|e| {
        key_err(format!(
            "is not a cosign simple-signing payload ({e}): expected \
             {{\"critical\":{{\"identity\":{{\"docker-reference\":..}},\"image\":{{\"docker-manifest-digest\":..}},\"type\":\"{PAYLOAD_TYPE}\"}}}}"
        ))
    })?;
    if p.critical.type_ != PAYLOAD_TYPE {
        return Err(key_err(format!(
            "payload type is {:?}, expected {PAYLOAD_TYPE:?}",
            p.critical.type_
        )));
    }
    Ok(Payload {
        docker_reference: p.critical.identity.docker_reference,
        digest: p.critical.image.digest,
    })
}

/// Store name of the `ImageSignature` by key `key_name` over `repository@digest`.
pub fn signature_object_name(repository: &str, digest: &str, key_name: &str) -> String {
    // Reuse the tag naming scheme: readable prefix + hash of all three parts.
    // (By characters: the digest may be anything a user sent, validation comes after.)
    let hex: String = digest
        .strip_prefix("sha256:")
        .unwrap_or(digest)
        .chars()
        .take(12)
        .collect();
    tag_object_name(
        &format!("{repository}@{hex}"),
        &format!("{key_name}/{digest}"),
    )
}

/// Sign `repository@digest` with `key` as the trusted key `key_name`: the `ImageSignature` to
/// store.
pub fn sign_image(
    key: &PrivateKey,
    key_name: &str,
    repository: &str,
    digest: &str,
) -> Result<ImageSignature, KeyError> {
    let payload = simple_signing_payload(repository, digest);
    let sig = key.sign(payload.as_bytes())?;
    let mut s = ImageSignature::default();
    s.metadata.name = signature_object_name(repository, digest, key_name);
    s.spec.repository = repository.to_string();
    s.spec.digest = digest.to_string();
    s.spec.key_name = key_name.to_string();
    s.spec.key_fingerprint = key.public_key().fingerprint();
    s.spec.payload = payload;
    s.spec.signature = encode_signature(&sig);
    Ok(s)
}

/// Why a stored signature does not count for `repository@digest` under `key`.
pub fn verify_signature(
    sig: &ImageSignature,
    key: &TrustKey,
    repository: &str,
    digest: &str,
) -> Result<(), String> {
    if sig.spec.key_name != key.metadata.name {
        return Err(format!(
            "signed by key {:?}, not {:?}",
            sig.spec.key_name, key.metadata.name
        ));
    }
    let payload = parse_payload(&sig.spec.payload).map_err(|e| e.to_string())?;
    if payload.digest != digest {
        return Err(format!("payload is for digest {}", payload.digest));
    }
    if payload.docker_reference != repository {
        return Err(format!(
            "payload is for repository {:?}",
            payload.docker_reference
        ));
    }
    let pk = PublicKey::from_pem(&key.spec.public_key).map_err(|e| e.to_string())?;
    let der = decode_signature(&sig.spec.signature).map_err(|e| e.to_string())?;
    if !pk.verify(sig.spec.payload.as_bytes(), &der) {
        return Err(format!(
            "signature does not verify under key {:?}",
            key.metadata.name
        ));
    }
    Ok(())
}

/// The store objects verification reads. The API server implements it over one consistent
/// read of its store; the agent over a [`TrustSnapshot`] it fetched through the API.
pub trait TrustLookup {
    fn cluster_policy(&self) -> Option<ClusterImagePolicy>;
    fn namespace_policy(&self, namespace: &str) -> Option<ImagePolicy>;
    /// The manifest digest `repository:tag` points at in the cluster registry.
    fn tag_digest(&self, repository: &str, tag: &str) -> Option<String>;
    /// Every trusted key.
    fn keys(&self) -> Vec<TrustKey>;
    /// The signature by `key_name` over `repository@digest`, if any.
    fn signature(&self, repository: &str, digest: &str, key_name: &str) -> Option<ImageSignature>;
}

/// Trust objects held in memory (what the agent fetches; also handy in tests).
#[derive(Debug, Clone, Default)]
pub struct TrustSnapshot {
    pub cluster_policy: Option<ClusterImagePolicy>,
    pub namespace_policies: Vec<ImagePolicy>,
    pub tags: Vec<ImageTag>,
    pub keys: Vec<TrustKey>,
    pub signatures: Vec<ImageSignature>,
}

impl TrustLookup for TrustSnapshot {
    fn cluster_policy(&self) -> Option<ClusterImagePolicy> {
        self.cluster_policy.clone()
    }
    fn namespace_policy(&self, namespace: &str) -> Option<ImagePolicy> {
        self.namespace_policies
            .iter()
            .find(|p| p.metadata.namespace == namespace && p.metadata.name == NAMESPACE_POLICY_NAME)
            .cloned()
    }
    fn tag_digest(&self, repository: &str, tag: &str) -> Option<String> {
        self.tags
            .iter()
            .find(|t| t.spec.repository == repository && t.spec.tag == tag)
            .map(|t| t.spec.digest.clone())
    }
    fn keys(&self) -> Vec<TrustKey> {
        self.keys.clone()
    }
    fn signature(&self, repository: &str, digest: &str, key_name: &str) -> Option<ImageSignature> {
        self.signatures
            .iter()
            .find(|s| {
                s.spec.repository == repository
                    && s.spec.digest == digest
                    && s.spec.key_name == key_name
            })
            .cloned()
    }
}

/// Does `require-signed-images` apply in `namespace`? The namespace's `ImagePolicy` wins (on
/// or off); else the `ClusterImagePolicy`; else no.
pub fn requires_signed_images(lookup: &dyn TrustLookup, namespace: &str) -> bool {
    if let Some(p) = lookup.namespace_policy(namespace) {
        return p.spec.require_signed_images;
    }
    lookup
        .cluster_policy()
        .is_some_and(|p| p.spec.require_signed_images)
}

/// Why an image may not run under `require-signed-images`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TrustError {
    /// No signature by a currently trusted key verifies for `image` (`repo@digest`).
    NotSigned {
        image: String,
        trusted: Vec<String>,
    },
    /// The image names another registry, or a tag the cluster registry does not have: its
    /// digest and signatures cannot be known.
    NotInClusterRegistry {
        image: String,
        why: String,
    },
    /// The node holds the image but under no digest of its repository (e.g. built locally).
    NoDigestOnNode {
        image: String,
    },
    InvalidReference {
        image: String,
        why: String,
    },
}

impl fmt::Display for TrustError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TrustError::NotSigned { image, trusted } => {
                let t = if trusted.is_empty() {
                    "none".to_string()
                } else {
                    trusted.join(", ")
                };
                write!(
                    f,
                    "image {image} is not signed by a trusted key (trusted: {t})"
                )
            }
            TrustError::NotInClusterRegistry { image, why } => write!(
                f,
                "image {image} cannot be verified: {why}; images must come from the cluster \
                 registry and be signed (berth build --push, then berth sign)"
            ),
            TrustError::NoDigestOnNode { image } => write!(
                f,
                "image {image} on this node has no registry digest (built or tagged locally?), \
                 so its signature cannot be verified: push it to the cluster registry and sign it"
            ),
            TrustError::InvalidReference { image, why } => {
                write!(f, "image {image:?} cannot be verified: {why}")
            }
        }
    }
}

impl TrustError {
    /// What the user can do about it.
    pub fn hint(&self) -> String {
        match self {
            TrustError::NotSigned { image, trusted } if trusted.is_empty() => format!(
                "add a key with `berth trust key generate NAME` and sign with `berth sign {image} \
                 --key NAME`"
            ),
            TrustError::NotSigned { image, .. } => {
                format!("sign it with `berth sign {image} --key NAME`")
            }
            _ => "or turn the policy off with `berth trust policy require-signed-images off`"
                .to_string(),
        }
    }
}

/// May `image` run in `namespace`? `Ok` when the policy does not apply there, or when a
/// currently trusted key signed the image's digest.
///
/// The digest checked: `node_digests` when the caller knows which digests the node actually
/// holds for the image (Docker's RepoDigests of its repository); else the reference's digest;
/// else the digest its tag points at in the cluster registry.
pub fn check_image(
    lookup: &dyn TrustLookup,
    namespace: &str,
    image: &str,
    node_digests: Option<&[String]>,
) -> Result<(), TrustError> {
    if !requires_signed_images(lookup, namespace) {
        return Ok(());
    }
    check_image_signed(lookup, image, node_digests)
}

/// [`check_image`] without the policy lookup: is `image` signed by a trusted key?
pub fn check_image_signed(
    lookup: &dyn TrustLookup,
    image: &str,
    node_digests: Option<&[String]>,
) -> Result<(), TrustError> {
    let r = ImageRef::parse(image).map_err(|why| TrustError::InvalidReference {
        image: image.to_string(),
        why,
    })?;
    if let Some(d) = &r.domain {
        return Err(TrustError::NotInClusterRegistry {
            image: image.to_string(),
            why: format!(
                "it names the registry {d}, not the cluster registry (name cluster images \
                 without a registry host, e.g. {})",
                r.repository
            ),
        });
    }
    let digests: Vec<String> = match (node_digests, &r.digest) {
        (Some([]), _) => {
            return Err(TrustError::NoDigestOnNode {
                image: image.to_string(),
            })
        }
        (Some(list), _) => list.to_vec(),
        (None, Some(d)) => vec![d.clone()],
        (None, None) => {
            let tag = r.tag_or_latest().unwrap_or("latest");
            match lookup.tag_digest(&r.repository, tag) {
                Some(d) => vec![d],
                None => {
                    return Err(TrustError::NotInClusterRegistry {
                        image: image.to_string(),
                        why: format!("the cluster registry has no tag {}:{tag}", r.repository),
                    })
                }
            }
        }
    };
    let keys = lookup.keys();
    for digest in &digests {
        for key in &keys {
            if let Some(sig) = lookup.signature(&r.repository, digest, &key.metadata.name) {
                if verify_signature(&sig, key, &r.repository, digest).is_ok() {
                    return Ok(());
                }
            }
        }
    }
    let mut trusted: Vec<String> = keys.iter().map(|k| k.metadata.name.clone()).collect();
    trusted.sort();
    Err(TrustError::NotSigned {
        image: format!("{}@{}", r.repository, digests[0]),
        trusted,
    })
}

/// The container images (init containers first) of a Pod, Deployment or ReplicaSet with their
/// field paths (`spec.template.spec.containers[0].image`); nothing for other kinds.
pub fn images_of(obj: &DynObject) -> Vec<(String, String)> {
    let (spec, prefix) = match obj.kind {
        Kind::Pod => (obj.value.get("spec"), "spec"),
        Kind::Deployment | Kind::ReplicaSet => (
            obj.value
                .get("spec")
                .and_then(|s| s.get("template"))
                .and_then(|t| t.get("spec")),
            "spec.template.spec",
        ),
        _ => return Vec::new(),
    };
    let Some(spec) = spec.and_then(|s| serde_json::from_value::<PodSpec>(s.clone()).ok()) else {
        return Vec::new();
    };
    let list = |field: &'static str, cs: &[crate::types::Container]| -> Vec<(String, String)> {
        cs.iter()
            .enumerate()
            .map(|(i, c)| (format!("{prefix}.{field}[{i}].image"), c.image.clone()))
            .collect()
    };
    let mut out = list("initContainers", &spec.init_containers);
    out.extend(list("containers", &spec.containers));
    out
}

/// Admission: refuse `obj` (a Pod, or a Deployment/ReplicaSet by its pod template) when the
/// policy applies in its namespace and one of its images is not signed by a trusted key. The
/// error names the object, the field and what to do.
pub fn admit(lookup: &dyn TrustLookup, obj: &DynObject) -> Result<(), String> {
    let images = images_of(obj);
    if images.is_empty() {
        return Ok(());
    }
    let ns = if obj.namespace().is_empty() {
        "default"
    } else {
        obj.namespace()
    };
    if !requires_signed_images(lookup, ns) {
        return Ok(());
    }
    for (path, image) in images {
        if let Err(e) = check_image_signed(lookup, &image, None) {
            return Err(format!(
                "{} {ns}/{}: {path} {image:?}: {e} (require-signed-images is on for namespace \
                 {ns}): {}",
                obj.kind,
                obj.name(),
                e.hint()
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn trust_key(name: &str, k: &PrivateKey) -> TrustKey {
        let pk = k.public_key();
        let mut t = TrustKey::default();
        t.metadata.name = name.into();
        t.spec.public_key = pk.to_pem();
        t.spec.fingerprint = pk.fingerprint();
        t
    }

    fn digest(s: &str) -> String {
        sha256_digest(s.as_bytes())
    }

    #[test]
    fn a_signature_verifies_under_its_key_and_round_trips_through_pem() {
        let k = PrivateKey::generate().unwrap();
        let k2 = PrivateKey::from_pem(&k.to_pem()).unwrap();
        assert_eq!(k.public_key(), k2.public_key());
        let pk = PublicKey::from_pem(&k.public_key().to_pem()).unwrap();
        assert_eq!(pk, k.public_key());
        let d = digest("m");
        let sig = sign_image(&k2, "ci", "shop", &d).unwrap();
        assert_eq!(sig.spec.payload, simple_signing_payload("shop", &d));
        verify_signature(&sig, &trust_key("ci", &k), "shop", &d).unwrap();
        let p = parse_payload(&sig.spec.payload).unwrap();
        assert_eq!((p.docker_reference.as_str(), p.digest), ("shop", d));
        assert!(!format!("{k:?}").contains("PRIVATE"));
    }

    #[test]
    fn the_payload_is_cosigns_simple_signing_json() {
        let d = digest("m");
        assert_eq!(
            simple_signing_payload("shop/web", &d),
            format!(
                "{{\"critical\":{{\"identity\":{{\"docker-reference\":\"shop/web\"}},\"image\":{{\"docker-manifest-digest\":\"{d}\"}},\"type\":\"cosign container image signature\"}},\"optional\":null}}"
            )
        );
    }

    #[test]
    fn wrong_key_tampered_payload_and_other_digest_or_repository_fail() {
        let k = PrivateKey::generate().unwrap();
        let other = PrivateKey::generate().unwrap();
        let d = digest("m");
        let sig = sign_image(&k, "ci", "shop", &d).unwrap();
        // Another key under the same name.
        assert!(verify_signature(&sig, &trust_key("ci", &other), "shop", &d).is_err());
        // Another key name.
        assert!(verify_signature(&sig, &trust_key("ops", &k), "shop", &d).is_err());
        // A tampered payload (valid JSON for another digest, original signature).
        let mut t = sig.clone();
        t.spec.payload = simple_signing_payload("shop", &digest("evil"));
        let e = verify_signature(&t, &trust_key("ci", &k), "shop", &digest("evil")).unwrap_err();
        assert!(e.contains("does not verify"), "{e}");
        // The payload signed for one digest/repository does not cover another.
        let e = verify_signature(&sig, &trust_key("ci", &k), "shop", &digest("x")).unwrap_err();
        assert!(e.contains("digest"), "{e}");
        let e = verify_signature(&sig, &trust_key("ci", &k), "bank", &d).unwrap_err();
        assert!(e.contains("repository"), "{e}");
        // A tampered signature.
        let mut t = sig.clone();
        let mut der = decode_signature(&t.spec.signature).unwrap();
        let last = der.len() - 1;
        der[last] ^= 1;
        t.spec.signature = encode_signature(&der);
        assert!(verify_signature(&t, &trust_key("ci", &k), "shop", &d).is_err());
    }

    #[test]
    fn pem_errors_say_what_is_wrong_and_what_to_do() {
        let k = PrivateKey::generate().unwrap();
        let e = PublicKey::from_pem("hello").unwrap_err().to_string();
        assert!(
            e.contains("not PEM") && e.contains("BEGIN PUBLIC KEY"),
            "{e}"
        );
        let e = PublicKey::from_pem(&k.to_pem()).unwrap_err().to_string();
        assert!(e.contains("private key") && e.contains("-pubout"), "{e}");
        assert!(
            !e.contains(&k.to_pem()[30..60]),
            "no key material in errors"
        );
        let e = PrivateKey::from_pem(&k.public_key().to_pem())
            .unwrap_err()
            .to_string();
        assert!(e.contains("public key"), "{e}");
        let e = PrivateKey::from_pem(
            "-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nAAAA\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("encrypted key files are not supported"), "{e}");
        let e = PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not base64"), "{e}");
        let e = PublicKey::from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no \"-----END PUBLIC KEY-----\""), "{e}");
        // An Ed25519 SPKI (openssl genpkey -algorithm ed25519 | openssl pkey -pubout).
        let ed = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n-----END PUBLIC KEY-----\n";
        let e = PublicKey::from_pem(ed).unwrap_err().to_string();
        assert!(e.contains("not an ECDSA P-256 key"), "{e}");
    }

    fn snapshot_with_policy(on: bool) -> TrustSnapshot {
        let mut s = TrustSnapshot::default();
        let mut p = ClusterImagePolicy::default();
        p.metadata.name = CLUSTER_POLICY_NAME.into();
        p.spec.require_signed_images = on;
        s.cluster_policy = Some(p);
        s
    }

    fn tag(repo: &str, t: &str, d: &str) -> ImageTag {
        let mut x = ImageTag::default();
        x.spec.repository = repo.into();
        x.spec.tag = t.into();
        x.spec.digest = d.into();
        x
    }

    #[test]
    fn check_image_follows_the_policy_tags_keys_and_node_digests() {
        let k = PrivateKey::generate().unwrap();
        let d = digest("m");
        let mut s = snapshot_with_policy(true);
        s.tags.push(tag("shop", "v1", &d));
        s.keys.push(trust_key("ci-2026", &k));
        let e = check_image(&s, "default", "shop:v1", None).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("image shop@{d} is not signed by a trusted key (trusted: ci-2026)")
        );
        s.signatures
            .push(sign_image(&k, "ci-2026", "shop", &d).unwrap());
        check_image(&s, "default", "shop:v1", None).unwrap();
        check_image(&s, "default", &format!("shop@{d}"), None).unwrap();
        // The node runs another digest than the tag's.
        let e = check_image(&s, "default", "shop:v1", Some(&[digest("other")])).unwrap_err();
        assert!(matches!(e, TrustError::NotSigned { .. }), "{e}");
        check_image(
            &s,
            "default",
            "shop:v1",
            Some(&[digest("other"), d.clone()]),
        )
        .unwrap();
        assert!(matches!(
            check_image(&s, "default", "shop:v1", Some(&[])).unwrap_err(),
            TrustError::NoDigestOnNode { .. }
        ));
        // Unknown tags and other registries cannot be verified.
        assert!(matches!(
            check_image(&s, "default", "nginx:1.25", None).unwrap_err(),
            TrustError::NotInClusterRegistry { .. }
        ));
        assert!(matches!(
            check_image(&s, "default", "docker.io/library/shop:v1", None).unwrap_err(),
            TrustError::NotInClusterRegistry { .. }
        ));
        // The key removed: no longer trusted.
        s.keys.clear();
        let e = check_image(&s, "default", "shop:v1", None).unwrap_err();
        assert!(e.to_string().ends_with("(trusted: none)"), "{e}");
        // A namespace's policy overrides the cluster's, both ways.
        let mut off = ImagePolicy::default();
        off.metadata.name = NAMESPACE_POLICY_NAME.into();
        off.metadata.namespace = "dev".into();
        s.namespace_policies.push(off);
        check_image(&s, "dev", "nginx", None).unwrap();
        let mut s = snapshot_with_policy(false);
        check_image(&s, "prod", "nginx", None).unwrap();
        let mut on = ImagePolicy::default();
        on.metadata.name = NAMESPACE_POLICY_NAME.into();
        on.metadata.namespace = "prod".into();
        on.spec.require_signed_images = true;
        s.namespace_policies.push(on);
        assert!(check_image(&s, "prod", "nginx", None).is_err());
        check_image(&s, "default", "nginx", None).unwrap();
    }

    #[test]
    fn admission_names_the_object_and_field() {
        let s = snapshot_with_policy(true);
        let obj = DynObject::from_value(serde_json::json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {"selector": {"matchLabels": {"a": "b"}},
                     "template": {"metadata": {"labels": {"a": "b"}},
                                  "spec": {"containers": [{"name": "c", "image": "shop:v1"}]}}}
        }))
        .unwrap();
        let e = admit(&s, &obj).unwrap_err();
        assert!(
            e.starts_with(
                "Deployment default/web: spec.template.spec.containers[0].image \"shop:v1\": \
                 image shop:v1 cannot be verified: the cluster registry has no tag shop:v1"
            ),
            "{e}"
        );
        admit(&snapshot_with_policy(false), &obj).unwrap();
    }

    #[test]
    fn images_of_lists_init_containers_too_with_their_paths() {
        let c = |name: &str, image: &str| crate::types::Container {
            name: name.into(),
            image: image.into(),
            ..Default::default()
        };
        let pod = crate::types::Pod {
            spec: PodSpec {
                init_containers: vec![c("migrate", "tools:v1")],
                containers: vec![c("app", "shop:v1")],
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            images_of(&DynObject::from_typed(&pod)),
            vec![
                (
                    "spec.initContainers[0].image".to_string(),
                    "tools:v1".to_string()
                ),
                (
                    "spec.containers[0].image".to_string(),
                    "shop:v1".to_string()
                ),
            ]
        );
    }

    #[test]
    fn a_signature_stored_under_another_name_is_invalid() {
        let k = PrivateKey::generate().unwrap();
        let mut sig = sign_image(&k, "ci", "shop", &digest("m")).unwrap();
        assert!(crate::validate::validate_image_signature(&sig).is_empty());
        sig.metadata.name = "my-signature".into();
        let errs = crate::validate::validate_image_signature(&sig);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].to_string().starts_with("metadata.name: must be"),
            "{errs:?}"
        );
    }

    #[test]
    fn signature_object_names_are_valid_and_distinct() {
        let d = digest("m");
        let a = signature_object_name("shop/web", &d, "ci");
        let b = signature_object_name("shop/web", &d, "ops");
        assert_ne!(a, b);
        for n in [a, b] {
            crate::validate::check_dns1123_subdomain(&n).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
        // Whatever a user sends as the digest: no panic, and validation says what is wrong.
        let mut sig = ImageSignature::default();
        sig.metadata.name = "x".into();
        sig.spec.digest = "sha256:xéééééééé".into();
        sig.spec.key_name = "k".into();
        let _ = signature_object_name("shop", &sig.spec.digest, "k");
        assert!(!crate::validate::validate_image_signature(&sig).is_empty());
    }
}
