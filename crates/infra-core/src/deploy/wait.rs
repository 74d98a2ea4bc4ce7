//! Readiness by watching, never by polling: [`wait_ready`] watches one
//! workload until its readiness condition holds, while watching its pods for
//! the failures that will never heal on their own (`ErrImageNeverPull`,
//! `ImagePullBackOff`, `CrashLoopBackOff`, ...). The first such failure ends
//! the wait at once, with the pod's last log lines and events in the error.
//!
//! The readiness rules are small conditions in [`conditions`], in the shape of
//! kube-runtime's own.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, LogParams};
use kube::runtime::wait::await_condition;
use kube::runtime::{WatchStreamExt, watcher};

/// Waiting reasons that mean a pod will not start without someone acting.
pub const FATAL_REASONS: &[&str] = &[
    "ErrImageNeverPull",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CrashLoopBackOff",
    "CreateContainerConfigError",
    "CreateContainerError",
];

/// The kinds [`wait_ready`] knows how to wait for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Workload {
    Deployment,
    StatefulSet,
    DaemonSet,
    Job,
    Pod,
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// One thing to wait for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Target {
    pub kind: Workload,
    pub namespace: String,
    pub name: String,
    /// How long it may take.
    pub timeout: Duration,
}

impl Target {
    pub fn new(kind: Workload, namespace: &str, name: &str, timeout: Duration) -> Target {
        Target {
            kind,
            namespace: namespace.to_string(),
            name: name.to_string(),
            timeout,
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Why a wait ended without readiness.
#[derive(Debug, thiserror::Error)]
pub enum WaitError {
    #[error(
        "{kind} {}{name} cannot become ready: pod {pod} is {reason}: {message}{diagnostics}",
        ns(.namespace)
    )]
    Failed {
        kind: String,
        namespace: Option<String>,
        name: String,
        pod: String,
        reason: String,
        message: String,
        diagnostics: String,
    },

    #[error(
        "{kind} {}{name} was not ready after {seconds}s ({state}){diagnostics}",
        ns(.namespace)
    )]
    Timeout {
        kind: String,
        namespace: Option<String>,
        name: String,
        seconds: u64,
        state: String,
        diagnostics: String,
    },

    #[error("watching {what} failed: {message}")]
    Watch { what: String, message: String },
}

fn ns(namespace: &Option<String>) -> String {
    namespace
        .as_deref()
        .map(|n| format!("{n}/"))
        .unwrap_or_default()
}

/// Waits until `target` is ready, failing fast when one of its pods shows a
/// [`FATAL_REASONS`] reason (or its Job fails), and after `target.timeout`.
pub async fn wait_ready(client: &kube::Client, target: &Target) -> Result<(), WaitError> {
    let selector = pod_selector(client, target).await?;
    // A broken watch is watched again (the timeout still bounds the wait); the
    // last watch error is told if the wait times out.
    let last_watch_error = std::sync::Mutex::new(None::<String>);
    let ready = async {
        loop {
            match watch_ready(client, target).await {
                Err(WaitError::Watch { message, .. }) => {
                    *last_watch_error
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(message);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                other => return other,
            }
        }
    };
    let failing = watch_for_failure(client, target, &selector);
    tokio::select! {
        result = ready => result,
        failure = failing => Err(failure),
        () = tokio::time::sleep(target.timeout) => {
            let mut state = describe(client, target).await;
            if let Some(error) = last_watch_error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
                state.push_str(&format!("; last watch error: {error}"));
            }
            let diagnostics = diagnostics_for_selector(client, &target.namespace, &selector).await;
            Err(WaitError::Timeout {
                kind: target.kind.to_string(),
                namespace: Some(target.namespace.clone()),
                name: target.name.clone(),
                seconds: target.timeout.as_secs(),
                state,
                diagnostics,
            })
        }
    }
}

/// Waits for every target concurrently; the first failure wins.
pub async fn wait_all(client: &kube::Client, targets: &[Target]) -> Result<(), WaitError> {
    futures::future::try_join_all(targets.iter().map(|t| wait_ready(client, t)))
        .await
        .map(|_| ())
}

