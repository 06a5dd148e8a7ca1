//! Joining a cluster with a bootstrap token, as `kubeadm join` discovers it: read
//! `kube-public/cluster-info` without trusting the server yet (and without sending any
//! credential), check the bootstrap signer's JWS of it against the token, check the CA it
//! names against the pinned `--ca-cert-hash` (SHA-256 of the CA's SubjectPublicKeyInfo), and
//! only then talk to the server, trusting that CA, with the token.

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde_json::Value;

use crate::{client, kubeconfig::Connection};

/// `sha256:<hex>` of the SubjectPublicKeyInfo of the first certificate in `ca_pem`, as
/// `kubeadm join --discovery-token-ca-cert-hash` pins it (`openssl x509 -pubkey | openssl rsa
/// -pubin -outform der | sha256sum`).
pub fn ca_cert_hash(ca_pem: &[u8]) -> anyhow::Result<String> {
    let der = rustls_pemfile::certs(&mut &*ca_pem)
        .next()
        .context("no certificate in the CA PEM")?
        .context("the CA PEM is not valid")?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(&der).context("the CA certificate does not parse")?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.public_key().raw);
    Ok(format!(
        "sha256:{}",
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    ))
}

/// A pinned hash as given on the command line: `sha256:` and 64 hex digits (any case).
pub fn parse_pin(pin: &str) -> anyhow::Result<String> {
    let hex = pin.strip_prefix("sha256:").with_context(|| {
        format!(
            "--ca-cert-hash {pin:?}: must be sha256:<64 hex digits> (only SHA-256 is supported)"
        )
    })?;
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--ca-cert-hash {pin:?}: must be sha256:<64 hex digits>");
    }
    Ok(format!("sha256:{}", hex.to_ascii_lowercase()))
}

/// Reads a bootstrap token from `source` (`-`: stdin), trimmed, and checks its shape.
pub fn read_token(source: &std::path::Path) -> anyhow::Result<String> {
    let text = if source == std::path::Path::new("-") {
        std::io::read_to_string(std::io::stdin()).context("reading the token from stdin")?
    } else {
        std::fs::read_to_string(source)
            .with_context(|| format!("reading --token-file {}", source.display()))?
    };
    let token = text.trim().to_owned();
    if apiary_api::bootstrap_token::parse(&token).is_none() {
        bail!(
            "the token is not a bootstrap token ([a-z0-9]{{6}}.[a-z0-9]{{16}}; `apiary token create` makes one)"
        );
    }
    Ok(token)
}

/// Whether cluster-info carries a signature for `token` yet (the bootstrap signer adds it
/// shortly after the token is created).
fn is_signed_for(cluster_info: &Value, token: &str) -> bool {
    apiary_api::bootstrap_token::parse(token).is_some_and(|(id, _)| {
        cluster_info["data"][apiary_api::bootstrap_token::jws_key(id)].is_string()
    })
}

/// How long discovery waits for cluster-info to be signed for the token (kubeadm retries
/// discovery the same way).
const SIGNATURE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// What cluster-info says, once verified: the CA (PEM).
pub fn verify_cluster_info(
    cluster_info: &Value,
    token: &str,
    pin: &str,
) -> anyhow::Result<Vec<u8>> {
    let (id, _) = apiary_api::bootstrap_token::parse(token).context("not a bootstrap token")?;
    let kubeconfig = cluster_info["data"]["kubeconfig"]
        .as_str()
        .context("cluster-info holds no kubeconfig")?;
    let signature = cluster_info["data"][apiary_api::bootstrap_token::jws_key(id)]
        .as_str()
        .with_context(|| {
            format!("cluster-info has no signature for token id {id:?}: the token is unknown, expired, or not yet signed for")
        })?;
    if !apiary_api::bootstrap_token::verify_detached(kubeconfig, signature, token) {
        bail!("cluster-info's signature for token id {id:?} does not verify: refusing to trust it");
    }
    let config: Value = serde_yaml::from_str(kubeconfig).context("cluster-info's kubeconfig")?;
    let ca_b64 = config["clusters"][0]["cluster"]["certificate-authority-data"]
        .as_str()
        .context("cluster-info's kubeconfig has no certificate-authority-data")?;
    let ca_pem = base64::engine::general_purpose::STANDARD
        .decode(ca_b64.trim())
        .context("cluster-info's CA is not base64")?;
    let found = ca_cert_hash(&ca_pem)?;
    if found != pin {
        bail!(
            "the cluster CA's public key hash is {found}, not the pinned {pin}: refusing to join (a different cluster, or someone in the middle)"
        );
    }
    Ok(ca_pem)
}

