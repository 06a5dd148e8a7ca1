//! CertificateSigningRequests (`certificates.k8s.io/v1`), as kube-apiserver's
//! `pkg/registry/certificates` strategies and admission plugins (what each write path keeps is
//! the kind's registry strategy, [`super::registry`]): the server fills in who asked
//! (`spec.username`, `uid`, `groups`, `extra`); the main resource never changes spec or status,
//! `approval` changes only the conditions (and needs `approve` on the signer:
//! CertificateApproval), `status` everything in status but the Approved/Denied conditions (and
//! needs `sign` on the signer to set the certificate: CertificateSigning); no one may ask the
//! kube-apiserver-client signer for `system:masters` (CertificateSubjectRestriction).

use std::net::IpAddr;

use apiary_api::validation::{ErrorList, FieldError};
use base64::Engine as _;
use serde_json::{Value, json};
use x509_parser::{
    certification_request::X509CertificationRequest,
    extensions::{GeneralName, ParsedExtension},
    prelude::FromDer as _,
};

use super::{
    auth::UserInfo,
    authz::{Authz, request_info::RequestInfo},
    error::ApiError,
};

/// The signer of kubelets' client certificates (`system:node:<name>` in `system:nodes`).
pub const KUBE_APISERVER_CLIENT_KUBELET: &str = "kubernetes.io/kube-apiserver-client-kubelet";
/// The signer of any client certificate for the API server.
pub const KUBE_APISERVER_CLIENT: &str = "kubernetes.io/kube-apiserver-client";
/// The signer of kubelets' serving certificates (:10250).
pub const KUBELET_SERVING: &str = "kubernetes.io/kubelet-serving";

/// The group every node's identity is in.
pub const NODES_GROUP: &str = "system:nodes";
/// The user-name prefix of node identities.
pub const NODE_USER_PREFIX: &str = "system:node:";

/// `certificates.KeyUsage` values the API accepts.
const KNOWN_USAGES: &[&str] = &[
    "any",
    "cert sign",
    "client auth",
    "code signing",
    "content commitment",
    "crl sign",
    "data encipherment",
    "decipher only",
    "digital signature",
    "email protection",
    "encipher only",
    "ipsec end system",
    "ipsec tunnel",
    "ipsec user",
    "key agreement",
    "key encipherment",
    "microsoft sgc",
    "netscape sgc",
    "ocsp signing",
    "s/mime",
    "server auth",
    "signing",
    "timestamping",
];

/// What a PKCS#10 request asks for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Request {
    pub common_name: String,
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
    pub emails: Vec<String>,
    pub uris: Vec<String>,
}

/// Parses and verifies (its signature) the PEM request of `spec.request`, as
/// `certificates.ParseCSR` and `CheckSignature`; the error is Kubernetes' text.
pub fn parse_request(pem_bytes: &[u8]) -> Result<Request, String> {
    const NOT_A_REQUEST: &str = "PEM block type must be CERTIFICATE REQUEST";
    let block = pem_block(pem_bytes).ok_or(NOT_A_REQUEST)?;
    if block.0 != "CERTIFICATE REQUEST" {
        return Err(NOT_A_REQUEST.to_owned());
    }
    let (_, csr) = X509CertificationRequest::from_der(&block.1)
        .map_err(|e| format!("asn1: structure error: {e}"))?;
    csr.verify_signature()
        .map_err(|_| "x509: signature verification failure".to_owned())?;
    let subject = &csr.certification_request_info.subject;
    let mut request = Request {
        common_name: subject
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .last()
            .unwrap_or_default()
            .to_owned(),
        organizations: subject
            .iter_organization()
            .filter_map(|o| o.as_str().ok().map(str::to_owned))
            .collect(),
        ..Request::default()
    };
    for extension in csr.requested_extensions().into_iter().flatten() {
        if let ParsedExtension::SubjectAlternativeName(san) = extension {
            for name in &san.general_names {
                match name {
                    GeneralName::DNSName(d) => request.dns_names.push((*d).to_owned()),
                    GeneralName::RFC822Name(e) => request.emails.push((*e).to_owned()),
                    GeneralName::URI(u) => request.uris.push((*u).to_owned()),
                    GeneralName::IPAddress(bytes) => match bytes.len() {
                        4 => request
                            .ip_addresses
                            .push(IpAddr::from(<[u8; 4]>::try_from(*bytes).expect("4 bytes"))),
                        16 => request.ip_addresses.push(IpAddr::from(
                            <[u8; 16]>::try_from(*bytes).expect("16 bytes"),
                        )),
                        _ => {}
                    },
                    _ => {}
                }
            }
        }
    }
    Ok(request)
}

