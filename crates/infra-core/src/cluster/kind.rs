//! The real Kind provider, through the `kind` CLI: a config rendered from
//! [`ClusterSpec`], create, delete, kubeconfig export (written 0600), log export.
//! With Podman, `KIND_EXPERIMENTAL_PROVIDER=podman` is set on every call.
//!
//! Command lines are built as data ([`KindCommand`]) so they can be checked
//! without kind installed; the live tests (`tests/kind.rs`) run on the
//! offline node image.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::spec::ClusterSpec;
use crate::engine::{EngineKind, last_lines};

/// The API server and controller-manager tuning the original applied to every
/// cluster. Map-form `extraArgs` without an `apiVersion`: kind converts it to
/// the list form kubeadm v1beta4 (Kubernetes 1.31+) expects.
const KUBEADM_PATCH: &str = "kind: ClusterConfiguration
apiServer:
  extraArgs:
    max-requests-inflight: \"800\"
    max-mutating-requests-inflight: \"400\"
controllerManager:
  extraArgs:
    kube-api-qps: \"100\"
    kube-api-burst: \"200\"
";

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KindConfig {
    kind: &'static str,
    api_version: &'static str,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kubeadm_config_patches: Vec<String>,
    nodes: Vec<KindNodeConfig>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KindNodeConfig {
    role: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    image: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    kubeadm_config_patches: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extra_port_mappings: Vec<KindPortMapping>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    extra_mounts: Vec<KindMount>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KindPortMapping {
    container_port: u16,
    host_port: u16,
    listen_address: String,
    protocol: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct KindMount {
    host_path: String,
    container_path: String,
}

/// Renders `spec` as a kind `Cluster` config (kind.x-k8s.io/v1alpha4). Host
/// paths are made absolute against `base` (kind resolves relative paths
/// against its own working directory, which is easy to get wrong).
#[allow(
    clippy::expect_used,
    reason = "a kind config is plain data: serialising cannot fail"
)]
pub fn render_config(spec: &ClusterSpec, base: &Path) -> String {
    let node = |role: &'static str| KindNodeConfig {
        role,
        image: spec.node_image.clone(),
        kubeadm_config_patches: if role == "control-plane" && spec.tuned_control_plane {
            vec![KUBEADM_PATCH.to_string()]
        } else {
            Vec::new()
        },
        extra_port_mappings: if role == "control-plane" {
            spec.port_mappings
                .iter()
                .map(|m| KindPortMapping {
                    container_port: m.container_port,
                    host_port: m.host_port,
                    listen_address: m.listen_address.clone(),
                    protocol: "TCP",
                })
                .collect()
        } else {
            Vec::new()
        },
        extra_mounts: spec
            .mounts_for(role)
            .map(|m| KindMount {
                host_path: base.join(&m.host_path).display().to_string(),
                container_path: m.container_path.clone(),
            })
            .collect(),
    };
    let mut nodes = vec![node("control-plane")];
    nodes.extend((0..spec.workers).map(|_| node("worker")));
    // Cluster-wide: the CoreDNS release the node image holds. kind's
    // kubeadm config for 1.34 is v1beta3, so no apiVersion here.
    let kubeadm_config_patches = spec
        .dns_image_tag
        .iter()
        .map(|tag| format!("kind: ClusterConfiguration\ndns:\n  imageTag: \"{tag}\"\n"))
        .collect();
    let config = KindConfig {
        kind: "Cluster",
        api_version: "kind.x-k8s.io/v1alpha4",
        kubeadm_config_patches,
        nodes,
    };
    yaml_serde::to_string(&config).expect("a kind config always serialises")
}

/// One `kind` invocation, as data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindCommand {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl KindCommand {
    /// The command as a shell would show it, for logs and errors.
    pub fn display(&self) -> String {
        let env: Vec<String> = self.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let mut parts = env;
        parts.push(self.program.display().to_string());
        parts.extend(self.args.iter().cloned());
        parts.join(" ")
    }

    /// Runs it; a failure carries the command line and kind's last output.
    pub async fn run(&self) -> Result<String, KindError> {
        let output = tokio::process::Command::new(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|source| KindError::Spawn {
                command: self.display(),
                source,
            })?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        if !output.status.success() {
            let text = format!("{stdout}{}", String::from_utf8_lossy(&output.stderr));
            return Err(KindError::Failed {
                command: self.display(),
                status: output.status.to_string(),
                output: last_lines(&text, 15),
            });
        }
        Ok(stdout)
    }
}

