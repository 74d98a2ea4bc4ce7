//! Go coverage of the workloads a run deployed (`--coverage`).
//!
//! A coverage run builds every image with `GOFLAGS=-cover`
//! ([`crate::image::E2eImageConfig::coverage`]); [`instrument`] then gives
//! each Deployment or StatefulSet container that runs one of those images
//! `GOCOVERDIR=/coverdata/<run-id>/<workload>` on a hostPath of the node (the
//! service crates' clusters also mount the repository's `./coverdata` there,
//! as the original did) and runs it as root, since the kubelet creates that
//! folder root-owned. After the suite, [`collect`] scales those workloads to
//! zero so each Go process writes its counters on exit, copies
//! `/coverdata/<run-id>` out of every node through the engine, removes it from
//! the nodes, and reads it with `go tool covdata`: per workload, a text
//! profile (`<run>/coverage/<workload>.out`), the per-package percentages
//! (`<workload>-packages.txt`) and one total over the workload's statements.
//!
//! Invariant: a workload is reported with a percentage only when its
//! counters were really read from the nodes; otherwise it says why not
//! (never 0 % for data that was not there).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use serde::Serialize;
use serde_json::{Value, json};

use crate::cluster::Cluster;
use crate::engine::Engine;

/// Where coverage data goes in the nodes.
pub const NODE_DIR: &str = "/coverdata";
/// The volume [`instrument`] adds to a pod.
const VOLUME: &str = "e2e-coverdata";
/// How long a workload scaled to zero may take to stop (its pods' grace
/// period is 30 s unless they say otherwise).
const STOP_TIMEOUT: Duration = Duration::from_secs(90);

/// A workload whose containers write coverage data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Target {
    pub namespace: String,
    /// `Deployment` or `StatefulSet`.
    pub kind: String,
    pub name: String,
}

impl Target {
    /// Its folder in the nodes: `/coverdata/<run-id>/<name>`.
    pub fn node_dir(&self, run_id: &str) -> String {
        format!("{NODE_DIR}/{run_id}/{}", self.name)
    }
}

/// What the run found for one workload.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WorkloadCoverage {
    pub workload: String,
    /// Statements covered over all statements of the binary, in percent;
    /// `None` when nothing could be read (see `note`).
    pub percent: Option<f64>,
    pub statements: Option<(u64, u64)>,
    /// The text profile (`go tool covdata textfmt`), for `go tool cover`.
    pub profile: Option<PathBuf>,
    /// Why there is no percentage.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The coverage part of a run's report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CoverageReport {
    /// Why nothing was collected (the sim runs no containers, the cluster
    /// never came up), when that is the case.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_collected: Option<String>,
    pub workloads: Vec<WorkloadCoverage>,
}

impl CoverageReport {
    /// Nothing collected, and why.
    pub fn not_collected(why: impl Into<String>) -> CoverageReport {
        CoverageReport {
            not_collected: Some(why.into()),
            workloads: Vec::new(),
        }
    }

    /// The lines printed after the run's table.
    pub fn lines(&self) -> String {
        if let Some(why) = &self.not_collected {
            return format!("coverage: not collected: {why}\n");
        }
        let mut out = String::new();
        for w in &self.workloads {
            match (w.percent, &w.statements, &w.profile) {
                (Some(percent), Some((covered, total)), Some(profile)) => out.push_str(&format!(
                    "coverage: {} {percent:.1}% ({covered}/{total} statements), profile {}\n",
                    w.workload,
                    profile.display()
                )),
                _ => out.push_str(&format!(
                    "coverage: {} not measured: {}\n",
                    w.workload,
                    w.note.as_deref().unwrap_or("no data")
                )),
            }
        }
        out
    }
}

