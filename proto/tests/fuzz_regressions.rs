//! Replays every committed fuzz input through the fuzz targets' own entry points
//! (fuzz/entry_points.rs, the same code `cargo fuzz` runs), so a fixed crash stays fixed and
//! the seeds keep exercising the code on every `cargo nextest run`, without cargo-fuzz:
//! `fuzz/seeds/<target>/*` (the starting corpus) and `fuzz/regressions/<target>/*` (inputs
//! that once crashed or failed: add a minimized crash there, see fuzz/README.md).
//! Any panic in an entry point fails the test with the file that caused it.

#[path = "../../fuzz/entry_points.rs"]
mod entry_points;

use std::path::{Path, PathBuf};

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// The files of `fuzz/seeds/<target>/` and `fuzz/regressions/<target>/` (sorted); panics if
/// there are none, so the test cannot pass by replaying nothing.
fn inputs(target: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    for kind in ["seeds", "regressions"] {
        let dir = fuzz_dir().join(kind).join(target);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            if e.path().is_file() {
                files.push(e.path());
            }
        }
    }
    files.sort();
    assert!(
        files.len() >= 2,
        "expected the committed seeds of fuzz target {target} under {}/{{seeds,regressions}}/{target}/, found {files:?}",
        fuzz_dir().display()
    );
    files
}

/// Runs `entry` on every input of `target`, reporting each file that panicked.
fn replay(target: &str, entry: impl Fn(&[u8]) + std::panic::RefUnwindSafe) -> usize {
    let files = inputs(target);
    let mut failed = Vec::new();
    for f in &files {
        let bytes = std::fs::read(f).unwrap_or_else(|e| panic!("cannot read {}: {e}", f.display()));
        if std::panic::catch_unwind(|| entry(&bytes)).is_err() {
            failed.push(f.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "fuzz target {target} panicked on (reproduce with `cargo fuzz run -s none {target} FILE` in fuzz/): {failed:?}"
    );
    files.len()
}

#[test]
fn every_committed_api_decode_input_decodes_without_panicking() {
    let n = replay("api_decode", entry_points::api_decode);
    eprintln!("replayed {n} api_decode inputs");
}

#[test]
fn every_committed_manifest_input_loads_without_panicking() {
    // libFuzzer hands the manifest target only valid UTF-8; so does this replay.
    let n = replay("manifest", |bytes| {
        let text = std::str::from_utf8(bytes).expect("manifest fuzz inputs are UTF-8");
        entry_points::manifest(text)
    });
    eprintln!("replayed {n} manifest inputs");
}

#[test]
fn a_selector_with_operator_words_as_key_and_value_parses() {
    // The regression input fuzz/regressions/api_decode/list-selector-in-as-label-key carries
    // this selector; the entry point ignores parse errors, so check the parse itself here.
    let s = berth_proto::selector::Selector::parse("in in (c),notin notin (in)");
    assert!(s.is_ok(), "{s:?}");
}
