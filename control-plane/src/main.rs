//! `apiary-control-plane`: the API server and the controllers behind it.

use std::{io::IsTerminal as _, net::SocketAddr, path::PathBuf, process::ExitCode, sync::Arc};

use anyhow::Context as _;
use apiary_control_plane::{
    apiserver::{self, Api, auth::Tokens, pki::Pki},
    controllers::horizontal,
    leader, metrics,
    store::{
        Store,
        embedded::EmbeddedStore,
        encryption::{EncryptedStore, EncryptionConfig},
        etcd::{EtcdStore, EtcdTls},
    },
};
use clap::Parser;
use tokio::net::TcpListener;

/// Every request decodes and drops thousands of small JSON nodes from many threads: under the
/// scheduler bench glibc's malloc and free held about 40 % of the process's CPU, and its
/// per-thread arenas kept the heap growing from run to run.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Debug, Parser)]
#[command(
    name = "apiary-control-plane",
    version,
    about = "Apiary's control plane"
)]
struct Cli {
    /// Where the embedded store, the PKI and the admin kubeconfig live.
    #[arg(long, default_value = "/var/lib/apiary", env = "APIARY_DATA_DIR")]
    data_dir: PathBuf,
    /// Another control plane's data dir on this machine: this one joins its cluster, taking
    /// the cluster CA, the service account key and the admin's and kubelet client's credentials
    /// from it (kubeadm's shared certificates) when its own data dir has no CA yet; it makes its
    /// own serving certificate. Run all of them on one etcd.
    #[arg(long, value_name = "DIR")]
    shared_pki_from: Option<PathBuf>,
    /// Static bearer tokens, in kube-apiserver's CSV format: `token,user,uid,"group1,group2"`
    /// per line (the groups are optional). A bad line stops the server at startup.
    #[arg(long)]
    token_auth_file: Option<PathBuf>,
    /// The audit policy (`audit.k8s.io/v1` `Policy`, as kube-apiserver's). Without it, a log
    /// path records every request at `Metadata`, one line each.
    #[arg(long, requires = "audit_log_path")]
    audit_policy_file: Option<PathBuf>,
    /// Where audit events go, one JSON line each; `-` is standard output.
    #[arg(long)]
    audit_log_path: Option<PathBuf>,
    /// Rotate the audit log past this many megabytes (0: 100).
    #[arg(long = "audit-log-maxsize", default_value_t = 100)]
    audit_log_max_size: u64,
    /// Rotated audit logs kept (0: all).
    #[arg(long = "audit-log-maxbackup", default_value_t = 0)]
    audit_log_max_backup: usize,
    /// Days rotated audit logs are kept (0: no limit).
    #[arg(long = "audit-log-maxage", default_value_t = 0)]
    audit_log_max_age: u64,
    /// Read-only requests served at once; one more is a 429 (0: no limit). Long-running
    /// requests and `system:masters` are not counted.
    #[arg(long, default_value_t = apiserver::inflight::DEFAULT_READ_ONLY)]
    max_requests_inflight: usize,
    /// Mutating requests served at once; one more is a 429 (0: no limit).
    #[arg(long, default_value_t = apiserver::inflight::DEFAULT_MUTATING)]
    max_mutating_requests_inflight: usize,
    /// How often each HorizontalPodAutoscaler is evaluated (kube-controller-manager's flag), in
    /// seconds.
    #[arg(long = "horizontal-pod-autoscaler-sync-period", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    horizontal_pod_autoscaler_sync_period: u64,
    /// How long a scale-down waits for the highest recommendation of this window, in seconds,
    /// when an HPA has no `behavior.scaleDown` window of its own.
    #[arg(long = "horizontal-pod-autoscaler-downscale-stabilization", default_value_t = 300, value_parser = clap::value_parser!(u64).range(0..=3600))]
    horizontal_pod_autoscaler_downscale_stabilization: u64,
    /// How often every node agent's resource metrics are scraped for `metrics.k8s.io`
    /// (metrics-server's flag), in seconds.
    #[arg(long = "metric-resolution", default_value_t = 15, value_parser = clap::value_parser!(u64).range(1..=3600))]
    metric_resolution: u64,
    /// Address the API server listens on (HTTPS).
    #[arg(long, default_value = "0.0.0.0:6443")]
    listen: SocketAddr,
    /// Extra addresses the serving certificate names (besides localhost, loopback and the
    /// `--listen` address): those nodes and clients reach this control plane at. When listening
    /// on every address, every non-loopback IPv4 address of the machine is named.
    #[arg(long = "tls-san", value_delimiter = ',')]
    tls_sans: Vec<std::net::IpAddr>,
    /// The address pods and other machines reach this API server at: the endpoint of
    /// `default/kubernetes` (10.96.0.1:443) while this control plane leads. Default: the
    /// `--listen` address, or when listening on every address, the machine's first
    /// non-loopback IPv4 address.
    #[arg(long)]
    advertise_address: Option<std::net::IpAddr>,
    /// etcd endpoints (comma-separated); without them the embedded store is used.
    #[arg(long, value_delimiter = ',')]
    etcd_endpoints: Vec<String>,
    /// Key prefix in etcd, so that several clusters can share one etcd.
    #[arg(long, default_value = "/apiary")]
    etcd_prefix: String,
    /// The CA (PEM) that etcd's serving certificate must chain to (https:// endpoints).
    #[arg(long, value_name = "FILE")]
    etcd_cafile: Option<PathBuf>,
    /// The client certificate (PEM) presented to etcd (its `--client-cert-auth`).
    #[arg(long, value_name = "FILE", requires = "etcd_keyfile")]
    etcd_certfile: Option<PathBuf>,
    /// The key (PEM) of `--etcd-certfile`.
    #[arg(long, value_name = "FILE", requires = "etcd_certfile")]
    etcd_keyfile: Option<PathBuf>,
    /// Encrypts the resources it names at rest: a Kubernetes `EncryptionConfiguration`
    /// (apiserver.config.k8s.io/v1) with aesgcm, aescbc, secretbox and identity providers; the
    /// first key writes, every key reads.
    #[arg(long, value_name = "FILE")]
    encryption_provider_config: Option<PathBuf>,
    /// How often history older than one interval is compacted (watchers further behind must
    /// relist), in seconds.
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
    compaction_interval_seconds: u64,
    /// The pod network; each node gets a /24 of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: apiary_control_plane::agents::PodNetwork,
    /// An address pool of LoadBalancer Services (IPv4 CIDR, e.g. 10.123.64.0/24; repeatable or
    /// comma-separated). Each Service of type LoadBalancer without a loadBalancerClass gets
    /// the lowest free address (or the one `spec.loadBalancerIP` or the annotation
    /// `lbipam.apiary.dev/ips` asks for) in its status. Without a pool they stay pending.
    #[arg(long = "loadbalancer-pool", value_name = "CIDR", value_delimiter = ',')]
    loadbalancer_pools: Vec<apiary_control_plane::controllers::loadbalancer::Pool>,
    /// This control plane's name in leader election [default: <hostname>-<pid>].
    #[arg(long)]
    identity: Option<String>,
    /// How long a node's Lease may go unrenewed before the node is NotReady and tainted
    /// unreachable, in seconds.
    #[arg(long, default_value_t = 40, value_parser = clap::value_parser!(u64).range(1..))]
    node_monitor_grace_seconds: u64,
    /// How long pods without their own toleration stay on an unreachable node before they are
    /// evicted, in seconds (Kubernetes' DefaultTolerationSeconds).
    #[arg(long, default_value_t = 300)]
    default_eviction_seconds: u64,
    /// How long a SecurityIdentity no live pod uses is kept before it is deleted, in seconds
    /// (so that a restarting pod keeps its identity).
    #[arg(long, default_value_t = 60)]
    security_identity_gc_seconds: u64,
}