/// Adds coverage output to every Deployment and StatefulSet container of
/// `objects` that runs one of `instrumented` (image references), and returns
/// the workloads changed.
pub fn instrument(
    objects: &mut [DynamicObject],
    instrumented: &BTreeSet<String>,
    run_id: &str,
) -> Vec<Target> {
    let mut targets = Vec::new();
    for object in objects.iter_mut() {
        let Some(kind) = object.types.as_ref().map(|t| t.kind.clone()) else {
            continue;
        };
        if kind != "Deployment" && kind != "StatefulSet" {
            continue;
        }
        let target = Target {
            namespace: object.metadata.namespace.clone().unwrap_or_default(),
            kind,
            name: object.metadata.name.clone().unwrap_or_default(),
        };
        let dir = target.node_dir(run_id);
        let Some(pod) = object.data.pointer_mut("/spec/template/spec") else {
            continue;
        };
        let mut changed = false;
        if let Some(containers) = pod.get_mut("containers").and_then(Value::as_array_mut) {
            for container in containers {
                let image = container.get("image").and_then(Value::as_str);
                if !image.is_some_and(|i| instrumented.contains(i)) {
                    continue;
                }
                push(
                    container,
                    "env",
                    json!({"name": "GOCOVERDIR", "value": dir}),
                );
                push(
                    container,
                    "volumeMounts",
                    json!({"name": VOLUME, "mountPath": dir}),
                );
                // The kubelet creates the hostPath folder owned by root.
                let security = container
                    .as_object_mut()
                    .map(|c| c.entry("securityContext").or_insert_with(|| json!({})));
                if let Some(Value::Object(security)) = security {
                    security.insert("runAsUser".into(), json!(0));
                    security.insert("runAsNonRoot".into(), json!(false));
                }
                changed = true;
            }
        }
        if changed {
            push(
                pod,
                "volumes",
                json!({"name": VOLUME, "hostPath": {"path": dir, "type": "DirectoryOrCreate"}}),
            );
            targets.push(target);
        }
    }
    targets
}

/// Appends `item` to the array `key` of `object`, creating it.
fn push(object: &mut Value, key: &str, item: Value) {
    if let Some(map) = object.as_object_mut() {
        let list = map.entry(key).or_insert_with(|| json!([]));
        if let Some(list) = list.as_array_mut() {
            list.push(item);
        }
    }
}

/// Stops `targets`, copies their data out of `cluster`'s nodes into
/// `out_dir`, and reads it. Never fails: each workload says what happened.
pub async fn collect(
    engine: &Engine,
    cluster: &Cluster,
    targets: &[Target],
    run_id: &str,
    out_dir: &Path,
) -> CoverageReport {
    if targets.is_empty() {
        return CoverageReport::not_collected(
            "no workload ran an image built with coverage in this run",
        );
    }
    let mut stopped: BTreeMap<String, Result<(), String>> = BTreeMap::new();
    match cluster.client().await {
        Ok(client) => {
            for target in targets {
                stopped.insert(target.name.clone(), stop(&client, target).await);
            }
        }
        Err(e) => {
            let why = format!(
                "the cluster's API cannot be reached: {}",
                crate::error_chain(&e)
            );
            return CoverageReport::not_collected(why);
        }
    }
    let copied = copy_out(engine, cluster, run_id, out_dir).await;
    let mut report = CoverageReport {
        not_collected: None,
        workloads: Vec::new(),
    };
    for target in targets {
        let mut entry = WorkloadCoverage {
            workload: target.name.clone(),
            percent: None,
            statements: None,
            profile: None,
            note: None,
        };
        let dir = out_dir.join(&target.name);
        // Go writes covmeta.* at start and covcounters.* only at exit: a
        // process killed, or still running, has no counters to count.
        let has_counters = std::fs::read_dir(&dir).is_ok_and(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with("covcounters."))
        });
        if let Err(why) = &copied {
            entry.note = Some(why.clone());
        } else if let Some(Err(why)) = stopped.get(&target.name) {
            entry.note = Some(why.clone());
        } else if !has_counters {
            entry.note = Some(format!(
                "no coverage counters in {}: its binary was not built with `-cover`, or its \
                 process did not exit normally (a Go build with GOFLAGS=-cover writes them \
                 when the process exits)",
                target.node_dir(run_id)
            ));
        } else {
            match read(&dir, out_dir, &target.name).await {
                Ok((_, 0, _)) => entry.note = Some("the profile lists no statements".into()),
                Ok((covered, total, profile)) => {
                    entry.percent = Some(percent(covered, total));
                    entry.statements = Some((covered, total));
                    entry.profile = Some(profile);
                }
                Err(why) => entry.note = Some(why),
            }
        }
        report.workloads.push(entry);
    }
    report
}

