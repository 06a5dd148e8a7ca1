//! Pulls against a scripted registry on loopback: bearer-token auth, manifest lists, digest
//! checks. No root needed (the real `docker-registry` round trip is in `apiary-tests`).

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use apiary_images::{ImageStore, PullOptions, PullProgress, build, digest, manifest};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

const TOKEN: &str = "let-me-in";

/// path → (content type, body); requests seen, as "METHOD path auth?".
#[derive(Default)]
struct Script {
    routes: HashMap<String, (String, Vec<u8>)>,
    seen: Vec<String>,
}

/// Serves `script` over plain HTTP, asking for a bearer token on `/v2/` like Docker Hub does.
async fn serve(script: Arc<Mutex<Script>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let realm = format!("http://{addr}/token");
    tokio::spawn(async move {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else {
                return;
            };
            let script = script.clone();
            let realm = realm.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).to_string();
                let mut lines = head.lines();
                let mut request = lines.next().unwrap_or_default().split(' ');
                let (method, target) = (
                    request.next().unwrap_or_default(),
                    request.next().unwrap_or_default(),
                );
                let authorized = lines
                    .clone()
                    .any(|l| l.eq_ignore_ascii_case(&format!("authorization: Bearer {TOKEN}")));
                let path = target.split('?').next().unwrap_or_default().to_owned();
                script.lock().unwrap().seen.push(format!(
                    "{method} {target} {}",
                    if authorized { "auth" } else { "anon" }
                ));
                let (status, headers, body) = if path == "/token" {
                    if target.contains("scope=repository%3Aorg%2Fapp%3Apull")
                        && target.contains("service=fake")
                    {
                        (
                            "200 OK",
                            "Content-Type: application/json\r\n".to_owned(),
                            format!(r#"{{"token":"{TOKEN}"}}"#).into_bytes(),
                        )
                    } else {
                        (
                            "400 Bad Request",
                            String::new(),
                            b"bad token request".to_vec(),
                        )
                    }
                } else if !authorized {
                    (
                        "401 Unauthorized",
                        format!(
                            "WWW-Authenticate: Bearer realm=\"{realm}\",service=\"fake\",scope=\"repository:org/app:pull\"\r\n"
                        ),
                        b"{}".to_vec(),
                    )
                } else {
                    match script.lock().unwrap().routes.get(&path) {
                        Some((content_type, body)) => (
                            "200 OK",
                            format!("Content-Type: {content_type}\r\n"),
                            body.clone(),
                        ),
                        None => (
                            "404 Not Found",
                            String::new(),
                            br#"{"errors":[{"code":"MANIFEST_UNKNOWN"}]}"#.to_vec(),
                        ),
                    }
                };
                let response = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = conn.write_all(response.as_bytes()).await;
                if method != "HEAD" {
                    let _ = conn.write_all(&body).await;
                }
                let _ = conn.shutdown().await;
            });
        }
    });
    addr
}

/// Puts an image (from an OCI archive built here) behind `org/app:v1` as a two-platform list.
fn publish(script: &mut Script, layer_content: &str, corrupt_layer: bool) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let archive = tmp.path().join("a.tar");
    let layer = build::layer_tar(&[build::LayerEntry::File {
        path: "hello".to_owned(),
        mode: 0o644,
        data: layer_content.as_bytes().to_vec(),
    }])
    .unwrap();
    let built =
        build::oci_archive(&archive, "localhost/app:v1", &[layer], Default::default()).unwrap();
    let mut tar = tar::Archive::new(std::fs::File::open(&archive).unwrap());
    for entry in tar.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().display().to_string();
        let Some(hex) = path.strip_prefix("blobs/sha256/") else {
            continue;
        };
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        let digest = format!("sha256:{hex}");
        if digest == built.digest {
            script.routes.insert(
                format!("/v2/org/app/manifests/{digest}"),
                (manifest::OCI_MANIFEST.to_owned(), data),
            );
        } else {
            if corrupt_layer && data.starts_with(&[0x1f, 0x8b]) {
                data.push(0);
            }
            script.routes.insert(
                format!("/v2/org/app/blobs/{digest}"),
                ("application/octet-stream".to_owned(), data),
            );
        }
    }
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": manifest::DOCKER_LIST,
        "manifests": [
            {"mediaType": manifest::OCI_MANIFEST, "digest": format!("sha256:{}", "11".repeat(32)), "size": 10,
             "platform": {"architecture": "arm64", "os": "linux"}},
            {"mediaType": manifest::OCI_MANIFEST, "digest": built.digest, "size": 10,
             "platform": {"architecture": "amd64", "os": "linux"}},
        ]
    });
    script.routes.insert(
        "/v2/org/app/manifests/v1".to_owned(),
        (
            manifest::DOCKER_LIST.to_owned(),
            serde_json::to_vec(&list).unwrap(),
        ),
    );
    built.digest
}