/// The first PEM block of `bytes`: (label, DER).
fn pem_block(bytes: &[u8]) -> Option<(String, Vec<u8>)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + "-----BEGIN ".len()..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body = &rest[label_end + 5..];
    let end = body.find(&format!("-----END {label}-----"))?;
    let b64: String = body[..end].split_whitespace().collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((label.to_owned(), der))
}

/// `ValidateKubeletClientCSR`: `system:node:<name>` in exactly `system:nodes`, no SANs, and
/// the usages of a client certificate (key encipherment only for RSA keys, so optional).
pub fn validate_kubelet_client(request: &Request, usages: &[String]) -> Result<(), String> {
    if request.organizations != [NODES_GROUP] {
        return Err(format!("subject organization is not {NODES_GROUP}"));
    }
    if !request.dns_names.is_empty() {
        return Err("dnsNames are not allowed".to_owned());
    }
    if !request.emails.is_empty() {
        return Err("email addresses are not allowed".to_owned());
    }
    if !request.ip_addresses.is_empty() {
        return Err("IP addresses are not allowed".to_owned());
    }
    if !request.uris.is_empty() {
        return Err("URIs are not allowed".to_owned());
    }
    if !request.common_name.starts_with(NODE_USER_PREFIX) {
        return Err(format!(
            "subject common name does not begin with {NODE_USER_PREFIX}"
        ));
    }
    check_usages(usages, &["digital signature", "client auth"])
}

/// `ValidateKubeletServingCSR`: `system:node:<name>` in exactly `system:nodes`, at least one
/// DNS name or IP address, no emails or URIs, and the usages of a serving certificate.
pub fn validate_kubelet_serving(request: &Request, usages: &[String]) -> Result<(), String> {
    if request.organizations != [NODES_GROUP] {
        return Err(format!("subject organization is not {NODES_GROUP}"));
    }
    if request.dns_names.is_empty() && request.ip_addresses.is_empty() {
        return Err("DNS or IP subjectAltName is required".to_owned());
    }
    if !request.emails.is_empty() {
        return Err("email subjectAltNames are not allowed".to_owned());
    }
    if !request.uris.is_empty() {
        return Err("URI subjectAltNames are not allowed".to_owned());
    }
    if !request.common_name.starts_with(NODE_USER_PREFIX) {
        return Err(format!(
            "subject common name does not begin with {NODE_USER_PREFIX}"
        ));
    }
    check_usages(usages, &["digital signature", "server auth"])
}

/// The kube-apiserver-client signer's rule: client usages only, client auth among them.
pub fn validate_apiserver_client(usages: &[String]) -> Result<(), String> {
    let allowed = ["digital signature", "key encipherment", "client auth"];
    if !usages.iter().any(|u| u == "client auth")
        || usages.iter().any(|u| !allowed.contains(&u.as_str()))
    {
        return Err(format!(
            "usages did not match [{}]: {usages:?}",
            allowed.join(" ")
        ));
    }
    Ok(())
}

/// `usages` is exactly `required`, or `required` with key encipherment (RSA keys).
fn check_usages(usages: &[String], required: &[&str]) -> Result<(), String> {
    let mut have: Vec<&str> = usages.iter().map(String::as_str).collect();
    have.sort_unstable();
    have.dedup();
    let mut plain: Vec<&str> = required.to_vec();
    plain.sort_unstable();
    let mut rsa: Vec<&str> = [required, &["key encipherment"]].concat();
    rsa.sort_unstable();
    if have == plain || have == rsa {
        Ok(())
    } else {
        Err(format!("usages did not match {:?}", required))
    }
}

/// The node a `system:node:<name>` user or subject names.
pub fn node_name(user_or_cn: &str) -> Option<&str> {
    user_or_cn
        .strip_prefix(NODE_USER_PREFIX)
        .filter(|n| !n.is_empty())
}

