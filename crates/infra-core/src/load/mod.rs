//! [`load_image_to_kind`]: put an engine's image into every node of a Kind
//! cluster.
//!
//! The default [`LoadMethod::Stream`] exports the image once through the engine
//! API and streams it, fanned out, into `ctr images import -` on every node
//! that does not already hold the image id, through exec with stdin attached.
//! Nothing is written to disk. [`LoadMethod::Archive`] is the original's way
//! (save a tar, `kind load image-archive`, delete the tar), kept for comparison.
//! Either way the image is verified on every node afterwards.

pub mod nodes;

use std::path::PathBuf;
use std::time::Instant;

use bytes::Bytes;
use futures::future::join_all;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

use crate::engine::{Engine, EngineError, EngineKind, ExecOutput, collect_output, last_lines};
use nodes::{KindNode, ctr_import_command, find_kind_nodes, image_ids_on_node, node_snapshotter};

/// How an image travels from the engine into the nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LoadMethod {
    /// Export once, stream into every node concurrently; no file on disk.
    #[default]
    Stream,
    /// Save a tar file, load it with `kind load image-archive` (or a per-node
    /// import from the file when kind is not installed), delete the file.
    Archive,
}

impl std::str::FromStr for LoadMethod {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stream" => Ok(LoadMethod::Stream),
            "archive" => Ok(LoadMethod::Archive),
            other => Err(format!(
                "unknown load method `{other}`: use `stream` or `archive`"
            )),
        }
    }
}

impl std::fmt::Display for LoadMethod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LoadMethod::Stream => "stream",
            LoadMethod::Archive => "archive",
        })
    }
}

/// What happened on one node.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct NodeLoad {
    pub name: String,
    /// The node already held the image id; nothing was sent.
    pub skipped: bool,
    pub seconds: f64,
}

/// The outcome of [`load_image_to_kind`].
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct LoadReport {
    pub image: String,
    pub cluster: String,
    pub method: LoadMethod,
    pub nodes: Vec<NodeLoad>,
    /// Bytes written to temporary files (0 for `stream`).
    pub temp_bytes: u64,
    /// Bytes of image archive exported by the engine (once, whatever the node
    /// count); 0 when every node was skipped.
    #[serde(skip)]
    pub exported_bytes: u64,
    pub seconds: f64,
}

/// Errors of loading. Each names the image, and the node or cluster.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "cluster {cluster} has no nodes on {engine}: no container is labelled \
         io.x-k8s.kind.cluster={cluster}. Create the cluster first, or check the name \
         (and that kind uses this engine)"
    )]
    NoNodes { cluster: String, engine: String },

    #[error(
        "node {node} of cluster {cluster} is {state}, not running; restart or recreate the cluster"
    )]
    NodeNotRunning {
        cluster: String,
        node: String,
        state: String,
    },

    #[error("image {image} is not in {engine}; build it first (cargo xtask image build ...)")]
    ImageMissing { image: String, engine: String },

    #[error("exporting {image} from the engine failed")]
    Export {
        image: String,
        #[source]
        source: bollard::errors::Error,
    },

    #[error("importing {image} into node {node} failed (ctr exit code {exit_code}): {stderr}")]
    Import {
        image: String,
        node: String,
        exit_code: i64,
        stderr: String,
    },

    #[error(
        "image {image} ({image_id}) is not on node {node} after the import; the node's \
         containerd holds {found:?} under that name"
    )]
    NotPresentAfter {
        image: String,
        image_id: String,
        node: String,
        found: Vec<String>,
    },

    #[error("temporary archive {path} for {image} failed")]
    Archive {
        image: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("`kind load image-archive` for {image} into {cluster} failed: {output}")]
    KindLoad {
        image: String,
        cluster: String,
        output: String,
    },

    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Loads `image` (a reference the engine holds) into every node of `cluster`
/// by streaming: exported once, imported into every node that lacks it, no
/// file written.
pub async fn load_image_to_kind(
    engine: &Engine,
    image: &str,
    cluster: &str,
) -> Result<LoadReport, LoadError> {
    load_image_to_kind_with(engine, image, cluster, LoadMethod::Stream).await
}

