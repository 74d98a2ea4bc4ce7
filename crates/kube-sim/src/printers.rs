//! Server-side printing: the `meta.k8s.io/v1` Table that `kubectl get` asks
//! for (`Accept: application/json;as=Table;...`), with the columns kubectl
//! users know for the common kinds and a CRD's additionalPrinterColumns.

use serde_json::{Value, json};

use crate::object::{self, age, array_at, i64_at, str_at};
use crate::resources::ResourceDef;

/// What each row carries besides its cells (`includeObject`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IncludeObject {
    None,
    Metadata,
    Object,
}

impl IncludeObject {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("None") => IncludeObject::None,
            Some("Object") => IncludeObject::Object,
            _ => IncludeObject::Metadata,
        }
    }
}

fn col(name: &str, ty: &str, priority: i64) -> Value {
    let format = if name == "Name" { "name" } else { "" };
    json!({"name": name, "type": ty, "format": format, "description": "", "priority": priority})
}

fn none_if_empty(s: String) -> String {
    if s.is_empty() { "<none>".into() } else { s }
}

/// Column definitions and cell function for a resource.
fn columns(def: &ResourceDef, version: &str) -> Vec<Value> {
    let s = |n: &str| col(n, "string", 0);
    let i = |n: &str| col(n, "integer", 0);
    let w = |n: &str| col(n, "string", 1);
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => vec![
            s("Name"),
            s("Ready"),
            s("Status"),
            s("Restarts"),
            s("Age"),
            w("IP"),
            w("Node"),
            w("Nominated Node"),
            w("Readiness Gates"),
        ],
        ("", "Node") => vec![
            s("Name"),
            s("Status"),
            s("Roles"),
            s("Age"),
            s("Version"),
            w("Internal-IP"),
            w("External-IP"),
            w("OS-Image"),
            w("Kernel-Version"),
            w("Container-Runtime"),
        ],
        ("apps", "Deployment") => vec![
            s("Name"),
            s("Ready"),
            i("Up-to-date"),
            i("Available"),
            s("Age"),
            w("Containers"),
            w("Images"),
            w("Selector"),
        ],
        ("apps", "ReplicaSet") => vec![
            s("Name"),
            i("Desired"),
            i("Current"),
            i("Ready"),
            s("Age"),
            w("Containers"),
            w("Images"),
            w("Selector"),
        ],
        ("apps", "StatefulSet") => vec![
            s("Name"),
            s("Ready"),
            s("Age"),
            w("Containers"),
            w("Images"),
        ],
        ("apps", "DaemonSet") => vec![
            s("Name"),
            i("Desired"),
            i("Current"),
            i("Ready"),
            i("Up-to-date"),
            i("Available"),
            s("Node Selector"),
            s("Age"),
        ],
        ("batch", "Job") => vec![
            s("Name"),
            s("Status"),
            s("Completions"),
            s("Duration"),
            s("Age"),
        ],
        ("", "Service") => vec![
            s("Name"),
            s("Type"),
            s("Cluster-IP"),
            s("External-IP"),
            s("Port(s)"),
            s("Age"),
            w("Selector"),
        ],
        ("", "Endpoints") => vec![s("Name"), s("Endpoints"), s("Age")],
        ("", "Namespace") => vec![s("Name"), s("Status"), s("Age")],
        ("", "ConfigMap") => vec![s("Name"), i("Data"), s("Age")],
        ("", "Secret") => vec![s("Name"), s("Type"), i("Data"), s("Age")],
        ("", "ServiceAccount") => vec![s("Name"), i("Secrets"), s("Age")],
        ("", "Event") => vec![
            s("Last Seen"),
            s("Type"),
            s("Reason"),
            s("Object"),
            s("Message"),
        ],
        ("", "PersistentVolumeClaim") => vec![
            s("Name"),
            s("Status"),
            s("Volume"),
            s("Capacity"),
            s("Access Modes"),
            s("StorageClass"),
            s("Age"),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => vec![s("Name"), s("Created At")],
        _ => {
            let mut cols = vec![s("Name")];
            for c in crd_columns(def, version) {
                let ty = match str_at(c, "/type") {
                    "integer" | "number" | "boolean" => str_at(c, "/type"),
                    _ => "string",
                };
                cols.push(col(
                    str_at(c, "/name"),
                    ty,
                    i64_at(c, "/priority").unwrap_or(0),
                ));
            }
            if !crd_columns(def, version)
                .iter()
                .any(|c| str_at(c, "/name") == "Age")
            {
                cols.push(s("Age"));
            }
            cols
        }
    }
}

