//! What a service asks of its cluster, independent of the provider: node
//! count, host port mappings, host folder mounts, node image, and the kubeadm
//! tuning the original used. `kind` renders it into a kind config; `sim` makes
//! the same node containers with the same ports and mounts.

use std::path::PathBuf;

use serde::Serialize;

/// Which nodes a mount goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeSelector {
    All,
    ControlPlane,
    Workers,
}

/// A node port published on the host (`extraPortMappings`), on the control
/// plane node like the original.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PortMapping {
    /// The NodePort inside the cluster.
    pub container_port: u16,
    /// The port on the host.
    pub host_port: u16,
    /// Where the host port listens; loopback unless asked otherwise.
    pub listen_address: String,
}

impl PortMapping {
    /// `container_port` on the node, published at `127.0.0.1:host_port`.
    pub fn new(container_port: u16, host_port: u16) -> PortMapping {
        PortMapping {
            container_port,
            host_port,
            listen_address: "127.0.0.1".into(),
        }
    }
}

/// A host folder mounted into nodes (`extraMounts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostMount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub nodes: NodeSelector,
}

/// The cluster a service needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterSpec {
    /// `<service>-e2e` by convention.
    pub name: String,
    /// Worker nodes besides the control plane.
    pub workers: usize,
    pub port_mappings: Vec<PortMapping>,
    pub mounts: Vec<HostMount>,
    /// Node image override (kind only), e.g. `kindest/node:v1.35.0`.
    pub node_image: Option<String>,
    /// The original's API server and controller-manager tuning (kind only).
    pub tuned_control_plane: bool,
    /// CoreDNS image tag for kubeadm (kind only): set for node images that
    /// hold another CoreDNS release than kubeadm's default (the offline node
    /// image, [`super::node_image`]).
    pub dns_image_tag: Option<String>,
}

impl ClusterSpec {
    /// One control plane and one worker, tuned like the original, no ports or
    /// mounts yet.
    pub fn new(name: impl Into<String>) -> ClusterSpec {
        ClusterSpec {
            name: name.into(),
            workers: 1,
            port_mappings: Vec::new(),
            mounts: Vec::new(),
            node_image: None,
            tuned_control_plane: true,
            dns_image_tag: None,
        }
    }

    #[must_use]
    pub fn workers(mut self, workers: usize) -> Self {
        self.workers = workers;
        self
    }

    /// Publishes NodePort `node_port` at `127.0.0.1:host_port`.
    #[must_use]
    pub fn port(mut self, node_port: u16, host_port: u16) -> Self {
        self.port_mappings
            .push(PortMapping::new(node_port, host_port));
        self
    }

    #[must_use]
    pub fn mount(
        mut self,
        host_path: impl Into<PathBuf>,
        container_path: impl Into<String>,
        nodes: NodeSelector,
    ) -> Self {
        self.mounts.push(HostMount {
            host_path: host_path.into(),
            container_path: container_path.into(),
            nodes,
        });
        self
    }

    #[must_use]
    pub fn node_image(mut self, image: impl Into<String>) -> Self {
        self.node_image = Some(image.into());
        self
    }

    /// The mounts that go on a node of `role` (`control-plane` or `worker`).
    pub fn mounts_for(&self, role: &str) -> impl Iterator<Item = &HostMount> {
        let control_plane = role == "control-plane";
        self.mounts.iter().filter(move |m| match m.nodes {
            NodeSelector::All => true,
            NodeSelector::ControlPlane => control_plane,
            NodeSelector::Workers => !control_plane,
        })
    }

    /// Checks what kind would refuse late (or silently mishandle); the error
    /// names the field and the fix.
    pub fn validate(&self) -> Result<(), String> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 50
            && self
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && self.name.starts_with(|c: char| c.is_ascii_lowercase())
            && !self.name.ends_with('-');
        if !name_ok {
            return Err(format!(
                "cluster name `{}` is not valid: use lowercase letters, digits and `-`, \
                 starting with a letter (at most 50 characters)",
                self.name
            ));
        }
        let mut host_ports = std::collections::HashSet::new();
        for mapping in &self.port_mappings {
            if !(30000..=32767).contains(&mapping.container_port) {
                return Err(format!(
                    "port mapping {}→{}: {} is not a NodePort (30000-32767)",
                    mapping.container_port, mapping.host_port, mapping.container_port
                ));
            }
            if mapping.host_port == 0 || !host_ports.insert(mapping.host_port) {
                return Err(format!(
                    "host port {} is mapped twice or is 0: give each mapping its own host port",
                    mapping.host_port
                ));
            }
        }
        if self.workers == 0 && self.mounts.iter().any(|m| m.nodes == NodeSelector::Workers) {
            return Err("a mount targets workers but the cluster has none: use \
                        NodeSelector::All or add a worker"
                .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_are_selected_by_role() {
        let spec = ClusterSpec::new("gw-e2e")
            .mount("./coverdata", "/coverdata", NodeSelector::Workers)
            .mount("/tmp/n", "/tmp/n", NodeSelector::All);
        assert_eq!(spec.mounts_for("control-plane").count(), 1);
        assert_eq!(spec.mounts_for("worker").count(), 2);
    }

    #[test]
    fn bad_specs_name_the_problem() {
        assert!(
            ClusterSpec::new("Web")
                .validate()
                .unwrap_err()
                .contains("Web")
        );
        let clash = ClusterSpec::new("gw").port(30080, 8080).port(30081, 8080);
        assert!(clash.validate().unwrap_err().contains("8080"));
        let not_node_port = ClusterSpec::new("gw").port(80, 8080);
        assert!(not_node_port.validate().unwrap_err().contains("NodePort"));
        let no_workers = ClusterSpec::new("gw")
            .workers(0)
            .mount("/x", "/x", NodeSelector::Workers);
        assert!(no_workers.validate().is_err());
        assert!(
            ClusterSpec::new("web-e2e")
                .port(30080, 8080)
                .validate()
                .is_ok()
        );
    }
}