/// [`load_image_to_kind`] by a chosen method (`archive` is the original's).
pub async fn load_image_to_kind_with(
    engine: &Engine,
    image: &str,
    cluster: &str,
    method: LoadMethod,
) -> Result<LoadReport, LoadError> {
    let started = Instant::now();
    let image_id = local_image_id(engine, image).await?;
    let nodes = running_nodes(engine, cluster).await?;

    let mut report = LoadReport {
        image: image.to_string(),
        cluster: cluster.to_string(),
        method,
        nodes: Vec::new(),
        temp_bytes: 0,
        exported_bytes: 0,
        seconds: 0.0,
    };
    match method {
        LoadMethod::Stream => {
            // Per node, concurrently: snapshotter, and whether the id is there.
            let image_id = &image_id;
            let checks = join_all(nodes.iter().map(|node| async move {
                let checked = Instant::now();
                let snapshotter = node_snapshotter(engine, &node.name).await?;
                let present = image_ids_on_node(engine, &node.name, image)
                    .await?
                    .contains(image_id);
                Ok::<_, EngineError>((node, snapshotter, present, checked.elapsed()))
            }))
            .await;
            let mut targets = Vec::new();
            for check in checks {
                let (node, snapshotter, present, took) = check?;
                if present {
                    report.nodes.push(NodeLoad {
                        name: node.name.clone(),
                        skipped: true,
                        seconds: took.as_secs_f64(),
                    });
                } else {
                    targets.push((node.name.clone(), snapshotter));
                }
            }
            if !targets.is_empty() {
                let (loaded, bytes) = stream_to_nodes(engine, image, &targets).await?;
                report.nodes.extend(loaded);
                report.exported_bytes = bytes;
            }
        }
        LoadMethod::Archive => {
            let (loaded, bytes) = load_via_archive(engine, image, cluster, &nodes).await?;
            report.nodes = loaded;
            report.temp_bytes = bytes;
            report.exported_bytes = bytes;
        }
    }
    report.nodes.sort_by(|a, b| a.name.cmp(&b.name));

    // Verify, concurrently, that every node now holds the image id.
    let verified = join_all(nodes.iter().map(|node| async move {
        let found = image_ids_on_node(engine, &node.name, image).await?;
        Ok::<_, EngineError>((node, found))
    }))
    .await;
    for result in verified {
        let (node, found) = result?;
        if !found.contains(&image_id) {
            return Err(LoadError::NotPresentAfter {
                image: image.to_string(),
                image_id: image_id.clone(),
                node: node.name.clone(),
                found,
            });
        }
    }
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// The engine's id for `image`, as `sha256:<hex>`.
async fn local_image_id(engine: &Engine, image: &str) -> Result<String, LoadError> {
    match engine.docker().inspect_image(image).await {
        Ok(inspect) => {
            let id = inspect.id.unwrap_or_default();
            Ok(if id.starts_with("sha256:") {
                id
            } else {
                format!("sha256:{id}")
            })
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Err(LoadError::ImageMissing {
            image: image.to_string(),
            engine: engine.to_string(),
        }),
        Err(e) => Err(EngineError::api(format!("inspecting {image}"), e).into()),
    }
}

async fn running_nodes(engine: &Engine, cluster: &str) -> Result<Vec<KindNode>, LoadError> {
    let nodes = find_kind_nodes(engine, cluster).await?;
    if nodes.is_empty() {
        return Err(LoadError::NoNodes {
            cluster: cluster.to_string(),
            engine: engine.to_string(),
        });
    }
    if let Some(node) = nodes.iter().find(|n| n.state != "running") {
        return Err(LoadError::NodeNotRunning {
            cluster: cluster.to_string(),
            node: node.name.clone(),
            state: node.state.clone(),
        });
    }
    Ok(nodes)
}

/// Exports `image` once and writes each chunk to every target's `ctr import`
/// stdin concurrently (the slowest node sets the pace; memory stays at one
/// chunk), while each node's output is read concurrently. Returns per-node
/// timings and the bytes exported.
async fn stream_to_nodes(
    engine: &Engine,
    image: &str,
    targets: &[(String, String)],
) -> Result<(Vec<NodeLoad>, u64), LoadError> {
    let started = Instant::now();
    let mut writers = Vec::new();
    let mut sessions = Vec::new();
    for (node, snapshotter) in targets {
        let command = ctr_import_command(snapshotter);
        let command: Vec<&str> = command.iter().map(String::as_str).collect();
        let session = engine.start_exec(node, &command, true).await?;
        writers.push(Some(session.input));
        sessions.push((node.clone(), session.id, session.output));
    }
    let readers = join_all(sessions.into_iter().map(|(node, id, output)| async move {
        let collected = collect_output(output).await;
        (node, id, collected, started.elapsed().as_secs_f64())
    }));
    let export = engine.docker().export_image(image);
    let (exported, finished) = tokio::join!(fan_out(export, &mut writers), readers);
    drop(writers);

    // A failed export truncates every import: report the cause, not the symptom.
    let bytes = exported.map_err(|source| LoadError::Export {
        image: image.to_string(),
        source,
    })?;
    let mut loaded = Vec::new();
    for (node, id, collected, seconds) in finished {
        let (stdout, stderr) = collected
            .map_err(|e| EngineError::api(format!("reading ctr's output on node {node}"), e))?;
        let output = ExecOutput {
            exit_code: engine.exec_exit_code(&id).await?,
            stdout,
            stderr,
        };
        if !output.success() {
            return Err(LoadError::Import {
                image: image.to_string(),
                node,
                exit_code: output.exit_code,
                stderr: output.tail(10),
            });
        }
        loaded.push(NodeLoad {
            name: node,
            skipped: false,
            seconds,
        });
    }
    Ok((loaded, bytes))
}

/// Feeds `stream` to every writer; a writer that fails is dropped (its node's
/// exit code and stderr will explain) and the rest go on.
async fn fan_out<S>(
    stream: S,
    writers: &mut [Option<std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>>],
) -> Result<u64, bollard::errors::Error>
where
    S: Stream<Item = Result<Bytes, bollard::errors::Error>>,
{
    futures::pin_mut!(stream);
    let mut total = 0u64;
    let result = loop {
        match stream.next().await {
            None => break Ok(total),
            Some(Err(e)) => break Err(e),
            Some(Ok(chunk)) => {
                total += chunk.len() as u64;
                let writes = join_all(writers.iter_mut().map(|slot| {
                    let chunk = chunk.clone();
                    async move {
                        if let Some(writer) = slot
                            && writer.write_all(&chunk).await.is_err()
                        {
                            *slot = None;
                        }
                    }
                }));
                writes.await;
                if writers.iter().all(Option::is_none) {
                    break Ok(total);
                }
            }
        }
    };
    // Half-close every stdin so each ctr sees EOF.
    join_all(writers.iter_mut().flatten().map(|w| w.shutdown())).await;
    result
}

/// The original method: save to a tar file, load it, delete it.
async fn load_via_archive(
    engine: &Engine,
    image: &str,
    cluster: &str,
    nodes: &[KindNode],
) -> Result<(Vec<NodeLoad>, u64), LoadError> {
    let started = Instant::now();
    let archive_err = |path: &std::path::Path| {
        let path = path.to_path_buf();
        move |source| LoadError::Archive {
            image: image.to_string(),
            path,
            source,
        }
    };
    // Deleted when dropped, on every path out of this function.
    let temp = tempfile::Builder::new()
        .prefix("e2e-image-")
        .suffix(".tar")
        .tempfile()
        .map_err(archive_err(&std::env::temp_dir()))?;
    let path = temp.path().to_path_buf();
    let mut file = tokio::fs::File::create(&path)
        .await
        .map_err(archive_err(&path))?;
    let mut export = engine.docker().export_image(image);
    let mut bytes = 0u64;
    while let Some(chunk) = export.next().await {
        let chunk = chunk.map_err(|source| LoadError::Export {
            image: image.to_string(),
            source,
        })?;
        bytes += chunk.len() as u64;
        file.write_all(&chunk).await.map_err(archive_err(&path))?;
    }
    file.flush().await.map_err(archive_err(&path))?;
    drop(file);

    if let Ok(kind) = which::which("kind") {
        let mut command = tokio::process::Command::new(kind);
        command
            .args(["load", "image-archive"])
            .arg(&path)
            .args(["--name", cluster])
            .kill_on_drop(true);
        if engine.kind() == EngineKind::Podman {
            command.env("KIND_EXPERIMENTAL_PROVIDER", "podman");
        }
        let output = command.output().await.map_err(archive_err(&path))?;
        if !output.status.success() {
            return Err(LoadError::KindLoad {
                image: image.to_string(),
                cluster: cluster.to_string(),
                output: last_lines(
                    &format!(
                        "{}{}",
                        String::from_utf8_lossy(&output.stdout),
                        String::from_utf8_lossy(&output.stderr)
                    ),
                    10,
                ),
            });
        }
        let seconds = started.elapsed().as_secs_f64();
        let loaded = nodes
            .iter()
            .map(|n| NodeLoad {
                name: n.name.clone(),
                skipped: false,
                seconds,
            })
            .collect();
        return Ok((loaded, bytes));
    }

    // No kind binary: the same import kind runs, fed from the file, per node.
    let results = join_all(nodes.iter().map(|node| {
        let path = path.clone();
        async move {
            let snapshotter = node_snapshotter(engine, &node.name).await?;
            let file = tokio::fs::File::open(&path)
                .await
                .map_err(archive_err(&path))?;
            let stdin = tokio_util::io::ReaderStream::with_capacity(file, 256 * 1024);
            let command = ctr_import_command(&snapshotter);
            let command: Vec<&str> = command.iter().map(String::as_str).collect();
            let output = engine
                .exec_with_stdin(&node.name, &command, Some(stdin))
                .await?;
            if !output.success() {
                return Err(LoadError::Import {
                    image: image.to_string(),
                    node: node.name.clone(),
                    exit_code: output.exit_code,
                    stderr: output.tail(10),
                });
            }
            Ok(NodeLoad {
                name: node.name.clone(),
                skipped: false,
                seconds: started.elapsed().as_secs_f64(),
            })
        }
    }))
    .await;
    let loaded = results.into_iter().collect::<Result<Vec<_>, _>>()?;
    drop(temp);
    Ok((loaded, bytes))
}
