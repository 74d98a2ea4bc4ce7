//! The simulated scheduler and kubelet. No container ever runs.
//!
//! Scheduling puts each new pod on a worker (round robin) or, without
//! workers, on the control plane, honouring nodeSelector and taints. The
//! kubelet then checks what a real one would trip over before starting
//! containers: ConfigMap/Secret volumes and env references must exist, and
//! every image must be on the node. An image is "local" when its pull policy
//! is Never or its reference starts with `localhost/`; a local image must be
//! present according to the [`ImageProbe`](crate::ImageProbe), anything else
//! is assumed pullable. A pod that passes becomes Running and Ready at once
//! (no probe is executed), or Succeeded when its restartPolicy is not Always.
//! Pending pods are re-checked every `kubelet_interval`, so loading an image
//! later lets them start. Events are recorded with the kubelet's reasons.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::Sim;
use crate::controllers::{Source, daemonset, gr, node_ip, record_event};
use crate::object;
use crate::store::Txn;

/// How long one image probe call may take before the pods of that node are
/// treated as "images unknown" for this round.
const PROBE_TIMEOUT: Duration = Duration::from_secs(20);

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

/// Whether the kubelet would only look on the node for this image.
pub fn is_local(image: &str, pull_policy: &str) -> bool {
    pull_policy == "Never" || image.starts_with("localhost/")
}

fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn fake_digest(s: &str) -> String {
    let h = fnv64(s);
    format!(
        "{h:016x}{:016x}{:016x}{:016x}",
        h.rotate_left(16),
        h.rotate_left(32),
        h.rotate_left(48)
    )
}

struct State {
    next_node: usize,
    probed: HashMap<String, (Instant, Option<HashSet<String>>)>,
}

pub async fn run(sim: Arc<Sim>) {
    let mut changes = sim.store.subscribe();
    let mut shutdown = sim.shutdown.clone();
    let mut state = State {
        next_node: 0,
        probed: HashMap::new(),
    };
    loop {
        changes.borrow_and_update();
        schedule(&sim, &mut state);
        // Probe nodes that have pending pods with local images (at most once per interval).
        let needed = nodes_needing_probe(&sim);
        for node in needed {
            let fresh = state
                .probed
                .get(&node)
                .is_some_and(|(at, _)| at.elapsed() < sim.kubelet_interval);
            if fresh {
                continue;
            }
            let result = tokio::select! {
                r = tokio::time::timeout(PROBE_TIMEOUT, sim.probe.images(&node)) => r,
                _ = crate::wait_shutdown(&mut shutdown) => return,
            };
            let images = match result {
                Ok(Ok(set)) => Some(set.iter().map(|i| normalize_image(i)).collect()),
                Ok(Err(e)) => {
                    tracing::warn!(%node, "image probe failed: {e}");
                    None
                }
                Err(_) => {
                    tracing::warn!(%node, "image probe timed out");
                    None
                }
            };
            state.probed.insert(node, (Instant::now(), images));
        }
        sync_pods(&sim, &state);
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(sim.kubelet_interval) => {}
            _ = crate::wait_shutdown(&mut shutdown) => return,
        }
    }
}

fn pending_on_node(pod: &Value) -> bool {
    !object::str_at(pod, "/spec/nodeName").is_empty()
        && object::str_at(pod, "/status/phase") == "Pending"
        && !object::is_deleting(pod)
}

fn containers(pod: &Value) -> Vec<(bool, Value)> {
    object::array_at(pod, "/spec/initContainers")
        .iter()
        .map(|c| (true, c.clone()))
        .chain(
            object::array_at(pod, "/spec/containers")
                .iter()
                .map(|c| (false, c.clone())),
        )
        .collect()
}

