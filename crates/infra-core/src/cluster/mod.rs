//! Clusters: one interface, two providers.
//!
//! - [`kind`]: the real thing, through the `kind` CLI;
//! - [`sim`]: containerd node containers, the pinned toolchain's real control
//!   plane on the host and a node agent in place of kubelets, for machines
//!   where kind nodes cannot boot (it never runs containers).
//!
//! Both give a [`Cluster`]: a name, a kubeconfig path (written 0600), the node
//! containers (found by kind's labels, so the loader works on either), and
//! [`delete`]. [`spec::ClusterSpec`] says what a service needs of its cluster.

pub mod kind;
pub mod lock;
pub mod node;
pub mod node_image;
pub mod sim;
pub mod spec;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::engine::{Engine, EngineError};
use crate::load::nodes::{KindNode, find_kind_nodes};
use kind::{KindCli, KindError};
use node::NodeError;
pub use sim::SimServer;
use spec::ClusterSpec;

/// Which provider makes the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Kind,
    Sim,
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kind" => Ok(Provider::Kind),
            "sim" => Ok(Provider::Sim),
            other => Err(format!(
                "unknown cluster provider `{other}`: use `kind` or `sim`"
            )),
        }
    }
}

impl std::fmt::Display for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Provider::Kind => "kind",
            Provider::Sim => "sim",
        })
    }
}

/// What to do when a cluster of that name already exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Existing {
    /// Refuse, saying how to reuse or delete it.
    #[default]
    Fail,
    /// Use it as it is.
    Reuse,
}

/// Where clusters keep their files, and how they are made.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Kubeconfigs go to `<dir>/<cluster>-config` (default `~/.kube`).
    pub kubeconfig_dir: PathBuf,
    /// Sim clusters keep their state in `<dir>/sim/<cluster>/`
    /// (default `~/.local/state/kind-e2e`).
    pub state_dir: PathBuf,
    /// Where the node image's build log goes.
    pub log_dir: PathBuf,
    pub existing: Existing,
    /// Extra labels on sim node containers (run id, service).
    pub labels: HashMap<String, String>,
    pub sim_server: SimServer,
    /// How long `kind create cluster --wait` waits for the control plane.
    pub kind_wait: Duration,
    /// The `kind` binary (the pinned toolchain's); `kind` on PATH if `None`.
    pub kind_program: Option<PathBuf>,
    /// The pinned toolchain's `bin/`: the sim's control plane runs its etcd,
    /// kube-apiserver, kube-controller-manager and kube-scheduler.
    pub toolchain_bin: Option<PathBuf>,
    /// The node image of kind clusters whose spec names none: the offline
    /// image ([`node_image`]) where it is built, kind's default otherwise.
    pub node_image: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let state = std::env::var_os("XDG_STATE_HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| home.join(".local").join("state"));
        ClusterOptions {
            kubeconfig_dir: home.join(".kube"),
            state_dir: state.join("kind-e2e"),
            log_dir: PathBuf::from("target").join("e2e").join("logs"),
            existing: Existing::Fail,
            labels: HashMap::new(),
            sim_server: SimServer::InProcess,
            kind_wait: Duration::from_secs(120),
            kind_program: None,
            toolchain_bin: None,
            node_image: None,
        }
    }
}

impl ClusterOptions {
    /// The kind CLI these options choose, bound to `engine`.
    pub fn kind(&self, engine: &Engine) -> Result<KindCli, KindError> {
        KindCli::find(engine.kind(), self.kind_program.as_deref())
    }

    /// `<kubeconfig_dir>/<cluster>-config`, as the original named them.
    pub fn kubeconfig_path(&self, cluster: &str) -> PathBuf {
        self.kubeconfig_dir.join(format!("{cluster}-config"))
    }
}

/// A cluster that exists.
pub struct Cluster {
    pub name: String,
    pub provider: Provider,
    pub kubeconfig: PathBuf,
    pub nodes: Vec<KindNode>,
    /// True when an existing cluster was reused rather than created.
    pub reused: bool,
    sim: Option<sim::SimHandle>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("name", &self.name)
            .field("provider", &self.provider)
            .field("kubeconfig", &self.kubeconfig)
            .field("nodes", &self.nodes)
            .field("reused", &self.reused)
            .finish()
    }
}