fn crd_columns<'a>(def: &'a ResourceDef, version: &str) -> &'a [Value] {
    def.crd
        .as_ref()
        .and_then(|c| c.printer_columns.iter().find(|(v, _)| v == version))
        .map(|(_, c)| c.as_slice())
        .unwrap_or(&[])
}

/// Evaluates the JSONPath subset printer columns use: `.a.b`, `.a[0].b`, and
/// `.a[?(@.type=="X")].b`.
pub fn json_path(obj: &Value, path: &str) -> Option<Value> {
    let mut cur = obj.clone();
    let mut rest = path
        .trim()
        .trim_start_matches('{')
        .trim_end_matches('}')
        .trim_start_matches('.');
    while !rest.is_empty() {
        let (seg, tail) = match rest.find(['.', '[']) {
            Some(0) if rest.starts_with('[') => {
                let end = rest.find(']')?;
                let inner = &rest[1..end];
                if let Some(filter) = inner.strip_prefix("?(@.").and_then(|f| f.strip_suffix(')')) {
                    let (k, v) = filter.split_once("==")?;
                    let v = v.trim().trim_matches(|c| c == '"' || c == '\'');
                    cur = cur
                        .as_array()?
                        .iter()
                        .find(|i| i.get(k.trim()).and_then(Value::as_str) == Some(v))?
                        .clone();
                } else {
                    let idx: usize = inner.parse().ok()?;
                    cur = cur.get(idx)?.clone();
                }
                rest = rest[end + 1..].trim_start_matches('.');
                continue;
            }
            Some(i) => (&rest[..i], rest[i..].trim_start_matches('.')),
            None => (rest, ""),
        };
        cur = cur.get(seg)?.clone();
        rest = tail;
    }
    Some(cur)
}

fn pod_status(pod: &Value) -> (String, i64, i64, i64) {
    let mut reason = str_at(pod, "/status/phase").to_string();
    if !str_at(pod, "/status/reason").is_empty() {
        reason = str_at(pod, "/status/reason").to_string();
    }
    let containers = array_at(pod, "/spec/containers").len() as i64;
    let mut ready = 0;
    let mut restarts = 0;
    let mut init_blocking = false;
    for (i, c) in array_at(pod, "/status/initContainerStatuses")
        .iter()
        .enumerate()
    {
        restarts += i64_at(c, "/restartCount").unwrap_or(0);
        let waiting = str_at(c, "/state/waiting/reason");
        let terminated_ok = str_at(c, "/state/terminated/reason") == "Completed";
        if terminated_ok {
            continue;
        }
        init_blocking = true;
        reason = if !waiting.is_empty() && waiting != "PodInitializing" {
            format!("Init:{waiting}")
        } else {
            format!("Init:{i}/{}", array_at(pod, "/spec/initContainers").len())
        };
        break;
    }
    if !init_blocking {
        for c in array_at(pod, "/status/containerStatuses") {
            restarts += i64_at(c, "/restartCount").unwrap_or(0);
            let waiting = str_at(c, "/state/waiting/reason");
            let terminated = str_at(c, "/state/terminated/reason");
            if !waiting.is_empty() {
                reason = waiting.to_string();
            } else if !terminated.is_empty() {
                reason = terminated.to_string();
            } else if c.get("ready").and_then(Value::as_bool) == Some(true) {
                ready += 1;
            }
        }
    }
    if object::is_deleting(pod) {
        reason = "Terminating".into();
    }
    (reason, ready, containers, restarts)
}

fn node_roles(node: &Value) -> String {
    let mut roles: Vec<String> = object::labels(node)
        .into_iter()
        .filter_map(|(k, _)| {
            k.strip_prefix("node-role.kubernetes.io/")
                .map(str::to_string)
        })
        .collect();
    roles.sort();
    none_if_empty(roles.join(","))
}

