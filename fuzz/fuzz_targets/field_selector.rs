//! Field selectors (`?fieldSelector=`): parse or refuse, never panic.
#![no_main]

use apiary_api::selector::FieldSelector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let _ = text.parse::<FieldSelector>();
});