/// Scales `target` to zero and waits, by watching, until its pods are gone
/// (a Go binary writes its counters when it exits).
async fn stop(client: &kube::Client, target: &Target) -> Result<(), String> {
    let scale = Patch::Merge(json!({"spec": {"replicas": 0}}));
    let params = PatchParams::default();
    let what = format!("{} {}/{}", target.kind, target.namespace, target.name);
    let selector = match target.kind.as_str() {
        "StatefulSet" => {
            let api = Api::<StatefulSet>::namespaced(client.clone(), &target.namespace);
            let set = api.patch_scale(&target.name, &params, &scale).await;
            set.map_err(|e| format!("scaling {what} to 0: {e}"))?;
            let set = api.get(&target.name).await.map_err(|e| e.to_string())?;
            set.spec.map(|s| s.selector)
        }
        _ => {
            let api = Api::<Deployment>::namespaced(client.clone(), &target.namespace);
            let scaled = api.patch_scale(&target.name, &params, &scale).await;
            scaled.map_err(|e| format!("scaling {what} to 0: {e}"))?;
            let deployment = api.get(&target.name).await.map_err(|e| e.to_string())?;
            deployment.spec.map(|s| s.selector)
        }
    };
    let labels = selector
        .and_then(|s| s.match_labels)
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    if labels.is_empty() {
        return Err(format!(
            "{what} has no matchLabels selector to find its pods by"
        ));
    }
    let pods = Api::<Pod>::namespaced(client.clone(), &target.namespace);
    let listed = pods
        .list(&ListParams::default().labels(&labels))
        .await
        .map_err(|e| format!("listing the pods of {what}: {e}"))?;
    let waits = listed.items.into_iter().filter_map(|pod| {
        let name = pod.metadata.name?;
        let uid = pod.metadata.uid?;
        let pods = pods.clone();
        Some(async move {
            kube::runtime::wait::await_condition(
                pods,
                &name,
                kube::runtime::conditions::is_deleted(&uid),
            )
            .await
        })
    });
    tokio::time::timeout(STOP_TIMEOUT, futures::future::join_all(waits))
        .await
        .map_err(|_| {
            format!(
                "{what} still had pods {}s after scaling it to 0; their counters may be \
                 incomplete",
                STOP_TIMEOUT.as_secs()
            )
        })?;
    Ok(())
}

/// Copies `/coverdata/<run-id>` out of every node into `out_dir` (the
/// workloads' folders merged across nodes), then removes it from the nodes.
async fn copy_out(
    engine: &Engine,
    cluster: &Cluster,
    run_id: &str,
    out_dir: &Path,
) -> Result<(), String> {
    let path = format!("{NODE_DIR}/{run_id}");
    // Every node is tried (and cleaned) even when one fails.
    let mut failures = Vec::new();
    for node in &cluster.nodes {
        let options = bollard::query_parameters::DownloadFromContainerOptionsBuilder::default()
            .path(&path)
            .build();
        let mut stream = engine
            .docker()
            .download_from_container(&node.name, Some(options));
        let mut archive = Vec::new();
        let mut missing = false;
        let mut failed = None;
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => archive.extend_from_slice(&bytes),
                // No pod of this run wrote data on that node.
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    missing = true;
                    break;
                }
                Err(e) => {
                    failed = Some(format!("copying {path} out of node {}: {e}", node.name));
                    break;
                }
            }
        }
        if missing {
            continue;
        }
        if failed.is_none()
            && let Err(e) = unpack(&archive, run_id, out_dir)
        {
            failed = Some(format!("unpacking {path} from node {}: {e}", node.name));
        }
        failures.extend(failed);
        // The data is in the run folder now; the node (and the repository's
        // `coverdata` folder mounted there) keeps nothing of this run.
        let _ = engine.exec(&node.name, &["rm", "-rf", &path]).await;
    }
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

