//! CustomResourceDefinitions: accepted names and the Established condition
//! (what the apiextensions controllers report), serving them through the
//! registry, and deleting a CRD's custom resources before the CRD goes.

use serde_json::{Value, json};

use super::gr;
use crate::Sim;
use crate::object;

const CLEANUP_FINALIZER: &str = "customresourcecleanup.apiextensions.k8s.io";

pub fn reconcile(sim: &Sim) {
    let crds = gr("apiextensions.k8s.io", "customresourcedefinitions");
    sim.store.transact(|txn| {
        let all: Vec<Value> = txn.list(&crds).cloned().collect();
        for crd in &all {
            let group = object::str_at(crd, "/spec/group").to_string();
            let plural = object::str_at(crd, "/spec/names/plural").to_string();
            if object::is_deleting(crd) {
                let res = gr(&group, &plural);
                let names: Vec<(String, String)> = txn
                    .list(&res)
                    .map(|o| (object::namespace(o).to_string(), object::name(o).to_string()))
                    .collect();
                let mut remaining = 0;
                for (ns, n) in names {
                    if let Ok(crate::store::Deletion::Pending(_)) = txn.delete(&res, &ns, &n) {
                        remaining += 1;
                    }
                }
                let mut updated = crd.clone();
                object::set_condition(
                    &mut updated,
                    json!({"type": "Terminating", "status": "True", "reason": "InstanceDeletionInProgress",
                           "message": "CustomResource deletion is in progress", "lastTransitionTime": object::now()}),
                );
                if remaining == 0 {
                    let fins: Vec<Value> = object::array_at(crd, "/metadata/finalizers")
                        .iter()
                        .filter(|f| *f != CLEANUP_FINALIZER)
                        .cloned()
                        .collect();
                    updated["metadata"]["finalizers"] = json!(fins);
                }
                super::write_if_changed(txn, &crds, crd, updated);
                continue;
            }
            let mut updated = crd.clone();
            let names = crd.pointer("/spec/names").cloned().unwrap_or(json!({}));
            updated["status"]["acceptedNames"] = names;
            let storage: Vec<Value> = object::array_at(crd, "/spec/versions")
                .iter()
                .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
                .map(|v| json!(object::str_at(v, "/name")))
                .collect();
            let mut stored: Vec<Value> = object::array_at(crd, "/status/storedVersions").to_vec();
            for s in storage {
                if !stored.contains(&s) {
                    stored.push(s);
                }
            }
            updated["status"]["storedVersions"] = json!(stored);
            let now = object::now();
            object::set_condition(
                &mut updated,
                json!({"type": "NamesAccepted", "status": "True", "reason": "NoConflicts",
                       "message": "no conflicts found", "lastTransitionTime": now}),
            );
            object::set_condition(
                &mut updated,
                json!({"type": "Established", "status": "True", "reason": "InitialNamesAccepted",
                       "message": "the initial names have been accepted", "lastTransitionTime": now}),
            );
            super::write_if_changed(txn, &crds, crd, updated);
        }
        // Inside the transaction: nobody hears of an Established CRD before
        // its resource is served.
        let current: Vec<Value> = txn.list(&crds).cloned().collect();
        sim.registry.sync_crds(&current);
    });
}
