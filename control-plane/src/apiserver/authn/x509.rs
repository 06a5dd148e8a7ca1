//! X.509 client certificates: the TLS handshake verifies them against the cluster CA (see
//! [`crate::apiserver::pki`]); this maps a verified certificate to its user as kube-apiserver's
//! `CommonNameUserConversion` does: the subject's common name is the user name, its
//! organizations are the groups.

use x509_parser::prelude::{FromDer as _, X509Certificate};

use super::{UserInfo, with_authenticated_group};

/// The user of a connection's verified client certificate. The TLS server inserts it into every
/// request of that connection; authentication prefers it to a bearer token, as Kubernetes does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientCertUser(pub UserInfo);

impl ClientCertUser {
    /// The user of `connection`'s client certificate, if it sent one (the handshake verified
    /// it) that names a user.
    pub fn of_connection(connection: &rustls::ServerConnection) -> Option<Self> {
        let leaf = connection.peer_certificates()?.first()?;
        user(leaf).map(Self)
    }
}

/// The user a verified client certificate (DER) names, or `None` when it names none (no common
/// name: Kubernetes refuses such a certificate; other credentials may still authenticate).
pub fn user(der: &[u8]) -> Option<UserInfo> {
    let (_, cert) = X509Certificate::from_der(der).ok()?;
    let subject = cert.subject();
    // Go keeps the last common name of the subject.
    let name = subject
        .iter_common_name()
        .filter_map(|cn| cn.as_str().ok())
        .last()?
        .to_owned();
    if name.is_empty() {
        return None;
    }
    let groups = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .map(str::to_owned)
        .collect();
    Some(with_authenticated_group(UserInfo {
        name,
        groups,
        ..UserInfo::default()
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(subject: &[(rcgen::DnType, &str)]) -> Vec<u8> {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        for (ty, value) in subject {
            params.distinguished_name.push(ty.clone(), *value);
        }
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_is_the_user_and_organizations_are_groups() {
        let der = cert(&[
            (rcgen::DnType::CommonName, "jane"),
            (rcgen::DnType::OrganizationName, "dev"),
        ]);
        let user = user(&der).unwrap();
        assert_eq!(user.name, "jane");
        assert_eq!(user.groups, ["dev", "system:authenticated"]);
        assert!(user.uid.is_empty());
    }

    #[test]
    fn a_certificate_without_common_name_names_no_user() {
        let der = cert(&[(rcgen::DnType::OrganizationName, "dev")]);
        assert_eq!(user(&der), None);
    }
}
