//! The sim cluster's node agent: the one part of a cluster no real
//! component plays without running containers. Against the real API server
//! (through kube-rs) it does what a kubelet does for its node, short of
//! starting anything:
//!
//! - registers each node container as a Node (kind's names, labels and
//!   control-plane taint; capacity so the real scheduler can place pods) and
//!   renews its Lease every 10 s, so the node lifecycle controller keeps it
//!   Ready;
//! - for each pod the real scheduler bound to one of its nodes, checks what
//!   a kubelet would trip over first: ConfigMap and Secret volumes and env
//!   references must exist, and every image must be in that node's
//!   containerd (asked with `ctr images ls`). An image is *local* when its
//!   pull policy is Never or it starts with `localhost/`; a missing local
//!   image gives `ErrImageNeverPull` (or `ErrImagePull`, then
//!   `ImagePullBackOff`), and other images are assumed pullable. A pod that
//!   passes becomes Running and Ready at once (probes are not run), or
//!   Succeeded when its restartPolicy is not Always;
//! - finishes the graceful deletion of its nodes' pods (a real kubelet stops
//!   the containers, then deletes the pod with grace period 0).
//!
//! Events carry the kubelet's reasons. Pending pods are re-checked every
//! 500 ms, so an image loaded later lets them start.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::{WatchStreamExt, reflector, watcher};
use serde_json::{Value, json};

use crate::engine::Engine;
use crate::load::nodes::K8S_NAMESPACE;

/// How often pending pods are re-checked and a node's image list may be asked again.
const INTERVAL: Duration = Duration::from_millis(500);
/// How often node Leases are renewed (a kubelet's default).
const LEASE_INTERVAL: Duration = Duration::from_secs(10);
/// How long one `ctr images ls` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long one request to the API server may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// A node the agent plays the kubelet of.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AgentNode {
    pub name: String,
    /// `"control-plane"` or `"worker"`.
    pub role: String,
    /// The node container's address on the engine's network: its
    /// InternalIP (nothing listens on its kubelet port, so log requests the
    /// API server proxies there are refused at once).
    pub ip: String,
}

/// Bounds one API request; a hung request must not stall the Leases.
async fn bounded<T>(
    request: impl std::future::Future<Output = Result<T, kube::Error>>,
) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {}s", REQUEST_TIMEOUT.as_secs())),
    }
}

/// Runs the agent until the task is aborted. Problems it cannot fix go to
/// stderr (the supervisor's log), once each.
pub async fn run(client: kube::Client, engine: Engine, nodes: Vec<AgentNode>) {
    let version = bounded(client.apiserver_version())
        .await
        .map(|v| v.git_version)
        .unwrap_or_else(|_| "v0.0.0".into());
    let leases = {
        let client = client.clone();
        let nodes = nodes.clone();
        tokio::spawn(async move {
            let mut reported = HashSet::new();
            loop {
                // Registering again is cheap and brings back a Node deleted
                // by hand, as a kubelet would.
                for index in 0..nodes.len() {
                    if let Err(e) = register(&client, &nodes, index, &version).await {
                        report_once(&mut reported, format!("node {}: {e}", nodes[index].name));
                    }
                    if let Err(e) = renew_lease(&client, &nodes[index].name).await {
                        report_once(
                            &mut reported,
                            format!("node {} Lease: {e}", nodes[index].name),
                        );
                    }
                }
                tokio::time::sleep(LEASE_INTERVAL).await;
            }
        })
    };
    let _abort_leases = AbortOnDrop(leases);
    let mut kubelet = Kubelet {
        client: client.clone(),
        engine,
        nodes,
        probed: HashMap::new(),
        deleting: HashMap::new(),
        patched: HashMap::new(),
        reported: HashSet::new(),
    };
    let (reader, writer) = reflector::store::<Pod>();
    let pods = Api::<Pod>::all(client);
    let stream = reflector(
        writer,
        watcher(pods, watcher::Config::default().fields("spec.nodeName!=")),
    )
    .default_backoff()
    .touched_objects();
    futures::pin_mut!(stream);
    loop {
        tokio::select! {
            event = stream.next() => match event {
                Some(Ok(_)) => {}
                Some(Err(e)) => tracing::debug!("sim agent: pod watch: {e}"),
                None => return,
            },
            () = tokio::time::sleep(INTERVAL) => {}
        }
        // Take every event already there before syncing once.
        while let Some(Some(event)) = stream.next().now_or_never() {
            if let Err(e) = event {
                tracing::debug!("sim agent: pod watch: {e}");
            }
        }
        kubelet.sync(&reader.state()).await;
    }
}

/// Prints a problem to stderr the first time it is seen.
fn report_once(reported: &mut HashSet<String>, problem: String) {
    if reported.insert(problem.clone()) {
        eprintln!("sim node agent: {problem}");
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);
impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The Node object of `nodes[index]`, as kind's nodes look.
fn node_object(nodes: &[AgentNode], index: usize) -> Value {
    let node = &nodes[index];
    let has_workers = nodes.iter().any(|n| n.role == "worker");
    let mut labels = json!({
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
    });
    let mut taints = json!([]);
    if node.role == "control-plane" {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = json!("");
        // kind removes the taint from a cluster without workers.
        if has_workers {
            taints =
                json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
        }
    }
    json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": node.name, "labels": labels},
        "spec": {
            "podCIDR": format!("10.244.{index}.0/24"),
            "podCIDRs": [format!("10.244.{index}.0/24")],
            "providerID": format!("kind://sim/kind/{}", node.name),
            "taints": taints,
        },
    })
}

