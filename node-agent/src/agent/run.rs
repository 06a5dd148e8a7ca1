//! The agent's main loop: register, heartbeat, follow the other nodes, run the pods.

use std::{collections::BTreeMap, net::Ipv4Addr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use apiary_agent_api::{
    Client,
    v1::{HeartbeatRequest, NodeReady, RegisterRequest, WatchDataplaneRequest, object_event::Type},
};
use futures::StreamExt as _;

use super::{
    context::{Context, DnsSettings, Registry},
    health::{Check, Health},
    node::NodeFacts,
    pods::PodManager,
};
use crate::{
    api_client::ApiClient,
    kubeconfig::Endpoint,
    network::{NetworkConfig, PodNetwork, RemoteNode},
};

/// How the agent is set up (`apiary-node-agent run`).
#[derive(Clone, Debug, clap::Args)]
pub struct AgentConfig {
    /// Kubeconfig naming the control plane, its CA and the node's credentials: its client
    /// certificate (written here after TLS bootstrap), or a token.
    #[arg(
        long,
        env = "KUBECONFIG",
        default_value = "/etc/apiary/node.kubeconfig"
    )]
    pub kubeconfig: PathBuf,
    /// Kubeconfig with a bootstrap token, used to get the node's client certificate when
    /// `--kubeconfig` names none that is valid (the kubelet's `--bootstrap-kubeconfig`).
    #[arg(long)]
    pub bootstrap_kubeconfig: Option<PathBuf>,
    /// The Node's name [default: the hostname].
    #[arg(long)]
    pub node_name: Option<String>,
    /// The address the node registers and serves on [default: the default route's source].
    #[arg(long)]
    pub node_ip: Option<Ipv4Addr>,
    /// More API servers of the cluster besides the kubeconfig's (repeatable, `https://host:port`):
    /// the agent spreads its calls over all of them and goes on through the others while one
    /// is down.
    #[arg(long = "server", value_name = "URL")]
    pub servers: Vec<String>,
    /// Extra node labels, `k=v,k2=v2`.
    #[arg(long, value_delimiter = ',')]
    pub node_labels: Vec<String>,
    /// Persistent state: images, pod volumes and logs, IP leases.
    #[arg(long, default_value = "/var/lib/apiary/agent")]
    pub data_dir: PathBuf,
    /// Runtime state that dies with the machine: container and sandbox state.
    #[arg(long, default_value = "/run/apiary/agent")]
    pub run_dir: PathBuf,
    /// The cgroup v2 directory the socket load-balancing programs attach to [default: the
    /// cgroup v2 mount point, whose programs see every socket of the machine].
    #[arg(long)]
    pub socket_lb_cgroup: Option<PathBuf>,
    /// Where the BPF maps are pinned.
    #[arg(long, default_value = crate::dataplane::DEFAULT_PIN_DIR)]
    pub pin_dir: PathBuf,
    /// The image store [default: <data-dir>/images].
    #[arg(long)]
    pub image_root: Option<PathBuf>,
    /// Registries (`host[:port]`) reached over plain HTTP.
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Port of the agent's HTTPS endpoint for logs and exec (the kubelet's 10250).
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// Port of the health endpoint, `GET /healthz` over plain HTTP (the kubelet's 10248): `ok`
    /// once the data plane is attached and the first sync is done; 0 turns it off.
    #[arg(long, default_value_t = super::health::DEFAULT_PORT)]
    pub healthz_port: u16,
    /// Address of the health endpoint.
    #[arg(long, default_value = "127.0.0.1")]
    pub healthz_bind_address: std::net::IpAddr,
    /// The cgroup under which pods' containers get theirs.
    #[arg(long, default_value = "apiary")]
    pub cgroup_parent: String,
    /// The shim binary [default: apiary-shim next to this executable].
    #[arg(long)]
    pub shim: Option<PathBuf>,
    /// Static pods: a directory of Pod manifests this node runs on its own.
    #[arg(long)]
    pub manifests: Option<PathBuf>,
    /// How often the node's Lease is renewed, in seconds.
    #[arg(long, default_value_t = 10)]
    pub heartbeat_seconds: u64,
    /// The cluster DNS Service's address, given to pods as their nameserver (the kubelet's
    /// `clusterDNS`); the node's DNS process (`apiary-node-agent dns`, which the agent starts)
    /// answers it on the node's address, port 53.
    #[arg(long, default_value = "10.96.0.10")]
    pub cluster_dns: Ipv4Addr,
    /// The cluster's DNS domain.
    #[arg(long, default_value = crate::dns::DEFAULT_DOMAIN)]
    pub cluster_domain: String,
    /// The node's resolver configuration: upstream servers for names outside the cluster, and
    /// what pods with `dnsPolicy: Default` get.
    #[arg(long, default_value = "/etc/resolv.conf")]
    pub resolv_conf: PathBuf,
    /// Run containers whose pod names no seccomp profile under `RuntimeDefault` (the kubelet's
    /// `--seccomp-default`). `Localhost` profiles are read from `<data-dir>/seccomp`.
    #[arg(long)]
    pub seccomp_default: bool,
    /// How often the node's, pods' and containers' CPU and memory are read from the cgroups for
    /// `/metrics/resource` and `/stats/summary`, in seconds (cAdvisor's housekeeping for the
    /// kubelet; metrics-server scrapes every 15 s).
    #[arg(long, default_value_t = 15)]
    pub metrics_interval_seconds: u64,
    /// Where the built-in local-path CSI driver makes its volumes' directories [default:
    /// <data-dir>/volumes].
    #[arg(long)]
    pub volume_dir: Option<PathBuf>,
    /// The capacity the local-path driver offers (a quantity such as `10Gi`) [default: the free
    /// space of the volume directory's filesystem]; volumes' sizes are taken from it.
    #[arg(long, value_parser = parse_capacity)]
    pub volume_capacity: Option<u64>,
}

