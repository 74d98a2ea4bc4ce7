//! What the API server itself adds or checks when an object is written,
//! before validation: defaults (image pull policy, Service ports, Job
//! selectors, ...), ClusterIP and NodePort allocation, the ServiceAccount and
//! namespace-lifecycle admission checks. Controllers creating pods go through
//! [`admit_pod`] too, so a missing ServiceAccount shows up as a FailedCreate
//! event the way it does in a real cluster.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::object;
use crate::resources::ResourceDef;
use crate::store::{GroupResource, Txn};
use crate::validate::FieldError;

/// Why admission refused a write.
#[derive(Debug)]
pub enum Refusal {
    /// 422 with field errors.
    Invalid(Vec<FieldError>),
    /// 403 with a message.
    Forbidden(String),
    /// 404 of the namespace.
    NamespaceNotFound(String),
}

/// The default pull policy: Always for `:latest` or untagged images, else IfNotPresent.
pub fn default_pull_policy(image: &str) -> &'static str {
    let last = image.rsplit('/').next().unwrap_or(image);
    if image.contains('@') {
        return "IfNotPresent";
    }
    match last.split_once(':') {
        Some((_, "latest")) | None => "Always",
        Some(_) => "IfNotPresent",
    }
}

fn default_containers(spec: &mut Value) {
    for field in ["initContainers", "containers"] {
        if let Some(list) = spec.get_mut(field).and_then(Value::as_array_mut) {
            for c in list {
                let Some(m) = c.as_object_mut() else { continue };
                let image = m
                    .get("image")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string();
                m.entry("imagePullPolicy")
                    .or_insert_with(|| json!(default_pull_policy(&image)));
                m.entry("terminationMessagePath")
                    .or_insert_with(|| json!("/dev/termination-log"));
                m.entry("terminationMessagePolicy")
                    .or_insert_with(|| json!("File"));
                m.entry("resources").or_insert_with(|| json!({}));
                if let Some(ports) = m.get_mut("ports").and_then(Value::as_array_mut) {
                    for p in ports {
                        if let Some(pm) = p.as_object_mut() {
                            pm.entry("protocol").or_insert_with(|| json!("TCP"));
                        }
                    }
                }
            }
        }
    }
}

/// Pod spec defaults, for pods and pod templates.
pub fn default_pod_spec(spec: &mut Value) {
    if !spec.is_object() {
        return;
    }
    default_containers(spec);
    let m = spec.as_object_mut().expect("object");
    m.entry("restartPolicy").or_insert_with(|| json!("Always"));
    m.entry("dnsPolicy")
        .or_insert_with(|| json!("ClusterFirst"));
    m.entry("schedulerName")
        .or_insert_with(|| json!("default-scheduler"));
    m.entry("terminationGracePeriodSeconds")
        .or_insert_with(|| json!(30));
    m.entry("securityContext").or_insert_with(|| json!({}));
    if let Some(sa) = m.get("serviceAccount").cloned()
        && !m.contains_key("serviceAccountName")
    {
        m.insert("serviceAccountName".into(), sa);
    }
}

