//! Request bodies as the API server decodes them: YAML with the alias-expansion bound, and JSON.
//! Refused or decoded, never a panic, and never more than the limit after expansion.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;

/// Small, so that the fuzzer reaches the bound often.
const LIMIT: usize = 64 * 1024;

fuzz_target!(|data: &[u8]| {
    if let Ok(value) = apiary_api::yaml::from_slice_bounded::<Value>(data, LIMIT) {
        // What the bound let through is no larger than it says (with JSON's quoting and commas).
        let printed = serde_json::to_vec(&value).expect("a decoded value encodes");
        assert!(
            printed.len() <= 8 * LIMIT + 64,
            "{} bytes from {} through the bound",
            printed.len(),
            data.len()
        );
    }
    let _ = serde_json::from_slice::<Value>(data);
});
