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
use crate::apiserver::{Api, error::ApiError, objects};

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
    let wanted = service(advertised.port());
    match objects::get(api, services, Some(NAMESPACE), NAME).await {
        Ok(mut current) => {
            if current["spec"]["ports"] != wanted["spec"]["ports"] {
                current["spec"]["ports"] = wanted["spec"]["ports"].clone();
                objects::update(api, &target(services, NAMESPACE, Some(NAME)), NAME, current)
                    .await?;
                tracing::info!(port = advertised.port(), "default/kubernetes ports updated");
            }
        }
        Err(e) if e.reason == "NotFound" => {
            objects::create(api, &target(services, NAMESPACE, None), wanted).await?;
            tracing::info!(ip = SERVICE_IP, "default/kubernetes created");
        }
        Err(e) => return Err(e),
    }
    let resource = resource(api, "", "v1", "endpoints");
    let wanted = endpoints(advertised);
    match objects::get(api, resource, Some(NAMESPACE), NAME).await {
        Ok(mut current) => {
            if current["subsets"] != wanted["subsets"] {
                current["subsets"] = wanted["subsets"].clone();
                objects::update(api, &target(resource, NAMESPACE, Some(NAME)), NAME, current)
                    .await?;
                tracing::info!(%advertised, "default/kubernetes endpoints updated");
            }
        }
        Err(e) if e.reason == "NotFound" => {
            objects::create(api, &target(resource, NAMESPACE, None), wanted).await?;
            tracing::info!(%advertised, "default/kubernetes endpoints created");
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
}
