//! Image references, digests and the names of the registry's store objects.
//!
//! The grammar follows distribution's `reference` package (what Docker and Kubernetes parse):
//! `[DOMAIN/]PATH[:TAG][@DIGEST]`, where the first component is a domain when it contains a `.`
//! or a `:` or is `localhost`; path components are lowercase alphanumerics joined by `.`, `_`,
//! `__` or runs of `-`; a tag is `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`; a digest is
//! `sha256:<64 lowercase hex>` (the only algorithm Berth verifies).

use std::fmt;

use sha2::{Digest as _, Sha256};

/// `sha256:<hex>` of `bytes`.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex(&Sha256::digest(bytes)))
}

/// `sha256:<hex>` of an already computed sha256 output.
pub fn sha256_digest_from_bytes(hash: &[u8]) -> String {
    format!("sha256:{}", hex(hash))
}

fn hex(b: &[u8]) -> String {
    const H: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(b.len() * 2);
    for x in b {
        s.push(H[(x >> 4) as usize] as char);
        s.push(H[(x & 15) as usize] as char);
    }
    s
}

/// Check a digest is `sha256:` + 64 lowercase hex digits.
pub fn check_digest(d: &str) -> Result<(), String> {
    let Some((alg, h)) = d.split_once(':') else {
        return Err(format!(
            "invalid digest {d:?}: expected sha256:<64 hex digits>"
        ));
    };
    if alg != "sha256" {
        return Err(format!(
            "unsupported digest algorithm {alg:?} in {d:?}: only sha256 is supported"
        ));
    }
    if h.len() != 64 || !h.bytes().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return Err(format!(
            "invalid digest {d:?}: expected sha256:<64 lowercase hex digits>"
        ));
    }
    Ok(())
}

/// Check a tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
pub fn check_tag(t: &str) -> Result<(), String> {
    let ok_first = t
        .bytes()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == b'_');
    let ok_rest = t
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if t.is_empty() || t.len() > 128 || !ok_first || !ok_rest {
        return Err(format!(
            "invalid tag {t:?}: up to 128 of letters, digits, '_', '.', '-', not starting with '.' or '-'"
        ));
    }
    Ok(())
}

fn check_path_component(c: &str) -> bool {
    // [a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*
    let b = c.as_bytes();
    if b.is_empty() {
        return false;
    }
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    let mut need_alnum = true;
    while i < b.len() {
        if alnum(b[i]) {
            need_alnum = false;
            i += 1;
            continue;
        }
        if need_alnum {
            return false;
        }
        // a separator
        if b[i] == b'.' {
            i += 1;
        } else if b[i] == b'_' {
            i += 1;
            if i < b.len() && b[i] == b'_' {
                i += 1;
            }
        } else if b[i] == b'-' {
            while i < b.len() && b[i] == b'-' {
                i += 1;
            }
        } else {
            return false;
        }
        need_alnum = true;
    }
    !need_alnum
}

/// Check a repository path (no domain): `component(/component)*`, at most 255 characters.
pub fn check_repository(r: &str) -> Result<(), String> {
    if r.is_empty() {
        return Err("repository name is required".into());
    }
    if r.len() > 255 {
        return Err(format!(
            "repository name {r:?} is longer than 255 characters"
        ));
    }
    if !r.split('/').all(check_path_component) {
        return Err(format!(
            "invalid repository name {r:?}: lowercase letters and digits, separated by '.', '_', '__' or '-', components joined by '/'"
        ));
    }
    Ok(())
}

