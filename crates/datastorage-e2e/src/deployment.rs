//! DataStorage, the service every other service's E2E needs: a ConfigMap with
//! its `config.yaml`, a Secret with the database and Redis credentials, a
//! Deployment running the image that was actually loaded
//! (`imagePullPolicy: Never`, `/health` and `/health/ready` probes), and a
//! Service (NodePort when asked). A coverage run adds `GOCOVERDIR` itself
//! (`infra_core::coverage`).
//!
//! Configuration reaches the container both as `config.yaml` (mounted at
//! `/etc/datastorage/`) and as environment variables (`DATASTORAGE_PORT`,
//! `METRICS_PORT`, `DB_HOST`, `DB_PORT`, `DB_NAME`, `DB_USER`, `DB_PASSWORD`,
//! `DB_SSLMODE`, `REDIS_ADDR`).

use std::time::Duration;

use serde_json::json;

use infra_core::stack::postgres::PostgresConfig;
use infra_core::stack::redis::RedisConfig;
use infra_core::stack::{
    Component, deployment, deployment_ready, labels, object, service, service_port,
};

/// The container name the image is set on.
pub const CONTAINER: &str = "datastorage";
pub const API_PORT: u16 = 8080;
pub const METRICS_PORT: u16 = 9181;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataStorageConfig {
    pub namespace: String,
    pub name: String,
    /// The fully qualified reference that was loaded into the nodes.
    pub image: String,
    /// Publish the API on this NodePort (the original used 30081).
    pub node_port: Option<u16>,
    pub postgres: PostgresConfig,
    pub redis_address: String,
    pub timeout: Duration,
}

impl DataStorageConfig {
    pub fn new(image: &str, postgres: &PostgresConfig, redis: &RedisConfig) -> DataStorageConfig {
        DataStorageConfig {
            namespace: postgres.namespace.clone(),
            name: "datastorage".into(),
            image: image.to_string(),
            node_port: None,
            postgres: postgres.clone(),
            redis_address: redis.address(),
            timeout: Duration::from_secs(180),
        }
    }

    #[must_use]
    pub fn node_port(mut self, port: u16) -> Self {
        self.node_port = Some(port);
        self
    }

    /// The label selector of its pods.
    pub fn pod_selector(&self) -> String {
        format!("app={}", self.name)
    }

    pub fn component(&self) -> Component {
        let ns = &self.namespace;
        let name = &self.name;
        let pg = &self.postgres;
        let labels = labels(name);
        let config_yaml = format!(
            "server:\n  port: {API_PORT}\n  metricsPort: {METRICS_PORT}\n\
             database:\n  host: {host}\n  port: 5432\n  name: {db}\n  user: {user}\n  sslMode: disable\n\
             redis:\n  addr: {redis}\n",
            host = pg.name,
            db = pg.database,
            user = pg.user,
            redis = self.redis_address,
        );
        let secret_name = format!("{name}-secret");
        let env = vec![
            json!({"name": "CONFIG_PATH", "value": "/etc/datastorage/config.yaml"}),
            json!({"name": "DATASTORAGE_PORT", "value": API_PORT.to_string()}),
            json!({"name": "METRICS_PORT", "value": METRICS_PORT.to_string()}),
            json!({"name": "DB_HOST", "value": pg.name}),
            json!({"name": "DB_PORT", "value": "5432"}),
            json!({"name": "DB_NAME", "value": pg.database}),
            json!({"name": "DB_USER", "value": pg.user}),
            json!({"name": "DB_SSLMODE", "value": "disable"}),
            json!({"name": "REDIS_ADDR", "value": self.redis_address}),
            json!({"name": "DB_PASSWORD",
                   "valueFrom": {"secretKeyRef": {"name": secret_name, "key": "DB_PASSWORD"}}}),
        ];
        let mounts =
            vec![json!({"name": "config", "mountPath": "/etc/datastorage", "readOnly": true})];
        let volumes =
            vec![json!({"name": "config", "configMap": {"name": format!("{name}-config")}})];
        let container = json!({
            "name": CONTAINER,
            "image": self.image,
            "imagePullPolicy": "Never",
            "ports": [
                {"containerPort": API_PORT, "name": "http"},
                {"containerPort": METRICS_PORT, "name": "metrics"}
            ],
            "env": env,
            "volumeMounts": mounts,
            "livenessProbe": {"httpGet": {"path": "/health", "port": API_PORT},
                "initialDelaySeconds": 2, "periodSeconds": 5, "failureThreshold": 6},
            "readinessProbe": {"httpGet": {"path": "/health/ready", "port": API_PORT},
                "initialDelaySeconds": 1, "periodSeconds": 2, "failureThreshold": 60},
        });
        Component {
            name: "datastorage".into(),
            objects: vec![
                object(json!({
                    "apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": format!("{name}-config"), "namespace": ns, "labels": labels},
                    "data": {"config.yaml": config_yaml}
                })),
                object(json!({
                    "apiVersion": "v1", "kind": "Secret",
                    "metadata": {"name": secret_name, "namespace": ns, "labels": labels},
                    "type": "Opaque",
                    "stringData": {"DB_PASSWORD": pg.password, "REDIS_PASSWORD": ""}
                })),
                deployment(
                    ns,
                    name,
                    json!({"containers": [container], "volumes": volumes}),
                ),
                service(
                    ns,
                    name,
                    vec![
                        service_port("http", API_PORT, self.node_port),
                        service_port("metrics", METRICS_PORT, None),
                    ],
                ),
            ],
            ready: vec![deployment_ready(ns, name, self.timeout)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use infra_core::stack::test_support::assert_round_trips;

    fn config() -> DataStorageConfig {
        let pg = crate::postgres_in("ds-e2e");
        let redis = RedisConfig::new("ds-e2e");
        DataStorageConfig::new(
            "localhost/kubernaut/datastorage:datastorage-0123456789ab",
            &pg,
            &redis,
        )
    }

    #[test]
    fn deployment_runs_the_loaded_image_never_pulled() {
        let component = config().node_port(30081).component();
        component.objects.iter().for_each(assert_round_trips);
        let deployment = serde_json::to_value(&component.objects[2]).unwrap();
        let container = &deployment["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(
            container["image"],
            "localhost/kubernaut/datastorage:datastorage-0123456789ab"
        );
        assert_eq!(container["imagePullPolicy"], "Never");
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"],
            "/health/ready"
        );
        let env: Vec<&str> = container["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["name"].as_str().unwrap())
            .collect();
        for key in ["DB_HOST", "DB_PASSWORD", "REDIS_ADDR", "DATASTORAGE_PORT"] {
            assert!(env.contains(&key), "{key} missing from {env:?}");
        }
        assert!(!env.contains(&"GOCOVERDIR"));
        let service = serde_json::to_value(&component.objects[3]).unwrap();
        assert_eq!(service["spec"]["ports"][0]["nodePort"], 30081);
    }
}
