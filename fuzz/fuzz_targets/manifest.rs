//! Fuzz target: the manifest loader (YAML events, alias/nesting budgets, schema check with
//! typo hints, validation) on arbitrary UTF-8. Any panic is a bug: user input must only ever
//! produce `ManifestErrors`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(objs) = berth_proto::manifest::parse_manifest("fuzz.yaml", text) {
        // Whatever loads must also serialize back and validate cleanly.
        for obj in objs {
            let json = obj.to_json();
            let again = berth_proto::DynObject::from_json(&json).expect("a loaded object decodes");
            let errors = berth_proto::validate::validate(&again);
            assert!(
                errors.is_empty(),
                "a loaded object no longer validates: {errors:?}"
            );
        }
    }
});
