//! Deploying with kube-rs only (no kubectl): server-side apply of typed
//! objects and of multi-document YAML of any kind ([`Applier`]), image
//! references set on named containers ([`set_container_image`]), readiness by
//! watching with fail-fast diagnostics ([`wait`]), and HTTP health checks
//! ([`health`]).

pub mod health;
pub mod wait;

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::{ApiCapabilities, ApiResource, Scope};
use serde::Serialize;

/// How long one apply or discovery request may take: a frozen API server
/// must end the run with an error, not hang it.
const REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Errors of deploying. Each names the object (kind, namespace, name).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("manifest {source_name} document {index}: {problem}")]
    Manifest {
        source_name: String,
        index: usize,
        problem: String,
    },

    #[error(
        "{kind} is not served by the cluster (apiVersion {api_version}); apply its \
         CustomResourceDefinition first, or check the apiVersion"
    )]
    UnknownKind { api_version: String, kind: String },

    #[error("applying {kind} {}{name} failed: {message}", ns_prefix(.namespace))]
    Apply {
        kind: String,
        namespace: Option<String>,
        name: String,
        message: String,
    },

    #[error("{kind} {name} has no container named `{container}` (it has: {found})")]
    NoSuchContainer {
        kind: String,
        name: String,
        container: String,
        found: String,
    },

    #[error(transparent)]
    Wait(#[from] wait::WaitError),

    #[error(transparent)]
    Health(#[from] health::HealthError),

    #[error(
        "{what}: the API server did not answer within {seconds}s (is it running, or frozen? \
         `cargo xtask status` shows whether the cluster answers)"
    )]
    NoAnswer { what: String, seconds: u64 },

    #[error("the cluster's API failed while {what}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn ns_prefix(namespace: &Option<String>) -> String {
    namespace
        .as_deref()
        .map(|ns| format!("{ns}/"))
        .unwrap_or_default()
}

/// What was applied: enough to find it again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Applied {
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

/// Server-side apply through one field manager, with kinds resolved through
/// discovery (cached), and labels added to every object applied (run id,
/// service). The one apply path everything uses.
pub struct Applier {
    client: kube::Client,
    field_manager: String,
    labels: BTreeMap<String, String>,
    template_labels: BTreeMap<String, String>,
    kinds: Mutex<HashMap<GroupVersionKind, (ApiResource, ApiCapabilities)>>,
    crd_timeout: Duration,
    request_timeout: Duration,
}

impl Applier {
    pub fn new(client: kube::Client, field_manager: impl Into<String>) -> Applier {
        Applier {
            client,
            field_manager: field_manager.into(),
            labels: BTreeMap::new(),
            template_labels: BTreeMap::new(),
            kinds: Mutex::new(HashMap::new()),
            crd_timeout: Duration::from_secs(60),
            request_timeout: REQUEST_TIMEOUT,
        }
    }

