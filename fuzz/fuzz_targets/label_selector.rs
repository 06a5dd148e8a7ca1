//! Label selectors (`?labelSelector=`): any text parses or is refused, never panics; what parses
//! prints back to a selector that parses to the same thing.
#![no_main]

use apiary_api::selector::Selector;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(selector) = text.parse::<Selector>() {
        let printed = selector.to_string();
        let again: Selector = printed
            .parse()
            .unwrap_or_else(|e| panic!("{printed:?} (from {text:?}) does not parse: {e:?}"));
        assert_eq!(again.to_string(), printed);
    }
});
