//! Validation of `networking.k8s.io/v1` NetworkPolicy and `discovery.k8s.io/v1` EndpointSlice.

use std::{collections::BTreeSet, net::IpAddr};

use super::{
    CIDR_MSG, ErrorList, FieldError, NameRule, go_strings, invalid_each, is_dns1123_label,
    is_dns1123_subdomain, is_valid_port_name, port_num, validate_label_selector,
    validate_object_meta,
};
use crate::{
    discovery_v1::EndpointSlice,
    intstr::IntOrString,
    networking_v1::{Cidr, IpBlock, NetworkPolicy, NetworkPolicyPeer, NetworkPolicyPort},
};

/// A NetworkPolicy: selectors, peers, ports, CIDRs and policy types.
pub fn validate_network_policy(np: &NetworkPolicy) -> ErrorList {
    let mut errs = validate_object_meta(&np.metadata, true, NameRule::Subdomain);
    let spec = &np.spec;
    errs.extend(validate_label_selector(
        &spec.pod_selector,
        "spec.podSelector",
    ));
    for (i, rule) in spec.ingress.iter().enumerate() {
        let p = format!("spec.ingress[{i}]");
        for (j, port) in rule.ports.iter().enumerate() {
            validate_port(port, &format!("{p}.ports[{j}]"), &mut errs);
        }
        for (j, peer) in rule.from.iter().enumerate() {
            validate_peer(peer, &format!("{p}.from[{j}]"), &mut errs);
        }
    }
    for (i, rule) in spec.egress.iter().enumerate() {
        let p = format!("spec.egress[{i}]");
        for (j, port) in rule.ports.iter().enumerate() {
            validate_port(port, &format!("{p}.ports[{j}]"), &mut errs);
        }
        for (j, peer) in rule.to.iter().enumerate() {
            validate_peer(peer, &format!("{p}.to[{j}]"), &mut errs);
        }
    }
    const TYPES: &[&str] = &["Ingress", "Egress"];
    for (i, t) in spec.policy_types.iter().enumerate() {
        if !TYPES.contains(&t.as_str()) {
            errs.push(FieldError::not_supported(
                format!("spec.policyTypes[{i}]"),
                t,
                TYPES,
            ));
        }
    }
    if spec.policy_types.len() > 2 {
        errs.push(FieldError::invalid(
            "spec.policyTypes",
            go_strings(&spec.policy_types),
            "may not specify more than two policyTypes",
        ));
    }
    errs
}

fn validate_port(port: &NetworkPolicyPort, p: &str, errs: &mut ErrorList) {
    const PROTOCOLS: &[&str] = &["TCP", "UDP", "SCTP"];
    if let Some(proto) = &port.protocol
        && !PROTOCOLS.contains(&proto.as_str())
    {
        errs.push(FieldError::not_supported(
            format!("{p}.protocol"),
            proto,
            PROTOCOLS,
        ));
    }
    match (&port.port, port.end_port) {
        (Some(IntOrString::Int(n)), end) => {
            port_num(errs, &format!("{p}.port"), *n);
            if let Some(end) = end {
                if end < *n {
                    errs.push(FieldError::invalid(
                        format!("{p}.endPort"),
                        *n,
                        "must be greater than or equal to `port`",
                    ));
                }
                port_num(errs, &format!("{p}.endPort"), end);
            }
        }
        (Some(IntOrString::String(name)), end) => {
            if let Some(end) = end {
                errs.push(FieldError::invalid(
                    format!("{p}.endPort"),
                    end,
                    "may not be specified when `port` is non-numeric",
                ));
            }
            invalid_each(errs, &format!("{p}.port"), name, is_valid_port_name(name));
        }
        (None, Some(end)) => errs.push(FieldError::invalid(
            format!("{p}.endPort"),
            end,
            "may not be specified when `port` is not specified",
        )),
        (None, None) => {}
    }
}

fn validate_peer(peer: &NetworkPolicyPeer, p: &str, errs: &mut ErrorList) {
    let mut count = 0;
    if let Some(sel) = &peer.pod_selector {
        count += 1;
        errs.extend(validate_label_selector(sel, &format!("{p}.podSelector")));
    }
    if let Some(sel) = &peer.namespace_selector {
        count += 1;
        errs.extend(validate_label_selector(
            sel,
            &format!("{p}.namespaceSelector"),
        ));
    }
    if let Some(block) = &peer.ip_block {
        count += 1;
        validate_ip_block(block, &format!("{p}.ipBlock"), errs);
    }
    if count == 0 {
        errs.push(FieldError::required(p).with_detail("must specify a peer"));
    } else if count > 1 && peer.ip_block.is_some() {
        errs.push(FieldError::forbidden(
            p,
            "may not specify both ipBlock and another peer",
        ));
    }
}

