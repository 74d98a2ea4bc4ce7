//! Endpoints for Services with a selector: ready pods' IPs under
//! `addresses`, the others under `notReadyAddresses`, with each Service
//! port's targetPort resolved (named ports through the pods' container
//! ports). EndpointSlices are not modelled.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::{gr, pod_ready};
use crate::Sim;
use crate::object;
use crate::selectors;

/// Ports, ready addresses and not-ready addresses of one Endpoints subset.
type Subset = (Vec<Value>, Vec<Value>, Vec<Value>);

/// Marks Endpoints this controller manages (so it can delete them with their Service).
const MANAGED: &str = "endpoints.kubernetes.io/last-change-trigger-time";

fn resolve_port(svc_port: &Value, pod: &Value) -> Option<i64> {
    match svc_port.get("targetPort") {
        Some(Value::Number(n)) => n.as_i64(),
        Some(Value::String(name)) => object::array_at(pod, "/spec/containers")
            .iter()
            .flat_map(|c| object::array_at(c, "/ports"))
            .find(|p| object::str_at(p, "/name") == name)
            .and_then(|p| object::i64_at(p, "/containerPort")),
        _ => object::i64_at(svc_port, "/port"),
    }
}

pub fn reconcile(sim: &Sim) {
    let services = gr("", "services");
    let endpoints = gr("", "endpoints");
    sim.store.transact(|txn| {
        let svcs: Vec<Value> = txn.list(&services).cloned().collect();
        for svc in &svcs {
            let Some(sel) = svc.pointer("/spec/selector").filter(|s| s.as_object().is_some_and(|m| !m.is_empty())) else {
                continue;
            };
            let selector = selectors::from_map(sel);
            let ns = object::namespace(svc).to_string();
            let name = object::name(svc).to_string();
            let pods: Vec<Value> = txn
                .list_in(&gr("", "pods"), &ns)
                .filter(|p| selector.matches_object(p) && !object::is_deleting(p))
                .filter(|p| !object::str_at(p, "/status/podIP").is_empty())
                .filter(|p| !matches!(object::str_at(p, "/status/phase"), "Succeeded" | "Failed"))
                .cloned()
                .collect();
            // Pods with the same resolved ports share a subset.
            let mut subsets: BTreeMap<String, Subset> = BTreeMap::new();
            for pod in &pods {
                let ports: Vec<Value> = object::array_at(svc, "/spec/ports")
                    .iter()
                    .filter_map(|sp| {
                        let port = resolve_port(sp, pod)?;
                        let mut p = json!({"port": port, "protocol": match object::str_at(sp, "/protocol") { "" => "TCP", x => x }});
                        if !object::str_at(sp, "/name").is_empty() {
                            p["name"] = json!(object::str_at(sp, "/name"));
                        }
                        Some(p)
                    })
                    .collect();
                if ports.is_empty() {
                    continue;
                }
                let address = json!({
                    "ip": object::str_at(pod, "/status/podIP"),
                    "nodeName": object::str_at(pod, "/spec/nodeName"),
                    "targetRef": {"kind": "Pod", "name": object::name(pod), "namespace": ns, "uid": object::uid(pod)},
                });
                let entry = subsets.entry(Value::Array(ports.clone()).to_string()).or_insert((ports, Vec::new(), Vec::new()));
                if pod_ready(pod) {
                    entry.1.push(address);
                } else {
                    entry.2.push(address);
                }
            }
            let subsets: Vec<Value> = subsets
                .into_values()
                .map(|(ports, mut ready, mut not_ready)| {
                    let by_ip = |a: &Value, b: &Value| object::str_at(a, "/ip").cmp(object::str_at(b, "/ip"));
                    ready.sort_by(by_ip);
                    not_ready.sort_by(by_ip);
                    let mut s = json!({"ports": ports});
                    if !ready.is_empty() {
                        s["addresses"] = json!(ready);
                    }
                    if !not_ready.is_empty() {
                        s["notReadyAddresses"] = json!(not_ready);
                    }
                    s
                })
                .collect();
            let labels = svc.pointer("/metadata/labels").cloned().unwrap_or(json!({}));
            match txn.get(&endpoints, &ns, &name).cloned() {
                Some(existing) => {
                    let same = existing.get("subsets").cloned().unwrap_or(json!([])) == json!(subsets)
                        && existing.pointer("/metadata/labels").cloned().unwrap_or(json!({})) == labels;
                    if !same {
                        let mut updated = existing.clone();
                        updated["subsets"] = json!(subsets);
                        updated["metadata"]["labels"] = labels;
                        object::ensure_object(&mut updated, &["metadata", "annotations"]).insert(MANAGED.into(), json!(object::now()));
                        let _ = txn.update(&endpoints, updated);
                    }
                }
                None => {
                    let ep = json!({
                        "apiVersion": "v1", "kind": "Endpoints",
                        "metadata": {"name": name, "namespace": ns, "labels": labels,
                                     "annotations": {MANAGED: object::now()}},
                        "subsets": subsets,
                    });
                    let _ = txn.create(&endpoints, ep);
                }
            }
        }
        // Endpoints this controller made for Services that are gone.
        let stale: Vec<(String, String)> = txn
            .list(&endpoints)
            .filter(|e| !object::str_at(e, &format!("/metadata/annotations/{}", MANAGED.replace('/', "~1"))).is_empty())
            .filter(|e| !svcs.iter().any(|s| object::namespace(s) == object::namespace(e) && object::name(s) == object::name(e)))
            .map(|e| (object::namespace(e).to_string(), object::name(e).to_string()))
            .collect();
        for (ns, name) in stale {
            let _ = txn.delete(&endpoints, &ns, &name);
        }
    });
}
