//! Fuzz target: what the API server does with request bytes before anything reaches the store
//! (see `api_decode` in ../entry_points.rs). Any panic is a bug.
#![no_main]

#[path = "../entry_points.rs"]
mod entry_points;

libfuzzer_sys::fuzz_target!(|data: &[u8]| entry_points::api_decode(data));
