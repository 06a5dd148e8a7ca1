//! Image references (`registry:5000/ns/name:tag@sha256:…`): parse or refuse, never panic; what
//! parses prints back to the same reference.
#![no_main]

use apiary_images::Reference;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(reference) = Reference::parse(text) {
        let printed = reference.to_string();
        let again = Reference::parse(&printed)
            .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not parse: {e}"));
        assert_eq!(again.to_string(), printed);
    }
});
