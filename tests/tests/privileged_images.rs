//! The image store as root: the busybox archive imported and unpacked with owners and modes,
//! whiteouts turned into overlayfs form, and a push/pull round trip through a real registry
//! (Debian's `docker-registry`) listening on loopback.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use apiary_images::{
    ImageStore, PullOptions, PullProgress,
    build::{self, LayerEntry},
    manifest::RunConfig,
};
use apiary_tests::require_privileges;

const REGISTRY: &str = "/usr/bin/docker-registry";

/// A `docker-registry` on 127.0.0.1 with its storage in a temp dir; killed on drop.
struct Registry {
    child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Registry {
    fn start() -> Self {
        assert!(
            Path::new(REGISTRY).exists(),
            "{REGISTRY} is missing: apt-get install docker-registry (cargo xtask setup does)"
        );
        let dir = tempfile::Builder::new()
            .prefix("apiary-registry-")
            .tempdir()
            .unwrap();
        // A free port: bind :0, note it, let go (the registry binds it right after).
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let config = dir.path().join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        // Its log (every 404 is an "error") stays in the temp dir.
        let log = fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(REGISTRY)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut registry = Self {
            child,
            addr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if let Some(status) = registry.child.try_wait().unwrap() {
                panic!("docker-registry exited early: {status}");
            }
            assert!(
                Instant::now() < deadline,
                "docker-registry did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        registry
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    fn options(&self) -> PullOptions {
        PullOptions {
            insecure_registries: vec![self.host()],
            extra_ca_pem: None,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A read-only overlay mount, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn overlay(lowerdirs: &str, target: &Path) -> Self {
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={lowerdirs}"))
            .arg(target)
            .status()
            .unwrap();
        assert!(status.success(), "mounting the overlay: {status}");
        Self(target.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("apiary-images-")
        .tempdir()
        .unwrap()
}

/// Every path under `dir`, with what it is (file hash, link target, mode, owner).
fn describe_tree(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for entry in fs::read_dir(dir.join(&rel)).unwrap() {
            let entry = entry.unwrap();
            let rel = rel.join(entry.file_name());
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            let what = if meta.is_dir() {
                stack.push(rel.clone());
                "dir".to_owned()
            } else if meta.file_type().is_symlink() {
                format!("-> {}", fs::read_link(entry.path()).unwrap().display())
            } else {
                apiary_images::digest::of(&fs::read(entry.path()).unwrap())
            };
            out.push(format!(
                "{} {what} {:o} {}:{}",
                rel.display(),
                meta.mode(),
                meta.uid(),
                meta.gid()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn imports_the_busybox_archive_with_owners_modes_and_applets() {
    require_privileges!();
    let tmp = temp_dir();
    let archive = tmp.path().join("busybox.tar");
    let built = build::busybox_archive(&archive).unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let imported = store.import(&archive).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].reference, "localhost/busybox:latest");
    assert_eq!(imported[0].digest, built.digest);

    let image = store.resolve("localhost/busybox").unwrap().unwrap();
    assert_eq!(image.config.cmd, ["sh"]);
    assert_eq!(image.config.env, ["PATH=/usr/sbin:/usr/bin:/sbin:/bin"]);
    let [layer] = image.layers.as_slice() else {
        panic!("one layer expected, got {:?}", image.layers);
    };
    // The layer's root is the container's `/`: everyone may traverse it.
    let root = fs::metadata(layer).unwrap();
    assert_eq!(root.permissions().mode() & 0o7777, 0o755);
    let busybox = fs::metadata(layer.join("bin/busybox")).unwrap();
    assert_eq!(busybox.permissions().mode() & 0o7777, 0o755);
    assert_eq!(
        fs::read(layer.join("bin/busybox")).unwrap(),
        fs::read("/bin/busybox").unwrap()
    );
    for applet in ["bin/sh", "usr/bin/wget", "bin/sleep"] {
        assert_eq!(
            fs::read_link(layer.join(applet)).unwrap(),
            Path::new("/bin/busybox"),
            "{applet}"
        );
    }
    let applets = String::from_utf8(
        Command::new("/bin/busybox")
            .arg("--list-full")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    for applet in applets.lines().filter(|a| *a != "bin/busybox") {
        assert!(
            fs::symlink_metadata(layer.join(applet)).is_ok(),
            "applet {applet} missing"
        );
    }
    let tmp_dir = fs::metadata(layer.join("tmp")).unwrap();
    assert_eq!(tmp_dir.permissions().mode() & 0o7777, 0o1777);
    assert!(layer.join("var/www").is_dir());
    assert!(
        fs::read_to_string(layer.join("etc/passwd"))
            .unwrap()
            .contains("nobody:x:65534:65534:")
    );
    assert!(
        fs::read_to_string(layer.join("etc/group"))
            .unwrap()
            .starts_with("root:x:0:")
    );
    assert_eq!((busybox.uid(), busybox.gid()), (0, 0));
}

fn xattr(path: &Path, name: &std::ffi::CStr) -> Option<Vec<u8>> {
    use std::os::unix::ffi::OsStrExt as _;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap();
    let mut buf = [0u8; 64];
    // SAFETY: the strings are NUL-terminated; the buffer's length is passed with it.
    let n = unsafe {
        libc::lgetxattr(
            c_path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn whiteouts_become_overlayfs_whiteouts_and_owners_and_hard_links_are_kept() {
    require_privileges!();
    let tmp = temp_dir();
    let file = |path: &str, data: &str| LayerEntry::File {
        path: path.to_owned(),
        mode: 0o600,
        data: data.as_bytes().to_vec(),
    };
    let dir = |path: &str| LayerEntry::Dir {
        path: path.to_owned(),
        mode: 0o750,
    };
    let lower = build::layer_tar(&[
        dir("etc"),
        file("etc/motd", "hi"),
        dir("cache"),
        file("cache/a", "a"),
    ])
    .unwrap();
    let upper = build::layer_tar(&[
        dir("etc"),
        file("etc/.wh.motd", ""),
        dir("cache"),
        file("cache/.wh..wh..opq", ""),
        file("cache/b", "b"),
        LayerEntry::OwnedFile {
            path: "cache/owned".to_owned(),
            mode: 0o640,
            uid: 1234,
            gid: 5678,
            data: b"mine".to_vec(),
        },
        LayerEntry::HardLink {
            path: "cache/same".to_owned(),
            target: "cache/owned".to_owned(),
        },
    ])
    .unwrap();
    let archive = tmp.path().join("wh.tar");
    build::oci_archive(
        &archive,
        "localhost/wh:1",
        &[lower, upper],
        RunConfig::default(),
    )
    .unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    store.import(&archive).unwrap();
    let image = store.resolve("localhost/wh:1").unwrap().unwrap();
    let upper = &image.layers[1];

    let whiteout = fs::symlink_metadata(upper.join("etc/motd")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0);
    assert!(!upper.join("etc/.wh.motd").exists());
    assert_eq!(
        xattr(&upper.join("cache"), c"trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert!(!upper.join("cache/.wh..wh..opq").exists());
    assert_eq!(fs::read_to_string(upper.join("cache/b")).unwrap(), "b");
    let owned = fs::metadata(upper.join("cache/owned")).unwrap();
    assert_eq!((owned.uid(), owned.gid()), (1234, 5678));
    assert_eq!(owned.permissions().mode() & 0o7777, 0o640);
    let same = fs::metadata(upper.join("cache/same")).unwrap();
    assert_eq!((same.ino(), same.nlink()), (owned.ino(), 2));
    let cache = fs::metadata(upper.join("cache")).unwrap();
    assert_eq!(cache.permissions().mode() & 0o777, 0o750);
    // Stacked as overlayfs lowerdirs (top first), the whiteouts hide what is below.
    let merged = tmp.path().join("merged");
    fs::create_dir(&merged).unwrap();
    let lowerdirs = format!("{}:{}", upper.display(), image.layers[0].display());
    let _mount = Mount::overlay(&lowerdirs, &merged);
    assert!(!merged.join("etc/motd").exists());
    assert!(merged.join("etc").is_dir());
    assert!(
        !merged.join("cache/a").exists(),
        "the opaque dir hides the lower cache/a"
    );
    assert_eq!(fs::read_to_string(merged.join("cache/b")).unwrap(), "b");
    assert_eq!(
        fs::read_to_string(merged.join("cache/same")).unwrap(),
        "mine"
    );
    // The lower layer is untouched: whiteouts only mean something when stacked.
    assert_eq!(
        fs::read_to_string(image.layers[0].join("etc/motd")).unwrap(),
        "hi"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_and_pull_through_a_registry_on_loopback() {
    require_privileges!();
    let tmp = temp_dir();
    let archive = tmp.path().join("busybox.tar");
    let built = build::busybox_archive(&archive).unwrap();
    let source = ImageStore::open(&tmp.path().join("source")).unwrap();
    source.import(&archive).unwrap();

    let registry = Registry::start();
    let remote = format!("{}/apiary/busybox:latest", registry.host());
    let pushed = source
        .push("localhost/busybox:latest", &remote, &registry.options())
        .await
        .unwrap();
    assert_eq!(pushed, built.digest);

    let dest = ImageStore::open(&tmp.path().join("dest")).unwrap();
    let mut events = Vec::new();
    let started = Instant::now();
    let image = dest
        .pull(&remote, &registry.options(), &mut |e| events.push(e))
        .await
        .unwrap();
    eprintln!("first pull: {:?}", started.elapsed());
    assert_eq!(image.digest, built.digest);
    assert_eq!(image.reference, remote);
    assert_eq!(image.config.cmd, ["sh"]);
    let original = source.resolve("localhost/busybox:latest").unwrap().unwrap();
    assert_eq!(image.layers.len(), 1);
    assert_eq!(
        describe_tree(&image.layers[0]),
        describe_tree(&original.layers[0])
    );

    let PullProgress::Resolved {
        digest,
        layers,
        total_bytes,
    } = &events[0]
    else {
        panic!("first event: {:?}", events[0]);
    };
    assert_eq!((digest, *layers), (&built.digest, 1));
    let layer_bytes: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            PullProgress::Layer {
                downloaded, total, ..
            } => Some((*downloaded, *total)),
            _ => None,
        })
        .collect();
    let last = layer_bytes.last().expect("layer download progress");
    assert_eq!((last.0, last.1), (*total_bytes, *total_bytes));
    assert!(layer_bytes.windows(2).all(|w| w[0].0 <= w[1].0));
    assert!(matches!(
        &events[events.len() - 2],
        PullProgress::LayerDone { cached: false, .. }
    ));
    assert_eq!(
        events.last(),
        Some(&PullProgress::Done {
            digest: built.digest.clone()
        })
    );

    // Again: nothing to download, the layer is reported cached.
    let mut again = Vec::new();
    dest.pull(&remote, &registry.options(), &mut |e| again.push(e))
        .await
        .unwrap();
    assert!(
        again
            .iter()
            .all(|e| !matches!(e, PullProgress::Layer { .. })),
        "{again:?}"
    );
    assert!(
        again
            .iter()
            .any(|e| matches!(e, PullProgress::LayerDone { cached: true, .. })),
        "{again:?}"
    );

    // By digest, under the digest reference.
    let by_digest = format!("{}/apiary/busybox@{}", registry.host(), built.digest);
    let pinned = dest
        .pull(&by_digest, &registry.options(), &mut |_| {})
        .await
        .unwrap();
    assert_eq!(pinned.digest, built.digest);
    assert_eq!(dest.list().unwrap().len(), 2);

    let missing = format!("{}/apiary/busybox:nope", registry.host());
    let err = dest
        .pull(&missing, &registry.options(), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("manifest unknown"), "{err}");
    assert!(err.contains("apiary/busybox:nope"), "{err}");

    // Plain HTTP only where allowed: without the flag the client speaks TLS and fails.
    let err = ImageStore::open(&tmp.path().join("strict"))
        .unwrap()
        .pull(&remote, &PullOptions::default(), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&registry.host()), "{err}");
}
