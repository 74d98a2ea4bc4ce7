//! `cargo xtask bench image`: measures the split image API on this machine —
//! cold build, cache-hit build, and `stream` vs `archive` loads of the same
//! image into the same node containers — and prints medians of several runs.
//!
//! Each run builds a new image (a fresh random payload, so the build and both
//! loads are cold), loads it by both methods (alternating which goes first, and
//! clearing the nodes' images in between), and removes it afterwards. The node
//! containers are removed at the end, also when a step fails.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;
use infra_core::cluster::node::{
    ensure_node_image, node_specs, remove_node_containers, start_node_containers,
};
use infra_core::load::nodes::K8S_NAMESPACE;
use infra_core::{
    E2eImageConfig, Engine, LoadMethod, build_image_for_kind, load_image_to_kind_with,
};
use serde_json::json;

#[derive(Args)]
pub struct BenchImageArgs {
    /// Size of the image's payload in MiB (plus a static busybox).
    #[arg(long, default_value_t = 100, allow_negative_numbers = true, value_parser = crate::positive)]
    size_mb: usize,
    /// Number of runs; medians are reported.
    #[arg(long, default_value_t = 5, allow_negative_numbers = true, value_parser = crate::positive)]
    runs: usize,
    /// Number of worker nodes besides the control plane.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Default)]
struct Samples {
    cold_build: Vec<f64>,
    cached_build: Vec<f64>,
    stream_load: Vec<f64>,
    archive_load: Vec<f64>,
}

/// The payload lands in a temp folder, the engine's image, its export and
/// every node's containerd: refuse before writing anything when the disk
/// cannot hold that.
fn check_free_space(args: &BenchImageArgs) -> Result<()> {
    let copies = (args.workers as u64 + 1) + 3;
    let needed = (args.size_mb as u64).saturating_mul(copies) << 20;
    for path in [std::env::temp_dir(), PathBuf::from("/var/lib")] {
        let Ok(stat) = nix::sys::statvfs::statvfs(&path) else {
            continue;
        };
        let free = stat.blocks_available() * stat.fragment_size();
        if free < needed {
            bail!(
                "--size-mb {} needs about {:.1} GiB free ({copies} copies of the payload), but {} \
                 has {:.1} GiB: choose a smaller --size-mb or free some disk",
                args.size_mb,
                needed as f64 / f64::from(1u32 << 30),
                path.display(),
                free as f64 / f64::from(1u32 << 30)
            );
        }
    }
    Ok(())
}

pub async fn image(args: BenchImageArgs) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        bail!(
            "the benchmark image needs a static busybox at /bin/busybox: apt-get install busybox-static"
        );
    }
    check_free_space(&args)?;
    let engine = crate::toolchain::engine().await?;
    let cluster = format!("bench-{}", std::process::id());
    eprintln!(
        "bench: {} runs, {} MiB payload, {} node(s), on {engine}",
        args.runs,
        args.size_mb,
        args.workers + 1
    );
    let node_image = ensure_node_image(&engine, &crate::e2e_dir().join("logs")).await?;
    let labels = HashMap::from([("io.kind-e2e.bench".to_string(), "true".to_string())]);
    start_node_containers(
        &engine,
        &node_image.reference,
        &cluster,
        &node_specs(&cluster, args.workers),
        &labels,
    )
    .await?;
    let result = runs(&engine, &cluster, &args, busybox).await;
    let removed = remove_node_containers(&engine, &cluster).await;
    let samples = result?;
    removed.context("removing the benchmark's node containers")?;

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let report = json!({
        "engine": engine.to_string(),
        "runs": args.runs,
        "payload_mib": args.size_mb,
        "nodes": args.workers + 1,
        "median_seconds": {
            "cold_build": median(&samples.cold_build),
            "cached_build": median(&samples.cached_build),
            "stream_load": median(&samples.stream_load),
            "archive_load": median(&samples.archive_load),
        },
        "samples_seconds": {
            "cold_build": samples.cold_build,
            "cached_build": samples.cached_build,
            "stream_load": samples.stream_load,
            "archive_load": samples.archive_load,
        },
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "medians of {} runs ({} MiB payload, {} nodes, {engine}):",
            args.runs,
            args.size_mb,
            args.workers + 1
        );
        println!("  cold build     {:>7.2}s", median(&samples.cold_build));
        println!("  cache-hit      {:>7.2}s", median(&samples.cached_build));
        println!("  load stream    {:>7.2}s", median(&samples.stream_load));
        println!("  load archive   {:>7.2}s", median(&samples.archive_load));
        println!(
            "  archive/stream {:>7.2}x",
            median(&samples.archive_load) / median(&samples.stream_load)
        );
    }
    Ok(())
}

