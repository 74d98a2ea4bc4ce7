//! A component from a folder of YAML manifests, the way a service repository
//! keeps them (`config/crd/bases/`, `deploy/<service>/`): every `*.yaml` and
//! `*.yml` file in name order, multi-document files and `List`s flattened.
//!
//! What a recipe changes is changed structurally, never by string
//! replacement: [`Manifests::in_namespace`] puts namespaced objects (and the
//! ServiceAccount subjects of bindings, and webhook services) in the run's
//! namespace, [`Manifests::image`] sets a container's image by the
//! container's name, and [`Manifests::component`] infers what "ready" means
//! from the workloads found (each Deployment, StatefulSet, DaemonSet and Job).

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::DynamicObject;

use super::Component;
use crate::deploy::wait::{Target, Workload};
use crate::deploy::{DeployError, parse_manifests, set_container_image};

/// Why a manifests folder could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ManifestsError {
    #[error("cannot read manifests folder {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("manifests folder {} holds no *.yaml or *.yml file", path.display())]
    Empty { path: PathBuf },
    #[error(transparent)]
    Parse(#[from] DeployError),
    #[error(
        "no workload in {} has a container named `{container}` (containers found: {found}); \
         name the container as the manifests do",
        path.display()
    )]
    NoContainer {
        path: PathBuf,
        container: String,
        found: String,
    },
}

/// Kinds that live outside any namespace: [`Manifests::in_namespace`] leaves
/// them as they are.
const CLUSTER_SCOPED: &[&str] = &[
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
    "MutatingWebhookConfiguration",
    "ValidatingWebhookConfiguration",
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "APIService",
    "IngressClass",
    "RuntimeClass",
];

/// The objects of one manifests folder.
#[derive(Debug, Clone)]
pub struct Manifests {
    /// The folder they were read from (named in errors).
    pub path: PathBuf,
    /// As JSON, so edits are structural.
    objects: Vec<serde_json::Value>,
}