fn parse_capacity(s: &str) -> Result<u64, String> {
    let q: apiary_api::quantity::Quantity = s.parse().map_err(|e| format!("{e}"))?;
    let bytes = q.value().map_err(|e| format!("{e}"))?;
    u64::try_from(bytes).map_err(|_| format!("{s}: a capacity cannot be negative"))
}

/// Runs the agent until the process is stopped. Pods keep running when it stops: their
/// containers live in shims of their own, and the pinned BPF programs keep forwarding.
///
/// An error after registration is posted as the node's Ready condition (False, with the error)
/// before it is returned, so that the node does not look Ready for the lease's 40 s.
pub async fn run(config: AgentConfig) -> anyhow::Result<()> {
    let labels: Vec<(String, String)> = config
        .node_labels
        .iter()
        .map(|kv| {
            kv.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .with_context(|| format!("--node-labels: {kv:?} is not k=v"))
        })
        .collect::<anyhow::Result<_>>()?;
    let node = NodeFacts::detect(
        config.node_name.clone(),
        config.node_ip,
        config.port,
        &labels,
    )?;
    let pki_dir = config.data_dir.join("pki");
    let endpoint = super::client_certificate::ensure(
        &config.kubeconfig,
        config.bootstrap_kubeconfig.as_deref(),
        &pki_dir,
        &node.name,
    )
    .await?
    .with_more_servers(&config.servers);
    tokio::spawn(super::client_certificate::rotate(
        endpoint.clone(),
        pki_dir,
        node.name.clone(),
    ));
    let health = Health::default();
    if crate::dataplane::socket_lb_attached(&config.pin_dir) {
        health.resuming(super::health::RESUME_GRACE);
    }
    if config.healthz_port != 0 {
        let addr = std::net::SocketAddr::new(config.healthz_bind_address, config.healthz_port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("listening on {addr} (--healthz-port)"))?;
        tokio::spawn({
            let health = health.clone();
            async move {
                if let Err(e) = super::health::serve(listener, health).await {
                    tracing::error!(error = %e, "the healthz server stopped");
                }
            }
        });
    }
    let client = connect(&endpoint).await;
    let pod_cidr = register(&client, &node, &health).await;
    tracing::info!(node = %node.name, ip = %node.ip, %pod_cidr, "registered");
    // The Lease says the agent lives: renewed from now on, as the kubelet's lease controller
    // does, not once the node is set up. That takes seconds (longer on a loaded machine), and
    // a restarted agent's node would run out of its Lease meanwhile: unreachable, tainted
    // NoExecute, its pods marked not ready, for an agent that is back.
    let heartbeat = tokio::spawn(heartbeats(
        client.clone(),
        node.clone(),
        health.clone(),
        Duration::from_secs(config.heartbeat_seconds.max(1)),
    ));
    let result = run_registered(&config, &endpoint, &client, &node, &pod_cidr, health).await;
    if let Err(e) = &result {
        heartbeat.abort();
        post_stopped(&client, &node, e).await;
    }
    result
}

