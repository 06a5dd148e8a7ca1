//! `default/kubernetes`: the Service through which pods reach the API server, at the service
//! network's first address (10.96.0.1:443) as in every Kubernetes cluster, and its Endpoints:
//! the leading control plane's advertised address and port (the EndpointSlice follows through
//! [`endpoints_mirror`](super::endpoints_mirror)). Reconciled when leadership starts and every
//! [`RESYNC`], so a deleted or edited Service or Endpoints comes back; control planes sharing a
//! store serve the same API, so the leader's one address is enough.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use serde_json::{Value, json};
use tokio::sync::watch;

use super::{resource, target};
use crate::apiserver::{Api, error::ApiError, objects, resources::ResourceType};

/// The Service's address: the first of the service network.
pub const SERVICE_IP: &str = "10.96.0.1";
const NAMESPACE: &str = "default";
const NAME: &str = "kubernetes";
const RESYNC: Duration = Duration::from_secs(30);

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

/// Its Endpoints: `advertised`.
pub fn endpoints(advertised: SocketAddr) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Endpoints",
        "metadata": {"name": NAME, "namespace": NAMESPACE},
        "subsets": [{
            "addresses": [{"ip": advertised.ip().to_string()}],
            "ports": [{"name": "https", "port": advertised.port(), "protocol": "TCP"}],
        }],
    })
}

/// Keeps the Service and, when there is an address pods can reach (`advertised`), its
/// Endpoints, until `shutdown` turns true.
pub async fn run(
    api: Arc<Api>,
    advertised: Option<SocketAddr>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Some(advertised) = advertised else {
        tracing::warn!("no address to advertise: default/kubernetes gets no endpoints");
        return;
    };
    loop {
        if let Err(e) = reconcile(&api, advertised).await {
            tracing::warn!(error = %e.message, "reconciling default/kubernetes");
        }
        tokio::select! {
            () = tokio::time::sleep(RESYNC) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}

/// One pass: creates what is missing, puts back what differs.
pub async fn reconcile(api: &Arc<Api>, advertised: SocketAddr) -> Result<(), ApiError> {
    let services = resource(api, "", "v1", "services");
    ensure(api, services, service(advertised.port()), "/spec/ports").await?;
    let endpoints_type = resource(api, "", "v1", "endpoints");
    ensure(api, endpoints_type, endpoints(advertised), "/subsets").await
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
        let e = endpoints("10.0.0.5:6443".parse().unwrap());
        assert_eq!(e["subsets"][0]["addresses"][0]["ip"], "10.0.0.5");
        assert_eq!(e["subsets"][0]["ports"][0]["port"], 6443);
    }

    #[tokio::test]
    async fn a_pass_creates_both_and_puts_back_what_was_changed() {
        let (_dir, api) = crate::testing::api().await;
        let api = Arc::new(api);
        crate::apiserver::bootstrap(&api).await.unwrap();
        let services = resource(&api, "", "v1", "services");
        let endpoints_type = resource(&api, "", "v1", "endpoints");
        let get = |r| {
            let api = Arc::clone(&api);
            async move { objects::get(&api, r, Some(NAMESPACE), NAME).await.unwrap() }
        };

        reconcile(&api, "10.0.0.5:6443".parse().unwrap())
            .await
            .unwrap();
        let created = get(services).await;
        assert_eq!(created["spec"]["clusterIP"], SERVICE_IP);
        assert_eq!(created["spec"]["ports"][0]["targetPort"], 6443);
        assert_eq!(
            get(endpoints_type).await["subsets"][0]["addresses"][0]["ip"],
            "10.0.0.5"
        );

        // Another leader, on another port: both are put back to it; the rest is kept.
        reconcile(&api, "10.0.0.6:7443".parse().unwrap())
            .await
            .unwrap();
        let updated = get(services).await;
        assert_eq!(updated["spec"]["ports"][0]["targetPort"], 7443);
        assert_eq!(updated["metadata"]["uid"], created["metadata"]["uid"]);
        let e = get(endpoints_type).await;
        assert_eq!(e["subsets"][0]["addresses"][0]["ip"], "10.0.0.6");
        assert_eq!(e["subsets"][0]["ports"][0]["port"], 7443);
    }
}
