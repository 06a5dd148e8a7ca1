//! A pod's `/etc/resolv.conf`, as the kubelet composes it from the pod's `dnsPolicy` and
//! `dnsConfig` and the container runtime writes it.
//!
//! Applications resolve `<svc>` and `<svc>.<ns>` only through this file's search list, and
//! `ndots:5` makes such short names try the cluster suffixes before going upstream: getting it
//! exactly like the kubelet does is what makes manifests written for Kubernetes work here.

use std::net::{Ipv4Addr, SocketAddr};

use apiary_api::core_v1::Pod;

/// The kubelet's limits: glibc reads at most 3 nameservers; search lists longer than 32 domains
/// or 2048 characters are cut (the domains beyond are dropped, as the kubelet does).
const MAX_NAMESERVERS: usize = 3;
const MAX_SEARCHES: usize = 32;
const MAX_SEARCH_CHARS: usize = 2048;

/// The parts of a resolv.conf the kubelet carries over.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct ResolvConf {
    nameservers: Vec<String>,
    searches: Vec<String>,
    /// `name` or `name:value`.
    options: Vec<String>,
}

/// The `/etc/resolv.conf` of `pod`.
///
/// - `ClusterFirst` (also when unset) and `ClusterFirstWithHostNet`: the cluster DNS server,
///   the search list `<ns>.svc.<domain> svc.<domain> <domain>` followed by the node's, and
///   `options ndots:5`. `ClusterFirst` for a `hostNetwork` pod, or any of them with
///   `cluster_dns` `None`, fall back to `Default`.
/// - `Default`: the node's nameservers, search list and options (`node_resolv_conf`).
/// - `None`: nothing but the pod's `dnsConfig`.
///
/// `dnsConfig` is then merged in for every policy: nameservers and search domains are appended
/// (duplicates dropped), options replace those of the same name.
pub fn pod_resolv_conf(
    pod: &Pod,
    node_resolv_conf: &str,
    cluster_dns: Option<Ipv4Addr>,
    domain: &str,
) -> String {
    let spec = &pod.spec;
    let node = parse(node_resolv_conf);
    let domain = domain.trim_end_matches('.');
    let cluster = match spec.dns_policy.as_str() {
        "ClusterFirstWithHostNet" => true,
        "" | "ClusterFirst" => !spec.host_network,
        _ => false,
    };
    let mut conf = match (spec.dns_policy.as_str(), cluster_dns) {
        ("None", _) => ResolvConf::default(),
        (_, Some(ip)) if cluster => {
            let ns = &pod.metadata.namespace;
            let mut searches = if domain.is_empty() {
                Vec::new()
            } else {
                vec![
                    format!("{ns}.svc.{domain}"),
                    format!("svc.{domain}"),
                    domain.to_owned(),
                ]
            };
            extend_unique(&mut searches, node.searches);
            ResolvConf {
                nameservers: vec![ip.to_string()],
                searches,
                options: vec!["ndots:5".to_owned()],
            }
        }
        _ => node,
    };
    if let Some(config) = &spec.dns_config {
        extend_unique(&mut conf.nameservers, config.nameservers.iter().cloned());
        let searches = config
            .searches
            .iter()
            .map(|s| s.trim_end_matches('.').to_owned());
        extend_unique(&mut conf.searches, searches);
        for option in &config.options {
            let text = match &option.value {
                Some(value) => format!("{}:{value}", option.name),
                None => option.name.clone(),
            };
            set_option(&mut conf.options, text);
        }
    }
    conf.nameservers.truncate(MAX_NAMESERVERS);
    conf.searches.truncate(MAX_SEARCHES);
    while conf.searches.join(" ").len() > MAX_SEARCH_CHARS {
        conf.searches.pop();
    }
    let mut text = String::new();
    // The order and form containerd writes.
    if !conf.searches.is_empty() {
        text += &format!("search {}\n", conf.searches.join(" "));
    }
    for nameserver in &conf.nameservers {
        text += &format!("nameserver {nameserver}\n");
    }
    if !conf.options.is_empty() {
        text += &format!("options {}\n", conf.options.join(" "));
    }
    if text.is_empty() {
        // Nothing to say (only `None` without `dnsConfig`, which validation rejects): containerd
        // then copies the node's file.
        return node_resolv_conf.to_owned();
    }
    text
}

/// The servers to forward non-cluster questions to: the `nameserver`s of the node's
/// `/etc/resolv.conf`, port 53.
pub fn upstreams_from_resolv_conf(text: &str) -> Vec<SocketAddr> {
    parse(text)
        .nameservers
        .iter()
        // A scoped IPv6 address (`fe80::1%eth0`) cannot be reached by address alone.
        .filter_map(|ns| ns.parse().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// Parses resolv.conf as the kubelet does: every `nameserver`, the last `search` line, all
/// `options` (a later one replacing an earlier of the same name). `domain` and `sortlist` are
/// not carried over.
fn parse(text: &str) -> ResolvConf {
    let mut conf = ResolvConf::default();
    for line in text.lines() {
        let line = line.split(['#', ';']).next().unwrap_or_default();
        let mut fields = line.split_whitespace();
        match fields.next() {
            Some("nameserver") => {
                if let Some(ns) = fields.next() {
                    conf.nameservers.push(ns.to_owned());
                }
            }
            Some("search") => {
                conf.searches = fields
                    .map(|s| s.trim_end_matches('.'))
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect();
            }
            Some("options") => fields.for_each(|o| set_option(&mut conf.options, o.to_owned())),
            _ => {}
        }
    }
    conf
}

fn extend_unique(list: &mut Vec<String>, more: impl IntoIterator<Item = String>) {
    for item in more {
        if !list.contains(&item) {
            list.push(item);
        }
    }
}

/// Adds `name[:value]`, replacing the option of the same name in place.
fn set_option(options: &mut Vec<String>, option: String) {
    let name = |o: &str| o.split(':').next().unwrap_or_default().to_owned();
    match options.iter_mut().find(|o| name(o) == name(&option)) {
        Some(existing) => *existing = option,
        None => options.push(option),
    }
}

#[cfg(test)]
mod tests;
