//! The control plane's Prometheus instruments, under kube-apiserver's, kube-scheduler's and
//! kube-controller-manager's names and labels, so that their dashboards and alerts work as
//! they are. One process-wide set, as Kubernetes' legacy registry is: the API server's
//! middleware ([`apiserver`]), the store ([`store`]), the scheduler, the controllers' work
//! queues and the leader election record here, and `GET /metrics` ([`serve`]) encodes it.

pub mod apiserver;
pub mod store;

use std::{sync::LazyLock, time::Duration};

use axum::{
    http::header,
    response::{IntoResponse as _, Response},
};
use prometheus_client::{
    encoding::{EncodeLabelSet, prometheus_text},
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

/// kube-apiserver's `apiserver_request_duration_seconds` and `etcd_request_duration_seconds`
/// buckets.
const APISERVER_BUCKETS: [f64; 23] = [
    0.005, 0.025, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.25, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 8.0,
    10.0, 15.0, 20.0, 30.0, 45.0, 60.0,
];

fn apiserver_histogram() -> Histogram {
    Histogram::new(APISERVER_BUCKETS)
}

/// kube-scheduler's: `ExponentialBuckets(0.001, 2, 15)`.
fn scheduler_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// client-go's work queues': `ExponentialBuckets(10e-9, 10, 10)`.
fn workqueue_histogram() -> Histogram {
    Histogram::new(exponential_buckets(10e-9, 10.0, 10))
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// What kube-apiserver labels a request with (`apiserver_request_duration_seconds`,
/// `apiserver_longrunning_requests`).
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub dry_run: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub component: String,
}

/// `apiserver_request_total`'s: a request's labels and its status code.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestCodeLabels {
    #[prometheus(flatten)]
    pub request: RequestLabels,
    pub code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WatcherLabels {
    pub group: String,
    pub version: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestKindLabels {
    /// `readOnly` or `mutating`.
    pub request_kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StoreLabels {
    pub operation: &'static str,
    /// The key prefix of the resource, as kube-apiserver's etcd3 store labels it
    /// (`/registry/core/pods/`).
    pub r#type: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResourceLabels {
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    /// `scheduled`, `unschedulable` or `error`.
    pub result: &'static str,
    pub profile: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueueLabels {
    /// `active` or `unschedulable`.
    pub queue: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NameLabels {
    pub name: String,
}

/// kube-scheduler's only profile here.
pub const SCHEDULER_PROFILE: &str = "default-scheduler";

/// How a scheduling attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScheduleResult {
    Scheduled,
    Unschedulable,
    Error,
}

impl ScheduleResult {
    fn label(self) -> &'static str {
        match self {
            Self::Scheduled => "scheduled",
            Self::Unschedulable => "unschedulable",
            Self::Error => "error",
        }
    }
}

/// Every instrument; see the names in [`Metrics::register`].
#[derive(Debug)]
pub struct Metrics {
    pub requests: Family<RequestCodeLabels, Counter>,
    pub request_duration: HistogramFamily<RequestLabels>,
    pub longrunning: Family<RequestLabels, Gauge>,
    pub watchers: Family<WatcherLabels, Gauge>,
    pub inflight: Family<RequestKindLabels, Gauge>,
    pub store_duration: HistogramFamily<StoreLabels>,
    pub storage_objects: Family<ResourceLabels, Gauge>,
    pub schedule_attempts: Family<ScheduleLabels, Counter>,
    pub scheduling_duration: HistogramFamily<ScheduleLabels>,
    pub pending_pods: Family<QueueLabels, Gauge>,
    pub workqueue_depth: Family<NameLabels, Gauge>,
    pub workqueue_adds: Family<NameLabels, Counter>,
    pub workqueue_queue_duration: HistogramFamily<NameLabels>,
    pub workqueue_work_duration: HistogramFamily<NameLabels>,
    pub workqueue_retries: Family<NameLabels, Counter>,
    pub leader: Family<NameLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let metrics = Self {
            requests: Family::default(),
            request_duration: Family::new_with_constructor(apiserver_histogram),
            longrunning: Family::default(),
            watchers: Family::default(),
            inflight: Family::default(),
            store_duration: Family::new_with_constructor(apiserver_histogram),
            storage_objects: Family::default(),
            schedule_attempts: Family::default(),
            scheduling_duration: Family::new_with_constructor(scheduler_histogram),
            pending_pods: Family::default(),
            workqueue_depth: Family::default(),
            workqueue_adds: Family::default(),
            workqueue_queue_duration: Family::new_with_constructor(workqueue_histogram),
            workqueue_work_duration: Family::new_with_constructor(workqueue_histogram),
            workqueue_retries: Family::default(),
            leader: Family::default(),
        };
        // Gauges that are 0 until something happens are still reported, as Kubernetes does.
        for request_kind in ["readOnly", "mutating"] {
            metrics
                .inflight
                .get_or_create_owned(&RequestKindLabels { request_kind });
        }
        for queue in ["active", "unschedulable"] {
            metrics
                .pending_pods
                .get_or_create_owned(&QueueLabels { queue });
        }
        metrics
    }
}

static GLOBAL: LazyLock<(Metrics, Registry)> = LazyLock::new(|| {
    let metrics = Metrics::default();
    let mut registry = Registry::default();
    metrics.register(&mut registry);
    (metrics, registry)
});

/// The process's instruments.
pub fn global() -> &'static Metrics {
    &GLOBAL.0
}

/// The process's instruments in Prometheus' text format (0.0.4).
pub fn encode() -> String {
    let mut text = String::new();
    prometheus_text::encode(&mut text, &GLOBAL.1).expect("writing to a String cannot fail");
    text
}

/// `GET /metrics`, authorized before it gets here as any non-resource URL is.
pub async fn serve() -> Response {
    (
        [(header::CONTENT_TYPE, prometheus_text::CONTENT_TYPE)],
        encode(),
    )
        .into_response()
}

impl Metrics {
    /// Adds every instrument to `registry` (which then reads the same values). Counters are
    /// registered without `_total`: the encoder appends it.
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "apiserver_request",
            "Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.",
            self.requests.clone(),
        );
        registry.register(
            "apiserver_request_duration_seconds",
            "Response latency distribution in seconds for each verb, dry run value, group, version, resource, subresource, scope and component.",
            self.request_duration.clone(),
        );
        registry.register(
            "apiserver_longrunning_requests",
            "Gauge of all active long-running apiserver requests broken out by verb, group, version, resource, scope and component. Not all requests are tracked this way.",
            self.longrunning.clone(),
        );
        registry.register(
            "apiserver_registered_watchers",
            "Number of currently registered watchers for a given resources",
            self.watchers.clone(),
        );
        registry.register(
            "apiserver_current_inflight_requests",
            "Number of requests being served (long-running ones excluded), by kind: readOnly or mutating.",
            self.inflight.clone(),
        );
        registry.register(
            "etcd_request_duration_seconds",
            "Store request latency in seconds for each operation and object type.",
            self.store_duration.clone(),
        );
        registry.register(
            "apiserver_storage_objects",
            "Number of stored objects at the time of last check split by kind.",
            self.storage_objects.clone(),
        );
        registry.register(
            "scheduler_schedule_attempts",
            "Number of attempts to schedule pods, by the result. 'unschedulable' means a pod could not be scheduled, while 'error' means an internal scheduler problem.",
            self.schedule_attempts.clone(),
        );
        registry.register(
            "scheduler_scheduling_attempt_duration_seconds",
            "Scheduling attempt latency in seconds (scheduling algorithm + binding)",
            self.scheduling_duration.clone(),
        );
        registry.register(
            "scheduler_pending_pods",
            "Number of pending pods, by the queue type. 'active' means number of pods in activeQ; 'unschedulable' means number of pods in unschedulablePods.",
            self.pending_pods.clone(),
        );
        registry.register(
            "workqueue_depth",
            "Current depth of workqueue",
            self.workqueue_depth.clone(),
        );
        registry.register(
            "workqueue_adds",
            "Total number of adds handled by workqueue",
            self.workqueue_adds.clone(),
        );
        registry.register(
            "workqueue_queue_duration_seconds",
            "How long in seconds an item stays in workqueue before being requested.",
            self.workqueue_queue_duration.clone(),
        );
        registry.register(
            "workqueue_work_duration_seconds",
            "How long in seconds processing an item from workqueue takes.",
            self.workqueue_work_duration.clone(),
        );
        registry.register(
            "workqueue_retries",
            "Total number of retries handled by workqueue",
            self.workqueue_retries.clone(),
        );
        registry.register(
            "leader_election_master_status",
            "Gauge of if the reporting system is master of the relevant lease, 0 indicates backup, 1 indicates master. 'name' is the string used to identify the lease.",
            self.leader.clone(),
        );
    }

    /// One scheduling attempt of kube-scheduler's `default-scheduler` profile, from its start
    /// to its end (binding included when it got that far).
    pub fn scheduling_attempt(&self, result: ScheduleResult, took: Duration) {
        let labels = ScheduleLabels {
            result: result.label(),
            profile: SCHEDULER_PROFILE,
        };
        self.schedule_attempts.get_or_create(&labels).inc();
        self.scheduling_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// The scheduler's queues' sizes.
    pub fn pending_pods(&self, active: usize, unschedulable: usize) {
        for (queue, n) in [("active", active), ("unschedulable", unschedulable)] {
            self.pending_pods
                .get_or_create(&QueueLabels { queue })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
    }

    /// Whether this control plane holds the controllers' lease. The one lease runs what
    /// kube-controller-manager and kube-scheduler each elect a leader for, so both names
    /// report it and their dashboards read it where they look.
    pub fn leading(&self, leading: bool) {
        for name in ["kube-controller-manager", "kube-scheduler"] {
            self.leader
                .get_or_create(&NameLabels { name: name.into() })
                .set(i64::from(leading));
        }
    }

    /// The instruments of the work queue `name`.
    pub fn workqueue(&self, name: &str) -> Workqueue {
        let labels = NameLabels { name: name.into() };
        Workqueue {
            depth: self.workqueue_depth.get_or_create_owned(&labels),
            adds: self.workqueue_adds.get_or_create_owned(&labels),
            queue_duration: self.workqueue_queue_duration.get_or_create_owned(&labels),
            work_duration: self.workqueue_work_duration.get_or_create_owned(&labels),
            retries: self.workqueue_retries.get_or_create_owned(&labels),
        }
    }
}

/// One controller work queue's instruments (client-go's `workqueue` metrics).
#[derive(Clone, Debug)]
pub struct Workqueue {
    pub depth: Gauge,
    pub adds: Counter,
    pub queue_duration: Histogram,
    pub work_duration: Histogram,
    pub retries: Counter,
}

impl Workqueue {
    /// A key was handed to a worker `waited` after it was due.
    pub fn taken(&self, waited: Duration) {
        self.queue_duration.observe(waited.as_secs_f64());
    }

    /// A reconcile took `took`.
    pub fn worked(&self, took: Duration) {
        self.work_duration.observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn parsed(metrics: &Metrics) -> prometheus_parse::Scrape {
        let mut registry = Registry::default();
        metrics.register(&mut registry);
        let mut text = String::new();
        prometheus_text::encode(&mut text, &registry).unwrap();
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
    }

    fn value(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(v)))
            .unwrap_or_else(|| panic!("no {name} {labels:?}"));
        match &sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => *v,
            prometheus_parse::Value::Histogram(buckets) => {
                buckets.last().map(|b| b.count).unwrap_or_default()
            }
            prometheus_parse::Value::Summary(_) => panic!("no summaries here"),
        }
    }

    #[test]
    fn scheduling_attempts_count_and_time_by_result() {
        let metrics = Metrics::default();
        metrics.scheduling_attempt(ScheduleResult::Scheduled, Duration::from_millis(3));
        metrics.scheduling_attempt(ScheduleResult::Scheduled, Duration::from_millis(5));
        metrics.scheduling_attempt(ScheduleResult::Unschedulable, Duration::from_millis(1));
        metrics.pending_pods(2, 7);
        let scrape = parsed(&metrics);
        let scheduled = [("result", "scheduled"), ("profile", "default-scheduler")];
        assert_eq!(
            value(&scrape, "scheduler_schedule_attempts_total", &scheduled),
            2.0
        );
        assert_eq!(
            value(
                &scrape,
                "scheduler_schedule_attempts_total",
                &[("result", "unschedulable")]
            ),
            1.0
        );
        assert_eq!(
            value(
                &scrape,
                "scheduler_scheduling_attempt_duration_seconds",
                &scheduled
            ),
            2.0
        );
        assert_eq!(
            value(&scrape, "scheduler_pending_pods", &[("queue", "active")]),
            2.0
        );
        assert_eq!(
            value(
                &scrape,
                "scheduler_pending_pods",
                &[("queue", "unschedulable")]
            ),
            7.0
        );
    }

    #[test]
    fn leadership_is_reported_under_both_components_names() {
        let metrics = Metrics::default();
        metrics.leading(true);
        let scrape = parsed(&metrics);
        for name in ["kube-controller-manager", "kube-scheduler"] {
            assert_eq!(
                value(&scrape, "leader_election_master_status", &[("name", name)]),
                1.0
            );
        }
        metrics.leading(false);
        let scrape = parsed(&metrics);
        assert_eq!(
            value(
                &scrape,
                "leader_election_master_status",
                &[("name", "kube-controller-manager")]
            ),
            0.0
        );
    }

    #[test]
    fn idle_gauges_are_reported_as_zero() {
        let scrape = parsed(&Metrics::default());
        for kind in ["readOnly", "mutating"] {
            assert_eq!(
                value(
                    &scrape,
                    "apiserver_current_inflight_requests",
                    &[("request_kind", kind)]
                ),
                0.0
            );
        }
    }

    #[tokio::test]
    async fn a_controllers_queue_reports_adds_waits_work_and_retries() {
        use crate::controllers::runtime::{self, Action, Queue, Reconciler};
        use apiary_api::meta::ObjectRef;
        /// Fails each key's first reconcile.
        struct FailsOnce(std::sync::Mutex<std::collections::HashSet<String>>);
        #[async_trait::async_trait]
        impl Reconciler for FailsOnce {
            fn name(&self) -> &'static str {
                "metrics-test"
            }
            async fn reconcile(&self, key: &ObjectRef) -> runtime::Result<Action> {
                if self.0.lock().unwrap().insert(key.name.clone()) {
                    return Err(runtime::Error {
                        action: "test".into(),
                        message: "first try".into(),
                        reason: "InternalError",
                    });
                }
                Ok(Action::Done)
            }
        }
        let key = |name: &str| ObjectRef {
            resource: "pods".into(),
            namespace: "default".into(),
            name: name.into(),
        };
        let queue = Queue::new();
        // Added before the queue is named, as controllers' first listings are.
        queue.add_after(key("a"), Duration::ZERO);
        queue.add_after(key("a"), Duration::ZERO);
        queue.add_after(key("b"), Duration::ZERO);
        let (tx, rx) = tokio::sync::watch::channel(false);
        let reconciler = Arc::new(FailsOnce(std::sync::Mutex::default()));
        let task = tokio::spawn(runtime::process(reconciler, Arc::clone(&queue), 2, rx));
        let metrics = global();
        let name = NameLabels {
            name: "metrics-test".into(),
        };
        crate::testing::eventually("both keys to succeed after a retry", || async {
            queue.is_empty()
                && metrics
                    .workqueue_work_duration
                    .get(&name)
                    .is_some_and(|h| h.count() == 4)
        })
        .await;
        tx.send(true).unwrap();
        task.await.unwrap();
        // Two distinct adds, then each failed key requeued once.
        assert_eq!(metrics.workqueue_adds.get(&name).unwrap().get(), 4);
        assert_eq!(metrics.workqueue_retries.get(&name).unwrap().get(), 2);
        assert_eq!(
            metrics.workqueue_queue_duration.get(&name).unwrap().count(),
            4
        );
        assert_eq!(metrics.workqueue_depth.get(&name).unwrap().get(), 0);
    }

    #[test]
    fn a_work_queue_shares_its_series_across_handles() {
        let metrics = Metrics::default();
        let a = metrics.workqueue("deployment");
        let b = metrics.workqueue("deployment");
        a.adds.inc();
        b.adds.inc();
        b.retries.inc();
        a.depth.set(3);
        a.taken(Duration::from_millis(2));
        b.worked(Duration::from_millis(1));
        let scrape = parsed(&metrics);
        let name = [("name", "deployment")];
        assert_eq!(value(&scrape, "workqueue_adds_total", &name), 2.0);
        assert_eq!(value(&scrape, "workqueue_retries_total", &name), 1.0);
        assert_eq!(value(&scrape, "workqueue_depth", &name), 3.0);
        assert_eq!(
            value(&scrape, "workqueue_queue_duration_seconds", &name),
            1.0
        );
        assert_eq!(
            value(&scrape, "workqueue_work_duration_seconds", &name),
            1.0
        );
    }
}
