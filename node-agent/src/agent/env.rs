//! A container's environment, resolved the way the kubelet does: the image's variables, then
//! the service links (`KUBERNETES_SERVICE_HOST` and the other Services of the pod's namespace,
//! Docker-link style), then `envFrom` sources in order, then `env` (later names win), with
//! `$(VAR)` references expanded against what came before.

use std::collections::{BTreeMap, BTreeSet};

use apiary_api::core_v1::{ConfigMap, Container, Pod, Secret, Service};
use base64::Engine as _;

/// The ConfigMaps and Secrets a pod references (in env, envFrom and volumes), fetched before
/// its containers start. `None`: the object does not exist.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    pub config_maps: BTreeMap<String, Option<ConfigMap>>,
    pub secrets: BTreeMap<String, Option<Secret>>,
    /// The Services whose variables the containers get (see [`linked_services`]).
    pub services: Vec<Service>,
    /// The ServiceAccount tokens of the pod's projected volumes.
    pub tokens: BTreeMap<super::tokens::TokenKey, super::tokens::IssuedToken>,
}

/// Which Services a pod's containers get variables of, given the Services of its namespace
/// and `default/kubernetes` (`master`): the kubelet's rule — the namespace's own with
/// `enableServiceLinks` (the default), and `kubernetes` always, unless the namespace has a
/// Service of that name itself.
pub fn linked_services(
    pod: &Pod,
    namespace_services: Vec<Service>,
    master: Option<Service>,
) -> Vec<Service> {
    let mut linked = if pod.spec.enable_service_links == Some(false) {
        Vec::new()
    } else {
        namespace_services
    };
    if let Some(master) = master
        && !linked
            .iter()
            .any(|s| s.metadata.name == master.metadata.name)
    {
        linked.push(master);
    }
    linked.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    linked
}

/// The variables of `services` (those with a cluster IP), as the kubelet writes them:
/// `NAME_SERVICE_HOST`, `NAME_SERVICE_PORT`, one `NAME_SERVICE_PORT_<PORT NAME>` per named port,
/// and Docker's link variables `NAME_PORT`, `NAME_PORT_<port>_<PROTO>{,_PROTO,_PORT,_ADDR}`.
pub fn service_env(services: &[Service]) -> Vec<(String, String)> {
    let upper = |name: &str| name.to_uppercase().replace('-', "_");
    let mut vars = Vec::new();
    for service in services {
        let ip = &service.spec.cluster_ip;
        if ip.is_empty() || ip == "None" || service.spec.ports.is_empty() {
            continue;
        }
        let name = upper(&service.metadata.name);
        let first = &service.spec.ports[0];
        let proto = |p: &apiary_api::core_v1::ServicePort| {
            if p.protocol.is_empty() {
                "tcp".to_owned()
            } else {
                p.protocol.to_lowercase()
            }
        };
        vars.push((format!("{name}_SERVICE_HOST"), ip.clone()));
        vars.push((format!("{name}_SERVICE_PORT"), first.port.to_string()));
        for port in service.spec.ports.iter().filter(|p| !p.name.is_empty()) {
            vars.push((
                format!("{name}_SERVICE_PORT_{}", upper(&port.name)),
                port.port.to_string(),
            ));
        }
        vars.push((
            format!("{name}_PORT"),
            format!("{}://{ip}:{}", proto(first), first.port),
        ));
        for port in &service.spec.ports {
            let prefix = format!("{name}_PORT_{}_{}", port.port, proto(port).to_uppercase());
            vars.push((
                prefix.clone(),
                format!("{}://{ip}:{}", proto(port), port.port),
            ));
            vars.push((format!("{prefix}_PROTO"), proto(port)));
            vars.push((format!("{prefix}_PORT"), port.port.to_string()));
            vars.push((format!("{prefix}_ADDR"), ip.clone()));
        }
    }
    vars
}

/// Facts about the running pod that the downward API exposes.
#[derive(Clone, Debug, Default)]
pub struct PodFacts {
    pub pod_ip: String,
    pub host_ip: String,
    pub node_name: String,
}

