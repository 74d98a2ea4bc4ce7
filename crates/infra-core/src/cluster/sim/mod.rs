//! The simulated cluster, for machines where kind nodes cannot boot (or to
//! rehearse a setup in seconds): real containerd node containers (kind's
//! names and labels, so the real loader fills them), the pinned toolchain's
//! real control plane on 127.0.0.1 ([`control_plane`]: etcd, kube-apiserver,
//! kube-controller-manager, kube-scheduler), and a node agent ([`agent`])
//! in place of the kubelets. **No container ever runs**: a pod is "ready"
//! when every image it needs is in its node's containerd. Manifests are
//! validated, admitted, defaulted, scheduled and reconciled by the real
//! components; only what a kubelet would do is simulated.
//!
//! The control plane and agent live either in the creating process
//! ([`SimServer::InProcess`], for tests) or in a detached supervisor process
//! ([`SimServer::Detached`]) that outlives the command that created it, like
//! a kind cluster: it is stopped by [`delete`](super::delete). Its state (spec, URL, pid,
//! logs, certificates, etcd data) is in `<state_dir>/sim/<cluster>/`.

pub mod agent;
pub mod control_plane;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::node::{ensure_node_image, node_specs, remove_node_containers, start_node_containers};
use super::spec::ClusterSpec;
use super::{ClusterError, ClusterOptions, write_private};
use crate::engine::Engine;
use crate::load::nodes::KindNode;

/// How long a detached supervisor may take to report its control plane up
/// (the API server's readiness, 90 s at most, then the nodes', 60 s).
const DETACHED_START_TIMEOUT: Duration = Duration::from_secs(180);

/// Label marking node containers of a simulated cluster.
pub const PROVIDER_LABEL: &str = "io.kind-e2e.provider";

/// Where the sim's control plane and node agent run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SimServer {
    /// In this process; the cluster's API goes away with the [`super::Cluster`]
    /// handle (or the process).
    InProcess,
    /// In a detached process started as `program args... --state <dir>`, which
    /// must call [`serve`]; it lives until [`delete`](super::delete).
    Detached { program: PathBuf, args: Vec<String> },
}

/// The in-process control plane and agent, kept alive by the cluster handle.
pub struct SimHandle {
    plane: control_plane::ControlPlane,
    agent: tokio::task::JoinHandle<()>,
}

impl SimHandle {
    pub(crate) async fn shutdown(mut self) {
        self.agent.abort();
        self.plane.stop().await;
    }
}

impl Drop for SimHandle {
    /// A handle dropped without `shutdown` still ends the agent
    /// (the control plane's processes are killed on drop).
    fn drop(&mut self) {
        self.agent.abort();
    }
}

/// What the detached server needs to start, and what it reports back.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct SimState {
    cluster: String,
    engine_endpoint: String,
    nodes: Vec<agent::AgentNode>,
    kubeconfig: PathBuf,
    /// The toolchain's `bin/` holding the control plane's binaries.
    bin: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct ServerInfo {
    url: String,
    pid: u32,
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
    options: &ClusterOptions,
) -> Result<(Vec<KindNode>, Option<SimHandle>), ClusterError> {
    let state_dir = options.state_dir.as_path();
    let bin = match &options.toolchain_bin {
        Some(bin) => bin.clone(),
        None => {
            return Err(ClusterError::Sim {
                cluster: spec.name.clone(),
                problem: "it runs the pinned toolchain's control plane, and no toolchain is \
                          built: run `cargo xtask toolchain build` first"
                    .into(),
            });
        }
    };
    control_plane::check_binaries(&spec.name, &bin)?;
    let node_image = ensure_node_image(engine, &options.log_dir).await?;
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
    let mut labels = options.labels.clone();
    labels.insert(PROVIDER_LABEL.into(), "sim".into());
    let nodes =
        start_node_containers(engine, &node_image.reference, &spec.name, &specs, &labels).await?;
    let mut agent_nodes = Vec::new();
    for node in &specs {
        agent_nodes.push(agent::AgentNode {
            name: node.name.clone(),
            role: node.role.clone(),
            ip: container_ip(engine, &node.name).await,
        });
    }

    let started = start_server(
        engine,
        spec,
        agent_nodes,
        kubeconfig,
        state_dir,
        &bin,
        &options.sim_server,
    )
    .await;
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
    nodes: Vec<agent::AgentNode>,
    kubeconfig: &Path,
    state_dir: &Path,
    bin: &Path,
    server: &SimServer,
) -> Result<Option<SimHandle>, ClusterError> {
    let state = SimState {
        cluster: spec.name.clone(),
        engine_endpoint: engine.endpoint().to_string(),
        nodes,
        kubeconfig: absolute(kubeconfig),
        bin: absolute(bin),
    };
    match server {
        SimServer::InProcess => {
            let dir = cluster_dir(state_dir, &spec.name);
            let handle = start_api(engine.clone(), &state, &dir).await?;
            write_private(kubeconfig, &handle.plane.kubeconfig())?;
            Ok(Some(handle))
        }
        SimServer::Detached { program, args } => {
            spawn_detached(program, args, &state, state_dir).await?;
            Ok(None)
        }
    }
}

