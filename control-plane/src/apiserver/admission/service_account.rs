//! The ServiceAccount admission plugin, as kube-apiserver's (`plugin/pkg/admission/serviceaccount`):
//! a new pod runs as `spec.serviceAccountName` (`default` when unset), which must exist; unless
//! the pod or its ServiceAccount says `automountServiceAccountToken: false`, it gets a
//! `kube-api-access-<5 random>` projected volume — a bound token, the cluster CA and its
//! namespace — mounted read-only at [`MOUNT_PATH`] in every container and init container; it
//! inherits the account's `imagePullSecrets` when it names none. Mirror pods (of static pods)
//! are left as they are but may reference neither accounts nor Secrets.

use std::time::Duration;

use serde_json::{Value, json};

use crate::apiserver::{
    Api,
    authz::forbidden_on,
    objects::{self, Result},
};

/// The account of a pod that names none.
pub const DEFAULT_SERVICE_ACCOUNT: &str = "default";
/// The prefix of the volume's name; a pod that has a volume named so already keeps it.
pub const VOLUME_PREFIX: &str = "kube-api-access-";
/// Where every container finds `token`, `ca.crt` and `namespace`.
pub const MOUNT_PATH: &str = "/var/run/secrets/kubernetes.io/serviceaccount";
/// The token's requested lifetime: Kubernetes' `WarnOnlyBoundTokenExpirationSeconds` (an hour
/// and 7 s, recognisable as the automounted token's).
pub const TOKEN_EXPIRATION_SECONDS: i64 = 3607;
/// The ConfigMap of every namespace holding the cluster CA (see
/// [`crate::controllers::root_ca`]).
pub const ROOT_CA_CONFIG_MAP: &str = "kube-root-ca.crt";
/// Marks a mirror pod: the API's copy of a node's static pod.
const MIRROR_ANNOTATION: &str = "kubernetes.io/config.mirror";

