//! Auto-approval of kubelet certificates, as kube-controller-manager's `csrapproving`
//! controller (`pkg/controller/certificates/approver/sarapprove.go`): a pending request for
//! the kubelet client signer is approved when its requester may, by a SubjectAccessReview,
//! `create certificatesigningrequests/nodeclient` (a new node, from its bootstrap token) or
//! `selfnodeclient` (a node renewing its own identity). Apiary also approves kubelet serving
//! certificates a node asks for itself whose SANs are only that node's name and addresses
//! (Kubernetes leaves those to an operator: Apiary's agents rotate them unattended).

use std::{net::IpAddr, sync::Arc};

use apiary_api::meta::ObjectRef;
use serde_json::{Value, json};
use tokio::sync::watch;

use super::{
    resource,
    runtime::{self, Action, Cache, Error, Reconciler},
};
use crate::apiserver::{
    Api,
    auth::UserInfo,
    authz::request_info::RequestInfo,
    certificates::{self as csr, Request},
    objects,
    path::Target,
};

const CONCURRENCY: usize = 2;
const RESYNC: std::time::Duration = std::time::Duration::from_secs(60);

/// Approves what it recognizes until `shutdown` turns true.
pub async fn run(api: Arc<Api>, shutdown: watch::Receiver<bool>) {
    let requests = Cache::new(resource(
        &api,
        "certificates.k8s.io",
        "v1",
        "certificatesigningrequests",
    ));
    let reconciler = Arc::new(Approver {
        api: Arc::clone(&api),
        requests: requests.clone(),
    });
    runtime::run_single(
        api,
        requests,
        |_| true,
        reconciler,
        CONCURRENCY,
        RESYNC,
        shutdown,
    )
    .await;
}

/// What a recognized request is, and what approving it takes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recognized {
    /// A node renewing its client certificate: `certificatesigningrequests/selfnodeclient`.
    SelfNodeClient,
    /// A new node's client certificate: `certificatesigningrequests/nodeclient`.
    NodeClient,
    /// A node's serving certificate for its own name and addresses.
    SelfNodeServing,
}

impl Recognized {
    fn message(self) -> &'static str {
        match self {
            Self::SelfNodeClient => {
                "Auto approving self kubelet client certificate after SubjectAccessReview."
            }
            Self::NodeClient => {
                "Auto approving kubelet client certificate after SubjectAccessReview."
            }
            Self::SelfNodeServing => {
                "Auto approving kubelet serving certificate: its SANs are the requesting node's own name and addresses."
            }
        }
    }
}

/// The recognizers that match `request` (a parsed `spec.request`) of `object`, in the order
/// Kubernetes tries them.
pub fn recognize(object: &Value, request: &Request) -> Vec<Recognized> {
    let signer = object["spec"]["signerName"].as_str().unwrap_or_default();
    let username = object["spec"]["username"].as_str().unwrap_or_default();
    let usages = csr::usages(object);
    let mut found = Vec::new();
    if signer == csr::KUBE_APISERVER_CLIENT_KUBELET
        && csr::validate_kubelet_client(request, &usages).is_ok()
    {
        if username == request.common_name {
            found.push(Recognized::SelfNodeClient);
        }
        found.push(Recognized::NodeClient);
    }
    if signer == csr::KUBELET_SERVING
        && csr::validate_kubelet_serving(request, &usages).is_ok()
        && username == request.common_name
        && requester(object)
            .groups
            .iter()
            .any(|g| g == csr::NODES_GROUP)
    {
        found.push(Recognized::SelfNodeServing);
    }
    found
}