/// Errors of the kind CLI.
#[derive(Debug, thiserror::Error)]
pub enum KindError {
    #[error(
        "`kind` was not found: build the pinned toolchain (`cargo xtask toolchain build`, which \
         builds kind) or install kind (https://kind.sigs.k8s.io); or use the simulated cluster \
         with `--cluster sim` (no kind needed)"
    )]
    NotFound,
    #[error("could not run `{command}`")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Failed {
        command: String,
        status: String,
        output: String,
    },
}

/// The kind CLI bound to an engine (Podman gets the experimental provider).
#[derive(Debug, Clone)]
pub struct KindCli {
    program: PathBuf,
    env: Vec<(String, String)>,
}

impl KindCli {
    /// `program` when given (the toolchain's kind), else `kind` on PATH.
    pub fn find(engine: EngineKind, program: Option<&Path>) -> Result<KindCli, KindError> {
        let program = match program {
            Some(p) => p.to_path_buf(),
            None => which::which("kind").map_err(|_| KindError::NotFound)?,
        };
        Ok(KindCli::with_program(program, engine))
    }

    /// A given `kind` binary (for tests and unusual installs).
    pub fn with_program(program: impl Into<PathBuf>, engine: EngineKind) -> KindCli {
        let env = match engine {
            EngineKind::Podman => vec![("KIND_EXPERIMENTAL_PROVIDER".into(), "podman".into())],
            EngineKind::Docker => Vec::new(),
        };
        KindCli {
            program: program.into(),
            env,
        }
    }

