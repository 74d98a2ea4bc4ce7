//! Deployments and ReplicaSets. A Deployment owns one ReplicaSet per pod
//! template (`<deploy>-<pod-template-hash>`); the ReplicaSet owns the pods
//! (`<rs>-<5 chars>`). On a template change the new ReplicaSet is scaled up
//! and the old ones are scaled to zero once the new one is fully available
//! (simplified RollingUpdate; Recreate scales the old ones down first).
//! Status and the Available/Progressing conditions follow the real
//! controller's reasons and messages.

use serde_json::{Value, json};

use super::{Source, create_pod, gr, owned_pods, pod_ready, record_event, write_if_changed};
use crate::Sim;
use crate::object;
use crate::store::Txn;

const COMPONENT: &str = "deployment-controller";

/// Resolves an int-or-percent (`maxUnavailable`) against `total`, rounding down.
pub fn int_or_percent(v: Option<&Value>, total: i64, default_percent: i64) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().unwrap_or(0),
        Some(Value::String(s)) if s.ends_with('%') => {
            let p: i64 = s.trim_end_matches('%').parse().unwrap_or(0);
            total * p / 100
        }
        Some(Value::String(s)) => s.parse().unwrap_or(0),
        _ => total * default_percent / 100,
    }
}

pub fn reconcile(sim: &Sim) {
    let deployments = gr("apps", "deployments");
    sim.store.transact(|txn| {
        let all: Vec<Value> = txn.list(&deployments).cloned().collect();
        for d in all {
            if !object::is_deleting(&d) {
                reconcile_one(txn, &d);
            }
        }
    });
}

fn revision(rs: &Value) -> i64 {
    object::str_at(
        rs,
        "/metadata/annotations/deployment.kubernetes.io~1revision",
    )
    .parse()
    .unwrap_or(0)
}

