//! Kubernetes protobuf request bodies (`k8s\0` + `runtime.Unknown`) as the API server decodes
//! them: refused or decoded, never a panic or unbounded recursion; what decodes encodes again,
//! and that encoding is stable (decoding and encoding it once more gives the same bytes).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(value) = apiary_api::protobuf::decode(data) else {
        return;
    };
    let encoded = apiary_api::protobuf::encode(&value)
        .unwrap_or_else(|e| panic!("{value} decoded but does not encode: {e}"));
    let again = apiary_api::protobuf::decode(&encoded)
        .unwrap_or_else(|e| panic!("the encoding of {value} does not decode: {e}"));
    let reencoded = apiary_api::protobuf::encode(&again).expect("a re-decoded value encodes");
    assert_eq!(encoded, reencoded, "{value} → {again}");
});
