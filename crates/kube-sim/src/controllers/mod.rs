//! The simulated control plane: what kube-controller-manager does, run as
//! level-triggered passes over the whole store. A pass runs after every
//! change and at least every `kubelet_interval`; each controller writes only
//! when something differs, so passes settle.
//!
//! Also the cluster's initial state ([`seed`]) and helpers the controllers
//! share: pod creation through admission, and Events.

pub mod crd;
pub mod daemonset;
pub mod deployment;
pub mod gc;
pub mod job;
pub mod namespace;
pub mod service;
pub mod statefulset;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::{Value, json};

use crate::admission::{self, Refusal};
use crate::object;
use crate::store::{GroupResource, Txn};
use crate::{KUBE_VERSION, Sim};

pub fn gr(group: &str, resource: &str) -> GroupResource {
    GroupResource::new(group, resource)
}

/// State controllers keep between passes (not in the store).
#[derive(Default)]
pub struct Local {
    /// When each terminating namespace was first seen terminating.
    pub terminating_since: HashMap<String, Instant>,
}

/// Runs the controllers until shutdown.
pub async fn run(sim: Arc<Sim>) {
    let mut changes = sim.store.subscribe();
    let mut shutdown = sim.shutdown.clone();
    let mut local = Local::default();
    loop {
        changes.borrow_and_update();
        pass(&sim, &mut local);
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep(sim.kubelet_interval) => {}
            _ = crate::wait_shutdown(&mut shutdown) => return,
        }
    }
}

/// One pass of every controller.
pub fn pass(sim: &Sim, local: &mut Local) {
    crd::reconcile(sim);
    namespace::reconcile(sim, local);
    gc::reconcile(sim);
    deployment::reconcile(sim);
    deployment::reconcile_replicasets(sim);
    statefulset::reconcile(sim);
    daemonset::reconcile(sim);
    job::reconcile(sim);
    service::reconcile(sim);
}

static EVENT_SEQ: AtomicU64 = AtomicU64::new(0);

/// Who reports an Event: a controller, or the kubelet of a node (about a container).
pub struct Source<'a> {
    component: &'a str,
    host: Option<&'a str>,
    field_path: Option<&'a str>,
}

impl<'a> Source<'a> {
    pub fn controller(component: &'a str) -> Self {
        Self {
            component,
            host: None,
            field_path: None,
        }
    }

    pub fn kubelet(node: &'a str, field_path: Option<&'a str>) -> Self {
        Self {
            component: "kubelet",
            host: Some(node),
            field_path,
        }
    }
}

/// Records a core/v1 Event about `involved`. A repeat of the same reason and
/// message bumps the count instead.
pub fn record_event(
    txn: &mut Txn<'_>,
    involved: &Value,
    ty: &str,
    reason: &str,
    message: &str,
    source: Source<'_>,
) {
    let Source {
        component,
        host,
        field_path,
    } = source;
    let events = gr("", "events");
    let ns = match object::namespace(involved) {
        "" => "default",
        ns => ns,
    }
    .to_string();
    let uid = object::uid(involved).to_string();
    let now = object::now();
    let existing = txn
        .list_in(&events, &ns)
        .find(|e| {
            object::str_at(e, "/involvedObject/uid") == uid
                && object::str_at(e, "/reason") == reason
                && object::str_at(e, "/message") == message
        })
        .cloned();
    if let Some(mut e) = existing {
        e["count"] = json!(object::i64_at(&e, "/count").unwrap_or(1) + 1);
        e["lastTimestamp"] = json!(now);
        let _ = txn.update(&events, e);
        return;
    }
    let seq = EVENT_SEQ.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut involved_ref = json!({
        "apiVersion": object::str_at(involved, "/apiVersion"),
        "kind": object::str_at(involved, "/kind"),
        "name": object::name(involved),
        "uid": uid,
        "resourceVersion": object::resource_version(involved),
    });
    if !object::namespace(involved).is_empty() {
        involved_ref["namespace"] = json!(object::namespace(involved));
    }
    if let Some(fp) = field_path {
        involved_ref["fieldPath"] = json!(fp);
    }
    let mut source = json!({"component": component});
    if let Some(h) = host {
        source["host"] = json!(h);
    }
    let event = json!({
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"name": format!("{}.{:x}", object::name(involved), nanos.wrapping_add(seq)), "namespace": ns},
        "involvedObject": involved_ref,
        "reason": reason,
        "message": message,
        "source": source,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "type": ty,
        "eventTime": null,
        "reportingComponent": component,
        "reportingInstance": host.unwrap_or(""),
    });
    let _ = txn.create(&events, event);
}