/// A fatal error is one line on stderr (which is the log under `apiary up`), `error:` and its
/// causes, and exit code 1; never the backtrace `anyhow` adds to the `Debug` of an error
/// returned from `main` when `RUST_BACKTRACE` is set. Usage errors are clap's.
fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        // No colour codes in a log file (`apiary up` writes ours to `<data-dir>/logs`).
        .with_ansi(std::io::stdout().is_terminal())
        .init();
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The audit policy and log the flags ask for; a bad policy stops the server at startup.
fn audit(cli: &Cli) -> anyhow::Result<Option<apiserver::audit::Auditor>> {
    use apiserver::audit::{Auditor, Policy, log};
    let Some(path) = &cli.audit_log_path else {
        return Ok(None);
    };
    let policy = match &cli.audit_policy_file {
        Some(file) => std::fs::read_to_string(file)
            .map_err(anyhow::Error::from)
            .and_then(|text| Policy::parse(&text).map_err(anyhow::Error::msg))
            .with_context(|| format!("--audit-policy-file {}", file.display()))?,
        None => Policy::metadata_only(),
    };
    let log = log::Log::open(log::Options {
        path: path.clone(),
        max_size_mb: cli.audit_log_max_size,
        max_backups: cli.audit_log_max_backup,
        max_age_days: cli.audit_log_max_age,
    })
    .with_context(|| format!("--audit-log-path {}", path.display()))?;
    Ok(Some(Auditor::new(policy, log)))
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    {
        use apiary_control_plane::{apiserver::allocator::SERVICE_CIDR, controllers::loadbalancer};
        let network = |(base, len)| loadbalancer::Pool::new(base, len).map_err(anyhow::Error::msg);
        let reserved = [
            ("service network", network(SERVICE_CIDR)?),
            (
                "pod network (--cluster-cidr)",
                network((cli.cluster_cidr.base, cli.cluster_cidr.prefix_len))?,
            ),
        ];
        loadbalancer::check_pools(&cli.loadbalancer_pools, &reserved)
            .map_err(anyhow::Error::msg)
            .context("--loadbalancer-pool")?;
    }
    let token_file = match &cli.token_auth_file {
        Some(path) => {
            apiserver::authn::token_file::TokenFile::load(path).context("--token-auth-file")?
        }
        None => Default::default(),
    };
    let auditor = audit(&cli)?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        // The store, keys and kubeconfigs: only for the owner, as kubeadm's /etc/kubernetes/pki.
        std::fs::create_dir_all(&cli.data_dir)
            .and_then(|()| {
                std::fs::set_permissions(&cli.data_dir, std::fs::Permissions::from_mode(0o700))
            })
            .with_context(|| format!("creating {}", cli.data_dir.display()))?;
    }

    let store: Arc<dyn Store> = if cli.etcd_endpoints.is_empty() {
        let path = cli.data_dir.join("store.redb");
        Arc::new(
            EmbeddedStore::open(&path)
                .with_context(|| format!("opening the embedded store {}", path.display()))?,
        )
    } else {
        let tls = etcd_tls(&cli)?;
        Arc::new(
            EtcdStore::connect_with(&cli.etcd_endpoints, &cli.etcd_prefix, tls.as_ref())
                .await
                .context("connecting to etcd")?,
        )
    };
    // Timed right at the backend, below encryption, as kube-apiserver times its etcd client.
    let store: Arc<dyn Store> = Arc::new(metrics::store::Metered::new(store));
    // One layer above both backends: what reaches the redb file or etcd is already encrypted.
    let store: Arc<dyn Store> = match &cli.encryption_provider_config {
        Some(path) => {
            let config = EncryptionConfig::load(path).context("--encryption-provider-config")?;
            tracing::info!(?config, "encrypting at rest");
            Arc::new(EncryptedStore::new(store, config))
        }
        None => store,
    };

    let mut sans = cli.tls_sans.clone();
    sans.push(cli.listen.ip());
    if cli.listen.ip().is_unspecified() {
        sans.extend(machine_addresses());
    }
    if let Some(from) = &cli.shared_pki_from {
        apiary_control_plane::apiserver::pki::share(from, &cli.data_dir)
            .with_context(|| format!("--shared-pki-from {}", from.display()))?;
    }
    let pki = Pki::load_or_create(&cli.data_dir, &sans).context("setting up the PKI")?;
    tokio::spawn(apiary_control_plane::store::compact_periodically(
        Arc::clone(&store),
        std::time::Duration::from_secs(cli.compaction_interval_seconds),
    ));
    let mut api = Api::new(store);
    api.pod_network = cli.cluster_cidr;
    api.inflight = apiserver::inflight::Limits::new(
        cli.max_requests_inflight,
        cli.max_mutating_requests_inflight,
    );
    api.kubelet_client =
        Some(apiserver::kubelet_client::tls_config(&pki).context("the kubelet client")?);
    let service_account_issuer = Arc::new(
        apiserver::authn::service_account::Issuer::load_or_create(&pki.dir)
            .context("the service account signing key")?,
    );
    api.service_account_issuer = Some(Arc::clone(&service_account_issuer));
    api.admission = apiserver::admission::Plugins::all();
    let api = Arc::new(api);
    tokio::spawn(metrics::store::count_objects(Arc::clone(&api)));
    // Filled before the first delete needs it.
    api.dependency_graph.start(&api.store);
    api.pods_by_node.start(&api.store);
    // The leader lease lives in kube-system: create it first.
    apiserver::bootstrap(&api)
        .await
        .map_err(|e| anyhow::anyhow!("creating the system namespaces: {}", e.message))?;
    apiserver::authz::bootstrap::reconcile(&api)
        .await
        .map_err(|e| anyhow::anyhow!("reconciling the bootstrap RBAC policy: {}", e.message))?;
    // The authorizer's index follows roles and bindings for the life of the process; serve
    // once it holds them (the bootstrap bindings let anyone read /healthz).
    let (_authz_running, authz_shutdown) = tokio::sync::watch::channel(false);
    apiserver::authz::start(
        Arc::clone(&api),
        authz_shutdown.clone(),
        std::time::Duration::from_secs(10),
    )
    .await;
    // Admission webhooks and policies apply from the first write on.
    apiserver::admission::webhooks::start(
        Arc::clone(&api),
        authz_shutdown.clone(),
        std::time::Duration::from_secs(10),
    )
    .await;
    apiserver::admission::policies::start(
        Arc::clone(&api),
        authz_shutdown.clone(),
        std::time::Duration::from_secs(10),
    )
    .await;
    let never_stops = authz_shutdown.clone();
    // Custom resources are served from their CRDs as stored before the first request.
    apiserver::custom_resources::start(
        Arc::clone(&api),
        authz_shutdown,
        std::time::Duration::from_secs(10),
    )
    .await;
    let lifecycle = apiary_control_plane::scheduler::lifecycle::Config {
        grace: std::time::Duration::from_secs(cli.node_monitor_grace_seconds),
        default_eviction: std::time::Duration::from_secs(cli.default_eviction_seconds),
    };
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("listening on {}", cli.listen))?;
    // Written once the port is known (`--listen 127.0.0.1:0` picks a free one).
    let local = listener.local_addr()?;
    let advertised = advertised_address(cli.advertise_address, local);
    let identity = cli.identity.clone().unwrap_or_else(default_identity);
    let (leading_tx, leading) = tokio::sync::watch::channel(false);
    tokio::spawn(leader::campaign(
        Arc::clone(&api),
        identity.clone(),
        leader::Timing::default(),
        leading_tx,
    ));
    tokio::spawn(apiserver::resource_metrics::scrape::run(
        Arc::clone(&api),
        std::time::Duration::from_secs(cli.metric_resolution),
    ));
    // Every control plane, leading or not, is an endpoint of `default/kubernetes` while alive.
    tokio::spawn(apiary_control_plane::controllers::kubernetes_service::run(
        Arc::clone(&api),
        identity.clone(),
        advertised,
        never_stops.clone(),
    ));
    let controllers = apiary_control_plane::controllers::Config {
        load_balancer_pools: cli.loadbalancer_pools.clone(),
        identity_gc_grace: std::time::Duration::from_secs(cli.security_identity_gc_seconds),
        root_ca: Some(pki.ca_pem.clone()),
        certificate_authority: Some(Arc::new(
            pki.certificate_authority()
                .context("loading the cluster CA's key")?,
        )),
        horizontal: horizontal::Config {
            sync_period: std::time::Duration::from_secs(cli.horizontal_pod_autoscaler_sync_period),
            downscale_stabilization: std::time::Duration::from_secs(
                cli.horizontal_pod_autoscaler_downscale_stabilization,
            ),
            ..horizontal::Config::default()
        },
    };
    tokio::spawn(run_while_leading(
        Arc::clone(&api),
        lifecycle,
        controllers,
        leading,
    ));
    let tokens = Tokens::new(pki.admin_token.clone())
        .with_file(token_file)
        .with_bootstrap_tokens(Arc::clone(&api.store))
        .with_service_accounts(apiserver::auth::ServiceAccounts {
            issuer: Arc::clone(&service_account_issuer),
            store: Arc::clone(&api.store),
        });
    let server_host = if local.ip().is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        local.ip().to_string()
    };
    // What joining nodes read (anonymously) to find and pin the CA.
    let public_server = advertised.map_or_else(
        || format!("https://{server_host}:{}", local.port()),
        |a| format!("https://{a}"),
    );
    apiserver::cluster_info::publish(&api, &public_server, &pki.ca_pem)
        .await
        .map_err(|e| anyhow::anyhow!("publishing kube-public/cluster-info: {}", e.message))?;
    let mut app = apiserver::router(api, Arc::new(tokens));
    if let Some(auditor) = auditor {
        app = apiserver::audit::layer(app, Arc::new(auditor));
    }
    let kubeconfig = cli.data_dir.join("kubeconfig");
    pki.write_kubeconfig(
        &kubeconfig,
        &format!("https://{server_host}:{}", local.port()),
    )?;
    tracing::info!(
        listen = %listener.local_addr()?,
        kubeconfig = %kubeconfig.display(),
        "API server ready"
    );
    let limits = apiary_serve::Limits::for_open_files(apiary_serve::raise_open_files_limit());
    apiary_serve::serve_tls(
        listener,
        pki.tls.clone(),
        app,
        limits,
        apiserver::authn::x509::ClientCertUser::of_connection,
        shutdown_signal(),
    )
    .await?;
    tracing::info!("shut down");
    Ok(())
}