/// Writes the regular files of an archive of `<run-id>/<workload>/<file>`
/// to `out_dir/<workload>/<file>`; other entries are ignored.
fn unpack(archive: &[u8], run_id: &str, out_dir: &Path) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(archive);
    for entry in archive.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.into_owned();
        let parts: Vec<&str> = path
            .components()
            .filter_map(|c| match c {
                std::path::Component::Normal(p) => p.to_str(),
                _ => None,
            })
            .collect();
        let [root, workload, file] = parts.as_slice() else {
            continue;
        };
        if *root != run_id {
            continue;
        }
        let dir = out_dir.join(workload);
        std::fs::create_dir_all(&dir)?;
        let mut out = std::fs::File::create(dir.join(file))?;
        std::io::copy(&mut entry, &mut out)?;
    }
    Ok(())
}

/// `go tool covdata` on one workload's data: the text profile, the
/// per-package percentages, and the total (covered, total statements).
async fn read(dir: &Path, out_dir: &Path, workload: &str) -> Result<(u64, u64, PathBuf), String> {
    let profile = out_dir.join(format!("{workload}.out"));
    let input = format!("-i={}", dir.display());
    let go = |args: Vec<String>| async move {
        let output = tokio::process::Command::new("go")
            .arg("tool")
            .arg("covdata")
            .args(&args)
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                format!(
                    "running `go tool covdata`: {e}: install Go to read coverage data (kept in {})",
                    dir.display()
                )
            })?;
        if !output.status.success() {
            return Err(format!(
                "`go tool covdata {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            ));
        }
        Ok(output.stdout)
    };
    go(vec![
        "textfmt".into(),
        input.clone(),
        format!("-o={}", profile.display()),
    ])
    .await?;
    let packages = go(vec!["percent".into(), input]).await?;
    let _ = std::fs::write(out_dir.join(format!("{workload}-packages.txt")), packages);
    let text = std::fs::read_to_string(&profile)
        .map_err(|e| format!("reading {}: {e}", profile.display()))?;
    let (covered, total) = statements(&text);
    Ok((covered, total, profile))
}