/// Whether `request`'s SANs are all `node`'s: its name, and the addresses and host name of its
/// status.
pub fn sans_belong_to_node(request: &Request, node: &Value) -> bool {
    let name = node["metadata"]["name"].as_str().unwrap_or_default();
    let addresses: Vec<&str> = node["status"]["addresses"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["address"].as_str())
        .collect();
    request
        .dns_names
        .iter()
        .all(|d| d == name || addresses.contains(&d.as_str()))
        && request.ip_addresses.iter().all(|ip| {
            addresses
                .iter()
                .any(|a| a.parse::<IpAddr>().is_ok_and(|a| a == *ip))
        })
}

/// Who asked, as the server recorded it.
fn requester(object: &Value) -> UserInfo {
    let spec = &object["spec"];
    UserInfo {
        name: spec["username"].as_str().unwrap_or_default().to_owned(),
        uid: spec["uid"].as_str().unwrap_or_default().to_owned(),
        groups: serde_json::from_value(spec["groups"].clone()).unwrap_or_default(),
        extra: serde_json::from_value(spec["extra"].clone()).unwrap_or_default(),
    }
}

struct Approver {
    api: Arc<Api>,
    requests: Cache,
}

impl Approver {
    /// The SubjectAccessReview of `sarapprove.go`'s `authorize`.
    fn may(&self, user: &UserInfo, subresource: &str) -> bool {
        let info = RequestInfo {
            is_resource_request: true,
            verb: "create".to_owned(),
            api_group: "certificates.k8s.io".to_owned(),
            api_version: "v1".to_owned(),
            resource: "certificatesigningrequests".to_owned(),
            subresource: subresource.to_owned(),
            ..RequestInfo::default()
        };
        self.api.authz.decide(user, &info).is_ok()
    }