fn node_status(ip: &str, version: &str) -> Value {
    let now = Time(jiff::Timestamp::now());
    let capacity =
        json!({"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"});
    let condition = |ty: &str, status: &str, reason: &str, message: &str| {
        json!({"type": ty, "status": status, "reason": reason, "message": message,
               "lastHeartbeatTime": now, "lastTransitionTime": now})
    };
    json!({"status": {
        "capacity": capacity,
        "allocatable": capacity,
        "addresses": [
            {"type": "InternalIP", "address": ip},
        ],
        "conditions": [
            condition("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
            condition("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
            condition("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
            condition("Ready", "True", "KubeletReady", "the sim's node agent is ready (no container runs on this node)"),
        ],
        "nodeInfo": {
            "architecture": "amd64", "bootID": "", "containerRuntimeVersion": "containerd://sim",
            "kernelVersion": "", "kubeProxyVersion": "", "kubeletVersion": version,
            "machineID": "", "operatingSystem": "linux", "osImage": "kind-e2e sim node",
            "systemUUID": "",
        },
    }})
}

/// Creates the Node if it is missing and reports its status (Ready, with a
/// fresh heartbeat).
async fn register(
    client: &kube::Client,
    nodes: &[AgentNode],
    index: usize,
    version: &str,
) -> Result<(), String> {
    let api = Api::<Node>::all(client.clone());
    let name = &nodes[index].name;
    if bounded(api.get_opt(name)).await?.is_none() {
        let node = serde_json::from_value::<Node>(node_object(nodes, index))
            .map_err(|e| format!("the Node object: {e}"))?;
        match bounded(api.create(&PostParams::default(), &node)).await {
            Ok(_) => {}
            Err(e) if e.contains("already exists") => {}
            Err(e) => return Err(format!("creating the Node: {e}")),
        }
    }
    bounded(api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(node_status(&nodes[index].ip, version)),
    ))
    .await
    .map(|_| ())
    .map_err(|e| format!("reporting the Node's status: {e}"))
}

async fn renew_lease(client: &kube::Client, node: &str) -> Result<(), String> {
    let api = Api::<Lease>::namespaced(client.clone(), "kube-node-lease");
    let lease = json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": node, "namespace": "kube-node-lease"},
        "spec": {
            "holderIdentity": node,
            "leaseDurationSeconds": 40,
            "renewTime": MicroTime(jiff::Timestamp::now()),
        },
    });
    let params = PatchParams::apply("kind-e2e-sim-agent").force();
    bounded(api.patch(node, &params, &Patch::Apply(lease)))
        .await
        .map(|_| ())
}

/// What stops a container from starting, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Blocker {
    /// A volume's ConfigMap/Secret is missing: the pod stays ContainerCreating.
    Mount { message: String },
    /// The image is not on the node and may never be pulled.
    NeverPull { image: String },
    /// The kubelet would pull the image, and there is no registry.
    PullFailed { image: String, why: String },
    /// An env reference is missing.
    Config { message: String },
}

/// Canonical form of an image reference: `docker.io/library/x:latest` for `x`.
pub fn normalize_image(reference: &str) -> String {
    let reference = reference.trim();
    let (name, digest) = match reference.split_once('@') {
        Some((n, d)) => (n, Some(d)),
        None => (reference, None),
    };
    let (domain, rest) = match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (first.to_string(), rest.to_string())
        }
        _ => ("docker.io".to_string(), name.to_string()),
    };
    let domain = if domain == "index.docker.io" {
        "docker.io".to_string()
    } else {
        domain
    };
    let rest = if domain == "docker.io" && !rest.contains('/') {
        format!("library/{rest}")
    } else {
        rest
    };
    let last = rest.rsplit('/').next().unwrap_or("");
    let mut out = format!("{domain}/{rest}");
    if !last.contains(':') && digest.is_none() {
        out.push_str(":latest");
    }
    if let Some(d) = digest {
        out.push('@');
        out.push_str(d);
    }
    out
}

/// What a kubelet without a registry does about one container's image: it
/// never pulls under `Never`, always pulls under `Always` (the default for
/// `:latest` and untagged images, as with kind, where a loaded `:latest`
/// image needs `imagePullPolicy: IfNotPresent`), and pulls under
/// `IfNotPresent` only when the node lacks it. Here every pull fails.
fn image_blocker(image: &str, policy: &str, images: &HashSet<String>) -> Option<Blocker> {
    let present = images.contains(&normalize_image(image));
    let image = image.to_string();
    match policy {
        "Never" if present => None,
        "Never" => Some(Blocker::NeverPull { image }),
        "Always" => Some(Blocker::PullFailed {
            image,
            why: "imagePullPolicy is Always (the default for :latest and untagged images), so \
                  the node pulls it even when loaded, and the sim cluster has no registry: set \
                  imagePullPolicy: IfNotPresent or give the image a tag"
                .into(),
        }),
        _ if present => None,
        _ => Some(Blocker::PullFailed {
            image,
            why: "the image is not on the node and the sim cluster has no registry to pull it \
                  from: load it into the cluster first"
                .into(),
        }),
    }
}