/// Covered and total statements of a text profile (`mode:` line, then
/// `file:start,end statements count`). A block listed more than once (one
/// line per process) counts once, covered if any process ran it.
pub fn statements(profile: &str) -> (u64, u64) {
    let mut blocks: BTreeMap<&str, (u64, bool)> = BTreeMap::new();
    for line in profile.lines().filter(|l| !l.starts_with("mode:")) {
        let mut fields = line.rsplitn(3, ' ');
        let (Some(count), Some(statements), Some(block)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        let (Ok(count), Ok(statements)) = (count.parse::<u64>(), statements.parse::<u64>()) else {
            continue;
        };
        let seen = blocks.entry(block).or_insert((statements, false));
        seen.1 |= count > 0;
    }
    blocks.values().fold((0, 0), |(covered, total), (n, hit)| {
        (covered + if *hit { n } else { &0 }, total + n)
    })
}

fn percent(covered: u64, total: u64) -> f64 {
    if total == 0 {
        0.0
    } else {
        covered as f64 * 100.0 / total as f64
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "a test fails by panicking")]
mod tests {
    use super::*;

    fn deployment(image: &str) -> DynamicObject {
        serde_json::from_value(json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "svc", "namespace": "ns"},
            "spec": {"template": {"spec": {
                "securityContext": {"runAsNonRoot": true},
                "containers": [
                    {"name": "svc", "image": image, "env": [{"name": "A", "value": "1"}]},
                    {"name": "sidecar", "image": "localhost/other:1"}
                ]
            }}}
        }))
        .unwrap()
    }

    #[test]
    fn an_instrumented_image_gets_gocoverdir_on_a_host_path_of_its_own() {
        let mut objects = vec![
            deployment("localhost/svc:abc"),
            serde_json::from_value(json!({"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "c", "namespace": "ns"}}))
            .unwrap(),
        ];
        let images = BTreeSet::from(["localhost/svc:abc".to_string()]);
        let targets = instrument(&mut objects, &images, "run-1");
        assert_eq!(
            targets,
            vec![Target {
                namespace: "ns".into(),
                kind: "Deployment".into(),
                name: "svc".into()
            }]
        );
        let pod = &objects[0].data["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(container["env"][0]["name"], "A", "existing env is kept");
        assert_eq!(container["env"][1]["name"], "GOCOVERDIR");
        assert_eq!(container["env"][1]["value"], "/coverdata/run-1/svc");
        assert_eq!(
            container["volumeMounts"][0]["mountPath"],
            "/coverdata/run-1/svc"
        );
        assert_eq!(container["securityContext"]["runAsUser"], 0);
        assert_eq!(container["securityContext"]["runAsNonRoot"], false);
        assert_eq!(
            pod["volumes"][0]["hostPath"]["path"],
            "/coverdata/run-1/svc"
        );
        assert!(
            pod["containers"][1].get("env").is_none(),
            "a container running another image is left alone"
        );
    }

    #[test]
    fn nothing_changes_without_an_instrumented_image() {
        let mut objects = vec![deployment("localhost/svc:abc")];
        let before = objects[0].data.clone();
        assert!(instrument(&mut objects, &BTreeSet::new(), "run-1").is_empty());
        assert_eq!(objects[0].data, before);
    }

    #[test]
    fn statements_count_each_block_once_covered_if_any_process_ran_it() {
        let profile = "mode: set\n\
            m/pkg/a.go:1.1,2.2 3 1\n\
            m/pkg/a.go:3.1,4.2 2 0\n\
            m/pkg/a.go:3.1,4.2 2 1\n\
            m/pkg/b.go:1.1,9.2 5 0\n";
        assert_eq!(statements(profile), (5, 10));
        assert_eq!(percent(5, 10), 50.0);
        assert_eq!(statements("mode: set\n"), (0, 0));
    }

    #[test]
    fn unpack_keeps_this_runs_files_only() {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, body) in [
            ("run-1/svc/covmeta.1", "meta"),
            ("run-1/svc/covcounters.1.2.3", "counters"),
            ("run-2/svc/covmeta.9", "another run"),
            ("run-1/stray", "not a workload's"),
        ] {
            let mut header = tar::Header::new_gnu();
            header.set_size(body.len() as u64);
            header.set_mode(0o644);
            header.set_cksum();
            builder
                .append_data(&mut header, path, body.as_bytes())
                .unwrap();
        }
        let archive = builder.into_inner().unwrap();
        let out = tempfile::tempdir().unwrap();
        unpack(&archive, "run-1", out.path()).unwrap();
        let mut files: Vec<String> = std::fs::read_dir(out.path().join("svc"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        assert_eq!(files, ["covcounters.1.2.3", "covmeta.1"]);
        assert_eq!(std::fs::read_dir(out.path()).unwrap().count(), 1);
    }

    #[test]
    fn the_report_says_why_a_workload_has_no_percentage() {
        let report = CoverageReport {
            not_collected: None,
            workloads: vec![
                WorkloadCoverage {
                    workload: "a".into(),
                    percent: Some(62.5),
                    statements: Some((5, 8)),
                    profile: Some("r/coverage/a.out".into()),
                    note: None,
                },
                WorkloadCoverage {
                    workload: "b".into(),
                    percent: None,
                    statements: None,
                    profile: None,
                    note: Some("no coverage data".into()),
                },
            ],
        };
        let lines = report.lines();
        assert!(lines.contains("coverage: a 62.5% (5/8 statements), profile r/coverage/a.out"));
        assert!(lines.contains("coverage: b not measured: no coverage data"));
        assert_eq!(
            CoverageReport::not_collected("the sim runs no containers").lines(),
            "coverage: not collected: the sim runs no containers\n"
        );
    }
}