/// Creates a pod from `template` for `owner`, through the same admission a
/// client's pod would meet. On refusal, records FailedCreate on the owner
/// (as the real controllers do) and returns None.
pub fn create_pod(
    txn: &mut Txn<'_>,
    owner: &Value,
    template: &Value,
    name: &str,
    extra_labels: &[(&str, String)],
    spec_overrides: &[(&str, Value)],
    component: &str,
) -> Option<Value> {
    let ns = object::namespace(owner).to_string();
    let mut labels = template
        .pointer("/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    for (k, v) in extra_labels {
        labels[*k] = json!(v);
    }
    let mut spec = template.get("spec").cloned().unwrap_or(json!({}));
    for (k, v) in spec_overrides {
        spec[*k] = v.clone();
    }
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": labels,
            "ownerReferences": [object::controller_ref(owner)],
        },
        "spec": spec,
        "status": {"phase": "Pending", "qosClass": "BestEffort"},
    });
    if let Some(ann) = template.pointer("/metadata/annotations") {
        pod["metadata"]["annotations"] = ann.clone();
    }
    let pods_def = crate::resources::builtin("", "Pod")?;
    admission::apply_defaults(&pods_def, &mut pod, None);
    let refused = admission::check_namespace(txn, &ns, &format!("pods \"{name}\""))
        .and_then(|_| admission::admit_pod(txn, &pod));
    if let Err(r) = refused {
        let msg = match r {
            Refusal::Forbidden(m) => m,
            Refusal::NamespaceNotFound(ns) => format!("namespaces \"{ns}\" not found"),
            Refusal::Invalid(errs) => errs
                .iter()
                .map(|e| e.message())
                .collect::<Vec<_>>()
                .join(", "),
        };
        if !object::is_deleting(owner) {
            record_event(
                txn,
                owner,
                "Warning",
                "FailedCreate",
                &format!("Error creating: {msg}"),
                Source::controller(component),
            );
        }
        return None;
    }
    let created = txn.create(&gr("", "pods"), pod).ok()?;
    Some(created)
}

/// Pods in `ns` controlled by `owner_uid`, not being deleted.
pub fn owned_pods(txn: &Txn<'_>, ns: &str, owner_uid: &str) -> Vec<Value> {
    txn.list_in(&gr("", "pods"), ns)
        .filter(|p| object::is_controlled_by(p, owner_uid) && !object::is_deleting(p))
        .cloned()
        .collect()
}

pub fn pod_ready(pod: &Value) -> bool {
    object::condition_true(pod, "Ready")
}

/// Writes `obj` if it differs from `before`.
pub fn write_if_changed(
    txn: &mut Txn<'_>,
    gr: &GroupResource,
    before: &Value,
    obj: Value,
) -> Option<Value> {
    if *before == obj {
        return None;
    }
    txn.update(gr, obj).ok()
}

/// Node labels the way kind sets them.
fn node_labels(node: &crate::SimNode) -> Value {
    let mut labels = json!({
        "beta.kubernetes.io/arch": "amd64",
        "beta.kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": node.name,
        "kubernetes.io/os": "linux",
    });
    if node.role == "control-plane" {
        labels["node-role.kubernetes.io/control-plane"] = json!("");
        labels["node.kubernetes.io/exclude-from-external-load-balancers"] = json!("");
    }
    labels
}

