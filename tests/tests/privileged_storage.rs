//! Persistent volumes end to end: the local-path CSI driver's project quota on a real ext4
//! filesystem with bind-mount publishing, and claims through the real kubectl in a two-node lab
//! — the default class filled in, WaitForFirstConsumer binding where the pod lands, data kept
//! across the pod's deletion (the PV's node affinity brings the new pod back), `Delete` and
//! `Retain` reclaim, and a claim larger than any node's capacity left Pending with the reason.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use apiary_tests::{
    cluster::{ClusterLab, wait},
    require_privileges,
};
use serde_json::Value;

/// A loop-mounted ext4 image with project quotas, unmounted and detached on drop.
struct QuotaFs {
    dir: tempfile::TempDir,
    loop_dev: String,
}

impl QuotaFs {
    fn new() -> anyhow::Result<Self> {
        let dir = tempfile::tempdir()?;
        let image = dir.path().join("fs.img");
        run("truncate", &["-s", "64M", image.to_str().unwrap()])?;
        run(
            "mkfs.ext4",
            &[
                "-q",
                "-F",
                "-O",
                "quota,project",
                "-E",
                "quotatype=prjquota",
                image.to_str().unwrap(),
            ],
        )?;
        let loop_dev = run("losetup", &["--find", "--show", image.to_str().unwrap()])?
            .trim()
            .to_owned();
        let fs = Self { dir, loop_dev };
        std::fs::create_dir_all(fs.mount_point())?;
        // On failure, dropping `fs` detaches the loop device.
        run(
            "mount",
            &[
                "-o",
                "prjquota",
                &fs.loop_dev,
                fs.mount_point().to_str().unwrap(),
            ],
        )
        .map_err(|e| e.context("no ext4 project quotas here (a kernel without CONFIG_QFMT_V2?)"))?;
        Ok(fs)
    }

    fn mount_point(&self) -> PathBuf {
        self.dir.path().join("mnt")
    }
}

impl Drop for QuotaFs {
    fn drop(&mut self) {
        // Publish targets first (they live inside the temp dir), then the filesystem.
        let _ = Command::new("umount")
            .arg("-R")
            .arg(self.dir.path().join("target"))
            .status();
        let _ = Command::new("umount").arg(self.mount_point()).status();
        let _ = Command::new("losetup")
            .args(["-d", &self.loop_dev])
            .status();
    }
}

