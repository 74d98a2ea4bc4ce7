//! The simulated cluster, for machines without kind: real containerd node
//! containers (kind's names and labels, so the real loader fills them) plus
//! kube-sim's in-memory Kubernetes API on 127.0.0.1, whose simulated kubelet
//! asks the nodes' containerd which images they hold. **It never runs
//! containers**: a pod is "ready" when every image it needs from the nodes is
//! there. It checks that manifests are valid, ordered and reference images
//! that were really loaded, in seconds.
//!
//! The API server lives either in the creating process ([`SimServer::InProcess`],
//! for tests) or in a detached process ([`SimServer::Detached`]) that outlives
//! the command that created it, like a kind cluster: it is stopped by
//! [`delete`]. Its state (spec, URL, pid, log) is in `<state_dir>/<cluster>/`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};

use super::node::{
    NodeSpec, ensure_node_image, node_specs, remove_node_containers, start_node_containers,
};
use super::spec::ClusterSpec;
use super::{ClusterError, write_private};
use crate::engine::Engine;
use crate::load::nodes::{K8S_NAMESPACE, KindNode};

/// Label marking node containers of a simulated cluster.
pub const PROVIDER_LABEL: &str = "io.kind-e2e.provider";

/// Where the simulated API server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimServer {
    /// In this process; the cluster's API goes away with the [`super::Cluster`]
    /// handle (or the process).
    InProcess,
    /// In a detached process started as `program args... --state <dir>`, which
    /// must call [`serve`]; it lives until [`delete`].
    Detached { program: PathBuf, args: Vec<String> },
}

/// The in-process server, kept alive by the cluster handle.
pub struct SimHandle {
    server: Option<kube_sim::ApiServer>,
}