/// Admits a new pod (`pod` has its namespace and name).
pub async fn admit(api: &Api, pod: &mut Value) -> Result<()> {
    let name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let namespace = pod["metadata"]["namespace"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let forbidden = |why: &str| forbidden_on("pods", "", &name, why);
    if !pod["spec"].is_object() {
        // Not a pod validation will accept: let it say why.
        return Ok(());
    }
    if pod["metadata"]["annotations"][MIRROR_ANNOTATION].is_string() {
        return check_mirror_pod(pod).map_err(forbidden);
    }
    let spec = &mut pod["spec"];
    // The deprecated `serviceAccount` is read when the current field is empty, as the v1
    // conversion does.
    let account = match spec["serviceAccountName"]
        .as_str()
        .filter(|s| !s.is_empty())
    {
        Some(account) => account.to_owned(),
        None => spec["serviceAccount"]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(DEFAULT_SERVICE_ACCOUNT)
            .to_owned(),
    };
    spec["serviceAccountName"] = json!(account);
    spec["serviceAccount"] = json!(account);
    let service_account = get_service_account(api, &namespace, &account)
        .await
        .map_err(|e| {
            forbidden(&format!(
                "error looking up service account {namespace}/{account}: {}",
                e.message
            ))
        })?;
    if should_automount(&service_account, spec) {
        mount_token(spec, &objects::generate_suffix());
    }
    let has_pull_secrets = spec["imagePullSecrets"]
        .as_array()
        .is_some_and(|s| !s.is_empty());
    if !has_pull_secrets
        && let Some(secrets) = service_account["imagePullSecrets"]
            .as_array()
            .filter(|s| !s.is_empty())
    {
        spec["imagePullSecrets"] = json!(
            secrets
                .iter()
                .map(|s| json!({ "name": s["name"] }))
                .collect::<Vec<_>>()
        );
    }
    Ok(())
}

/// The account, retried for a while when it is `default`: a new namespace gets it from the
/// ServiceAccount controller a moment after it is created.
async fn get_service_account(api: &Api, namespace: &str, name: &str) -> Result<Value> {
    let attempts = if name == DEFAULT_SERVICE_ACCOUNT {
        10
    } else {
        1
    };
    let accounts = &apiary_api::resource::SERVICE_ACCOUNTS;
    let mut attempt = 0;
    loop {
        match objects::get(api, accounts, Some(namespace), name).await {
            Ok(account) => return Ok(account),
            Err(e) if e.reason == "NotFound" && attempt + 1 < attempts => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(100 + rand::random::<u64>() % 100)).await;
            }
            // Kubernetes names the resource in the singular here.
            Err(e) if e.reason == "NotFound" => {
                return Err(crate::apiserver::error::ApiError::not_found(
                    "serviceaccount",
                    "",
                    name,
                ));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The pod's `automountServiceAccountToken`, else the account's, else true.
fn should_automount(service_account: &Value, spec: &Value) -> bool {
    spec["automountServiceAccountToken"]
        .as_bool()
        .or_else(|| service_account["automountServiceAccountToken"].as_bool())
        .unwrap_or(true)
}

/// Mounts the token volume in every container without a mount at [`MOUNT_PATH`]; adds the
/// volume (named `kube-api-access-<suffix>` unless the pod has one) if any container needs it.
fn mount_token(spec: &mut Value, suffix: &str) {
    let existing = spec["volumes"].as_array().and_then(|volumes| {
        volumes
            .iter()
            .filter_map(|v| v["name"].as_str())
            .find(|n| n.starts_with(VOLUME_PREFIX))
            .map(str::to_owned)
    });
    let volume_name = existing
        .clone()
        .unwrap_or_else(|| format!("{VOLUME_PREFIX}{suffix}"));
    let mut needed = false;
    for list in ["initContainers", "containers"] {
        for container in spec[list].as_array_mut().into_iter().flatten() {
            let mounted = container["volumeMounts"]
                .as_array()
                .is_some_and(|m| m.iter().any(|m| m["mountPath"] == MOUNT_PATH));
            if mounted {
                continue;
            }
            let mount = json!({ "name": volume_name, "readOnly": true, "mountPath": MOUNT_PATH });
            match container["volumeMounts"].as_array_mut() {
                Some(mounts) => mounts.push(mount),
                None => container["volumeMounts"] = json!([mount]),
            }
            needed = true;
        }
    }
    if existing.is_some() || !needed {
        return;
    }
    let volume = token_volume(&volume_name);
    match spec["volumes"].as_array_mut() {
        Some(volumes) => volumes.push(volume),
        None => spec["volumes"] = json!([volume]),
    }
}

/// The `kube-api-access-*` volume: Kubernetes' `TokenVolumeSource`.
pub fn token_volume(name: &str) -> Value {
    json!({
        "name": name,
        "projected": {
            "sources": [
                { "serviceAccountToken": {
                    "expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token" } },
                { "configMap": {
                    "name": ROOT_CA_CONFIG_MAP,
                    "items": [{ "key": "ca.crt", "path": "ca.crt" }] } },
                { "downwardAPI": { "items": [{
                    "path": "namespace",
                    "fieldRef": { "apiVersion": "v1", "fieldPath": "metadata.namespace" } }] } },
            ],
        },
    })
}

/// A mirror pod may not name an account, reference a Secret or project a token: the node
/// that made it could otherwise read what it was never given.
fn check_mirror_pod(pod: &Value) -> std::result::Result<(), &'static str> {
    let spec = &pod["spec"];
    if spec["serviceAccountName"]
        .as_str()
        .is_some_and(|s| !s.is_empty())
    {
        return Err("a mirror pod may not reference service accounts");
    }
    if references_secrets(spec) {
        return Err("a mirror pod may not reference secrets");
    }
    let projects_token = spec["volumes"].as_array().into_iter().flatten().any(|v| {
        v["projected"]["sources"]
            .as_array()
            .is_some_and(|s| s.iter().any(|s| s["serviceAccountToken"].is_object()))
    });
    if projects_token {
        return Err("a mirror pod may not use ServiceAccountToken volume projections");
    }
    Ok(())
}

/// Whether the spec names a Secret anywhere (`VisitPodSecretNames`): pull secrets, secret and
/// projected volumes, `env` and `envFrom` of every container.
fn references_secrets(spec: &Value) -> bool {
    let non_empty = |v: &Value| v.as_str().is_some_and(|s| !s.is_empty());
    let items = |v: &Value| v.as_array().cloned().unwrap_or_default();
    if items(&spec["imagePullSecrets"])
        .iter()
        .any(|s| non_empty(&s["name"]))
    {
        return true;
    }
    for volume in items(&spec["volumes"]) {
        if non_empty(&volume["secret"]["secretName"])
            || items(&volume["projected"]["sources"])
                .iter()
                .any(|s| non_empty(&s["secret"]["name"]))
        {
            return true;
        }
    }
    ["initContainers", "containers", "ephemeralContainers"]
        .iter()
        .flat_map(|list| items(&spec[*list]))
        .any(|c| {
            items(&c["envFrom"])
                .iter()
                .any(|e| non_empty(&e["secretRef"]["name"]))
                || items(&c["env"])
                    .iter()
                    .any(|e| non_empty(&e["valueFrom"]["secretKeyRef"]["name"]))
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apiserver::path::Target;

    async fn api() -> (tempfile::TempDir, std::sync::Arc<Api>) {
        let (dir, mut api) = crate::testing::api().await;
        api.admission = crate::apiserver::admission::Plugins::all();
        let api = std::sync::Arc::new(api);
        crate::apiserver::bootstrap(&api).await.unwrap();
        (dir, api)
    }

    async fn create(api: &Api, plural: &str, namespace: &str, object: Value) -> Result<Value> {
        let resource = api.resources.get("", "v1", plural).unwrap();
        let target = Target {
            resource,
            namespace: Some(namespace.to_owned()),
            name: None,
            subresource: None,
        };
        objects::create(api, &target, object).await
    }

    fn pod(spec: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": spec})
    }

    fn account(name: &str, extra: Value) -> Value {
        let mut sa =
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name}});
        if let (Some(sa), Some(extra)) = (sa.as_object_mut(), extra.as_object()) {
            sa.extend(extra.clone());
        }
        sa
    }

    #[tokio::test]
    async fn pods_get_the_default_account_and_the_kube_api_access_volume_in_every_container() {
        let (_dir, api) = api().await;
        create(
            &api,
            "serviceaccounts",
            "default",
            account("default", json!({})),
        )
        .await
        .unwrap();
        let created = create(
            &api,
            "pods",
            "default",
            pod(json!({
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [
                    {"name": "a", "image": "busybox"},
                    {"name": "b", "image": "busybox",
                     "volumeMounts": [{"name": "own", "mountPath": MOUNT_PATH}]},
                ],
                "volumes": [{"name": "own", "emptyDir": {}}],
            })),
        )
        .await
        .unwrap();
        let spec = &created["spec"];
        assert_eq!(spec["serviceAccountName"], "default");
        assert_eq!(spec["serviceAccount"], "default");
        let volume = &spec["volumes"][1];
        let name = volume["name"].as_str().unwrap();
        let suffix = name.strip_prefix(VOLUME_PREFIX).unwrap();
        assert_eq!(suffix.len(), 5, "{name}");
        // Exactly what kube-apiserver stores, defaults included.
        assert_eq!(
            volume["projected"],
            json!({
                "defaultMode": 420,
                "sources": [
                    {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
                    {"configMap": {"name": "kube-root-ca.crt",
                                   "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
                    {"downwardAPI": {"items": [{"path": "namespace",
                        "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
                ],
            })
        );
        let mount = json!({"name": name, "readOnly": true, "mountPath": MOUNT_PATH});
        assert_eq!(spec["initContainers"][0]["volumeMounts"], json!([mount]));
        assert_eq!(spec["containers"][0]["volumeMounts"], json!([mount]));
        // A container with its own mount at the path keeps it.
        assert_eq!(
            spec["containers"][1]["volumeMounts"],
            json!([{"name": "own", "mountPath": MOUNT_PATH}])
        );
    }

    #[tokio::test]
    async fn automount_false_on_the_pod_or_the_account_mounts_nothing_and_the_pod_wins() {
        let (_dir, api) = api().await;
        create(
            &api,
            "serviceaccounts",
            "default",
            account("quiet", json!({"automountServiceAccountToken": false})),
        )
        .await
        .unwrap();
        create(
            &api,
            "serviceaccounts",
            "default",
            account("default", json!({})),
        )
        .await
        .unwrap();
        let containers = json!([{"name": "a", "image": "busybox"}]);
        let cases = [
            (json!({"automountServiceAccountToken": false}), false),
            (json!({"serviceAccountName": "quiet"}), false),
            (
                json!({"serviceAccountName": "quiet", "automountServiceAccountToken": true}),
                true,
            ),
        ];
        for (i, (fields, mounted)) in cases.into_iter().enumerate() {
            let mut spec = fields.clone();
            spec["containers"] = containers.clone();
            let mut object = pod(spec);
            object["metadata"]["name"] = json!(format!("p{i}"));
            let created = create(&api, "pods", "default", object).await.unwrap();
            let volumes = created["spec"]["volumes"].as_array().map_or(0, Vec::len);
            let mounts = created["spec"]["containers"][0]["volumeMounts"]
                .as_array()
                .map_or(0, Vec::len);
            assert_eq!(
                (volumes, mounts),
                if mounted { (1, 1) } else { (0, 0) },
                "{fields}"
            );
        }
    }

    #[tokio::test]
    async fn a_pod_naming_a_missing_account_is_forbidden_as_kubernetes_says() {
        let (_dir, api) = api().await;
        let err = create(
            &api,
            "pods",
            "default",
            pod(json!({"serviceAccountName": "ghost",
                       "containers": [{"name": "a", "image": "busybox"}]})),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, axum::http::StatusCode::FORBIDDEN);
        assert_eq!(
            err.message,
            "pods \"p\" is forbidden: error looking up service account default/ghost: serviceaccount \"ghost\" not found"
        );
    }

    #[tokio::test]
    async fn the_account_lends_its_pull_secrets_to_pods_without_any() {
        let (_dir, api) = api().await;
        create(
            &api,
            "serviceaccounts",
            "default",
            account(
                "default",
                json!({"imagePullSecrets": [{"name": "registry"}]}),
            ),
        )
        .await
        .unwrap();
        let created = create(
            &api,
            "pods",
            "default",
            pod(json!({"containers": [{"name": "a", "image": "busybox"}]})),
        )
        .await
        .unwrap();
        assert_eq!(
            created["spec"]["imagePullSecrets"],
            json!([{"name": "registry"}])
        );
    }

    #[test]
    fn mirror_pods_may_not_reference_accounts_secrets_or_tokens() {
        let mirror = |spec: Value| json!({"metadata": {"annotations": {MIRROR_ANNOTATION: "x"}}, "spec": spec});
        assert_eq!(
            check_mirror_pod(&mirror(json!({"containers": [{"name": "a"}]}))),
            Ok(())
        );
        assert!(check_mirror_pod(&mirror(json!({"serviceAccountName": "default"}))).is_err());
        assert!(
            check_mirror_pod(&mirror(json!({"containers": [{"name": "a",
                "env": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}}]}]})))
            .is_err()
        );
        assert!(
            check_mirror_pod(&mirror(
                json!({"volumes": [token_volume("kube-api-access-x")]})
            ))
            .is_err()
        );
    }
}
