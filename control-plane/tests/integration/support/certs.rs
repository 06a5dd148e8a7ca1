//! Certificates a test makes: users of the cluster CA or of a CA the cluster does not know,
//! and serving certificates for fake node agents.

use std::net::IpAddr;

use super::ControlPlane;

/// The cluster CA of `cp`: `(certificate, key)`, PEM.
pub fn cluster_ca(cp: &ControlPlane) -> (String, String) {
    let pki = cp.data_path().join("pki");
    (
        std::fs::read_to_string(pki.join("ca.crt")).unwrap(),
        std::fs::read_to_string(pki.join("ca.key")).unwrap(),
    )
}

/// A client certificate for `name` in `group`, signed by the CA at `ca_cert`/`ca_key` (PEM).
pub fn client_cert(ca_cert: &str, ca_key: &str, name: &str, group: &str) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, group);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    sign(params, ca_cert, ca_key)
}

/// A serving certificate for `names` and `addresses`, signed by the CA at `ca_cert`/`ca_key`.
pub fn serving_cert(
    ca_cert: &str,
    ca_key: &str,
    names: &[&str],
    addresses: &[IpAddr],
) -> (String, String) {
    sign(serving_params(names, addresses), ca_cert, ca_key)
}

/// [`serving_cert`] valid from `days_ago` days before today to `days_left` days after it.
pub fn serving_cert_between(
    ca_cert: &str,
    ca_key: &str,
    names: &[&str],
    addresses: &[IpAddr],
    (days_ago, days_left): (i64, i64),
) -> (String, String) {
    use chrono::Datelike as _;
    let day = |offset: i64| {
        let date = chrono::Utc::now().date_naive() + chrono::Duration::days(offset);
        rcgen::date_time_ymd(date.year(), date.month() as u8, date.day() as u8)
    };
    let mut params = serving_params(names, addresses);
    params.not_before = day(-days_ago);
    params.not_after = day(days_left);
    sign(params, ca_cert, ca_key)
}

fn serving_params(names: &[&str], addresses: &[IpAddr]) -> rcgen::CertificateParams {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap();
    for ip in addresses {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(*ip));
    }
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    params
}

/// A self-signed serving certificate for `names` and `addresses`.
pub fn self_signed_cert(names: &[&str], addresses: &[IpAddr]) -> (String, String) {
    let mut params =
        rcgen::CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .unwrap();
    for ip in addresses {
        params
            .subject_alt_names
            .push(rcgen::SanType::IpAddress(*ip));
    }
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn sign(params: rcgen::CertificateParams, ca_cert: &str, ca_key: &str) -> (String, String) {
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(ca_cert, rcgen::KeyPair::from_pem(ca_key).unwrap())
            .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// A CA the cluster does not know (named like the cluster's, `apiary-ca`): `(certificate,
/// key)`, PEM.
pub fn stranger_ca() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "apiary-ca");
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}