/// `spec.request` decoded (the API carries the PEM base64-encoded).
pub fn request_pem(csr: &Value) -> Vec<u8> {
    csr["spec"]["request"]
        .as_str()
        .and_then(|b64| base64::engine::general_purpose::STANDARD.decode(b64).ok())
        .unwrap_or_default()
}

/// The usages a CSR asks for.
pub fn usages(csr: &Value) -> Vec<String> {
    csr["spec"]["usages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|u| u.as_str().map(str::to_owned))
        .collect()
}

/// The conditions of type `kind` of a CSR.
pub fn conditions<'a>(csr: &'a Value, kind: &str) -> Vec<&'a Value> {
    csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["type"] == kind)
        .collect()
}

/// Whether a CSR has a condition of type `kind`.
pub fn has_condition(csr: &Value, kind: &str) -> bool {
    !conditions(csr, kind).is_empty()
}

/// `PrepareForCreate`: the requester is who authenticated, whatever the body says; status
/// starts empty.
pub fn prepare_create(csr: &mut Value, user: &UserInfo) {
    let spec = &mut csr["spec"];
    spec["username"] = json!(user.name);
    spec["uid"] = json!(user.uid);
    spec["groups"] = json!(user.groups);
    spec["extra"] = json!(user.extra);
    for (field, empty) in [
        ("uid", user.uid.is_empty()),
        ("extra", user.extra.is_empty()),
    ] {
        if empty && let Some(spec) = spec.as_object_mut() {
            spec.remove(field);
        }
    }
    csr["status"] = json!({});
}

/// Validation of a CSR on create (`old` is `None`) or on an update through `sub`.
pub fn validate(csr: &Value, old: Option<&Value>, sub: Option<&str>) -> ErrorList {
    let mut errors = ErrorList::new();
    let spec = &csr["spec"];
    if let Err(e) = parse_request(&request_pem(csr)) {
        errors.push(FieldError::invalid("spec.request", "[]byte{...}", e));
    }
    let usages = usages(csr);
    if usages.is_empty() {
        errors.push(FieldError::required("spec.usages"));
    }
    for (i, usage) in usages.iter().enumerate() {
        let path = format!("spec.usages[{i}]");
        if !KNOWN_USAGES.contains(&usage.as_str()) {
            errors.push(FieldError::not_supported(
                path.clone(),
                usage.as_str(),
                KNOWN_USAGES,
            ));
        }
        if usages[..i].contains(usage) {
            errors.push(FieldError::duplicate(path, usage.as_str()));
        }
    }
    errors.extend(validate_signer_name(
        spec["signerName"].as_str().unwrap_or_default(),
    ));
    if let Some(seconds) = spec["expirationSeconds"].as_i64()
        && seconds < 600
    {
        errors.push(FieldError::invalid(
            "spec.expirationSeconds",
            seconds,
            "may not specify a duration less than 600 seconds (10 minutes)",
        ));
    }
    errors.extend(validate_conditions(csr));
    if let Some(certificate) = csr["status"]["certificate"].as_str()
        && old.is_none_or(|o| o["status"]["certificate"].as_str() != Some(certificate))
        && let Err(e) = validate_certificate(certificate)
    {
        errors.push(FieldError::invalid(
            "status.certificate",
            "<certificate data>",
            e,
        ));
    }
    if let Some(old) = old {
        errors.extend(validate_transition(csr, old, sub));
    }
    errors
}

/// `ValidateSignerName`: `example.com/signer-name`.
fn validate_signer_name(name: &str) -> ErrorList {
    const PATH: &str = "spec.signerName";
    if name.is_empty() {
        return vec![FieldError::required(PATH)];
    }
    let shape = "must be a fully qualified domain and path of the form 'example.com/signer-name'";
    let Some((domain, path)) = name.split_once('/') else {
        return vec![FieldError::invalid(PATH, name, shape)];
    };
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if domain.len() > 253 || !domain.contains('.') || !domain.split('.').all(label_ok) {
        return vec![FieldError::invalid(
            PATH,
            name,
            "should be a domain with at least two segments separated by dots",
        )];
    }
    let path_ok = path.split('/').all(|segment| {
        !segment.is_empty()
            && segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    });
    if !path_ok {
        return vec![FieldError::invalid(
            PATH,
            name,
            "validating label \"".to_owned()
                + path
                + "\": a qualified name must consist of alphanumeric characters, '-', '_' or '.'",
        )];
    }
    Vec::new()
}