fn service_ports(svc: &Value) -> String {
    let ports: Vec<String> = array_at(svc, "/spec/ports")
        .iter()
        .map(|p| {
            let port = i64_at(p, "/port").unwrap_or(0);
            let proto = match str_at(p, "/protocol") {
                "" => "TCP",
                x => x,
            };
            match i64_at(p, "/nodePort") {
                Some(np) => format!("{port}:{np}/{proto}"),
                None => format!("{port}/{proto}"),
            }
        })
        .collect();
    none_if_empty(ports.join(","))
}

fn selector_string(sel: Option<&Value>) -> String {
    let Some(sel) = sel else {
        return "<none>".into();
    };
    let mut parts: Vec<String> = sel
        .get("matchLabels")
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty()
        && let Some(m) = sel.as_object()
        && sel.get("matchExpressions").is_none()
    {
        parts = m
            .iter()
            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
            .collect();
    }
    none_if_empty(parts.join(","))
}

fn containers_and_images(obj: &Value, pointer: &str) -> (String, String) {
    let cs = array_at(obj, pointer);
    (
        cs.iter()
            .map(|c| str_at(c, "/name"))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| str_at(c, "/image"))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn cells(def: &ResourceDef, version: &str, o: &Value) -> Vec<Value> {
    let name = json!(object::name(o));
    let n = |p: &str| json!(i64_at(o, p).unwrap_or(0));
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => {
            let (status, ready, total, restarts) = pod_status(o);
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(status),
                json!(restarts.to_string()),
                json!(age(o)),
                json!(none_if_empty(str_at(o, "/status/podIP").to_string())),
                json!(none_if_empty(str_at(o, "/spec/nodeName").to_string())),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        ("", "Node") => {
            let mut status = if object::condition_true(o, "Ready") {
                "Ready".to_string()
            } else {
                "NotReady".to_string()
            };
            if o.pointer("/spec/unschedulable").and_then(Value::as_bool) == Some(true) {
                status.push_str(",SchedulingDisabled");
            }
            let addr = |t: &str| {
                array_at(o, "/status/addresses")
                    .iter()
                    .find(|a| str_at(a, "/type") == t)
                    .map(|a| str_at(a, "/address").to_string())
                    .unwrap_or_else(|| "<none>".into())
            };
            vec![
                name,
                json!(status),
                json!(node_roles(o)),
                json!(age(o)),
                json!(str_at(o, "/status/nodeInfo/kubeletVersion")),
                json!(addr("InternalIP")),
                json!(addr("ExternalIP")),
                json!(str_at(o, "/status/nodeInfo/osImage")),
                json!(str_at(o, "/status/nodeInfo/kernelVersion")),
                json!(str_at(o, "/status/nodeInfo/containerRuntimeVersion")),
            ]
        }
        ("apps", "Deployment") => {
            let (c, i) = containers_and_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i64_at(o, "/status/readyReplicas").unwrap_or(0),
                    i64_at(o, "/spec/replicas").unwrap_or(0)
                )),
                n("/status/updatedReplicas"),
                n("/status/availableReplicas"),
                json!(age(o)),
                json!(c),
                json!(i),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        ("apps", "ReplicaSet") => {
            let (c, i) = containers_and_images(o, "/spec/template/spec/containers");
            vec![
                name,
                n("/spec/replicas"),
                n("/status/replicas"),
                n("/status/readyReplicas"),
                json!(age(o)),
                json!(c),
                json!(i),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        ("apps", "StatefulSet") => {
            let (c, i) = containers_and_images(o, "/spec/template/spec/containers");
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    i64_at(o, "/status/readyReplicas").unwrap_or(0),
                    i64_at(o, "/spec/replicas").unwrap_or(0)
                )),
                json!(age(o)),
                json!(c),
                json!(i),
            ]
        }
        ("apps", "DaemonSet") => vec![
            name,
            n("/status/desiredNumberScheduled"),
            n("/status/currentNumberScheduled"),
            n("/status/numberReady"),
            n("/status/updatedNumberScheduled"),
            n("/status/numberAvailable"),
            json!(selector_string(
                o.pointer("/spec/template/spec/nodeSelector")
            )),
            json!(age(o)),
        ],
        ("batch", "Job") => {
            let status = if object::condition_true(o, "Complete") {
                "Complete"
            } else if object::condition_true(o, "Failed") {
                "Failed"
            } else {
                "Running"
            };
            let start = object::parse_time(str_at(o, "/status/startTime"));
            let end = object::parse_time(str_at(o, "/status/completionTime"))
                .unwrap_or_else(jiff::Timestamp::now);
            let duration = start
                .map(|s| object::human_duration(end.as_second() - s.as_second()))
                .unwrap_or_default();
            vec![
                name,
                json!(status),
                json!(format!(
                    "{}/{}",
                    i64_at(o, "/status/succeeded").unwrap_or(0),
                    i64_at(o, "/spec/completions").unwrap_or(1)
                )),
                json!(duration),
                json!(age(o)),
            ]
        }
        ("", "Service") => {
            let ty = str_at(o, "/spec/type");
            let external = match ty {
                "LoadBalancer" => {
                    let ips: Vec<&str> = array_at(o, "/status/loadBalancer/ingress")
                        .iter()
                        .map(|i| str_at(i, "/ip"))
                        .collect();
                    if ips.is_empty() {
                        "<pending>".to_string()
                    } else {
                        ips.join(",")
                    }
                }
                "ExternalName" => str_at(o, "/spec/externalName").to_string(),
                _ => "<none>".to_string(),
            };
            vec![
                name,
                json!(ty),
                json!(none_if_empty(str_at(o, "/spec/clusterIP").to_string())),
                json!(external),
                json!(service_ports(o)),
                json!(age(o)),
                json!(selector_string(o.pointer("/spec/selector"))),
            ]
        }
        ("", "Endpoints") => {
            let mut eps = Vec::new();
            for s in array_at(o, "/subsets") {
                for a in array_at(s, "/addresses") {
                    for p in array_at(s, "/ports") {
                        eps.push(format!(
                            "{}:{}",
                            str_at(a, "/ip"),
                            i64_at(p, "/port").unwrap_or(0)
                        ));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name, json!(none_if_empty(shown)), json!(age(o))]
        }
        ("", "Namespace") => vec![name, json!(str_at(o, "/status/phase")), json!(age(o))],
        ("", "ConfigMap") => {
            let count = ["data", "binaryData"]
                .iter()
                .map(|k| o.get(*k).and_then(Value::as_object).map_or(0, |m| m.len()))
                .sum::<usize>();
            vec![name, json!(count), json!(age(o))]
        }
        ("", "Secret") => vec![
            name,
            json!(str_at(o, "/type")),
            json!(
                o.get("data")
                    .and_then(Value::as_object)
                    .map_or(0, |m| m.len())
            ),
            json!(age(o)),
        ],
        ("", "ServiceAccount") => vec![name, json!(array_at(o, "/secrets").len()), json!(age(o))],
        ("", "Event") => {
            let last = match str_at(o, "/lastTimestamp") {
                "" => str_at(o, "/eventTime"),
                t => t,
            };
            let seen = object::parse_time(last)
                .map(|t| object::human_duration(jiff::Timestamp::now().as_second() - t.as_second()))
                .unwrap_or_default();
            vec![
                json!(seen),
                json!(str_at(o, "/type")),
                json!(str_at(o, "/reason")),
                json!(format!(
                    "{}/{}",
                    str_at(o, "/involvedObject/kind").to_lowercase(),
                    str_at(o, "/involvedObject/name")
                )),
                json!(str_at(o, "/message")),
            ]
        }
        ("", "PersistentVolumeClaim") => vec![
            name,
            json!(str_at(o, "/status/phase")),
            json!(str_at(o, "/spec/volumeName")),
            json!(str_at(o, "/status/capacity/storage")),
            json!(
                array_at(o, "/spec/accessModes")
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|m| match m {
                        "ReadWriteOnce" => "RWO",
                        "ReadOnlyMany" => "ROX",
                        "ReadWriteMany" => "RWX",
                        "ReadWriteOncePod" => "RWOP",
                        x => x,
                    })
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            json!(none_if_empty(
                str_at(o, "/spec/storageClassName").to_string()
            )),
            json!(age(o)),
        ],
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            vec![name, json!(str_at(o, "/metadata/creationTimestamp"))]
        }
        _ => {
            let mut row = vec![name];
            let cols = crd_columns(def, version);
            for c in cols {
                let v = json_path(o, str_at(c, "/jsonPath")).unwrap_or(Value::Null);
                let cell = match (str_at(c, "/type"), &v) {
                    ("date", Value::String(s)) => json!(
                        object::parse_time(s)
                            .map(|t| object::human_duration(
                                jiff::Timestamp::now().as_second() - t.as_second()
                            ))
                            .unwrap_or_default()
                    ),
                    (_, Value::Null) => json!("<none>"),
                    (_, Value::String(_) | Value::Number(_) | Value::Bool(_)) => v.clone(),
                    _ => json!(v.to_string()),
                };
                row.push(cell);
            }
            if !cols.iter().any(|c| str_at(c, "/name") == "Age") {
                row.push(json!(age(o)));
            }
            row
        }
    }
}