/// The node container's address on the engine's network ("" if it has none).
async fn container_ip(engine: &Engine, name: &str) -> String {
    let inspected = engine
        .docker()
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await;
    let Ok(container) = inspected else {
        return String::new();
    };
    let settings = container.network_settings.unwrap_or_default();
    settings
        .networks
        .unwrap_or_default()
        .into_values()
        .filter_map(|n| n.ip_address)
        .find(|ip| !ip.is_empty())
        .unwrap_or_default()
}

/// How long a new cluster may take to be usable once its API answers: its
/// Nodes Ready without the not-ready taint, and `default/default` there.
const USABLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts the control plane in `dir` and the node agent against it, and
/// returns once the cluster is usable (as `kind create cluster --wait`).
async fn start_api(
    engine: Engine,
    state: &SimState,
    dir: &Path,
) -> Result<SimHandle, ClusterError> {
    let plane = control_plane::ControlPlane::start(&state.cluster, &state.bin, dir).await?;
    let client = match plane.client().await {
        Ok(client) => client,
        Err(error) => {
            let mut plane = plane;
            plane.stop().await;
            return Err(error);
        }
    };
    let agent = tokio::spawn(agent::run(client.clone(), engine, state.nodes.clone()));
    let mut handle = SimHandle { plane, agent };
    if let Err(error) = wait_usable(&client, &mut handle, state).await {
        handle.shutdown().await;
        return Err(error);
    }
    Ok(handle)
}