/// `validateConditions`: Approved, Denied and Failed may only be `True`; Approved and Denied
/// exclude each other; one condition per type.
fn validate_conditions(csr: &Value) -> ErrorList {
    let mut errors = ErrorList::new();
    let (mut approved, mut denied) = (false, false);
    let mut seen: Vec<&str> = Vec::new();
    for (i, c) in csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let kind = c["type"].as_str().unwrap_or_default();
        let path = format!("status.conditions[{i}]");
        if kind.is_empty() {
            errors.push(FieldError::required(format!("{path}.type")));
        }
        let allowed: &[&str] = if matches!(kind, "Approved" | "Denied" | "Failed") {
            &["True"]
        } else {
            &["False", "True", "Unknown"]
        };
        match c["status"].as_str().unwrap_or_default() {
            "" => errors.push(FieldError::required(format!("{path}.status"))),
            s if !allowed.contains(&s) => errors.push(FieldError::not_supported(
                format!("{path}.status"),
                s,
                allowed,
            )),
            _ => {}
        }
        approved |= kind == "Approved";
        denied |= kind == "Denied";
        if approved && denied && matches!(kind, "Approved" | "Denied") {
            errors.push(FieldError::invalid(
                "status.conditions",
                kind,
                "Approved and Denied conditions are mutually exclusive",
            ));
        }
        if seen.contains(&kind) {
            errors.push(FieldError::duplicate(format!("{path}.type"), kind));
        }
        seen.push(kind);
    }
    errors
}

/// `validateCertificate`: one or more CERTIFICATE blocks.
fn validate_certificate(pem_text: &str) -> Result<(), String> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(pem_text)
        .map_err(|e| e.to_string())?;
    let mut found = 0;
    for item in rustls_pemfile::read_all(&mut bytes.as_slice()) {
        match item {
            Ok(rustls_pemfile::Item::X509Certificate(der)) => {
                x509_parser::parse_x509_certificate(&der).map_err(|e| e.to_string())?;
                found += 1;
            }
            Ok(_) => return Err("only CERTIFICATE PEM blocks are allowed".to_owned()),
            Err(e) => return Err(e.to_string()),
        }
    }
    if found == 0 {
        return Err("must contain at least one CERTIFICATE PEM block".to_owned());
    }
    Ok(())
}

/// What an update through `sub` may not do (`validateCertificateSigningRequestUpdate`).
fn validate_transition(new: &Value, old: &Value, sub: Option<&str>) -> ErrorList {
    let mut errors = ErrorList::new();
    for kind in ["Approved", "Denied", "Failed"] {
        if conditions(new, kind).len() < conditions(old, kind).len() {
            errors.push(FieldError::forbidden(
                "status.conditions",
                format!("updates may not remove a condition of type {kind:?}"),
            ));
        }
    }
    if sub != Some("approval") {
        for kind in ["Approved", "Denied"] {
            let (before, after) = (conditions(old, kind), conditions(new, kind));
            if after.len() > before.len() {
                errors.push(FieldError::forbidden(
                    "status.conditions",
                    format!("updates may not add a condition of type {kind:?}"),
                ));
            } else if after.len() == before.len() && after != before {
                errors.push(FieldError::forbidden(
                    "status.conditions",
                    format!("updates may not modify a condition of type {kind:?}"),
                ));
            }
        }
    }
    let (before, after) = (&old["status"]["certificate"], &new["status"]["certificate"]);
    if before != after {
        if sub != Some("status") {
            errors.push(FieldError::forbidden(
                "status.certificate",
                "updates may not set certificate content",
            ));
        } else if before.as_str().is_some_and(|c| !c.is_empty()) {
            errors.push(FieldError::forbidden(
                "status.certificate",
                "updates may not modify existing certificate content",
            ));
        }
    }
    errors
}

