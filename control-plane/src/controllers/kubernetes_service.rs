//! `default/kubernetes`: the Service through which pods reach the API server, at the service
//! network's first address (10.96.0.1:443) as in every Kubernetes cluster, and its Endpoints:
//! every live control plane's advertised address (the EndpointSlice follows through
//! [`endpoints_mirror`](super::endpoints_mirror)).
//!
//! Every control plane, leading or not, keeps a Lease of its own, `kube-system/apiserver-<id>`,
//! labelled as kube-apiserver's identity leases and carrying its advertised address, renewed
//! every [`RENEW`]; and each puts the Endpoints to the addresses of the unexpired leases, as
//! kube-apiserver's lease endpoint reconciler does. A control plane that dies drops out of the
//! Endpoints within [`LEASE_SECONDS`], so pods reach the live ones. Each pass also puts back a
//! deleted or edited Service or Endpoints.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::{resource, target};
use crate::{
    apiserver::{Api, error::ApiError, objects, resources::ResourceType},
    lease::{held_until, micro_time},
};

/// The Service's address: the first of the service network.
pub const SERVICE_IP: &str = "10.96.0.1";
const NAMESPACE: &str = "default";
const NAME: &str = "kubernetes";
/// The label of kube-apiserver's identity leases, and its value.
pub const IDENTITY_LABEL: &str = "apiserver.kubernetes.io/identity";
const IDENTITY_VALUE: &str = "kube-apiserver";
/// Where a control plane's lease says where it serves (`ip:port`).
pub const ADDRESS_ANNOTATION: &str = "apiary.dev/advertise-address";
const LEASE_NAMESPACE: &str = "kube-system";
/// How often each control plane renews its lease and reconciles.
pub const RENEW: Duration = Duration::from_secs(3);
/// A lease unrenewed this long takes its control plane out of the Endpoints.
pub const LEASE_SECONDS: i64 = 10;
/// Leases expired this long are deleted (a control plane's identity changes with its pid).
const FORGET_SECONDS: i64 = 600;

/// The Service, its HTTPS port forwarded to `port`.
pub fn service(port: u16) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": NAME,
            "namespace": NAMESPACE,
            "labels": {"component": "apiserver", "provider": "kubernetes"},
        },
        "spec": {
            "clusterIP": SERVICE_IP,
            "type": "ClusterIP",
            "sessionAffinity": "None",
            "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": port}],
        },
    })
}

/// Its Endpoints: `addresses`, one subset per port (control planes normally share one).
pub fn endpoints(addresses: &[SocketAddr]) -> Value {
    let mut by_port: BTreeMap<u16, Vec<String>> = BTreeMap::new();
    for address in addresses {
        by_port
            .entry(address.port())
            .or_default()
            .push(address.ip().to_string());
    }
    let subsets: Vec<Value> = by_port
        .into_iter()
        .map(|(port, mut ips)| {
            ips.sort();
            ips.dedup();
            json!({
                "addresses": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>(),
                "ports": [{"name": "https", "port": port, "protocol": "TCP"}],
            })
        })
        .collect();
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "subsets": subsets,
    })
}

/// The name of the lease of the control plane `identity`.
pub fn lease_name(identity: &str) -> String {
    let id: String = identity
        .to_ascii_lowercase()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' {
                c
            } else {
                '-'
            }
        })
        .collect();
    let id = id.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    let mut name = format!("apiserver-{id}");
    name.truncate(253);
    name.trim_end_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_owned()
}

