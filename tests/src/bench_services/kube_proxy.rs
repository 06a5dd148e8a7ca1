//! A `nat` table shaped like the one kube-proxy's iptables mode writes, for
//! `iptables-restore`: `KUBE-SERVICES` with one rule per service (`-d VIP/32 -p tcp --dport PORT
//! -j KUBE-SVC-…`), each `KUBE-SVC-…` choosing a `KUBE-SEP-…` (`-m statistic --mode random` when
//! a service has several endpoints) that DNATs to its endpoint, masquerade marks for traffic from
//! outside the cluster CIDR, and `KUBE-NODEPORTS` last, as kube-proxy keeps it.
//!
//! The point is the cost of a new connection: netfilter walks `KUBE-SERVICES` rule by rule until
//! one matches, so a service late in the chain pays for every rule before it.

use std::{fmt::Write as _, net::Ipv4Addr};

/// One ClusterIP port of a service and the endpoints behind it.
#[derive(Clone, Debug)]
pub struct ChainService {
    /// `namespace/name:port`, as kube-proxy names service ports in comments and hashes.
    pub name: String,
    pub vip: Ipv4Addr,
    pub port: u16,
    pub endpoints: Vec<(Ipv4Addr, u16)>,
}

/// kube-proxy's chain names: a prefix and 16 characters of a hash of what the chain serves.
fn chain(prefix: &str, what: &str) -> String {
    use std::hash::{Hash as _, Hasher as _};
    // `DefaultHasher::new` has fixed keys: the same names on every run.
    let mut hasher = std::hash::DefaultHasher::new();
    what.hash(&mut hasher);
    format!("{prefix}-{:016X}", hasher.finish())
}

/// The `nat` table for `services`, in order (the first is matched first), with `cluster_cidr`
/// the pod range whose traffic is not masqueraded.
pub fn restore_input(services: &[ChainService], cluster_cidr: &str) -> String {
    let mut chains = String::new();
    let mut rules = String::new();
    for builtin in ["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"] {
        let _ = writeln!(chains, ":{builtin} ACCEPT [0:0]");
    }
    for own in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        let _ = writeln!(chains, ":{own} - [0:0]");
    }
    rules.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
         -A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
         -A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
         -A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
         -A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" \
         -j MASQUERADE --random-fully\n",
    );
    let mut per_service = String::new();
    for service in services {
        let name = &service.name;
        let svc = chain("KUBE-SVC", name);
        let (vip, port) = (service.vip, service.port);
        let _ = writeln!(chains, ":{svc} - [0:0]");
        let _ = writeln!(
            rules,
            "-A KUBE-SERVICES -d {vip}/32 -p tcp -m comment --comment \"{name} cluster IP\" \
             -m tcp --dport {port} -j {svc}"
        );
        let _ = writeln!(
            per_service,
            "-A {svc} ! -s {cluster_cidr} -d {vip}/32 -p tcp -m comment --comment \"{name} \
             cluster IP\" -m tcp --dport {port} -j KUBE-MARK-MASQ"
        );
        let count = service.endpoints.len();
        for (i, (ip, target)) in service.endpoints.iter().enumerate() {
            let endpoint = format!("{ip}:{target}");
            let sep = chain("KUBE-SEP", &format!("{name}:{endpoint}"));
            let _ = writeln!(chains, ":{sep} - [0:0]");
            // Endpoint i of n is taken with probability 1/(n-i) among those left; the last
            // takes whatever reaches it.
            let left = count - i;
            let statistic = if left > 1 {
                format!(
                    " -m statistic --mode random --probability {:.11}",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                per_service,
                "-A {svc} -m comment --comment \"{name} -> {endpoint}\"{statistic} -j {sep}"
            );
            let _ = writeln!(
                per_service,
                "-A {sep} -s {ip}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n\
                 -A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT \
                 --to-destination {endpoint}"
            );
        }
    }
    rules.push_str(&per_service);
    rules.push_str(
        "-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must \
         be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
    );
    format!("*nat\n{chains}{rules}COMMIT\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(i: u8, endpoints: usize) -> ChainService {
        ChainService {
            name: format!("bench/svc-{i}:http"),
            vip: Ipv4Addr::new(10, 96, 0, i),
            port: 80,
            endpoints: (0..endpoints)
                .map(|e| (Ipv4Addr::new(10, 1, i, e as u8 + 2), 8080))
                .collect(),
        }
    }

    #[test]
    fn one_rule_per_service_in_order_then_node_ports() {
        let table = restore_input(&[service(2, 1), service(1, 1)], "10.0.0.0/8");
        let services: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SERVICES"))
            .collect();
        assert_eq!(services.len(), 3, "{table}");
        assert!(services[0].contains("-d 10.96.0.2/32"), "{table}");
        assert!(services[1].contains("-d 10.96.0.1/32"), "{table}");
        assert!(services[2].contains("KUBE-NODEPORTS"), "{table}");
        assert!(table.starts_with("*nat\n") && table.ends_with("COMMIT\n"));
        assert!(!table.contains("statistic"), "one endpoint: no statistic");
        assert!(
            table.contains("-j DNAT --to-destination 10.1.1.2:8080"),
            "{table}"
        );
    }

    #[test]
    fn several_endpoints_are_chosen_at_random_evenly() {
        let table = restore_input(&[service(1, 3)], "10.0.0.0/8");
        let jumps: Vec<&str> = table
            .lines()
            .filter(|l| l.starts_with("-A KUBE-SVC") && l.contains("-j KUBE-SEP"))
            .collect();
        assert_eq!(jumps.len(), 3);
        assert!(jumps[0].contains("--probability 0.33333333333"), "{table}");
        assert!(jumps[1].contains("--probability 0.50000000000"), "{table}");
        assert!(!jumps[2].contains("statistic"), "{table}");
        // Every chain jumped to is declared once.
        for jump in jumps {
            let target = jump.rsplit(' ').next().unwrap();
            assert_eq!(table.matches(&format!(":{target} ")).count(), 1);
        }
    }
}
