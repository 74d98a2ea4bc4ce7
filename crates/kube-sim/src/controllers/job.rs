//! Jobs: pods are created up to `parallelism` until `completions` pods have
//! succeeded (a pod of the sim succeeds as soon as its images are present);
//! then the Job gets SuccessCriteriaMet and Complete conditions and a
//! completionTime. Suspended Jobs create no pods. CronJobs are stored only.

use serde_json::{Value, json};

use super::{Source, create_pod, gr, pod_ready, record_event, write_if_changed};
use crate::Sim;
use crate::object;

const COMPONENT: &str = "job-controller";

pub fn reconcile(sim: &Sim) {
    let jobs = gr("batch", "jobs");
    sim.store.transact(|txn| {
        let all: Vec<Value> = txn.list(&jobs).cloned().collect();
        for job in all {
            if object::is_deleting(&job) {
                continue;
            }
            let ns = object::namespace(&job).to_string();
            let uid = object::uid(&job).to_string();
            let pods: Vec<Value> = txn
                .list_in(&gr("", "pods"), &ns)
                .filter(|p| object::is_controlled_by(p, &uid))
                .cloned()
                .collect();
            let phase = |p: &Value| object::str_at(p, "/status/phase").to_string();
            let succeeded = pods.iter().filter(|p| phase(p) == "Succeeded").count() as i64;
            let failed = pods.iter().filter(|p| phase(p) == "Failed").count() as i64;
            let mut active: Vec<&Value> = pods
                .iter()
                .filter(|p| {
                    !matches!(phase(p).as_str(), "Succeeded" | "Failed") && !object::is_deleting(p)
                })
                .collect();
            let completions = object::i64_at(&job, "/spec/completions").unwrap_or(1);
            let parallelism = object::i64_at(&job, "/spec/parallelism").unwrap_or(1);
            let finished =
                object::condition_true(&job, "Complete") || object::condition_true(&job, "Failed");
            let suspended = job.pointer("/spec/suspend").and_then(Value::as_bool) == Some(true);
            let template = job.pointer("/spec/template").cloned().unwrap_or(json!({}));
            let mut created = Vec::new();
            if !finished && !suspended {
                let want = parallelism.min(completions - succeeded).max(0) as usize;
                while active.len() + created.len() < want {
                    let name = format!("{}-{}", object::name(&job), object::random_suffix(5));
                    match create_pod(txn, &job, &template, &name, &[], &[], COMPONENT) {
                        Some(p) => {
                            record_event(
                                txn,
                                &job,
                                "Normal",
                                "SuccessfulCreate",
                                &format!("Created pod: {name}"),
                                Source::controller(COMPONENT),
                            );
                            created.push(p);
                        }
                        None => break,
                    }
                }
            }
            active.extend(created.iter());
            let now = object::now();
            let mut out = job.clone();
            let status = object::ensure_object(&mut out, &["status"]);
            if !status.contains_key("startTime") && !suspended {
                status.insert("startTime".into(), json!(now));
            }
            status.insert("active".into(), json!(active.len()));
            status.insert(
                "ready".into(),
                json!(active.iter().filter(|p| pod_ready(p)).count()),
            );
            status.insert("terminating".into(), json!(0));
            status.insert("uncountedTerminatedPods".into(), json!({}));
            if succeeded > 0 {
                status.insert("succeeded".into(), json!(succeeded));
            }
            if failed > 0 {
                status.insert("failed".into(), json!(failed));
            }
            if active.is_empty() {
                status.remove("active");
            }
            if !finished && succeeded >= completions {
                status.insert("completionTime".into(), json!(now));
                for ty in ["SuccessCriteriaMet", "Complete"] {
                    object::set_condition(
                        &mut out,
                        json!({
                            "type": ty, "status": "True", "reason": "CompletionsReached",
                            "message": "Reached expected number of succeeded pods",
                            "lastProbeTime": now, "lastTransitionTime": now,
                        }),
                    );
                }
                record_event(
                    txn,
                    &job,
                    "Normal",
                    "Completed",
                    "Job completed",
                    Source::controller(COMPONENT),
                );
            }
            write_if_changed(txn, &jobs, &job, out);
        }
    });
}
