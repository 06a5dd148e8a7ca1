//! Resource quantities (`500m`, `1Gi`, `1e3`): parse or refuse, never panic or overflow; what
//! parses prints in canonical form, which parses to the same value.
#![no_main]

use apiary_api::quantity::Quantity;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(q) = text.parse::<Quantity>() {
        let printed = q.to_string();
        let again: Quantity = printed
            .parse()
            .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not parse: {e:?}"));
        assert_eq!(again.to_string(), printed, "from {text:?}");
    }
});