impl Manifests {
    /// Reads every `*.yaml`/`*.yml` file directly in `dir`, in name order.
    pub fn load(dir: &Path) -> Result<Manifests, ManifestsError> {
        let read = |source| ManifestsError::Read {
            path: dir.to_path_buf(),
            source,
        };
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(read)?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
            })
            .collect();
        files.sort();
        if files.is_empty() {
            return Err(ManifestsError::Empty {
                path: dir.to_path_buf(),
            });
        }
        let mut objects = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(&file).map_err(|source| ManifestsError::Read {
                path: file.clone(),
                source,
            })?;
            for object in parse_manifests(&file.display().to_string(), &text)? {
                objects.push(
                    serde_json::to_value(object).map_err(|e| DeployError::Manifest {
                        source_name: file.display().to_string(),
                        index: 0,
                        problem: e.to_string(),
                    })?,
                );
            }
        }
        Ok(Manifests {
            path: dir.to_path_buf(),
            objects,
        })
    }

    /// Puts every namespaced object without a namespace in `namespace`, and
    /// with it the ServiceAccount subjects of (Cluster)RoleBindings and the
    /// services webhook configurations call, when they name none.
    pub fn in_namespace(mut self, namespace: &str) -> Manifests {
        let ns = serde_json::Value::String(namespace.to_string());
        for object in &mut self.objects {
            let kind = object["kind"].as_str().unwrap_or_default().to_string();
            if !CLUSTER_SCOPED.contains(&kind.as_str()) && object["metadata"]["namespace"].is_null()
            {
                object["metadata"]["namespace"] = ns.clone();
            }
            if kind.ends_with("RoleBinding")
                && let Some(subjects) = object["subjects"].as_array_mut()
            {
                for subject in subjects {
                    if subject["kind"] == "ServiceAccount" && subject["namespace"].is_null() {
                        subject["namespace"] = ns.clone();
                    }
                }
            }
            if kind.ends_with("WebhookConfiguration")
                && let Some(webhooks) = object["webhooks"].as_array_mut()
            {
                for webhook in webhooks {
                    let service = &mut webhook["clientConfig"]["service"];
                    if service.is_object() && service["namespace"].is_null() {
                        service["namespace"] = ns.clone();
                    }
                }
            }
        }
        self
    }

    /// Sets the image of every container named `container` (in any workload
    /// or pod); an error when none has that name, listing the ones found.
    pub fn image(mut self, container: &str, reference: &str) -> Result<Manifests, ManifestsError> {
        let mut set = 0;
        let mut found = Vec::new();
        for object in &mut self.objects {
            if workload_kind(object).is_none() && object["kind"] != "Pod" {
                continue;
            }
            match set_container_image(object, container, reference) {
                Ok(()) => set += 1,
                Err(DeployError::NoSuchContainer { found: names, .. }) => found.push(names),
                Err(other) => return Err(other.into()),
            }
        }
        if set == 0 {
            return Err(ManifestsError::NoContainer {
                path: self.path.clone(),
                container: container.to_string(),
                found: if found.is_empty() {
                    "no workloads".into()
                } else {
                    found.join("; ")
                },
            });
        }
        Ok(self)
    }

    /// Sets `ca_pem` (base64) as the `caBundle` of every webhook of every
    /// webhook configuration: the API server then trusts the webhook's
    /// serving certificate.
    pub fn ca_bundle(mut self, ca_pem: &str) -> Manifests {
        use base64::Engine as _;
        let bundle = base64::engine::general_purpose::STANDARD.encode(ca_pem);
        for object in &mut self.objects {
            let kind = object["kind"].as_str().unwrap_or_default();
            if !kind.ends_with("WebhookConfiguration") {
                continue;
            }
            if let Some(webhooks) = object["webhooks"].as_array_mut() {
                for webhook in webhooks {
                    webhook["clientConfig"]["caBundle"] = serde_json::json!(bundle);
                }
            }
        }
        self
    }

    /// Sets the annotation `key` on the pod template of every workload (a
    /// change rolls its pods).
    pub fn pod_annotation(mut self, key: &str, value: &str) -> Manifests {
        for object in &mut self.objects {
            if workload_kind(object).is_some() && object["spec"]["template"].is_object() {
                object["spec"]["template"]["metadata"]["annotations"][key] =
                    serde_json::json!(value);
            }
        }
        self
    }

    /// The objects, in file order.
    pub fn objects(&self) -> Result<Vec<DynamicObject>, DeployError> {
        self.objects
            .iter()
            .map(|value| {
                serde_json::from_value(value.clone()).map_err(|e| DeployError::Manifest {
                    source_name: self.path.display().to_string(),
                    index: 0,
                    problem: e.to_string(),
                })
            })
            .collect()
    }

    /// The objects as JSON (for checks and tests).
    pub fn values(&self) -> &[serde_json::Value] {
        &self.objects
    }

    /// Ready when every workload in the folder is: each Deployment,
    /// StatefulSet, DaemonSet and Job, each within `timeout`.
    pub fn ready(&self, timeout: Duration) -> Vec<Target> {
        self.objects
            .iter()
            .filter_map(|object| {
                let kind = workload_kind(object)?;
                Some(Target::new(
                    kind,
                    object["metadata"]["namespace"]
                        .as_str()
                        .unwrap_or("default"),
                    object["metadata"]["name"].as_str().unwrap_or_default(),
                    timeout,
                ))
            })
            .collect()
    }

    /// The component: these objects, ready as [`Manifests::ready`] says.
    pub fn component(&self, name: &str, timeout: Duration) -> Result<Component, DeployError> {
        Ok(Component {
            name: name.to_string(),
            objects: self.objects()?,
            ready: self.ready(timeout),
        })
    }
}