/// The admission plugins on a CSR write by `user` through `sub` (`old`: the stored CSR on
/// updates).
pub fn admit(
    authz: &Authz,
    user: &UserInfo,
    sub: Option<&str>,
    csr: &Value,
    old: Option<&Value>,
) -> Result<(), ApiError> {
    let signer = csr["spec"]["signerName"].as_str().unwrap_or_default();
    let name = csr["metadata"]["name"].as_str().unwrap_or_default();
    match (old, sub) {
        // CertificateSubjectRestriction.
        (None, _) if signer == KUBE_APISERVER_CLIENT => {
            let request = parse_request(&request_pem(csr)).unwrap_or_default();
            if request.organizations.iter().any(|o| o == "system:masters") {
                return Err(forbidden(
                    name,
                    &format!("use of {signer} signer with system:masters group is not allowed"),
                ));
            }
            Ok(())
        }
        // CertificateApproval: any write of the approval subresource.
        (Some(_), Some("approval")) if !may_act_for_signer(authz, user, "approve", signer) => {
            Err(forbidden(
                name,
                &format!("user not permitted to approve requests with signerName {signer:?}"),
            ))
        }
        // CertificateSigning: a status write that changes the certificate.
        (Some(old), Some("status"))
            if old["status"]["certificate"] != csr["status"]["certificate"]
                && !may_act_for_signer(authz, user, "sign", signer) =>
        {
            Err(forbidden(
                name,
                &format!("user not permitted to sign requests with signerName {signer:?}"),
            ))
        }
        _ => Ok(()),
    }
}

/// `certificates.IsAuthorizedForSignerName`: `verb` on `signers` named after the signer or
/// after its domain with `/*`.
pub fn may_act_for_signer(authz: &Authz, user: &UserInfo, verb: &str, signer: &str) -> bool {
    let mut names = vec![signer.to_owned()];
    if let Some((domain, _)) = signer.split_once('/') {
        names.push(format!("{domain}/*"));
    }
    names.iter().any(|name| {
        let info = RequestInfo {
            is_resource_request: true,
            verb: verb.to_owned(),
            api_group: "certificates.k8s.io".to_owned(),
            api_version: "*".to_owned(),
            resource: "signers".to_owned(),
            name: name.clone(),
            ..RequestInfo::default()
        };
        authz.decide(user, &info).is_ok()
    })
}

fn forbidden(name: &str, why: &str) -> ApiError {
    let mut error = ApiError::forbidden(format!(
        "certificatesigningrequests.certificates.k8s.io {name:?} is forbidden: {why}"
    ));
    error.details = Some(json!({
        "name": name, "group": "certificates.k8s.io", "kind": "certificatesigningrequests",
    }));
    error
}