/// Why a container cannot be configured: the kubelet reports these as
/// `CreateContainerConfigError` and retries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("configmap \"{0}\" not found")]
    ConfigMapNotFound(String),
    #[error("secret \"{0}\" not found")]
    SecretNotFound(String),
    #[error("couldn't find key {key} in ConfigMap {namespace}/{name}")]
    ConfigMapKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("couldn't find key {key} in Secret {namespace}/{name}")]
    SecretKey {
        namespace: String,
        name: String,
        key: String,
    },
    #[error("unsupported fieldPath: {0}")]
    FieldPath(String),
    #[error("unsupported resource: {0}")]
    Resource(String),
    #[error("secret {name}: key {key} is not valid base64")]
    Base64 { name: String, key: String },
}

/// Names of the ConfigMaps and Secrets `pod` references.
pub fn referenced(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut config_maps = BTreeSet::new();
    let mut secrets = BTreeSet::new();
    for c in pod.spec.init_containers.iter().chain(&pod.spec.containers) {
        for from in &c.env_from {
            if let Some(r) = &from.config_map_ref {
                config_maps.insert(r.name.clone());
            }
            if let Some(r) = &from.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
        for var in &c.env {
            let Some(source) = &var.value_from else {
                continue;
            };
            if let Some(r) = &source.config_map_key_ref {
                config_maps.insert(r.name.clone());
            }
            if let Some(r) = &source.secret_key_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    for volume in &pod.spec.volumes {
        if let Some(cm) = &volume.config_map {
            config_maps.insert(cm.name.clone());
        }
        if let Some(s) = &volume.secret {
            secrets.insert(s.secret_name.clone());
        }
        for source in volume.projected.iter().flat_map(|p| &p.sources) {
            if let Some(cm) = &source.config_map {
                config_maps.insert(cm.name.clone());
            }
            if let Some(s) = &source.secret {
                secrets.insert(s.name.clone());
            }
        }
    }
    (config_maps, secrets)
}

impl Sources {
    /// The string data of a ConfigMap: `data` and decoded `binaryData`.
    pub fn config_map_data(&self, name: &str) -> Option<BTreeMap<String, Vec<u8>>> {
        let cm = self.config_maps.get(name)?.as_ref()?;
        let mut data: BTreeMap<String, Vec<u8>> = cm
            .data
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into_bytes()))
            .collect();
        for (k, v) in &cm.binary_data {
            if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(v) {
                data.insert(k.clone(), bytes);
            }
        }
        Some(data)
    }

    /// The decoded data of a Secret.
    pub fn secret_data(
        &self,
        name: &str,
    ) -> Option<Result<BTreeMap<String, Vec<u8>>, ConfigError>> {
        let secret = self.secrets.get(name)?.as_ref()?;
        let mut data = BTreeMap::new();
        for (k, v) in &secret.data {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(v)
                .map_err(|_| ConfigError::Base64 {
                    name: name.to_owned(),
                    key: k.clone(),
                });
            match bytes {
                Ok(b) => data.insert(k.clone(), b),
                Err(e) => return Some(Err(e)),
            };
        }
        Some(Ok(data))
    }
}

/// A pod field by `fieldPath`, as `env.valueFrom.fieldRef` and downward API volumes read it.
pub fn field(pod: &Pod, facts: &PodFacts, path: &str) -> Result<String, ConfigError> {
    let meta = &pod.metadata;
    let by_key = |map: &BTreeMap<String, String>, prefix: &str| -> Option<String> {
        let key = path.strip_prefix(prefix)?.strip_suffix("']")?;
        Some(map.get(key).cloned().unwrap_or_default())
    };
    Ok(match path {
        "metadata.name" => meta.name.clone(),
        "metadata.namespace" => meta.namespace.clone(),
        "metadata.uid" => meta.uid.clone(),
        "metadata.labels" => format_map(&meta.labels),
        "metadata.annotations" => format_map(&meta.annotations),
        "spec.nodeName" => facts.node_name.clone(),
        "spec.serviceAccountName" => pod.spec.service_account_name.clone(),
        "status.podIP" | "status.podIPs" => facts.pod_ip.clone(),
        "status.hostIP" | "status.hostIPs" => facts.host_ip.clone(),
        _ => by_key(&meta.labels, "metadata.labels['")
            .or_else(|| by_key(&meta.annotations, "metadata.annotations['"))
            .ok_or_else(|| ConfigError::FieldPath(path.to_owned()))?,
    })
}

/// `key="value"` lines, sorted, as the downward API writes labels and annotations.
pub fn format_map(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}", serde_json::Value::String(v.clone())))
        .collect::<Vec<_>>()
        .join("\n")
}