/// Defaults by kind; `old` is the stored object on update.
pub fn apply_defaults(def: &ResourceDef, obj: &mut Value, old: Option<&Value>) {
    if def.crd.is_some() {
        return;
    }
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Namespace") => {
            let name = object::name(obj).to_string();
            object::ensure_object(obj, &["metadata", "labels"])
                .insert("kubernetes.io/metadata.name".into(), json!(name));
            let spec = object::ensure_object(obj, &["spec"]);
            spec.entry("finalizers")
                .or_insert_with(|| json!(["kubernetes"]));
        }
        ("", "Pod") => {
            if let Some(spec) = obj.get_mut("spec") {
                default_pod_spec(spec);
                if let Some(m) = spec.as_object_mut() {
                    m.entry("serviceAccountName")
                        .or_insert_with(|| json!("default"));
                    m.entry("enableServiceLinks").or_insert_with(|| json!(true));
                }
            }
        }
        ("apps", kind) => {
            if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
                default_pod_spec(spec);
            }
            let spec = object::ensure_object(obj, &["spec"]);
            if kind != "DaemonSet" {
                spec.entry("replicas").or_insert_with(|| json!(1));
            }
            spec.entry("revisionHistoryLimit")
                .or_insert_with(|| json!(10));
            match kind {
                "Deployment" => {
                    spec.entry("progressDeadlineSeconds")
                        .or_insert_with(|| json!(600));
                    spec.entry("strategy").or_insert_with(|| {
                        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}})
                    });
                }
                "StatefulSet" => {
                    spec.entry("podManagementPolicy")
                        .or_insert_with(|| json!("OrderedReady"));
                    spec.entry("updateStrategy").or_insert_with(
                        || json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 0}}),
                    );
                }
                "DaemonSet" => {
                    spec.entry("updateStrategy").or_insert_with(|| {
                        json!({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 0, "maxUnavailable": 1}})
                    });
                }
                _ => {}
            }
        }
        ("batch", "Job") => default_job(obj, old),
        ("batch", "CronJob") => {
            if let Some(spec) = obj.pointer_mut("/spec/jobTemplate/spec/template/spec") {
                default_pod_spec(spec);
            }
            let spec = object::ensure_object(obj, &["spec"]);
            spec.entry("concurrencyPolicy")
                .or_insert_with(|| json!("Allow"));
            spec.entry("suspend").or_insert_with(|| json!(false));
        }
        ("", "Service") => default_service(obj, old),
        ("", "Secret") => {
            if let Some(m) = obj.as_object_mut() {
                if m.get("type")
                    .and_then(Value::as_str)
                    .is_none_or(str::is_empty)
                {
                    m.insert("type".into(), json!("Opaque"));
                }
                // stringData is write-only: merged into data, base64-encoded.
                if let Some(Value::Object(sd)) = m.remove("stringData") {
                    let data = m.entry("data").or_insert_with(|| json!({}));
                    if let Some(d) = data.as_object_mut() {
                        for (k, v) in sd {
                            let raw = v.as_str().unwrap_or("").as_bytes().to_vec();
                            let encoded = serde_json::to_value(k8s_openapi::ByteString(raw))
                                .unwrap_or(Value::Null);
                            d.insert(k, encoded);
                        }
                    }
                }
            }
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            let meta = object::ensure_object(obj, &["metadata"]);
            let fin = meta.entry("finalizers").or_insert_with(|| json!([]));
            if let Some(list) = fin.as_array_mut()
                && !list
                    .iter()
                    .any(|f| f == "customresourcecleanup.apiextensions.k8s.io")
                && old.is_none()
            {
                list.push(json!("customresourcecleanup.apiextensions.k8s.io"));
            }
            let kind = object::str_at(obj, "/spec/names/kind").to_string();
            let names = object::ensure_object(obj, &["spec", "names"]);
            names
                .entry("singular")
                .or_insert_with(|| json!(kind.to_lowercase()));
            names
                .entry("listKind")
                .or_insert_with(|| json!(format!("{kind}List")));
        }
        _ => {}
    }
}

fn default_job(obj: &mut Value, old: Option<&Value>) {
    if let Some(spec) = obj.pointer_mut("/spec/template/spec") {
        default_pod_spec(spec);
    }
    let manual = obj.pointer("/spec/manualSelector").and_then(Value::as_bool) == Some(true);
    let uid = old
        .map(|o| object::uid(o).to_string())
        .or_else(|| Some(object::uid(obj).to_string()).filter(|u| !u.is_empty()))
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let name = object::name(obj).to_string();
    {
        let spec = object::ensure_object(obj, &["spec"]);
        spec.entry("parallelism").or_insert_with(|| json!(1));
        spec.entry("completions").or_insert_with(|| json!(1));
        spec.entry("backoffLimit").or_insert_with(|| json!(6));
        spec.entry("completionMode")
            .or_insert_with(|| json!("NonIndexed"));
        spec.entry("suspend").or_insert_with(|| json!(false));
    }
    if manual {
        return;
    }
    if let Some(old_sel) = old.and_then(|o| o.pointer("/spec/selector")) {
        if obj.pointer("/spec/selector").is_none() {
            object::ensure_object(obj, &["spec"]).insert("selector".into(), old_sel.clone());
        }
    } else if obj.pointer("/spec/selector").is_none() {
        object::ensure_object(obj, &["spec"]).insert(
            "selector".into(),
            json!({"matchLabels": {"batch.kubernetes.io/controller-uid": uid}}),
        );
        // The uid the selector names must be the Job's: remembered for the store.
        object::ensure_object(obj, &["metadata"]).insert("uid".into(), json!(uid));
    }
    let uid = object::str_at(
        obj,
        "/spec/selector/matchLabels/batch.kubernetes.io~1controller-uid",
    )
    .to_string();
    let labels = object::ensure_object(obj, &["spec", "template", "metadata", "labels"]);
    for (k, v) in [
        ("batch.kubernetes.io/controller-uid", uid.as_str()),
        ("controller-uid", uid.as_str()),
        ("batch.kubernetes.io/job-name", name.as_str()),
        ("job-name", name.as_str()),
    ] {
        labels.entry(k).or_insert_with(|| json!(v));
    }
}

