//! StatefulSets: pods `<name>-0..n-1` with stable names, created in order
//! (each once the previous is Ready, unless podManagementPolicy is Parallel),
//! PersistentVolumeClaims from volumeClaimTemplates (stored only), removed
//! from the highest ordinal down, and replaced one at a time, highest
//! ordinal first, when the template changes.

use serde_json::{Value, json};

use super::{Source, create_pod, gr, owned_pods, pod_ready, record_event, write_if_changed};
use crate::Sim;
use crate::object;

const COMPONENT: &str = "statefulset-controller";

fn ordinal(sts_name: &str, pod: &Value) -> Option<i64> {
    object::name(pod)
        .strip_prefix(sts_name)?
        .strip_prefix('-')?
        .parse()
        .ok()
}

pub fn reconcile(sim: &Sim) {
    let sts_gr = gr("apps", "statefulsets");
    sim.store.transact(|txn| {
        let all: Vec<Value> = txn.list(&sts_gr).cloned().collect();
        for sts in all {
            if object::is_deleting(&sts) {
                continue;
            }
            let ns = object::namespace(&sts).to_string();
            let name = object::name(&sts).to_string();
            let uid = object::uid(&sts).to_string();
            let replicas = object::i64_at(&sts, "/spec/replicas").unwrap_or(1).max(0);
            let parallel = object::str_at(&sts, "/spec/podManagementPolicy") == "Parallel";
            let template = sts.pointer("/spec/template").cloned().unwrap_or(json!({}));
            let revision = format!("{name}-{}", object::template_hash(&template));
            let pods = owned_pods(txn, &ns, &uid);
            let by_ordinal = |i: i64| pods.iter().find(|p| ordinal(&name, p) == Some(i));

            // Create missing pods (in order unless Parallel).
            for i in 0..replicas {
                if by_ordinal(i).is_some() {
                    if !parallel && !by_ordinal(i).is_some_and(pod_ready) {
                        break;
                    }
                    continue;
                }
                let pod_name = format!("{name}-{i}");
                let mut volumes: Vec<Value> = object::array_at(&template, "/spec/volumes").to_vec();
                for claim in object::array_at(&sts, "/spec/volumeClaimTemplates") {
                    let claim_name = format!("{}-{pod_name}", object::name(claim));
                    let pvc_gr = gr("", "persistentvolumeclaims");
                    if txn.get(&pvc_gr, &ns, &claim_name).is_none() {
                        let mut pvc = json!({
                            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
                            "metadata": {"name": claim_name, "namespace": ns,
                                         "labels": template.pointer("/metadata/labels").cloned().unwrap_or(json!({}))},
                            "spec": claim.get("spec").cloned().unwrap_or(json!({})),
                            "status": {"phase": "Pending"},
                        });
                        if let Some(m) = pvc["metadata"]["labels"].as_object_mut() {
                            m.insert("app.kubernetes.io/managed-by".into(), json!("kube-sim"));
                        }
                        let _ = txn.create(&pvc_gr, pvc);
                    }
                    volumes.push(json!({"name": object::name(claim), "persistentVolumeClaim": {"claimName": claim_name}}));
                }
                let mut overrides = vec![("hostname", json!(pod_name))];
                let service = object::str_at(&sts, "/spec/serviceName");
                if !service.is_empty() {
                    overrides.push(("subdomain", json!(service)));
                }
                if !volumes.is_empty() {
                    overrides.push(("volumes", json!(volumes)));
                }
                let labels = [
                    ("controller-revision-hash", revision.clone()),
                    ("statefulset.kubernetes.io/pod-name", pod_name.clone()),
                    ("apps.kubernetes.io/pod-index", i.to_string()),
                ];
                if create_pod(txn, &sts, &template, &pod_name, &labels, &overrides, COMPONENT).is_some() {
                    record_event(txn, &sts, "Normal", "SuccessfulCreate",
                        &format!("create Pod {pod_name} in StatefulSet {name} successful"), Source::controller(COMPONENT));
                }
                if !parallel {
                    break;
                }
            }

            // Scale down from the top.
            let mut extra: Vec<&Value> = pods.iter().filter(|p| ordinal(&name, p).is_none_or(|o| o >= replicas)).collect();
            extra.sort_by_key(|p| std::cmp::Reverse(ordinal(&name, p)));
            let take = if parallel { extra.len() } else { extra.len().min(1) };
            for p in extra.into_iter().take(take) {
                if txn.delete(&gr("", "pods"), &ns, object::name(p)).is_ok() {
                    record_event(txn, &sts, "Normal", "SuccessfulDelete",
                        &format!("delete Pod {} in StatefulSet {name} successful", object::name(p)), Source::controller(COMPONENT));
                }
            }

            // Rolling update: replace the highest outdated pod once all are ready.
            let pods = owned_pods(txn, &ns, &uid);
            let in_range: Vec<&Value> = pods.iter().filter(|p| ordinal(&name, p).is_some_and(|o| o < replicas)).collect();
            let on_delete = object::str_at(&sts, "/spec/updateStrategy/type") == "OnDelete";
            if !on_delete && in_range.len() as i64 == replicas && in_range.iter().all(|p| pod_ready(p))
                && let Some(outdated) = in_range
                    .iter()
                    .filter(|p| object::str_at(p, "/metadata/labels/controller-revision-hash") != revision)
                    .max_by_key(|p| ordinal(&name, p))
            {
                let _ = txn.delete(&gr("", "pods"), &ns, object::name(outdated));
            }

            let pods = owned_pods(txn, &ns, &uid);
            let ready = pods.iter().filter(|p| pod_ready(p)).count() as i64;
            let updated = pods.iter().filter(|p| object::str_at(p, "/metadata/labels/controller-revision-hash") == revision).count() as i64;
            let mut current_revision = object::str_at(&sts, "/status/currentRevision").to_string();
            if current_revision.is_empty() || updated == replicas {
                current_revision = revision.clone();
            }
            let current = pods.iter().filter(|p| object::str_at(p, "/metadata/labels/controller-revision-hash") == current_revision).count() as i64;
            let mut out = sts.clone();
            out["status"] = json!({
                "observedGeneration": object::generation(&sts),
                "replicas": pods.len(),
                "readyReplicas": ready,
                "availableReplicas": ready,
                "currentReplicas": current,
                "updatedReplicas": updated,
                "currentRevision": current_revision,
                "updateRevision": revision,
                "collisionCount": 0,
            });
            write_if_changed(txn, &sts_gr, &sts, out);
        }
    });
}