/// The node's internal IP (kind's docker network style).
pub fn node_ip(index: usize) -> String {
    format!("172.18.0.{}", index + 2)
}

/// Creates the objects a fresh kind cluster has: namespaces, nodes, the
/// `kubernetes` Service and its Endpoints.
pub fn seed(sim: &Sim) {
    let has_workers = sim.nodes.iter().any(|n| n.role == "worker");
    sim.store.transact(|txn| {
        for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
            let obj = json!({
                "apiVersion": "v1", "kind": "Namespace",
                "metadata": {"name": ns, "labels": {"kubernetes.io/metadata.name": ns}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            let _ = txn.create(&gr("", "namespaces"), obj);
            namespace::populate(txn, ns);
        }
        let now = object::now();
        for (i, n) in sim.nodes.iter().enumerate() {
            let mut spec = json!({
                "podCIDR": format!("10.244.{i}.0/24"),
                "podCIDRs": [format!("10.244.{i}.0/24")],
                "providerID": format!("kube-sim://{}", n.name),
            });
            if n.role == "control-plane" && has_workers {
                spec["taints"] = json!([{"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}]);
            }
            let cond = |ty: &str, status: &str, reason: &str, msg: &str| {
                json!({"type": ty, "status": status, "reason": reason, "message": msg,
                       "lastHeartbeatTime": now, "lastTransitionTime": now})
            };
            let resources = json!({"cpu": "2", "ephemeral-storage": "100Gi", "memory": "8Gi", "pods": "110"});
            let node = json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": n.name, "labels": node_labels(n),
                             "annotations": {"kube-sim.dev/note": "simulated node: no container runs here"}},
                "spec": spec,
                "status": {
                    "conditions": [
                        cond("MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                        cond("DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                        cond("PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
                        cond("Ready", "True", "KubeletReady", "kubelet is posting ready status"),
                    ],
                    "addresses": [{"type": "InternalIP", "address": node_ip(i)}, {"type": "Hostname", "address": n.name}],
                    "capacity": resources,
                    "allocatable": resources,
                    "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
                    "nodeInfo": {
                        "architecture": "amd64",
                        "bootID": uuid::Uuid::new_v4().to_string(),
                        "containerRuntimeVersion": "containerd://kube-sim",
                        "kernelVersion": "kube-sim",
                        "kubeProxyVersion": KUBE_VERSION,
                        "kubeletVersion": KUBE_VERSION,
                        "machineID": uuid::Uuid::new_v4().simple().to_string(),
                        "operatingSystem": "linux",
                        "osImage": "kube-sim (simulated node, runs no containers)",
                        "systemUUID": uuid::Uuid::new_v4().to_string(),
                    },
                },
            });
            let _ = txn.create(&gr("", "nodes"), node);
        }
        let svc = json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"component": "apiserver", "provider": "kubernetes"}},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.1", "clusterIPs": ["10.96.0.1"],
                     "ports": [{"name": "https", "port": 443, "protocol": "TCP", "targetPort": 6443}],
                     "sessionAffinity": "None", "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
                     "internalTrafficPolicy": "Cluster"},
            "status": {"loadBalancer": {}},
        });
        let _ = txn.create(&gr("", "services"), svc);
        let ep = json!({
            "apiVersion": "v1", "kind": "Endpoints",
            "metadata": {"name": "kubernetes", "namespace": "default",
                         "labels": {"endpointslice.kubernetes.io/skip-mirror": "true"}},
            "subsets": [{"addresses": [{"ip": node_ip(0)}], "ports": [{"name": "https", "port": 6443, "protocol": "TCP"}]}],
        });
        let _ = txn.create(&gr("", "endpoints"), ep);
    });
}
