//! The file `berth snapshot save` writes and `berth server --restore` reads:
//!
//! ```text
//! {"format":"berth-snapshot","version":1,"revision":R,"objects":N,"size":BYTES,"sha256":"HEX"}\n
//! BODY   (the store's snapshot: JSON {"revision","applied","objects":[...]}; Secret values
//!         stay sealed with the cluster's key, see `berth server --restore-secrets-key`)
//! ```
//!
//! The header carries the body's size and SHA-256, so a truncated or altered file is refused
//! with what is wrong before anything is restored.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const FORMAT: &str = "berth-snapshot";
pub const VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format: String,
    pub version: u32,
    /// The store revision the snapshot holds (every object keeps its resourceVersion).
    pub revision: u64,
    pub objects: u64,
    pub size: u64,
    pub sha256: String,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Deserialize)]
struct BodyInfo {
    revision: u64,
    objects: Vec<serde::de::IgnoredAny>,
}

/// The whole file for a store snapshot `body`.
pub fn encode(body: &[u8]) -> Result<Vec<u8>, String> {
    let info: BodyInfo = serde_json::from_slice(body)
        .map_err(|e| format!("the snapshot the server sent is not a store snapshot: {e}"))?;
    let header = Header {
        format: FORMAT.into(),
        version: VERSION,
        revision: info.revision,
        objects: info.objects.len() as u64,
        size: body.len() as u64,
        sha256: hex(&Sha256::digest(body)),
    };
    let mut out = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    out.push(b'\n');
    out.extend_from_slice(body);
    Ok(out)
}

/// Check a file's header, size and checksum; returns the header and the body.
pub fn decode(file: &[u8]) -> Result<(Header, &[u8]), String> {
    let nl = file.iter().position(|b| *b == b'\n').ok_or(
        "not a Berth snapshot: no header line (write one with `berth snapshot save FILE`)",
    )?;
    let header: Header = serde_json::from_slice(&file[..nl])
        .map_err(|_| "not a Berth snapshot: the first line is not its header".to_string())?;
    if header.format != FORMAT {
        return Err(format!("not a Berth snapshot: format {:?}", header.format));
    }
    if header.version != VERSION {
        return Err(format!(
            "snapshot format version {} is not supported by this Berth (it reads version {VERSION})",
            header.version
        ));
    }
    let body = &file[nl + 1..];
    if (body.len() as u64) < header.size {
        return Err(format!(
            "the snapshot is truncated: its header says {} bytes, the file holds {}",
            header.size,
            body.len()
        ));
    }
    if body.len() as u64 != header.size {
        return Err(format!(
            "the snapshot is corrupt: {} bytes after the {} its header names",
            body.len() as u64 - header.size,
            header.size
        ));
    }
    let actual = hex(&Sha256::digest(body));
    if actual != header.sha256 {
        return Err(format!(
            "the snapshot is corrupt: its SHA-256 is {actual}, the header says {}",
            header.sha256
        ));
    }
    Ok((header, body))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_file_round_trips_and_truncation_or_corruption_is_named() {
        let body = br#"{"revision":42,"applied":7,"objects":[{"kind":"Pod"},{"kind":"Node"}]}"#;
        let file = encode(body).unwrap();
        let (h, b) = decode(&file).unwrap();
        assert_eq!((h.revision, h.objects, b), (42, 2, &body[..]));

        let err = decode(&file[..file.len() - 5]).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        let mut flipped = file.clone();
        let last = flipped.len() - 3;
        flipped[last] ^= 0x20;
        let err = decode(&flipped).unwrap_err();
        assert!(err.contains("corrupt") && err.contains("SHA-256"), "{err}");
        assert!(decode(b"hello")
            .unwrap_err()
            .contains("not a Berth snapshot"));
        assert!(decode(b"{\"x\":1}\nbody")
            .unwrap_err()
            .contains("not a Berth snapshot"));
        assert!(encode(b"nope").is_err());
    }
}