/// Discovers `server`'s CA as above; the token is sent to no one before the CA is verified.
pub async fn discover(server: &str, token: &str, pin: &str) -> anyhow::Result<Vec<u8>> {
    const PATH: &str = "/api/v1/namespaces/kube-public/configmaps/cluster-info";
    let anonymous_untrusted = Connection {
        server: server.trim_end_matches('/').to_owned(),
        insecure_skip_tls_verify: true,
        ..Connection::default()
    };
    let client = client::Client::new(&anonymous_untrusted)?;
    let deadline = tokio::time::Instant::now() + SIGNATURE_WAIT;
    let cluster_info = loop {
        let cluster_info = client
            .get(PATH, &[])
            .await
            .with_context(|| format!("reading cluster-info from {server}"))?;
        if is_signed_for(&cluster_info, token) || tokio::time::Instant::now() >= deadline {
            break cluster_info;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    };
    let ca_pem = verify_cluster_info(&cluster_info, token, pin)?;
    // The server must hold that CA's serving key: read it again, trusting only the CA.
    let pinned = Connection {
        ca_pem: Some(ca_pem.clone()),
        insecure_skip_tls_verify: false,
        ..anonymous_untrusted
    };
    client::Client::new(&pinned)?
        .get(PATH, &[])
        .await
        .with_context(|| format!("{server} does not serve with the pinned CA"))?;
    Ok(ca_pem)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ca() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    const TOKEN: &str = "abcdef.0123456789abcdef";

    fn cluster_info(ca_pem: &str, token: &str) -> Value {
        let kubeconfig = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    server: https://10.0.0.1:6443\n  name: \"\"\n",
            base64::engine::general_purpose::STANDARD.encode(ca_pem)
        );
        let (id, secret) = apiary_api::bootstrap_token::parse(token).unwrap();
        let signature = apiary_api::bootstrap_token::detached_signature(&kubeconfig, id, secret);
        json!({"data": {"kubeconfig": kubeconfig, format!("jws-kubeconfig-{id}"): signature}})
    }

    #[test]
    fn the_pinned_ca_and_a_signature_by_the_token_are_accepted() {
        let ca = ca();
        let pin = ca_cert_hash(ca.as_bytes()).unwrap();
        assert!(pin.starts_with("sha256:") && pin.len() == 7 + 64);
        assert_eq!(
            parse_pin(&pin.to_uppercase().replace("SHA256", "sha256")).unwrap(),
            pin
        );
        let verified = verify_cluster_info(&cluster_info(&ca, TOKEN), TOKEN, &pin).unwrap();
        assert_eq!(verified, ca.as_bytes());
    }

    #[test]
    fn another_ca_fails_closed() {
        let (ca, other) = (ca(), ca());
        let pin = ca_cert_hash(other.as_bytes()).unwrap();
        let e = verify_cluster_info(&cluster_info(&ca, TOKEN), TOKEN, &pin).unwrap_err();
        assert!(e.to_string().contains("refusing to join"), "{e}");
    }

    #[test]
    fn a_cluster_info_not_signed_with_the_token_fails_closed() {
        let ca = ca();
        let pin = ca_cert_hash(ca.as_bytes()).unwrap();
        let mut info = cluster_info(&ca, "abcdef.zzzzzzzzzzzzzzzz");
        let e = verify_cluster_info(&info, TOKEN, &pin).unwrap_err();
        assert!(e.to_string().contains("does not verify"), "{e}");
        info["data"]
            .as_object_mut()
            .unwrap()
            .remove("jws-kubeconfig-abcdef");
        let e = verify_cluster_info(&info, TOKEN, &pin).unwrap_err();
        assert!(e.to_string().contains("no signature"), "{e}");
        assert!(parse_pin("md5:abc").is_err());
        assert!(parse_pin("sha256:abc").is_err());
    }
}
