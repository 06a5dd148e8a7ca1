//! The bootstrap token format shared by the API server, its controllers and `apiary node join`
//! (`k8s.io/cluster-bootstrap`): the token `<id>.<secret>`, and the detached JWS with which the
//! bootstrap signer signs `kube-public/cluster-info` for each token, so that a joining node can
//! tell the cluster-info it read came from someone who knows its token.

use base64::Engine as _;

/// `(id, secret)` of a well-formed token: `[a-z0-9]{6}.[a-z0-9]{16}`.
pub fn parse(token: &str) -> Option<(&str, &str)> {
    let (id, secret) = token.split_once('.')?;
    let shaped = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    };
    (shaped(id, 6) && shaped(secret, 16)).then_some((id, secret))
}

/// The key of `cluster-info`'s data that holds the signature of token `id`.
pub fn jws_key(id: &str) -> String {
    format!("jws-kubeconfig-{id}")
}

/// The compact JWS (HS256, key = the token's secret, `kid` = its id) of `content` with the
/// payload left out (`header..signature`), as `jws.ComputeDetachedSignature`.
pub fn detached_signature(content: &str, id: &str, secret: &str) -> String {
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let header = b64(format!(r#"{{"alg":"HS256","kid":"{id}"}}"#).as_bytes());
    let signing_input = format!("{header}.{}", b64(content.as_bytes()));
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret.as_bytes());
    let tag = ring::hmac::sign(&key, signing_input.as_bytes());
    format!("{header}..{}", b64(tag.as_ref()))
}

/// Whether `signature` is `content`'s detached JWS for `token` (compared in constant time).
pub fn verify_detached(content: &str, signature: &str, token: &str) -> bool {
    let Some((id, secret)) = parse(token) else {
        return false;
    };
    let expected = detached_signature(content, id, secret);
    let (a, b) = (expected.as_bytes(), signature.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_kubeadm_token_shape_parses() {
        assert_eq!(
            parse("abcdef.0123456789abcdef"),
            Some(("abcdef", "0123456789abcdef"))
        );
        for bad in [
            "abcdef0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcde.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abcdef.0123456789abcdef0",
            "abcdef.0123456789abcde!",
            "",
        ] {
            assert_eq!(parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn the_signature_is_a_detached_hs256_jws_only_the_token_verifies() {
        let token = "abcdef.0123456789abcdef";
        let sig = detached_signature("kubeconfig", "abcdef", "0123456789abcdef");
        let (header, rest) = sig.split_once("..").unwrap();
        assert_eq!(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(header)
                .unwrap(),
            br#"{"alg":"HS256","kid":"abcdef"}"#
        );
        assert_eq!(rest.len(), 43, "32 bytes of HMAC, unpadded base64url");
        assert!(verify_detached("kubeconfig", &sig, token));
        assert!(!verify_detached("kubeconfig!", &sig, token));
        assert!(!verify_detached(
            "kubeconfig",
            &sig,
            "abcdef.0123456789abcdee"
        ));
    }
}