fn nodes_needing_probe(sim: &Sim) -> Vec<String> {
    sim.store.transact(|txn| {
        let mut nodes: Vec<String> = txn
            .list(&gr("", "pods"))
            .filter(|p| pending_on_node(p))
            .filter(|p| {
                containers(p).iter().any(|(_, c)| {
                    is_local(
                        object::str_at(c, "/image"),
                        object::str_at(c, "/imagePullPolicy"),
                    )
                })
            })
            .map(|p| object::str_at(p, "/spec/nodeName").to_string())
            .collect();
        nodes.sort();
        nodes.dedup();
        nodes
    })
}

fn schedule(sim: &Sim, state: &mut State) {
    let pods_gr = gr("", "pods");
    sim.store.transact(|txn| {
        let nodes: Vec<Value> = txn.list(&gr("", "nodes")).cloned().collect();
        let unscheduled: Vec<Value> = txn
            .list(&pods_gr)
            .filter(|p| object::str_at(p, "/spec/nodeName").is_empty())
            .filter(|p| !object::is_deleting(p) && object::str_at(p, "/status/phase") == "Pending")
            .cloned()
            .collect();
        for pod in unscheduled {
            let spec = pod.get("spec").cloned().unwrap_or(json!({}));
            let fitting: Vec<&Value> = nodes.iter().filter(|n| daemonset::fits(&spec, n)).collect();
            let workers: Vec<&Value> = fitting
                .iter()
                .copied()
                .filter(|n| object::str_at(n, "/metadata/labels/node-role.kubernetes.io~1control-plane").is_empty()
                    && n.pointer("/metadata/labels/node-role.kubernetes.io~1control-plane").is_none())
                .collect();
            let pool = if workers.is_empty() { fitting } else { workers };
            if pool.is_empty() {
                let n = nodes.len();
                let msg = format!("0/{n} nodes are available: {n} node(s) didn't match Pod's node affinity/selector or had untolerated taints. preemption: 0/{n} nodes are available: {n} Preemption is not helpful for scheduling.");
                let mut updated = pod.clone();
                let changed = object::set_condition(&mut updated, json!({
                    "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                    "message": msg, "lastProbeTime": null, "lastTransitionTime": object::now()}));
                if changed {
                    let _ = txn.update(&pods_gr, updated);
                    record_event(txn, &pod, "Warning", "FailedScheduling", &msg, Source::controller("default-scheduler"));
                }
                continue;
            }
            let node = pool[state.next_node % pool.len()];
            state.next_node = state.next_node.wrapping_add(1);
            let node_name = object::name(node).to_string();
            bind(sim, txn, &pod, &node_name);
        }
    });
}

fn bind(sim: &Sim, txn: &mut Txn<'_>, pod: &Value, node_name: &str) {
    let pods_gr = gr("", "pods");
    let index = sim
        .nodes
        .iter()
        .position(|n| n.name == node_name)
        .unwrap_or(0);
    let used: HashSet<String> = txn
        .list(&pods_gr)
        .map(|p| object::str_at(p, "/status/podIP").to_string())
        .collect();
    let ip = (2..255)
        .map(|n| format!("10.244.{index}.{n}"))
        .find(|ip| !used.contains(ip))
        .unwrap_or_else(|| format!("10.244.{index}.254"));
    let host_ip = node_ip(index);
    let now = object::now();
    let mut updated = pod.clone();
    updated["spec"]["nodeName"] = json!(node_name);
    let status = object::ensure_object(&mut updated, &["status"]);
    status.insert("hostIP".into(), json!(host_ip));
    status.insert("hostIPs".into(), json!([{"ip": host_ip}]));
    status.insert("podIP".into(), json!(ip));
    status.insert("podIPs".into(), json!([{"ip": ip}]));
    status.insert("startTime".into(), json!(now));
    object::set_condition(
        &mut updated,
        json!({"type": "PodScheduled", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}),
    );
    if let Ok(bound) = txn.update(&pods_gr, updated) {
        record_event(
            txn,
            &bound,
            "Normal",
            "Scheduled",
            &format!(
                "Successfully assigned {}/{} to {node_name}",
                object::namespace(pod),
                object::name(pod)
            ),
            Source::controller("default-scheduler"),
        );
    }
}

/// What stops a container from starting, if anything.
#[derive(Debug, Clone, PartialEq)]
enum Blocker {
    /// A volume's ConfigMap/Secret is missing: the pod stays ContainerCreating.
    Mount { volume: String, message: String },
    /// A local image is not on the node.
    NeverPull { image: String },
    /// A localhost/ image with a pull policy that would try a registry.
    PullFailed { image: String },
    /// The probe failed: try again later.
    Unknown,
    /// An env reference is missing.
    Config { message: String },
}

fn missing_ref(
    txn: &Txn<'_>,
    ns: &str,
    kind: &str,
    name: &str,
    key: Option<&str>,
) -> Option<String> {
    let (res, label) = if kind == "configmap" {
        ("configmaps", "ConfigMap")
    } else {
        ("secrets", "Secret")
    };
    let obj = txn.get(&gr("", res), ns, name);
    match (obj, key) {
        (None, _) => Some(format!("{kind} \"{name}\" not found")),
        (Some(o), Some(k)) => {
            let has = ["data", "binaryData", "stringData"]
                .iter()
                .any(|f| o.get(*f).and_then(|m| m.get(k)).is_some());
            (!has).then(|| format!("couldn't find key {k} in {label} {ns}/{name}"))
        }
        (Some(_), None) => None,
    }
}

fn mount_blocker(txn: &Txn<'_>, pod: &Value) -> Option<Blocker> {
    let ns = object::namespace(pod);
    for v in object::array_at(pod, "/spec/volumes") {
        let vol = object::str_at(v, "/name").to_string();
        let mut sources: Vec<(&str, String, bool)> = Vec::new();
        // (kind, name, optional) of a ConfigMap or Secret source; a volume's
        // secret is named by `secretName`, a projected one by `name`.
        let mut add = |kind: &'static str, source: Option<&Value>, name_field: &str| {
            if let Some(source) = source {
                sources.push((
                    kind,
                    object::str_at(source, name_field).to_string(),
                    source.get("optional").and_then(Value::as_bool) == Some(true),
                ));
            }
        };
        add("configmap", v.get("configMap"), "/name");
        add("secret", v.get("secret"), "/secretName");
        for src in object::array_at(v, "/projected/sources") {
            add("configmap", src.get("configMap"), "/name");
            add("secret", src.get("secret"), "/name");
        }
        for (kind, name, optional) in sources {
            if optional {
                continue;
            }
            if let Some(msg) = missing_ref(txn, ns, kind, &name, None) {
                return Some(Blocker::Mount {
                    volume: vol.clone(),
                    message: format!("MountVolume.SetUp failed for volume \"{vol}\" : {msg}"),
                });
            }
        }
    }
    None
}

fn env_blocker(txn: &Txn<'_>, ns: &str, c: &Value) -> Option<Blocker> {
    for e in object::array_at(c, "/env") {
        for (field, kind) in [("configMapKeyRef", "configmap"), ("secretKeyRef", "secret")] {
            if let Some(r) = e.pointer(&format!("/valueFrom/{field}"))
                && r.get("optional").and_then(Value::as_bool) != Some(true)
                && let Some(message) = missing_ref(
                    txn,
                    ns,
                    kind,
                    object::str_at(r, "/name"),
                    Some(object::str_at(r, "/key")),
                )
            {
                return Some(Blocker::Config { message });
            }
        }
    }
    for e in object::array_at(c, "/envFrom") {
        for (field, kind) in [("configMapRef", "configmap"), ("secretRef", "secret")] {
            if let Some(r) = e.get(field)
                && r.get("optional").and_then(Value::as_bool) != Some(true)
                && let Some(message) = missing_ref(txn, ns, kind, object::str_at(r, "/name"), None)
            {
                return Some(Blocker::Config { message });
            }
        }
    }
    None
}

fn image_blocker(c: &Value, images: Option<&Option<HashSet<String>>>) -> Option<Blocker> {
    let image = object::str_at(c, "/image").to_string();
    let policy = object::str_at(c, "/imagePullPolicy");
    if !is_local(&image, policy) {
        return None;
    }
    let present = match images {
        Some(Some(set)) => set.contains(&normalize_image(&image)),
        _ => return Some(Blocker::Unknown),
    };
    if present {
        None
    } else if policy == "Never" {
        Some(Blocker::NeverPull { image })
    } else {
        Some(Blocker::PullFailed { image })
    }
}

fn sync_pods(sim: &Sim, state: &State) {
    let pods_gr = gr("", "pods");
    sim.store.transact(|txn| {
        let pending: Vec<Value> = txn
            .list(&pods_gr)
            .filter(|p| pending_on_node(p))
            .cloned()
            .collect();
        for pod in pending {
            let node = object::str_at(&pod, "/spec/nodeName").to_string();
            let images = state.probed.get(&node).map(|(_, i)| i);
            let ns = object::namespace(&pod).to_string();
            let mount = mount_blocker(txn, &pod);
            let mut blockers: Vec<(String, Option<Blocker>)> = Vec::new();
            for (_, c) in containers(&pod) {
                let name = object::str_at(&c, "/name").to_string();
                let b = mount
                    .clone()
                    .or_else(|| image_blocker(&c, images))
                    .or_else(|| env_blocker(txn, &ns, &c));
                blockers.push((name, b));
            }
            if blockers.iter().any(|(_, b)| b == &Some(Blocker::Unknown)) {
                continue;
            }
            if blockers.iter().all(|(_, b)| b.is_none()) {
                start(txn, &pod, &node);
            } else {
                hold(txn, &pod, &node, &blockers);
            }
        }
    });
}

fn container_field_path(pod: &Value, name: &str) -> String {
    let init = object::array_at(pod, "/spec/initContainers")
        .iter()
        .any(|c| object::str_at(c, "/name") == name);
    if init {
        format!("spec.initContainers{{{name}}}")
    } else {
        format!("spec.containers{{{name}}}")
    }
}

fn previous_waiting_reason(pod: &Value, name: &str) -> String {
    ["/status/initContainerStatuses", "/status/containerStatuses"]
        .iter()
        .flat_map(|p| object::array_at(pod, p))
        .find(|s| object::str_at(s, "/name") == name)
        .map(|s| object::str_at(s, "/state/waiting/reason").to_string())
        .unwrap_or_default()
}

fn base_status(c: &Value, state: Value, ready: bool, started: bool) -> Value {
    let image = object::str_at(c, "/image");
    let mut s = json!({
        "name": object::str_at(c, "/name"),
        "image": image,
        "imageID": "",
        "ready": ready,
        "restartCount": 0,
        "started": started,
        "state": state,
        "lastState": {},
    });
    if started || state.get("terminated").is_some() {
        s["imageID"] = json!(format!(
            "{}@sha256:{}",
            normalize_image(image)
                .split(['@'])
                .next()
                .unwrap_or(image)
                .rsplit_once(':')
                .map(|(n, _)| n.to_string())
                .unwrap_or_default(),
            fake_digest(image)
        ));
        s["containerID"] = json!(format!(
            "containerd://{}{}",
            uuid::Uuid::new_v4().simple(),
            uuid::Uuid::new_v4().simple()
        ));
    }
    s
}

/// Keeps a pod Pending with its containers waiting, recording events when a
/// container's waiting reason changes.
fn hold(txn: &mut Txn<'_>, pod: &Value, node: &str, blockers: &[(String, Option<Blocker>)]) {
    let pods_gr = gr("", "pods");
    let spec_containers = containers(pod);
    let mut init_statuses = Vec::new();
    let mut statuses = Vec::new();
    let mut events: Vec<(String, &str, String, String)> = Vec::new();
    let mut mount_event = None;
    for ((is_init, c), (name, b)) in spec_containers.iter().zip(blockers) {
        let prev = previous_waiting_reason(pod, name);
        let (reason, message) = match b {
            None => ("PodInitializing".to_string(), String::new()),
            Some(Blocker::Mount { message, .. }) => {
                mount_event = Some(message.clone());
                ("ContainerCreating".to_string(), String::new())
            }
            Some(Blocker::NeverPull { image }) => {
                let msg =
                    format!("Container image \"{image}\" is not present with pull policy of Never");
                if prev != "ErrImageNeverPull" {
                    events.push((
                        name.clone(),
                        "Warning",
                        "ErrImageNeverPull".into(),
                        msg.clone(),
                    ));
                    events.push((
                        name.clone(),
                        "Warning",
                        "Failed".into(),
                        "Error: ErrImageNeverPull".into(),
                    ));
                }
                ("ErrImageNeverPull".to_string(), msg)
            }
            Some(Blocker::PullFailed { image }) => {
                if prev.is_empty() || prev == "ContainerCreating" || prev == "PodInitializing" {
                    let detail = format!(
                        "failed to pull and unpack image \"{image}\": failed to resolve reference \"{image}\": the image is not on node {node} and the sim cluster has no registry to pull it from (load it into the node, or use imagePullPolicy: Never)"
                    );
                    events.push((
                        name.clone(),
                        "Normal",
                        "Pulling".into(),
                        format!("Pulling image \"{image}\""),
                    ));
                    events.push((
                        name.clone(),
                        "Warning",
                        "Failed".into(),
                        format!("Failed to pull image \"{image}\": {detail}"),
                    ));
                    events.push((
                        name.clone(),
                        "Warning",
                        "Failed".into(),
                        "Error: ErrImagePull".into(),
                    ));
                    ("ErrImagePull".to_string(), detail)
                } else {
                    if prev != "ImagePullBackOff" {
                        events.push((
                            name.clone(),
                            "Normal",
                            "BackOff".into(),
                            format!("Back-off pulling image \"{image}\""),
                        ));
                        events.push((
                            name.clone(),
                            "Warning",
                            "Failed".into(),
                            "Error: ImagePullBackOff".into(),
                        ));
                    }
                    (
                        "ImagePullBackOff".to_string(),
                        format!("Back-off pulling image \"{image}\""),
                    )
                }
            }
            Some(Blocker::Config { message }) => {
                if prev != "CreateContainerConfigError" {
                    events.push((
                        name.clone(),
                        "Warning",
                        "Failed".into(),
                        format!("Error: {message}"),
                    ));
                }
                ("CreateContainerConfigError".to_string(), message.clone())
            }
            Some(Blocker::Unknown) => return,
        };
        let reason =
            if !is_init && reason == "PodInitializing" && spec_containers.iter().all(|(i, _)| !i) {
                "ContainerCreating".to_string()
            } else {
                reason
            };
        let mut waiting = json!({"reason": reason});
        if !message.is_empty() {
            waiting["message"] = json!(message);
        }
        let st = base_status(c, json!({"waiting": waiting}), false, false);
        if *is_init {
            init_statuses.push(st);
        } else {
            statuses.push(st);
        }
    }
    let now = object::now();
    let not_ready: Vec<String> = spec_containers
        .iter()
        .filter(|(i, _)| !i)
        .map(|(_, c)| object::str_at(c, "/name").to_string())
        .collect();
    let has_init = spec_containers.iter().any(|(i, _)| *i);
    let mut updated = pod.clone();
    let status = object::ensure_object(&mut updated, &["status"]);
    status.insert("containerStatuses".into(), json!(statuses));
    if has_init {
        status.insert("initContainerStatuses".into(), json!(init_statuses));
    }
    let msg = format!("containers with unready status: [{}]", not_ready.join(" "));
    object::set_condition(
        &mut updated,
        json!({"type": "PodReadyToStartContainers", "status": if mount_event.is_some() { "False" } else { "True" }, "lastProbeTime": null, "lastTransitionTime": now}),
    );
    if has_init {
        let init_names: Vec<String> = spec_containers
            .iter()
            .filter(|(i, _)| *i)
            .map(|(_, c)| object::str_at(c, "/name").to_string())
            .collect();
        object::set_condition(
            &mut updated,
            json!({"type": "Initialized", "status": "False", "reason": "ContainersNotInitialized",
            "message": format!("containers with incomplete status: [{}]", init_names.join(" ")), "lastProbeTime": null, "lastTransitionTime": now}),
        );
    } else {
        object::set_condition(
            &mut updated,
            json!({"type": "Initialized", "status": "True", "lastProbeTime": null, "lastTransitionTime": now}),
        );
    }
    for ty in ["Ready", "ContainersReady"] {
        object::set_condition(
            &mut updated,
            json!({"type": ty, "status": "False", "reason": "ContainersNotReady", "message": msg, "lastProbeTime": null, "lastTransitionTime": now}),
        );
    }
    // Keep timestamps steady so unchanged pods are not rewritten.
    if same_ignoring_ids(pod, &updated) {
        return;
    }
    let Ok(written) = txn.update(&pods_gr, updated) else {
        return;
    };
    if let Some(m) = mount_event
        && !object::array_at(pod, "/status/containerStatuses")
            .iter()
            .any(|s| object::str_at(s, "/state/waiting/reason") == "ContainerCreating")
    {
        record_event(
            txn,
            &written,
            "Warning",
            "FailedMount",
            &m,
            Source::kubelet(node, None),
        );
    }
    for (name, ty, reason, message) in events {
        let fp = container_field_path(pod, &name);
        record_event(
            txn,
            &written,
            ty,
            &reason,
            &message,
            Source::kubelet(node, Some(&fp)),
        );
    }
}

/// Compares container states and conditions, ignoring fresh ids and times.
fn same_ignoring_ids(a: &Value, b: &Value) -> bool {
    let strip = |v: &Value| -> Value {
        let mut v = v.get("status").cloned().unwrap_or(Value::Null);
        for list in ["containerStatuses", "initContainerStatuses"] {
            if let Some(items) = v.get_mut(list).and_then(Value::as_array_mut) {
                for s in items {
                    if let Some(m) = s.as_object_mut() {
                        m.remove("containerID");
                        m.remove("imageID");
                    }
                }
            }
        }
        if let Some(conds) = v.get_mut("conditions").and_then(Value::as_array_mut) {
            for c in conds {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    strip(a) == strip(b)
}

/// Starts a pod: Running and Ready, or Succeeded for run-to-completion pods.
fn start(txn: &mut Txn<'_>, pod: &Value, node: &str) {
    let pods_gr = gr("", "pods");
    let now = object::now();
    let completes = object::str_at(pod, "/spec/restartPolicy") != "Always"
        && !object::str_at(pod, "/spec/restartPolicy").is_empty();
    let mut events: Vec<(String, &str, String, String)> = Vec::new();
    let mut init_statuses = Vec::new();
    let mut statuses = Vec::new();
    for (is_init, c) in containers(pod) {
        let name = object::str_at(&c, "/name").to_string();
        let image = object::str_at(&c, "/image").to_string();
        let policy = object::str_at(&c, "/imagePullPolicy");
        if is_local(&image, policy) || policy == "IfNotPresent" {
            events.push((
                name.clone(),
                "Normal",
                "Pulled".into(),
                format!("Container image \"{image}\" already present on machine"),
            ));
        } else {
            events.push((
                name.clone(),
                "Normal",
                "Pulling".into(),
                format!("Pulling image \"{image}\""),
            ));
            events.push((name.clone(), "Normal", "Pulled".into(), format!("Successfully pulled image \"{image}\" in 0s (0s including waiting). Image size: 0 bytes. (kube-sim pulls nothing)")));
        }
        events.push((
            name.clone(),
            "Normal",
            "Created".into(),
            format!("Created container: {name}"),
        ));
        events.push((
            name.clone(),
            "Normal",
            "Started".into(),
            format!("Started container {name}"),
        ));
        let terminated = json!({"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": now, "finishedAt": now,
            "containerID": format!("containerd://{}", uuid::Uuid::new_v4().simple())}});
        if is_init {
            init_statuses.push(base_status(&c, terminated, true, false));
        } else if completes {
            statuses.push(base_status(&c, terminated, false, false));
        } else {
            statuses.push(base_status(
                &c,
                json!({"running": {"startedAt": now}}),
                true,
                true,
            ));
        }
    }
    let mut updated = pod.clone();
    let status = object::ensure_object(&mut updated, &["status"]);
    status.insert(
        "phase".into(),
        json!(if completes { "Succeeded" } else { "Running" }),
    );
    status.insert("containerStatuses".into(), json!(statuses));
    if !init_statuses.is_empty() {
        status.insert("initContainerStatuses".into(), json!(init_statuses));
    }
    let cond = |ty: &str, st: &str, reason: Option<&str>| {
        let mut c =
            json!({"type": ty, "status": st, "lastProbeTime": null, "lastTransitionTime": now});
        if let Some(r) = reason {
            c["reason"] = json!(r);
        }
        c
    };
    object::set_condition(
        &mut updated,
        cond(
            "PodReadyToStartContainers",
            if completes { "False" } else { "True" },
            None,
        ),
    );
    object::set_condition(&mut updated, cond("Initialized", "True", None));
    let (st, reason) = if completes {
        ("False", Some("PodCompleted"))
    } else {
        ("True", None)
    };
    object::set_condition(&mut updated, cond("ContainersReady", st, reason));
    object::set_condition(&mut updated, cond("Ready", st, reason));
    // Conditions may carry stale messages from waiting; drop them on change.
    if let Some(conds) = updated
        .pointer_mut("/status/conditions")
        .and_then(Value::as_array_mut)
    {
        for c in conds {
            if c["status"] == "True"
                && let Some(m) = c.as_object_mut()
            {
                m.remove("message");
                m.remove("reason");
            }
        }
    }
    let Ok(written) = txn.update(&pods_gr, updated) else {
        return;
    };
    for (name, ty, reason, message) in events {
        let fp = container_field_path(pod, &name);
        record_event(
            txn,
            &written,
            ty,
            &reason,
            &message,
            Source::kubelet(node, Some(&fp)),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_references_normalise() {
        assert_eq!(
            normalize_image("busybox"),
            "docker.io/library/busybox:latest"
        );
        assert_eq!(normalize_image("busybox:1"), "docker.io/library/busybox:1");
        assert_eq!(
            normalize_image("docker.io/library/busybox:1"),
            "docker.io/library/busybox:1"
        );
        assert_eq!(
            normalize_image("index.docker.io/library/busybox:1"),
            "docker.io/library/busybox:1"
        );
        assert_eq!(
            normalize_image("bitnami/redis:7"),
            "docker.io/bitnami/redis:7"
        );
        assert_eq!(
            normalize_image("localhost/kubernaut/ds:abc"),
            "localhost/kubernaut/ds:abc"
        );
        assert_eq!(
            normalize_image("localhost/kubernaut/ds"),
            "localhost/kubernaut/ds:latest"
        );
        assert_eq!(
            normalize_image("localhost:5000/x"),
            "localhost:5000/x:latest"
        );
        assert_eq!(
            normalize_image("quay.io/a/b@sha256:00"),
            "quay.io/a/b@sha256:00"
        );
    }

    #[test]
    fn local_images() {
        assert!(is_local("localhost/x:1", "IfNotPresent"));
        assert!(is_local("nginx", "Never"));
        assert!(!is_local("nginx", "IfNotPresent"));
        assert!(!is_local("localhost:5000/x", "Always"));
    }
}
