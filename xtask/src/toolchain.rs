//! `cargo xtask toolchain build` and `cargo xtask node-image build`: the
//! pinned Kubernetes toolchain and the offline kind node image made from it,
//! and how the other commands find them (the toolchain's `kind`, the node
//! image, and the engine that holds it).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::{Args, Subcommand, ValueEnum};
use infra_core::Engine;
use infra_core::cluster::node_image::{self, NodeImageOptions};
use infra_core::toolchain::{self, Toolchain};
use serde_json::json;

#[derive(Subcommand)]
pub enum ToolchainCommand {
    /// Build kubeadm, kubelet, kubectl, the control plane, etcd, CoreDNS and
    /// kind from the pinned Go modules (cached by content).
    Build(BuildArgs),
}

#[derive(Subcommand)]
pub enum NodeImageCommand {
    /// Build the kind node image offline (Debian, the toolchain, preloaded
    /// control-plane images); builds the toolchain first if needed.
    Build(NodeImageArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
enum EngineChoice {
    Docker,
    Podman,
}

#[derive(Args)]
pub struct NodeImageArgs {
    /// The engine to build into: kind's nodes run there. Default: Podman when
    /// its socket answers (rootful Podman runs kind's privileged nodes where
    /// Docker here cannot), else the default engine. DOCKER_HOST wins.
    #[arg(long)]
    engine: Option<EngineChoice>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

fn source() -> PathBuf {
    toolchain::default_source()
}

fn progress(line: &str) {
    eprintln!("[{}] {line}", jiff_now());
}

fn jiff_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "{:02}:{:02}:{:02}",
        (now / 3600) % 24,
        (now / 60) % 60,
        now % 60
    )
}

pub async fn run_toolchain(command: ToolchainCommand) -> Result<()> {
    let ToolchainCommand::Build(args) = command;
    let started = Instant::now();
    let built = toolchain::build(&source(), &toolchain::default_cache(), &progress).await?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({
                "dir": built.dir, "digest": built.digest, "versions": built.versions,
                "go": built.go_version, "cached": built.cached, "seconds": seconds,
            })
        );
    } else {
        println!(
            "toolchain {} ({}): Kubernetes {}, etcd {}, CoreDNS {}, kind {}; {} in {seconds:.1}s",
            &built.digest[..16],
            built.dir.display(),
            built.versions.kubernetes,
            built.versions.etcd,
            built.versions.coredns,
            built.versions.kind,
            if built.cached { "cached" } else { "built" },
        );
    }
    Ok(())
}

pub async fn run_node_image(command: NodeImageCommand) -> Result<()> {
    let NodeImageCommand::Build(args) = command;
    let started = Instant::now();
    let engine = match (std::env::var_os("DOCKER_HOST"), args.engine) {
        (Some(host), Some(_)) => anyhow::bail!(
            "--engine and DOCKER_HOST={} both choose the engine: give one of them",
            host.to_string_lossy()
        ),
        (Some(_), None) => Engine::connect().await?,
        (None, Some(EngineChoice::Docker)) => {
            let endpoint = infra_core::engine::default_endpoints()
                .into_iter()
                .find(|e| !e.contains("podman"))
                .ok_or_else(|| anyhow::anyhow!("no Docker socket among the default endpoints"))?;
            Engine::connect_to(&endpoint)
                .await
                .map_err(|why| anyhow::anyhow!("Docker at {endpoint} does not answer: {why}"))?
        }
        (None, Some(EngineChoice::Podman)) => podman().await?,
        (None, None) => match podman().await {
            Ok(engine) => engine,
            Err(_) => Engine::connect().await?,
        },
    };
    let toolchain = toolchain::build(&source(), &toolchain::default_cache(), &progress).await?;
    let options = NodeImageOptions {
        source: source(),
        cache: toolchain::default_cache(),
        log_dir: crate::e2e_dir().join("logs"),
    };
    let image = node_image::build(&engine, &toolchain, &options, &progress).await?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        println!(
            "{}",
            json!({
                "image": image.reference, "kubernetes": image.kubernetes, "engine": engine.to_string(),
                "images": image.images, "cached": image.cached, "seconds": seconds,
            })
        );
    } else {
        println!(
            "node image {} on {engine} ({}), {} preloaded images; {} in {seconds:.1}s",
            image.reference,
            image.kubernetes,
            image.images.len(),
            if image.cached { "cached" } else { "built" },
        );
    }
    Ok(())
}

/// The first Podman socket that answers.
async fn podman() -> Result<Engine> {
    let mut reasons = Vec::new();
    for endpoint in infra_core::engine::default_endpoints() {
        if !endpoint.contains("podman") {
            continue;
        }
        match Engine::connect_to(&endpoint).await {
            Ok(engine) => return Ok(engine),
            Err(why) => reasons.push(format!("{endpoint}: {why}")),
        }
    }
    anyhow::bail!(
        "no Podman API service answers ({}): start it with `podman system service --time=0 \
         unix:///run/podman/podman.sock &` (scripts/engines.sh does)",
        reasons.join("; ")
    )
}

/// The built toolchain for this checkout, if there is one.
pub async fn built() -> Option<Toolchain> {
    toolchain::find(&source(), &toolchain::default_cache())
        .await
        .ok()
}

/// The engine every command uses: `DOCKER_HOST` when set; Podman when
/// `KIND_EXPERIMENTAL_PROVIDER=podman`; otherwise the first default engine
/// holding this checkout's offline node image (kind's nodes must run where
/// their image is), else the first that answers.
pub async fn engine() -> Result<Engine> {
    if std::env::var_os("DOCKER_HOST").is_some() {
        return Ok(Engine::connect().await?);
    }
    if std::env::var("KIND_EXPERIMENTAL_PROVIDER").as_deref() == Ok("podman") {
        return podman().await;
    }
    match offline().await {
        Ok(offline) => Ok(offline.engine),
        Err(_) => Ok(Engine::connect().await?),
    }
}

/// This checkout's offline kind setup, if built.
pub async fn offline() -> Result<node_image::OfflineKind, String> {
    node_image::find_offline(
        &source(),
        &toolchain::default_cache(),
        &infra_core::engine::default_endpoints(),
    )
    .await
}

/// The toolchain's kind and the offline node image, when built, for
/// [`infra_core::cluster::ClusterOptions`].
pub async fn kind_options(engine: &Engine) -> ClusterTools {
    let Some(toolchain) = built().await else {
        return ClusterTools::default();
    };
    let node_image = node_image::find(engine, &toolchain, &source())
        .await
        .ok()
        .flatten();
    ClusterTools {
        kind_program: Some(toolchain.bin("kind")),
        node_image,
        bin: Some(toolchain.dir.join("bin")),
    }
}

/// What the built toolchain gives clusters: kind, its offline node image
/// (when built) and the `bin/` the sim's control plane runs from.
#[derive(Debug, Default)]
pub struct ClusterTools {
    pub kind_program: Option<PathBuf>,
    pub node_image: Option<String>,
    pub bin: Option<PathBuf>,
}

/// Whether a kind CLI is available: on PATH or built by the toolchain.
pub async fn kind_available() -> bool {
    which::which("kind").is_ok() || built().await.is_some()
}

/// A short line for run headers: which node image kind will use.
pub fn describe_node_image(image: &Option<String>) -> String {
    image
        .clone()
        .unwrap_or_else(|| "kind's default node image".into())
}