    /// How long one apply or discovery request may take (default 30 s).
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Labels put on every object this applier applies.
    #[must_use]
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.labels = labels;
        self
    }

    /// Labels put on the pod templates of every workload applied, so the pods
    /// controllers make carry them too. Keep these stable across runs (the
    /// service, not the run id): a changed template restarts every pod.
    #[must_use]
    pub fn with_template_labels(mut self, labels: BTreeMap<String, String>) -> Self {
        self.template_labels = labels;
        self
    }

    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Applies a typed object (any k8s-openapi type or custom resource).
    pub async fn apply<K>(&self, object: &K) -> Result<Applied, DeployError>
    where
        K: Serialize,
    {
        let value = serde_json::to_value(object).map_err(|e| DeployError::Manifest {
            source_name: "typed object".into(),
            index: 0,
            problem: e.to_string(),
        })?;
        let dynamic: DynamicObject =
            serde_json::from_value(value).map_err(|e| DeployError::Manifest {
                source_name: "typed object".into(),
                index: 0,
                problem: format!("not a Kubernetes object: {e}"),
            })?;
        self.apply_dynamic(dynamic).await
    }

    /// Applies every object of `objects` in dependency order: CRDs first (then
    /// waits until they are Established), Namespaces next, then the rest in
    /// the order given.
    pub async fn apply_all(
        &self,
        objects: Vec<DynamicObject>,
    ) -> Result<Vec<Applied>, DeployError> {
        let (crds, rest): (Vec<_>, Vec<_>) = objects
            .into_iter()
            .partition(|o| kind_of(o) == "CustomResourceDefinition");
        let (namespaces, rest): (Vec<_>, Vec<_>) =
            rest.into_iter().partition(|o| kind_of(o) == "Namespace");
        let mut applied = Vec::new();
        for crd in crds {
            let done = self.apply_dynamic(crd).await?;
            self.wait_crd_established(&done.name).await?;
            applied.push(done);
        }
        for object in namespaces.into_iter().chain(rest) {
            applied.push(self.apply_dynamic(object).await?);
        }
        Ok(applied)
    }

    /// Parses multi-document YAML (`---`-separated; empty documents and `List`
    /// kinds are handled) and applies it with [`Applier::apply_all`].
    pub async fn apply_yaml(
        &self,
        source_name: &str,
        yaml: &str,
    ) -> Result<Vec<Applied>, DeployError> {
        self.apply_all(parse_manifests(source_name, yaml)?).await
    }

    /// Applies one object of any kind the cluster serves.
    pub async fn apply_dynamic(&self, mut object: DynamicObject) -> Result<Applied, DeployError> {
        let types = object.types.clone().ok_or_else(|| DeployError::Manifest {
            source_name: object.metadata.name.clone().unwrap_or_default(),
            index: 0,
            problem: "apiVersion and kind are required".into(),
        })?;
        let gvk = GroupVersionKind::try_from(&types).map_err(|e| DeployError::Manifest {
            source_name: object.metadata.name.clone().unwrap_or_default(),
            index: 0,
            problem: e.to_string(),
        })?;
        let name = object
            .metadata
            .name
            .clone()
            .ok_or_else(|| DeployError::Manifest {
                source_name: format!("{} (kind {})", types.api_version, types.kind),
                index: 0,
                problem: "metadata.name is required".into(),
            })?;
        let (resource, capabilities) = self.resolve(&gvk).await?;
        add_pod_template_labels(&gvk, &mut object.data, &self.template_labels);
        if !self.labels.is_empty() {
            let labels = object.metadata.labels.get_or_insert_with(BTreeMap::new);
            for (key, value) in &self.labels {
                labels.entry(key.clone()).or_insert_with(|| value.clone());
            }
        }
        let api: Api<DynamicObject> = match capabilities.scope {
            Scope::Cluster => {
                object.metadata.namespace = None;
                Api::all_with(self.client.clone(), &resource)
            }
            Scope::Namespaced => {
                let namespace = object
                    .metadata
                    .namespace
                    .get_or_insert_with(|| "default".into())
                    .clone();
                Api::namespaced_with(self.client.clone(), &namespace, &resource)
            }
        };
        let params = PatchParams::apply(&self.field_manager).force();
        let what = || format!("applying {} {name}", types.kind);
        tokio::time::timeout(
            self.request_timeout,
            api.patch(&name, &params, &Patch::Apply(&object)),
        )
        .await
        .map_err(|_| DeployError::NoAnswer {
            what: what(),
            seconds: self.request_timeout.as_secs(),
        })?
        .map_err(|e| DeployError::Apply {
            kind: types.kind.clone(),
            namespace: object.metadata.namespace.clone(),
            name: name.clone(),
            message: api_message(&e),
        })?;
        Ok(Applied {
            api_version: types.api_version,
            kind: types.kind,
            namespace: object.metadata.namespace,
            name,
        })
    }

    async fn resolve(
        &self,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, ApiCapabilities), DeployError> {
        if let Some(found) = self
            .kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(gvk)
        {
            return Ok(found.clone());
        }
        let found = tokio::time::timeout(
            self.request_timeout,
            kube::discovery::pinned_kind(&self.client, gvk),
        )
        .await
        .map_err(|_| DeployError::NoAnswer {
            what: format!(
                "resolving {} {} through discovery",
                gvk.api_version(),
                gvk.kind
            ),
            seconds: self.request_timeout.as_secs(),
        })?
        .map_err(|error| match &error {
            // The group/version or the kind is not served: a missing CRD or
            // a wrong apiVersion. Anything else is the API failing.
            kube::Error::Discovery(_) => DeployError::UnknownKind {
                api_version: gvk.api_version(),
                kind: gvk.kind.clone(),
            },
            kube::Error::Api(status) if status.code == 404 => DeployError::UnknownKind {
                api_version: gvk.api_version(),
                kind: gvk.kind.clone(),
            },
            _ => DeployError::Kube {
                what: format!(
                    "resolving {} {} through discovery",
                    gvk.api_version(),
                    gvk.kind
                ),
                source: error,
            },
        })?;
        self.kinds
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(gvk.clone(), found.clone());
        Ok(found)
    }

    async fn wait_crd_established(&self, name: &str) -> Result<(), DeployError> {
        let crds: Api<CustomResourceDefinition> = Api::all(self.client.clone());
        let established = kube::runtime::wait::await_condition(
            crds,
            name,
            kube::runtime::wait::conditions::is_crd_established(),
        );
        match tokio::time::timeout(self.crd_timeout, established).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(wait::WaitError::Watch {
                what: format!("CustomResourceDefinition {name}"),
                message: crate::error_chain(&e),
            }
            .into()),
            Err(_) => Err(wait::WaitError::Timeout {
                kind: "CustomResourceDefinition".into(),
                namespace: None,
                name: name.into(),
                seconds: self.crd_timeout.as_secs(),
                state: "not Established".into(),
                diagnostics: String::new(),
            }
            .into()),
        }
    }
}