async fn watch_ready(client: &kube::Client, target: &Target) -> Result<(), WaitError> {
    let ns = &target.namespace;
    let name = &target.name;
    let watch_error = |e: kube::runtime::wait::Error| WaitError::Watch {
        what: target.to_string(),
        message: crate::error_chain(&e),
    };
    match target.kind {
        Workload::Deployment => {
            await_condition(
                Api::<Deployment>::namespaced(client.clone(), ns),
                name,
                conditions::deployment_available(),
            )
            .await
            .map_err(watch_error)?;
        }
        Workload::StatefulSet => {
            await_condition(
                Api::<StatefulSet>::namespaced(client.clone(), ns),
                name,
                conditions::statefulset_ready(),
            )
            .await
            .map_err(watch_error)?;
        }
        Workload::DaemonSet => {
            await_condition(
                Api::<DaemonSet>::namespaced(client.clone(), ns),
                name,
                conditions::daemonset_ready(),
            )
            .await
            .map_err(watch_error)?;
        }
        Workload::Pod => {
            await_condition(
                Api::<Pod>::namespaced(client.clone(), ns),
                name,
                conditions::pod_ready(),
            )
            .await
            .map_err(watch_error)?;
        }
        Workload::Job => {
            let job = await_condition(
                Api::<Job>::namespaced(client.clone(), ns),
                name,
                conditions::job_finished(),
            )
            .await
            .map_err(watch_error)?;
            if let Some(message) = job.as_ref().and_then(conditions::job_failure) {
                let selector = pod_selector(client, target).await.unwrap_or_default();
                return Err(WaitError::Failed {
                    kind: "Job".into(),
                    namespace: Some(ns.clone()),
                    name: name.clone(),
                    pod: "(its pods)".into(),
                    reason: "Failed".into(),
                    message,
                    diagnostics: diagnostics_for_selector(client, ns, &selector).await,
                });
            }
        }
    }
    Ok(())
}