/// kubectl's CONDITION column (`printers.go`): `Approved,Issued`, `Denied`, `Pending`, …
pub fn condition_summary(csr: &Value) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in csr["status"]["conditions"].as_array().into_iter().flatten() {
        if let Some(kind) = c["type"].as_str()
            && matches!(kind, "Approved" | "Denied" | "Failed")
            && c["status"] != "False"
            && !parts.contains(&kind)
        {
            parts.push(kind);
        }
    }
    if csr["status"]["certificate"]
        .as_str()
        .is_some_and(|c| !c.is_empty())
    {
        parts.push("Issued");
    }
    if parts.is_empty() {
        "Pending".to_owned()
    } else {
        parts.join(",")
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A CSR object for `cn` in `orgs`, with `dns`/`ips` SANs, for `signer`.
    pub(crate) fn csr(
        cn: &str,
        orgs: &[&str],
        dns: &[&str],
        ips: &[IpAddr],
        signer: &str,
        usages: &[&str],
    ) -> Value {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params =
            rcgen::CertificateParams::new(dns.iter().map(|d| (*d).to_owned()).collect::<Vec<_>>())
                .unwrap();
        for ip in ips {
            params
                .subject_alt_names
                .push(rcgen::SanType::IpAddress(*ip));
        }
        params.distinguished_name = rcgen::DistinguishedName::new();
        for o in orgs {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, *o);
        }
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, cn);
        let pem = params.serialize_request(&key).unwrap().pem().unwrap();
        json!({
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": "req"},
            "spec": {
                "request": base64::engine::general_purpose::STANDARD.encode(pem),
                "signerName": signer,
                "usages": usages,
            },
        })
    }

    fn paths(errors: &ErrorList) -> Vec<String> {
        errors.iter().map(|e| e.to_string()).collect()
    }

    #[test]
    fn a_well_formed_request_parses_with_its_subject_and_sans() {
        let ip: IpAddr = "10.0.0.7".parse().unwrap();
        let c = csr(
            "system:node:n1",
            &["system:nodes"],
            &["n1"],
            &[ip],
            KUBELET_SERVING,
            &["digital signature", "server auth"],
        );
        let request = parse_request(&request_pem(&c)).unwrap();
        assert_eq!(request.common_name, "system:node:n1");
        assert_eq!(request.organizations, ["system:nodes"]);
        assert_eq!(request.dns_names, ["n1"]);
        assert_eq!(request.ip_addresses, [ip]);
        assert!(validate(&c, None, None).is_empty());
    }

    #[test]
    fn garbage_requests_unknown_usages_and_bad_signers_are_invalid() {
        let mut c = csr("u", &[], &[], &[], "example.com/x", &["client auth"]);
        c["spec"]["request"] = json!(
            base64::engine::general_purpose::STANDARD
                .encode("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
        );
        c["spec"]["usages"] = json!(["client auth", "client auth", "flying"]);
        c["spec"]["signerName"] = json!("nodomain");
        c["spec"]["expirationSeconds"] = json!(60);
        let errors = paths(&validate(&c, None, None));
        assert!(
            errors.iter().any(|e| e.contains(
                "spec.request: Invalid value: \"[]byte{...}\": PEM block type must be CERTIFICATE REQUEST"
            )),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.usages[1]: Duplicate value"))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.usages[2]: Unsupported value: \"flying\""))
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("spec.signerName: Invalid value: \"nodomain\""))
        );
        assert!(errors.iter().any(|e| e.contains("less than 600 seconds")));
        c["spec"]["usages"] = json!([]);
        c["spec"]["signerName"] = json!("");
        let errors = paths(&validate(&c, None, None));
        assert!(
            errors.contains(&"spec.usages: Required value".to_owned()),
            "{errors:?}"
        );
        assert!(errors.contains(&"spec.signerName: Required value".to_owned()));
    }

    #[test]
    fn a_tampered_request_fails_its_signature_check() {
        let c = csr("u", &[], &[], &[], KUBE_APISERVER_CLIENT, &["client auth"]);
        let pem = String::from_utf8(request_pem(&c)).unwrap();
        let (_, mut der) = pem_block(pem.as_bytes()).unwrap();
        // The last byte is in the signature.
        let last = der.len() - 1;
        der[last] ^= 0xff;
        let b64 = base64::engine::general_purpose::STANDARD.encode(&der);
        let tampered = format!(
            "-----BEGIN CERTIFICATE REQUEST-----\n{b64}\n-----END CERTIFICATE REQUEST-----\n"
        );
        assert!(parse_request(tampered.as_bytes()).is_err());
    }

    #[test]
    fn the_requester_is_who_authenticated_not_what_the_body_says() {
        let mut c = csr("u", &[], &[], &[], KUBE_APISERVER_CLIENT, &["client auth"]);
        c["spec"]["username"] = json!("admin");
        c["spec"]["groups"] = json!(["system:masters"]);
        c["status"] = json!({"certificate": "forged"});
        let user = UserInfo {
            name: "system:bootstrap:abcdef".into(),
            groups: vec!["system:bootstrappers".into(), "system:authenticated".into()],
            ..UserInfo::default()
        };
        prepare_create(&mut c, &user);
        assert_eq!(c["spec"]["username"], "system:bootstrap:abcdef");
        assert_eq!(c["spec"]["groups"], json!(user.groups));
        assert_eq!(c["status"], json!({}));
    }

    /// `c` approved.
    pub(crate) fn approved(mut c: Value) -> Value {
        c["status"]["conditions"] = json!([{"type": "Approved", "status": "True", "reason": "R"}]);
        c
    }

    fn request_of(c: &Value) -> Request {
        parse_request(&request_pem(c)).unwrap()
    }

    #[test]
    fn kubelet_client_requests_are_a_node_identity_and_nothing_more() {
        let usages = |u: &[&str]| u.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        let client = usages(&["digital signature", "client auth"]);
        let good = csr(
            "system:node:n1",
            &[NODES_GROUP],
            &[],
            &[],
            KUBE_APISERVER_CLIENT_KUBELET,
            &[],
        );
        assert_eq!(validate_kubelet_client(&request_of(&good), &client), Ok(()));
        let rsa = usages(&["key encipherment", "digital signature", "client auth"]);
        assert_eq!(validate_kubelet_client(&request_of(&good), &rsa), Ok(()));
        for (bad, why) in [
            (
                csr("system:node:n1", &["system:masters"], &[], &[], "", &[]),
                "organization",
            ),
            (
                csr(
                    "system:node:n1",
                    &[NODES_GROUP, "system:masters"],
                    &[],
                    &[],
                    "",
                    &[],
                ),
                "organization",
            ),
            (
                csr("admin", &[NODES_GROUP], &[], &[], "", &[]),
                "common name",
            ),
            (
                csr("system:node:n1", &[NODES_GROUP], &["n1"], &[], "", &[]),
                "dnsNames",
            ),
        ] {
            let e = validate_kubelet_client(&request_of(&bad), &client).unwrap_err();
            assert!(e.contains(why), "{e}");
        }
        let serving = usages(&["digital signature", "server auth"]);
        assert!(validate_kubelet_client(&request_of(&good), &serving).is_err());
    }

    #[test]
    fn kubelet_serving_requests_need_a_san_and_serving_usages() {
        let serving: Vec<String> = vec!["digital signature".into(), "server auth".into()];
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let good = csr(
            "system:node:n1",
            &[NODES_GROUP],
            &["n1"],
            &[ip],
            KUBELET_SERVING,
            &[],
        );
        assert_eq!(
            validate_kubelet_serving(&request_of(&good), &serving),
            Ok(())
        );
        let no_san = csr(
            "system:node:n1",
            &[NODES_GROUP],
            &[],
            &[],
            KUBELET_SERVING,
            &[],
        );
        assert!(validate_kubelet_serving(&request_of(&no_san), &serving).is_err());
        let client: Vec<String> = vec!["digital signature".into(), "client auth".into()];
        assert!(validate_kubelet_serving(&request_of(&good), &client).is_err());
        assert!(validate_apiserver_client(&client).is_ok());
        assert!(validate_apiserver_client(&serving).is_err());
        assert_eq!(node_name("system:node:n1"), Some("n1"));
        assert_eq!(node_name("system:node:"), None);
    }

    #[test]
    fn condition_column_reads_like_kubectl() {
        let c = csr("u", &[], &[], &[], KUBE_APISERVER_CLIENT, &["client auth"]);
        assert_eq!(condition_summary(&c), "Pending");
        let mut a = approved(c);
        assert_eq!(condition_summary(&a), "Approved");
        a["status"]["certificate"] = json!("eA==");
        assert_eq!(condition_summary(&a), "Approved,Issued");
    }

    #[test]
    fn nobody_gets_system_masters_from_the_client_signer_and_approving_needs_the_signer_verb() {
        let authz = Authz::default();
        let user = UserInfo {
            name: "jane".into(),
            groups: vec!["system:authenticated".into()],
            ..UserInfo::default()
        };
        let masters = csr(
            "x",
            &["system:masters"],
            &[],
            &[],
            KUBE_APISERVER_CLIENT,
            &["client auth"],
        );
        let e = admit(&authz, &UserInfo::admin(), None, &masters, None).unwrap_err();
        assert_eq!(e.code, 403);
        assert!(
            e.message
                .contains("with system:masters group is not allowed")
        );
        let plain = csr("x", &[], &[], &[], KUBE_APISERVER_CLIENT, &["client auth"]);
        let e = admit(&authz, &user, Some("approval"), &plain, Some(&plain)).unwrap_err();
        assert!(
            e.message.ends_with(
                "user not permitted to approve requests with signerName \"kubernetes.io/kube-apiserver-client\""
            ),
            "{}",
            e.message
        );
        assert!(
            admit(
                &authz,
                &UserInfo::admin(),
                Some("approval"),
                &plain,
                Some(&plain)
            )
            .is_ok()
        );
        let mut signed = plain.clone();
        signed["status"]["certificate"] = json!("eA==");
        let e = admit(&authz, &user, Some("status"), &signed, Some(&plain)).unwrap_err();
        assert!(e.message.contains("user not permitted to sign requests"));
        // A status write that leaves the certificate alone needs no signer permission.
        assert!(admit(&authz, &user, Some("status"), &plain, Some(&plain)).is_ok());
    }
}
