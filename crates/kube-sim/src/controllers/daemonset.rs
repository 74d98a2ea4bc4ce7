//! DaemonSets: one pod per node whose labels match the pod's nodeSelector
//! and whose taints the pod tolerates; pods of an old template are replaced
//! one node at a time.

use serde_json::{Value, json};

use super::{Source, create_pod, gr, owned_pods, pod_ready, record_event, write_if_changed};
use crate::Sim;
use crate::object;
use crate::selectors;

const COMPONENT: &str = "daemonset-controller";

/// Whether `tolerations` tolerate every NoSchedule/NoExecute taint of `node`.
pub fn tolerates(tolerations: &[Value], node: &Value) -> bool {
    object::array_at(node, "/spec/taints").iter().all(|taint| {
        let effect = object::str_at(taint, "/effect");
        if effect == "PreferNoSchedule" {
            return true;
        }
        tolerations.iter().any(|t| {
            let key_ok = match object::str_at(t, "/key") {
                "" => object::str_at(t, "/operator") == "Exists",
                k => k == object::str_at(taint, "/key"),
            };
            let value_ok = object::str_at(t, "/operator") == "Exists"
                || object::str_at(t, "/value") == object::str_at(taint, "/value");
            let effect_ok = match object::str_at(t, "/effect") {
                "" => true,
                e => e == effect,
            };
            key_ok && value_ok && effect_ok
        })
    })
}

/// Whether a pod spec may run on `node` (nodeSelector and taints).
pub fn fits(spec: &Value, node: &Value) -> bool {
    let selector = spec
        .get("nodeSelector")
        .map(selectors::from_map)
        .unwrap_or_default();
    selector.matches_object(node) && tolerates(object::array_at(spec, "/tolerations"), node)
}

pub fn reconcile(sim: &Sim) {
    let ds_gr = gr("apps", "daemonsets");
    sim.store.transact(|txn| {
        let nodes: Vec<Value> = txn.list(&gr("", "nodes")).cloned().collect();
        let all: Vec<Value> = txn.list(&ds_gr).cloned().collect();
        for ds in all {
            if object::is_deleting(&ds) {
                continue;
            }
            let ns = object::namespace(&ds).to_string();
            let uid = object::uid(&ds).to_string();
            let template = ds.pointer("/spec/template").cloned().unwrap_or(json!({}));
            let spec = template.get("spec").cloned().unwrap_or(json!({}));
            let hash = object::template_hash(&template);
            let eligible: Vec<&Value> = nodes.iter().filter(|n| fits(&spec, n)).collect();
            let pods = owned_pods(txn, &ns, &uid);
            for node in &eligible {
                let node_name = object::name(node);
                if pods
                    .iter()
                    .any(|p| object::str_at(p, "/spec/nodeName") == node_name)
                {
                    continue;
                }
                let name = format!("{}-{}", object::name(&ds), object::random_suffix(5));
                let labels = [
                    ("controller-revision-hash", hash.clone()),
                    (
                        "pod-template-generation",
                        object::generation(&ds).to_string(),
                    ),
                ];
                if create_pod(
                    txn,
                    &ds,
                    &template,
                    &name,
                    &labels,
                    &[("nodeName", json!(node_name))],
                    COMPONENT,
                )
                .is_some()
                {
                    record_event(
                        txn,
                        &ds,
                        "Normal",
                        "SuccessfulCreate",
                        &format!("Created pod: {name}"),
                        Source::controller(COMPONENT),
                    );
                }
            }
            for p in &pods {
                let on = object::str_at(p, "/spec/nodeName");
                if !eligible.iter().any(|n| object::name(n) == on) {
                    let _ = txn.delete(&gr("", "pods"), &ns, object::name(p));
                }
            }
            let pods = owned_pods(txn, &ns, &uid);
            if pods.iter().all(pod_ready)
                && let Some(old) = pods.iter().find(|p| {
                    object::str_at(p, "/metadata/labels/controller-revision-hash") != hash
                })
            {
                let _ = txn.delete(&gr("", "pods"), &ns, object::name(old));
            }
            let pods = owned_pods(txn, &ns, &uid);
            let ready = pods.iter().filter(|p| pod_ready(p)).count();
            let updated = pods
                .iter()
                .filter(|p| object::str_at(p, "/metadata/labels/controller-revision-hash") == hash)
                .count();
            let mut out = ds.clone();
            out["status"] = json!({
                "observedGeneration": object::generation(&ds),
                "desiredNumberScheduled": eligible.len(),
                "currentNumberScheduled": pods.len(),
                "numberReady": ready,
                "numberAvailable": ready,
                "updatedNumberScheduled": updated,
                "numberMisscheduled": 0,
            });
            if eligible.len() > ready {
                out["status"]["numberUnavailable"] = json!(eligible.len() - ready);
            }
            write_if_changed(txn, &ds_gr, &ds, out);
        }
    });
}
