//! The store against archives built here: no root, no network.

use std::{fs, path::Path};

use apiary_images::{
    ImageStore,
    build::{self, LayerEntry},
    digest,
    manifest::RunConfig,
};

fn file(path: &str, data: &str) -> LayerEntry {
    LayerEntry::File {
        path: path.to_owned(),
        mode: 0o644,
        data: data.as_bytes().to_vec(),
    }
}

fn dir(path: &str) -> LayerEntry {
    LayerEntry::Dir {
        path: path.to_owned(),
        mode: 0o755,
    }
}

fn base_layer() -> Vec<u8> {
    build::layer_tar(&[
        dir("etc"),
        file("etc/os-release", "ID=test\n"),
        dir("bin"),
        LayerEntry::Symlink {
            path: "bin/sh".to_owned(),
            target: "/bin/busybox".to_owned(),
        },
    ])
    .unwrap()
}

fn app_layer(content: &str) -> Vec<u8> {
    build::layer_tar(&[dir("app"), file("app/main", content)]).unwrap()
}

fn run_config() -> RunConfig {
    RunConfig {
        entrypoint: Some(vec!["/app/main".to_owned()]),
        cmd: Some(vec!["--serve".to_owned()]),
        env: Some(vec!["PATH=/bin".to_owned()]),
        working_dir: Some("/app".to_owned()),
        user: Some("65534".to_owned()),
    }
}

fn count(dir: &Path) -> usize {
    fs::read_dir(dir).unwrap().count()
}

#[test]
fn imports_an_oci_layout_and_resolves_it() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("app.tar");
    let built = build::oci_archive(
        &archive,
        "localhost/app:v1",
        &[base_layer(), app_layer("v1")],
        run_config(),
    )
    .unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();

    let imported = store.import(&archive).unwrap();
    assert_eq!(imported.len(), 1);
    assert_eq!(imported[0].reference, "localhost/app:v1");
    assert_eq!(imported[0].digest, built.digest);
    assert_eq!(imported[0].created.as_deref(), Some("2024-01-01T00:00:00Z"));
    assert!(imported[0].size > 0);
    assert_eq!(store.list().unwrap(), imported);

    let image = store.resolve("localhost/app:v1").unwrap().unwrap();
    assert_eq!(image.digest, built.digest);
    assert_eq!(image.config.entrypoint, ["/app/main"]);
    assert_eq!(image.config.cmd, ["--serve"]);
    assert_eq!(image.config.env, ["PATH=/bin"]);
    assert_eq!(image.config.working_dir.as_deref(), Some("/app"));
    assert_eq!(image.config.user.as_deref(), Some("65534"));
    assert_eq!(image.layers.len(), 2);
    // Bottom first, each named by its diff ID.
    for (layer, diff_id) in image.layers.iter().zip(&built.diff_ids) {
        assert_eq!(
            layer.file_name().unwrap().to_str().unwrap(),
            digest::validate(diff_id).unwrap()
        );
    }
    assert_eq!(
        fs::read_to_string(image.layers[0].join("etc/os-release")).unwrap(),
        "ID=test\n"
    );
    assert_eq!(
        fs::read_link(image.layers[0].join("bin/sh")).unwrap(),
        Path::new("/bin/busybox")
    );
    assert_eq!(
        fs::read_to_string(image.layers[1].join("app/main")).unwrap(),
        "v1"
    );
    assert!(store.resolve("localhost/app:v2").unwrap().is_none());
    // Nothing left behind in tmp/, and the archive's own index.json did not stay as a blob.
    assert_eq!(count(&tmp.path().join("store/tmp")), 0);
    assert_eq!(count(&tmp.path().join("store/blobs/sha256")), 4);
}

