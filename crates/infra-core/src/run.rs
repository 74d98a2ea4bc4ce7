//! One whole run for one service: declare its setup, schedule it under a
//! pattern, run it (cancellable), collect diagnostics on failure, tear down,
//! and report. Everything a run creates carries its run id and service as
//! labels, and its files go to `<runs_dir>/<run-id>/`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{Api, ListParams};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::cluster::spec::ClusterSpec;
use crate::cluster::{self, ClusterOptions, Existing, Provider};
use crate::engine::Engine;
use crate::plan::setup::{Setup, SetupContext};
use crate::plan::{Observer, Pattern, execute};
use crate::report::{ClusterRef, RunReport};

/// What a service crate provides: its name, the pattern it has migrated to,
/// its cluster, and its setup.
pub trait ServiceSetup: Send + Sync {
    /// e.g. `api`; the cluster is `<name>-e2e`.
    fn name(&self) -> &'static str;

    /// The pattern this service runs by default.
    fn default_pattern(&self) -> Pattern;

    /// The cluster it needs.
    fn cluster_spec(&self, repo_root: &Path) -> ClusterSpec;

    /// Declares its tasks on `setup` (the cluster task is already declared:
    /// `cluster`) and says what its suite will be told.
    fn declare(
        &self,
        setup: &mut Setup,
        cluster: crate::plan::TaskId,
        repo_root: &Path,
    ) -> Result<SuiteEnv, SetupError>;

    /// The database `cargo xtask migrate` applies the repository's
    /// migrations to in a kept environment, for a service that has one.
    fn database(&self, _repo_root: &Path) -> Option<crate::stack::migrations::Database> {
        None
    }
}

/// Why a setup could not even be declared (bad repository layout, ...).
#[derive(Debug, thiserror::Error)]
#[error("service {service}: {problem}")]
pub struct SetupError {
    pub service: String,
    pub problem: String,
}

/// What a service's E2E suite is told about the environment, through the
/// file named by `E2E_ENV_FILE`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SuiteEnv {
    pub service: String,
    pub run_id: String,
    pub provider: String,
    pub cluster: String,
    pub kubeconfig: PathBuf,
    pub namespace: String,
    /// Named URLs on the host, e.g. `api` → `http://127.0.0.1:28090`.
    pub endpoints: BTreeMap<String, String>,
    /// Image key → fully qualified reference that was loaded.
    pub images: BTreeMap<String, String>,
}

/// The environment variable naming the suite's environment file.
pub const ENV_FILE_VAR: &str = "E2E_ENV_FILE";

impl SuiteEnv {
    /// Reads the environment a suite runs in, or says why there is none.
    pub fn from_env() -> Result<SuiteEnv, String> {
        let path = std::env::var(ENV_FILE_VAR).map_err(|_| {
            format!("{ENV_FILE_VAR} is not set: run the suite through `cargo xtask e2e <service>`")
        })?;
        let text = std::fs::read_to_string(&path)
            .map_err(|e| format!("{ENV_FILE_VAR}={path} cannot be read: {e}"))?;
        serde_json::from_str(&text).map_err(|e| format!("{path} is not a suite environment: {e}"))
    }

    /// Whether workloads really run (false on the simulated cluster).
    pub fn runs_workloads(&self) -> bool {
        self.provider != "sim"
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub pattern: Pattern,
    pub provider: Provider,
    /// Keep the cluster at the end (also implied by `reuse_cluster`).
    pub keep_cluster: bool,
    /// Use the service's existing cluster if there is one.
    pub reuse_cluster: bool,
    /// When another run holds the service's cluster, wait for it instead of
    /// failing at once.
    pub wait_for_cluster: bool,
    pub repo_root: PathBuf,
    /// Runs go to `<runs_dir>/<run-id>/`.
    pub runs_dir: PathBuf,
    /// Build every image from scratch (no cache).
    pub rebuild: bool,
    /// Build with `GOFLAGS=-cover` and collect the workloads' coverage after
    /// the suite ([`crate::coverage`]).
    pub coverage: bool,
    pub cluster_options: ClusterOptions,
}

/// How a run ended.
pub struct RunOutcome {
    pub report: RunReport,
    pub run_dir: PathBuf,
    pub suite_env: Option<PathBuf>,
    /// Teardown problems (the run's own failure is in the report).
    pub teardown_error: Option<String>,
    pub cluster_kept: bool,
}

/// A fresh run id: `<service>-<unix seconds>-<4 hex>`.
pub fn new_run_id(service: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{service}-{}-{:04x}",
        now.as_secs(),
        now.subsec_nanos() & 0xffff
    )
}

