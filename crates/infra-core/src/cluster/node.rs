//! Containerd node containers: stand-ins for Kind nodes on machines without
//! kind. Each runs the host's containerd (copied into a `FROM scratch` image
//! built locally, so no registry is needed) and carries kind's labels and names,
//! so the real loader finds and fills them exactly as it would a Kind cluster.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use bollard::models::{ContainerCreateBody, HostConfig, PortBinding};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, StartContainerOptions,
};

use super::spec::PortMapping;
use crate::engine::{Engine, EngineError, EngineKind};
use crate::image::{BuiltImage, E2eImageConfig, ImageError, build_image_for_kind};
use crate::load::nodes::{CLUSTER_LABEL, KindNode, ROLE_LABEL, find_kind_nodes};

/// The host programs a node needs; their shared libraries are copied too.
const NODE_BINARIES: &[&str] = &["containerd", "ctr", "containerd-shim-runc-v2", "runc"];

/// containerd's config in every node: CRI with the overlayfs snapshotter, as
/// in Kind's node image.
const CONTAINERD_CONFIG: &str = "version = 2\n\
[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"overlayfs\"\n";

const NODE_DOCKERFILE: &str = "FROM scratch\nCOPY . /\n\
ENTRYPOINT [\"/usr/bin/containerd\", \"--config\", \"/etc/containerd/config.toml\"]\n";

/// Errors of making node containers.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(
        "`{program}` is not installed on this machine; node containers are built from the \
         host's containerd: install it with `apt-get install -y containerd runc`"
    )]
    MissingProgram { program: String },

    #[error("preparing the node image's files in {path} failed")]
    Staging {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("building the node image failed")]
    Image(#[from] ImageError),

    #[error("node {node} did not answer `ctr version` within {seconds}s; its log:\n{log}")]
    NotReady {
        node: String,
        seconds: u64,
        log: String,
    },

    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// One node container: kind's name and role, plus the host ports and folders
/// it carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    pub name: String,
    pub role: String,
    /// NodePorts published on the host.
    pub ports: Vec<PortMapping>,
    /// Host folders bind-mounted into the node (host path, container path).
    pub mounts: Vec<(PathBuf, String)>,
}

/// Kind's node names: `<cluster>-control-plane`, then `<cluster>-worker`,
/// `<cluster>-worker2`, ...
pub fn node_specs(cluster: &str, workers: usize) -> Vec<NodeSpec> {
    let mut specs = vec![NodeSpec {
        name: format!("{cluster}-control-plane"),
        role: "control-plane".into(),
        ports: Vec::new(),
        mounts: Vec::new(),
    }];
    for i in 1..=workers {
        let suffix = if i == 1 { String::new() } else { i.to_string() };
        specs.push(NodeSpec {
            name: format!("{cluster}-worker{suffix}"),
            role: "worker".into(),
            ports: Vec::new(),
            mounts: Vec::new(),
        });
    }
    specs
}

/// Builds (or finds, by its content-addressed tag) the node image from the
/// host's containerd, ctr, shim and runc and their shared libraries.
#[allow(clippy::expect_used, reason = "re-raises a panic of the blocking task")]
pub async fn ensure_node_image(engine: &Engine, log_dir: &Path) -> Result<BuiltImage, NodeError> {
    let staging = tempfile::Builder::new()
        .prefix("e2e-node-image-")
        .tempdir()
        .map_err(|source| NodeError::Staging {
            path: std::env::temp_dir(),
            source,
        })?;
    let root = staging.path().to_path_buf();
    tokio::task::spawn_blocking(move || stage_node_files(&root))
        .await
        .expect("staging does not panic")?;
    let config = E2eImageConfig::new("node", "Dockerfile")
        .image("kind-e2e/node")
        .context(staging.path())
        .log_dir(log_dir);
    Ok(build_image_for_kind(engine, &config).await?)
}