async fn runs(
    engine: &Engine,
    cluster: &str,
    args: &BenchImageArgs,
    busybox: &Path,
) -> Result<Samples> {
    let mut samples = Samples::default();
    for run in 0..args.runs {
        let dir = tempfile::tempdir()?;
        std::fs::copy(busybox, dir.path().join("busybox"))?;
        write_random(&dir.path().join("payload.bin"), args.size_mb << 20)?;
        std::fs::write(
            dir.path().join("Dockerfile"),
            "FROM scratch\nCOPY busybox /bin/busybox\nCOPY payload.bin /payload.bin\n",
        )?;
        let config = E2eImageConfig::new("bench", "Dockerfile")
            .image("kind-e2e/bench")
            .context(dir.path())
            .log_dir(crate::e2e_dir().join("logs"));
        let cold = build_image_for_kind(engine, &config).await?;
        if cold.cached {
            bail!("run {run}: a fresh payload hit the cache; the digest is not covering it");
        }
        let warm = build_image_for_kind(engine, &config).await?;
        samples.cold_build.push(cold.seconds);
        samples.cached_build.push(warm.seconds);

        let order = if run % 2 == 0 {
            [LoadMethod::Stream, LoadMethod::Archive]
        } else {
            [LoadMethod::Archive, LoadMethod::Stream]
        };
        for method in order {
            clear_node_images(engine, cluster).await?;
            let report = load_image_to_kind_with(engine, &cold.reference, cluster, method).await?;
            if report.nodes.iter().any(|n| n.skipped) {
                bail!("run {run}: a node still had the image; the load was not cold");
            }
            match method {
                LoadMethod::Stream => samples.stream_load.push(report.seconds),
                LoadMethod::Archive => samples.archive_load.push(report.seconds),
            }
        }
        eprintln!(
            "  run {}: build {:.2}s, cache hit {:.3}s, stream {:.2}s, archive {:.2}s",
            run + 1,
            cold.seconds,
            warm.seconds,
            samples.stream_load.last().copied().unwrap_or_default(),
            samples.archive_load.last().copied().unwrap_or_default()
        );
        clear_node_images(engine, cluster).await?;
        engine.remove_image(&cold.reference).await?;
    }
    Ok(samples)
}

/// Removes every image from the nodes' k8s.io namespace and waits for
/// containerd's garbage collection, so the next load starts cold.
async fn clear_node_images(engine: &Engine, cluster: &str) -> Result<()> {
    let namespace = format!("--namespace={K8S_NAMESPACE}");
    for node in infra_core::load::nodes::find_kind_nodes(engine, cluster).await? {
        let listed = engine
            .exec(&node.name, &["ctr", &namespace, "images", "ls", "-q"])
            .await?;
        let refs: Vec<&str> = listed.stdout.lines().filter(|l| !l.is_empty()).collect();
        if refs.is_empty() {
            continue;
        }
        let mut command = vec!["ctr", &namespace, "images", "rm", "--sync"];
        command.extend(refs);
        let removed = engine.exec(&node.name, &command).await?;
        if !removed.success() {
            bail!("clearing images on {}: {}", node.name, removed.tail(5));
        }
    }
    Ok(())
}

/// Writes `len` bytes of incompressible data (xorshift; fast and good enough
/// that no layer of the stack can shrink it).
fn write_random(path: &Path, len: usize) -> Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut state: u64 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos() as u64
        | 1;
    let mut block = vec![0u8; 1 << 20];
    let mut written = 0;
    while written < len {
        for chunk in block.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            chunk.copy_from_slice(&state.to_le_bytes());
        }
        let n = block.len().min(len - written);
        file.write_all(&block[..n])?;
        written += n;
    }
    file.flush()?;
    Ok(())
}