fn default_service(obj: &mut Value, old: Option<&Value>) {
    let spec = object::ensure_object(obj, &["spec"]);
    spec.entry("type").or_insert_with(|| json!("ClusterIP"));
    spec.entry("sessionAffinity")
        .or_insert_with(|| json!("None"));
    if spec.get("type").and_then(Value::as_str) != Some("ExternalName") {
        spec.entry("ipFamilies").or_insert_with(|| json!(["IPv4"]));
        spec.entry("ipFamilyPolicy")
            .or_insert_with(|| json!("SingleStack"));
        spec.entry("internalTrafficPolicy")
            .or_insert_with(|| json!("Cluster"));
    }
    if let Some(ports) = spec.get_mut("ports").and_then(Value::as_array_mut) {
        for (i, p) in ports.iter_mut().enumerate() {
            let Some(m) = p.as_object_mut() else { continue };
            m.entry("protocol").or_insert_with(|| json!("TCP"));
            if let Some(port) = m.get("port").cloned() {
                m.entry("targetPort").or_insert(port);
            }
            // Keep a NodePort the old object had for the same port.
            if !m.contains_key("nodePort")
                && let Some(old_port) =
                    old.map(|o| object::array_at(o, "/spec/ports"))
                        .and_then(|ps| {
                            ps.iter()
                                .find(|op| op.get("port") == m.get("port"))
                                .or(ps.get(i))
                        })
                && let Some(np) = old_port.get("nodePort")
            {
                m.insert("nodePort".into(), np.clone());
            }
        }
    }
    if let Some(old) = old
        && !spec.contains_key("clusterIP")
        && let Some(ip) = old.pointer("/spec/clusterIP")
    {
        spec.insert("clusterIP".into(), ip.clone());
    }
}

