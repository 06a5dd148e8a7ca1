//! Service ClusterIP and NodePort allocation. Each allocated address or port is a key in the
//! store, claimed with a create: two concurrent Services can never get the same one, on one API
//! server or on several sharing etcd. Released when the Service goes.

use std::net::Ipv4Addr;

use rand::Rng as _;
use serde_json::{Value, json};

use super::{Api, error::ApiError};
use crate::store;

/// The service CIDR (Kubernetes' default, 10.96.0.0/12).
pub const SERVICE_CIDR: (Ipv4Addr, u8) = (Ipv4Addr::new(10, 96, 0, 0), 12);
/// The NodePort range (Kubernetes' default).
pub const NODE_PORTS: std::ops::RangeInclusive<u16> = 30000..=32767;

const IP_KEYS: &str = "/registry/ranges/serviceips/";
const PORT_KEYS: &str = "/registry/ranges/servicenodeports/";
/// Random tries before scanning the range in order.
const RANDOM_TRIES: usize = 32;

fn cidr_contains(ip: Ipv4Addr) -> bool {
    let (base, bits) = SERVICE_CIDR;
    let mask = u32::MAX << (32 - bits);
    u32::from(ip) & mask == u32::from(base)
}

/// Claims `key` for `owner`; `Ok(false)` if it is taken.
async fn claim(api: &Api, key: &str, owner: &str) -> Result<bool, ApiError> {
    match api.store.create(key, owner.as_bytes().to_vec()).await {
        Ok(_) => Ok(true),
        Err(store::Error::AlreadyExists { .. }) => Ok(false),
        Err(e) => Err(ApiError::storage(&e)),
    }
}

async fn release_key(api: &Api, key: &str) {
    match api.store.delete(key, None).await {
        Ok(_) | Err(store::Error::NotFound { .. }) => {}
        Err(e) => tracing::warn!(key, error = %e, "could not release an allocation"),
    }
}

fn invalid(name: &str, field: &str, value: &str, why: &str) -> ApiError {
    ApiError::invalid(
        "Service",
        "",
        name,
        &[(
            field.to_owned(),
            format!("{field}: Invalid value: {value}: {why}"),
        )],
    )
}

/// What one Service holds: released together if its create fails or when it is deleted.
#[derive(Debug, Default)]
pub struct Claims {
    keys: Vec<String>,
}

impl Claims {
    /// These claims less those `other` holds.
    pub fn without(mut self, other: &Self) -> Self {
        self.keys.retain(|k| !other.keys.contains(k));
        self
    }

    pub async fn release(self, api: &Api) {
        for key in self.keys {
            release_key(api, &key).await;
        }
    }
}

/// Allocates what a new Service needs: a ClusterIP (unless headless or ExternalName) and a
/// NodePort per port for NodePort and LoadBalancer Services. Requested values are claimed
/// exactly or refused with 422.
pub async fn allocate(api: &Api, service: &mut Value) -> Result<Claims, ApiError> {
    let mut claims = Claims::default();
    match allocate_into(api, service, &mut claims).await {
        Ok(()) => Ok(claims),
        Err(e) => {
            claims.release(api).await;
            Err(e)
        }
    }
}