/// Keeps this control plane's lease, the Service and its Endpoints while there is an address
/// pods can reach (`advertised`), until `shutdown` turns true.
pub async fn run(
    api: Arc<Api>,
    identity: String,
    advertised: Option<SocketAddr>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(advertised) = advertised else {
        tracing::warn!("no address to advertise: default/kubernetes gets no endpoints from here");
        return;
    };
    loop {
        if let Err(e) = reconcile(&api, &identity, advertised, chrono::Utc::now()).await {
            tracing::warn!(error = %e.message, "reconciling default/kubernetes");
        }
        tokio::select! {
            () = tokio::time::sleep(RENEW) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass at `now`: renews this control plane's lease, then puts the Service and Endpoints
/// to the live control planes.
pub async fn reconcile(
    api: &Arc<Api>,
    identity: &str,
    advertised: SocketAddr,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApiError> {
    renew(api, identity, advertised, now).await?;
    let mut live = live_addresses(api, now).await?;
    if !live.contains(&advertised) {
        // Our own renewal is what this pass is sure of, whatever the clocks say.
        live.push(advertised);
    }
    live.sort();
    let services = resource(api, "", "v1", "services");
    // Every control plane picks the same port: the first live address's.
    ensure(api, services, service(live[0].port()), "/spec/ports").await?;
    let endpoints_type = resource(api, "", "v1", "endpoints");
    ensure(api, endpoints_type, endpoints(&live), "/subsets").await
}

/// Creates or renews `kube-system/apiserver-<identity>`.
async fn renew(
    api: &Arc<Api>,
    identity: &str,
    advertised: SocketAddr,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<(), ApiError> {
    let leases = resource(api, "coordination.k8s.io", "v1", "leases");
    let name = lease_name(identity);
    let spec = json!({
        "holderIdentity": identity,
        "leaseDurationSeconds": LEASE_SECONDS,
        "renewTime": micro_time(now),
    });
    match objects::get(api, leases, Some(LEASE_NAMESPACE), &name).await {
        Ok(mut lease) => {
            lease["spec"]["holderIdentity"] = spec["holderIdentity"].clone();
            lease["spec"]["leaseDurationSeconds"] = spec["leaseDurationSeconds"].clone();
            lease["spec"]["renewTime"] = spec["renewTime"].clone();
            lease["metadata"]["labels"][IDENTITY_LABEL] = json!(IDENTITY_VALUE);
            lease["metadata"]["annotations"][ADDRESS_ANNOTATION] = json!(advertised.to_string());
            objects::update(
                api,
                &target(leases, LEASE_NAMESPACE, Some(&name)),
                &name,
                lease,
            )
            .await?;
        }
        Err(e) if e.reason == "NotFound" => {
            let mut lease = json!({
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {
                    "name": name,
                    "namespace": LEASE_NAMESPACE,
                    "labels": {IDENTITY_LABEL: IDENTITY_VALUE},
                    "annotations": {ADDRESS_ANNOTATION: advertised.to_string()},
                },
                "spec": spec,
            });
            lease["spec"]["acquireTime"] = json!(micro_time(now));
            objects::create(api, &target(leases, LEASE_NAMESPACE, None), lease).await?;
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

/// The addresses of the control planes whose leases are unexpired at `now`; deletes leases
/// long expired.
async fn live_addresses(
    api: &Arc<Api>,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<Vec<SocketAddr>, ApiError> {
    let leases = resource(api, "coordination.k8s.io", "v1", "leases");
    let query = [(
        "labelSelector".to_owned(),
        format!("{IDENTITY_LABEL}={IDENTITY_VALUE}"),
    )]
    .into_iter()
    .collect();
    let listing = objects::list(api, &target(leases, LEASE_NAMESPACE, None), &query).await?;
    let mut live = Vec::new();
    for lease in listing["items"].as_array().into_iter().flatten() {
        let Some(expires) = held_until(lease, LEASE_SECONDS) else {
            continue;
        };
        if expires > now {
            if let Some(address) = lease["metadata"]["annotations"][ADDRESS_ANNOTATION]
                .as_str()
                .and_then(|a| a.parse().ok())
            {
                live.push(address);
            }
        } else if expires + chrono::Duration::seconds(FORGET_SECONDS) < now
            && let Some(name) = lease["metadata"]["name"].as_str()
        {
            // Another control plane may have deleted it first.
            let _ = objects::delete(
                api,
                &target(leases, LEASE_NAMESPACE, Some(name)),
                name,
                &Default::default(),
            )
            .await;
        }
    }
    Ok(live)
}

/// Creates `wanted` (an object named [`NAME`] in [`NAMESPACE`]) if it is missing, or puts back
/// the part of it at `pointer` if the stored one differs there.
async fn ensure(
    api: &Arc<Api>,
    resource: &'static ResourceType,
    wanted: Value,
    pointer: &str,
) -> Result<(), ApiError> {
    let kind = resource.kind;
    match objects::get(api, resource, Some(NAMESPACE), NAME).await {
        Ok(mut current) => {
            let part = wanted.pointer(pointer).cloned().unwrap_or_default();
            if current.pointer(pointer) != Some(&part) {
                let slot = pointer
                    .split('/')
                    .skip(1)
                    .fold(&mut current, |at, key| &mut at[key]);
                *slot = part;
                objects::update(api, &target(resource, NAMESPACE, Some(NAME)), NAME, current)
                    .await?;
                tracing::info!(kind, "default/kubernetes put back: {pointer}");
            }
        }
        Err(e) if e.reason == "NotFound" => {
            objects::create(api, &target(resource, NAMESPACE, None), wanted).await?;
            tracing::info!(kind, "default/kubernetes created");
        }
        Err(e) => return Err(e),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_forwards_https_to_the_api_port() {
        let s = service(6443);
        assert_eq!(s["spec"]["clusterIP"], SERVICE_IP);
        assert_eq!(s["spec"]["ports"][0]["port"], 443);
        assert_eq!(s["spec"]["ports"][0]["targetPort"], 6443);
        let e = endpoints(&["10.0.0.5:6443".parse().unwrap()]);
        assert_eq!(e["subsets"][0]["addresses"][0]["ip"], "10.0.0.5");
        assert_eq!(e["subsets"][0]["ports"][0]["port"], 6443);
    }

    #[test]
    fn endpoints_group_control_planes_by_port() {
        let e = endpoints(&[
            "10.0.0.7:6443".parse().unwrap(),
            "10.0.0.5:6443".parse().unwrap(),
            "10.0.0.6:7443".parse().unwrap(),
        ]);
        assert_eq!(
            e["subsets"],
            json!([
                {"addresses": [{"ip": "10.0.0.5"}, {"ip": "10.0.0.7"}],
                 "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]},
                {"addresses": [{"ip": "10.0.0.6"}],
                 "ports": [{"name": "https", "port": 7443, "protocol": "TCP"}]},
            ])
        );
    }

    #[test]
    fn lease_names_are_valid_object_names() {
        assert_eq!(lease_name("cp0"), "apiserver-cp0");
        assert_eq!(lease_name("Host_A-1234"), "apiserver-host-a-1234");
        assert_eq!(lease_name(&"x".repeat(300)).len(), 253);
    }

    #[tokio::test]
    async fn every_live_control_plane_is_an_endpoint_and_a_silent_one_drops_out() {
        let (_dir, api) = crate::testing::api().await;
        let api = Arc::new(api);
        crate::apiserver::bootstrap(&api).await.unwrap();
        let services = resource(&api, "", "v1", "services");
        let endpoints_type = resource(&api, "", "v1", "endpoints");
        let get = |r| {
            let api = Arc::clone(&api);
            async move { objects::get(&api, r, Some(NAMESPACE), NAME).await.unwrap() }
        };
        let ips = |e: &Value| -> Vec<String> {
            e["subsets"][0]["addresses"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|a| a["ip"].as_str().unwrap().to_owned())
                .collect()
        };
        let t0 = chrono::Utc::now();
        let (a, b) = (
            "10.0.0.6:6443".parse().unwrap(),
            "10.0.0.5:6443".parse().unwrap(),
        );

        reconcile(&api, "cp-a", a, t0).await.unwrap();
        let created = get(services).await;
        assert_eq!(created["spec"]["clusterIP"], SERVICE_IP);
        assert_eq!(created["spec"]["ports"][0]["targetPort"], 6443);
        assert_eq!(ips(&get(endpoints_type).await), ["10.0.0.6"]);

        // A second control plane joins: both serve.
        reconcile(&api, "cp-b", b, t0).await.unwrap();
        assert_eq!(ips(&get(endpoints_type).await), ["10.0.0.5", "10.0.0.6"]);
        let lease = objects::get(
            &api,
            resource(&api, "coordination.k8s.io", "v1", "leases"),
            Some(LEASE_NAMESPACE),
            "apiserver-cp-b",
        )
        .await
        .unwrap();
        assert_eq!(lease["metadata"]["labels"][IDENTITY_LABEL], IDENTITY_VALUE);
        assert_eq!(lease["spec"]["holderIdentity"], "cp-b");

        // cp-b stops renewing: past its lease, cp-a's pass takes it out.
        let later = t0 + chrono::Duration::seconds(LEASE_SECONDS + 1);
        reconcile(&api, "cp-a", a, later).await.unwrap();
        assert_eq!(ips(&get(endpoints_type).await), ["10.0.0.6"]);

        // An edited Endpoints is put back; the Service keeps its identity.
        let mut edited = get(endpoints_type).await;
        edited["subsets"] = json!([]);
        objects::update(
            &api,
            &target(endpoints_type, NAMESPACE, Some(NAME)),
            NAME,
            edited,
        )
        .await
        .unwrap();
        reconcile(&api, "cp-a", a, later).await.unwrap();
        assert_eq!(ips(&get(endpoints_type).await), ["10.0.0.6"]);
        assert_eq!(
            get(services).await["metadata"]["uid"],
            created["metadata"]["uid"]
        );

        // Long expired leases are forgotten.
        let much_later = later + chrono::Duration::seconds(FORGET_SECONDS + LEASE_SECONDS);
        reconcile(&api, "cp-a", a, much_later).await.unwrap();
        let gone = objects::get(
            &api,
            resource(&api, "coordination.k8s.io", "v1", "leases"),
            Some(LEASE_NAMESPACE),
            "apiserver-cp-b",
        )
        .await;
        assert!(gone.is_err());
    }
}