#[allow(clippy::expect_used, reason = "absolute paths have parents")]
fn stage_node_files(root: &Path) -> Result<(), NodeError> {
    let staging = |path: &Path| {
        let path = path.to_path_buf();
        move |source| NodeError::Staging { path, source }
    };
    let mut files: Vec<PathBuf> = Vec::new();
    for program in NODE_BINARIES {
        let path = which::which(program).map_err(|_| NodeError::MissingProgram {
            program: program.to_string(),
        })?;
        files.extend(shared_libraries(&path));
        files.push(path);
    }
    files.sort();
    files.dedup();
    for file in &files {
        let dest = root.join(file.strip_prefix("/").unwrap_or(file));
        std::fs::create_dir_all(dest.parent().expect("absolute paths have parents"))
            .map_err(staging(&dest))?;
        // `copy` follows symlinks, so a library's real file lands at the linked name.
        std::fs::copy(file, &dest).map_err(staging(file))?;
    }
    for dir in [
        "tmp",
        "run/containerd",
        "var/lib/containerd",
        "etc/containerd",
    ] {
        std::fs::create_dir_all(root.join(dir)).map_err(staging(&root.join(dir)))?;
    }
    std::fs::write(root.join("etc/containerd/config.toml"), CONTAINERD_CONFIG)
        .map_err(staging(root))?;
    std::fs::write(root.join("Dockerfile"), NODE_DOCKERFILE).map_err(staging(root))?;
    Ok(())
}

/// The absolute library paths `ldd` reports for `binary` (none for static ones).
fn shared_libraries(binary: &Path) -> Vec<PathBuf> {
    let Ok(output) = std::process::Command::new("ldd").arg(binary).output() else {
        return Vec::new();
    };
    parse_ldd(&String::from_utf8_lossy(&output.stdout))
}

fn parse_ldd(text: &str) -> Vec<PathBuf> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// Starts the node containers of `cluster` from `image` and waits until each
/// one's containerd answers. `labels` are added to kind's own (run ids, ...).
/// On failure, the containers started so far are removed.
pub async fn start_node_containers(
    engine: &Engine,
    image: &str,
    cluster: &str,
    specs: &[NodeSpec],
    labels: &HashMap<String, String>,
) -> Result<Vec<KindNode>, NodeError> {
    for spec in specs {
        if let Err(error) = start_one(engine, image, cluster, spec, labels).await {
            let _ = remove_node_containers(engine, cluster).await;
            return Err(error);
        }
    }
    let ready = futures::future::join_all(specs.iter().map(|s| wait_ready(engine, &s.name))).await;
    if let Some(error) = ready.into_iter().find_map(Result::err) {
        let _ = remove_node_containers(engine, cluster).await;
        return Err(error);
    }
    Ok(find_kind_nodes(engine, cluster).await?)
}