    async fn approves(&self, object: &Value, recognized: Recognized, request: &Request) -> bool {
        let user = requester(object);
        match recognized {
            Recognized::SelfNodeClient => self.may(&user, "selfnodeclient"),
            Recognized::NodeClient => self.may(&user, "nodeclient"),
            Recognized::SelfNodeServing => {
                let Some(node) = csr::node_name(&request.common_name) else {
                    return false;
                };
                let nodes = resource(&self.api, "", "v1", "nodes");
                match objects::get(&self.api, nodes, None, node).await {
                    Ok(node) => sans_belong_to_node(request, &node),
                    Err(_) => false,
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl Reconciler for Approver {
    fn name(&self) -> &'static str {
        "csrapproving"
    }

    async fn reconcile(&self, key: &ObjectRef) -> runtime::Result<Action> {
        let Some(object) = self.requests.get("", &key.name) else {
            return Ok(Action::Done);
        };
        let issued = object["status"]["certificate"]
            .as_str()
            .is_some_and(|c| !c.is_empty());
        if issued
            || csr::has_condition(&object, "Approved")
            || csr::has_condition(&object, "Denied")
        {
            return Ok(Action::Done);
        }
        let Ok(request) = csr::parse_request(&csr::request_pem(&object)) else {
            return Ok(Action::Done);
        };
        let mut tried = Vec::new();
        for recognized in recognize(&object, &request) {
            tried.push(recognized);
            if !self.approves(&object, recognized, &request).await {
                continue;
            }
            let mut approved = (*object).clone();
            let conditions = &mut approved["status"]["conditions"];
            if !conditions.is_array() {
                *conditions = json!([]);
            }
            conditions.as_array_mut().expect("an array").push(json!({
                "type": "Approved", "status": "True", "reason": "AutoApproved",
                "message": recognized.message(),
            }));
            let target = Target {
                resource: self.requests.resource(),
                namespace: None,
                name: Some(key.name.clone()),
                subresource: Some("approval".to_owned()),
            };
            return match objects::update(&self.api, &target, &key.name, approved).await {
                Ok(_) => {
                    tracing::info!(csr = %key.name, ?recognized, "approved");
                    Ok(Action::Done)
                }
                Err(e) if e.reason == "NotFound" => Ok(Action::Done),
                Err(e) => Err(Error::api(format!("approving {}", key.name), &e)),
            };
        }
        if !tried.is_empty() {
            tracing::debug!(csr = %key.name, ?tried, "recognized but not approved");
        }
        Ok(Action::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::certificates::tests::csr as make;

    fn by(mut object: Value, user: &str, groups: &[&str]) -> Value {
        object["spec"]["username"] = json!(user);
        object["spec"]["groups"] = json!(groups);
        object
    }

    fn parsed(object: &Value) -> Request {
        csr::parse_request(&csr::request_pem(object)).unwrap()
    }

    const CLIENT: &[&str] = &["digital signature", "client auth"];
    const SERVING: &[&str] = &["digital signature", "server auth"];

    #[test]
    fn a_bootstrapper_asking_for_a_node_identity_is_a_nodeclient_request_and_a_node_renewing_is_selfnodeclient()
     {
        let request = make(
            "system:node:n1",
            &[csr::NODES_GROUP],
            &[],
            &[],
            csr::KUBE_APISERVER_CLIENT_KUBELET,
            CLIENT,
        );
        let bootstrap = by(
            request.clone(),
            "system:bootstrap:abcdef",
            &["system:bootstrappers"],
        );
        assert_eq!(
            recognize(&bootstrap, &parsed(&bootstrap)),
            [Recognized::NodeClient]
        );
        let renewal = by(request, "system:node:n1", &[csr::NODES_GROUP]);
        assert_eq!(
            recognize(&renewal, &parsed(&renewal)),
            [Recognized::SelfNodeClient, Recognized::NodeClient]
        );
        // Another signer, or a subject that is not a node, is not recognized at all.
        let other = by(
            make(
                "system:node:n1",
                &[csr::NODES_GROUP],
                &[],
                &[],
                csr::KUBE_APISERVER_CLIENT,
                CLIENT,
            ),
            "system:bootstrap:abcdef",
            &["system:bootstrappers"],
        );
        assert!(recognize(&other, &parsed(&other)).is_empty());
        let admin = by(
            make(
                "admin",
                &["system:masters"],
                &[],
                &[],
                csr::KUBE_APISERVER_CLIENT_KUBELET,
                CLIENT,
            ),
            "system:bootstrap:abcdef",
            &["system:bootstrappers"],
        );
        assert!(recognize(&admin, &parsed(&admin)).is_empty());
    }

    #[test]
    fn a_serving_request_is_recognized_only_from_the_node_it_names_and_for_its_own_addresses() {
        let ip: IpAddr = "10.0.0.5".parse().unwrap();
        let request = make(
            "system:node:n1",
            &[csr::NODES_GROUP],
            &["n1"],
            &[ip],
            csr::KUBELET_SERVING,
            SERVING,
        );
        let own = by(request.clone(), "system:node:n1", &[csr::NODES_GROUP]);
        assert_eq!(
            recognize(&own, &parsed(&own)),
            [Recognized::SelfNodeServing]
        );
        let other_node = by(request, "system:node:n2", &[csr::NODES_GROUP]);
        assert!(recognize(&other_node, &parsed(&other_node)).is_empty());
        let node = json!({"metadata": {"name": "n1"}, "status": {"addresses": [
            {"type": "InternalIP", "address": "10.0.0.5"}, {"type": "Hostname", "address": "n1"}]}});
        assert!(sans_belong_to_node(&parsed(&own), &node));
        let foreign = make(
            "system:node:n1",
            &[csr::NODES_GROUP],
            &["n1", "kubernetes.default.svc"],
            &[ip],
            csr::KUBELET_SERVING,
            SERVING,
        );
        assert!(!sans_belong_to_node(&parsed(&foreign), &node));
        let other_ip = make(
            "system:node:n1",
            &[csr::NODES_GROUP],
            &["n1"],
            &["10.0.0.6".parse().unwrap()],
            csr::KUBELET_SERVING,
            SERVING,
        );
        assert!(!sans_belong_to_node(&parsed(&other_ip), &node));
    }
}