/// Tells the control plane that this node's agent stopped on `error`: Ready=False at once,
/// instead of Unknown when its Lease runs out. Best effort, briefly: the error is what matters.
async fn post_stopped(client: &Client, node: &NodeFacts, error: &anyhow::Error) {
    let request = HeartbeatRequest {
        node_name: node.name.clone(),
        ready: Some(NodeReady {
            ready: false,
            reason: "KubeletNotReady".to_owned(),
            message: format!("the node agent stopped: {error:#}"),
        }),
    };
    match tokio::time::timeout(Duration::from_secs(3), client.clone().heartbeat(request)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "posting NotReady"),
        Err(_) => tracing::warn!("posting NotReady: no answer within 3 s"),
    }
}

/// What the agent does once its node is registered: set up the runtime and the pod network,
/// then follow the cluster for ever.
async fn run_registered(
    config: &AgentConfig,
    endpoint: &Endpoint,
    client: &Client,
    node: &NodeFacts,
    pod_cidr: &str,
    health: Health,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating {}", config.data_dir.display()))?;
    let shim = shim_path(config.shim.as_deref())?;
    let runtime = apiary_runtime::Runtime::new(apiary_runtime::RuntimeConfig {
        state_dir: config.run_dir.join("containers"),
        shim_path: shim,
        cgroup_parent: config.cgroup_parent.clone(),
    })
    .context("setting up the container runtime")?;
    let image_root = config
        .image_root
        .clone()
        .unwrap_or_else(|| config.data_dir.join("images"));
    let images = apiary_images::ImageStore::open(&image_root)
        .with_context(|| format!("opening the image store {}", image_root.display()))?;
    let network = PodNetwork::new(NetworkConfig {
        pod_cidr: parse_cidr(pod_cidr)?,
        node_ip: node.ip,
        underlay_iface: None,
        state_dir: config.data_dir.join("network"),
        pin_dir: config.pin_dir.clone(),
        // The agent runs inside its node's network namespace.
        node_netns: None,
        socket_lb_cgroup: Some(socket_lb_cgroup(config)?),
    })
    .await
    .context("setting up the pod network")?;
    let node_resolv_conf = std::fs::read_to_string(&config.resolv_conf)
        .with_context(|| format!("reading {}", config.resolv_conf.display()))?;
    let dns_settings = DnsSettings {
        cluster_dns: Some(config.cluster_dns),
        domain: config.cluster_domain.clone(),
        node_resolv_conf,
    };
    let ctx = Arc::new(Context {
        node: node.clone(),
        runtime,
        images,
        pull_options: apiary_images::PullOptions {
            insecure_registries: config.insecure_registries.clone(),
            extra_ca_pem: None,
        },
        network,
        api: ApiClient::new(endpoint)?,
        agent: client.clone(),
        pods_dir: config.data_dir.join("pods"),
        sandboxes_dir: config.run_dir.join("pods"),
        registry: Registry::default(),
        dns: dns_settings,
        service_names: crate::server::ServiceNames::default(),
        health,
        seccomp: super::pods::security::SeccompSettings {
            default_runtime_default: config.seccomp_default,
            profile_root: config.data_dir.join("seccomp"),
        },
        csi: super::storage::Drivers::default(),
    });
    // Claims cannot be mounted without it, but every other pod can run: an error here is
    // logged, not fatal.
    if let Err(e) = super::storage::start(
        &ctx,
        super::storage::StorageConfig {
            run_dir: config.run_dir.clone(),
            volume_dir: config
                .volume_dir
                .clone()
                .unwrap_or_else(|| config.data_dir.join("volumes")),
            capacity: config.volume_capacity,
        },
    )
    .await
    {
        tracing::error!(error = %format!("{e:#}"), "starting the local-path CSI driver");
    }
    let records: crate::dns::SharedRecords = Arc::new(std::sync::RwLock::new(
        crate::dns::ClusterRecords::new(&config.cluster_domain),
    ));
    tokio::spawn(super::services::follow(
        Arc::clone(&ctx),
        config.pin_dir.clone(),
        Arc::clone(&records),
        Arc::clone(&ctx.service_names),
    ));
    let flow_names = super::flows::SharedFlowNames::default();
    let flow_log = crate::server::FlowLog::default();
    tokio::spawn(super::policies::follow(
        Arc::clone(&ctx),
        config.pin_dir.clone(),
        Arc::clone(&flow_names),
    ));
    tokio::spawn(super::flow_sweep::run(config.pin_dir.clone()));
    tokio::spawn(super::flows::follow(
        ctx.node.name.clone(),
        config.pin_dir.clone(),
        Arc::clone(&flow_names),
        flow_log.clone(),
    ));
    let tracer = Arc::new(crate::server::PolicyTracer {
        pin_dir: config.pin_dir.clone(),
        names: flow_names,
    });
    serve_dns(&ctx, config, records).await?;
    ctx.health.pass(Check::Dataplane);
    tokio::spawn(follow_nodes(Arc::clone(&ctx)));
    if let Some(dir) = config.manifests.clone() {
        tokio::spawn(super::static_pods::run(Arc::clone(&ctx), dir));
    }
    let stats = crate::stats::Latest::default();
    tokio::spawn(crate::stats::run(
        Arc::clone(&ctx),
        config.cgroup_parent.clone(),
        stats.clone(),
        Duration::from_secs(config.metrics_interval_seconds.max(1)),
    ));
    // The streaming server presents a certificate of the cluster CA, asked for now that the
    // Node (whose addresses its approval checks) exists; until it is issued, handshakes fail.
    let serving = Arc::new(crate::server::tls::ServingCertificate::default());
    tokio::spawn(super::serving_certificate::keep_current(
        ctx.api.clone(),
        super::serving_certificate::Config {
            node: node.name.clone(),
            addresses: vec![std::net::IpAddr::V4(node.ip)],
            ca_pem: endpoint.ca_pem.clone(),
            dir: config.data_dir.join("pki"),
        },
        Arc::clone(&serving),
    ));
    let tls = crate::server::tls::server_config(serving, &endpoint.ca_pem)
        .context("the streaming server's TLS")?;
    let listener = tokio::net::TcpListener::bind((node.ip, config.port))
        .await
        .with_context(|| format!("listening on {}:{}", node.ip, config.port))?;
    tokio::spawn({
        let backend = Arc::new(super::streams::AgentStreams(Arc::clone(&ctx)));
        let services = Arc::new(crate::server::PinnedServices {
            pin_dir: config.pin_dir.clone(),
            names: Arc::clone(&ctx.service_names),
        });
        // Requests are reviewed by the API server with the agent's own credentials.
        let auth = Arc::new(crate::server::auth::Auth::new(
            node.name.clone(),
            Arc::new(ctx.api.clone()),
        ));
        async move {
            let dataplane = crate::server::DataplaneViews {
                services,
                flows: flow_log,
                tracer: Some(tracer),
                stats,
            };
            if let Err(e) = crate::server::serve(listener, tls, auth, backend, dataplane).await {
                tracing::error!(error = %format!("{e:#}"), "the streaming server stopped");
            }
        }
    });
    PodManager::new(ctx).run().await;
    Ok(())
}