fn workload_kind(object: &serde_json::Value) -> Option<Workload> {
    match object["kind"].as_str()? {
        "Deployment" => Some(Workload::Deployment),
        "StatefulSet" => Some(Workload::StatefulSet),
        "DaemonSet" => Some(Workload::DaemonSet),
        "Job" => Some(Workload::Job),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const APP: &str = r#"
apiVersion: v1
kind: ServiceAccount
metadata: {name: gw}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: gw}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: gw}
subjects:
- {kind: ServiceAccount, name: gw}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: gw}
spec:
  selector: {matchLabels: {app: gw}}
  template:
    metadata: {labels: {app: gw}}
    spec:
      initContainers: [{name: fix, image: busybox}]
      containers: [{name: gw, image: placeholder}]
"#;

    fn folder(files: &[(&str, &str)]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        dir
    }

    #[test]
    fn namespaced_objects_and_subjects_go_to_the_namespace_cluster_scoped_ones_stay() {
        let dir = folder(&[("app.yaml", APP), ("README.md", "not a manifest")]);
        let m = Manifests::load(dir.path()).unwrap().in_namespace("ns1");
        let v = m.values();
        assert_eq!(v.len(), 3);
        assert_eq!(v[0]["metadata"]["namespace"], "ns1");
        assert!(v[1]["metadata"]["namespace"].is_null());
        assert_eq!(v[1]["subjects"][0]["namespace"], "ns1");
        assert_eq!(v[2]["metadata"]["namespace"], "ns1");
    }

    #[test]
    fn the_image_is_set_by_container_name_and_readiness_is_inferred() {
        let dir = folder(&[("b.yaml", APP)]);
        let m = Manifests::load(dir.path())
            .unwrap()
            .in_namespace("ns1")
            .image("gw", "localhost/gw:abc")
            .unwrap();
        let m = m.pod_annotation("example.org/rev", "7");
        assert_eq!(
            m.values()[2]["spec"]["template"]["metadata"]["annotations"]["example.org/rev"],
            "7"
        );
        let pod = &m.values()[2]["spec"]["template"]["spec"];
        assert_eq!(pod["containers"][0]["image"], "localhost/gw:abc");
        assert_eq!(pod["initContainers"][0]["image"], "busybox");
        let ready = m.ready(Duration::from_secs(5));
        assert_eq!(
            ready,
            [Target::new(
                Workload::Deployment,
                "ns1",
                "gw",
                Duration::from_secs(5)
            )]
        );
        let err = m.image("server", "x").unwrap_err().to_string();
        assert!(err.contains("`server`") && err.contains("gw, fix"), "{err}");
    }

    #[test]
    fn webhooks_get_the_ca_bundle_and_the_run_namespace() {
        let dir = folder(&[(
            "w.yaml",
            "apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingWebhookConfiguration\n\
             metadata: {name: v}\nwebhooks:\n- name: a.x.io\n  clientConfig:\n    \
             service: {name: hook, path: /validate}\n",
        )]);
        let m = Manifests::load(dir.path())
            .unwrap()
            .in_namespace("ns1")
            .ca_bundle("PEM");
        let hook = &m.values()[0]["webhooks"][0]["clientConfig"];
        assert_eq!(hook["caBundle"], "UEVN");
        assert_eq!(hook["service"]["namespace"], "ns1");
        assert!(m.values()[0]["metadata"]["namespace"].is_null());
    }

    #[test]
    fn an_empty_or_missing_folder_and_a_bad_document_are_named() {
        let empty = folder(&[]);
        let err = Manifests::load(empty.path()).unwrap_err().to_string();
        assert!(err.contains("no *.yaml"), "{err}");
        let err = Manifests::load(&empty.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("nope"), "{err}");
        let bad = folder(&[("a.yaml", "kind: ConfigMap\nmetadata: {name: x}\n")]);
        let err = Manifests::load(bad.path()).unwrap_err().to_string();
        assert!(
            err.contains("a.yaml") && err.contains("apiVersion"),
            "{err}"
        );
    }
}