/// The ConfigMaps and Secrets that exist, by namespace and name, with their keys.
#[derive(Default)]
struct Refs {
    config_maps: HashMap<(String, String), HashSet<String>>,
    secrets: HashMap<(String, String), HashSet<String>>,
    /// Namespaces whose lists failed: their pods wait for the next round
    /// rather than being judged on missing data.
    failed: HashSet<String>,
}

impl Refs {
    fn missing(&self, ns: &str, kind: &str, name: &str, key: Option<&str>) -> Option<String> {
        let (map, label) = if kind == "configmap" {
            (&self.config_maps, "ConfigMap")
        } else {
            (&self.secrets, "Secret")
        };
        match (map.get(&(ns.to_string(), name.to_string())), key) {
            (None, _) => Some(format!("{kind} \"{name}\" not found")),
            (Some(keys), Some(k)) if !keys.contains(k) => {
                Some(format!("couldn't find key {k} in {label} {ns}/{name}"))
            }
            _ => None,
        }
    }
}

fn str_at<'a>(v: &'a Value, pointer: &str) -> &'a str {
    v.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

fn array_at<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

fn optional(v: &Value) -> bool {
    v.get("optional").and_then(Value::as_bool) == Some(true)
}

/// The (kind, name) of every non-optional ConfigMap/Secret the pod's volumes use.
fn volume_refs(pod: &Value) -> Vec<(&'static str, String)> {
    let mut refs = Vec::new();
    for v in array_at(pod, "/spec/volumes") {
        let mut add = |kind: &'static str, source: Option<&Value>, field: &str| {
            if let Some(source) = source.filter(|s| !optional(s)) {
                refs.push((kind, str_at(source, field).to_string()));
            }
        };
        add("configmap", v.get("configMap"), "/name");
        add("secret", v.get("secret"), "/secretName");
        for src in array_at(v, "/projected/sources") {
            add("configmap", src.get("configMap"), "/name");
            add("secret", src.get("secret"), "/name");
        }
    }
    refs
}

/// The (kind, name, key) of every non-optional env reference of a container.
fn env_refs(c: &Value) -> Vec<(&'static str, String, Option<String>)> {
    let mut refs = Vec::new();
    for e in array_at(c, "/env") {
        for (field, kind) in [("configMapKeyRef", "configmap"), ("secretKeyRef", "secret")] {
            if let Some(r) = e
                .pointer(&format!("/valueFrom/{field}"))
                .filter(|r| !optional(r))
            {
                refs.push((
                    kind,
                    str_at(r, "/name").to_string(),
                    Some(str_at(r, "/key").to_string()),
                ));
            }
        }
    }
    for e in array_at(c, "/envFrom") {
        for (field, kind) in [("configMapRef", "configmap"), ("secretRef", "secret")] {
            if let Some(r) = e.get(field).filter(|r| !optional(r)) {
                refs.push((kind, str_at(r, "/name").to_string(), None));
            }
        }
    }
    refs
}

/// The pod's containers, init containers first, with whether each is one.
fn containers(pod: &Value) -> Vec<(bool, &Value)> {
    array_at(pod, "/spec/initContainers")
        .iter()
        .map(|c| (true, c))
        .chain(array_at(pod, "/spec/containers").iter().map(|c| (false, c)))
        .collect()
}

/// What blocks each container (by name) of `pod`, given the node's images.
fn blockers(pod: &Value, images: &HashSet<String>, refs: &Refs) -> Vec<(String, Option<Blocker>)> {
    let ns = str_at(pod, "/metadata/namespace");
    let mount = volume_refs(pod).into_iter().find_map(|(kind, name)| {
        refs.missing(ns, kind, &name, None).map(|m| Blocker::Mount {
            message: format!("MountVolume.SetUp failed: {m}"),
        })
    });
    containers(pod)
        .into_iter()
        .map(|(_, c)| {
            let image_blocker =
                image_blocker(str_at(c, "/image"), str_at(c, "/imagePullPolicy"), images);
            let env = env_refs(c).into_iter().find_map(|(kind, name, key)| {
                refs.missing(ns, kind, &name, key.as_deref())
                    .map(|message| Blocker::Config { message })
            });
            let b = mount.clone().or(image_blocker).or(env);
            (str_at(c, "/name").to_string(), b)
        })
        .collect()
}

fn previous_waiting_reason(pod: &Value, name: &str) -> String {
    ["/status/initContainerStatuses", "/status/containerStatuses"]
        .iter()
        .flat_map(|p| array_at(pod, p))
        .find(|s| str_at(s, "/name") == name)
        .map(|s| str_at(s, "/state/waiting/reason").to_string())
        .unwrap_or_default()
}