impl SimHandle {
    pub(crate) async fn shutdown(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}

/// What the detached server needs to start, and what it reports back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimState {
    cluster: String,
    engine_endpoint: String,
    nodes: Vec<(String, String)>,
    kubeconfig: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ServerInfo {
    url: String,
    pid: u32,
}

/// kube-sim's view of the nodes' images: `ctr images ls -q` in each node.
struct EngineProbe {
    engine: Engine,
}

impl kube_sim::ImageProbe for EngineProbe {
    fn images<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<HashSet<String>, String>> {
        async move {
            let namespace = format!("--namespace={K8S_NAMESPACE}");
            let output = self
                .engine
                .exec(node, &["ctr", &namespace, "images", "ls", "-q"])
                .await
                .map_err(|e| crate::error_chain(&e))?;
            if !output.success() {
                return Err(format!("ctr images ls on {node}: {}", output.tail(3)));
            }
            Ok(output
                .stdout
                .lines()
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .map(str::to_string)
                .collect())
        }
        .boxed()
    }
}

fn cluster_dir(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join("sim").join(cluster)
}

/// Creates the node containers and starts the API server; writes the
/// kubeconfig (0600) to `kubeconfig`. On failure nothing is left behind.
pub(crate) async fn create(
    engine: &Engine,
    spec: &ClusterSpec,
    kubeconfig: &Path,
    state_dir: &Path,
    server: &SimServer,
    labels: &HashMap<String, String>,
    log_dir: &Path,
) -> Result<(Vec<KindNode>, Option<SimHandle>), ClusterError> {
    let node_image = ensure_node_image(engine, log_dir).await?;
    let mut specs = node_specs(&spec.name, spec.workers);
    for node in &mut specs {
        node.mounts = spec
            .mounts_for(&node.role)
            .map(|m| (absolute(&m.host_path), m.container_path.clone()))
            .collect();
        if node.role == "control-plane" {
            node.ports = spec.port_mappings.clone();
        }
    }
    for (host, _) in specs.iter().flat_map(|s| s.mounts.iter()) {
        std::fs::create_dir_all(host).map_err(|source| ClusterError::Io {
            what: format!("creating the mount folder {}", host.display()),
            source,
        })?;
    }
    let mut labels = labels.clone();
    labels.insert(PROVIDER_LABEL.into(), "sim".into());
    let nodes =
        start_node_containers(engine, &node_image.reference, &spec.name, &specs, &labels).await?;

    let started = start_server(engine, spec, &specs, kubeconfig, state_dir, server).await;
    match started {
        Ok(handle) => Ok((nodes, handle)),
        Err(error) => {
            let _ = remove_node_containers(engine, &spec.name).await;
            let _ = std::fs::remove_file(kubeconfig);
            let _ = std::fs::remove_dir_all(cluster_dir(state_dir, &spec.name));
            Err(error)
        }
    }
}

async fn start_server(
    engine: &Engine,
    spec: &ClusterSpec,
    nodes: &[NodeSpec],
    kubeconfig: &Path,
    state_dir: &Path,
    server: &SimServer,
) -> Result<Option<SimHandle>, ClusterError> {
    let state = SimState {
        cluster: spec.name.clone(),
        engine_endpoint: engine.endpoint().to_string(),
        nodes: nodes
            .iter()
            .map(|n| (n.name.clone(), n.role.clone()))
            .collect(),
        kubeconfig: absolute(kubeconfig),
    };
    match server {
        SimServer::InProcess => {
            let api = start_api(engine.clone(), &state).await?;
            write_private(kubeconfig, &api.kubeconfig())?;
            Ok(Some(SimHandle { server: Some(api) }))
        }
        SimServer::Detached { program, args } => {
            spawn_detached(program, args, &state, state_dir).await?;
            Ok(None)
        }
    }
}

async fn start_api(engine: Engine, state: &SimState) -> Result<kube_sim::ApiServer, ClusterError> {
    let nodes = state
        .nodes
        .iter()
        .map(|(name, role)| kube_sim::SimNode {
            name: name.clone(),
            role: role.clone(),
        })
        .collect();
    let config = kube_sim::SimConfig::new(
        state.cluster.clone(),
        nodes,
        Arc::new(EngineProbe { engine }),
    );
    kube_sim::ApiServer::start(config)
        .await
        .map_err(|e| ClusterError::Sim {
            cluster: state.cluster.clone(),
            problem: crate::error_chain(&e),
        })
}

async fn spawn_detached(
    program: &Path,
    args: &[String],
    state: &SimState,
    state_dir: &Path,
) -> Result<(), ClusterError> {
    let dir = cluster_dir(state_dir, &state.cluster);
    let io = |what: &str| {
        let what = format!("{what} in {}", dir.display());
        move |source| ClusterError::Io { what, source }
    };
    std::fs::create_dir_all(&dir).map_err(io("creating the sim state folder"))?;
    let _ = std::fs::remove_file(dir.join("server.json"));
    std::fs::write(
        dir.join("spec.json"),
        serde_json::to_vec_pretty(state).expect("state serialises"),
    )
    .map_err(io("writing spec.json"))?;
    let log = std::fs::File::create(dir.join("server.log")).map_err(io("creating server.log"))?;
    let mut command = std::process::Command::new(program);
    command
        .args(args)
        .arg("--state")
        .arg(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(io("opening server.log"))?)
        .stderr(log);
    // Its own process group: a Ctrl-C meant for the creating command must not
    // take the cluster down with it.
    std::os::unix::process::CommandExt::process_group(&mut command, 0);
    let mut child = command.spawn().map_err(|source| ClusterError::Io {
        what: format!("starting the sim API server `{}`", program.display()),
        source,
    })?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(info) = read_server_info(&dir)
            && info.pid == child.id()
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ClusterError::Sim {
                cluster: state.cluster.clone(),
                problem: format!(
                    "the API server process exited ({status}) before answering; its log:\n{}",
                    log_tail(&dir)
                ),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            return Err(ClusterError::Sim {
                cluster: state.cluster.clone(),
                problem: format!(
                    "the API server did not start within 20s; its log:\n{}",
                    log_tail(&dir)
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_server_info(dir: &Path) -> Result<ServerInfo, String> {
    let text = std::fs::read_to_string(dir.join("server.json")).map_err(|e| e.to_string())?;
    serde_json::from_str(&text).map_err(|e| e.to_string())
}

fn log_tail(dir: &Path) -> String {
    crate::engine::last_lines(
        &std::fs::read_to_string(dir.join("server.log")).unwrap_or_default(),
        15,
    )
}

/// Runs the API server of a detached sim cluster until SIGTERM or SIGINT, or
/// until its control-plane node container disappears. This is the body of the
/// process [`SimServer::Detached`] starts.
pub async fn serve(state_dir: &Path) -> Result<(), ClusterError> {
    let text = std::fs::read_to_string(state_dir.join("spec.json")).map_err(|source| {
        ClusterError::Io {
            what: format!("reading {}/spec.json", state_dir.display()),
            source,
        }
    })?;
    let state: SimState = serde_json::from_str(&text).map_err(|e| ClusterError::Sim {
        cluster: state_dir.display().to_string(),
        problem: format!("spec.json is not valid: {e}"),
    })?;
    let engine = Engine::connect_to(&state.engine_endpoint)
        .await
        .map_err(|why| ClusterError::Sim {
            cluster: state.cluster.clone(),
            problem: format!("engine {} does not answer: {why}", state.engine_endpoint),
        })?;
    let api = start_api(engine.clone(), &state).await?;
    write_private(&state.kubeconfig, &api.kubeconfig())?;
    let info = ServerInfo {
        url: api.url(),
        pid: std::process::id(),
    };
    let tmp = state_dir.join("server.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&info).expect("serialises"))
        .and_then(|()| std::fs::rename(&tmp, state_dir.join("server.json")))
        .map_err(|source| ClusterError::Io {
            what: format!("writing {}/server.json", state_dir.display()),
            source,
        })?;
    eprintln!(
        "sim API server for cluster {} at {} (pid {}); no container ever runs here",
        state.cluster, info.url, info.pid
    );

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("a SIGTERM handler");
    let control_plane = state
        .nodes
        .iter()
        .find(|(_, role)| role == "control-plane")
        .map(|(name, _)| name.clone())
        .unwrap_or_default();
    let orphaned = async {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            if let Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) = engine
                .docker()
                .inspect_container(
                    &control_plane,
                    None::<bollard::query_parameters::InspectContainerOptions>,
                )
                .await
            {
                return;
            }
        }
    };
    tokio::select! {
        _ = term.recv() => eprintln!("SIGTERM: stopping"),
        _ = tokio::signal::ctrl_c() => eprintln!("SIGINT: stopping"),
        () = orphaned => eprintln!("node {control_plane} is gone: stopping"),
    }
    api.shutdown().await;
    Ok(())
}

/// The detached server of the cluster whose state is in `dir`, if it is
/// running: its pid must be alive *and* be that server (its command line
/// names this state folder), so a pid reused after a reboot is never taken
/// for it, let alone signalled.
fn live_server(dir: &Path) -> Option<ServerInfo> {
    let info = read_server_info(dir).ok()?;
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", info.pid)).ok()?;
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let serves_this = args
        .windows(2)
        .any(|pair| pair[0] == "--state" && Path::new(&pair[1]) == dir);
    (serves_this && !is_zombie(info.pid as i32)).then_some(info)
}

/// The URL of `cluster`'s detached API server, if it is running.
pub fn api_url(state_dir: &Path, cluster: &str) -> Option<String> {
    live_server(&cluster_dir(state_dir, cluster)).map(|info| info.url)
}

/// Stops the detached server (if any), removes the node containers, the
/// kubeconfig and the state folder. Idempotent.
pub(crate) async fn delete(
    engine: &Engine,
    cluster: &str,
    kubeconfig: &Path,
    state_dir: &Path,
) -> Result<bool, ClusterError> {
    let dir = cluster_dir(state_dir, cluster);
    let mut existed = dir.exists();
    if let Some(info) = live_server(&dir) {
        stop_process(info.pid).await;
    }
    existed |= remove_node_containers(engine, cluster).await? > 0;
    let _ = std::fs::remove_file(kubeconfig);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).map_err(|source| ClusterError::Io {
            what: format!("removing {}", dir.display()),
            source,
        })?;
    }
    Ok(existed)
}

/// SIGTERM, then SIGKILL after 5 s.
async fn stop_process(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid as i32);
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..100 {
        if kill(pid, None).is_err() || is_zombie(pid.as_raw()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = kill(pid, Signal::SIGKILL);
}

/// A child that exited but was not reaped still answers signal 0.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(true)
}

fn absolute(path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_recorded_pid_that_is_not_this_clusters_server_is_not_taken_for_it() {
        let state = tempfile::tempdir().unwrap();
        let dir = cluster_dir(state.path(), "c");
        std::fs::create_dir_all(&dir).unwrap();
        // A live process that is not the server (as after a reboot, when the
        // recorded pid belongs to someone else now).
        let mut other = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let info = ServerInfo {
            url: "http://127.0.0.1:1".into(),
            pid: other.id(),
        };
        std::fs::write(dir.join("server.json"), serde_json::to_vec(&info).unwrap()).unwrap();
        assert_eq!(api_url(state.path(), "c"), None);
        // Nor one serving a cluster whose name starts the same.
        let mut lookalike = std::process::Command::new("sh")
            .args(["-c", "sleep 30", "sim-serve", "--state"])
            .arg(cluster_dir(state.path(), "c-bar"))
            .spawn()
            .unwrap();
        let info = ServerInfo {
            url: "http://127.0.0.1:1".into(),
            pid: lookalike.id(),
        };
        std::fs::write(dir.join("server.json"), serde_json::to_vec(&info).unwrap()).unwrap();
        assert_eq!(api_url(state.path(), "c"), None);
        let _ = other.kill();
        let _ = lookalike.kill();
        let _ = other.wait();
        let _ = lookalike.wait();
    }
}