/// Adds `labels` (without overriding) to the pod template of the built-in
/// kinds that have one; any other kind, custom resources included, is left
/// alone, whatever its `spec.template` holds.
fn add_pod_template_labels(
    gvk: &GroupVersionKind,
    data: &mut serde_json::Value,
    labels: &BTreeMap<String, String>,
) {
    let path = match (gvk.group.as_str(), gvk.kind.as_str()) {
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job")
        | ("", "ReplicationController") => "/spec/template",
        ("batch", "CronJob") => "/spec/jobTemplate/spec/template",
        _ => return,
    };
    let Some(template) = data.pointer_mut(path).and_then(|t| t.as_object_mut()) else {
        return;
    };
    let metadata = template
        .entry("metadata")
        .or_insert_with(|| serde_json::json!({}));
    let Some(metadata) = metadata.as_object_mut() else {
        return;
    };
    let existing = metadata
        .entry("labels")
        .or_insert_with(|| serde_json::json!({}));
    let Some(existing) = existing.as_object_mut() else {
        return;
    };
    for (key, value) in labels {
        existing
            .entry(key.clone())
            .or_insert_with(|| serde_json::Value::String(value.clone()));
    }
}

fn kind_of(object: &DynamicObject) -> &str {
    object.types.as_ref().map(|t| t.kind.as_str()).unwrap_or("")
}

/// The API server's own message for a failed request (its Status message),
/// which names the field and the problem.
pub(crate) fn api_message(error: &kube::Error) -> String {
    match error {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.reason),
        other => crate::error_chain(other),
    }
}

/// Splits multi-document YAML into objects. `List` documents are flattened;
/// empty documents are skipped. Errors name the source and the document.
pub fn parse_manifests(source_name: &str, yaml: &str) -> Result<Vec<DynamicObject>, DeployError> {
    use serde::Deserialize;
    let mut objects = Vec::new();
    for (index, document) in yaml_serde::Deserializer::from_str(yaml).enumerate() {
        let error = |problem: String| DeployError::Manifest {
            source_name: source_name.to_string(),
            index: index + 1,
            problem,
        };
        let value = serde_json::Value::deserialize(document).map_err(|e| error(e.to_string()))?;
        if value.is_null() {
            continue;
        }
        let items = if value["kind"] == "List" {
            value["items"].as_array().cloned().unwrap_or_default()
        } else {
            vec![value]
        };
        for item in items {
            if item["apiVersion"].as_str().is_none() || item["kind"].as_str().is_none() {
                return Err(error("apiVersion and kind are required".into()));
            }
            let object: DynamicObject =
                serde_json::from_value(item).map_err(|e| error(e.to_string()))?;
            if object.metadata.name.is_none() {
                return Err(error("metadata.name is required".into()));
            }
            objects.push(object);
        }
    }
    Ok(objects)
}

