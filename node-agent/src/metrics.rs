//! The agent's own instrumentation, exposed on `/metrics` with the data plane's counters
//! ([`crate::server::metrics`]): where pods' starts, image pulls, probes and DNS answers happen,
//! they record here. One process-wide set, as the kubelet's legacy registry is: the hooks are
//! spread over workers, probers and the DNS server that share nothing else.

use std::{sync::LazyLock, time::Duration};

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProbeLabels {
    /// `Liveness`, `Readiness` or `Startup`, as the kubelet's `prober_probe_total`.
    pub probe_type: String,
    /// `successful` or `failed`.
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RcodeLabels {
    /// The answer's response code as CoreDNS names it: `NOERROR`, `NXDOMAIN`, `SERVFAIL`…
    pub rcode: String,
}

/// Every instrument; clones share their values.
#[derive(Clone, Debug)]
pub struct AgentMetrics {
    pub pod_start_duration: Histogram,
    pub image_pull_duration: Histogram,
    pub probes: Family<ProbeLabels, Counter>,
    pub dns_queries: Family<RcodeLabels, Counter>,
}

impl Default for AgentMetrics {
    fn default() -> Self {
        Self {
            // The kubelet's `kubelet_pod_start_duration_seconds` buckets.
            pod_start_duration: Histogram::new([
                0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0,
                240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
            ]),
            // The kubelet's `kubelet_image_pull_duration_seconds` buckets.
            image_pull_duration: Histogram::new([
                0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 20.0, 30.0, 45.0, 60.0, 120.0, 180.0,
                240.0, 300.0, 360.0, 480.0, 600.0, 900.0, 1200.0, 1800.0, 2700.0, 3600.0,
            ]),
            probes: Family::default(),
            dns_queries: Family::default(),
        }
    }
}

static GLOBAL: LazyLock<AgentMetrics> = LazyLock::new(AgentMetrics::default);

impl AgentMetrics {
    /// The process's instruments.
    pub fn global() -> &'static Self {
        &GLOBAL
    }

    /// Adds every instrument to `registry` (which then reads the same values).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "apiary_pod_start_duration_seconds",
            "Duration in seconds from the agent first seeing a pod to all its containers running",
            self.pod_start_duration.clone(),
        );
        registry.register(
            "apiary_image_pull_duration_seconds",
            "Duration in seconds of successful image pulls",
            self.image_pull_duration.clone(),
        );
        registry.register(
            "apiary_prober_probe",
            "Cumulative number of liveness, readiness and startup probes, by probe type and result",
            self.probes.clone(),
        );
        registry.register(
            "apiary_dns_queries",
            "DNS queries the node's cluster DNS server answered, by response code",
            self.dns_queries.clone(),
        );
    }

    pub fn pod_started(&self, took: Duration) {
        self.pod_start_duration.observe(took.as_secs_f64());
    }

    pub fn image_pulled(&self, took: Duration) {
        self.image_pull_duration.observe(took.as_secs_f64());
    }

    pub fn probed(&self, probe_type: &str, success: bool) {
        self.probes
            .get_or_create(&ProbeLabels {
                probe_type: probe_type.to_owned(),
                result: if success { "successful" } else { "failed" }.to_owned(),
            })
            .inc();
    }

    /// `count` more answers with response code `rcode` (the cluster DNS process reports its
    /// counts, see [`crate::dns::supervisor`]).
    pub fn dns_answered(&self, rcode: &str, count: u64) {
        self.dns_queries
            .get_or_create(&RcodeLabels {
                rcode: rcode.to_owned(),
            })
            .inc_by(count);
    }
}