/// The machine's non-loopback IPv4 addresses.
/// The TLS files of `--etcd-cafile`/`--etcd-certfile`/`--etcd-keyfile`, if any is given.
fn etcd_tls(cli: &Cli) -> anyhow::Result<Option<EtcdTls>> {
    let read = |path: &PathBuf, flag: &str| {
        std::fs::read_to_string(path).with_context(|| format!("{flag} {}", path.display()))
    };
    let ca_pem = cli
        .etcd_cafile
        .as_ref()
        .map(|p| read(p, "--etcd-cafile"))
        .transpose()?;
    let client = match (&cli.etcd_certfile, &cli.etcd_keyfile) {
        (Some(cert), Some(key)) => {
            Some((read(cert, "--etcd-certfile")?, read(key, "--etcd-keyfile")?))
        }
        _ => None,
    };
    Ok((ca_pem.is_some() || client.is_some()).then_some(EtcdTls { ca_pem, client }))
}

fn machine_addresses() -> Vec<std::net::IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|addrs| {
            addrs
                .filter_map(|a| a.address?.as_sockaddr_in().map(|s| s.ip()))
                .filter(|ip| !ip.is_loopback())
                .map(std::net::IpAddr::V4)
                .collect()
        })
        .unwrap_or_default()
}

/// Where pods reach the API server listening at `local`: `flag`, else the listen address
/// unless it is loopback, else (listening everywhere) the machine's first non-loopback IPv4
/// address; `None` when pods could not reach it.
fn advertised_address(
    flag: Option<std::net::IpAddr>,
    local: std::net::SocketAddr,
) -> Option<std::net::SocketAddr> {
    let ip = match flag {
        Some(ip) => ip,
        None if local.ip().is_unspecified() => *machine_addresses().first()?,
        None if local.ip().is_loopback() => return None,
        None => local.ip(),
    };
    Some(std::net::SocketAddr::new(ip, local.port()))
}

/// `<hostname>-<pid>`: unique among control planes sharing one etcd.
fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

/// Runs the scheduler, the node lifecycle controller and the workload controllers while this
/// control plane holds the leader lease, and stops them when it loses it.
async fn run_while_leading(
    api: Arc<Api>,
    lifecycle: apiary_control_plane::scheduler::lifecycle::Config,
    controllers: apiary_control_plane::controllers::Config,
    mut leading: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        if leading.wait_for(|l| *l).await.is_err() {
            return;
        }
        let mut lost = leading.clone();
        let stepped_down = async move {
            let _ = lost.wait_for(|l| !*l).await;
        };
        let tasks = [
            tokio::spawn(apiary_control_plane::controllers::run(
                Arc::clone(&api),
                controllers.clone(),
                stepped_down,
            )),
            tokio::spawn(apiary_control_plane::scheduler::run(Arc::clone(&api))),
            tokio::spawn(apiary_control_plane::scheduler::lifecycle::run(
                Arc::clone(&api),
                lifecycle,
            )),
        ];
        if leading.wait_for(|l| !*l).await.is_err() {
            return;
        }
        tracing::warn!("not the leader any more: stopping the scheduler and controllers");
        for task in &tasks[1..] {
            task.abort();
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