fn validate_ip_block(block: &IpBlock, p: &str, errs: &mut ErrorList) {
    if block.cidr.is_empty() {
        errs.push(FieldError::required(format!("{p}.cidr")));
        return;
    }
    let Ok(cidr) = block.cidr.parse::<Cidr>() else {
        errs.push(FieldError::invalid(
            format!("{p}.cidr"),
            &block.cidr,
            CIDR_MSG,
        ));
        return;
    };
    for (i, except) in block.except.iter().enumerate() {
        let ep = format!("{p}.except[{i}]");
        match except.parse::<Cidr>() {
            Err(_) => errs.push(FieldError::invalid(ep, except, CIDR_MSG)),
            Ok(e) if !cidr.strictly_contains(&e) => errs.push(FieldError::invalid(
                ep,
                except,
                "must be a strict subset of `cidr`",
            )),
            Ok(_) => {}
        }
    }
}

/// The most endpoints one EndpointSlice may hold.
pub const MAX_ENDPOINTS: usize = 1000;
/// The most addresses one endpoint may have.
pub const MAX_ADDRESSES: usize = 100;
/// The most ports one EndpointSlice may list.
pub const MAX_PORTS: usize = 20000;

/// An EndpointSlice: address type, addresses of that type, ports.
pub fn validate_endpoint_slice(slice: &EndpointSlice) -> ErrorList {
    let mut errs = validate_object_meta(&slice.metadata, true, NameRule::Subdomain);
    const TYPES: &[&str] = &["FQDN", "IPv4", "IPv6"];
    let address_type = slice.address_type.as_str();
    if !TYPES.contains(&address_type) {
        errs.push(FieldError::not_supported(
            "addressType",
            address_type,
            TYPES,
        ));
    }
    if slice.endpoints.len() > MAX_ENDPOINTS {
        errs.push(FieldError::too_many(
            "endpoints",
            slice.endpoints.len(),
            MAX_ENDPOINTS,
        ));
    }
    for (i, ep) in slice.endpoints.iter().enumerate() {
        let p = format!("endpoints[{i}]");
        if ep.addresses.is_empty() {
            errs.push(
                FieldError::required(format!("{p}.addresses"))
                    .with_detail("must contain at least 1 address"),
            );
        } else if ep.addresses.len() > MAX_ADDRESSES {
            errs.push(FieldError::too_many(
                format!("{p}.addresses"),
                ep.addresses.len(),
                MAX_ADDRESSES,
            ));
        }
        for (j, addr) in ep.addresses.iter().enumerate() {
            let ap = format!("{p}.addresses[{j}]");
            let parsed = addr.parse::<IpAddr>().ok();
            match address_type {
                "IPv4" if !parsed.is_some_and(|ip| ip.is_ipv4()) => errs.push(FieldError::invalid(
                    ap,
                    addr,
                    "must be a valid IPv4 address",
                )),
                "IPv6" if !parsed.is_some_and(|ip| ip.is_ipv6()) => errs.push(FieldError::invalid(
                    ap,
                    addr,
                    "must be a valid IPv6 address",
                )),
                "FQDN" => invalid_each(&mut errs, &ap, addr, is_dns1123_subdomain(addr)),
                _ => {}
            }
        }
        if let Some(node) = &ep.node_name {
            invalid_each(
                &mut errs,
                &format!("{p}.nodeName"),
                node,
                is_dns1123_subdomain(node),
            );
        }
        if let Some(host) = &ep.hostname {
            invalid_each(
                &mut errs,
                &format!("{p}.hostname"),
                host,
                is_dns1123_label(host),
            );
        }
    }
    if slice.ports.len() > MAX_PORTS {
        errs.push(FieldError::too_many("ports", slice.ports.len(), MAX_PORTS));
    }
    let mut names = BTreeSet::new();
    for (i, port) in slice.ports.iter().enumerate() {
        let p = format!("ports[{i}]");
        let name = port.name.as_deref().unwrap_or("");
        if !name.is_empty() {
            invalid_each(
                &mut errs,
                &format!("{p}.name"),
                name,
                is_dns1123_label(name),
            );
        }
        if !names.insert(name) {
            errs.push(FieldError::duplicate(format!("{p}.name"), name));
        }
        if let Some(proto) = &port.protocol
            && !["SCTP", "TCP", "UDP"].contains(&proto.as_str())
        {
            errs.push(FieldError::not_supported(
                format!("{p}.protocol"),
                proto,
                &["SCTP", "TCP", "UDP"],
            ));
        }
        if let Some(n) = port.port {
            port_num(&mut errs, &format!("{p}.port"), n);
        }
    }
    errs
}