async fn start_one(
    engine: &Engine,
    image: &str,
    cluster: &str,
    spec: &NodeSpec,
    labels: &HashMap<String, String>,
) -> Result<(), NodeError> {
    let mut all_labels = labels.clone();
    all_labels.insert(CLUSTER_LABEL.into(), cluster.into());
    all_labels.insert(ROLE_LABEL.into(), spec.role.clone());
    // overlayfs cannot mount on the container's own overlay root: give
    // containerd's state a tmpfs.
    let tmpfs = HashMap::from([(
        "/var/lib/containerd".to_string(),
        "rw,exec,size=4g".to_string(),
    )]);
    let binds: Vec<String> = spec
        .mounts
        .iter()
        .map(|(host, container)| format!("{}:{container}", host.display()))
        .collect();
    let port_bindings: HashMap<String, Option<Vec<PortBinding>>> = spec
        .ports
        .iter()
        .map(|p| {
            (
                format!("{}/tcp", p.container_port),
                Some(vec![PortBinding {
                    host_ip: Some(p.listen_address.clone()),
                    host_port: Some(p.host_port.to_string()),
                }]),
            )
        })
        .collect();
    let exposed_ports: Vec<String> = port_bindings.keys().cloned().collect();
    let mut host_config = match engine.kind() {
        // `--privileged` is refused on hosts without CAP_SYS_RESOURCE; these
        // grant what containerd needs without it.
        EngineKind::Docker => HostConfig {
            cap_add: Some(vec!["ALL".into()]),
            cap_drop: Some(vec!["SYS_RESOURCE".into()]),
            security_opt: Some(vec![
                "seccomp=unconfined".into(),
                "apparmor=unconfined".into(),
                "label=disable".into(),
            ]),
            // The CLI's `--security-opt systempaths=unconfined`: nothing masked
            // or read-only under /proc and /sys.
            masked_paths: Some(Vec::new()),
            readonly_paths: Some(Vec::new()),
            device_cgroup_rules: Some(vec!["a *:* rwm".into()]),
            binds: Some(vec!["/sys/fs/cgroup:/sys/fs/cgroup:rw".into()]),
            tmpfs: Some(tmpfs),
            ..Default::default()
        },
        EngineKind::Podman => HostConfig {
            privileged: Some(true),
            tmpfs: Some(tmpfs),
            ..Default::default()
        },
    };
    host_config.binds.get_or_insert_with(Vec::new).extend(binds);
    if !port_bindings.is_empty() {
        host_config.port_bindings = Some(port_bindings);
    }
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        hostname: Some(spec.name.clone()),
        labels: Some(all_labels),
        exposed_ports: (!exposed_ports.is_empty()).then_some(exposed_ports),
        host_config: Some(host_config),
        ..Default::default()
    };
    let what = |verb: &str| format!("{verb} node container {}", spec.name);
    engine
        .docker()
        .create_container(
            Some(
                CreateContainerOptionsBuilder::default()
                    .name(&spec.name)
                    .build(),
            ),
            body,
        )
        .await
        .map_err(|e| EngineError::api(what("creating"), e))?;
    engine
        .docker()
        .start_container(&spec.name, None::<StartContainerOptions>)
        .await
        .map_err(|e| EngineError::api(what("starting"), e))?;
    Ok(())
}

/// Polls `ctr version` until the node's containerd answers (about 0.1 s after
/// start); a node that never does is reported with its log.
async fn wait_ready(engine: &Engine, node: &str) -> Result<(), NodeError> {
    const SECONDS: u64 = 20;
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(SECONDS);
    loop {
        if let Ok(output) = engine.exec(node, &["ctr", "version"]).await
            && output.success()
        {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(NodeError::NotReady {
                node: node.to_string(),
                seconds: SECONDS,
                log: container_log_tail(engine, node).await,
            });
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// The last lines a container printed, for error messages.
pub async fn container_log_tail(engine: &Engine, container: &str) -> String {
    use futures::StreamExt;
    let options = bollard::query_parameters::LogsOptionsBuilder::default()
        .stdout(true)
        .stderr(true)
        .tail("20")
        .build();
    let mut logs = engine.docker().logs(container, Some(options));
    let mut text = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        text.push_str(&chunk.to_string());
    }
    text
}

/// Removes every node container of `cluster` (forcefully, with volumes).
/// Returns how many were removed; removing an absent cluster is not an error.
pub async fn remove_node_containers(engine: &Engine, cluster: &str) -> Result<usize, EngineError> {
    let nodes = find_kind_nodes(engine, cluster).await?;
    let options = RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let removals = futures::future::join_all(nodes.iter().map(|node| {
        let options = options.clone();
        async move {
            match engine
                .docker()
                .remove_container(&node.id, Some(options))
                .await
            {
                Ok(()) => Ok(()),
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => Ok(()),
                Err(e) => Err(EngineError::api(
                    format!("removing node container {}", node.name),
                    e,
                )),
            }
        }
    }))
    .await;
    removals.into_iter().collect::<Result<Vec<_>, _>>()?;
    Ok(nodes.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_named_like_kinds() {
        let names: Vec<String> = node_specs("gw-e2e", 2)
            .into_iter()
            .map(|s| s.name)
            .collect();
        assert_eq!(
            names,
            ["gw-e2e-control-plane", "gw-e2e-worker", "gw-e2e-worker2"]
        );
        assert_eq!(node_specs("x", 0).len(), 1);
    }

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibseccomp.so.2 => /lib/x86_64-linux-gnu/libseccomp.so.2 (0x00007f99)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f99)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f99)\n";
        assert_eq!(
            parse_ldd(text),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libseccomp.so.2"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }
}