/// Runs `service`'s setup (and, when `suite` adds it, its suite) end to end.
/// `extend` may add tasks after the service's own (the suite).
pub async fn run(
    engine: &Engine,
    service: &dyn ServiceSetup,
    options: RunOptions,
    observer: &dyn Observer,
    cancel: CancellationToken,
    extend: impl FnOnce(&mut Setup, &SuiteEnvFile),
) -> Result<RunOutcome, SetupError> {
    let run_id = new_run_id(service.name());
    let run_dir = options.runs_dir.join(&run_id);
    let setup_error = |problem: String| SetupError {
        service: service.name().to_string(),
        problem,
    };
    std::fs::create_dir_all(&run_dir)
        .map_err(|e| setup_error(format!("creating {}: {e}", run_dir.display())))?;
    if options.provider == Provider::Kind {
        options
            .cluster_options
            .kind(engine)
            .map_err(|e| setup_error(e.to_string()))?;
    }

    // Own the cluster before anything is created: a second run of the same
    // service must not build, create or tear down under the first one.
    let spec = service.cluster_spec(&options.repo_root);
    let _lock = crate::cluster::lock::acquire(
        &options.cluster_options.state_dir,
        &spec.name,
        &run_id,
        options.wait_for_cluster,
        |holder| {
            eprintln!(
                "waiting for the run holding cluster {}{} to finish",
                spec.name,
                holder
                    .map(|h| format!(" (pid {}, run {})", h.pid, h.run_id))
                    .unwrap_or_default()
            );
        },
    )
    .await
    .map_err(|e| {
        let _ = std::fs::remove_dir_all(&run_dir);
        setup_error(e.to_string())
    })?;

    let mut cluster_options = options.cluster_options.clone();
    cluster_options.existing = if options.reuse_cluster {
        Existing::Reuse
    } else {
        Existing::Fail
    };
    let cluster_name = spec.name.clone();
    let mut setup = Setup::new().with_coverage(options.coverage);
    let cluster_task = setup.cluster(spec);
    let mut suite_env = service.declare(&mut setup, cluster_task, &options.repo_root)?;
    suite_env.service = service.name().to_string();
    suite_env.run_id = run_id.clone();
    suite_env.provider = options.provider.to_string();
    suite_env.cluster = cluster_name.clone();
    suite_env.kubeconfig = cluster_options.kubeconfig_path(&cluster_name);
    let env_file = SuiteEnvFile {
        path: run_dir.join("suite-env.json"),
        template: suite_env,
    };
    extend(&mut setup, &env_file);
    let plan = setup.into_plan();
    let natural: Vec<Vec<usize>> = plan
        .schedule(Pattern::Pipelined)
        .into_iter()
        .map(|t| t.deps)
        .collect();

    let mut context = SetupContext::new(
        engine.clone(),
        service.name(),
        &run_id,
        run_dir.clone(),
        options.provider,
        cluster_options.clone(),
    );
    context.rebuild = options.rebuild;
    context.coverage = options.coverage;
    let shared = Arc::new(context);
    let interrupted = cancel.clone();
    let execution = execute(plan, options.pattern, shared.clone(), observer, cancel).await;
    let mut context = Arc::try_unwrap(shared)
        .unwrap_or_else(|_| panic!("every task has finished, so nothing else holds the context"));
    let mut report = RunReport::new(
        service.name(),
        options.pattern,
        ClusterRef {
            provider: options.provider,
            name: cluster_name.clone(),
        },
        &execution,
        &natural,
    );
    if interrupted.is_cancelled() {
        report.mark_interrupted();
    }
    if let Some((task, message)) = &report.failure {
        let _ = std::fs::write(run_dir.join("error.txt"), format!("{task}: {message}\n"));
    }

    if !execution.ok()
        && let Some(cluster) = context.cluster()
    {
        collect_diagnostics(
            engine,
            cluster,
            &run_dir.join("diagnostics"),
            &cluster_options,
        )
        .await;
    }

    if options.coverage {
        // After diagnostics (stopping the workloads deletes their pods),
        // before teardown.
        let coverage = match context.cluster() {
            // Teardown first: a signal must not wait for workloads to stop.
            _ if interrupted.is_cancelled() => {
                crate::coverage::CoverageReport::not_collected("the run was interrupted")
            }
            _ if options.provider == Provider::Sim => {
                crate::coverage::CoverageReport::not_collected("the sim cluster runs no containers")
            }
            None => crate::coverage::CoverageReport::not_collected("the cluster never came up"),
            Some(cluster) => {
                crate::coverage::collect(
                    engine,
                    cluster,
                    &context.coverage_targets(),
                    &run_id,
                    &run_dir.join("coverage"),
                )
                .await
            }
        };
        report.coverage = Some(coverage);
    }

    let keep = options.keep_cluster || options.reuse_cluster;
    let mut teardown_error = None;
    let cluster = context.take_cluster();
    if keep {
        // An in-process sim server ends with this process; a detached one stays.
        if let Some(cluster) = cluster {
            cluster.release().await;
        }
    } else {
        if let Some(cluster) = cluster {
            cluster.release().await;
        }
        // By name, so that a creation cut short (no handle yet, nodes maybe
        // started) is cleaned up too; but only a cluster this run set out to
        // make: one that was there before is never deleted.
        if context.created_cluster()
            && let Err(e) = cluster::delete(engine, &cluster_name, &cluster_options).await
        {
            teardown_error = Some(crate::error_chain(&e));
        }
    }
    // A cancelled build on Podman leaves working containers; wait for their removal.
    crate::image::finish_cancelled_builds().await;
    let _ = report.write(&run_dir);
    Ok(RunOutcome {
        report,
        suite_env: env_file.path.exists().then(|| env_file.path.clone()),
        run_dir,
        teardown_error,
        cluster_kept: keep,
    })
}

