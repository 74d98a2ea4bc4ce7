//! The command line: `cargo xtask <command>`.
//!
//! - `e2e <service>`: set up, run the suite, tear down, report.
//! - `compare <service>`: the same run under several patterns, medians side by side.
//! - `plan <service>`: the task graph and what would be cached.
//! - `down <service>`: remove a service's cluster and run leftovers.
//! - `status`: each service's cluster and last run.
//! - `cluster create|delete|list`: clusters by hand (kind or sim).
//! - `image build|load`: the split image API, one step at a time.
//! - `bench image`: medians of builds and loads on this machine.
//! - `toolchain build`, `node-image build`: the pinned Kubernetes toolchain
//!   and the offline kind node image.
//!
//! Each subcommand lives in its own module; this file only parses and
//! dispatches. Errors go to stderr and make the exit status non-zero.

mod bench;
mod cluster;
mod e2e;
mod image;
mod migrate;
mod progress;
mod prune;
mod services;
mod signals;
mod toolchain;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Kind end-to-end environments: build, load, run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Set up a service's environment, run its E2E suite, tear down, report.
    E2e(e2e::E2eArgs),
    /// Run a service under several patterns and compare medians side by side.
    Compare(e2e::CompareArgs),
    /// Print a service's task graph under a pattern, and what would be cached.
    Plan(e2e::PlanArgs),
    /// Remove a service's cluster and what its runs left behind.
    Down(e2e::DownArgs),
    /// Each service's cluster and last run.
    Status(e2e::StatusArgs),
    /// Create, delete and list clusters.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
    /// Build service images and load them into a cluster's nodes.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// The pinned Kubernetes toolchain (Go modules under toolchain/).
    #[command(subcommand)]
    Toolchain(toolchain::ToolchainCommand),
    /// The kind node image, built offline from the toolchain.
    #[command(subcommand)]
    NodeImage(toolchain::NodeImageCommand),
    /// Remove the tool's older images (all but the newest of each kind) from
    /// every engine, and older toolchains and rootfs folders from the cache.
    Prune(prune::PruneArgs),
    /// Apply the repository's migrations to a kept environment's PostgreSQL
    /// (each file in one transaction; versions already recorded are skipped).
    Migrate(migrate::MigrateArgs),
    /// Measure this machine: builds and loads, medians of several runs.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Supervise a simulated cluster's control plane (started by `cluster create --provider sim`).
    #[command(hide = true)]
    SimServe(cluster::SimServeArgs),
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Cold build, cache-hit build, stream vs archive load into node containers.
    Image(bench::BenchImageArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("E2E_LOG"))
        .with_writer(std::io::stderr)
        // Colour codes only for a terminal, never into logs and pipes.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::E2e(args) => e2e::e2e(args).await,
            Command::Compare(args) => e2e::compare(args).await,
            Command::Plan(args) => interruptible(e2e::plan(args)).await,
            Command::Down(args) => interruptible(e2e::down(args)).await,
            Command::Status(args) => interruptible(e2e::status(args)).await,
            // Creating a cluster deletes what it made on a signal itself.
            Command::Cluster(command) => cluster::run(command).await.map(|()| ExitCode::SUCCESS),
            Command::Image(command) => interruptible(image::run(command)).await,
            Command::Toolchain(command) => interruptible(toolchain::run_toolchain(command)).await,
            Command::NodeImage(command) => interruptible(toolchain::run_node_image(command)).await,
            Command::Prune(args) => interruptible(prune::prune(args)).await,
            Command::Migrate(args) => interruptible(migrate::migrate(args)).await,
            Command::Bench(BenchCommand::Image(args)) => interruptible(bench::image(args)).await,
            Command::SimServe(args) => cluster::sim_serve(args).await.map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs a command until it ends or a signal (SIGINT, SIGTERM, SIGHUP)
/// arrives; then the command is dropped, which removes what it was making
/// (temp files and folders are guards, child processes are killed on drop),
/// an interrupted build's leftovers in the engine are waited for, and the
/// exit status is 130.
async fn interruptible(
    command: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<ExitCode> {
    let signal = tokio::select! {
        result = command => return result.map(|()| ExitCode::SUCCESS),
        Some(signal) = signals::next() => signal,
    };
    eprintln!("{signal}: stopped; removing what the command was making");
    infra_core::image::finish_cancelled_builds().await;
    Ok(ExitCode::from(130))
}

/// A count given on the command line: a whole number of at least 1 (negative
/// numbers reach here, so the error says what to give, not clap's `-- -1`).
pub fn positive(text: &str) -> Result<usize, String> {
    match text.trim().parse::<i64>() {
        Ok(n) if n >= 1 => usize::try_from(n).map_err(|e| e.to_string()),
        Ok(n) => Err(format!(
            "{n} is not a count: give a whole number of at least 1"
        )),
        Err(_) => Err(format!(
            "{text:?} is not a whole number: give one of at least 1, e.g. 3"
        )),
    }
}

/// The workspace's root folder (xtask lives one level below it).
#[allow(
    clippy::expect_used,
    reason = "xtask's manifest folder is inside the workspace"
)]
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask is inside the workspace")
        .to_path_buf()
}

/// Where runs, logs and reports go: `<workspace>/target/e2e`.
pub fn e2e_dir() -> PathBuf {
    workspace_root().join("target").join("e2e")
}

/// Cluster options for commands run from here: a sim cluster's control
/// plane is supervised by this binary, detached, so the cluster outlives the
/// command like kind's; both providers use the pinned toolchain (kind and
/// the offline node image; the sim's etcd and Kubernetes binaries) when it
/// is built.
pub async fn cluster_options(
    engine: &infra_core::Engine,
) -> anyhow::Result<infra_core::cluster::ClusterOptions> {
    let tools = toolchain::kind_options(engine).await;
    Ok(infra_core::cluster::ClusterOptions {
        kind_program: tools.kind_program,
        node_image: tools.node_image,
        toolchain_bin: tools.bin,
        sim_server: infra_core::cluster::SimServer::Detached {
            program: std::env::current_exe()?,
            args: vec!["sim-serve".into()],
        },
        log_dir: e2e_dir().join("logs"),
        ..Default::default()
    })
}