/// A parsed image reference, as written (no Docker Hub normalization applied).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// `registry.example.com:5000`, `localhost`, ... or None (Docker Hub, or the cluster
    /// registry for names it has).
    pub domain: Option<String>,
    /// `nginx`, `library/nginx`, `shop/web`.
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(s: &str) -> Result<ImageRef, String> {
        let bad = |why: String| format!("invalid image reference {s:?}: {why}");
        if s.is_empty() {
            return Err("image reference is empty".into());
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                check_digest(d).map_err(bad)?;
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag is after the last ':' that follows the last '/'.
        let last_slash = rest.rfind('/').map(|i| i + 1).unwrap_or(0);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                check_tag(t).map_err(bad)?;
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let (domain, repo) = match name.split_once('/') {
            Some((first, path))
                if first.contains('.') || first.contains(':') || first == "localhost" =>
            {
                (Some(first.to_string()), path)
            }
            _ => (None, name),
        };
        if let Some(d) = &domain {
            let ok = d.bytes().all(|c| {
                c.is_ascii_alphanumeric() || matches!(c, b'.' | b'-' | b':' | b'[' | b']')
            });
            if !ok || d.starts_with(['.', '-', ':']) {
                return Err(bad(format!("invalid registry host {d:?}")));
            }
        }
        check_repository(repo).map_err(bad)?;
        Ok(ImageRef {
            domain,
            repository: repo.to_string(),
            tag,
            digest,
        })
    }

    /// `domain/repository`, or the repository alone when no registry is named.
    pub fn repository_with_domain(&self) -> String {
        match &self.domain {
            Some(d) => format!("{d}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// The tag Kubernetes assumes: the one written, or `latest` when neither tag nor digest is.
    pub fn tag_or_latest(&self) -> Option<&str> {
        match (&self.tag, &self.digest) {
            (Some(t), _) => Some(t),
            (None, None) => Some("latest"),
            (None, Some(_)) => None,
        }
    }

    /// Kubernetes' default imagePullPolicy: Always for `:latest` or no tag (and no digest),
    /// IfNotPresent otherwise.
    pub fn default_pull_policy(&self) -> &'static str {
        if self.digest.is_none() && self.tag.as_deref().is_none_or(|t| t == "latest") {
            "Always"
        } else {
            "IfNotPresent"
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(d) = &self.domain {
            write!(f, "{d}/")?;
        }
        f.write_str(&self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

/// The ReplicaSet annotation recording the digests its pods run, as JSON
/// `{"<container>": "REPO:TAG@sha256:..."}`. The Deployment controller writes it once, when it
/// creates the ReplicaSet (so every pod of that revision, on every node, runs the same bytes
/// even after the tag moves); the ReplicaSet controller applies it to each pod it creates.
/// The ReplicaSet's template keeps the user's unpinned images, so the template hash, `rollout
/// undo` and "which ReplicaSet is current" compare what the user wrote.
pub const IMAGE_DIGESTS_ANNOTATION: &str = "berth.dev/image-digests";

impl ImageRef {
    /// This reference pinned to `digest`, Swarm's form: `REPO:TAG@sha256:...` (the tag
    /// defaulting to `latest`, kept for readers; engines go by the digest).
    pub fn pinned(&self, digest: &str) -> ImageRef {
        ImageRef {
            tag: self.tag_or_latest().map(str::to_string),
            digest: Some(digest.to_string()),
            ..self.clone()
        }
    }

    /// `[DOMAIN/]REPO@sha256:...` without the tag (what an engine looks a digest up by), or
    /// None when no digest is given.
    pub fn by_digest(&self) -> Option<String> {
        let d = self.digest.as_ref()?;
        Some(format!("{}@{d}", self.repository_with_domain()))
    }
}

/// The pins recorded in `annotations` ([`IMAGE_DIGESTS_ANNOTATION`]); empty when absent or
/// unreadable (an unreadable value pins nothing rather than failing the ReplicaSet).
pub fn image_pins(
    annotations: &std::collections::BTreeMap<String, String>,
) -> std::collections::BTreeMap<String, String> {
    annotations
        .get(IMAGE_DIGESTS_ANNOTATION)
        .and_then(|v| serde_json::from_str(v).ok())
        .unwrap_or_default()
}

/// The pinned reference `pins` gives for a container whose image is `image`: only when the pin
/// is that very reference (same registry, repository and tag) plus a digest, so a pin never
/// swaps in another image (a hand-edited template keeps its own image).
pub fn pinned_image<'a>(
    pins: &'a std::collections::BTreeMap<String, String>,
    container: &str,
    image: &str,
) -> Option<&'a str> {
    let pin = pins.get(container)?;
    let p = ImageRef::parse(pin).ok()?;
    let digest = p.digest.as_deref()?;
    let wanted = ImageRef::parse(image).ok()?;
    (wanted.digest.is_none() && wanted.pinned(digest) == p).then_some(pin.as_str())
}

/// A readable, DNS-1123-label-safe prefix of `s` (lowercase alphanumerics and '-'),
/// at most `max` characters.
fn readable(s: &str, max: usize) -> String {
    let mut out: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(max)
        .collect();
    while out.ends_with('-') {
        out.pop();
    }
    let trimmed = out.trim_start_matches('-').to_string();
    if trimmed.is_empty() {
        "x".into()
    } else {
        trimmed
    }
}

fn short_hash(parts: &[&str]) -> String {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p.as_bytes());
        h.update([0]);
    }
    hex(&h.finalize()[..8])
}

/// Store name of the `ImageTag` for `repository:tag`: readable, unique (a hash of both).
pub fn tag_object_name(repository: &str, tag: &str) -> String {
    format!(
        "{}-{}",
        readable(&format!("{repository}-{tag}"), 40),
        short_hash(&[repository, tag])
    )
}

/// Store name of the `ImageManifest` for `repository@digest`.
pub fn manifest_object_name(repository: &str, digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    format!(
        "{}-{}-{}",
        readable(repository, 20),
        &hex[..hex.len().min(16)],
        short_hash(&[repository, digest])
    )
}

/// Store name of the `ImageBlob` for `digest`: `sha256-<first 32 hex>.<last 32 hex>` (a DNS
/// label holds at most 63 characters).
pub fn blob_object_name(digest: &str) -> String {
    let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
    let (a, b) = hex.split_at(hex.len() / 2);
    format!("sha256-{a}.{b}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_references_like_distribution() {
        let r = ImageRef::parse("nginx:1.14.2").expect("parses");
        assert_eq!(
            (r.domain.as_deref(), r.repository.as_str(), r.tag.as_deref()),
            (None, "nginx", Some("1.14.2"))
        );
        let r = ImageRef::parse("localhost:5000/shop/web").expect("parses");
        assert_eq!(r.domain.as_deref(), Some("localhost:5000"));
        assert_eq!(r.repository, "shop/web");
        assert_eq!(r.tag_or_latest(), Some("latest"));
        assert_eq!(r.default_pull_policy(), "Always");
        let d = sha256_digest(b"x");
        let r = ImageRef::parse(&format!("reg.example.com/a/b:v1@{d}")).expect("parses");
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.default_pull_policy(), "IfNotPresent");
        assert_eq!(r.to_string(), format!("reg.example.com/a/b:v1@{d}"));
        assert_eq!(
            ImageRef::parse("busybox:latest")
                .expect("parses")
                .default_pull_policy(),
            "Always"
        );
        for bad in [
            "",
            "Nginx",
            "nginx:",
            "nginx:-x",
            "a//b",
            "a/b/",
            "nginx@sha256:12",
            "a..b",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad:?} must be refused");
        }
        assert!(
            check_path_component("a__b")
                && check_path_component("a---b")
                && !check_path_component("a___b")
        );
    }

    #[test]
    fn pins_apply_only_to_the_reference_they_were_made_from() {
        let d = sha256_digest(b"manifest");
        let r = ImageRef::parse("nginx:1.14.2").expect("parses");
        assert_eq!(r.pinned(&d).to_string(), format!("nginx:1.14.2@{d}"));
        assert_eq!(
            ImageRef::parse("reg:5000/shop/web")
                .expect("parses")
                .pinned(&d)
                .to_string(),
            format!("reg:5000/shop/web:latest@{d}")
        );
        assert_eq!(
            ImageRef::parse(&format!("reg:5000/shop/web:1@{d}"))
                .expect("parses")
                .by_digest(),
            Some(format!("reg:5000/shop/web@{d}"))
        );
        assert_eq!(r.by_digest(), None);
        let pins =
            std::collections::BTreeMap::from([("web".to_string(), format!("nginx:1.14.2@{d}"))]);
        let json = serde_json::to_string(&pins).expect("json");
        let ann = std::collections::BTreeMap::from([(IMAGE_DIGESTS_ANNOTATION.to_string(), json)]);
        let pins = image_pins(&ann);
        assert_eq!(
            pinned_image(&pins, "web", "nginx:1.14.2"),
            Some(format!("nginx:1.14.2@{d}").as_str())
        );
        assert_eq!(pinned_image(&pins, "web", "nginx:1.15"), None);
        assert_eq!(pinned_image(&pins, "web", "other.io/nginx:1.14.2"), None);
        assert_eq!(pinned_image(&pins, "sidecar", "nginx:1.14.2"), None);
        let bad = std::collections::BTreeMap::from([(
            IMAGE_DIGESTS_ANNOTATION.to_string(),
            "not json".to_string(),
        )]);
        assert!(image_pins(&bad).is_empty());
    }

    #[test]
    fn object_names_are_valid_and_distinct() {
        let a = tag_object_name("a/b", "v1");
        let b = tag_object_name("a.b", "v1");
        assert_ne!(a, b);
        for n in [
            a,
            b,
            manifest_object_name("library/nginx", &sha256_digest(b"m")),
            blob_object_name(&sha256_digest(b"b")),
        ] {
            crate::validate::check_dns1123_subdomain(&n).unwrap_or_else(|e| panic!("{n}: {e}"));
        }
    }
}