fn run(program: &str, args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new(program).args(args).output()?;
    anyhow::ensure!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn local_path_volumes_are_held_to_their_size_by_a_project_quota() {
    require_privileges!();
    use apiary_csi::v1::{
        CapacityRange, CreateVolumeRequest, NodePublishVolumeRequest, NodeUnpublishVolumeRequest,
        VolumeCapability, controller_client::ControllerClient, node_client::NodeClient,
        volume_capability,
    };
    // Without project quotas in the kernel the volume goes without (the driver's fallback):
    // publishing is still tested, the EDQUOT check is skipped with the reason.
    let quota_fs = match QuotaFs::new() {
        Ok(fs) => Some(fs),
        Err(e) => {
            eprintln!("SKIPPED the EDQUOT check: {e:#}");
            None
        }
    };
    let plain = tempfile::tempdir().unwrap();
    let (base, volume_root) = match &quota_fs {
        Some(fs) => (fs.dir.path().to_owned(), fs.mount_point()),
        None => (plain.path().to_owned(), plain.path().join("mnt")),
    };
    let target = base.join("target/mount");
    let _unmount = Unmount(target.clone());
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let driver = apiary_csi::local::Driver::new(apiary_csi::local::Config {
            node: "node1".into(),
            volume_dir: volume_root.join("volumes"),
            capacity: None,
        })
        .unwrap();
        assert_eq!(
            driver.quotas,
            quota_fs.is_some(),
            "quotas where the filesystem has them"
        );
        let socket = base.join("csi.sock");
        let router = driver.router();
        let path = socket.clone();
        tokio::spawn(async move { apiary_csi::serve(router, &path, std::future::pending()).await });
        let channel = wait("the driver's socket", Duration::from_secs(5), || {
            socket.exists().then_some(())
        })
        .map(|()| socket.clone())
        .unwrap();
        let channel = apiary_csi::connect(&channel).await.unwrap();
        let capability = VolumeCapability {
            access_type: Some(volume_capability::AccessType::Mount(Default::default())),
            access_mode: Some(volume_capability::AccessMode {
                mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
            }),
        };
        ControllerClient::new(channel.clone())
            .create_volume(CreateVolumeRequest {
                name: "pvc-quota".into(),
                capacity_range: Some(CapacityRange {
                    required_bytes: 1 << 20,
                    limit_bytes: 0,
                }),
                volume_capabilities: vec![capability.clone()],
                ..Default::default()
            })
            .await
            .unwrap();
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        let mut node = NodeClient::new(channel);
        for _ in 0..2 {
            node.node_publish_volume(NodePublishVolumeRequest {
                volume_id: "pvc-quota".into(),
                target_path: target.display().to_string(),
                volume_capability: Some(capability.clone()),
                ..Default::default()
            })
            .await
            .unwrap();
        }
        assert!(apiary_csi::local::mount::is_mounted(&target).unwrap());
        // Written through the published path: the first MiB fits, the second does not.
        let file = target.join("fill");
        if quota_fs.is_some() {
            let err = write_bytes(&file, 2 << 20).unwrap_err();
            assert_eq!(err.raw_os_error(), Some(libc::EDQUOT), "{err}");
            let written = std::fs::metadata(&file).unwrap().len();
            assert!(written <= 1 << 20, "{written} bytes got past a 1 MiB quota");
        } else {
            write_bytes(&file, 2 << 20).unwrap();
        }
        assert!(
            volume_root.join("volumes/pvc-quota/fill").exists(),
            "the data is in the volume's directory"
        );
        for _ in 0..2 {
            node.node_unpublish_volume(NodeUnpublishVolumeRequest {
                volume_id: "pvc-quota".into(),
                target_path: target.display().to_string(),
            })
            .await
            .unwrap();
        }
        assert!(!target.exists());
        assert!(
            volume_root.join("volumes/pvc-quota/fill").exists(),
            "unpublishing keeps the data"
        );
    });
}

/// Unmounts a publish target left behind by a failed test.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = apiary_csi::local::mount::unbind(&self.0);
    }
}

fn write_bytes(path: &Path, bytes: usize) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut file = std::fs::File::create(path)?;
    let chunk = vec![7u8; 64 << 10];
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len());
        file.write_all(&chunk[..n])?;
        left -= n;
    }
    file.sync_all()
}

