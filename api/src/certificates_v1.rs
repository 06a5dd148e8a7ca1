//! `certificates.k8s.io/v1`: CertificateSigningRequest, how nodes (and users) get certificates
//! from the cluster CA. The server validates and signs on the JSON (it parses the PKCS#10
//! request); these types are what clients read and write.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::meta::{Object, Time};

/// A request for a certificate from a signer.
pub type CertificateSigningRequest =
    Object<CertificateSigningRequestSpec, CertificateSigningRequestStatus>;

/// What is asked for, and (filled by the server) who asked.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CertificateSigningRequestSpec {
    /// The PEM `CERTIFICATE REQUEST`, base64-encoded on the wire.
    pub request: String,
    pub signer_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expiration_seconds: Option<i32>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub usages: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub username: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub uid: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub extra: BTreeMap<String, Vec<String>>,
}

/// Approval conditions and the issued certificate.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CertificateSigningRequestStatus {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<CertificateSigningRequestCondition>,
    /// The PEM certificate chain, base64-encoded on the wire.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub certificate: String,
}

/// `Approved`, `Denied` or `Failed` (or another type a signer uses).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct CertificateSigningRequestCondition {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_update_time: Option<Time>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_transition_time: Option<Time>,
}