/// A `docker save` archive: manifest.json, the config by its ID, layers as `<id>/layer.tar`.
/// `layers` are uncompressed tars, stored gzipped when their flag says so.
fn docker_save(out: &Path, tags: &[&str], layers: &[(Vec<u8>, bool)]) -> String {
    let diff_ids: Vec<String> = layers.iter().map(|(l, _)| digest::of(l)).collect();
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "created": "2023-05-06T07:08:09Z",
        "config": { "Cmd": ["sh"], "Env": ["A=b"] },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
    });
    let config = serde_json::to_vec(&config).unwrap();
    let config_id = digest::validate(&digest::of(&config)).unwrap().to_owned();
    let mut entries = vec![file(&format!("{config_id}.json"), "")];
    entries[0] = LayerEntry::File {
        path: format!("{config_id}.json"),
        mode: 0o644,
        data: config,
    };
    let mut layer_paths = Vec::new();
    for (i, (layer, gzipped)) in layers.iter().enumerate() {
        let layer = if *gzipped {
            build::gzip(layer)
        } else {
            layer.clone()
        };
        let path = format!("layer{i}/layer.tar");
        entries.push(dir(&format!("layer{i}")));
        entries.push(LayerEntry::File {
            path: path.clone(),
            mode: 0o644,
            data: layer,
        });
        layer_paths.push(path);
    }
    let manifest = serde_json::json!([{
        "Config": format!("{config_id}.json"),
        "RepoTags": tags,
        "Layers": layer_paths,
    }]);
    entries.push(LayerEntry::File {
        path: "manifest.json".to_owned(),
        mode: 0o644,
        data: serde_json::to_vec(&manifest).unwrap(),
    });
    fs::write(out, build::layer_tar(&entries).unwrap()).unwrap();
    config_id
}

#[test]
fn imports_a_docker_save_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("saved.tar");
    docker_save(
        &archive,
        &["busybox:1.36", "example.com/team/tool:latest"],
        &[(base_layer(), false), (app_layer("saved"), true)],
    );
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let imported = store.import(&archive).unwrap();
    let references: Vec<&str> = imported.iter().map(|s| s.reference.as_str()).collect();
    assert_eq!(
        references,
        [
            "docker.io/library/busybox:1.36",
            "example.com/team/tool:latest"
        ]
    );
    assert_eq!(imported[0].digest, imported[1].digest);
    assert_eq!(imported[0].created.as_deref(), Some("2023-05-06T07:08:09Z"));

    let image = store.resolve("busybox:1.36").unwrap().unwrap();
    assert_eq!(image.config.cmd, ["sh"]);
    assert_eq!(image.config.env, ["A=b"]);
    assert!(image.config.entrypoint.is_empty());
    assert_eq!(
        fs::read_to_string(image.layers[1].join("app/main")).unwrap(),
        "saved"
    );
    // Importing again changes nothing.
    let again = store.import(&archive).unwrap();
    assert_eq!(again, imported);
    assert_eq!(store.list().unwrap().len(), 2);
}

#[test]
fn rejects_a_blob_whose_content_does_not_match_its_name() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good.tar");
    build::oci_archive(&good, "localhost/x:1", &[app_layer("x")], run_config()).unwrap();
    // Rewrite the archive with one blob's content changed but its name kept.
    let mut entries = Vec::new();
    let mut archive = tar::Archive::new(fs::File::open(&good).unwrap());
    let mut tampered = false;
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        if entry.header().entry_type().is_dir() {
            entries.push(dir(path.trim_end_matches('/')));
            continue;
        }
        if path.starts_with("blobs/sha256/") && !tampered && data.starts_with(&[0x1f, 0x8b]) {
            data.push(0);
            tampered = true;
        }
        entries.push(LayerEntry::File {
            path,
            mode: 0o644,
            data,
        });
    }
    assert!(tampered);
    let bad = tmp.path().join("bad.tar");
    fs::write(&bad, build::layer_tar(&entries).unwrap()).unwrap();

    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let err = store.import(&bad).unwrap_err().to_string();
    assert!(err.contains("digest mismatch"), "{err}");
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(&tmp.path().join("store/blobs/sha256")), 0);
    assert_eq!(count(&tmp.path().join("store/tmp")), 0);
}

