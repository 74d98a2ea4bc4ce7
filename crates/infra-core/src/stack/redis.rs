//! Redis as the original deployed it: a `redis:7-alpine` Deployment with a
//! `redis-cli ping` probe and a Service (ClusterIP, or NodePort when asked).

use std::time::Duration;

use serde_json::json;

use super::{Component, deployment, deployment_ready, service, service_port};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisConfig {
    pub namespace: String,
    pub name: String,
    pub image: String,
    /// Publish 6379 on this NodePort (one original setup used 30386).
    pub node_port: Option<u16>,
    pub timeout: Duration,
}

impl RedisConfig {
    pub fn new(namespace: &str) -> RedisConfig {
        RedisConfig {
            namespace: namespace.to_string(),
            name: "redis".into(),
            image: "redis:7-alpine".into(),
            node_port: None,
            timeout: Duration::from_secs(120),
        }
    }

    #[must_use]
    pub fn node_port(mut self, port: u16) -> Self {
        self.node_port = Some(port);
        self
    }

    /// `host:port` other pods use.
    pub fn address(&self) -> String {
        format!("{}.{}.svc.cluster.local:6379", self.name, self.namespace)
    }

    pub fn component(&self) -> Component {
        let ns = &self.namespace;
        let name = &self.name;
        let probe = json!({
            "exec": {"command": ["redis-cli", "ping"]},
            "initialDelaySeconds": 1, "periodSeconds": 2, "timeoutSeconds": 2, "failureThreshold": 30
        });
        Component {
            name: "redis".into(),
            objects: vec![
                deployment(
                    ns,
                    name,
                    json!({"containers": [{
                        "name": "redis",
                        "image": self.image,
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"containerPort": 6379, "name": "redis"}],
                        "readinessProbe": probe,
                        "livenessProbe": probe,
                    }]}),
                ),
                service(ns, name, vec![service_port("redis", 6379, self.node_port)]),
            ],
            ready: vec![deployment_ready(ns, name, self.timeout)],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::test_support::assert_round_trips;

    #[test]
    fn objects_are_valid() {
        let redis = RedisConfig::new("gw-e2e").node_port(30386);
        let component = redis.component();
        component.objects.iter().for_each(assert_round_trips);
        assert_eq!(redis.address(), "redis.gw-e2e.svc.cluster.local:6379");
        let service = serde_json::to_value(&component.objects[1]).unwrap();
        assert_eq!(service["spec"]["ports"][0]["nodePort"], 30386);
    }
}
