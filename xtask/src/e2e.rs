//! `cargo xtask e2e|plan|down <service>`.
//!
//! `e2e` runs the service's setup under a pattern, compiles its suite while
//! the environment comes up, runs the suite against it, tears down and prints
//! the report (`--json`: the report alone on stdout). Ctrl-C cancels the tasks
//! in flight and removes what the run created (unless `--keep-cluster`); a
//! second Ctrl-C exits at once.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use anyhow::{Context, Result, bail};
use clap::Args;
use infra_core::Engine;
use infra_core::cluster::{self, Provider};
use infra_core::plan::setup::{Setup, SetupContext};
use infra_core::plan::{Observer, Outcome, Pattern, TaskError, TaskKind};
use infra_core::run::{ENV_FILE_VAR, RunOptions, RunOutcome, ServiceSetup, SuiteEnvFile, run};
use tokio_util::sync::CancellationToken;

use crate::progress::Progress;
use crate::services;

#[derive(Args)]
pub struct E2eArgs {
    /// The service (datastorage, gateway, notification, authwebhook), or
    /// `all`: each of them in turn, then one summary table.
    service: String,
    /// With `all`: how many services run at once (each on its own cluster).
    /// 1 by default: a 2-core machine builds faster one service at a time.
    #[arg(long, default_value_t = 1, allow_negative_numbers = true, value_parser = crate::positive)]
    parallel: usize,
    /// `kind` (default when installed) or `sim` (no kind needed; runs no containers).
    #[arg(long)]
    cluster: Option<Provider>,
    /// standard, hybrid or pipelined; defaults to the service's own.
    #[arg(long)]
    pattern: Option<Pattern>,
    /// Keep the cluster at the end.
    #[arg(long)]
    keep_cluster: bool,
    /// Use the service's existing cluster if there is one (and keep it).
    #[arg(long)]
    reuse_cluster: bool,
    /// Build every image from scratch (no cache).
    #[arg(long)]
    rebuild: bool,
    /// Build the images with `GOFLAGS=-cover`, and after the suite collect
    /// each workload's coverage into `<run folder>/coverage/`.
    #[arg(long, env = "E2E_COVERAGE")]
    coverage: bool,
    /// When another run of this service is in progress, wait for it to
    /// finish instead of failing at once.
    #[arg(long)]
    wait: bool,
    /// The repository the service crates read (Dockerfiles, migrations);
    /// defaults to the bundled example.
    #[arg(long, env = "E2E_REPO_ROOT")]
    repo_root: Option<PathBuf>,
    /// Print only the report, as one JSON object, on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct CompareArgs {
    service: String,
    /// `kind` (default when installed) or `sim`.
    #[arg(long)]
    cluster: Option<Provider>,
    /// Runs per pattern; medians are reported.
    #[arg(long, default_value_t = 3, allow_negative_numbers = true, value_parser = crate::positive)]
    runs: usize,
    /// The patterns to compare, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "standard,hybrid,pipelined"
    )]
    patterns: Vec<Pattern>,
    /// Build the service's images from scratch in every run (no cache; the
    /// previous run's images are removed first); otherwise builds are cache
    /// hits. Host pre-builds stay incremental.
    #[arg(long)]
    cold: bool,
    #[arg(long, env = "E2E_REPO_ROOT")]
    repo_root: Option<PathBuf>,
    /// Print one JSON object on stdout.
    #[arg(long)]
    json: bool,
}

#[derive(Args)]
pub struct PlanArgs {
    service: String,
    #[arg(long)]
    pattern: Option<Pattern>,
    #[arg(long, env = "E2E_REPO_ROOT")]
    repo_root: Option<PathBuf>,
}

#[derive(Args)]
pub struct DownArgs {
    service: String,
}

pub fn repo_root(given: Option<PathBuf>) -> Result<PathBuf> {
    let root = given.unwrap_or_else(|| crate::workspace_root().join("examples/kubernaut-lite"));
    root.canonicalize()
        .with_context(|| format!("repository root {} does not exist", root.display()))
}

/// The provider asked for, else kind when it is installed, else an error
/// that says so and suggests the simulated cluster.
async fn provider(given: Option<Provider>, service: &str) -> Result<Provider> {
    match given {
        Some(provider) => Ok(provider),
        None if crate::toolchain::kind_available().await => Ok(Provider::Kind),
        None => bail!(
            "kind was not found: build the pinned toolchain (`cargo xtask toolchain build` and \
             `cargo xtask node-image build`) or install kind (https://kind.sigs.k8s.io); or, \
             with the toolchain built, rehearse on the simulated cluster: cargo xtask e2e \
             {service} --cluster sim"
        ),
    }
}