fn reconcile_one(txn: &mut Txn<'_>, d: &Value) {
    let rs_gr = gr("apps", "replicasets");
    let ns = object::namespace(d).to_string();
    let name = object::name(d).to_string();
    let uid = object::uid(d).to_string();
    let replicas = object::i64_at(d, "/spec/replicas").unwrap_or(1);
    let template = d.pointer("/spec/template").cloned().unwrap_or(json!({}));
    let hash = object::template_hash(&template);
    let recreate = object::str_at(d, "/spec/strategy/type") == "Recreate";

    let owned: Vec<Value> = txn
        .list_in(&rs_gr, &ns)
        .filter(|rs| object::is_controlled_by(rs, &uid))
        .cloned()
        .collect();
    let max_revision = owned.iter().map(revision).max().unwrap_or(0);
    let mut new_rs = owned
        .iter()
        .find(|rs| object::str_at(rs, "/metadata/labels/pod-template-hash") == hash)
        .cloned();
    let old_rss: Vec<Value> = owned
        .iter()
        .filter(|rs| object::str_at(rs, "/metadata/labels/pod-template-hash") != hash)
        .cloned()
        .collect();
    let old_pods: i64 = old_rss
        .iter()
        .map(|rs| object::i64_at(rs, "/status/replicas").unwrap_or(0))
        .sum();

    let mut just_created = false;
    if new_rs.is_none() {
        let initial = if recreate && old_pods > 0 {
            0
        } else {
            replicas
        };
        let mut tmpl = template.clone();
        object::ensure_object(&mut tmpl, &["metadata", "labels"])
            .insert("pod-template-hash".into(), json!(hash));
        let mut selector = d.pointer("/spec/selector").cloned().unwrap_or(json!({}));
        object::ensure_object(&mut selector, &["matchLabels"])
            .insert("pod-template-hash".into(), json!(hash));
        let rs_name = format!("{name}-{hash}");
        let rs = json!({
            "apiVersion": "apps/v1",
            "kind": "ReplicaSet",
            "metadata": {
                "name": rs_name,
                "namespace": ns,
                "labels": tmpl["metadata"]["labels"].clone(),
                "annotations": {
                    "deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                    "deployment.kubernetes.io/max-replicas": replicas.to_string(),
                    "deployment.kubernetes.io/revision": (max_revision + 1).to_string(),
                },
                "ownerReferences": [object::controller_ref(d)],
            },
            "spec": {"replicas": initial, "selector": selector, "template": tmpl,
                     "minReadySeconds": object::i64_at(d, "/spec/minReadySeconds").unwrap_or(0)},
        });
        match txn.create(&rs_gr, rs) {
            Ok(created) => {
                record_event(
                    txn,
                    d,
                    "Normal",
                    "ScalingReplicaSet",
                    &format!("Scaled up replica set {rs_name} from 0 to {initial}"),
                    Source::controller(COMPONENT),
                );
                new_rs = Some(created);
                just_created = true;
            }
            Err(_) => return,
        }
    }
    let Some(new_rs) = new_rs else { return };
    let new_rs_name = object::name(&new_rs).to_string();

    // Scale the new ReplicaSet up, the old ones down.
    let new_available = object::i64_at(&new_rs, "/status/availableReplicas").unwrap_or(0);
    let new_target = if recreate && old_pods > 0 {
        0
    } else {
        replicas
    };
    scale(txn, d, &new_rs, new_target);
    let old_target_zero = recreate || new_available >= replicas;
    if old_target_zero {
        for rs in &old_rss {
            scale(txn, d, rs, 0);
        }
    }
    // The revision annotation follows the ReplicaSet in use.
    let new_rs = txn
        .get(&rs_gr, &ns, &new_rs_name)
        .cloned()
        .unwrap_or(new_rs);

    // Status, from the ReplicaSets as they are now.
    let current: Vec<Value> = txn
        .list_in(&rs_gr, &ns)
        .filter(|rs| object::is_controlled_by(rs, &uid))
        .cloned()
        .collect();
    let sum = |p: &str| -> i64 {
        current
            .iter()
            .map(|rs| object::i64_at(rs, p).unwrap_or(0))
            .sum()
    };
    let total = sum("/status/replicas");
    let ready = sum("/status/readyReplicas");
    let available = sum("/status/availableReplicas");
    let updated = object::i64_at(&new_rs, "/status/replicas").unwrap_or(0);
    let max_unavailable = if recreate {
        0
    } else {
        int_or_percent(
            d.pointer("/spec/strategy/rollingUpdate/maxUnavailable"),
            replicas,
            25,
        )
    };
    let mut out = d.clone();
    let status = object::ensure_object(&mut out, &["status"]);
    status.insert("observedGeneration".into(), json!(object::generation(d)));
    for (k, v) in [
        ("replicas", total),
        ("updatedReplicas", updated),
        ("readyReplicas", ready),
        ("availableReplicas", available),
        ("unavailableReplicas", (replicas - available).max(0)),
    ] {
        if v == 0 && k != "replicas" && k != "availableReplicas" {
            status.remove(k);
        } else {
            status.insert(k.into(), json!(v));
        }
    }
    let now = object::now();
    let cond = |ty: &str, st: &str, reason: &str, msg: String| {
        json!({"type": ty, "status": st, "reason": reason, "message": msg,
               "lastUpdateTime": now, "lastTransitionTime": now})
    };
    let available_cond = if available >= replicas - max_unavailable {
        cond(
            "Available",
            "True",
            "MinimumReplicasAvailable",
            "Deployment has minimum availability.".into(),
        )
    } else {
        cond(
            "Available",
            "False",
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
        )
    };
    let complete = updated == replicas && available >= replicas && total == replicas;
    let deadline = object::i64_at(d, "/spec/progressDeadlineSeconds").unwrap_or(600);
    let progressing_since = object::condition(d, "Progressing")
        .filter(|c| object::str_at(c, "/reason") != "NewReplicaSetAvailable")
        .and_then(|c| object::parse_time(object::str_at(c, "/lastUpdateTime")));
    let timed_out = !complete
        && progressing_since
            .is_some_and(|t| jiff::Timestamp::now().as_second() - t.as_second() > deadline);
    let progressing = if complete {
        cond(
            "Progressing",
            "True",
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{new_rs_name}\" has successfully progressed."),
        )
    } else if timed_out {
        cond(
            "Progressing",
            "False",
            "ProgressDeadlineExceeded",
            format!("ReplicaSet \"{new_rs_name}\" has timed out progressing."),
        )
    } else if just_created || object::condition(d, "Progressing").is_none() {
        cond(
            "Progressing",
            "True",
            "NewReplicaSetCreated",
            format!("Created new replica set \"{new_rs_name}\""),
        )
    } else {
        cond(
            "Progressing",
            "True",
            "ReplicaSetUpdated",
            format!("ReplicaSet \"{new_rs_name}\" is progressing."),
        )
    };
    // Conditions keep their timestamps unless their status or reason changes.
    object::set_condition(&mut out, available_cond);
    object::set_condition(&mut out, progressing);
    let rev = object::str_at(
        &new_rs,
        "/metadata/annotations/deployment.kubernetes.io~1revision",
    )
    .to_string();
    if !rev.is_empty() {
        object::ensure_object(&mut out, &["metadata", "annotations"])
            .insert("deployment.kubernetes.io/revision".into(), json!(rev));
    }
    write_if_changed(txn, &gr("apps", "deployments"), d, out);
}

