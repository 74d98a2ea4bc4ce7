//! `cargo xtask image build|load`: the split image API on the command line.
//!
//! With `--json`, stdout is exactly one JSON object (the contract scripts rely
//! on); progress always goes to stderr.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use infra_core::{E2eImageConfig, LoadMethod, build_image_for_kind, load_image_to_kind_with};
use serde_json::json;

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Build a service's image (skipped when the same inputs were built before).
    Build(BuildArgs),
    /// Load an image into every node of a Kind cluster.
    Load(LoadArgs),
}

#[derive(Args)]
pub struct BuildArgs {
    /// The service the image is for (part of the tag).
    #[arg(long)]
    service: String,
    /// Dockerfile path, relative to the context.
    #[arg(long)]
    dockerfile: PathBuf,
    /// The build context folder.
    #[arg(long, default_value = ".")]
    context: PathBuf,
    /// Image name without registry or tag; defaults to the service name.
    #[arg(long)]
    image: Option<String>,
    /// A build argument, KEY=VALUE (repeatable).
    #[arg(long = "build-arg", value_name = "KEY=VALUE")]
    build_args: Vec<String>,
    /// Build with coverage instrumentation (build arg GOFLAGS=-cover).
    #[arg(long)]
    coverage: bool,
    /// Multi-stage target.
    #[arg(long)]
    target: Option<String>,
    /// Shell command run in the context before building.
    #[arg(long)]
    pre_build: Option<String>,
    /// Build every step again (no cache check, no layer cache).
    #[arg(long)]
    no_cache: bool,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct LoadArgs {
    /// The image reference (fully qualified, as `image build` prints it).
    image: String,
    /// The Kind cluster's name.
    #[arg(long)]
    cluster: String,
    /// `stream` (default: no temp file, all nodes at once) or `archive` (the
    /// original's tar file + `kind load image-archive`).
    #[arg(long, default_value = "stream")]
    method: LoadMethod,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn run(command: ImageCommand) -> Result<()> {
    match command {
        ImageCommand::Build(args) => build(args).await,
        ImageCommand::Load(args) => load(args).await,
    }
}

async fn build(args: BuildArgs) -> Result<()> {
    let mut config = E2eImageConfig::new(&args.service, &args.dockerfile)
        .context(&args.context)
        .coverage(args.coverage)
        .no_cache(args.no_cache)
        .log_dir(crate::e2e_dir().join("logs"));
    if let Some(image) = &args.image {
        config = config.image(image);
    }
    for pair in &args.build_args {
        let Some((key, value)) = pair.split_once('=') else {
            bail!("--build-arg `{pair}` is not KEY=VALUE");
        };
        config = config.build_arg(key, value);
    }
    if let Some(target) = &args.target {
        config = config.target(target);
    }
    if let Some(command) = &args.pre_build {
        config = config.pre_build(command);
    }
    let engine = crate::toolchain::engine().await?;
    eprintln!(
        "building {} for service {} on {engine} ...",
        args.dockerfile.display(),
        args.service
    );
    let built = build_image_for_kind(&engine, &config).await?;
    if args.json {
        println!(
            "{}",
            json!({
                "image": built.reference,
                "image_id": built.image_id,
                "input_digest": built.input_digest,
                "cached": built.cached,
                "seconds": built.seconds,
            })
        );
    } else if built.cached {
        println!(
            "cached {} ({}): same inputs already built, {:.2}s",
            built.reference,
            short_id(&built.image_id),
            built.seconds
        );
    } else {
        println!(
            "built {} ({}) in {:.2}s; log: {}",
            built.reference,
            short_id(&built.image_id),
            built.seconds,
            built.log.display()
        );
    }
    Ok(())
}

async fn load(args: LoadArgs) -> Result<()> {
    let engine = crate::toolchain::engine().await?;
    eprintln!(
        "loading {} into cluster {} by {} from {engine} ...",
        args.image, args.cluster, args.method
    );
    let report = load_image_to_kind_with(&engine, &args.image, &args.cluster, args.method)
        .await
        .with_context(|| format!("loading {} into {}", args.image, args.cluster))?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
        return Ok(());
    }
    for node in &report.nodes {
        eprintln!(
            "  {:<40} {:<8} {:.2}s",
            node.name,
            if node.skipped { "skipped" } else { "loaded" },
            node.seconds
        );
    }
    let loaded = report.nodes.iter().filter(|n| !n.skipped).count();
    println!(
        "loaded {} into {}: {loaded} node(s) loaded, {} already had it; {} exported, {} in temp files; {:.2}s",
        report.image,
        report.cluster,
        report.nodes.len() - loaded,
        human_bytes(report.exported_bytes),
        human_bytes(report.temp_bytes),
        report.seconds
    );
    Ok(())
}

fn short_id(id: &str) -> &str {
    let hex = id.trim_start_matches("sha256:");
    &hex[..12.min(hex.len())]
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}