fn claim(name: &str, size: &str, class: Option<&str>) -> String {
    let class = class
        .map(|c| format!("  storageClassName: {c}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {{name: {name}}}\nspec:\n  accessModes: [ReadWriteOnce]\n{class}  resources: {{requests: {{storage: {size}}}}}\n"
    )
}

fn pod_with_claim(name: &str, claim: &str) -> String {
    format!(
        r#"
apiVersion: v1
kind: Pod
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: c
    image: localhost/busybox:latest
    imagePullPolicy: IfNotPresent
    command: [sleep, "3600"]
    volumeMounts: [{{name: data, mountPath: /data}}]
  volumes:
  - name: data
    persistentVolumeClaim: {{claimName: {claim}}}
"#
    )
}

fn json(cluster: &ClusterLab, args: &[&str]) -> Value {
    cluster.kubectl_json(args).unwrap()
}

/// Deletes the pod and waits until it is gone.
fn delete_pod(cluster: &ClusterLab, name: &str) {
    cluster
        .kubectl_ok(&["delete", "pod", name, "--wait=true", "--timeout=60s"])
        .unwrap();
}

/// The volume bound to `claim` and its local-path directory.
fn volume_dir(cluster: &ClusterLab, claim: &str) -> (String, PathBuf) {
    apiary_tests::bench_storage::volume_dir(cluster, claim).unwrap()
}

#[test]
fn claims_bind_where_their_pod_lands_and_keep_their_data() {
    require_privileges!();
    let cluster = ClusterLab::start_with_agents(2, &[], &["--volume-capacity", "256Mi"]).unwrap();
    // Every node registered the driver and labelled itself with its topology.
    for node in cluster.nodes() {
        let csinode = wait("CSINode", Duration::from_secs(30), || {
            cluster
                .kubectl_json(&["get", "csinode", &node.name, "-o", "json"])
                .ok()
        })
        .unwrap();
        assert_eq!(
            csinode["spec"]["drivers"][0]["name"],
            "local.csi.apiary.dev"
        );
        assert_eq!(csinode["spec"]["drivers"][0]["nodeID"], node.name.as_str());
        let labels =
            &json(&cluster, &["get", "node", &node.name, "-o", "json"])["metadata"]["labels"];
        assert_eq!(
            labels["topology.local.csi.apiary.dev/node"],
            node.name.as_str()
        );
    }

    cluster.apply(&claim("data", "16Mi", None)).unwrap();
    let pvc = json(&cluster, &["get", "pvc", "data", "-o", "json"]);
    assert_eq!(
        pvc["spec"]["storageClassName"], "local-path",
        "the default class"
    );
    // WaitForFirstConsumer: nothing happens until a pod uses it.
    std::thread::sleep(Duration::from_secs(2));
    let pvc = json(&cluster, &["get", "pvc", "data", "-o", "json"]);
    assert_eq!(pvc["status"]["phase"], "Pending");

    let started = std::time::Instant::now();
    cluster.apply(&pod_with_claim("writer", "data")).unwrap();
    let pod = cluster
        .wait_ready("default", "writer", Duration::from_secs(90))
        .unwrap();
    eprintln!("claim bound and pod Ready in {:?}", started.elapsed());
    let node = pod["spec"]["nodeName"].as_str().unwrap().to_owned();
    let pvc = json(&cluster, &["get", "pvc", "data", "-o", "json"]);
    assert_eq!(pvc["status"]["phase"], "Bound");
    let (pv_name, dir) = volume_dir(&cluster, "data");
    let pv = json(&cluster, &["get", "pv", &pv_name, "-o", "json"]);
    assert_eq!(
        pv["spec"]["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"]
            [0],
        node.as_str(),
        "the volume is on the pod's node"
    );
    assert_eq!(
        pv["metadata"]["annotations"]["pv.kubernetes.io/provisioned-by"],
        "local.csi.apiary.dev"
    );
    cluster.sh("writer", "echo kept > /data/file && sync");
    assert_eq!(std::fs::read_to_string(dir.join("file")).unwrap(), "kept\n");

    // The pod goes and comes back: the PV's affinity brings it to the same node.
    delete_pod(&cluster, "writer");
    assert!(dir.join("file").exists(), "deleting the pod keeps the data");
    cluster.apply(&pod_with_claim("reader", "data")).unwrap();
    let pod = cluster
        .wait_ready("default", "reader", Duration::from_secs(90))
        .unwrap();
    assert_eq!(pod["spec"]["nodeName"], node.as_str());
    assert_eq!(cluster.sh("reader", "cat /data/file").trim(), "kept");

    // Delete reclaim (the class's default): the claim's deletion removes the directory.
    delete_pod(&cluster, "reader");
    cluster
        .kubectl_ok(&["delete", "pvc", "data", "--wait=true", "--timeout=60s"])
        .unwrap();
    wait(
        "the Delete volume's directory to go",
        Duration::from_secs(30),
        || (!dir.exists()).then_some(()),
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    wait("the PV to go", Duration::from_secs(30), || {
        cluster
            .kubectl_ok(&["get", "pv", &pv_name])
            .is_err()
            .then_some(())
    })
    .unwrap();

    // Retain: a class of the same driver keeps the directory.
    cluster
        .apply(
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: keep}\nprovisioner: local.csi.apiary.dev\nreclaimPolicy: Retain\nvolumeBindingMode: WaitForFirstConsumer\n",
        )
        .unwrap();
    cluster.apply(&claim("kept", "8Mi", Some("keep"))).unwrap();
    cluster.apply(&pod_with_claim("keeper", "kept")).unwrap();
    cluster
        .wait_ready("default", "keeper", Duration::from_secs(90))
        .unwrap();
    let (kept_pv, kept_dir) = volume_dir(&cluster, "kept");
    cluster.sh("keeper", "echo retained > /data/file && sync");
    delete_pod(&cluster, "keeper");
    cluster
        .kubectl_ok(&["delete", "pvc", "kept", "--wait=true", "--timeout=60s"])
        .unwrap();
    wait(
        "the Retain volume to be Released",
        Duration::from_secs(30),
        || {
            let pv = cluster
                .kubectl_json(&["get", "pv", &kept_pv, "-o", "json"])
                .ok()?;
            (pv["status"]["phase"] == "Released").then_some(())
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        std::fs::read_to_string(kept_dir.join("file")).unwrap(),
        "retained\n"
    );

    // Bigger than any node's capacity: Pending, and the reason is told.
    cluster.apply(&claim("huge", "1Gi", None)).unwrap();
    cluster.apply(&pod_with_claim("hungry", "huge")).unwrap();
    let reason = wait(
        "an event saying why the claim waits",
        Duration::from_secs(60),
        || {
            let events = cluster
                .kubectl_ok(&[
                    "get",
                    "events",
                    "-o",
                    "jsonpath={range .items[*]}{.involvedObject.name}: {.message}{\"\\n\"}{end}",
                ])
                .ok()?;
            events
                .lines()
                .find(|l| {
                    (l.starts_with("huge:") || l.starts_with("hungry:"))
                        && (l.contains("enough free storage") || l.contains("not enough capacity"))
                })
                .map(str::to_owned)
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    eprintln!("why: {reason}");
    let pvc = json(&cluster, &["get", "pvc", "huge", "-o", "json"]);
    assert_eq!(pvc["status"]["phase"], "Pending");
}

const STATEFUL_SET: &str = r#"
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: db}
spec:
  serviceName: db
  replicas: 2
  selector: {matchLabels: {app: db}}
  template:
    metadata: {labels: {app: db}}
    spec:
      terminationGracePeriodSeconds: 1
      securityContext: {fsGroup: 2000}
      containers:
      - name: c
        image: localhost/busybox:latest
        imagePullPolicy: IfNotPresent
        command: [sleep, "3600"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec:
      accessModes: [ReadWriteOnce]
      resources: {requests: {storage: 8Mi}}
"#;

/// The uid of a pod once it is Ready (a replacement has a new one).
fn ready_uid(cluster: &ClusterLab, name: &str) -> String {
    let pod = cluster
        .wait_ready("default", name, Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    pod["metadata"]["uid"].as_str().unwrap().to_owned()
}

#[test]
fn stateful_set_ordinals_keep_their_data_and_a_claim_in_use_waits_for_its_pod() {
    require_privileges!();
    let mut cluster = ClusterLab::start(2).unwrap();
    cluster.apply(STATEFUL_SET).unwrap();
    for ordinal in ["db-0", "db-1"] {
        ready_uid(&cluster, ordinal);
        cluster.sh(ordinal, &format!("echo {ordinal} > /data/id && sync"));
    }
    // fsGroup: the volume's root is the pod's group's, set-gid, on first mount.
    let owner = cluster.sh("db-0", "stat -c '%g %A' /data");
    let (group, mode) = owner.trim().split_once(' ').unwrap();
    assert_eq!(group, "2000", "{owner}");
    assert_eq!(
        mode.chars().nth(6),
        Some('s'),
        "set-gid, group-executable: {owner}"
    );

    // A deleted ordinal comes back with its own claim and data (on the volume's node).
    let old = json(&cluster, &["get", "pod", "db-0", "-o", "json"]);
    cluster
        .kubectl_ok(&["delete", "pod", "db-0", "--wait=false"])
        .unwrap();
    let new_uid = wait("db-0 replaced", Duration::from_secs(90), || {
        let pod = cluster
            .kubectl_json(&["get", "pod", "db-0", "-o", "json"])
            .ok()?;
        (pod["metadata"]["uid"] != old["metadata"]["uid"] && apiary_tests::cluster::is_ready(&pod))
            .then(|| pod["metadata"]["uid"].as_str().unwrap().to_owned())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let new = json(&cluster, &["get", "pod", "db-0", "-o", "json"]);
    assert_eq!(new["metadata"]["uid"], new_uid.as_str());
    assert_eq!(new["spec"]["nodeName"], old["spec"]["nodeName"]);
    assert_eq!(cluster.sh("db-0", "cat /data/id").trim(), "db-0");
    assert_eq!(cluster.sh("db-1", "cat /data/id").trim(), "db-1");

    // Mounts outlive the agent: restarted, it keeps db-0's volume where it was.
    let (_, dir) = volume_dir(&cluster, "data-db-0");
    let node = new["spec"]["nodeName"].as_str().unwrap().to_owned();
    let index = cluster.nodes().iter().position(|n| n.name == node).unwrap();
    cluster.restart_agent(index).unwrap();
    // Once the new agent serves exec, the same pod (adopted, not restarted) writes on.
    wait(
        "exec through the restarted agent",
        Duration::from_secs(60),
        || {
            cluster
                .kubectl_ok(&[
                    "exec",
                    "db-0",
                    "--",
                    "sh",
                    "-c",
                    "echo after-restart > /data/more && sync",
                ])
                .ok()
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(ready_uid(&cluster, "db-0"), new_uid, "the pod was adopted");
    assert_eq!(
        std::fs::read_to_string(dir.join("more")).unwrap(),
        "after-restart\n",
        "the pod still writes into its volume"
    );

    // Online expansion: the class allows it; the driver grows the volume and both objects say so.
    cluster
        .kubectl_ok(&[
            "patch",
            "pvc",
            "data-db-0",
            "--type=merge",
            "-p",
            r#"{"spec":{"resources":{"requests":{"storage":"16Mi"}}}}"#,
        ])
        .unwrap();
    wait("the claim to grow", Duration::from_secs(60), || {
        let pvc = cluster
            .kubectl_json(&["get", "pvc", "data-db-0", "-o", "json"])
            .ok()?;
        let pv_name = pvc["spec"]["volumeName"].as_str()?.to_owned();
        let pv = cluster
            .kubectl_json(&["get", "pv", &pv_name, "-o", "json"])
            .ok()?;
        (pvc["status"]["capacity"]["storage"] == "16Mi"
            && pv["spec"]["capacity"]["storage"] == "16Mi")
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));

    // A claim in use is not removed while its pod runs: `kubectl delete pvc` returns, the
    // claim stays Terminating, and goes once the pod does.
    cluster
        .kubectl_ok(&["delete", "pvc", "data-db-1", "--wait=false"])
        .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let pvc = json(&cluster, &["get", "pvc", "data-db-1", "-o", "json"]);
    assert!(
        pvc["metadata"]["deletionTimestamp"].is_string(),
        "marked for deletion: {pvc}"
    );
    assert!(
        pvc["metadata"]["finalizers"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f == "kubernetes.io/pvc-protection")),
        "{pvc}"
    );
    assert_eq!(cluster.sh("db-1", "cat /data/id").trim(), "db-1");
    cluster
        .kubectl_ok(&["scale", "statefulset", "db", "--replicas=1"])
        .unwrap();
    wait(
        "the claim to go with its pod",
        Duration::from_secs(90),
        || {
            cluster
                .kubectl_ok(&["get", "pvc", "data-db-1"])
                .is_err()
                .then_some(())
        },
    )
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    // The set's other claim is untouched.
    let pvc = json(&cluster, &["get", "pvc", "data-db-0", "-o", "json"]);
    assert_eq!(pvc["status"]["phase"], "Bound");
}

/// A third-party CSI driver as a vendor ships one: the plugin (Identity and Node services) on
/// its socket, and a node-driver-registrar serving the kubelet's `Registration` in the node's
/// plugin registry. It stages (bind-mounts a prepared directory onto the node's staging path)
/// and publishes from the staging path, as block-device drivers do.
mod third_party {
    use std::{
        path::PathBuf,
        sync::{Arc, Mutex},
    };

    use apiary_csi::{
        registration::{
            InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
            registration_server::{Registration, RegistrationServer},
        },
        v1::{
            GetPluginInfoRequest, GetPluginInfoResponse, NodeGetCapabilitiesRequest,
            NodeGetCapabilitiesResponse, NodeGetInfoRequest, NodeGetInfoResponse,
            NodePublishVolumeRequest, NodePublishVolumeResponse, NodeServiceCapability,
            NodeStageVolumeRequest, NodeStageVolumeResponse, NodeUnpublishVolumeRequest,
            NodeUnpublishVolumeResponse, NodeUnstageVolumeRequest, NodeUnstageVolumeResponse,
            Topology,
            identity_server::{Identity, IdentityServer},
            node_server::{Node, NodeServer},
            node_service_capability,
        },
    };
    use tonic::{Request, Response, Status};

    pub const NAME: &str = "example.csi.test";
    pub const TOPOLOGY_KEY: &str = "topology.example.csi.test/zone";

    #[derive(Clone, Debug)]
    pub struct Plugin {
        pub plugin_type: &'static str,
        pub node: String,
        /// The driver's socket, given to the agent as the registration's endpoint.
        pub endpoint: PathBuf,
        /// What every volume shows.
        pub source: PathBuf,
        /// What the agent asked, in order.
        pub calls: Arc<Mutex<Vec<String>>>,
    }

    impl Plugin {
        fn called(&self, what: String) {
            self.calls.lock().unwrap().push(what);
        }

        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }

        pub fn registration(&self) -> tonic::transport::server::Router {
            tonic::transport::Server::builder().add_service(RegistrationServer::new(self.clone()))
        }

        pub fn driver(&self) -> tonic::transport::server::Router {
            tonic::transport::Server::builder()
                .add_service(IdentityServer::new(self.clone()))
                .add_service(NodeServer::new(self.clone()))
        }
    }

    #[tonic::async_trait]
    impl Registration for Plugin {
        async fn get_info(&self, _: Request<InfoRequest>) -> Result<Response<PluginInfo>, Status> {
            Ok(Response::new(PluginInfo {
                r#type: self.plugin_type.to_owned(),
                name: NAME.to_owned(),
                endpoint: self.endpoint.display().to_string(),
                supported_versions: vec!["1.0.0".to_owned()],
            }))
        }

        async fn notify_registration_status(
            &self,
            request: Request<RegistrationStatus>,
        ) -> Result<Response<RegistrationStatusResponse>, Status> {
            let status = request.into_inner();
            self.called(format!(
                "registered:{}:{}",
                status.plugin_registered, status.error
            ));
            Ok(Response::new(RegistrationStatusResponse {}))
        }
    }

    #[tonic::async_trait]
    impl Identity for Plugin {
        async fn get_plugin_info(
            &self,
            _: Request<GetPluginInfoRequest>,
        ) -> Result<Response<GetPluginInfoResponse>, Status> {
            Ok(Response::new(GetPluginInfoResponse {
                name: NAME.to_owned(),
                vendor_version: "0.1.0".to_owned(),
                manifest: Default::default(),
            }))
        }
    }

    #[tonic::async_trait]
    impl Node for Plugin {
        async fn node_get_capabilities(
            &self,
            _: Request<NodeGetCapabilitiesRequest>,
        ) -> Result<Response<NodeGetCapabilitiesResponse>, Status> {
            let stage = node_service_capability::Rpc {
                r#type: node_service_capability::rpc::Type::StageUnstageVolume as i32,
            };
            Ok(Response::new(NodeGetCapabilitiesResponse {
                capabilities: vec![NodeServiceCapability {
                    r#type: Some(node_service_capability::Type::Rpc(stage)),
                }],
            }))
        }

        async fn node_stage_volume(
            &self,
            request: Request<NodeStageVolumeRequest>,
        ) -> Result<Response<NodeStageVolumeResponse>, Status> {
            let request = request.into_inner();
            self.called(format!(
                "stage:{}:{}",
                request.volume_id, request.staging_target_path
            ));
            apiary_csi::local::mount::bind(
                &self.source,
                std::path::Path::new(&request.staging_target_path),
                false,
            )
            .map_err(|e| Status::internal(e.to_string()))?;
            Ok(Response::new(NodeStageVolumeResponse {}))
        }

        async fn node_unstage_volume(
            &self,
            request: Request<NodeUnstageVolumeRequest>,
        ) -> Result<Response<NodeUnstageVolumeResponse>, Status> {
            let request = request.into_inner();
            self.called(format!("unstage:{}", request.volume_id));
            apiary_csi::local::mount::unbind(std::path::Path::new(&request.staging_target_path))
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok(Response::new(NodeUnstageVolumeResponse {}))
        }

        async fn node_get_info(
            &self,
            _: Request<NodeGetInfoRequest>,
        ) -> Result<Response<NodeGetInfoResponse>, Status> {
            Ok(Response::new(NodeGetInfoResponse {
                node_id: self.node.clone(),
                max_volumes_per_node: 0,
                accessible_topology: Some(Topology {
                    segments: [(TOPOLOGY_KEY.to_owned(), "zone-a".to_owned())].into(),
                }),
            }))
        }

        async fn node_publish_volume(
            &self,
            request: Request<NodePublishVolumeRequest>,
        ) -> Result<Response<NodePublishVolumeResponse>, Status> {
            let request = request.into_inner();
            self.called(format!("publish:{}", request.volume_id));
            if request.staging_target_path.is_empty() {
                return Err(Status::failed_precondition("the volume was not staged"));
            }
            apiary_csi::local::mount::bind(
                std::path::Path::new(&request.staging_target_path),
                std::path::Path::new(&request.target_path),
                request.readonly,
            )
            .map_err(|e| Status::internal(e.to_string()))?;
            Ok(Response::new(NodePublishVolumeResponse {}))
        }

        async fn node_unpublish_volume(
            &self,
            request: Request<NodeUnpublishVolumeRequest>,
        ) -> Result<Response<NodeUnpublishVolumeResponse>, Status> {
            let request = request.into_inner();
            self.called(format!("unpublish:{}", request.volume_id));
            apiary_csi::local::mount::unbind(std::path::Path::new(&request.target_path))
                .map_err(|e| Status::internal(e.to_string()))?;
            Ok(Response::new(NodeUnpublishVolumeResponse {}))
        }
    }
}

fn csinode_drivers(cluster: &ClusterLab, node: &str) -> Vec<String> {
    cluster
        .kubectl_json(&["get", "csinode", node, "-o", "json"])
        .ok()
        .and_then(|n| {
            n["spec"]["drivers"].as_array().map(|d| {
                d.iter()
                    .filter_map(|d| d["name"].as_str().map(str::to_owned))
                    .collect()
            })
        })
        .unwrap_or_default()
}

#[test]
fn a_third_party_driver_registers_through_the_plugin_registry_and_mounts_volumes() {
    require_privileges!();
    let cluster = ClusterLab::start(1).unwrap();
    let node_name = cluster.nodes()[0].name.clone();
    let run_dir = cluster.nodes()[0].run_dir.clone();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let source = tempfile::tempdir().unwrap();
    std::fs::write(source.path().join("hello"), "from the driver\n").unwrap();
    let driver_socket = run_dir
        .join("plugins")
        .join(third_party::NAME)
        .join("csi.sock");
    let plugin = |plugin_type| third_party::Plugin {
        plugin_type,
        node: node_name.clone(),
        endpoint: driver_socket.clone(),
        source: source.path().to_owned(),
        calls: Default::default(),
    };
    let good = plugin("CSIPlugin");
    let device = plugin("DevicePlugin");
    let registry = run_dir.join("plugins_registry");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let serve = |router: tonic::transport::server::Router, socket: std::path::PathBuf| {
        let mut stopped = stopped.clone();
        runtime.spawn(async move {
            let shutdown = async move {
                let _ = stopped.wait_for(|s| *s).await;
            };
            apiary_csi::serve(router, &socket, shutdown).await.unwrap();
        })
    };
    serve(good.driver(), driver_socket.clone());
    let registration_socket = registry.join(format!("{}-reg.sock", third_party::NAME));
    let registration = serve(good.registration(), registration_socket.clone());
    serve(device.registration(), registry.join("gpu-reg.sock"));

    // Registered as the kubelet registers it: told so, in the CSINode beside the built-in
    // driver, the Node labelled with its topology.
    wait("the driver registered", Duration::from_secs(30), || {
        csinode_drivers(&cluster, &node_name)
            .contains(&third_party::NAME.to_owned())
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(csinode_drivers(&cluster, &node_name).contains(&"local.csi.apiary.dev".to_owned()));
    let labels = &json(&cluster, &["get", "node", &node_name, "-o", "json"])["metadata"]["labels"];
    assert_eq!(labels[third_party::TOPOLOGY_KEY], "zone-a");
    wait("the registration status", Duration::from_secs(10), || {
        good.calls()
            .contains(&"registered:true:".to_owned())
            .then_some(())
    })
    .unwrap();
    // A device plugin is refused, and told why.
    let refusal = wait(
        "the device plugin's refusal",
        Duration::from_secs(10),
        || {
            device
                .calls()
                .into_iter()
                .find(|c| c.starts_with("registered:false:"))
        },
    )
    .unwrap();
    assert!(refusal.contains("not supported"), "{refusal}");

    // Its volume is published into a pod through it, and unpublished when the pod goes.
    cluster
        .apply(&format!(
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {{name: ext}}\nspec:\n  accessModes: [ReadWriteOnce]\n  capacity: {{storage: 1Gi}}\n  storageClassName: external\n  csi: {{driver: {}, volumeHandle: vol-1}}\n",
            third_party::NAME
        ))
        .unwrap();
    cluster
        .apply(&claim("ext", "1Gi", Some("external")))
        .unwrap();
    cluster.apply(&pod_with_claim("ext-user", "ext")).unwrap();
    cluster
        .wait_ready("default", "ext-user", Duration::from_secs(90))
        .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert_eq!(
        cluster.sh("ext-user", "cat /data/hello").trim(),
        "from the driver"
    );
    assert!(good.calls().contains(&"publish:vol-1".to_owned()));
    delete_pod(&cluster, "ext-user");
    wait("the volume unpublished", Duration::from_secs(30), || {
        good.calls()
            .contains(&"unpublish:vol-1".to_owned())
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));

    // The registrar goes: so does the driver's registration.
    registration.abort();
    let _ = std::fs::remove_file(&registration_socket);
    wait("the driver deregistered", Duration::from_secs(30), || {
        (!csinode_drivers(&cluster, &node_name).contains(&third_party::NAME.to_owned()))
            .then_some(())
    })
    .unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    let _ = stop.send(true);
    drop(runtime);
}