#[test]
fn remove_untags_and_collects_only_unshared_content() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.tar"), tmp.path().join("b.tar"));
    build::oci_archive(
        &a,
        "localhost/a:1",
        &[base_layer(), app_layer("a")],
        run_config(),
    )
    .unwrap();
    build::oci_archive(
        &b,
        "localhost/b:1",
        &[base_layer(), app_layer("b")],
        run_config(),
    )
    .unwrap();
    let root = tmp.path().join("store");
    let store = ImageStore::open(&root).unwrap();
    store.import(&a).unwrap();
    store.import(&b).unwrap();
    // Two app layers and one shared base layer.
    assert_eq!(count(&root.join("layers")), 3);

    let err = store.remove("localhost/nope:1").unwrap_err().to_string();
    assert_eq!(err, "image \"localhost/nope:1\" not found");

    let a_image = store.resolve("localhost/a:1").unwrap().unwrap();
    store.remove("localhost/a:1").unwrap();
    assert!(store.resolve("localhost/a:1").unwrap().is_none());
    let b_image = store.resolve("localhost/b:1").unwrap().unwrap();
    assert!(!a_image.layers[1].exists(), "a's own layer is collected");
    assert!(b_image.layers[0].exists(), "the shared base layer stays");
    assert_eq!(a_image.layers[0], b_image.layers[0]);
    assert_eq!(count(&root.join("layers")), 2);

    // By digest: every tag of the manifest goes.
    store.remove(&b_image.digest).unwrap();
    assert!(store.list().unwrap().is_empty());
    assert_eq!(count(&root.join("layers")), 0);
    assert_eq!(count(&root.join("blobs/sha256")), 0);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(root.join("index.json")).unwrap()).unwrap();
    assert_eq!(index["images"], serde_json::json!({}));
}

#[test]
fn concurrent_imports_on_one_root_both_land() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("store");
    let archives: Vec<_> = (0..4)
        .map(|i| {
            let path = tmp.path().join(format!("{i}.tar"));
            let name = format!("localhost/img{i}:latest");
            build::oci_archive(
                &path,
                &name,
                &[base_layer(), app_layer(&name)],
                run_config(),
            )
            .unwrap();
            path
        })
        .collect();
    // Separate stores on one root, as the agent and the CLI would be.
    let threads: Vec<_> = archives
        .into_iter()
        .map(|archive| {
            let store = ImageStore::open(&root).unwrap();
            std::thread::spawn(move || store.import(&archive).unwrap())
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    let store = ImageStore::open(&root).unwrap();
    let names: Vec<String> = store
        .list()
        .unwrap()
        .into_iter()
        .map(|s| s.reference)
        .collect();
    assert_eq!(
        names,
        (0..4)
            .map(|i| format!("localhost/img{i}:latest"))
            .collect::<Vec<_>>()
    );
    for name in names {
        let image = store.resolve(&name).unwrap().unwrap();
        assert_eq!(
            fs::read_to_string(image.layers[1].join("app/main")).unwrap(),
            name
        );
    }
}

#[test]
fn rejects_archives_that_are_not_images() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(&tmp.path().join("store")).unwrap();
    let plain = tmp.path().join("plain.tar");
    fs::write(&plain, build::layer_tar(&[file("hello", "x")]).unwrap()).unwrap();
    let err = store.import(&plain).unwrap_err().to_string();
    assert!(err.contains("neither an OCI image layout"), "{err}");

    let tag_only = tmp.path().join("tag-only.tar");
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": format!("sha256:{}", "00".repeat(32)), "size": 1,
        "annotations": {"org.opencontainers.image.ref.name": "latest"}}]});
    fs::write(
        &tag_only,
        build::layer_tar(&[
            file("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#),
            file("index.json", &index.to_string()),
        ])
        .unwrap(),
    )
    .unwrap();
    let err = store.import(&tag_only).unwrap_err().to_string();
    assert!(
        err.contains("manifests[0]") && err.contains("only the tag \"latest\""),
        "{err}"
    );
    let err = store
        .import(&tmp.path().join("missing.tar"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("missing.tar"), "{err}");
}

#[test]
fn the_busybox_archive_is_deterministic() {
    let tmp = tempfile::tempdir().unwrap();
    let first = build::busybox_archive(&tmp.path().join("1.tar")).unwrap();
    let second = build::busybox_archive(&tmp.path().join("2.tar")).unwrap();
    assert_eq!(first, second);
    assert_eq!(first.reference, "localhost/busybox:latest");
    assert_eq!(
        fs::read(tmp.path().join("1.tar")).unwrap(),
        fs::read(tmp.path().join("2.tar")).unwrap()
    );
}