/// The waiting reason and message of a blocked container, and the events a
/// kubelet records when it first gets there.
fn waiting(
    prev: &str,
    b: &Option<Blocker>,
    node: &str,
) -> (String, String, Vec<(&'static str, String, String)>) {
    match b {
        None => ("PodInitializing".into(), String::new(), Vec::new()),
        Some(Blocker::Mount { message }) => {
            let events = if prev == "ContainerCreating" {
                Vec::new()
            } else {
                vec![("Warning", "FailedMount".to_string(), message.clone())]
            };
            ("ContainerCreating".into(), String::new(), events)
        }
        Some(Blocker::NeverPull { image }) => {
            let msg =
                format!("Container image \"{image}\" is not present with pull policy of Never");
            let events = if prev == "ErrImageNeverPull" {
                Vec::new()
            } else {
                vec![
                    ("Warning", "ErrImageNeverPull".to_string(), msg.clone()),
                    (
                        "Warning",
                        "Failed".to_string(),
                        "Error: ErrImageNeverPull".to_string(),
                    ),
                ]
            };
            ("ErrImageNeverPull".into(), msg, events)
        }
        Some(Blocker::PullFailed { image, why }) => {
            if prev == "ErrImagePull" || prev == "ImagePullBackOff" {
                let msg = format!("Back-off pulling image \"{image}\": {why}");
                let events = if prev == "ImagePullBackOff" {
                    Vec::new()
                } else {
                    vec![("Normal", "BackOff".to_string(), msg.clone())]
                };
                ("ImagePullBackOff".into(), msg, events)
            } else {
                let detail =
                    format!("failed to pull and unpack image \"{image}\" on node {node}: {why}");
                let events = vec![
                    (
                        "Warning",
                        "Failed".to_string(),
                        format!("Failed to pull image \"{image}\": {detail}"),
                    ),
                    (
                        "Warning",
                        "Failed".to_string(),
                        "Error: ErrImagePull".to_string(),
                    ),
                ];
                ("ErrImagePull".into(), detail, events)
            }
        }
        Some(Blocker::Config { message }) => {
            let events = if prev == "CreateContainerConfigError" {
                Vec::new()
            } else {
                vec![("Warning", "Failed".to_string(), format!("Error: {message}"))]
            };
            ("CreateContainerConfigError".into(), message.clone(), events)
        }
    }
}

fn condition(ty: &str, status: bool, reason: Option<&str>, message: Option<String>) -> Value {
    let mut c = json!({"type": ty, "status": if status { "True" } else { "False" },
                       "lastProbeTime": null, "lastTransitionTime": Time(jiff::Timestamp::now())});
    if let Some(r) = reason {
        c["reason"] = json!(r);
    }
    if let Some(m) = message {
        c["message"] = json!(m);
    }
    c
}

fn container_status(c: &Value, state: Value, ready: bool, started: bool) -> Value {
    let image = str_at(c, "/image");
    let mut s = json!({
        "name": str_at(c, "/name"), "image": image, "imageID": "",
        "ready": ready, "restartCount": 0, "started": started, "state": state,
    });
    if started || s.pointer("/state/terminated").is_some() {
        s["imageID"] = json!(normalize_image(image));
        s["containerID"] = json!(format!("containerd://{}", uuid::Uuid::new_v4().simple()));
    }
    s
}

/// An event to record on a pod: container, type, reason, message.
type PodEvent = (String, &'static str, String, String);

/// The status of a pod whose containers cannot start yet, or `None` when
/// it already says so (so an unchanged pod is not rewritten).
fn held_status(
    pod: &Value,
    blocked: &[(String, Option<Blocker>)],
    node: &str,
) -> (Option<Value>, Vec<PodEvent>) {
    let mut events = Vec::new();
    let mut init = Vec::new();
    let mut main = Vec::new();
    let mut unchanged = true;
    let only_main = array_at(pod, "/spec/initContainers").is_empty();
    for ((is_init, c), (name, b)) in containers(pod).into_iter().zip(blocked) {
        let prev = previous_waiting_reason(pod, name);
        let (mut reason, message, new_events) = waiting(&prev, b, node);
        if !is_init && reason == "PodInitializing" && only_main {
            reason = "ContainerCreating".into();
        }
        unchanged &= prev == reason;
        events.extend(
            new_events
                .into_iter()
                .map(|(ty, r, m)| (name.clone(), ty, r, m)),
        );
        let mut w = json!({"reason": reason});
        if !message.is_empty() {
            w["message"] = json!(message);
        }
        let s = container_status(c, json!({"waiting": w}), false, false);
        if is_init { init.push(s) } else { main.push(s) }
    }
    if unchanged {
        return (None, events);
    }
    let not_ready: Vec<&str> = array_at(pod, "/spec/containers")
        .iter()
        .map(|c| str_at(c, "/name"))
        .collect();
    let msg = format!("containers with unready status: [{}]", not_ready.join(" "));
    let mounting = blocked
        .iter()
        .any(|(_, b)| matches!(b, Some(Blocker::Mount { .. })));
    let mut conditions = vec![
        condition("PodReadyToStartContainers", !mounting, None, None),
        if only_main {
            condition("Initialized", true, None, None)
        } else {
            condition(
                "Initialized",
                false,
                Some("ContainersNotInitialized"),
                Some("containers with incomplete status".into()),
            )
        },
        condition(
            "Ready",
            false,
            Some("ContainersNotReady"),
            Some(msg.clone()),
        ),
        condition(
            "ContainersReady",
            false,
            Some("ContainersNotReady"),
            Some(msg),
        ),
    ];
    conditions.push(condition("PodScheduled", true, None, None));
    let mut status =
        json!({"phase": "Pending", "conditions": conditions, "containerStatuses": main});
    if !only_main {
        status["initContainerStatuses"] = json!(init);
    }
    (Some(json!({"status": status})), events)
}

/// The status of a started pod: Running and Ready (when its readiness gates
/// allow), or Succeeded for run-to-completion pods. Init containers with
/// `restartPolicy: Always` (native sidecars) keep running.
fn started_status(pod: &Value, host_ip: &str, pod_ip: &str) -> Value {
    let now = Time(jiff::Timestamp::now());
    let policy = str_at(pod, "/spec/restartPolicy");
    let completes = !policy.is_empty() && policy != "Always";
    let done = json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now}});
    let running = json!({"running": {"startedAt": now}});
    let init: Vec<Value> = array_at(pod, "/spec/initContainers")
        .iter()
        .map(|c| {
            if str_at(c, "/restartPolicy") == "Always" && !completes {
                container_status(c, running.clone(), true, true)
            } else {
                container_status(c, done.clone(), false, false)
            }
        })
        .collect();
    let main: Vec<Value> = array_at(pod, "/spec/containers")
        .iter()
        .map(|c| {
            if completes {
                container_status(c, done.clone(), false, false)
            } else {
                container_status(c, running.clone(), true, true)
            }
        })
        .collect();
    let gates_open = array_at(pod, "/spec/readinessGates").iter().all(|gate| {
        let ty = str_at(gate, "/conditionType");
        array_at(pod, "/status/conditions")
            .iter()
            .any(|c| str_at(c, "/type") == ty && str_at(c, "/status") == "True")
    });
    let phase = if completes { "Succeeded" } else { "Running" };
    let reason = completes.then_some("PodCompleted");
    let ready = if completes {
        condition("Ready", false, reason, None)
    } else if gates_open {
        condition("Ready", true, None, None)
    } else {
        condition(
            "Ready",
            false,
            Some("ReadinessGatesNotReady"),
            Some("the pod's readiness gates are not all True".into()),
        )
    };
    let mut status = json!({
        "phase": phase,
        "hostIP": host_ip, "hostIPs": [{"ip": host_ip}],
        "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "conditions": [
            condition("PodReadyToStartContainers", !completes, None, None),
            condition("Initialized", true, reason, None),
            ready,
            condition("ContainersReady", !completes, reason, None),
            condition("PodScheduled", true, None, None),
        ],
        "containerStatuses": main,
    });
    if !init.is_empty() {
        status["initContainerStatuses"] = json!(init);
    }
    json!({"status": status})
}