/// Where the suite's environment file goes, and what it will hold (the
/// images are filled in when the suite starts).
#[derive(Debug, Clone)]
pub struct SuiteEnvFile {
    pub path: PathBuf,
    pub template: SuiteEnv,
}

impl SuiteEnvFile {
    /// Writes the file with the images built in this run.
    #[allow(clippy::expect_used, reason = "plain data: serialising cannot fail")]
    pub fn write(&self, context: &SetupContext) -> std::io::Result<()> {
        let mut env = self.template.clone();
        env.images = context
            .images()
            .into_iter()
            .map(|(key, image)| (key, image.reference))
            .collect();
        std::fs::write(
            &self.path,
            serde_json::to_vec_pretty(&env).expect("a suite env serialises"),
        )
    }
}

/// Pod states, logs and events of every namespace but the system ones, and the
/// provider's node logs, into `dir`. Best effort: a failing step is noted in
/// the files, never raised.
pub async fn collect_diagnostics(
    engine: &Engine,
    cluster: &cluster::Cluster,
    dir: &Path,
    options: &ClusterOptions,
) {
    let _ = std::fs::create_dir_all(dir);
    if let Err(e) = cluster::export_logs(engine, cluster, &dir.join("nodes"), options).await {
        let _ = std::fs::write(dir.join("nodes-error.txt"), crate::error_chain(&e));
    }
    let Ok(client) = cluster.client().await else {
        return;
    };
    let Ok(namespaces) = Api::<Namespace>::all(client.clone())
        .list(&ListParams::default())
        .await
    else {
        return;
    };
    for namespace in namespaces.items {
        let Some(ns) = namespace.metadata.name else {
            continue;
        };
        if ns.starts_with("kube-") || ns == "local-path-storage" {
            continue;
        }
        let Ok(pods) = Api::<Pod>::namespaced(client.clone(), &ns)
            .list(&ListParams::default())
            .await
        else {
            continue;
        };
        for pod in pods.items {
            let name = pod.metadata.name.clone().unwrap_or_default();
            let status = serde_json::to_string_pretty(&pod.status).unwrap_or_default();
            let diagnostics = crate::deploy::wait::pod_diagnostics(&client, &ns, &name).await;
            let _ = std::fs::write(
                dir.join(format!("{ns}_{name}.txt")),
                format!("status:\n{status}\n{diagnostics}"),
            );
        }
    }
}

/// Removes containers a service's runs left behind: those carrying both a run
/// id and the service's label that are not nodes of a cluster that still
/// exists. Returns how many were removed; a removal that fails is an error.
pub async fn remove_leftovers(engine: &Engine, service: &str) -> Result<usize, crate::EngineError> {
    use crate::plan::setup::{LABEL_RUN_ID, LABEL_SERVICE};
    // A cluster whose nodes are listed is live; if listing fails, nothing is
    // removed.
    let live: Vec<String> = cluster::list(engine)
        .await?
        .into_iter()
        .map(|c| c.name)
        .collect();
    let containers = engine
        .containers_labelled(&format!("{LABEL_SERVICE}={service}"))
        .await?;
    let options = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
        .force(true)
        .v(true)
        .build();
    let mut removed = 0;
    for container in containers {
        let labels = container.labels.clone().unwrap_or_default();
        let of_live_cluster = labels
            .get(crate::load::nodes::CLUSTER_LABEL)
            .is_some_and(|c| live.contains(c));
        if !labels.contains_key(LABEL_RUN_ID) || of_live_cluster {
            continue;
        }
        let Some(id) = container.id else { continue };
        engine
            .docker()
            .remove_container(&id, Some(options.clone()))
            .await
            .map_err(|e| crate::EngineError::api(format!("removing leftover container {id}"), e))?;
        removed += 1;
    }
    Ok(removed)
}
