//! The command line: `cargo xtask <command>`.
//!
//! - `image build` / `image load`: the split image API, one step at a time.
//! - `bench image`: medians of builds and loads on this machine.
//!
//! Each subcommand lives in its own module; this file only parses and
//! dispatches. Errors go to stderr and make the exit status non-zero.

mod bench;
mod image;

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
    /// Build service images and load them into a cluster's nodes.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Measure this machine: builds and loads, medians of several runs.
    #[command(subcommand)]
    Bench(BenchCommand),
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
        .init();
    let runtime = tokio::runtime::Runtime::new().expect("a tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Image(command) => image::run(command).await,
            Command::Bench(BenchCommand::Image(args)) => bench::image(args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// The workspace's root folder (xtask lives one level below it).
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