fn resource_version(pod: &Pod) -> u64 {
    pod.metadata
        .resource_version
        .as_deref()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn is_terminal(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

struct Kubelet {
    client: kube::Client,
    engine: Engine,
    nodes: Vec<AgentNode>,
    /// The images of each node, and when they were asked.
    probed: HashMap<String, (Instant, HashSet<String>)>,
    /// Pods whose deletion was finished, by uid, and when.
    deleting: HashMap<String, Instant>,
    /// The resourceVersion each pod's last status patch gave it, by uid: a
    /// pod is not looked at again until the watch has caught up with it.
    patched: HashMap<String, u64>,
    /// Problems already printed.
    reported: HashSet<String>,
}

impl Kubelet {
    async fn sync(&mut self, pods: &[Arc<Pod>]) {
        let mut pending = Vec::new();
        let live: HashSet<&str> = pods
            .iter()
            .filter_map(|p| p.metadata.uid.as_deref())
            .collect();
        self.patched.retain(|uid, _| live.contains(uid.as_str()));
        for pod in pods {
            let node = pod
                .spec
                .as_ref()
                .and_then(|s| s.node_name.clone())
                .unwrap_or_default();
            let Some(index) = self.nodes.iter().position(|n| n.name == node) else {
                continue;
            };
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if self
                .patched
                .get(&uid)
                .is_some_and(|&rv| resource_version(pod) < rv)
            {
                continue;
            }
            if pod.metadata.deletion_timestamp.is_some() {
                self.finish_deletion(pod).await;
                continue;
            }
            let phase = pod
                .status
                .as_ref()
                .and_then(|s| s.phase.as_deref())
                .unwrap_or("Pending");
            if phase == "Pending" {
                pending.push((index, pod.clone()));
            }
        }
        if pending.is_empty() {
            return;
        }
        let refs = self.refs(&pending).await;
        // Addresses of pods that still hold one (a terminal pod's sandbox is gone).
        let mut used: HashSet<String> = pods
            .iter()
            .filter(|p| !is_terminal(p))
            .filter(|p| {
                !p.spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false)
            })
            .filter_map(|p| p.status.as_ref()?.pod_ip.clone())
            .collect();
        for (index, pod) in pending {
            let node = self.nodes[index].name.clone();
            let host_ip = self.nodes[index].ip.clone();
            let ns = pod.metadata.namespace.clone().unwrap_or_default();
            if refs.failed.contains(&ns) {
                continue;
            }
            let Some(images) = self.images(&node).await else {
                continue;
            };
            let Ok(value) = serde_json::to_value(pod.as_ref()) else {
                continue;
            };
            let blocked = blockers(&value, &images, &refs);
            if blocked.iter().all(|(_, b)| b.is_none()) {
                let host_network = pod
                    .spec
                    .as_ref()
                    .and_then(|s| s.host_network)
                    .unwrap_or(false);
                let ip = if host_network {
                    host_ip.clone()
                } else {
                    let Some(ip) = (2..255)
                        .map(|n| format!("10.244.{index}.{n}"))
                        .find(|ip| !used.contains(ip))
                    else {
                        report_once(
                            &mut self.reported,
                            format!(
                                "node {node} has no pod address left for {ns}/{}",
                                pod.metadata.name.as_deref().unwrap_or_default()
                            ),
                        );
                        continue;
                    };
                    ip
                };
                used.insert(ip.clone());
                let status = started_status(&value, &host_ip, &ip);
                if self.patch_status(&pod, status).await {
                    let message = "Started container (the sim runs no container)".to_string();
                    for (_, c) in containers(&value) {
                        let name = str_at(c, "/name").to_string();
                        self.event(&pod, &node, &name, "Normal", "Started", message.clone())
                            .await;
                    }
                }
            } else {
                let (status, events) = held_status(&value, &blocked, &node);
                if let Some(status) = status
                    && self.patch_status(&pod, status).await
                {
                    for (container, ty, reason, message) in events {
                        self.event(&pod, &node, &container, ty, &reason, message)
                            .await;
                    }
                }
            }
        }
    }

    /// A strategic merge of the pod's status (conditions merge by type, so
    /// other writers' conditions stay); remembers the resourceVersion it gave.
    async fn patch_status(&mut self, pod: &Pod, status: Value) -> bool {
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api = Api::<Pod>::namespaced(self.client.clone(), ns);
        match bounded(api.patch_status(name, &PatchParams::default(), &Patch::Strategic(status)))
            .await
        {
            Ok(patched) => {
                if let Some(uid) = pod.metadata.uid.clone() {
                    self.patched.insert(uid, resource_version(&patched));
                }
                true
            }
            Err(e) => {
                report_once(
                    &mut self.reported,
                    format!("pod {ns}/{name}: status refused: {e}"),
                );
                false
            }
        }
    }

    /// Ends a terminating pod as a kubelet does once its containers are
    /// stopped: a terminal phase (so a Job's finalizer is released), then a
    /// delete with grace period 0 (at most once every 5 s per pod, and not
    /// again once only finalizers hold it).
    async fn finish_deletion(&mut self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if pod.metadata.deletion_grace_period_seconds == Some(0)
            || self
                .deleting
                .get(&uid)
                .is_some_and(|at| at.elapsed() < Duration::from_secs(5))
        {
            return;
        }
        self.deleting
            .retain(|_, at| at.elapsed() < Duration::from_secs(60));
        self.deleting.insert(uid.clone(), Instant::now());
        let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
        let name = pod.metadata.name.as_deref().unwrap_or_default();
        let api = Api::<Pod>::namespaced(self.client.clone(), ns);
        if !is_terminal(pod)
            && pod
                .metadata
                .finalizers
                .as_ref()
                .is_some_and(|f| !f.is_empty())
        {
            let failed = json!({"status": {"phase": "Failed", "reason": "Terminated",
                "message": "the pod was deleted"}});
            let _ =
                bounded(api.patch_status(name, &PatchParams::default(), &Patch::Strategic(failed)))
                    .await;
        }
        let params = DeleteParams {
            grace_period_seconds: Some(0),
            preconditions: Some(Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            ..DeleteParams::default()
        };
        if let Err(e) = bounded(api.delete(name, &params)).await
            && !e.contains("not found")
        {
            report_once(
                &mut self.reported,
                format!("pod {ns}/{name}: finishing its deletion: {e}"),
            );
        }
    }

    /// The node's images (normalised), asked at most once per [`INTERVAL`].
    async fn images(&mut self, node: &str) -> Option<HashSet<String>> {
        if let Some((at, images)) = self.probed.get(node)
            && at.elapsed() < INTERVAL
        {
            return Some(images.clone());
        }
        let namespace = format!("--namespace={K8S_NAMESPACE}");
        let command = ["ctr", namespace.as_str(), "images", "ls", "-q"];
        let probe = self.engine.exec(node, &command);
        let images = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
            Ok(Ok(output)) if output.success() => output
                .stdout
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(normalize_image)
                .collect(),
            Ok(Ok(output)) => {
                tracing::warn!(%node, "sim agent: ctr images ls: {}", output.tail(3));
                return None;
            }
            Ok(Err(e)) => {
                tracing::warn!(%node, "sim agent: ctr images ls: {}", crate::error_chain(&e));
                return None;
            }
            Err(_) => {
                tracing::warn!(%node, "sim agent: ctr images ls timed out");
                return None;
            }
        };
        self.probed
            .insert(node.to_string(), (Instant::now(), images));
        self.probed.get(node).map(|(_, i)| i.clone())
    }

    /// The ConfigMaps and Secrets of the namespaces of `pending` pods.
    async fn refs(&self, pending: &[(usize, Arc<Pod>)]) -> Refs {
        let mut refs = Refs::default();
        let namespaces: HashSet<String> = pending
            .iter()
            .filter_map(|(_, p)| p.metadata.namespace.clone())
            .collect();
        for ns in namespaces {
            let config_maps = Api::<ConfigMap>::namespaced(self.client.clone(), &ns);
            let secrets = Api::<Secret>::namespaced(self.client.clone(), &ns);
            let (Ok(config_maps), Ok(secrets)) = (
                bounded(config_maps.list(&Default::default())).await,
                bounded(secrets.list(&Default::default())).await,
            ) else {
                refs.failed.insert(ns);
                continue;
            };
            for cm in config_maps {
                let keys = cm
                    .data
                    .unwrap_or_default()
                    .into_keys()
                    .chain(cm.binary_data.unwrap_or_default().into_keys())
                    .collect();
                refs.config_maps
                    .insert((ns.clone(), cm.metadata.name.unwrap_or_default()), keys);
            }
            for s in secrets {
                let keys = s
                    .data
                    .unwrap_or_default()
                    .into_keys()
                    .chain(s.string_data.unwrap_or_default().into_keys())
                    .collect();
                refs.secrets
                    .insert((ns.clone(), s.metadata.name.unwrap_or_default()), keys);
            }
        }
        refs
    }

    /// Records a core/v1 Event on the pod, from the kubelet of `node`.
    async fn event(
        &self,
        pod: &Pod,
        node: &str,
        container: &str,
        ty: &str,
        reason: &str,
        message: String,
    ) {
        let ns = pod
            .metadata
            .namespace
            .clone()
            .unwrap_or_else(|| "default".into());
        let name = pod.metadata.name.clone().unwrap_or_default();
        let field_path = if pod
            .spec
            .as_ref()
            .and_then(|s| s.init_containers.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.name == container))
        {
            format!("spec.initContainers{{{container}}}")
        } else {
            format!("spec.containers{{{container}}}")
        };
        let now = Time(jiff::Timestamp::now());
        let event = Event {
            metadata: ObjectMeta {
                generate_name: Some(format!("{name}.")),
                namespace: Some(ns.clone()),
                ..ObjectMeta::default()
            },
            involved_object: k8s_openapi::api::core::v1::ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(name),
                namespace: Some(ns.clone()),
                uid: pod.metadata.uid.clone(),
                field_path: Some(field_path),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message),
            type_: Some(ty.into()),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("kubelet".into()),
                host: Some(node.into()),
            }),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            count: Some(1),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(node.into()),
            ..Event::default()
        };
        if let Err(e) = bounded(
            Api::<Event>::namespaced(self.client.clone(), &ns)
                .create(&PostParams::default(), &event),
        )
        .await
        {
            tracing::debug!("sim agent: event: {e}");
        }
    }
}