/// One whole run of `service` with its suite.
async fn run_once(
    engine: &Engine,
    service: &'static dyn ServiceSetup,
    options: RunOptions,
    observer: &dyn Observer,
    cancel: CancellationToken,
) -> Result<RunOutcome> {
    let suite_crate = format!("{}-e2e", service.name());
    Ok(run(
        engine,
        service,
        options,
        observer,
        cancel,
        |setup, env_file| add_suite(setup, env_file, &suite_crate),
    )
    .await?)
}

/// The options of one service's run from the command line.
async fn run_options(
    args: &E2eArgs,
    service: &dyn ServiceSetup,
    provider: Provider,
    engine: &Engine,
) -> Result<RunOptions> {
    Ok(RunOptions {
        pattern: args.pattern.unwrap_or(service.default_pattern()),
        provider,
        keep_cluster: args.keep_cluster,
        reuse_cluster: args.reuse_cluster,
        wait_for_cluster: args.wait,
        repo_root: repo_root(args.repo_root.clone())?,
        runs_dir: crate::e2e_dir(),
        rebuild: args.rebuild,
        coverage: args.coverage,
        cluster_options: crate::cluster_options(engine).await?,
    })
}

pub async fn e2e(args: E2eArgs) -> Result<ExitCode> {
    if args.service == "all" {
        return e2e_all(args).await;
    }
    if args.parallel != 1 {
        bail!("--parallel is for `e2e all`; one service runs its own tasks concurrently already");
    }
    let service = services::find(&args.service)?;
    let provider = provider(args.cluster, &args.service).await?;
    let engine = crate::toolchain::engine().await?;
    let options = run_options(&args, service, provider, &engine).await?;
    eprintln!(
        "{} e2e: {} pattern on a {provider} cluster, {engine}, repository {}",
        service.name(),
        options.pattern,
        options.repo_root.display()
    );
    if provider == Provider::Kind {
        eprintln!(
            "node image: {}",
            crate::toolchain::describe_node_image(&options.cluster_options.node_image)
        );
        if options.cluster_options.node_image.is_none() {
            eprintln!(
                "warning: no offline node image on {engine}: kind will pull its default, which \
                 needs a registry; `cargo xtask node-image build` makes one"
            );
        }
    }
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    let progress = Progress::new();
    let outcome = run_once(&engine, service, options, &progress, cancel.clone()).await?;
    progress.finish();

    if args.json {
        println!("{}", outcome.report.to_json());
        eprint!("{}", outcome.report.table());
    } else {
        print!("{}", outcome.report.table());
    }
    eprintln!("run folder: {}", outcome.run_dir.display());
    if outcome.cluster_kept {
        eprintln!(
            "cluster {} kept; kubeconfig {}",
            outcome.report.cluster.name,
            crate::cluster_options(&engine)
                .await?
                .kubeconfig_path(&outcome.report.cluster.name)
                .display()
        );
    }
    if let Some(problem) = &outcome.teardown_error {
        eprintln!("error: teardown: {problem}");
    }
    if cancel.is_cancelled() {
        eprintln!("cancelled");
    }
    Ok(if outcome.report.ok && outcome.teardown_error.is_none() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// `e2e all`: every service, `--parallel` at a time, each on its own cluster
/// and in its own run folder; images are shared by content (DataStorage's is
/// built by the first run that needs it, the others find it cached). A
/// failing service does not stop the others; a signal stops them all.
async fn e2e_all(args: E2eArgs) -> Result<ExitCode> {
    use futures::StreamExt;
    let provider = provider(args.cluster, "all").await?;
    let engine = crate::toolchain::engine().await?;
    let services = services::all();
    let mut runs = Vec::new();
    for service in &services {
        runs.push((
            *service,
            run_options(&args, *service, provider, &engine).await?,
        ));
    }
    eprintln!(
        "e2e all: {} on a {provider} cluster each, {} at a time, {engine}",
        services
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", "),
        args.parallel
    );
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    let progress = Progress::new();
    let engine = &engine;
    let progress_ref = &progress;
    let cancel_ref = &cancel;
    let mut outcomes: Vec<(&'static str, Result<RunOutcome>)> = futures::stream::iter(runs)
        .map(|(service, options)| async move {
            if cancel_ref.is_cancelled() {
                return (
                    service.name(),
                    Err(anyhow::anyhow!("not started: cancelled")),
                );
            }
            let observer = Prefixed {
                prefix: service.name(),
                inner: progress_ref,
            };
            let outcome = run_once(
                engine,
                service,
                options,
                &observer,
                cancel_ref.child_token(),
            )
            .await;
            (service.name(), outcome)
        })
        .buffer_unordered(args.parallel)
        .collect()
        .await;
    progress.finish();
    let order: Vec<&str> = services.iter().map(|s| s.name()).collect();
    outcomes.sort_by_key(|(name, _)| order.iter().position(|n| n == name));

    let mut all_ok = true;
    let mut reports = Vec::new();
    for (name, outcome) in &outcomes {
        match outcome {
            Ok(outcome) => {
                eprint!("\n{}", outcome.report.table());
                eprintln!("run folder: {}", outcome.run_dir.display());
                if let Some(problem) = &outcome.teardown_error {
                    eprintln!("error: {name}: teardown: {problem}");
                }
                all_ok &= outcome.report.ok && outcome.teardown_error.is_none();
                reports.push(serde_json::to_value(&outcome.report)?);
            }
            Err(error) => {
                eprintln!("\nerror: {name}: {error:#}");
                all_ok = false;
                reports.push(serde_json::json!({
                    "service": name, "ok": false, "error": format!("{error:#}")
                }));
            }
        }
    }
    let table = summary(&outcomes);
    if args.json {
        println!("{}", serde_json::json!({"ok": all_ok, "runs": reports}));
        eprint!("\n{table}");
    } else {
        print!("\n{table}");
    }
    if cancel.is_cancelled() {
        eprintln!("cancelled");
    }
    Ok(if all_ok && !cancel.is_cancelled() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// One line per service: result, wall time, critical path, tests, coverage.
fn summary(outcomes: &[(&'static str, Result<RunOutcome>)]) -> String {
    let mut rows = vec![[
        "service".to_string(),
        "pattern".into(),
        "result".into(),
        "wall".into(),
        "critical path".into(),
        "tests".into(),
        "coverage".into(),
    ]];
    for (name, outcome) in outcomes {
        let row = match outcome {
            Ok(outcome) => {
                let report = &outcome.report;
                let tests = report
                    .tasks
                    .iter()
                    .find(|t| t.kind == TaskKind::Test)
                    .and_then(|t| t.note.clone())
                    .unwrap_or_else(|| "-".into());
                let coverage = report
                    .coverage
                    .as_ref()
                    .map(|c| {
                        c.workloads
                            .iter()
                            .map(|w| match w.percent {
                                Some(p) => format!("{} {p:.1}%", w.workload),
                                None => format!("{} -", w.workload),
                            })
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .filter(|c| !c.is_empty())
                    .unwrap_or_else(|| "-".into());
                [
                    name.to_string(),
                    report.pattern.to_string(),
                    if report.ok { "ok" } else { "FAILED" }.into(),
                    format!("{:.1}s", report.wall_seconds),
                    format!("{:.1}s", report.critical_path_seconds),
                    tests_cell(&tests),
                    coverage,
                ]
            }
            Err(_) => [
                name.to_string(),
                "-".into(),
                "FAILED".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        };
        rows.push(row);
    }
    let widths: Vec<usize> = (0..7)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|row| {
            let cells: Vec<String> = row
                .iter()
                .zip(&widths)
                .map(|(cell, width)| format!("{cell:<width$}"))
                .collect();
            format!("{}\n", cells.join("  ").trim_end())
        })
        .collect()
}

/// `ok. 7 passed; 0 failed; ... (5 skipped, see ...)` → `7 passed, 0 failed, 5 skipped`.
fn tests_cell(note: &str) -> String {
    let counts: Vec<&str> = note
        .trim_start_matches("ok. ")
        .split(';')
        .take(2)
        .map(str::trim)
        .collect();
    let skipped = note
        .split_once(" (")
        .and_then(|(_, rest)| rest.split_once(" skipped"))
        .map(|(n, _)| format!(", {n} skipped"))
        .unwrap_or_default();
    format!("{}{skipped}", counts.join(", "))
}

/// An observer that names the service in front of each task, for runs of
/// several services sharing one progress display.
struct Prefixed<'a> {
    prefix: &'static str,
    inner: &'a Progress,
}

impl Observer for Prefixed<'_> {
    fn started(&self, task: &str, kind: TaskKind) {
        self.inner
            .started(&format!("{}: {task}", self.prefix), kind);
    }
    fn finished(&self, task: &str, outcome: &Outcome, seconds: f64) {
        self.inner
            .finished(&format!("{}: {task}", self.prefix), outcome, seconds);
    }
    fn failed(&self, task: &str, error: &str, seconds: f64) {
        self.inner
            .failed(&format!("{}: {task}", self.prefix), error, seconds);
    }
}

/// The first SIGINT (Ctrl-C), SIGTERM (what `timeout` and CI runners send)
/// or SIGHUP (a closed terminal): cancel and let the run clean up. A second
/// one: exit at once.
async fn cancel_on_signal(cancel: CancellationToken) {
    let Some(first) = crate::signals::next().await else {
        return;
    };
    eprintln!("\n{first}: cancelling and removing what this run created (again to exit at once)");
    cancel.cancel();
    if let Some(second) = crate::signals::next().await {
        eprintln!("second signal ({second}): exiting without cleaning up");
        std::process::exit(130);
    }
}

/// Adds `build <crate> suite` (compiles the suite while the environment comes
/// up) and `test <service>` (runs it once everything else is done).
fn add_suite(setup: &mut Setup, env_file: &SuiteEnvFile, suite_crate: &str) {
    let executable: Arc<OnceLock<PathBuf>> = Arc::default();
    let everything = setup.all_tasks();
    let crate_name = suite_crate.to_string();
    let compiled = executable.clone();
    let build = setup.task(
        format!("build {suite_crate} suite"),
        TaskKind::Build,
        &[],
        move |ctx: Arc<SetupContext>| async move {
            let (path, fresh) = compile_suite(&crate_name, &ctx.run_dir).await?;
            let _ = compiled.set(path);
            Ok(Outcome::cached(fresh))
        },
    );
    let mut deps = everything;
    deps.push(build);
    let env_file = env_file.clone();
    setup.task(
        format!("test {suite_crate}"),
        TaskKind::Test,
        &deps,
        move |ctx: Arc<SetupContext>| async move {
            env_file
                .write(&ctx)
                .map_err(|e| TaskError::msg(format!("writing {}: {e}", env_file.path.display())))?;
            let binary = executable
                .get()
                .ok_or_else(|| TaskError::msg("the suite was not compiled"))?
                .clone();
            run_suite(&binary, &env_file.path, &ctx.run_dir).await
        },
    );
}

/// Compiles the `e2e` test target of `crate_name`, returning its binary and
/// whether it was already up to date.
async fn compile_suite(crate_name: &str, run_dir: &Path) -> Result<(PathBuf, bool), TaskError> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = tokio::process::Command::new(cargo)
        // The whole workspace's feature set, like `cargo test --workspace`:
        // `-p` alone would unify features differently and rebuild the world.
        .args([
            "test",
            "--no-run",
            "--message-format=json",
            "--workspace",
            "--test",
            "e2e",
        ])
        .arg("--manifest-path")
        .arg(crate::workspace_root().join("Cargo.toml"))
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| TaskError::msg(format!("running cargo: {e}")))?;
    let _ = std::fs::write(run_dir.join("suite-build.log"), &output.stderr);
    if !output.status.success() {
        return Err(TaskError::msg(format!(
            "compiling the {crate_name} suite failed:\n{}",
            infra_core::engine::last_lines(&String::from_utf8_lossy(&output.stderr), 20)
        )));
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "e2e")
        .filter(|m| {
            m["manifest_path"]
                .as_str()
                .is_some_and(|p| p.ends_with(&format!("/{crate_name}/Cargo.toml")))
        })
        .find_map(|m| {
            let path = m["executable"].as_str().map(PathBuf::from)?;
            Some((path, m["fresh"].as_bool().unwrap_or(false)))
        })
        .ok_or_else(|| TaskError::msg(format!("cargo built no `e2e` test binary for {crate_name}")))
}

/// Runs the suite binary against the environment; its output goes to
/// `suite.log` in the run folder.
async fn run_suite(binary: &Path, env_file: &Path, run_dir: &Path) -> Result<Outcome, TaskError> {
    let output = tokio::process::Command::new(binary)
        .env(ENV_FILE_VAR, env_file)
        .args(["--test-threads=1", "--nocapture"])
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| TaskError::msg(format!("running {}: {e}", binary.display())))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let log = run_dir.join("suite.log");
    let _ = std::fs::write(&log, &text);
    let summary = text
        .lines()
        .rev()
        .find(|l| l.starts_with("test result:"))
        .unwrap_or("no test result line")
        .trim_start_matches("test result: ")
        .to_string();
    // Skipping tests print `SKIPPED <test>: <why>` (after libtest's `test <name> ...`).
    let skipped = text.matches("SKIPPED ").count();
    if output.status.success() {
        let note = if skipped > 0 {
            format!("{summary} ({skipped} skipped, see {})", log.display())
        } else {
            summary
        };
        return Ok(Outcome::done().note(note));
    }
    let failures: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("test ") && l.ends_with("FAILED"))
        .collect();
    Err(TaskError::msg(format!(
        "the suite failed: {summary}\n{}\nfull output: {}",
        failures.join("\n"),
        log.display()
    )))
}

/// Runs the service under each pattern `--runs` times (rotating the order
/// each round, so no pattern always runs first) and prints medians side by
/// side: the measurement behind migrating a service to another pattern.
pub async fn compare(args: CompareArgs) -> Result<ExitCode> {
    if args.runs == 0 || args.patterns.is_empty() {
        bail!("give at least one run and one pattern");
    }
    let service = services::find(&args.service)?;
    let provider = provider(args.cluster, &args.service).await?;
    let engine = crate::toolchain::engine().await?;
    let repo_root = repo_root(args.repo_root)?;
    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    let mut results: Vec<(Pattern, Vec<infra_core::report::RunReport>)> =
        args.patterns.iter().map(|p| (*p, Vec::new())).collect();
    for round in 0..args.runs {
        for offset in 0..results.len() {
            let index = (round + offset) % results.len();
            let pattern = results[index].0;
            if args.cold {
                remove_service_images(&engine, service, &repo_root).await?;
            }
            let options = RunOptions {
                pattern,
                provider,
                keep_cluster: false,
                reuse_cluster: false,
                wait_for_cluster: false,
                repo_root: repo_root.clone(),
                runs_dir: crate::e2e_dir(),
                rebuild: args.cold,
                coverage: false,
                cluster_options: crate::cluster_options(&engine).await?,
            };
            let outcome = run_once(
                &engine,
                service,
                options,
                &infra_core::plan::Silent,
                cancel.clone(),
            )
            .await?;
            let report = outcome.report;
            if cancel.is_cancelled() {
                bail!("cancelled");
            }
            if !report.ok {
                eprint!("{}", report.table());
                bail!(
                    "{pattern} run {} failed; see {}",
                    round + 1,
                    outcome.run_dir.display()
                );
            }
            eprintln!(
                "  round {}: {pattern:<9} {:>6.1}s (critical path {:.1}s)",
                round + 1,
                report.wall_seconds,
                report.critical_path_seconds
            );
            results[index].1.push(report);
        }
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let summary: Vec<serde_json::Value> = results
        .iter()
        .map(|(pattern, reports)| {
            let walls: Vec<f64> = reports.iter().map(|r| r.wall_seconds).collect();
            let paths: Vec<f64> = reports.iter().map(|r| r.critical_path_seconds).collect();
            let typical = &reports[reports.len() / 2];
            serde_json::json!({
                "pattern": pattern,
                "wall_seconds": walls,
                "median_wall_seconds": median(walls.clone()),
                "median_critical_path_seconds": median(paths),
                "critical_path": typical.critical_path.iter().map(|&i| typical.tasks[i].name.clone()).collect::<Vec<_>>(),
            })
        })
        .collect();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "service": service.name(),
                "cluster": provider,
                "runs": args.runs,
                "patterns": summary,
            })
        );
        return Ok(ExitCode::SUCCESS);
    }
    let baseline = summary[0]["median_wall_seconds"].as_f64().unwrap_or(1.0);
    println!(
        "{} on {provider}, medians of {} runs:\n{:<10} {:>9} {:>9} {:>9}  critical path",
        service.name(),
        args.runs,
        "pattern",
        "wall",
        "crit.",
        format!("vs {}", results[0].0)
    );
    for row in &summary {
        let wall = row["median_wall_seconds"].as_f64().unwrap_or_default();
        println!(
            "{:<10} {:>8.1}s {:>8.1}s {:>+8.0}%  {}",
            row["pattern"].as_str().unwrap_or_default(),
            wall,
            row["median_critical_path_seconds"]
                .as_f64()
                .unwrap_or_default(),
            (wall / baseline - 1.0) * 100.0,
            row["critical_path"]
                .as_array()
                .map(|a| a
                    .iter()
                    .filter_map(|n| n.as_str())
                    .collect::<Vec<_>>()
                    .join(" → "))
                .unwrap_or_default()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Removes the images a run of `service` would build from the files as they
/// are, so the next run builds them.
async fn remove_service_images(
    engine: &Engine,
    service: &'static dyn ServiceSetup,
    repo_root: &Path,
) -> Result<()> {
    let mut setup = Setup::new();
    let cluster_task = setup.cluster(service.cluster_spec(repo_root));
    service.declare(&mut setup, cluster_task, repo_root)?;
    for config in setup.image_configs() {
        let reference = infra_core::image::planned_reference(&config)?;
        engine.remove_image(&reference).await?;
    }
    Ok(())
}

pub async fn plan(args: PlanArgs) -> Result<()> {
    let service = services::find(&args.service)?;
    let pattern = args.pattern.unwrap_or(service.default_pattern());
    let repo_root = repo_root(args.repo_root)?;
    let mut setup = Setup::new();
    let spec = service.cluster_spec(&repo_root);
    let cluster_task = setup.cluster(spec.clone());
    service.declare(&mut setup, cluster_task, &repo_root)?;
    let configs = setup.image_configs();
    let engine = crate::toolchain::engine().await.ok();
    let existing = match &engine {
        Some(engine) => cluster::find(engine, &spec.name).await.ok().flatten(),
        None => None,
    };
    let scheduled = setup.into_plan().schedule(pattern);
    println!(
        "{} setup, {pattern} pattern ({} tasks):",
        service.name(),
        scheduled.len()
    );
    for (i, task) in scheduled.iter().enumerate() {
        let deps: Vec<&str> = task
            .deps
            .iter()
            .map(|&d| scheduled[d].name.as_str())
            .collect();
        let mut state = String::new();
        if let Some(config) = configs
            .iter()
            .find(|c| infra_core::plan::setup::build_task_name(&c.image_name) == task.name)
        {
            state = match infra_core::image::planned_reference(config) {
                Ok(reference) => match &engine {
                    Some(engine) if engine.docker().inspect_image(&reference).await.is_ok() => {
                        format!("cached: {reference}")
                    }
                    Some(_) => format!("would build {reference}"),
                    None => format!("{reference} (no engine answers: cache unknown)"),
                },
                Err(e) => format!("cannot read its context: {}", infra_core::error_chain(&e)),
            };
        } else if let Some(config) = configs
            .iter()
            .find(|c| infra_core::plan::setup::load_task_name(&c.image_name) == task.name)
        {
            state = load_state(engine.as_ref(), existing.as_ref(), config).await;
        } else if task.kind == TaskKind::Cluster {
            state = match &existing {
                Some(found) => format!("exists ({}): reused with --reuse-cluster", found.provider),
                None => "would create".into(),
            };
        }
        println!(
            "{i:>3}. {:<40} {:<7} after: {}{}",
            task.name,
            format!("{:?}", task.kind).to_lowercase(),
            if deps.is_empty() {
                "-".to_string()
            } else {
                deps.join(", ")
            },
            if state.is_empty() {
                String::new()
            } else {
                format!("\n       {state}")
            }
        );
    }
    println!("(the suite is compiled and run after these tasks by `cargo xtask e2e`)");
    Ok(())
}

/// Whether a load would be skipped: only when the cluster exists and every
/// node already holds the image the build would produce.
async fn load_state(
    engine: Option<&Engine>,
    cluster: Option<&cluster::ClusterSummary>,
    config: &infra_core::E2eImageConfig,
) -> String {
    let (Some(engine), Some(cluster)) = (engine, cluster) else {
        return "would load (no cluster yet)".into();
    };
    let Ok(reference) = infra_core::image::planned_reference(config) else {
        return "would load".into();
    };
    let Some(id) = engine
        .docker()
        .inspect_image(&reference)
        .await
        .ok()
        .and_then(|i| i.id)
    else {
        return "would load (after building)".into();
    };
    for node in &cluster.nodes {
        let on_node = infra_core::load::nodes::image_ids_on_node(engine, node, &reference)
            .await
            .unwrap_or_default();
        if !on_node.contains(&id) {
            return format!("would load into {node} and any other node lacking it");
        }
    }
    "cached: every node holds it (with --reuse-cluster)".into()
}

pub async fn down(args: DownArgs) -> Result<()> {
    let service = services::find(&args.service)?;
    let engine = crate::toolchain::engine().await?;
    let options = crate::cluster_options(&engine).await?;
    let name = service.cluster_spec(&crate::workspace_root()).name;
    let existed = cluster::delete(&engine, &name, &options).await?;
    let leftovers = infra_core::run::remove_leftovers(&engine, service.name()).await?;
    println!(
        "{}: cluster {name} {}; {leftovers} leftover container(s) removed",
        service.name(),
        if existed { "deleted" } else { "did not exist" }
    );
    Ok(())
}

#[derive(Args)]
pub struct StatusArgs {
    /// Print one JSON array on stdout.
    #[arg(long)]
    json: bool,
}

/// Each migrated service: its cluster (and whether a sim cluster's API still
/// answers) and its last run.
pub async fn status(args: StatusArgs) -> Result<()> {
    let engine = crate::toolchain::engine().await?;
    let options = crate::cluster_options(&engine).await?;
    let clusters = cluster::list(&engine).await?;
    let mut rows = Vec::new();
    for service in services::all() {
        let name = service.cluster_spec(&crate::workspace_root()).name;
        let found = clusters.iter().find(|c| c.name == name);
        let api = match found.map(|c| c.provider) {
            Some(Provider::Sim) => {
                let kubeconfig = options.kubeconfig_path(&name);
                let answers = infra_core::cluster::sim::api_url(&options.state_dir, &name)
                    .is_some()
                    && infra_core::cluster::api_answers(&kubeconfig).await;
                Some(if answers && options.kubeconfig_path(&name).exists() {
                    "answering"
                } else {
                    "not answering: delete and recreate"
                })
            }
            Some(Provider::Kind) => Some("kind"),
            None => None,
        };
        let last = last_report(&crate::e2e_dir(), service.name(), &options.state_dir, &name);
        let per_pattern = setup_per_pattern(&crate::e2e_dir(), service.name());
        rows.push(serde_json::json!({
            "service": service.name(),
            "default_pattern": service.default_pattern(),
            "cluster": name,
            "exists": found.is_some(),
            "provider": found.map(|c| c.provider),
            "nodes": found.map(|c| c.nodes.clone()).unwrap_or_default(),
            "api": api,
            "setup_seconds_by_pattern": per_pattern,
            "last_run": last.as_ref().map(|(id, report)| match report {
                Ok(report) => serde_json::json!({
                    "run_id": id,
                    "pattern": report["pattern"],
                    "ok": report["ok"],
                    "wall_seconds": report["wall_seconds"],
                    "tests": test_note(report).map(|n| tests_cell(&n)),
                }),
                Err(problem) => serde_json::json!({"run_id": id, "problem": problem}),
            }),
        }));
    }
    if args.json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    for row in rows {
        let cluster = if row["exists"] == true {
            format!(
                "{} ({}, {} nodes, {})",
                row["cluster"].as_str().unwrap_or_default(),
                row["provider"].as_str().unwrap_or_default(),
                row["nodes"].as_array().map_or(0, Vec::len),
                row["api"].as_str().unwrap_or_default()
            )
        } else {
            format!("{}: none", row["cluster"].as_str().unwrap_or_default())
        };
        let last = match row["last_run"].as_object() {
            Some(run) if run.contains_key("problem") => format!(
                "last run {}: {}",
                run["run_id"].as_str().unwrap_or_default(),
                run["problem"].as_str().unwrap_or_default()
            ),
            Some(run) => format!(
                "last run {} ({}): {} in {:.1}s{}",
                run["run_id"].as_str().unwrap_or_default(),
                run["pattern"].as_str().unwrap_or_default(),
                if run["ok"] == true { "ok" } else { "FAILED" },
                run["wall_seconds"].as_f64().unwrap_or_default(),
                run["tests"]
                    .as_str()
                    .map(|t| format!(", tests {t}"))
                    .unwrap_or_default()
            ),
            None => "no run yet".to_string(),
        };
        let patterns = row["setup_seconds_by_pattern"]
            .as_object()
            .filter(|m| !m.is_empty())
            .map(|m| {
                let each: Vec<String> = m
                    .iter()
                    .map(|(p, s)| format!("{p} {:.1}s", s.as_f64().unwrap_or_default()))
                    .collect();
                format!("; setup by pattern: {}", each.join(", "))
            })
            .unwrap_or_default();
        println!(
            "{:<14} default {:<9}  cluster {cluster}; {last}{patterns}",
            row["service"].as_str().unwrap_or_default(),
            row["default_pattern"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

/// The newest run of `service` (its folder last written), with its report,
/// or why there is none to read: a run in progress, one that left no report
/// (killed) or an unreadable report is said so, never taken for "no run yet".
/// The suite's note (`ok. 7 passed; ...`) in a report, if the suite ran.
fn test_note(report: &serde_json::Value) -> Option<String> {
    report["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["kind"] == "test" && t["note"].is_string())
        .and_then(|t| t["note"].as_str().map(str::to_string))
}

/// Per provider and pattern (`kind pipelined`), the setup time (until the
/// suite started) of the service's latest successful run under it.
fn setup_per_pattern(runs_dir: &Path, service: &str) -> BTreeMap<String, f64> {
    let prefix = format!("{service}-");
    let mut runs: Vec<(std::time::SystemTime, serde_json::Value)> = std::fs::read_dir(runs_dir)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path().join("report.json")).ok()?;
            let modified = e.metadata().ok()?.modified().ok()?;
            Some((modified, serde_json::from_str(&text).ok()?))
        })
        .collect();
    runs.sort_by_key(|(modified, _)| *modified);
    let mut latest = BTreeMap::new();
    for (_, report) in runs.into_iter().filter(|(_, r)| r["ok"] == true) {
        let Some(pattern) = report["pattern"].as_str() else {
            continue;
        };
        let suite_start = report["tasks"].as_array().and_then(|tasks| {
            tasks
                .iter()
                .find(|t| t["kind"] == "test")
                .and_then(|t| t["start_seconds"].as_f64())
        });
        if let Some(seconds) = suite_start.or(report["wall_seconds"].as_f64()) {
            let provider = report["cluster"]["provider"].as_str().unwrap_or("?");
            latest.insert(
                format!("{provider} {pattern}"),
                (seconds * 10.0).round() / 10.0,
            );
        }
    }
    latest
}

fn last_report(
    runs_dir: &Path,
    service: &str,
    state_dir: &Path,
    cluster: &str,
) -> Option<(String, Result<serde_json::Value, String>)> {
    let prefix = format!("{service}-");
    let (id, dir) = std::fs::read_dir(runs_dir)
        .ok()?
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir() && e.file_name().to_string_lossy().starts_with(&prefix))
        .filter_map(|e| {
            let modified = e.metadata().ok()?.modified().ok()?;
            Some((
                modified,
                e.file_name().to_string_lossy().into_owned(),
                e.path(),
            ))
        })
        .max_by_key(|(modified, _, _)| *modified)
        .map(|(_, id, dir)| (id, dir))?;
    let path = dir.join("report.json");
    let holder = infra_core::cluster::lock::holder(state_dir, cluster);
    let report = match std::fs::read_to_string(&path) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(match holder {
            Some(h) if h.run_id == id => format!("in progress (pid {})", h.pid),
            _ => format!(
                "it left no report (killed before it ended?); see {}",
                dir.display()
            ),
        }),
        Err(e) => Err(format!("{} cannot be read: {e}", path.display())),
        Ok(text) => serde_json::from_str(&text).map_err(|e| {
            format!(
                "{} is not a report ({e}): delete that run folder",
                path.display()
            )
        }),
    };
    Some((id, report))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_summary_shows_a_suites_counts_and_skips_briefly() {
        let note = "ok. 7 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in \
                    0.04s (5 skipped, see r/suite.log)";
        assert_eq!(super::tests_cell(note), "7 passed, 0 failed, 5 skipped");
        assert_eq!(
            super::tests_cell("ok. 3 passed; 0 failed; 0 ignored"),
            "3 passed, 0 failed"
        );
    }

    use super::*;

    #[test]
    fn the_last_run_says_why_its_report_cannot_be_read() {
        let runs = tempfile::tempdir().unwrap();
        let state = tempfile::tempdir().unwrap();
        let last = || last_report(runs.path(), "svc", state.path(), "svc-e2e");
        assert!(last().is_none(), "no run yet");
        let run = runs.path().join("svc-1700000000-00aa");
        std::fs::create_dir_all(&run).unwrap();
        let (id, report) = last().unwrap();
        assert_eq!(id, "svc-1700000000-00aa");
        assert!(report.unwrap_err().contains("left no report"));
        std::fs::write(run.join("report.json"), "{not json").unwrap();
        let problem = last().unwrap().1.unwrap_err();
        assert!(
            problem.contains("is not a report") && problem.contains("delete that run folder"),
            "{problem}"
        );
        std::fs::write(run.join("report.json"), r#"{"ok": true}"#).unwrap();
        assert_eq!(last().unwrap().1.unwrap()["ok"], true);
    }
}