impl Cluster {
    /// A kube-rs client for this cluster, from its kubeconfig.
    pub async fn client(&self) -> Result<kube::Client, ClusterError> {
        client_from_kubeconfig(&self.kubeconfig).await
    }

    /// The node container names.
    pub fn node_names(&self) -> Vec<String> {
        self.nodes.iter().map(|n| n.name.clone()).collect()
    }

    /// Stops an in-process sim server without deleting anything else (for a
    /// kept cluster this ends its API, so keep clusters with a detached server).
    pub async fn release(mut self) {
        if let Some(handle) = self.sim.take() {
            handle.shutdown().await;
        }
    }
}

/// A cluster as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterSummary {
    pub name: String,
    pub provider: Provider,
    pub nodes: Vec<String>,
}

/// Errors of cluster lifecycles. Each names the cluster.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster {cluster}: {problem}")]
    InvalidSpec { cluster: String, problem: String },

    #[error(
        "cluster {cluster} already exists ({provider}): delete it with `cargo xtask cluster \
         delete {cluster}`, or, for `cargo xtask e2e`, use it with --reuse-cluster"
    )]
    Exists { cluster: String, provider: Provider },

    #[error(
        "cluster {cluster} publishes host port {port} on {address}, which {owner} already uses: \
         stop it (or, if it is another cluster of this tool, delete that cluster) and try again"
    )]
    PortInUse {
        cluster: String,
        port: u16,
        address: String,
        owner: String,
    },

    #[error(
        "cluster {cluster} exists but cannot be reused: {problem}; delete it (`cargo xtask \
         cluster delete {cluster}`) and run again without --reuse-cluster"
    )]
    Unusable { cluster: String, problem: String },

    #[error("sim cluster {cluster}: {problem}")]
    Sim { cluster: String, problem: String },

    #[error(
        "cluster {cluster} is a {found} cluster, not {wanted}: delete it first (`cargo xtask \
         cluster delete {cluster}`) or ask for {found} (`--cluster {found}` for e2e, \
         `--provider {found}` for cluster create)"
    )]
    WrongProvider {
        cluster: String,
        found: Provider,
        wanted: Provider,
    },

    #[error("kubeconfig {path}: {problem}")]
    Kubeconfig { path: PathBuf, problem: String },

    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },

    #[error(transparent)]
    Kind(#[from] KindError),

    #[error(transparent)]
    Node(#[from] NodeError),

    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Creates (or, per `options.existing`, reuses or recreates) the cluster
/// `spec` describes.
pub async fn create(
    engine: &Engine,
    provider: Provider,
    spec: &ClusterSpec,
    options: &ClusterOptions,
) -> Result<Cluster, ClusterError> {
    spec.validate()
        .map_err(|problem| ClusterError::InvalidSpec {
            cluster: spec.name.clone(),
            problem,
        })?;
    let kubeconfig = options.kubeconfig_path(&spec.name);
    if let Some(found) = find(engine, &spec.name).await? {
        if found.provider != provider {
            return Err(ClusterError::WrongProvider {
                cluster: spec.name.clone(),
                found: found.provider,
                wanted: provider,
            });
        }
        match options.existing {
            Existing::Fail => {
                return Err(ClusterError::Exists {
                    cluster: spec.name.clone(),
                    provider,
                });
            }
            Existing::Reuse => return reuse(engine, provider, spec, options).await,
        }
    }
    check_host_ports(engine, spec).await?;
    std::fs::create_dir_all(&options.kubeconfig_dir).map_err(|source| ClusterError::Io {
        what: format!("creating {}", options.kubeconfig_dir.display()),
        source,
    })?;
    let (nodes, sim) = match provider {
        Provider::Kind => (create_kind(engine, spec, &kubeconfig, options).await?, None),
        Provider::Sim => sim::create(engine, spec, &kubeconfig, options).await?,
    };
    Ok(Cluster {
        name: spec.name.clone(),
        provider,
        kubeconfig,
        nodes,
        reused: false,
        sim,
    })
}

/// Fails before anything is created when a host port the cluster publishes
/// is taken, naming the port and, when a container publishes it, that
/// container (otherwise the engine's raw bind error would surface after
/// node containers were started).
async fn check_host_ports(engine: &Engine, spec: &ClusterSpec) -> Result<(), ClusterError> {
    for mapping in &spec.port_mappings {
        let address = if mapping.listen_address.is_empty() {
            "0.0.0.0"
        } else {
            mapping.listen_address.as_str()
        };
        if std::net::TcpListener::bind((address, mapping.host_port)).is_ok() {
            continue;
        }
        let owner = port_owner(engine, mapping.host_port)
            .await
            .map(|c| format!("container {c}"))
            .unwrap_or_else(|| "another process".into());
        return Err(ClusterError::PortInUse {
            cluster: spec.name.clone(),
            port: mapping.host_port,
            address: address.to_string(),
            owner,
        });
    }
    Ok(())
}

/// The container publishing host port `port`, if any.
async fn port_owner(engine: &Engine, port: u16) -> Option<String> {
    let containers = engine
        .docker()
        .list_containers(None::<bollard::query_parameters::ListContainersOptions>)
        .await
        .ok()?;
    containers.into_iter().find_map(|c| {
        let publishes = c
            .ports
            .as_ref()?
            .iter()
            .any(|p| p.public_port == Some(port));
        publishes.then(|| {
            c.names
                .and_then(|n| n.first().cloned())
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_string()
        })
    })
}

/// Uses an existing cluster, after checking it is what `spec` asks for (its
/// workers and host ports) and that its API answers; the kubeconfig is
/// written again from the cluster, so a deleted one is no obstacle.
async fn reuse(
    engine: &Engine,
    provider: Provider,
    spec: &ClusterSpec,
    options: &ClusterOptions,
) -> Result<Cluster, ClusterError> {
    let name = spec.name.as_str();
    let kubeconfig = options.kubeconfig_path(name);
    let nodes = find_kind_nodes(engine, name).await?;
    check_shape(engine, spec, &nodes).await?;
    match provider {
        Provider::Kind => {
            let kind = options.kind(engine)?;
            let text = kind.get_kubeconfig(name).run().await?;
            write_private(&kubeconfig, &text)?;
        }
        Provider::Sim => {
            if sim::api_url(&options.state_dir, name).is_none() {
                return Err(ClusterError::Sim {
                    cluster: name.to_string(),
                    problem: format!(
                        "its node containers exist but its control plane is not running (it \
                         lives as long as the process that supervised it, which is gone): delete \
                         it (`cargo xtask cluster delete {name}`) and run again"
                    ),
                });
            }
            sim::restore_kubeconfig(&options.state_dir, name, &kubeconfig)?;
        }
    }
    if !api_answers(&kubeconfig).await {
        return Err(ClusterError::Unusable {
            cluster: name.to_string(),
            problem: format!(
                "its API server does not answer through {} within 5s",
                kubeconfig.display()
            ),
        });
    }
    Ok(Cluster {
        name: name.to_string(),
        provider,
        kubeconfig,
        nodes,
        reused: true,
        sim: None,
    })
}

/// Fails unless the existing cluster has the workers and host ports `spec`
/// asks for (a cluster made for something else would pass a suite it cannot
/// really serve).
async fn check_shape(
    engine: &Engine,
    spec: &ClusterSpec,
    nodes: &[KindNode],
) -> Result<(), ClusterError> {
    let unusable = |problem: String| ClusterError::Unusable {
        cluster: spec.name.clone(),
        problem,
    };
    let workers = nodes.iter().filter(|n| n.role == "worker").count();
    if workers != spec.workers {
        return Err(unusable(format!(
            "it has {workers} worker(s) and this run needs {}",
            spec.workers
        )));
    }
    if let Some(node) = nodes.iter().find(|n| n.state != "running") {
        return Err(unusable(format!("node {} is {}", node.name, node.state)));
    }
    let Some(control_plane) = nodes.iter().find(|n| n.role == "control-plane") else {
        return Err(unusable("it has no control-plane node".into()));
    };
    let published = published_host_ports(engine, &control_plane.name).await;
    let missing: Vec<String> = spec
        .port_mappings
        .iter()
        .filter(|m| !published.contains(&m.host_port))
        .map(|m| format!("{} (NodePort {})", m.host_port, m.container_port))
        .collect();
    if !missing.is_empty() {
        return Err(unusable(format!(
            "it does not publish the host port(s) this run needs: {}",
            missing.join(", ")
        )));
    }
    Ok(())
}

/// The host ports a container publishes.
async fn published_host_ports(engine: &Engine, container: &str) -> std::collections::HashSet<u16> {
    let Ok(inspected) = engine
        .docker()
        .inspect_container(
            container,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
    else {
        return Default::default();
    };
    inspected
        .host_config
        .and_then(|h| h.port_bindings)
        .unwrap_or_default()
        .into_values()
        .flatten()
        .flatten()
        .filter_map(|b| b.host_port?.parse().ok())
        .collect()
}

async fn create_kind(
    engine: &Engine,
    spec: &ClusterSpec,
    kubeconfig: &Path,
    options: &ClusterOptions,
) -> Result<Vec<KindNode>, ClusterError> {
    let kind = options.kind(engine)?;
    let mut spec = spec.clone();
    if spec.node_image.is_none() {
        spec.node_image = options.node_image.clone();
    }
    if let Some(image) = &spec.node_image
        && spec.dns_image_tag.is_none()
    {
        // The offline node image holds its own CoreDNS release.
        spec.dns_image_tag = node_image::labels(engine, image)
            .await
            .remove(node_image::LABEL_COREDNS_TAG);
    }
    let spec = &spec;
    let base = std::env::current_dir().map_err(|source| ClusterError::Io {
        what: "reading the current directory".into(),
        source,
    })?;
    for mount in &spec.mounts {
        let host = base.join(&mount.host_path);
        std::fs::create_dir_all(&host).map_err(|source| ClusterError::Io {
            what: format!("creating the mount folder {}", host.display()),
            source,
        })?;
    }
    let mut config = tempfile::Builder::new()
        .prefix("kind-config-")
        .suffix(".yaml")
        .tempfile()
        .map_err(|source| ClusterError::Io {
            what: "writing the kind config".into(),
            source,
        })?;
    config
        .write_all(kind::render_config(spec, &base).as_bytes())
        .map_err(|source| ClusterError::Io {
            what: "writing the kind config".into(),
            source,
        })?;
    let wait = format!("{}s", options.kind_wait.as_secs());
    kind.create(&spec.name, config.path(), kubeconfig, &wait)
        .run()
        .await?;
    let finish = async {
        // Re-export: the file `--kubeconfig` leaves was found unreliable.
        let text = kind.get_kubeconfig(&spec.name).run().await?;
        write_private(kubeconfig, &text)?;
        Ok::<_, ClusterError>(find_kind_nodes(engine, &spec.name).await?)
    };
    match finish.await {
        Ok(nodes) => Ok(nodes),
        Err(error) => {
            // A cluster we cannot hand over is not left behind.
            let _ = kind.delete(&spec.name).run().await;
            let _ = std::fs::remove_file(kubeconfig);
            Err(error)
        }
    }
}

/// The cluster called `name`, if its node containers exist.
pub async fn find(engine: &Engine, name: &str) -> Result<Option<ClusterSummary>, EngineError> {
    Ok(list(engine).await?.into_iter().find(|c| c.name == name))
}

/// Every cluster on this engine, kind's and simulated, found by kind's node
/// labels (sim nodes also carry [`sim::PROVIDER_LABEL`]).
pub async fn list(engine: &Engine) -> Result<Vec<ClusterSummary>, EngineError> {
    let containers = engine
        .containers_labelled(crate::load::nodes::CLUSTER_LABEL)
        .await?;
    let mut clusters: Vec<ClusterSummary> = Vec::new();
    for container in containers {
        let labels = container.labels.unwrap_or_default();
        let Some(name) = labels.get(crate::load::nodes::CLUSTER_LABEL) else {
            continue;
        };
        let provider = if labels.get(sim::PROVIDER_LABEL).map(String::as_str) == Some("sim") {
            Provider::Sim
        } else {
            Provider::Kind
        };
        let node = container
            .names
            .unwrap_or_default()
            .first()
            .map(|n| n.trim_start_matches('/').to_string())
            .unwrap_or_default();
        match clusters.iter_mut().find(|c| &c.name == name) {
            Some(cluster) => cluster.nodes.push(node),
            None => clusters.push(ClusterSummary {
                name: name.clone(),
                provider,
                nodes: vec![node],
            }),
        }
    }
    for cluster in &mut clusters {
        cluster.nodes.sort();
    }
    clusters.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(clusters)
}

/// Deletes the cluster called `name` whatever made it, with its kubeconfig
/// (and, for sim, its control plane and state). Returns whether anything existed.
pub async fn delete(
    engine: &Engine,
    name: &str,
    options: &ClusterOptions,
) -> Result<bool, ClusterError> {
    let kubeconfig = options.kubeconfig_path(name);
    match find(engine, name).await? {
        Some(found) if found.provider == Provider::Kind => {
            let kind = options.kind(engine)?;
            kind.delete(name).run().await?;
            let _ = std::fs::remove_file(&kubeconfig);
            Ok(true)
        }
        // A sim cluster, or leftovers of one (state without nodes).
        _ => sim::delete(engine, name, &kubeconfig, &options.state_dir).await,
    }
}

/// Deletes a cluster this process created, stopping its in-process control plane.
pub async fn delete_cluster(
    engine: &Engine,
    cluster: Cluster,
    options: &ClusterOptions,
) -> Result<(), ClusterError> {
    let name = cluster.name.clone();
    cluster.release().await;
    delete(engine, &name, options).await.map(|_| ())
}

/// Exports node-level logs (`kind export logs`) into `dir`; for sim clusters,
/// the supervisor's and each control-plane process's log and each node's
/// containerd log.
pub async fn export_logs(
    engine: &Engine,
    cluster: &Cluster,
    dir: &Path,
    options: &ClusterOptions,
) -> Result<(), ClusterError> {
    std::fs::create_dir_all(dir).map_err(|source| ClusterError::Io {
        what: format!("creating {}", dir.display()),
        source,
    })?;
    match cluster.provider {
        Provider::Kind => {
            options
                .kind(engine)?
                .export_logs(&cluster.name, dir)
                .run()
                .await?;
        }
        Provider::Sim => {
            sim::export_logs(&options.state_dir, &cluster.name, dir);
            for node in &cluster.nodes {
                let log = node::container_log_tail(engine, &node.name).await;
                let _ = std::fs::write(dir.join(format!("{}-containerd.log", node.name)), log);
            }
        }
    }
    Ok(())
}

/// Whether the API server of the kubeconfig at `path` answers `/version`
/// within 5 s (through the kubeconfig's own address, CA and credentials).
pub async fn api_answers(path: &Path) -> bool {
    let Ok(client) = client_from_kubeconfig(path).await else {
        return false;
    };
    matches!(
        tokio::time::timeout(Duration::from_secs(5), client.apiserver_version()).await,
        Ok(Ok(_))
    )
}

/// A kube-rs client from a kubeconfig file.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, ClusterError> {
    let problem = |problem: String| ClusterError::Kubeconfig {
        path: path.to_path_buf(),
        problem,
    };
    let kubeconfig =
        kube::config::Kubeconfig::read_from(path).map_err(|e| problem(crate::error_chain(&e)))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|e| problem(crate::error_chain(&e)))?;
    kube::Client::try_from(config).map_err(|e| problem(crate::error_chain(&e)))
}

/// Writes `text` to `path` readable by the owner only (0600), as kubeconfigs
/// must be.
pub(crate) fn write_private(path: &Path, text: &str) -> Result<(), ClusterError> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let io = |source| ClusterError::Io {
        what: format!("writing {}", path.display()),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io)?;
    // An existing file keeps its old mode through `open`; tighten it.
    file.set_permissions(std::fs::Permissions::from_mode(0o600))
        .map_err(io)?;
    file.write_all(text.as_bytes()).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_is_written_0600_even_over_a_wider_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/c-config");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "old").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private(&path, "apiVersion: v1\n").unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "apiVersion: v1\n");
    }

    #[test]
    fn providers_parse_and_print() {
        assert_eq!("sim".parse::<Provider>().unwrap(), Provider::Sim);
        assert!("k3d".parse::<Provider>().unwrap_err().contains("kind"));
        assert_eq!(
            ClusterOptions::default()
                .kubeconfig_path("gw-e2e")
                .file_name()
                .unwrap(),
            "gw-e2e-config"
        );
    }
}
