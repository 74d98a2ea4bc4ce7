//! Namespaces: every namespace gets its `default` ServiceAccount and the
//! `kube-root-ca.crt` ConfigMap (what the serviceaccount and root-ca
//! publisher controllers do); a terminating namespace has its contents
//! deleted and then goes away.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Local, gr};
use crate::Sim;
use crate::object;
use crate::store::Txn;

/// How long a terminating namespace waits before its contents are deleted.
/// A real namespace controller takes seconds; without a pause, `kubectl
/// delete -f` of a namespace and its objects would find the objects gone
/// between its requests and fail with NotFound.
const CONTENT_DELETE_DELAY: Duration = Duration::from_millis(750);

/// Creates the per-namespace objects a new namespace gets, if missing.
pub fn populate(txn: &mut Txn<'_>, ns: &str) {
    let sa = gr("", "serviceaccounts");
    if txn.get(&sa, ns, "default").is_none() {
        let _ = txn.create(
            &sa,
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
                   "metadata": {"name": "default", "namespace": ns}}),
        );
    }
    let cm = gr("", "configmaps");
    if txn.get(&cm, ns, "kube-root-ca.crt").is_none() {
        let _ = txn.create(
            &cm,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "kube-root-ca.crt", "namespace": ns,
                                "annotations": {"kubernetes.io/description": "Contains a CA bundle that can be used to verify the kube-apiserver when using internal endpoints such as the internal service IP or kubernetes.default.svc. No other usage is guaranteed across distributions of Kubernetes clusters."}},
                   "data": {"ca.crt": "-----BEGIN CERTIFICATE-----\nkube-sim serves plain HTTP; this is a placeholder\n-----END CERTIFICATE-----\n"}}),
        );
    }
}

pub fn reconcile(sim: &Sim, local: &mut Local) {
    let namespaces = gr("", "namespaces");
    sim.store.transact(|txn| {
        let all: Vec<Value> = txn.list(&namespaces).cloned().collect();
        local
            .terminating_since
            .retain(|n, _| all.iter().any(|ns| object::name(ns) == n));
        for ns in all {
            let name = object::name(&ns).to_string();
            if !object::is_deleting(&ns) {
                populate(txn, &name);
                continue;
            }
            let since = *local
                .terminating_since
                .entry(name.clone())
                .or_insert_with(Instant::now);
            if since.elapsed() < CONTENT_DELETE_DELAY {
                continue;
            }
            let mut remaining = 0;
            for res in txn.resources() {
                let namespaced = sim
                    .registry
                    .all()
                    .iter()
                    .any(|d| d.gr() == res && d.namespaced)
                    || res.resource == "events";
                if !namespaced {
                    continue;
                }
                let names: Vec<String> = txn
                    .list_in(&res, &name)
                    .map(|o| object::name(o).to_string())
                    .collect();
                for n in names {
                    if let Ok(crate::store::Deletion::Pending(_)) = txn.delete(&res, &name, &n) {
                        remaining += 1;
                    }
                }
            }
            if remaining == 0 {
                let mut done = ns.clone();
                done["spec"]["finalizers"] = json!([]);
                let _ = txn.update(&namespaces, done);
            } else {
                let mut st = ns.clone();
                object::set_condition(
                    &mut st,
                    json!({"type": "NamespaceContentRemaining", "status": "True", "reason": "SomeResourcesRemain",
                           "message": format!("Some resources are remaining: {remaining} objects wait for their finalizers"),
                           "lastTransitionTime": object::now()}),
                );
                super::write_if_changed(txn, &namespaces, &ns, st);
            }
        }
    });
}
