//! `cargo xtask cluster create|delete|list`, and the hidden `sim-serve`: the
//! process that supervises a simulated cluster's control plane and node agent.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::{Args, Subcommand};
use infra_core::cluster::spec::ClusterSpec;
use infra_core::cluster::{self, Provider};
use serde_json::json;

#[derive(Subcommand)]
pub enum ClusterCommand {
    /// Create a cluster: kind (the real one) or sim (containerd nodes, the
    /// real control plane on the host, a node agent instead of kubelets;
    /// runs no containers).
    Create(CreateArgs),
    /// Delete a cluster, whatever made it (succeeds if it does not exist).
    Delete(DeleteArgs),
    /// List clusters on this engine.
    List(ListArgs),
}

#[derive(Args)]
pub struct CreateArgs {
    name: String,
    /// `kind` or `sim`; defaults to kind when it is installed.
    #[arg(long)]
    provider: Option<Provider>,
    /// Worker nodes besides the control plane.
    #[arg(long, default_value_t = 1)]
    workers: usize,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct DeleteArgs {
    name: String,
}

#[derive(Args)]
pub struct ListArgs {
    /// Print a JSON array on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct SimServeArgs {
    /// The cluster's state folder (written by the creating command).
    #[arg(long)]
    state: PathBuf,
}

pub async fn run(command: ClusterCommand) -> Result<()> {
    let engine = crate::toolchain::engine().await?;
    let options = crate::cluster_options(&engine).await?;
    match command {
        ClusterCommand::Create(args) => {
            let provider = match args.provider {
                Some(provider) => provider,
                None => default_provider().await?,
            };
            eprintln!(
                "creating {provider} cluster {} ({} worker(s)) on {engine} ...",
                args.name, args.workers
            );
            let spec = ClusterSpec::new(&args.name).workers(args.workers);
            let _lock = lock(&options, &args.name).await?;
            let existed = cluster::find(&engine, &args.name).await?.is_some();
            let created = tokio::select! {
                created = cluster::create(&engine, provider, &spec, &options) => created?,
                Some(signal) = crate::signals::next() => {
                    // The creation is dropped (its kind process killed); what
                    // it made so far goes, unless the cluster was there before.
                    eprintln!("{signal}: stopping; removing what was created");
                    if !existed {
                        cluster::delete(&engine, &args.name, &options).await?;
                    }
                    bail!("interrupted by {signal}; cluster {} was not created", args.name);
                }
            };
            if args.json {
                println!(
                    "{}",
                    json!({
                        "name": created.name,
                        "provider": created.provider,
                        "kubeconfig": created.kubeconfig,
                        "nodes": created.node_names(),
                    })
                );
            } else {
                println!(
                    "created {} cluster {}: nodes {}; kubeconfig {}",
                    created.provider,
                    created.name,
                    created.node_names().join(", "),
                    created.kubeconfig.display()
                );
                if created.provider == Provider::Sim {
                    eprintln!(
                        "note: a sim cluster validates and schedules, but runs no containers; \
                         its pods are ready when their images are on the nodes"
                    );
                }
            }
        }
        ClusterCommand::Delete(args) => {
            let _lock = lock(&options, &args.name).await?;
            if cluster::delete(&engine, &args.name, &options).await? {
                println!("deleted cluster {}", args.name);
            } else {
                println!("cluster {} does not exist; nothing to delete", args.name);
            }
        }
        ClusterCommand::List(args) => {
            let clusters = cluster::list(&engine).await?;
            if args.json {
                println!("{}", serde_json::to_string(&clusters)?);
            } else if clusters.is_empty() {
                println!("no clusters on {engine}");
            } else {
                for c in clusters {
                    println!("{:<30} {:<5} {}", c.name, c.provider, c.nodes.join(", "));
                }
            }
        }
    }
    Ok(())
}

/// The cluster's lock, so that no run is using it while it is created or
/// deleted by hand.
async fn lock(
    options: &infra_core::cluster::ClusterOptions,
    name: &str,
) -> Result<infra_core::cluster::lock::ClusterLock> {
    let owner = format!("cluster-command-{}", std::process::id());
    Ok(infra_core::cluster::lock::acquire(&options.state_dir, name, &owner, false, |_| {}).await?)
}

/// kind when it is installed; otherwise an error pointing at `--provider sim`.
async fn default_provider() -> Result<Provider> {
    if crate::toolchain::kind_available().await {
        Ok(Provider::Kind)
    } else {
        bail!(
            "kind was not found: build the pinned toolchain (`cargo xtask toolchain build` and \
             `cargo xtask node-image build`) or install kind; or, with the toolchain built, use \
             the simulated cluster: --provider sim (it runs no containers)"
        )
    }
}

pub async fn sim_serve(args: SimServeArgs) -> Result<()> {
    Ok(infra_core::cluster::sim::serve(&args.state).await?)
}