/// A container resource (`limits.cpu`, `requests.memory`, …) in units of `divisor`, rounded up;
/// an unset limit reads as the node's allocatable amount.
pub fn resource(
    container: &Container,
    resource: &str,
    divisor: Option<&apiary_api::quantity::Quantity>,
    node_allocatable: &BTreeMap<String, i64>,
) -> Result<String, ConfigError> {
    let unsupported = || ConfigError::Resource(resource.to_owned());
    let (section, name) = resource.split_once('.').ok_or_else(unsupported)?;
    let reqs = container.resources.clone().unwrap_or_default();
    let list = match section {
        "limits" => &reqs.limits,
        "requests" => &reqs.requests,
        _ => return Err(unsupported()),
    };
    let is_cpu = name == "cpu";
    // In milli-units for cpu, units otherwise.
    let amount = match list.get(name) {
        Some(q) if is_cpu => q.milli_value().map_err(|_| unsupported())?,
        Some(q) => q.value().map_err(|_| unsupported())?,
        None if section == "limits" => {
            let fallback = node_allocatable.get(name).copied().unwrap_or_default();
            if is_cpu { fallback * 1000 } else { fallback }
        }
        None => 0,
    };
    let divisor = match divisor {
        Some(d) if is_cpu => d.milli_value().map_err(|_| unsupported())?,
        Some(d) => d.value().map_err(|_| unsupported())?,
        None if is_cpu => 1000,
        None => 1,
    }
    .max(1);
    Ok(((amount + divisor - 1) / divisor).to_string())
}

