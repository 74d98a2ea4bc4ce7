//! `cargo xtask migrate <service>`: the repository's migrations applied to a
//! kept environment's PostgreSQL, idempotently. Each file runs in one
//! transaction with its version record, so a bad file leaves nothing of
//! itself behind; versions already recorded are skipped.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use infra_core::cluster::{self, Provider};
use infra_core::deploy::Applier;
use infra_core::stack::migrations::{self, Fate};

use crate::services;

#[derive(Args)]
pub struct MigrateArgs {
    /// The service whose kept environment to migrate (its cluster must
    /// exist: `cargo xtask e2e <service> --keep-cluster`).
    service: String,
    /// The repository whose `migrations/` are applied; defaults to the
    /// bundled example.
    #[arg(long, env = "E2E_REPO_ROOT")]
    repo_root: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

pub async fn migrate(args: MigrateArgs) -> Result<()> {
    let service = services::find(&args.service)?;
    let repo_root = crate::e2e::repo_root(args.repo_root)?;
    let Some(database) = service.database(&repo_root) else {
        bail!("service {} has no database to migrate", service.name());
    };
    let files = migrations::load_migrations(&database.migrations_dir)?;
    let engine = crate::toolchain::engine().await?;
    let options = crate::cluster_options(&engine).await?;
    let name = service.cluster_spec(&repo_root).name;
    let found = cluster::find(&engine, &name).await?.with_context(|| {
        format!(
            "no cluster {name}: keep an environment first with `cargo xtask e2e {} \
             --keep-cluster`",
            service.name()
        )
    })?;
    if found.provider == Provider::Sim {
        bail!(
            "cluster {name} is simulated and runs no PostgreSQL: migrate needs a kind cluster \
             (`cargo xtask e2e {} --cluster kind --keep-cluster`)",
            service.name()
        );
    }
    // No run of this service may change the cluster meanwhile.
    let run_id = infra_core::run::new_run_id(service.name());
    let _lock = cluster::lock::acquire(&options.state_dir, &name, &run_id, false, |_| {}).await?;
    let client = cluster::client_from_kubeconfig(&options.kubeconfig_path(&name)).await?;
    let applier = Applier::new(client, "kind-e2e-migrate");
    let fates = migrations::apply(
        &applier,
        &database.postgres,
        &files,
        Duration::from_secs(180),
    )
    .await
    .with_context(|| format!("migrating {name}"))?;
    if args.json {
        let files: Vec<_> = fates
            .iter()
            .map(|(file, fate)| serde_json::json!({"file": file, "fate": fate}))
            .collect();
        println!("{}", serde_json::json!({"cluster": name, "files": files}));
    } else {
        for (file, fate) in &fates {
            match fate {
                Fate::Applied => println!("applied          {file}"),
                Fate::AlreadyApplied => println!("already applied  {file}"),
            }
        }
        let applied = fates.iter().filter(|(_, f)| *f == Fate::Applied).count();
        println!(
            "{name}: {applied} applied, {} already there",
            fates.len() - applied
        );
    }
    Ok(())
}