fn row(def: &ResourceDef, version: &str, o: &Value, include: IncludeObject) -> Value {
    let mut r = json!({"cells": cells(def, version, o)});
    match include {
        IncludeObject::None => {}
        IncludeObject::Metadata => {
            r["object"] = json!({
                "kind": "PartialObjectMetadata",
                "apiVersion": "meta.k8s.io/v1",
                "metadata": o.get("metadata").cloned().unwrap_or(json!({})),
            });
        }
        IncludeObject::Object => r["object"] = o.clone(),
    }
    r
}

/// A Table of `objects`.
pub fn table(
    def: &ResourceDef,
    version: &str,
    objects: &[Value],
    resource_version: &str,
    include: IncludeObject,
) -> Value {
    json!({
        "kind": "Table",
        "apiVersion": "meta.k8s.io/v1",
        "metadata": {"resourceVersion": resource_version},
        "columnDefinitions": columns(def, version),
        "rows": objects.iter().map(|o| row(def, version, o, include)).collect::<Vec<_>>(),
    })
}

/// Whether an Accept header asks for a Table.
pub fn wants_table(accept: &str) -> bool {
    accept
        .split(',')
        .next()
        .is_some_and(|first| first.contains("as=Table"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_rows_show_waiting_reasons_and_readiness() {
        let def = crate::resources::builtin("", "Pod").unwrap();
        let pod = json!({"metadata": {"name": "web-1", "creationTimestamp": object::now()},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}]},
            "status": {"phase": "Pending", "containerStatuses": [
                {"name": "a", "ready": true, "restartCount": 0, "state": {"running": {}}},
                {"name": "b", "ready": false, "restartCount": 0, "state": {"waiting": {"reason": "ErrImageNeverPull"}}}]}});
        let t = table(&def, "v1", &[pod], "5", IncludeObject::Metadata);
        let cells = &t["rows"][0]["cells"];
        assert_eq!(cells[0], "web-1");
        assert_eq!(cells[1], "1/2");
        assert_eq!(cells[2], "ErrImageNeverPull");
        assert_eq!(t["rows"][0]["object"]["kind"], "PartialObjectMetadata");
        assert_eq!(t["columnDefinitions"][2]["name"], "Status");
    }

    #[test]
    fn json_path_subset() {
        let o = json!({"status": {"conditions": [{"type": "A", "status": "False"}, {"type": "Ready", "status": "True"}]},
                       "spec": {"items": [{"n": 1}]}});
        assert_eq!(
            json_path(&o, ".status.conditions[?(@.type==\"Ready\")].status"),
            Some(json!("True"))
        );
        assert_eq!(json_path(&o, ".spec.items[0].n"), Some(json!(1)));
        assert_eq!(json_path(&o, ".spec.missing"), None);
    }

    #[test]
    fn accept_header() {
        assert!(wants_table(
            "application/json;as=Table;v=v1;g=meta.k8s.io,application/json;as=Table;v=v1beta1;g=meta.k8s.io,application/json"
        ));
        assert!(!wants_table("application/json"));
    }
}