/// Sets the image of the container (or init container) named `container` in
/// a workload or pod given as JSON: the pod spec is found at
/// `spec.template.spec` (Deployment, StatefulSet, DaemonSet, Job, ReplicaSet),
/// `spec.jobTemplate.spec.template.spec` (CronJob) or `spec` (Pod). Never a
/// string replacement: the image goes exactly where the container is.
pub fn set_container_image(
    object: &mut serde_json::Value,
    container: &str,
    image: &str,
) -> Result<(), DeployError> {
    let kind = object["kind"].as_str().unwrap_or("object").to_string();
    let name = object["metadata"]["name"]
        .as_str()
        .unwrap_or("")
        .to_string();
    let pod_spec = if object["spec"]["template"]["spec"].is_object() {
        &mut object["spec"]["template"]["spec"]
    } else if object["spec"]["jobTemplate"]["spec"]["template"]["spec"].is_object() {
        &mut object["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    } else {
        &mut object["spec"]
    };
    let mut names = Vec::new();
    for list in ["containers", "initContainers"] {
        if let Some(containers) = pod_spec[list].as_array_mut() {
            for entry in containers {
                let entry_name = entry["name"].as_str().unwrap_or_default().to_string();
                if entry_name == container {
                    entry["image"] = serde_json::Value::String(image.to_string());
                    return Ok(());
                }
                names.push(entry_name);
            }
        }
    }
    Err(DeployError::NoSuchContainer {
        kind,
        name,
        container: container.to_string(),
        found: if names.is_empty() {
            "no containers".into()
        } else {
            names.join(", ")
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn manifests_split_skip_empty_and_flatten_lists() {
        let yaml = "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: a\n---\n\n---\n\
            apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: c\n    namespace: a\n";
        let objects = parse_manifests("test.yaml", yaml).unwrap();
        let names: Vec<_> = objects
            .iter()
            .map(|o| o.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(names, ["a", "c"]);
        assert_eq!(kind_of(&objects[1]), "ConfigMap");
    }

    #[test]
    fn manifest_errors_name_the_document() {
        let err = parse_manifests(
            "deploy.yaml",
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n---\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("deploy.yaml document 1") && err.contains("metadata.name"),
            "{err}"
        );
        let err = parse_manifests("x.yaml", "a: b\n---\nkind: [\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("x.yaml document 1"), "{err}");
    }

    #[test]
    fn template_labels_go_on_pod_templates_of_workloads_only() {
        let labels = BTreeMap::from([("io.kind-e2e.service".to_string(), "gw".to_string())]);
        let gvk = |group: &str, kind: &str| GroupVersionKind::gvk(group, "v1", kind);

        let mut cron = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": {}}}}}});
        add_pod_template_labels(&gvk("batch", "CronJob"), &mut cron, &labels);
        assert_eq!(
            cron["spec"]["jobTemplate"]["spec"]["template"]["metadata"]["labels"]["io.kind-e2e.service"],
            "gw"
        );

        let mut deployment = json!({"spec": {"template": {"metadata": {"labels": {"io.kind-e2e.service": "mine"}}}}});
        add_pod_template_labels(&gvk("apps", "Deployment"), &mut deployment, &labels);
        assert_eq!(
            deployment["spec"]["template"]["metadata"]["labels"]["io.kind-e2e.service"], "mine",
            "an existing label is not overridden"
        );

        // A custom resource's `spec.template` is its own business, even a string.
        let mut custom = json!({"spec": {"template": "node-pool-a"}});
        add_pod_template_labels(&gvk("karpenter.sh", "NodePool"), &mut custom, &labels);
        assert_eq!(custom, json!({"spec": {"template": "node-pool-a"}}));
        // A malformed workload is left for the API server to reject, not a panic.
        let mut odd = json!({"spec": {"template": "oops"}});
        add_pod_template_labels(&gvk("apps", "Deployment"), &mut odd, &labels);
        assert_eq!(odd, json!({"spec": {"template": "oops"}}));
    }

    #[tokio::test]
    async fn a_discovery_failure_other_than_not_found_keeps_its_cause() {
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let applier = Applier::new(client, "test");
        let err = applier
            .apply_yaml(
                "x.yaml",
                "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: c\n",
            )
            .await
            .unwrap_err();
        assert!(matches!(err, DeployError::Kube { .. }), "{err:?}");
    }

    #[test]
    fn image_is_set_on_the_named_container_only() {
        let mut deployment = json!({
            "kind": "Deployment", "metadata": {"name": "gw"},
            "spec": {"template": {"spec": {
                "initContainers": [{"name": "init", "image": "busybox"}],
                "containers": [
                    {"name": "web", "image": "localhost/example/web:hardcoded"},
                    {"name": "sidecar", "image": "localhost/example/web:hardcoded"}
                ]}}}
        });
        set_container_image(&mut deployment, "web", "localhost/example/web:gw-0123").unwrap();
        let containers = &deployment["spec"]["template"]["spec"]["containers"];
        assert_eq!(containers[0]["image"], "localhost/example/web:gw-0123");
        assert_eq!(
            containers[1]["image"], "localhost/example/web:hardcoded",
            "a string replacement would have changed the sidecar too"
        );
        set_container_image(&mut deployment, "init", "localhost/init:1").unwrap();
        let err = set_container_image(&mut deployment, "nope", "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("web, sidecar, init"), "{err}");

        let mut pod = json!({"kind": "Pod", "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "image": "old"}]}});
        set_container_image(&mut pod, "c", "new").unwrap();
        assert_eq!(pod["spec"]["containers"][0]["image"], "new");
    }
}