/// Allocates the ClusterIP and NodePorts of a Service (after validation).
pub fn allocate_service(
    txn: &Txn<'_>,
    obj: &mut Value,
    old: Option<&Value>,
) -> Result<(), Refusal> {
    let gr = GroupResource::new("", "services");
    let me = (
        object::namespace(obj).to_string(),
        object::name(obj).to_string(),
    );
    let others = || {
        txn.list(&gr)
            .filter(|s| (object::namespace(s), object::name(s)) != (me.0.as_str(), me.1.as_str()))
    };
    let ty = object::str_at(obj, "/spec/type").to_string();
    if ty == "ExternalName" {
        return Ok(());
    }
    let used_ips: HashSet<String> = others()
        .map(|s| object::str_at(s, "/spec/clusterIP").to_string())
        .collect();
    let requested = object::str_at(obj, "/spec/clusterIP").to_string();
    let ip = if requested == "None" {
        requested
    } else if !requested.is_empty() {
        let old_ip = old
            .map(|o| object::str_at(o, "/spec/clusterIP"))
            .unwrap_or("");
        if requested != old_ip {
            if !requested.starts_with("10.96.") {
                return Err(Refusal::Invalid(vec![FieldError::invalid(
                    "spec.clusterIPs",
                    json!([requested]),
                    "failed to allocate IP: the provided IP is not in the valid range. The range of valid IPs is 10.96.0.0/16",
                )]));
            }
            if used_ips.contains(&requested) {
                return Err(Refusal::Invalid(vec![FieldError::invalid(
                    "spec.clusterIPs",
                    json!([requested]),
                    "failed to allocate IP: provided IP is already allocated",
                )]));
            }
        }
        requested
    } else {
        let mut n: u32 = 11;
        loop {
            let seed = uuid::Uuid::new_v4().as_u128() as u32;
            let candidate = (seed % 65000) + 11;
            let ip = format!("10.96.{}.{}", candidate / 256, candidate % 256);
            if !used_ips.contains(&ip) && !candidate.is_multiple_of(256) && candidate % 256 != 255 {
                break ip;
            }
            n += 1;
            if n > 100_000 {
                return Err(Refusal::Forbidden("no ClusterIPs left".into()));
            }
        }
    };
    let spec = object::ensure_object(obj, &["spec"]);
    spec.insert("clusterIP".into(), json!(ip));
    spec.insert("clusterIPs".into(), json!([ip]));

    if ty != "NodePort" && ty != "LoadBalancer" {
        return Ok(());
    }
    let mut used_ports: HashSet<i64> = others()
        .flat_map(|s| object::array_at(s, "/spec/ports").to_vec())
        .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
        .collect();
    let mut errors = Vec::new();
    let old_ports: HashSet<i64> = old
        .map(|o| {
            object::array_at(o, "/spec/ports")
                .iter()
                .filter_map(|p| p.get("nodePort").and_then(Value::as_i64))
                .collect()
        })
        .unwrap_or_default();
    if let Some(ports) = obj.pointer_mut("/spec/ports").and_then(Value::as_array_mut) {
        // Requested ports first, so an automatic pick cannot take one.
        for (i, p) in ports.iter().enumerate() {
            if let Some(np) = p.get("nodePort").and_then(Value::as_i64) {
                if used_ports.contains(&np) && !old_ports.contains(&np) {
                    errors.push(FieldError::invalid(
                        format!("spec.ports[{i}].nodePort"),
                        json!(np),
                        "provided port is already allocated",
                    ));
                }
                used_ports.insert(np);
            }
        }
        for p in ports.iter_mut() {
            if p.get("nodePort").and_then(Value::as_i64).is_none() {
                let mut candidate = 30000 + (uuid::Uuid::new_v4().as_u128() % 2768) as i64;
                while used_ports.contains(&candidate) {
                    candidate = if candidate >= 32767 {
                        30000
                    } else {
                        candidate + 1
                    };
                }
                used_ports.insert(candidate);
                p["nodePort"] = json!(candidate);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Refusal::Invalid(errors))
    }
}

/// The namespace-lifecycle check for creating something in `namespace`.
pub fn check_namespace(txn: &Txn<'_>, namespace: &str, what: &str) -> Result<(), Refusal> {
    match txn.get(&GroupResource::new("", "namespaces"), "", namespace) {
        None => Err(Refusal::NamespaceNotFound(namespace.to_string())),
        Some(ns) if object::is_deleting(ns) => Err(Refusal::Forbidden(format!(
            "{what} is forbidden: unable to create new content in namespace {namespace} because it is being terminated"
        ))),
        Some(_) => Ok(()),
    }
}

/// The ServiceAccount admission check for a new pod.
pub fn admit_pod(txn: &Txn<'_>, pod: &Value) -> Result<(), Refusal> {
    let ns = object::namespace(pod);
    let sa = match object::str_at(pod, "/spec/serviceAccountName") {
        "" => "default",
        s => s,
    };
    if txn
        .get(&GroupResource::new("", "serviceaccounts"), ns, sa)
        .is_none()
    {
        return Err(Refusal::Forbidden(format!(
            "pods \"{}\" is forbidden: error looking up service account {ns}/{sa}: serviceaccount \"{sa}\" not found",
            object::name(pod)
        )));
    }
    Ok(())
}

/// Status a freshly created object starts with, for kinds with a status subresource.
pub fn initial_status(def: &ResourceDef) -> Option<Value> {
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => Some(json!({"phase": "Pending", "qosClass": "BestEffort"})),
        ("", "Namespace") => Some(json!({"phase": "Active"})),
        ("", "Service") => Some(json!({"loadBalancer": {}})),
        ("", "PersistentVolumeClaim") => Some(json!({"phase": "Pending"})),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pull_policy_defaults() {
        assert_eq!(default_pull_policy("nginx"), "Always");
        assert_eq!(default_pull_policy("nginx:latest"), "Always");
        assert_eq!(default_pull_policy("nginx:1.27"), "IfNotPresent");
        assert_eq!(default_pull_policy("localhost:5000/app"), "Always");
        assert_eq!(default_pull_policy("localhost:5000/app:v1"), "IfNotPresent");
        assert_eq!(default_pull_policy("x@sha256:abc"), "IfNotPresent");
    }

    #[test]
    fn job_gets_a_selector_and_template_labels() {
        let def = crate::resources::builtin("batch", "Job").unwrap();
        let mut job = json!({"metadata": {"name": "migrate"},
                             "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"name": "m", "image": "m:1"}]}}}});
        apply_defaults(&def, &mut job, None);
        let uid = object::uid(&job).to_string();
        assert!(!uid.is_empty());
        assert_eq!(
            job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"],
            json!(uid)
        );
        assert_eq!(
            job["spec"]["template"]["metadata"]["labels"]["job-name"],
            "migrate"
        );
        assert_eq!(
            job["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"],
            "IfNotPresent"
        );
    }
}