/// The namespaced object `name` of kind `K`, if it exists.
async fn get<K>(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Result<Option<K>, kube::Error>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned,
    K::DynamicType: Default,
{
    Api::<K>::namespaced(client.clone(), namespace)
        .get_opt(name)
        .await
}

/// The label selector of the target's pods (`metadata.name` for a pod).
async fn pod_selector(client: &kube::Client, target: &Target) -> Result<PodSelector, WaitError> {
    let ns = &target.namespace;
    let get_error = |e: kube::Error| WaitError::Watch {
        what: target.to_string(),
        message: super::api_message(&e),
    };
    let labels = |m: Option<BTreeMap<String, String>>| {
        PodSelector::Labels(join_labels(&m.unwrap_or_default()))
    };
    // The object may not exist yet (applied a moment ago, or about to be): then
    // select nothing until it does; readiness still waits for it.
    let selector = match target.kind {
        Workload::Pod => PodSelector::Name(target.name.clone()),
        Workload::Deployment => get::<Deployment>(client, ns, &target.name)
            .await
            .map_err(get_error)?
            .and_then(|d| d.spec.map(|s| s.selector.match_labels))
            .map_or(PodSelector::None, labels),
        Workload::StatefulSet => get::<StatefulSet>(client, ns, &target.name)
            .await
            .map_err(get_error)?
            .and_then(|d| d.spec.map(|s| s.selector.match_labels))
            .map_or(PodSelector::None, labels),
        Workload::DaemonSet => get::<DaemonSet>(client, ns, &target.name)
            .await
            .map_err(get_error)?
            .and_then(|d| d.spec.map(|s| s.selector.match_labels))
            .map_or(PodSelector::None, labels),
        // The Job controller labels its pods with the job's name.
        Workload::Job => PodSelector::Labels(format!("job-name={}", target.name)),
    };
    Ok(selector)
}

#[derive(Debug, Clone, Default)]
enum PodSelector {
    #[default]
    None,
    Labels(String),
    Name(String),
}

impl PodSelector {
    fn config(&self) -> Option<watcher::Config> {
        match self {
            PodSelector::None => None,
            PodSelector::Labels(l) if l.is_empty() => None,
            PodSelector::Labels(l) => Some(watcher::Config::default().labels(l)),
            PodSelector::Name(n) => {
                Some(watcher::Config::default().fields(&format!("metadata.name={n}")))
            }
        }
    }
}

fn join_labels(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Resolves with the first fatal pod failure; never resolves otherwise.
async fn watch_for_failure(
    client: &kube::Client,
    target: &Target,
    selector: &PodSelector,
) -> WaitError {
    let Some(config) = selector.config() else {
        return futures::future::pending().await;
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &target.namespace);
    let mut stream = watcher::watcher(pods, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    while let Some(event) = stream.next().await {
        // A watch error is retried by the watcher (with backoff); keep looking.
        let Ok(pod) = event else { continue };
        if let Some((reason, message)) = fatal_reason(&pod) {
            let pod_name = pod.metadata.name.clone().unwrap_or_default();
            return WaitError::Failed {
                kind: target.kind.to_string(),
                namespace: Some(target.namespace.clone()),
                name: target.name.clone(),
                pod: pod_name.clone(),
                reason,
                message,
                diagnostics: pod_diagnostics(client, &target.namespace, &pod_name).await,
            };
        }
    }
    futures::future::pending().await
}

/// The first fatal waiting reason among the pod's containers and init containers.
pub fn fatal_reason(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    let statuses = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in statuses {
        let Some(waiting) = container.state.as_ref().and_then(|s| s.waiting.as_ref()) else {
            continue;
        };
        let reason = waiting.reason.clone().unwrap_or_default();
        if FATAL_REASONS.contains(&reason.as_str()) {
            let message = waiting.message.clone().unwrap_or_default();
            return Some((reason, format!("container {}: {message}", container.name)));
        }
    }
    None
}

/// The pod's last log lines and its events, formatted for an error message.
pub async fn pod_diagnostics(client: &kube::Client, namespace: &str, pod: &str) -> String {
    let mut text = String::new();
    let logs = Api::<Pod>::namespaced(client.clone(), namespace)
        .logs(
            pod,
            &LogParams {
                tail_lines: Some(20),
                ..LogParams::default()
            },
        )
        .await;
    match logs {
        Ok(logs) if !logs.trim().is_empty() => {
            text.push_str(&format!("\n  last log lines of {pod}:\n"));
            for line in logs.lines() {
                text.push_str(&format!("    {line}\n"));
            }
        }
        _ => {}
    }
    let events = events_for(client, namespace, pod).await;
    if !events.is_empty() {
        text.push_str(&format!("\n  events of {pod}:\n"));
        for line in events {
            text.push_str(&format!("    {line}\n"));
        }
    }
    text
}

async fn diagnostics_for_selector(
    client: &kube::Client,
    namespace: &str,
    selector: &PodSelector,
) -> String {
    let params = match selector {
        PodSelector::None => return String::new(),
        PodSelector::Labels(l) => ListParams::default().labels(l),
        PodSelector::Name(n) => ListParams::default().fields(&format!("metadata.name={n}")),
    };
    let Ok(pods) = Api::<Pod>::namespaced(client.clone(), namespace)
        .list(&params)
        .await
    else {
        return String::new();
    };
    let mut text = String::new();
    for pod in pods.items.iter().take(3) {
        let name = pod.metadata.name.clone().unwrap_or_default();
        let phase = pod
            .status
            .as_ref()
            .and_then(|s| s.phase.clone())
            .unwrap_or_else(|| "Unknown".into());
        text.push_str(&format!("\n  pod {name}: {phase}"));
        if let Some((reason, message)) = waiting_reason(pod) {
            text.push_str(&format!(" ({reason}: {message})"));
        }
        text.push_str(&pod_diagnostics(client, namespace, &name).await);
    }
    text
}

fn waiting_reason(pod: &Pod) -> Option<(String, String)> {
    let status = pod.status.as_ref()?;
    status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find_map(|c| {
            let waiting = c.state.as_ref()?.waiting.as_ref()?;
            Some((
                waiting.reason.clone().unwrap_or_default(),
                waiting.message.clone().unwrap_or_default(),
            ))
        })
}

/// Events whose involved object is `name`, oldest first, as
/// `Type Reason: message` lines.
async fn events_for(client: &kube::Client, namespace: &str, name: &str) -> Vec<String> {
    let Ok(events) = Api::<Event>::namespaced(client.clone(), namespace)
        .list(&ListParams::default())
        .await
    else {
        return Vec::new();
    };
    let mut lines: Vec<String> = events
        .items
        .iter()
        .filter(|e| e.involved_object.name.as_deref() == Some(name))
        .map(|e| {
            format!(
                "{} {}: {}",
                e.type_.clone().unwrap_or_default(),
                e.reason.clone().unwrap_or_default(),
                e.message.clone().unwrap_or_default()
            )
        })
        .collect();
    lines.dedup();
    let keep = lines.len().saturating_sub(10);
    lines.split_off(keep)
}

/// A one-line summary of the target's current state, for timeouts.
async fn describe(client: &kube::Client, target: &Target) -> String {
    let ns = &target.namespace;
    let name = &target.name;
    let missing = || "it does not exist".to_string();
    match target.kind {
        Workload::Deployment => match get::<Deployment>(client, ns, name).await {
            Ok(Some(d)) => {
                let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                let status = d.status.unwrap_or_default();
                format!(
                    "{}/{want} replicas available, {} updated",
                    status.available_replicas.unwrap_or(0),
                    status.updated_replicas.unwrap_or(0)
                )
            }
            _ => missing(),
        },
        Workload::StatefulSet => match get::<StatefulSet>(client, ns, name).await {
            Ok(Some(s)) => {
                let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
                format!(
                    "{}/{want} replicas ready",
                    s.status.and_then(|s| s.ready_replicas).unwrap_or(0)
                )
            }
            _ => missing(),
        },
        Workload::DaemonSet => match get::<DaemonSet>(client, ns, name).await {
            Ok(Some(d)) => {
                let status = d.status.unwrap_or_default();
                format!(
                    "{}/{} pods ready",
                    status.number_ready, status.desired_number_scheduled
                )
            }
            _ => missing(),
        },
        Workload::Job => match get::<Job>(client, ns, name).await {
            Ok(Some(j)) => {
                let status = j.status.unwrap_or_default();
                format!(
                    "{} active, {} succeeded, {} failed",
                    status.active.unwrap_or(0),
                    status.succeeded.unwrap_or(0),
                    status.failed.unwrap_or(0)
                )
            }
            _ => missing(),
        },
        Workload::Pod => match get::<Pod>(client, ns, name).await {
            Ok(Some(p)) => format!(
                "phase {}",
                p.status
                    .and_then(|s| s.phase)
                    .unwrap_or_else(|| "Unknown".into())
            ),
            _ => missing(),
        },
    }
}

/// Readiness rules, one small constructor each.
pub mod conditions {
    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
    use k8s_openapi::api::batch::v1::Job;
    use k8s_openapi::api::core::v1::Pod;
    use kube::runtime::wait::Condition;

    fn generation_observed(generation: Option<i64>, observed: Option<i64>) -> bool {
        match (generation, observed) {
            (Some(g), Some(o)) => o >= g,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// The rollout is complete, as `kubectl rollout status` judges it: every
    /// replica is of the current template, no old replica is left, every
    /// updated one is available, and the Deployment says `Available=True`.
    #[must_use]
    pub fn deployment_available() -> impl Condition<Deployment> {
        |obj: Option<&Deployment>| {
            let Some(d) = obj else { return false };
            let Some(status) = &d.status else {
                return false;
            };
            let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            let available = status
                .conditions
                .iter()
                .flatten()
                .any(|c| c.type_ == "Available" && c.status == "True");
            let updated = status.updated_replicas.unwrap_or(0);
            generation_observed(d.metadata.generation, status.observed_generation)
                && updated >= want
                && status.replicas.unwrap_or(0) <= updated
                && status.available_replicas.unwrap_or(0) >= updated
                && (available || want == 0)
        }
    }

    /// Every replica is ready.
    #[must_use]
    pub fn statefulset_ready() -> impl Condition<StatefulSet> {
        |obj: Option<&StatefulSet>| {
            let Some(s) = obj else { return false };
            let Some(status) = &s.status else {
                return false;
            };
            let want = s.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
            generation_observed(s.metadata.generation, status.observed_generation)
                && status.ready_replicas.unwrap_or(0) >= want
        }
    }

    /// A pod is ready on every node it should run on.
    #[must_use]
    pub fn daemonset_ready() -> impl Condition<DaemonSet> {
        |obj: Option<&DaemonSet>| {
            let Some(d) = obj else { return false };
            let Some(status) = &d.status else {
                return false;
            };
            generation_observed(d.metadata.generation, status.observed_generation)
                && status.desired_number_scheduled > 0
                && status.number_ready >= status.desired_number_scheduled
        }
    }

    /// The Job completed or failed (tell which with [`job_failure`]).
    #[must_use]
    pub fn job_finished() -> impl Condition<Job> {
        |obj: Option<&Job>| {
            obj.and_then(|j| j.status.as_ref())
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|conditions| {
                    conditions.iter().any(|c| {
                        (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True"
                    })
                })
        }
    }

    /// Why the Job failed, if it did.
    pub fn job_failure(job: &Job) -> Option<String> {
        let conditions = job.status.as_ref()?.conditions.as_ref()?;
        let failed = conditions
            .iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")?;
        Some(format!(
            "{}: {}",
            failed.reason.clone().unwrap_or_default(),
            failed.message.clone().unwrap_or_default()
        ))
    }

    /// Ready, or finished successfully.
    #[must_use]
    pub fn pod_ready() -> impl Condition<Pod> {
        |obj: Option<&Pod>| {
            let Some(status) = obj.and_then(|p| p.status.as_ref()) else {
                return false;
            };
            status.phase.as_deref() == Some("Succeeded")
                || status
                    .conditions
                    .iter()
                    .flatten()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::conditions::*;
    use super::*;
    use kube::runtime::wait::Condition;
    use serde_json::json;

    fn deployment(value: serde_json::Value) -> Deployment {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn deployment_needs_the_current_generation_available() {
        let ready = deployment(json!({
            "metadata": {"name": "d", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2,
                "conditions": [{"type": "Available", "status": "True"}]}
        }));
        assert!(deployment_available().matches_object(Some(&ready)));
        let stale = deployment(json!({
            "metadata": {"name": "d", "generation": 3},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "updatedReplicas": 2, "availableReplicas": 2,
                "conditions": [{"type": "Available", "status": "True"}]}
        }));
        assert!(!deployment_available().matches_object(Some(&stale)));
        let partly = deployment(json!({
            "metadata": {"name": "d", "generation": 1},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "updatedReplicas": 2, "availableReplicas": 1,
                "conditions": [{"type": "Available", "status": "True"}]}
        }));
        assert!(!deployment_available().matches_object(Some(&partly)));
        assert!(!deployment_available().matches_object(None));
        // Mid-rollout: the new pod is up, the old one still serves.
        let rolling = deployment(json!({
            "metadata": {"name": "d", "generation": 2},
            "spec": {"replicas": 1, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 1,
                "availableReplicas": 2, "conditions": [{"type": "Available", "status": "True"}]}
        }));
        assert!(!deployment_available().matches_object(Some(&rolling)));
    }

    #[test]
    fn jobs_finish_either_way_and_failure_is_told_apart() {
        let done: Job = serde_json::from_value(json!({"metadata": {"name": "j"},
            "status": {"conditions": [{"type": "Complete", "status": "True"}]}}))
        .unwrap();
        assert!(job_finished().matches_object(Some(&done)));
        assert!(job_failure(&done).is_none());
        let failed: Job = serde_json::from_value(json!({"metadata": {"name": "j"},
            "status": {"conditions": [{"type": "Failed", "status": "True",
                "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}}))
        .unwrap();
        assert!(job_finished().matches_object(Some(&failed)));
        assert!(
            job_failure(&failed)
                .unwrap()
                .contains("BackoffLimitExceeded")
        );
    }

    #[test]
    fn fatal_reasons_are_found_in_init_and_regular_containers() {
        let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "status": {"containerStatuses": [{"name": "ds", "ready": false, "restartCount": 0,
                "image": "localhost/x:1", "imageID": "",
                "state": {"waiting": {"reason": "ErrImageNeverPull",
                    "message": "Container image \"localhost/x:1\" is not present with pull policy of Never"}}}]}}))
        .unwrap();
        let (reason, message) = fatal_reason(&pod).unwrap();
        assert_eq!(reason, "ErrImageNeverPull");
        assert!(message.contains("container ds") && message.contains("localhost/x:1"));
        let starting: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
            "status": {"initContainerStatuses": [{"name": "init", "ready": false, "restartCount": 0,
                "image": "x", "imageID": "", "state": {"waiting": {"reason": "PodInitializing"}}}]}}))
        .unwrap();
        assert!(fatal_reason(&starting).is_none());
    }
}