async fn allocate_into(
    api: &Api,
    service: &mut Value,
    claims: &mut Claims,
) -> Result<(), ApiError> {
    let name = service["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let owner = format!(
        "{}/{name}",
        service["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
    );
    let spec = &mut service["spec"];
    let kind = spec["type"].as_str().unwrap_or("ClusterIP").to_owned();
    if kind != "ExternalName" && spec["clusterIP"] != "None" {
        let ip = match spec["clusterIP"].as_str().filter(|ip| !ip.is_empty()) {
            Some(requested) => {
                let ip: Ipv4Addr = requested.parse().map_err(|_| {
                    invalid(
                        &name,
                        "spec.clusterIPs",
                        requested,
                        "must be a valid IP address",
                    )
                })?;
                if !cidr_contains(ip) {
                    return Err(invalid(
                        &name,
                        "spec.clusterIPs",
                        requested,
                        "provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/12",
                    ));
                }
                let key = format!("{IP_KEYS}{ip}");
                if !claim(api, &key, &owner).await? {
                    return Err(invalid(
                        &name,
                        "spec.clusterIPs",
                        requested,
                        "failed to allocate IP: provided IP is already allocated",
                    ));
                }
                claims.keys.push(key);
                ip
            }
            None => {
                let ip = allocate_ip(api, &owner).await?;
                claims.keys.push(format!("{IP_KEYS}{ip}"));
                ip
            }
        };
        spec["clusterIP"] = json!(ip.to_string());
        spec["clusterIPs"] = json!([ip.to_string()]);
    } else if spec["clusterIP"] == "None" {
        spec["clusterIPs"] = json!(["None"]);
    }
    if matches!(kind.as_str(), "NodePort" | "LoadBalancer") {
        allocate_node_ports(api, &name, &owner, spec, claims).await?;
    }
    Ok(())
}

async fn allocate_ip(api: &Api, owner: &str) -> Result<Ipv4Addr, ApiError> {
    let (base, bits) = SERVICE_CIDR;
    let size = 1u32 << (32 - bits);
    let base = u32::from(base);
    // Offset 0 is the network, 1 the `kubernetes` Service, the last the broadcast address.
    let candidates = 2..size - 1;
    for _ in 0..RANDOM_TRIES {
        let ip = Ipv4Addr::from(base + rand::rng().random_range(candidates.clone()));
        if claim(api, &format!("{IP_KEYS}{ip}"), owner).await? {
            return Ok(ip);
        }
    }
    for offset in candidates {
        let ip = Ipv4Addr::from(base + offset);
        if claim(api, &format!("{IP_KEYS}{ip}"), owner).await? {
            return Ok(ip);
        }
    }
    Err(ApiError::storage(&store::Error::Unavailable(
        "the service IP range is full".into(),
    )))
}

/// Gives every port of `spec` a NodePort (claiming requested ones), skipping ports that
/// already hold one listed in `claims` by an earlier allocation.
pub async fn allocate_node_ports(
    api: &Api,
    name: &str,
    owner: &str,
    spec: &mut Value,
    claims: &mut Claims,
) -> Result<(), ApiError> {
    let count = spec["ports"].as_array().map_or(0, Vec::len);
    for i in 0..count {
        let field = format!("spec.ports[{i}].nodePort");
        match spec["ports"][i]["nodePort"].as_u64() {
            Some(port) if port != 0 => {
                let Ok(port) = u16::try_from(port) else {
                    return Err(invalid(
                        name,
                        &field,
                        &port.to_string(),
                        "provided port is not in the valid range. The range of valid ports is 30000-32767",
                    ));
                };
                if !NODE_PORTS.contains(&port) {
                    return Err(invalid(
                        name,
                        &field,
                        &port.to_string(),
                        "provided port is not in the valid range. The range of valid ports is 30000-32767",
                    ));
                }
                let key = format!("{PORT_KEYS}{port}");
                if claims.keys.contains(&key) {
                    continue;
                }
                if !claim(api, &key, owner).await? {
                    return Err(invalid(
                        name,
                        &field,
                        &port.to_string(),
                        "provided port is already allocated",
                    ));
                }
                claims.keys.push(key);
            }
            _ => {
                let port = allocate_port(api, owner).await?;
                claims.keys.push(format!("{PORT_KEYS}{port}"));
                spec["ports"][i]["nodePort"] = json!(port);
            }
        }
    }
    Ok(())
}

async fn allocate_port(api: &Api, owner: &str) -> Result<u16, ApiError> {
    for _ in 0..RANDOM_TRIES {
        let port = rand::rng().random_range(NODE_PORTS);
        if claim(api, &format!("{PORT_KEYS}{port}"), owner).await? {
            return Ok(port);
        }
    }
    for port in NODE_PORTS {
        if claim(api, &format!("{PORT_KEYS}{port}"), owner).await? {
            return Ok(port);
        }
    }
    Err(ApiError::storage(&store::Error::Unavailable(
        "the NodePort range is full".into(),
    )))
}

/// What a stored Service holds.
pub fn claims_of(service: &Value) -> Claims {
    let mut keys = Vec::new();
    for ip in service["spec"]["clusterIPs"]
        .as_array()
        .into_iter()
        .flatten()
    {
        if let Some(ip) = ip.as_str().filter(|ip| *ip != "None") {
            keys.push(format!("{IP_KEYS}{ip}"));
        }
    }
    for port in service["spec"]["ports"].as_array().into_iter().flatten() {
        if let Some(port) = port["nodePort"].as_u64() {
            keys.push(format!("{PORT_KEYS}{port}"));
        }
    }
    Claims { keys }
}

/// Brings an updated Service's NodePorts in line with its type: allocated when it becomes
/// NodePort or LoadBalancer, released when it stops being one. Returns what to release once
/// the update is stored.
pub async fn reconcile_update(api: &Api, old: &Value, new: &mut Value) -> Result<Claims, ApiError> {
    let wants_ports = matches!(
        new["spec"]["type"].as_str(),
        Some("NodePort" | "LoadBalancer")
    );
    let name = new["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let owner = format!(
        "{}/{name}",
        new["metadata"]["namespace"].as_str().unwrap_or_default()
    );
    let mut held = claims_of(old);
    held.keys.retain(|k| k.starts_with(PORT_KEYS));
    if wants_ports {
        let mut claims = Claims {
            keys: held.keys.clone(),
        };
        allocate_node_ports(api, &name, &owner, &mut new["spec"], &mut claims).await?;
        let kept = claims_of(new);
        held.keys.retain(|k| !kept.keys.contains(k));
    } else {
        for port in new["spec"]["ports"].as_array_mut().into_iter().flatten() {
            if let Some(port) = port.as_object_mut() {
                port.remove("nodePort");
            }
        }
    }
    Ok(held)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_cidr_is_10_96_0_0_slash_12() {
        assert!(cidr_contains(Ipv4Addr::new(10, 96, 0, 10)));
        assert!(cidr_contains(Ipv4Addr::new(10, 111, 255, 254)));
        assert!(!cidr_contains(Ipv4Addr::new(10, 112, 0, 1)));
    }
}
