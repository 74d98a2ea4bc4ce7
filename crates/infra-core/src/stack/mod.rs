//! Generic components a service crate composes: [`postgres`], [`redis`],
//! [`migrations`], [`namespace`], third-party [`images`], and the small
//! manifest builders recipes write their own services with ([`object`],
//! [`deployment`], [`service`], ...). A [`Component`] is what to apply plus
//! what "ready" means;
//! manifests are written as JSON literals so they read like the YAML they
//! replace, and a test round-trips each through its k8s-openapi type so a
//! misspelt field cannot slip through.

pub mod images;
pub mod manifests;
pub mod migrations;
pub mod postgres;
pub mod redis;
pub mod tls;

use std::time::Duration;

use kube::api::DynamicObject;

use crate::deploy::wait::{Target, Workload, wait_all};
use crate::deploy::{Applied, Applier, DeployError};

/// Something to deploy: its objects, and the workloads whose readiness means
/// it is up.
#[derive(Debug, Clone)]
pub struct Component {
    pub name: String,
    pub objects: Vec<DynamicObject>,
    pub ready: Vec<Target>,
}

impl Component {
    /// Applies every object (server-side apply, dependency order).
    pub async fn deploy(&self, applier: &Applier) -> Result<Vec<Applied>, DeployError> {
        applier.apply_all(self.objects.clone()).await
    }

    /// Waits for every readiness target, failing fast on broken pods.
    pub async fn wait(&self, client: &kube::Client) -> Result<(), DeployError> {
        Ok(wait_all(client, &self.ready).await?)
    }
}

/// Builds a [`DynamicObject`] from a JSON literal.
#[allow(
    clippy::expect_used,
    reason = "the stack's manifests are built in code and covered by its tests"
)]
///
/// # Panics
/// When the literal is not a Kubernetes object (apiVersion, kind, metadata):
/// a bug in the recipe that its unit tests catch.
pub fn object(value: serde_json::Value) -> DynamicObject {
    serde_json::from_value(value).expect("stack manifests are valid objects")
}

/// A labelled Namespace.
pub fn namespace(name: &str) -> Component {
    Component {
        name: format!("namespace {name}"),
        objects: vec![object(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": {"name": name, "labels": {"app.kubernetes.io/part-of": "kind-e2e"}},
        }))],
        ready: Vec::new(),
    }
}

/// The labels every stack object carries.
pub fn labels(name: &str) -> serde_json::Value {
    serde_json::json!({"app": name, "app.kubernetes.io/part-of": "kind-e2e"})
}

/// A one-replica Deployment of `pod_spec`, its pods labelled and selected by
/// `app=<name>`.
pub fn deployment(namespace: &str, name: &str, pod_spec: serde_json::Value) -> DynamicObject {
    object(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(name)},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {"metadata": {"labels": labels(name)}, "spec": pod_spec}
        }
    }))
}

/// A Service port to the same container port, on `node_port` when given.
pub fn service_port(name: &str, port: u16, node_port: Option<u16>) -> serde_json::Value {
    let mut value = serde_json::json!({"name": name, "port": port, "targetPort": port});
    if let Some(node_port) = node_port {
        value["nodePort"] = serde_json::json!(node_port);
    }
    value
}

/// A Service for the pods `app=<name>`: NodePort when a port has one.
pub fn service(namespace: &str, name: &str, ports: Vec<serde_json::Value>) -> DynamicObject {
    let node_port = ports.iter().any(|p| p.get("nodePort").is_some());
    object(serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": name, "namespace": namespace, "labels": labels(name)},
        "spec": {
            "type": if node_port { "NodePort" } else { "ClusterIP" },
            "selector": {"app": name},
            "ports": ports
        }
    }))
}

/// Ready when the Deployment `namespace/name` is Available.
pub fn deployment_ready(namespace: &str, name: &str, timeout: Duration) -> Target {
    Target::new(Workload::Deployment, namespace, name, timeout)
}

/// For recipes' unit tests (with the `testing` feature).
#[cfg(any(test, feature = "testing"))]
#[allow(
    clippy::unwrap_used,
    reason = "a test helper: a failure is the test's failure"
)]
pub mod test_support {
    use kube::api::DynamicObject;

    /// Deserialises `object` into its k8s-openapi type and back: any field the
    /// type does not know is dropped on the way, so the two must be equal.
    pub fn assert_round_trips(object: &DynamicObject) {
        use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
        let value = serde_json::to_value(object).unwrap();
        let kind = value["kind"].as_str().unwrap().to_string();
        fn check<K: serde::de::DeserializeOwned + serde::Serialize>(value: &serde_json::Value) {
            let typed: K =
                serde_json::from_value(value.clone()).unwrap_or_else(|e| panic!("{e}: {value:#}"));
            let back = serde_json::to_value(&typed).unwrap();
            assert_eq!(&back, value, "a field was lost: check its spelling");
        }
        match kind.as_str() {
            "Namespace" => check::<core::Namespace>(&value),
            "Secret" => check::<core::Secret>(&value),
            "ConfigMap" => check::<core::ConfigMap>(&value),
            "Service" => check::<core::Service>(&value),
            "Deployment" => check::<apps::Deployment>(&value),
            "Job" => check::<batch::Job>(&value),
            other => panic!("no round-trip check for {other}"),
        }
    }
}