fn options(addr: &str) -> PullOptions {
    PullOptions {
        insecure_registries: vec![addr.to_owned()],
        extra_ca_pem: None,
    }
}

#[tokio::test]
async fn pulls_linux_amd64_from_a_list_with_an_anonymous_token() {
    let script = Arc::new(Mutex::new(Script::default()));
    let digest = publish(&mut script.lock().unwrap(), "from the registry", false);
    let addr = serve(script.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();

    let mut events = Vec::new();
    let image = store
        .pull(&format!("{addr}/org/app:v1"), &options(&addr), &mut |e| {
            events.push(e)
        })
        .await
        .unwrap();
    assert_eq!(image.digest, digest);
    assert_eq!(
        std::fs::read_to_string(image.layers[0].join("hello")).unwrap(),
        "from the registry"
    );
    assert!(matches!(
        events[0],
        PullProgress::Resolved { layers: 1, .. }
    ));
    assert_eq!(
        events.last(),
        Some(&PullProgress::Done {
            digest: digest.clone()
        })
    );
    let seen = script.lock().unwrap().seen.clone();
    // One 401, one token, then everything with the token (the arm64 manifest never fetched).
    assert_eq!(seen[0], "GET /v2/org/app/manifests/v1 anon", "{seen:#?}");
    assert!(seen[1].starts_with("GET /token?"), "{seen:#?}");
    assert!(seen[2..].iter().all(|s| s.ends_with(" auth")), "{seen:#?}");
    assert!(
        !seen.iter().any(|s| s.contains(&"11".repeat(32))),
        "{seen:#?}"
    );
    assert_eq!(
        store.list().unwrap()[0].reference,
        format!("{addr}/org/app:v1")
    );
}

#[tokio::test]
async fn a_corrupted_layer_fails_the_pull_and_leaves_nothing() {
    let script = Arc::new(Mutex::new(Script::default()));
    publish(&mut script.lock().unwrap(), "x", true);
    let addr = serve(script).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    let err = store
        .pull(&format!("{addr}/org/app:v1"), &options(&addr), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("digest mismatch for layer sha256:"),
        "{err}"
    );
    assert!(store.list().unwrap().is_empty());
    for dir in ["blobs/sha256", "layers", "tmp"] {
        assert_eq!(
            std::fs::read_dir(tmp.path().join(dir)).unwrap().count(),
            0,
            "{dir}"
        );
    }
}

#[tokio::test]
async fn a_missing_tag_is_manifest_unknown_and_a_wrong_pinned_digest_is_refused() {
    let script = Arc::new(Mutex::new(Script::default()));
    let digest = publish(&mut script.lock().unwrap(), "x", false);
    let addr = serve(script.clone()).await;
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    let err = store
        .pull(&format!("{addr}/org/app:v2"), &options(&addr), &mut |_| {})
        .await
        .unwrap_err()
        .to_string();
    assert_eq!(
        err,
        format!("manifest unknown: org/app:v2 is not in registry {addr}")
    );

    // The registry answers a digest request with other content: refused.
    let wanted = digest::of(b"something else");
    let body = script.lock().unwrap().routes[&format!("/v2/org/app/manifests/{digest}")].clone();
    script
        .lock()
        .unwrap()
        .routes
        .insert(format!("/v2/org/app/manifests/{wanted}"), body);
    let err = store
        .pull(
            &format!("{addr}/org/app@{wanted}"),
            &options(&addr),
            &mut |_| {},
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with(&format!("digest mismatch for manifest {wanted}")),
        "{err}"
    );
}

/// A registry that answers every request with 200 and a body that never ends (no
/// Content-Length), or with one of `announced` bytes when given; returns its address.
async fn serve_oversized(announced: Option<usize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf).await;
                let length =
                    announced.map_or(String::new(), |n| format!("Content-Length: {n}\r\n"));
                let head = format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: {}\r\n{length}Connection: close\r\n\r\n",
                    manifest::OCI_MANIFEST
                );
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b' '; 64 * 1024];
                let mut sent = 0;
                // Until the client hangs up (or the announced length is sent).
                while announced.is_none_or(|n| sent < n) {
                    if conn.write_all(&chunk).await.is_err() {
                        return;
                    }
                    sent += chunk.len();
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_manifest_over_4_mib_is_refused_without_being_buffered() {
    let tmp = tempfile::tempdir().unwrap();
    let store = ImageStore::open(tmp.path()).unwrap();
    for announced in [None, Some(5 * 1024 * 1024)] {
        let addr = serve_oversized(announced).await;
        let (reference, options) = (format!("{addr}/org/app:v1"), options(&addr));
        let mut progress = |_| {};
        let pull = store.pull(&reference, &options, &mut progress);
        let err = tokio::time::timeout(std::time::Duration::from_secs(30), pull)
            .await
            .expect("an endless manifest must not be read forever")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("registry {addr}: manifest v1 is larger than the limit of 4194304 bytes"),
            "{announced:?}"
        );
    }
    assert!(store.list().unwrap().is_empty());
}