    fn command<I, S>(&self, args: I) -> KindCommand
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        KindCommand {
            program: self.program.clone(),
            args: args.into_iter().map(Into::into).collect(),
            env: self.env.clone(),
        }
    }

    /// `kind create cluster`, writing its kubeconfig to `kubeconfig` rather than
    /// the user's `~/.kube/config`.
    pub fn create(&self, name: &str, config: &Path, kubeconfig: &Path, wait: &str) -> KindCommand {
        self.command([
            "create".to_string(),
            "cluster".into(),
            "--name".into(),
            name.into(),
            "--config".into(),
            config.display().to_string(),
            "--kubeconfig".into(),
            kubeconfig.display().to_string(),
            "--wait".into(),
            wait.into(),
        ])
    }

    pub fn delete(&self, name: &str) -> KindCommand {
        self.command(["delete", "cluster", "--name", name])
    }

    pub fn get_clusters(&self) -> KindCommand {
        self.command(["get", "clusters"])
    }

    /// `kind get kubeconfig`, which the original found more reliable than the
    /// file `--kubeconfig` leaves behind.
    pub fn get_kubeconfig(&self, name: &str) -> KindCommand {
        self.command(["get", "kubeconfig", "--name", name])
    }

    pub fn export_logs(&self, name: &str, dir: &Path) -> KindCommand {
        self.command([
            "export".to_string(),
            "logs".into(),
            dir.display().to_string(),
            "--name".into(),
            name.into(),
        ])
    }

    /// The names of existing kind clusters.
    pub async fn clusters(&self) -> Result<Vec<String>, KindError> {
        let out = self.get_clusters().run().await?;
        Ok(out
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("No kind clusters"))
            .map(str::to_string)
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::spec::NodeSelector;

    #[test]
    fn config_has_the_originals_shape() {
        let spec = ClusterSpec::new("web-e2e")
            .port(30080, 8080)
            .port(30090, 9090)
            .mount("coverdata", "/coverdata", NodeSelector::All);
        let yaml = render_config(&spec, Path::new("/repo"));
        let parsed: serde_json::Value = yaml_serde::from_str(&yaml).unwrap();
        assert_eq!(parsed["kind"], "Cluster");
        assert_eq!(parsed["apiVersion"], "kind.x-k8s.io/v1alpha4");
        let nodes = parsed["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[0]["role"], "control-plane");
        assert_eq!(nodes[1]["role"], "worker");
        let ports = nodes[0]["extraPortMappings"].as_array().unwrap();
        assert_eq!(ports[0]["containerPort"], 30080);
        assert_eq!(ports[0]["hostPort"], 8080);
        assert_eq!(ports[0]["listenAddress"], "127.0.0.1");
        assert!(nodes[1].get("extraPortMappings").is_none());
        assert_eq!(nodes[1]["extraMounts"][0]["hostPath"], "/repo/coverdata");
        assert_eq!(nodes[1]["extraMounts"][0]["containerPath"], "/coverdata");
        let patch = nodes[0]["kubeadmConfigPatches"][0].as_str().unwrap();
        let patch: serde_json::Value = yaml_serde::from_str(patch).unwrap();
        assert_eq!(patch["kind"], "ClusterConfiguration");
        assert_eq!(
            patch["apiServer"]["extraArgs"]["max-requests-inflight"],
            "800"
        );
        assert_eq!(
            patch["apiServer"]["extraArgs"]["max-mutating-requests-inflight"],
            "400"
        );
        assert_eq!(
            patch["controllerManager"]["extraArgs"]["kube-api-qps"],
            "100"
        );
        assert_eq!(
            patch["controllerManager"]["extraArgs"]["kube-api-burst"],
            "200"
        );
        assert!(nodes[1].get("kubeadmConfigPatches").is_none());
    }

    #[test]
    fn the_offline_node_images_coredns_is_patched_in() {
        let mut spec = ClusterSpec::new("ds-e2e").node_image("localhost/kind-e2e/node:v1.34.4-x");
        let plain: serde_json::Value =
            yaml_serde::from_str(&render_config(&spec, Path::new("/"))).unwrap();
        assert!(plain.get("kubeadmConfigPatches").is_none());
        spec.dns_image_tag = Some("v1.14.3".into());
        let parsed: serde_json::Value =
            yaml_serde::from_str(&render_config(&spec, Path::new("/"))).unwrap();
        let patch = parsed["kubeadmConfigPatches"][0].as_str().unwrap();
        let patch: serde_json::Value = yaml_serde::from_str(patch).unwrap();
        assert_eq!(patch["kind"], "ClusterConfiguration");
        assert_eq!(patch["dns"]["imageTag"], "v1.14.3");
        assert!(patch.get("apiVersion").is_none());
    }

    #[test]
    fn node_image_and_single_node() {
        let spec = ClusterSpec::new("aw-e2e")
            .workers(0)
            .node_image("kindest/node:v1.35.0");
        let parsed: serde_json::Value =
            yaml_serde::from_str(&render_config(&spec, Path::new("/"))).unwrap();
        let nodes = parsed["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 1);
        assert_eq!(nodes[0]["image"], "kindest/node:v1.35.0");
    }

    #[test]
    fn command_lines_and_podman_provider() {
        let kind = KindCli::with_program("/usr/bin/kind", EngineKind::Podman);
        let create = kind.create(
            "ds-e2e",
            Path::new("/tmp/kind.yaml"),
            Path::new("/home/u/.kube/ds-e2e-config"),
            "120s",
        );
        assert_eq!(
            create.display(),
            "KIND_EXPERIMENTAL_PROVIDER=podman /usr/bin/kind create cluster --name ds-e2e \
             --config /tmp/kind.yaml --kubeconfig /home/u/.kube/ds-e2e-config --wait 120s"
        );
        let docker = KindCli::with_program("kind", EngineKind::Docker);
        assert_eq!(
            docker.delete("ds-e2e").display(),
            "kind delete cluster --name ds-e2e"
        );
        assert_eq!(
            docker.get_kubeconfig("ds-e2e").display(),
            "kind get kubeconfig --name ds-e2e"
        );
        assert_eq!(
            docker.export_logs("ds-e2e", Path::new("/out")).display(),
            "kind export logs /out --name ds-e2e"
        );
    }

    #[tokio::test]
    async fn a_failing_command_reports_its_line_and_output() {
        let fake = KindCommand {
            program: "sh".into(),
            args: vec![
                "-c".into(),
                "echo 'ERROR: node(s) already exist'; exit 1".into(),
            ],
            env: Vec::new(),
        };
        let err = fake.run().await.unwrap_err().to_string();
        assert!(
            err.contains("already exist") && err.contains("sh -c"),
            "{err}"
        );
    }
}
