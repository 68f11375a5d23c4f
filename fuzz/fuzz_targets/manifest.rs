//! Fuzz target: the manifest loader (YAML events, alias/nesting budgets, schema check with
//! typo hints, validation) on arbitrary UTF-8 (see `manifest` in ../entry_points.rs). Any panic
//! is a bug: user input must only ever produce `ManifestErrors`.
#![no_main]

#[path = "../entry_points.rs"]
mod entry_points;

libfuzzer_sys::fuzz_target!(|text: &str| entry_points::manifest(text));