/// `shim`, or `apiary-shim` next to this executable.
pub fn shim_path(shim: Option<&std::path::Path>) -> anyhow::Result<PathBuf> {
    match shim {
        Some(path) => Ok(path.to_owned()),
        None => Ok(std::env::current_exe()?
            .parent()
            .context("the agent's executable has no directory")?
            .join("apiary-shim")),
    }
}

fn parse_cidr(cidr: &str) -> anyhow::Result<ipnet::Ipv4Net> {
    cidr.parse()
        .with_context(|| format!("pod CIDR {cidr:?} is not an IPv4 CIDR"))
}

/// Connects, retrying until the control plane answers.
pub async fn connect(endpoint: &Endpoint) -> Client {
    loop {
        match connect_once(endpoint).await {
            Ok(client) => return client,
            Err(e) => {
                tracing::warn!(error = %e, server = %endpoint.server, "connecting; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// One connection as `endpoint`'s credentials: its client certificate as the files hold it now
/// (renewed ones are used from the next connection on), or its token.
async fn connect_once(endpoint: &Endpoint) -> anyhow::Result<Client> {
    use apiary_agent_api::Credential;
    let pem;
    let credential = match &endpoint.client_certificate {
        Some(files) => {
            pem = super::client_certificate::read_pem(files)?;
            Credential::Certificate {
                cert_pem: &pem.0,
                key_pem: &pem.1,
            }
        }
        None => Credential::Token(&endpoint.token),
    };
    Ok(apiary_agent_api::connect_any(&endpoint.servers(), &endpoint.ca_pem, credential).await?)
}

/// Registers the node (retrying) with the Ready condition `health` gives, and returns its pod
/// CIDR.
async fn register(client: &Client, node: &NodeFacts, health: &Health) -> String {
    let mut object = node.object();
    let (ready, reason, message) = health.ready_condition();
    object["status"]["conditions"] = serde_json::json!([{
        "type": "Ready",
        "status": if ready { "True" } else { "False" },
        "reason": reason,
        "message": message,
    }]);
    let node_json = serde_json::to_vec(&object).expect("a JSON value always serializes");
    loop {
        match client
            .clone()
            .register(RegisterRequest {
                node_json: node_json.clone(),
            })
            .await
        {
            Ok(reply) => return reply.into_inner().pod_cidr,
            Err(e) => {
                tracing::warn!(error = %e, "registering; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Renews the node's Lease and posts its Ready condition (see [`Health::condition_to_post`])
/// every `every`, and at once when a health check passes (the node turns Ready as soon as it
/// is).
async fn heartbeats(client: Client, node: NodeFacts, health: Health, every: Duration) {
    let mut tick = tokio::time::interval(every);
    let mut changed = health.subscribe();
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Ok(()) = changed.changed() => {}
        }
        let ready = health
            .condition_to_post()
            .map(|(ready, reason, message)| NodeReady {
                ready,
                reason: reason.to_owned(),
                message,
            });
        match client
            .clone()
            .heartbeat(HeartbeatRequest {
                node_name: node.name.clone(),
                ready,
            })
            .await
        {
            Ok(_) => {}
            // The Node was deleted: register it again, as the kubelet does.
            Err(e) if e.code() == tonic::Code::NotFound => {
                register(&client, &node, &health).await;
            }
            Err(e) => tracing::warn!(error = %e, "heartbeat failed"),
        }
    }
}

/// Keeps the pod network's view of the other nodes (pod CIDR, address) current.
async fn follow_nodes(ctx: Arc<Context>) {
    loop {
        if let Err(e) = watch_nodes(&ctx).await {
            tracing::warn!(error = %format!("{e:#}"), "node watch ended; re-watching");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn watch_nodes(ctx: &Context) -> anyhow::Result<()> {
    let mut stream = ctx
        .agent
        .clone()
        .watch_dataplane(WatchDataplaneRequest {
            kinds: vec!["Node".to_owned()],
        })
        .await?
        .into_inner();
    let mut nodes: BTreeMap<String, RemoteNode> = BTreeMap::new();
    let mut synced = false;
    while let Some(event) = stream.next().await {
        let event = event?;
        let kind = Type::try_from(event.r#type).unwrap_or(Type::Unspecified);
        if kind == Type::Synced {
            synced = true;
        } else {
            let node: apiary_api::core_v1::Node = serde_json::from_slice(&event.object_json)?;
            let name = node.metadata.name.clone();
            let remote = remote_node(&node);
            match (kind, remote) {
                (Type::Deleted, _) | (_, None) => {
                    nodes.remove(&name);
                }
                (_, Some(remote)) if name != ctx.node.name => {
                    nodes.insert(name, remote);
                }
                _ => {}
            }
        }
        if synced {
            let all: Vec<RemoteNode> = nodes.values().cloned().collect();
            match ctx.network.set_remote_nodes(&all).await {
                Ok(()) => ctx.health.pass(Check::Nodes),
                Err(e) => tracing::warn!(error = %e, "routing to other nodes"),
            }
        }
    }
    Ok(())
}

fn remote_node(node: &apiary_api::core_v1::Node) -> Option<RemoteNode> {
    let status = node.status.as_ref()?;
    let ip = status
        .addresses
        .iter()
        .find(|a| a.type_ == "InternalIP")?
        .address
        .parse()
        .ok()?;
    Some(RemoteNode {
        name: node.metadata.name.clone(),
        pod_cidr: parse_cidr(&node.spec.pod_cidr).ok()?,
        node_ip: ip,
    })
}

/// Where the socket load-balancing programs attach: as configured, else the cgroup v2 root.
fn socket_lb_cgroup(config: &AgentConfig) -> anyhow::Result<PathBuf> {
    config
        .socket_lb_cgroup
        .clone()
        .or_else(crate::dataplane::cgroup2_root)
        .context(
            "no cgroup v2 hierarchy is mounted: Services need one \
             (mount -t cgroup2 none /sys/fs/cgroup/unified, or pass --socket-lb-cgroup)",
        )
}

/// Has cluster DNS answered on the node's address (the `kube-dns` Service's endpoint for this
/// node's pods: it has `internalTrafficPolicy: Local`) and publishes that endpoint. The server
/// is a process of its own, which goes on answering while the agent is down: this keeps the one
/// a previous agent of this build started, or starts one, and feeds it the records once they
/// are synced.
async fn serve_dns(
    ctx: &Arc<Context>,
    config: &AgentConfig,
    records: crate::dns::SharedRecords,
) -> anyhow::Result<()> {
    let listen = std::net::SocketAddr::from((ctx.node.ip, crate::dns::PORT));
    let dns = crate::dns::DnsConfig {
        listen: vec![listen],
        upstreams: crate::dns::upstreams_from_resolv_conf(&ctx.dns.node_resolv_conf),
        // This node's pods, the node itself (host-network pods), and loopback.
        clients: vec![
            ipnet::IpNet::V4(ctx.network.pod_cidr().trunc()),
            ipnet::IpNet::from(std::net::IpAddr::V4(ctx.node.ip)),
            "127.0.0.0/8".parse().expect("a CIDR"),
        ],
        cluster_domain: config.cluster_domain.clone(),
    };
    let supervisor = crate::dns::Supervisor::new(crate::dns::DnsArgs {
        run_dir: config.run_dir.clone(),
        cgroup_parent: Some(config.cgroup_parent.clone()),
        config: dns,
    });
    let connection = supervisor
        .connect_or_start()
        .await
        .with_context(|| format!("serving cluster DNS on {listen}"))?;
    let mut health = ctx.health.subscribe();
    let synced = async move {
        // The records are complete once Services, EndpointSlices and Pods were listed.
        let _ = health
            .wait_for(|passed| passed.contains(&Check::Services))
            .await;
    };
    tokio::spawn(supervisor.feed(connection, records, synced));
    tokio::spawn(super::dns_endpoint::publish(Arc::clone(ctx)));
    Ok(())
}