/// The labels kind puts on nodes, for tests.
#[cfg(test)]
fn labels_of(v: &Value) -> std::collections::BTreeMap<String, String> {
    serde_json::from_value(v["metadata"]["labels"].clone()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(spec: Value) -> Value {
        json!({"metadata": {"name": "p", "namespace": "ns"}, "spec": spec})
    }

    fn images(list: &[&str]) -> HashSet<String> {
        list.iter().map(|i| normalize_image(i)).collect()
    }

    #[test]
    fn image_references_are_normalised_like_containerd_names_them() {
        assert_eq!(
            normalize_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(
            normalize_image("postgres:16-alpine"),
            "docker.io/library/postgres:16-alpine"
        );
        assert_eq!(normalize_image("localhost/a/b:t"), "localhost/a/b:t");
        assert_eq!(normalize_image("registry:5000/x"), "registry:5000/x:latest");
    }

    #[test]
    fn an_image_missing_from_the_node_blocks_and_always_pulls_fail_without_a_registry() {
        let p = pod(json!({"containers": [
            {"name": "a", "image": "localhost/x:1", "imagePullPolicy": "Never"},
            {"name": "b", "image": "localhost/y:1", "imagePullPolicy": "IfNotPresent"},
            {"name": "c", "image": "postgres:16", "imagePullPolicy": "IfNotPresent"},
            {"name": "d", "image": "localhost/z:latest", "imagePullPolicy": "Always"},
        ]}));
        let b = blockers(&p, &images(&[]), &Refs::default());
        assert_eq!(
            b[0].1,
            Some(Blocker::NeverPull {
                image: "localhost/x:1".into()
            })
        );
        assert!(matches!(&b[1].1, Some(Blocker::PullFailed { image, why })
            if image == "localhost/y:1" && why.contains("load it")));
        assert!(
            matches!(&b[2].1, Some(Blocker::PullFailed { .. })),
            "no image is assumed pullable: there is no registry"
        );
        let all = images(&[
            "localhost/x:1",
            "localhost/y:1",
            "postgres:16",
            "localhost/z:latest",
        ]);
        let b = blockers(&p, &all, &Refs::default());
        assert!(b[..3].iter().all(|(_, b)| b.is_none()));
        assert!(
            matches!(&b[3].1, Some(Blocker::PullFailed { why, .. }) if why.contains("IfNotPresent")),
            "Always pulls even a loaded image, as on kind: {:?}",
            b[3].1
        );
    }

    #[test]
    fn missing_config_maps_and_secret_keys_block_like_a_kubelet() {
        let p = pod(json!({
            "volumes": [{"name": "cfg", "configMap": {"name": "cfg"}}],
            "containers": [{"name": "a", "image": "x:1", "env": [
                {"name": "P", "valueFrom": {"secretKeyRef": {"name": "s", "key": "password"}}}]}],
        }));
        let images = |_: &[&str]| images(&["x:1"]);
        let mut refs = Refs::default();
        let b = blockers(&p, &images(&[]), &refs);
        assert!(
            matches!(&b[0].1, Some(Blocker::Mount { message }) if message.contains("configmap \"cfg\" not found"))
        );
        refs.config_maps
            .insert(("ns".into(), "cfg".into()), HashSet::new());
        refs.secrets.insert(
            ("ns".into(), "s".into()),
            HashSet::from(["user".to_string()]),
        );
        let b = blockers(&p, &images(&[]), &refs);
        assert_eq!(
            b[0].1,
            Some(Blocker::Config {
                message: "couldn't find key password in Secret ns/s".into()
            })
        );
        refs.secrets.insert(
            ("ns".into(), "s".into()),
            HashSet::from(["password".to_string()]),
        );
        assert_eq!(blockers(&p, &images(&[]), &refs)[0].1, None);
    }

    #[test]
    fn a_held_pod_is_rewritten_only_when_its_reason_changes_and_pull_failures_back_off() {
        let mut p = pod(json!({"containers": [{"name": "a", "image": "localhost/y:1"}]}));
        let blocked = vec![(
            "a".to_string(),
            Some(Blocker::PullFailed {
                image: "localhost/y:1".into(),
                why: "no registry".into(),
            }),
        )];
        let (status, events) = held_status(&p, &blocked, "n");
        let status = status.expect("first time: written");
        assert_eq!(
            status["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ErrImagePull"
        );
        assert!(events.iter().any(|e| e.3 == "Error: ErrImagePull"));
        p["status"] = status["status"].clone();
        let (status, _) = held_status(&p, &blocked, "n");
        let status = status.expect("then it backs off");
        assert_eq!(
            status["status"]["containerStatuses"][0]["state"]["waiting"]["reason"],
            "ImagePullBackOff"
        );
        p["status"] = status["status"].clone();
        assert!(
            held_status(&p, &blocked, "n").0.is_none(),
            "unchanged: not rewritten"
        );
    }

    #[test]
    fn run_to_completion_pods_succeed_and_others_run_ready() {
        let job =
            pod(json!({"restartPolicy": "Never", "containers": [{"name": "a", "image": "x"}]}));
        let s = started_status(&job, "172.18.0.2", "10.244.0.5");
        assert_eq!(s["status"]["phase"], "Succeeded");
        assert_eq!(
            s["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"],
            0
        );
        let web =
            pod(json!({"restartPolicy": "Always", "containers": [{"name": "a", "image": "x"}]}));
        let s = started_status(&web, "172.18.0.2", "10.244.0.5");
        assert_eq!(s["status"]["phase"], "Running");
        assert_eq!(s["status"]["podIP"], "10.244.0.5");
        assert!(
            s["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["type"] == "Ready" && c["status"] == "True")
        );
    }

    #[test]
    fn nodes_look_like_kinds_and_the_control_plane_is_tainted_only_with_workers() {
        let one = vec![AgentNode {
            name: "c-control-plane".into(),
            role: "control-plane".into(),
            ip: "10.89.0.2".into(),
        }];
        let v = node_object(&one, 0);
        assert!(labels_of(&v).contains_key("node-role.kubernetes.io/control-plane"));
        assert_eq!(v["spec"]["taints"], json!([]));
        let two = vec![
            one[0].clone(),
            AgentNode {
                name: "c-worker".into(),
                role: "worker".into(),
                ip: "10.89.0.3".into(),
            },
        ];
        let v = node_object(&two, 0);
        assert_eq!(v["spec"]["taints"][0]["effect"], "NoSchedule");
        assert!(serde_json::from_value::<Node>(node_object(&two, 1)).is_ok());
        assert_eq!(
            node_status("10.89.0.3", "v1.34.4")["status"]["nodeInfo"]["kubeletVersion"],
            "v1.34.4"
        );
    }

    #[test]
    fn sidecars_keep_running_and_readiness_gates_hold_ready() {
        let mut p = pod(json!({
            "restartPolicy": "Always",
            "readinessGates": [{"conditionType": "example.com/lb"}],
            "initContainers": [
                {"name": "setup", "image": "x:1"},
                {"name": "proxy", "image": "x:1", "restartPolicy": "Always"},
            ],
            "containers": [{"name": "a", "image": "x:1"}],
        }));
        let s = started_status(&p, "10.89.0.2", "10.244.0.9");
        let init = &s["status"]["initContainerStatuses"];
        assert!(init[0]["state"]["terminated"].is_object());
        assert!(init[1]["state"]["running"].is_object() && init[1]["ready"] == true);
        let ready = |s: &Value| {
            s["status"]["conditions"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| c["type"] == "Ready")
                .unwrap()["status"]
                .clone()
        };
        assert_eq!(ready(&s), "False", "the gate is not True yet");
        p["status"] = json!({"conditions": [{"type": "example.com/lb", "status": "True"}]});
        assert_eq!(
            ready(&started_status(&p, "10.89.0.2", "10.244.0.9")),
            "True"
        );
    }
}