/// The environment of `container` as `NAME=value` strings, after the image's `image_env`.
pub fn container_env(
    pod: &Pod,
    container: &Container,
    facts: &PodFacts,
    sources: &Sources,
    image_env: &[String],
    node_allocatable: &BTreeMap<String, i64>,
) -> Result<Vec<String>, ConfigError> {
    let namespace = &pod.metadata.namespace;
    let mut vars: Vec<(String, String)> = image_env
        .iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.clone(), String::new()),
        })
        .collect();
    let set = |vars: &mut Vec<(String, String)>, name: String, value: String| {
        if let Some(slot) = vars.iter_mut().find(|(k, _)| *k == name) {
            slot.1 = value;
        } else {
            vars.push((name, value));
        }
    };
    for (name, value) in service_env(&sources.services) {
        set(&mut vars, name, value);
    }
    for from in &container.env_from {
        if let Some(r) = &from.config_map_ref {
            match sources.config_map_data(&r.name) {
                Some(data) => {
                    for (k, v) in data {
                        set(&mut vars, format!("{}{k}", from.prefix), lossy(v));
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError::ConfigMapNotFound(r.name.clone())),
            }
        }
        if let Some(r) = &from.secret_ref {
            match sources.secret_data(&r.name) {
                Some(data) => {
                    for (k, v) in data? {
                        set(&mut vars, format!("{}{k}", from.prefix), lossy(v));
                    }
                }
                None if r.optional == Some(true) => {}
                None => return Err(ConfigError::SecretNotFound(r.name.clone())),
            }
        }
    }
    for var in &container.env {
        let value = match &var.value_from {
            None => Some(expand(&var.value, &vars)),
            Some(source) => {
                if let Some(f) = &source.field_ref {
                    Some(field(pod, facts, &f.field_path)?)
                } else if let Some(r) = &source.resource_field_ref {
                    let target = if r.container_name.is_empty() {
                        container
                    } else {
                        pod.spec
                            .containers
                            .iter()
                            .chain(&pod.spec.init_containers)
                            .find(|c| c.name == r.container_name)
                            .unwrap_or(container)
                    };
                    Some(resource(
                        target,
                        &r.resource,
                        r.divisor.as_ref(),
                        node_allocatable,
                    )?)
                } else if let Some(r) = &source.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match sources.config_map_data(&r.name) {
                        Some(data) => match data.get(&r.key) {
                            Some(v) => Some(lossy(v.clone())),
                            None if optional => None,
                            None => {
                                return Err(ConfigError::ConfigMapKey {
                                    namespace: namespace.clone(),
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                        None if optional => None,
                        None => return Err(ConfigError::ConfigMapNotFound(r.name.clone())),
                    }
                } else if let Some(r) = &source.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match sources.secret_data(&r.name) {
                        Some(data) => match data?.get(&r.key) {
                            Some(v) => Some(lossy(v.clone())),
                            None if optional => None,
                            None => {
                                return Err(ConfigError::SecretKey {
                                    namespace: namespace.clone(),
                                    name: r.name.clone(),
                                    key: r.key.clone(),
                                });
                            }
                        },
                        None if optional => None,
                        None => return Err(ConfigError::SecretNotFound(r.name.clone())),
                    }
                } else {
                    None
                }
            }
        };
        if let Some(value) = value {
            set(&mut vars, var.name.clone(), value);
        }
    }
    Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

fn lossy(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Expands `$(NAME)` from `vars`; `$$` is a literal `$`, and unknown references stay as written
/// (Kubernetes' `expansion.Expand`).
pub fn expand(input: &str, vars: &[(String, String)]) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match vars.iter().rev().find(|(k, _)| k == name) {
                Some((_, v)) => out.push_str(v),
                None => {
                    out.push_str("$(");
                    out.push_str(name);
                    out.push(')');
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// Splits an env list (`NAME=value`) into pairs for [`expand`].
pub fn pairs(env: &[String]) -> Vec<(String, String)> {
    env.iter()
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (kv.clone(), String::new()),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use apiary_api::core_v1::{
        EnvFromSource, EnvVar, EnvVarSource, KeySelector, ObjectFieldSelector,
        OptionalObjectReference,
    };

    fn pod() -> Pod {
        let mut pod = Pod::default();
        pod.metadata.name = "web-1".into();
        pod.metadata.namespace = "shop".into();
        pod.metadata.labels.insert("app".into(), "web".into());
        pod
    }

    fn facts() -> PodFacts {
        PodFacts {
            pod_ip: "10.244.1.5".into(),
            host_ip: "192.0.2.1".into(),
            node_name: "n1".into(),
        }
    }

    fn var(name: &str, value: &str) -> EnvVar {
        EnvVar {
            name: name.into(),
            value: value.into(),
            value_from: None,
        }
    }

    fn service(name: &str, ip: &str, ports: &[(&str, i32, &str)]) -> Service {
        let mut s = Service::default();
        s.metadata.name = name.into();
        s.spec.cluster_ip = ip.into();
        s.spec.ports = ports
            .iter()
            .map(|(name, port, protocol)| apiary_api::core_v1::ServicePort {
                name: (*name).into(),
                port: *port,
                protocol: (*protocol).into(),
                ..Default::default()
            })
            .collect();
        s
    }

    #[test]
    fn services_become_kubelet_style_variables() {
        let vars: BTreeMap<String, String> = service_env(&[
            service("kubernetes", "10.96.0.1", &[("https", 443, "TCP")]),
            service(
                "redis-primary",
                "10.96.4.2",
                &[("", 6379, ""), ("metrics", 9121, "TCP")],
            ),
            service("headless", "None", &[("http", 80, "TCP")]),
        ])
        .into_iter()
        .collect();
        let expected: BTreeMap<String, String> = [
            ("KUBERNETES_SERVICE_HOST", "10.96.0.1"),
            ("KUBERNETES_SERVICE_PORT", "443"),
            ("KUBERNETES_SERVICE_PORT_HTTPS", "443"),
            ("KUBERNETES_PORT", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP", "tcp://10.96.0.1:443"),
            ("KUBERNETES_PORT_443_TCP_PROTO", "tcp"),
            ("KUBERNETES_PORT_443_TCP_PORT", "443"),
            ("KUBERNETES_PORT_443_TCP_ADDR", "10.96.0.1"),
            ("REDIS_PRIMARY_SERVICE_HOST", "10.96.4.2"),
            ("REDIS_PRIMARY_SERVICE_PORT", "6379"),
            ("REDIS_PRIMARY_SERVICE_PORT_METRICS", "9121"),
            ("REDIS_PRIMARY_PORT", "tcp://10.96.4.2:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP", "tcp://10.96.4.2:6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PROTO", "tcp"),
            ("REDIS_PRIMARY_PORT_6379_TCP_PORT", "6379"),
            ("REDIS_PRIMARY_PORT_6379_TCP_ADDR", "10.96.4.2"),
            ("REDIS_PRIMARY_PORT_9121_TCP", "tcp://10.96.4.2:9121"),
            ("REDIS_PRIMARY_PORT_9121_TCP_PROTO", "tcp"),
            ("REDIS_PRIMARY_PORT_9121_TCP_PORT", "9121"),
            ("REDIS_PRIMARY_PORT_9121_TCP_ADDR", "10.96.4.2"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        assert_eq!(vars, expected);
    }

    #[test]
    fn service_links_come_before_env_and_can_be_turned_off() {
        let master = service("kubernetes", "10.96.0.1", &[("https", 443, "TCP")]);
        let own = vec![service("db", "10.96.0.20", &[("", 5432, "TCP")])];
        let mut p = pod();
        let linked = linked_services(&p, own.clone(), Some(master.clone()));
        assert_eq!(linked.len(), 2);
        p.spec.enable_service_links = Some(false);
        let linked = linked_services(&p, own, Some(master));
        assert_eq!(linked.len(), 1, "kubernetes stays");
        // A container's own variable wins over a link.
        let container = Container {
            env: vec![var("KUBERNETES_SERVICE_HOST", "override")],
            ..Default::default()
        };
        let sources = Sources {
            services: linked,
            ..Default::default()
        };
        let env = container_env(&p, &container, &facts(), &sources, &[], &BTreeMap::new()).unwrap();
        assert!(
            env.contains(&"KUBERNETES_SERVICE_HOST=override".to_owned()),
            "{env:?}"
        );
        assert!(
            env.contains(&"KUBERNETES_SERVICE_PORT=443".to_owned()),
            "{env:?}"
        );
    }

    #[test]
    fn expansion_follows_kubernetes_rules() {
        let vars = vec![("A".to_owned(), "1".to_owned())];
        assert_eq!(expand("x$(A)y", &vars), "x1y");
        assert_eq!(expand("$$(A)", &vars), "$(A)");
        assert_eq!(expand("$(B)", &vars), "$(B)");
        assert_eq!(expand("$A $", &vars), "$A $");
        assert_eq!(expand("$(A", &vars), "$(A");
    }

    #[test]
    fn env_layers_image_env_from_and_env_in_order() {
        let mut cm = ConfigMap::default();
        cm.data.insert("MODE".into(), "fast".into());
        cm.data.insert("PATH".into(), "/cm".into());
        let mut secret = Secret::default();
        secret.data.insert("TOKEN".into(), "czNjcjN0".into());
        let sources = Sources {
            config_maps: BTreeMap::from([("cfg".into(), Some(cm))]),
            secrets: BTreeMap::from([("creds".into(), Some(secret))]),
            ..Default::default()
        };
        let container = Container {
            env_from: vec![EnvFromSource {
                prefix: "CFG_".into(),
                config_map_ref: Some(OptionalObjectReference {
                    name: "cfg".into(),
                    optional: None,
                }),
                secret_ref: None,
            }],
            env: vec![
                var("GREETING", "hi $(CFG_MODE)"),
                EnvVar {
                    name: "ME".into(),
                    value: String::new(),
                    value_from: Some(EnvVarSource {
                        field_ref: Some(ObjectFieldSelector {
                            api_version: String::new(),
                            field_path: "metadata.labels['app']".into(),
                        }),
                        ..Default::default()
                    }),
                },
                EnvVar {
                    name: "TOKEN".into(),
                    value: String::new(),
                    value_from: Some(EnvVarSource {
                        secret_key_ref: Some(KeySelector {
                            name: "creds".into(),
                            key: "TOKEN".into(),
                            optional: None,
                        }),
                        ..Default::default()
                    }),
                },
                var("IP", "$(POD_IP)"),
            ],
            ..Default::default()
        };
        let env = container_env(
            &pod(),
            &container,
            &facts(),
            &sources,
            &["PATH=/bin".into()],
            &BTreeMap::new(),
        )
        .unwrap();
        assert_eq!(
            env,
            [
                "PATH=/bin",
                "CFG_MODE=fast",
                "CFG_PATH=/cm",
                "GREETING=hi fast",
                "ME=web",
                "TOKEN=s3cr3t",
                "IP=$(POD_IP)"
            ]
        );
    }

    #[test]
    fn missing_references_name_what_is_missing_unless_optional() {
        let sources = Sources {
            config_maps: BTreeMap::from([("cfg".into(), Some(ConfigMap::default()))]),
            secrets: BTreeMap::from([("gone".into(), None)]),
            ..Default::default()
        };
        let key_ref = |name: &str, optional| EnvVar {
            name: "X".into(),
            value: String::new(),
            value_from: Some(EnvVarSource {
                config_map_key_ref: Some(KeySelector {
                    name: name.into(),
                    key: "k".into(),
                    optional,
                }),
                ..Default::default()
            }),
        };
        let run = |env: Vec<EnvVar>| {
            let c = Container {
                env,
                ..Default::default()
            };
            container_env(&pod(), &c, &facts(), &sources, &[], &BTreeMap::new())
        };
        assert_eq!(
            run(vec![key_ref("cfg", None)]).unwrap_err().to_string(),
            "couldn't find key k in ConfigMap shop/cfg"
        );
        assert_eq!(
            run(vec![key_ref("cfg", Some(true))]).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(
            run(vec![key_ref("nope", None)]).unwrap_err().to_string(),
            "configmap \"nope\" not found"
        );
        let secret_from = Container {
            env_from: vec![EnvFromSource {
                prefix: String::new(),
                config_map_ref: None,
                secret_ref: Some(OptionalObjectReference {
                    name: "gone".into(),
                    optional: None,
                }),
            }],
            ..Default::default()
        };
        assert_eq!(
            container_env(
                &pod(),
                &secret_from,
                &facts(),
                &sources,
                &[],
                &BTreeMap::new()
            )
            .unwrap_err()
            .to_string(),
            "secret \"gone\" not found"
        );
    }

    #[test]
    fn downward_fields_and_resources() {
        let p = pod();
        assert_eq!(field(&p, &facts(), "status.podIP").unwrap(), "10.244.1.5");
        assert_eq!(field(&p, &facts(), "spec.nodeName").unwrap(), "n1");
        assert_eq!(
            field(&p, &facts(), "metadata.labels").unwrap(),
            "app=\"web\""
        );
        assert!(field(&p, &facts(), "spec.bogus").is_err());
        let mut c = Container::default();
        let mut reqs = apiary_api::core_v1::ResourceRequirements::default();
        reqs.limits.insert("cpu".into(), "250m".parse().unwrap());
        reqs.limits.insert("memory".into(), "64Mi".parse().unwrap());
        c.resources = Some(reqs);
        let alloc = BTreeMap::from([("cpu".to_owned(), 4), ("memory".to_owned(), 1 << 30)]);
        assert_eq!(resource(&c, "limits.cpu", None, &alloc).unwrap(), "1");
        let milli: apiary_api::quantity::Quantity = "1m".parse().unwrap();
        assert_eq!(
            resource(&c, "limits.cpu", Some(&milli), &alloc).unwrap(),
            "250"
        );
        assert_eq!(
            resource(&c, "limits.memory", None, &alloc).unwrap(),
            "67108864"
        );
        assert_eq!(resource(&c, "requests.memory", None, &alloc).unwrap(), "0");
        assert_eq!(
            resource(&Container::default(), "limits.cpu", None, &alloc).unwrap(),
            "4"
        );
    }
}