async fn wait_usable(
    client: &kube::Client,
    handle: &mut SimHandle,
    state: &SimState,
) -> Result<(), ClusterError> {
    use k8s_openapi::api::core::v1::{Node, ServiceAccount};
    let nodes = kube::Api::<Node>::all(client.clone());
    let accounts = kube::Api::<ServiceAccount>::namespaced(client.clone(), "default");
    let deadline = tokio::time::Instant::now() + USABLE_TIMEOUT;
    loop {
        if let Some(why) = handle.plane.exited() {
            return Err(ClusterError::Sim {
                cluster: state.cluster.clone(),
                problem: why,
            });
        }
        let listed =
            tokio::time::timeout(Duration::from_secs(5), nodes.list(&Default::default())).await;
        let usable_nodes: HashSet<String> = match listed {
            Ok(Ok(list)) => list
                .items
                .into_iter()
                .filter(|n| {
                    let ready = n
                        .status
                        .as_ref()
                        .and_then(|s| s.conditions.as_ref())
                        .is_some_and(|cs| {
                            cs.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        });
                    let tainted =
                        n.spec
                            .as_ref()
                            .and_then(|s| s.taints.as_ref())
                            .is_some_and(|ts| {
                                ts.iter().any(|t| t.key.starts_with("node.kubernetes.io/"))
                            });
                    ready && !tainted
                })
                .filter_map(|n| n.metadata.name)
                .collect(),
            _ => HashSet::new(),
        };
        let waiting: Vec<&str> = state
            .nodes
            .iter()
            .map(|n| n.name.as_str())
            .filter(|n| !usable_nodes.contains(*n))
            .collect();
        let account = matches!(
            tokio::time::timeout(Duration::from_secs(5), accounts.get_opt("default")).await,
            Ok(Ok(Some(_)))
        );
        if waiting.is_empty() && account {
            return Ok(());
        }
        let missing = if waiting.is_empty() {
            "the default ServiceAccount (made by kube-controller-manager)".into()
        } else {
            format!("nodes not Ready or still tainted: {}", waiting.join(", "))
        };
        if tokio::time::Instant::now() >= deadline {
            return Err(ClusterError::Sim {
                cluster: state.cluster.clone(),
                problem: format!(
                    "not usable within {}s, still waiting for {missing}; the end of \
                     kube-controller-manager's log:\n{}",
                    USABLE_TIMEOUT.as_secs(),
                    handle.plane.log_tail("kube-controller-manager")
                ),
            });
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[allow(clippy::expect_used, reason = "plain data: serialising cannot fail")]
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
        what: format!("starting the sim supervisor `{}`", program.display()),
        source,
    })?;
    // At once, so that a delete while it is still starting finds it.
    let _ = std::fs::write(dir.join("supervisor.pid"), child.id().to_string());
    let deadline = tokio::time::Instant::now() + DETACHED_START_TIMEOUT;
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
                    "the sim supervisor exited ({status}) before its control plane was up; its \
                     log:\n{}",
                    log_tail(&dir)
                ),
            });
        }
        if tokio::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(ClusterError::Sim {
                cluster: state.cluster.clone(),
                problem: format!(
                    "the control plane did not start within {}s (an overloaded machine? try \
                     again); its log:\n{}",
                    DETACHED_START_TIMEOUT.as_secs(),
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

/// Runs the control plane and node agent of a detached sim cluster until
/// SIGTERM, SIGINT or SIGHUP, until its control-plane node container
/// disappears, or until a control-plane process exits. This is the body of
/// the process [`SimServer::Detached`] starts.
#[allow(clippy::expect_used, reason = "plain data: serialising cannot fail")]
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
    // Podman's /version takes most of a second when idle and more than the
    // 3 s a single attempt allows while the run builds images beside it: the
    // supervisor, already in the background, tries for up to 30 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let engine = loop {
        match Engine::connect_to(&state.engine_endpoint).await {
            Ok(engine) => break engine,
            Err(why) if std::time::Instant::now() >= deadline => {
                return Err(ClusterError::Sim {
                    cluster: state.cluster.clone(),
                    problem: format!(
                        "engine {} does not answer (tried for 30 s): {why}",
                        state.engine_endpoint
                    ),
                });
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let mut handle = start_api(engine.clone(), &state, state_dir).await?;
    write_private(&state.kubeconfig, &handle.plane.kubeconfig())?;
    let info = ServerInfo {
        url: handle.plane.url().to_string(),
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
        "sim control plane for cluster {} at {} (supervisor pid {}); no container ever runs here",
        state.cluster, info.url, info.pid
    );

    let handler = |kind, name: &str| {
        tokio::signal::unix::signal(kind).map_err(|source| ClusterError::Io {
            what: format!("installing the {name} handler of the sim supervisor"),
            source,
        })
    };
    use tokio::signal::unix::SignalKind;
    let mut term = handler(SignalKind::terminate(), "SIGTERM")?;
    let mut hup = handler(SignalKind::hangup(), "SIGHUP")?;
    let control_plane = state
        .nodes
        .iter()
        .find(|n| n.role == "control-plane")
        .map(|n| n.name.clone())
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
    let plane_exited = async {
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if let Some(why) = handle.plane.exited() {
                return why;
            }
        }
    };
    tokio::select! {
        _ = term.recv() => eprintln!("SIGTERM: stopping"),
        _ = hup.recv() => eprintln!("SIGHUP: stopping"),
        _ = tokio::signal::ctrl_c() => eprintln!("SIGINT: stopping"),
        () = orphaned => eprintln!("node {control_plane} is gone: stopping"),
        why = plane_exited => eprintln!("{why}\nstopping"),
    }
    handle.shutdown().await;
    Ok(())
}

/// Writes `cluster`'s kubeconfig again from its control plane's own copy
/// (when the one in the kubeconfig folder was deleted or changed).
pub(crate) fn restore_kubeconfig(
    state_dir: &Path,
    cluster: &str,
    kubeconfig: &Path,
) -> Result<(), ClusterError> {
    let own = cluster_dir(state_dir, cluster).join("admin.kubeconfig");
    let text = std::fs::read_to_string(&own).map_err(|source| ClusterError::Io {
        what: format!(
            "reading {} (the sim cluster's own kubeconfig)",
            own.display()
        ),
        source,
    })?;
    write_private(kubeconfig, &text)
}

/// Copies the supervisor's and each control-plane process's log into `dir`
/// as `sim-supervisor.log` and `sim-<process>.log` (best effort).
pub(crate) fn export_logs(state_dir: &Path, cluster: &str, dir: &Path) {
    let from = cluster_dir(state_dir, cluster);
    let _ = std::fs::copy(from.join("server.log"), dir.join("sim-supervisor.log"));
    for name in control_plane::BINARIES {
        let _ = std::fs::copy(
            from.join(format!("{name}.log")),
            dir.join(format!("sim-{name}.log")),
        );
    }
}

/// The detached server of the cluster whose state is in `dir`, if it is
/// running: its pid must be alive *and* be that server (its command line
/// names this state folder), so a pid reused after a reboot is never taken
/// for it, let alone signalled.
fn live_server(dir: &Path) -> Option<ServerInfo> {
    let info = read_server_info(dir).ok()?;
    supervises(info.pid, dir).then_some(info)
}

/// Whether `pid` is alive and is the supervisor of the state folder `dir`.
fn supervises(pid: u32, dir: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<String> = cmdline
        .split(|&b| b == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    let serves_this = args
        .windows(2)
        .any(|pair| pair[0] == "--state" && Path::new(&pair[1]) == dir);
    serves_this && !is_zombie(pid as i32)
}

/// The supervisor of `dir`, running or still starting.
fn live_supervisor(dir: &Path) -> Option<u32> {
    let started = std::fs::read_to_string(dir.join("supervisor.pid"))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    let serving = read_server_info(dir).ok().map(|i| i.pid);
    [serving, started]
        .into_iter()
        .flatten()
        .find(|&pid| supervises(pid, dir))
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
    if let Some(pid) = live_supervisor(&dir) {
        stop_process(pid).await;
    }
    existed |= remove_node_containers(engine, cluster).await? > 0;
    let _ = std::fs::remove_file(kubeconfig);
    // A process that was still writing into it may make one attempt fail.
    for attempt in 1..=3 {
        if !dir.exists() {
            break;
        }
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => break,
            Err(_) if attempt < 3 => tokio::time::sleep(Duration::from_millis(300)).await,
            Err(source) => {
                return Err(ClusterError::Io {
                    what: format!("removing {}", dir.display()),
                    source,
                });
            }
        }
    }
    Ok(existed)
}

/// SIGTERM to the supervisor, which stops its control plane (within 20 s);
/// then SIGKILL to its whole process group, and a wait until it is gone.
async fn stop_process(pid: u32) {
    use nix::sys::signal::{Signal, kill, killpg};
    use nix::unistd::Pid;
    let pid = Pid::from_raw(pid as i32);
    let gone = || kill(pid, None).is_err() || is_zombie(pid.as_raw());
    if kill(pid, Signal::SIGTERM).is_err() {
        return;
    }
    for _ in 0..400 {
        if gone() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = killpg(pid, Signal::SIGKILL);
    for _ in 0..100 {
        if gone() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