fn scale(txn: &mut Txn<'_>, d: &Value, rs: &Value, to: i64) {
    let from = object::i64_at(rs, "/spec/replicas").unwrap_or(0);
    if from == to {
        return;
    }
    let mut updated = rs.clone();
    updated["spec"]["replicas"] = json!(to);
    let ann = object::ensure_object(&mut updated, &["metadata", "annotations"]);
    ann.insert(
        "deployment.kubernetes.io/desired-replicas".into(),
        json!(object::i64_at(d, "/spec/replicas").unwrap_or(1).to_string()),
    );
    if txn.update(&gr("apps", "replicasets"), updated).is_ok() {
        let dir = if to > from { "up" } else { "down" };
        record_event(
            txn,
            d,
            "Normal",
            "ScalingReplicaSet",
            &format!(
                "Scaled {dir} replica set {} from {from} to {to}",
                object::name(rs)
            ),
            Source::controller(COMPONENT),
        );
    }
}

pub fn reconcile_replicasets(sim: &Sim) {
    let rs_gr = gr("apps", "replicasets");
    sim.store.transact(|txn| {
        let all: Vec<Value> = txn.list(&rs_gr).cloned().collect();
        for rs in all {
            if object::is_deleting(&rs) {
                continue;
            }
            let ns = object::namespace(&rs).to_string();
            let uid = object::uid(&rs).to_string();
            let want = object::i64_at(&rs, "/spec/replicas").unwrap_or(1).max(0) as usize;
            let mut pods = owned_pods(txn, &ns, &uid);
            let template = rs.pointer("/spec/template").cloned().unwrap_or(json!({}));
            while pods.len() < want {
                let name = format!("{}-{}", object::name(&rs), object::random_suffix(5));
                match create_pod(
                    txn,
                    &rs,
                    &template,
                    &name,
                    &[],
                    &[],
                    "replicaset-controller",
                ) {
                    Some(p) => {
                        record_event(
                            txn,
                            &rs,
                            "Normal",
                            "SuccessfulCreate",
                            &format!("Created pod: {name}"),
                            Source::controller("replicaset-controller"),
                        );
                        pods.push(p);
                    }
                    None => break,
                }
            }
            if pods.len() > want {
                // Not-ready pods first, then the newest.
                pods.sort_by(|a, b| {
                    pod_ready(a).cmp(&pod_ready(b)).then_with(|| {
                        object::str_at(b, "/metadata/creationTimestamp")
                            .cmp(object::str_at(a, "/metadata/creationTimestamp"))
                    })
                });
                let extra: Vec<Value> = pods.drain(..pods.len() - want).collect();
                for p in extra {
                    if txn.delete(&gr("", "pods"), &ns, object::name(&p)).is_ok() {
                        record_event(
                            txn,
                            &rs,
                            "Normal",
                            "SuccessfulDelete",
                            &format!("Deleted pod: {}", object::name(&p)),
                            Source::controller("replicaset-controller"),
                        );
                    }
                }
            }
            let ready = pods.iter().filter(|p| pod_ready(p)).count();
            let mut out = rs.clone();
            let status = object::ensure_object(&mut out, &["status"]);
            status.insert("replicas".into(), json!(pods.len()));
            status.insert("fullyLabeledReplicas".into(), json!(pods.len()));
            status.insert("readyReplicas".into(), json!(ready));
            status.insert("availableReplicas".into(), json!(ready));
            status.insert("observedGeneration".into(), json!(object::generation(&rs)));
            write_if_changed(txn, &rs_gr, &rs, out);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_unavailable_rounds_down() {
        assert_eq!(int_or_percent(Some(&json!("25%")), 1, 25), 0);
        assert_eq!(int_or_percent(Some(&json!("25%")), 4, 25), 1);
        assert_eq!(int_or_percent(Some(&json!(2)), 4, 25), 2);
        assert_eq!(int_or_percent(None, 8, 25), 2);
    }
}
