//! The command line, end to end, as people and scripts use it: the real
//! `xtask` binary against the real engine, node containers and the simulated
//! cluster's API, with kubectl as an independent client.
//!
//! Each test gets its own HOME (so kubeconfigs and sim state go to a temp
//! folder). Tests that use DataStorage's cluster (fixed name and host ports)
//! take a lock so they run one at a time.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};
use tokio::sync::Mutex;

use infra_core::testing;

/// DataStorage's cluster name and host ports are fixed: one user at a time.
static DATASTORAGE_CLUSTER: Mutex<()> = Mutex::const_new(());

/// `GOCACHE` and `GOMODCACHE` as the real HOME has them (none without Go).
fn go_caches() -> &'static [(String, String)] {
    static CACHES: std::sync::OnceLock<Vec<(String, String)>> = std::sync::OnceLock::new();
    CACHES.get_or_init(|| {
        let Ok(output) = Command::new("go")
            .args(["env", "GOCACHE", "GOMODCACHE"])
            .output()
        else {
            return Vec::new();
        };
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        ["GOCACHE", "GOMODCACHE"]
            .into_iter()
            .zip(text.lines())
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    })
}

/// Runs `down <service>` when dropped: a test keeping a cluster leaves
/// nothing behind when an assert fails.
struct DownOnDrop<'a>(&'a Cli, &'static str);

impl Drop for DownOnDrop<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["down", self.1]);
    }
}

struct Cli {
    home: tempfile::TempDir,
    /// The engine the commands use: the one the test inspects.
    docker_host: String,
}

impl Cli {
    /// Commands on the default engine (what `testing::engine` connects to),
    /// whichever engine holds the node image.
    fn new() -> Cli {
        let docker_host = std::env::var("DOCKER_HOST").unwrap_or_else(|_| {
            infra_core::engine::default_endpoints()
                .into_iter()
                .find(|e| Path::new(e.trim_start_matches("unix://")).exists())
                .unwrap_or_else(|| "unix:///var/run/docker.sock".into())
        });
        Cli::on(&docker_host)
    }

    /// Commands on the engine at `endpoint`.
    fn on(endpoint: &str) -> Cli {
        Cli {
            home: tempfile::tempdir().unwrap(),
            docker_host: endpoint.to_string(),
        }
    }

    fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtask"));
        command
            .args(args)
            .env("HOME", self.home.path())
            .env("XDG_STATE_HOME", self.home.path().join("state"))
            // The machine's toolchain, rootfs and node image, not a copy per test.
            .env("KIND_E2E_CACHE", infra_core::toolchain::default_cache())
            .env("DOCKER_HOST", &self.docker_host)
            .env_remove("E2E_REPO_ROOT");
        // The machine's Go build and module caches: a fresh HOME would make
        // every Go pre-build cold and download its modules again.
        for (key, value) in go_caches() {
            command.env(key, value);
        }
        command
    }

    fn run(&self, args: &[&str]) -> Output {
        let output = self.command(args).output().unwrap();
        eprintln!(
            "$ xtask {}\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        output
    }

    fn ok(&self, args: &[&str]) -> String {
        let output = self.run(args);
        assert!(output.status.success(), "xtask {} failed", args.join(" "));
        String::from_utf8(output.stdout).unwrap()
    }
}

fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    let output = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(
        output.status.success(),
        "kubectl {}: {stdout}{stderr}",
        args.join(" ")
    );
    stdout
}

/// Whether process `pid` exists and has not exited (a zombie has).
fn alive(pid: u64) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| {
            !stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        })
        .unwrap_or(false)
}

fn busybox_context(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("busybox")).unwrap();
    std::fs::write(dir.path().join("marker"), testing::unique_name(name)).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY marker /marker\n",
    )
    .unwrap();
    dir
}

async fn prerequisites(test: &str, kubectl_needed: bool) -> bool {
    if testing::engine(test).await.is_none() {
        return false;
    }
    if !Path::new("/bin/busybox").exists() {
        testing::skip_or_fail(test, "needs /bin/busybox (apt-get install busybox-static)");
        return false;
    }
    // A sim cluster's control plane is the pinned toolchain's.
    if testing::toolchain_bin(test).await.is_none() {
        return false;
    }
    if kubectl_needed && which::which("kubectl").is_err() {
        testing::skip_or_fail(test, "needs kubectl on PATH");
        return false;
    }
    true
}

#[tokio::test]
async fn a_sim_cluster_created_by_the_cli_takes_loads_and_serves_kubectl_until_deleted() {
    let test = "a_sim_cluster_created_by_the_cli_takes_loads_and_serves_kubectl_until_deleted";
    if !prerequisites(test, true).await {
        return;
    }
    let cli = Cli::new();
    let name = testing::unique_name("cli");
    let started = Instant::now();
    let created: serde_json::Value =
        serde_json::from_str(&cli.ok(&["cluster", "create", &name, "--provider", "sim", "--json"]))
            .unwrap();
    eprintln!(
        "cluster create (sim): {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(created["name"], name.as_str());
    assert_eq!(created["provider"], "sim");
    assert_eq!(
        created["nodes"],
        serde_json::json!([format!("{name}-control-plane"), format!("{name}-worker")])
    );
    let kubeconfig = PathBuf::from(created["kubeconfig"].as_str().unwrap());
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // The cluster outlives the command that made it.
    let nodes = kubectl(&kubeconfig, &["get", "nodes"]);
    assert!(nodes.contains(&format!("{name}-worker")), "{nodes}");
    assert!(cli.ok(&["cluster", "list"]).contains(&name));

    let context = busybox_context(test);
    let built: serde_json::Value = serde_json::from_str(&cli.ok(&[
        "image",
        "build",
        "--service",
        "cli",
        "--image",
        "e2e-test/cli",
        "--dockerfile",
        "Dockerfile",
        "--context",
        context.path().to_str().unwrap(),
        "--json",
    ]))
    .unwrap();
    let image = built["image"].as_str().unwrap().to_string();
    let loaded: serde_json::Value =
        serde_json::from_str(&cli.ok(&["image", "load", &image, "--cluster", &name, "--json"]))
            .unwrap();
    assert_eq!(loaded["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(loaded["temp_bytes"], 0);

    let manifest = context.path().join("app.yaml");
    std::fs::write(
        &manifest,
        format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: cli\n---\n\
             apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\n  namespace: cli\n\
             spec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: app}}\n  template:\n\
             \x20   metadata:\n      labels: {{app: app}}\n    spec:\n      containers:\n\
             \x20     - name: app\n        image: {image}\n        imagePullPolicy: Never\n"
        ),
    )
    .unwrap();
    let manifest = manifest.to_str().unwrap();
    kubectl(&kubeconfig, &["apply", "--server-side", "-f", manifest]);
    let waited = kubectl(
        &kubeconfig,
        &[
            "wait",
            "--for=condition=Available",
            "deployment/app",
            "-n",
            "cli",
            "--timeout=30s",
        ],
    );
    assert!(waited.contains("condition met"), "{waited}");
    let pods = kubectl(&kubeconfig, &["get", "pods", "-n", "cli"]);
    assert!(pods.contains("app-"), "{pods}");
    kubectl(&kubeconfig, &["delete", "-f", manifest]);

    let server: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            cli.home
                .path()
                .join("state/kind-e2e/sim")
                .join(&name)
                .join("server.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let pid = server["pid"].as_u64().unwrap();
    assert!(
        alive(pid),
        "the API server runs detached from the command that made it"
    );

    let started = Instant::now();
    assert!(cli.ok(&["cluster", "delete", &name]).contains("deleted"));
    assert!(!alive(pid), "the API server stops with the cluster");
    eprintln!(
        "cluster delete (sim): {:.2}s",
        started.elapsed().as_secs_f64()
    );
    assert!(!kubeconfig.exists(), "the kubeconfig goes with the cluster");
    assert!(
        !cli.home
            .path()
            .join("state/kind-e2e/sim")
            .join(&name)
            .exists(),
        "no state is left behind"
    );
    assert!(!cli.ok(&["cluster", "list"]).contains(&name));
    assert!(
        cli.ok(&["cluster", "delete", &name])
            .contains("does not exist")
    );

    let engine = testing::engine(test).await.unwrap();
    testing::remove_image(&engine, &image).await;
}

#[tokio::test]
async fn e2e_without_kind_fails_at_once_and_suggests_the_sim() {
    let cli = Cli::new();
    let started = Instant::now();
    // No kind and no go on PATH, and an empty cache: nothing to run kind with.
    let nothing = tempfile::tempdir().unwrap();
    let output = cli
        .command(&["e2e", "datastorage"])
        .env("PATH", nothing.path())
        .env("KIND_E2E_CACHE", nothing.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("kind was not found") && stderr.contains("--cluster sim"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    let unknown = cli.run(&["e2e", "billing", "--cluster", "sim"]);
    assert!(!unknown.status.success());
    assert!(
        String::from_utf8_lossy(&unknown.stderr)
            .contains("known services: datastorage, gateway, notification, authwebhook")
    );
}

/// The README's main job on a real kind cluster: every suite test runs
/// against running PostgreSQL, migrations and DataStorage (none skipped),
/// and nothing is left behind.
#[tokio::test]
async fn datastorage_e2e_on_a_real_kind_cluster_runs_every_suite_test_live() {
    let test = "datastorage_e2e_on_a_real_kind_cluster_runs_every_suite_test_live";
    let Some(offline) = testing::offline_kind(test).await else {
        return;
    };
    let _one_at_a_time = DATASTORAGE_CLUSTER.lock().await;
    let cli = Cli::on(offline.engine.endpoint());
    let output = cli.run(&["e2e", "datastorage", "--keep-cluster", "--json"]);
    // Whatever fails below, the kept cluster goes.
    let _down = DownOnDrop(&cli, "datastorage");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "the kind run failed:\n{stderr}");
    let report = report(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(report["ok"], true);
    assert_eq!(report["cluster"]["provider"], "kind");
    assert!(
        stderr.contains(&offline.node_image),
        "the run names its node image: {stderr}"
    );
    let run_dir = stderr
        .lines()
        .find_map(|l| l.strip_prefix("run folder: "))
        .map(PathBuf::from)
        .expect("the run folder is printed");
    let suite = std::fs::read_to_string(run_dir.join("suite.log")).unwrap();
    assert!(!suite.contains("SKIPPED"), "every test runs live:\n{suite}");
    assert!(suite.contains("7 passed; 0 failed"), "{suite}");
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("report.json")).unwrap())
            .unwrap();
    let note = |name: &str| {
        saved["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .and_then(|t| t["note"].as_str())
            .unwrap_or_default()
            .to_string()
    };
    assert!(
        note("health datastorage").contains("/health/ready"),
        "the health check ran: {}",
        note("health datastorage")
    );
    for (task, upstream) in [
        ("image postgresql", "postgres:16-alpine"),
        ("image redis", "redis:7-alpine"),
    ] {
        // The reference, then where it came from: the upstream image, or
        // the offline stand-in (ours, under localhost/kind-e2e/).
        let how = note(task);
        let (reference, provenance) = how.split_once(": ").unwrap_or_default();
        assert!(
            reference.ends_with(upstream) || reference.starts_with("localhost/kind-e2e/"),
            "{task}: {how}"
        );
        assert!(
            !provenance.is_empty(),
            "{task} says where it came from: {how}"
        );
    }
    migrate_a_kept_environment(&cli);
    assert!(cli.ok(&["down", "datastorage"]).contains("deleted"));
    assert_eq!(
        node_containers_of(&all_containers(&offline.engine).await, "datastorage-e2e"),
        0
    );
}

/// `migrate` on the kept DataStorage environment: what the run applied is
/// already there; a new file is applied once; a bad file names its line and
/// leaves nothing of itself (read back through PostgreSQL's host port).
fn migrate_a_kept_environment(cli: &Cli) {
    let first = cli.ok(&["migrate", "datastorage"]);
    assert!(
        first.contains("already applied  001_audit_events.sql")
            && first.contains("0 applied, 2 already there"),
        "{first}"
    );
    let repo = tempfile::tempdir().unwrap();
    let migrations = repo.path().join("migrations");
    std::fs::create_dir_all(&migrations).unwrap();
    let example =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernaut-lite/migrations");
    for entry in std::fs::read_dir(example).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, migrations.join(path.file_name().unwrap())).unwrap();
    }
    std::fs::write(
        migrations.join("003_checks.sql"),
        "-- +goose Up\nCREATE TABLE e2e_migrate_check (id int);\n-- +goose Down\nDROP TABLE e2e_migrate_check;\n",
    )
    .unwrap();
    let root = repo.path().to_str().unwrap();
    let added = cli.ok(&["migrate", "datastorage", "--repo-root", root]);
    assert!(added.contains("applied          003_checks.sql"), "{added}");
    assert!(added.contains("1 applied, 2 already there"), "{added}");
    let again = cli.ok(&["migrate", "datastorage", "--repo-root", root]);
    assert!(again.contains("0 applied, 3 already there"), "{again}");

    std::fs::write(
        migrations.join("004_broken.sql"),
        "-- +goose Up\nCREATE TABLE e2e_half_applied (id int);\nGARBAGE;\n",
    )
    .unwrap();
    let broken = cli.run(&["migrate", "datastorage", "--repo-root", root]);
    let stderr = String::from_utf8_lossy(&broken.stderr);
    assert!(!broken.status.success());
    assert!(
        stderr.contains("migration 004_broken.sql, line 3: syntax error at or near \"GARBAGE\""),
        "{stderr}"
    );
    let psql = |sql: &str| {
        let output = Command::new("psql")
            .arg("postgresql://slm_user:slm_password_e2e@127.0.0.1:25433/action_history")
            .args(["-tA", "-c", sql])
            .output()
            .expect("psql (PostgreSQL's client) is installed");
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).trim().to_string()
    };
    assert_eq!(psql("SELECT to_regclass('e2e_half_applied') IS NULL"), "t");
    assert_eq!(psql("SELECT to_regclass('e2e_migrate_check') IS NULL"), "f");
    assert_eq!(
        psql("SELECT string_agg(version::text, ',' ORDER BY version) FROM e2e_schema_migrations"),
        "1,2,3"
    );
}

/// Gateway and Notification on real kind clusters, both runs at once (two
/// services never collide: names, host ports, run folders, locks differ).
/// Each builds its image and DataStorage's, deploys the shared stack and its
/// service, and every suite test runs live: alerts become RemediationRequests
/// and repeats are deduplicated; NotificationRequests are delivered to files
/// on the host; both audit in DataStorage. Nothing is left behind.
#[tokio::test]
async fn gateway_and_notification_at_once_on_real_kind_clusters_run_every_suite_test_live() {
    let test = "gateway_and_notification_at_once_on_real_kind_clusters_run_every_suite_test_live";
    let Some(offline) = testing::offline_kind(test).await else {
        return;
    };
    // No third kind cluster beside these two on a small machine.
    let _one_at_a_time = DATASTORAGE_CLUSTER.lock().await;
    let cli = std::sync::Arc::new(Cli::on(offline.engine.endpoint()));
    let runs: Vec<_> = [("gateway", 6), ("notification", 5)]
        .into_iter()
        .map(|(service, tests)| {
            let cli = cli.clone();
            std::thread::spawn(move || (service, tests, cli.run(&["e2e", service, "--json"])))
        })
        .collect();
    for run in runs {
        let (service, tests, output) = run.join().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            output.status.success(),
            "{service} on kind failed:\n{stderr}"
        );
        let report = report(&String::from_utf8_lossy(&output.stdout));
        assert_eq!(report["ok"], true, "{service}");
        assert_eq!(report["cluster"]["provider"], "kind");
        for image in [
            format!("kubernaut/{service}"),
            "kubernaut/datastorage".into(),
        ] {
            let note = task(&report, &format!("build {image}"))["note"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            assert!(note.starts_with("localhost/kubernaut/"), "{image}: {note}");
        }
        let run_dir = stderr
            .lines()
            .find_map(|l| l.strip_prefix("run folder: "))
            .map(PathBuf::from)
            .expect("the run folder is printed");
        let suite = std::fs::read_to_string(run_dir.join("suite.log")).unwrap();
        assert!(
            !suite.contains("SKIPPED"),
            "{service}: every test runs live:\n{suite}"
        );
        assert!(
            suite.contains(&format!("{tests} passed; 0 failed")),
            "{service}: {suite}"
        );
        let cluster = format!("{service}-e2e");
        assert_eq!(
            node_containers_of(&all_containers(&offline.engine).await, &cluster),
            0,
            "{cluster} is deleted"
        );
    }
}

/// AuthWebhook on a real kind cluster: the API server really calls the
/// webhook over TLS with this run's certificates (a status update stamped,
/// a DELETE refused until approved); nothing is left behind.
#[tokio::test]
async fn authwebhook_e2e_on_a_real_kind_cluster_runs_every_suite_test_live_with_coverage() {
    let test = "authwebhook_e2e_on_a_real_kind_cluster_runs_every_suite_test_live_with_coverage";
    let Some(offline) = testing::offline_kind(test).await else {
        return;
    };
    let _one_at_a_time = DATASTORAGE_CLUSTER.lock().await;
    let cli = Cli::on(offline.engine.endpoint());
    let output = cli.run(&["e2e", "authwebhook", "--coverage", "--json"]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "the kind run failed:\n{stderr}");
    let report = report(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(report["ok"], true);
    let run_dir = stderr
        .lines()
        .find_map(|l| l.strip_prefix("run folder: "))
        .map(PathBuf::from)
        .expect("the run folder is printed");
    let suite = std::fs::read_to_string(run_dir.join("suite.log")).unwrap();
    assert!(!suite.contains("SKIPPED"), "every test runs live:\n{suite}");
    assert!(suite.contains("3 passed; 0 failed"), "{suite}");
    // The run's private key is in the run folder, readable by its owner only.
    use std::os::unix::fs::PermissionsExt;
    let key = std::fs::metadata(run_dir.join("authwebhook-tls/tls.key")).unwrap();
    assert_eq!(key.permissions().mode() & 0o777, 0o600);
    // Coverage: the webhook's counters were written when it was scaled to
    // zero, copied out of the nodes and read with `go tool covdata`.
    let workloads = report["coverage"]["workloads"].as_array().unwrap();
    for (workload, package) in [
        ("authwebhook", "kubernaut-lite/pkg/authwebhook/"),
        ("datastorage", "kubernaut-lite/pkg/datastorage/"),
    ] {
        let measured = workloads
            .iter()
            .find(|w| w["workload"] == workload)
            .unwrap_or_else(|| panic!("no coverage of {workload} in {report}"));
        let percent = measured["percent"]
            .as_f64()
            .unwrap_or_else(|| panic!("{measured}"));
        assert!(percent > 0.0 && percent <= 100.0, "{measured}");
        let profile = std::fs::read_to_string(measured["profile"].as_str().unwrap()).unwrap();
        assert!(profile.starts_with("mode: "), "{profile}");
        assert!(profile.contains(package), "{workload}: {profile}");
    }
    assert!(stderr.contains("coverage: authwebhook "), "{stderr}");
    // Nothing of the run stays in the repository's mounted coverdata folder.
    let run_id = run_dir.file_name().unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernaut-lite");
    assert!(!repo.join("coverdata").join(run_id).exists());
    assert_eq!(
        node_containers_of(&all_containers(&offline.engine).await, "authwebhook-e2e"),
        0
    );
}

fn report(stdout: &str) -> serde_json::Value {
    let lines: Vec<&str> = stdout.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "--json prints exactly one line: {stdout}");
    serde_json::from_str(lines[0]).unwrap()
}

fn task<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no task {name} in {report}"))
}

#[tokio::test]
async fn datastorage_e2e_on_sim_under_every_pattern_then_a_reused_cluster_is_all_cached() {
    let test = "datastorage_e2e_on_sim_under_every_pattern_then_a_reused_cluster_is_all_cached";
    if !prerequisites(test, false).await {
        return;
    }
    let _one_at_a_time = DATASTORAGE_CLUSTER.lock().await;
    let cli = Cli::new();
    for pattern in ["standard", "hybrid", "pipelined"] {
        let mut args = vec![
            "e2e",
            "datastorage",
            "--cluster",
            "sim",
            "--pattern",
            pattern,
            "--json",
        ];
        // One coverage run: the sim runs nothing, and says so.
        let coverage = pattern == "hybrid";
        if coverage {
            args.push("--coverage");
        }
        let output = cli.run(&args);
        let report = report(&String::from_utf8_lossy(&output.stdout));
        assert!(output.status.success(), "{pattern}: {report}");
        assert_eq!(report["ok"], true);
        if coverage {
            assert_eq!(
                report["coverage"]["not_collected"], "the sim cluster runs no containers",
                "{report}"
            );
            assert!(
                String::from_utf8_lossy(&output.stderr)
                    .contains("coverage: not collected: the sim cluster runs no containers")
            );
        } else {
            assert!(report.get("coverage").is_none(), "{report}");
        }
        assert_eq!(report["pattern"], pattern);
        assert_eq!(report["cluster"]["provider"], "sim");
        assert_eq!(report["cluster"]["name"], "datastorage-e2e");
        let cluster = task(&report, "create cluster datastorage-e2e");
        let build = task(&report, "build kubernaut/datastorage");
        let postgres = task(&report, "deploy postgresql");
        match pattern {
            // Standard: the cluster first, builds after it, deploys after loads.
            "standard" => {
                assert!(build["start_seconds"].as_f64() >= cluster["end_seconds"].as_f64());
                let load = task(&report, "load kubernaut/datastorage");
                assert!(postgres["start_seconds"].as_f64() >= load["end_seconds"].as_f64());
            }
            // Hybrid: every build before the cluster.
            "hybrid" => {
                assert!(cluster["start_seconds"].as_f64() >= build["end_seconds"].as_f64());
            }
            // Pipelined: the cluster and the build start together.
            _ => {
                assert!(cluster["start_seconds"].as_f64().unwrap() < 1.0);
                assert!(build["start_seconds"].as_f64().unwrap() < 1.0);
            }
        }
        let suite = task(&report, "test datastorage-e2e");
        assert!(suite["end_seconds"].as_f64() > suite["start_seconds"].as_f64());
    }
    let engine = testing::engine(test).await.unwrap();
    assert!(
        infra_core::cluster::find(&engine, "datastorage-e2e")
            .await
            .unwrap()
            .is_none(),
        "the cluster is deleted at the end by default"
    );

    // Keep it, then reuse it: every build and load is cached.
    let first = cli.run(&[
        "e2e",
        "datastorage",
        "--cluster",
        "sim",
        "--keep-cluster",
        "--json",
    ]);
    assert!(first.status.success());
    let status = cli.ok(&["status"]);
    assert!(
        status.contains("datastorage-e2e (sim, 2 nodes, answering)") && status.contains("ok in"),
        "{status}"
    );
    // A run that may not use it fails, and leaves the kept cluster alone.
    let refused = cli.run(&["e2e", "datastorage", "--cluster", "sim"]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("already exists"));
    assert!(
        infra_core::cluster::find(&engine, "datastorage-e2e")
            .await
            .unwrap()
            .is_some(),
        "a run never deletes a cluster it did not create"
    );
    // A deleted kubeconfig does not stop a reuse: it is written again.
    std::fs::remove_file(cli.home.path().join(".kube/datastorage-e2e-config")).unwrap();
    let again = cli.run(&[
        "e2e",
        "datastorage",
        "--cluster",
        "sim",
        "--reuse-cluster",
        "--json",
    ]);
    let report = report(&String::from_utf8_lossy(&again.stdout));
    assert!(again.status.success(), "{report}");
    for kind in ["build", "cluster", "load"] {
        for t in report["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|t| t["kind"] == kind)
        {
            assert_eq!(
                t["cached"], true,
                "{t} should be cached on a reused cluster"
            );
        }
    }
    let sim = cli.run(&["migrate", "datastorage"]);
    assert!(!sim.status.success());
    assert!(
        String::from_utf8_lossy(&sim.stderr).contains("is simulated and runs no PostgreSQL"),
        "{}",
        String::from_utf8_lossy(&sim.stderr)
    );
    assert!(cli.ok(&["down", "datastorage"]).contains("deleted"));
    let gone = cli.run(&["migrate", "datastorage"]);
    assert!(
        String::from_utf8_lossy(&gone.stderr).contains("no cluster datastorage-e2e: keep an"),
        "{}",
        String::from_utf8_lossy(&gone.stderr)
    );
}

#[tokio::test]
async fn e2e_all_runs_every_service_two_at_a_time_and_sums_them_up_in_one_table() {
    let test = "e2e_all_runs_every_service_two_at_a_time_and_sums_them_up_in_one_table";
    if !prerequisites(test, false).await {
        return;
    }
    // Every service's cluster name is taken, DataStorage's among them.
    let _one_at_a_time = DATASTORAGE_CLUSTER.lock().await;
    let cli = Cli::new();
    let output = cli.run(&[
        "e2e",
        "all",
        "--cluster",
        "sim",
        "--parallel",
        "2",
        "--json",
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(output.status.success(), "{stderr}");
    let all = report(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(all["ok"], true);
    let services: Vec<&str> = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["service"].as_str().unwrap())
        .collect();
    assert_eq!(
        services,
        ["datastorage", "gateway", "notification", "authwebhook"]
    );
    // The table: a header and one ok line per service, with its suite's result.
    let table: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.starts_with("service "))
        .take(5)
        .collect();
    assert_eq!(table.len(), 5, "{stderr}");
    for (line, service) in table[1..].iter().zip(&services) {
        assert!(line.starts_with(service), "{line}");
        assert!(line.contains(" ok "), "{line}");
        assert!(line.contains(" passed, 0 failed"), "{line}");
    }
    // DataStorage's image is one image for all four: built at most once.
    let built = all["runs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| task(r, "build kubernaut/datastorage"))
        .filter(|t| t["cached"] == false)
        .count();
    assert!(built <= 1, "{all}");
    let engine = testing::engine(test).await.unwrap();
    for cluster in [
        "datastorage-e2e",
        "gateway-e2e",
        "notification-e2e",
        "authwebhook-e2e",
    ] {
        assert!(
            infra_core::cluster::find(&engine, cluster)
                .await
                .unwrap()
                .is_none(),
            "{cluster} is deleted at the end"
        );
    }
}

/// A copy of the example's migrations and a DataStorage Dockerfile of our own
/// (no pre-build), for runs whose build must behave in a particular way.
fn repo_with_dockerfile(dockerfile: &str) -> tempfile::TempDir {
    let repo = tempfile::tempdir().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernaut-lite");
    std::fs::create_dir_all(repo.path().join("migrations")).unwrap();
    for entry in std::fs::read_dir(example.join("migrations")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(
            &path,
            repo.path()
                .join("migrations")
                .join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    std::fs::create_dir_all(repo.path().join("docker")).unwrap();
    std::fs::copy("/bin/busybox", repo.path().join("busybox")).unwrap();
    std::fs::write(
        repo.path().join("docker/data-storage.Dockerfile"),
        dockerfile,
    )
    .unwrap();
    repo
}

fn node_containers_of(containers: &[bollard::models::ContainerSummary], cluster: &str) -> usize {
    containers
        .iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get("io.x-k8s.kind.cluster"))
                .is_some_and(|c| c == cluster)
        })
        .count()
}

async fn all_containers(engine: &infra_core::Engine) -> Vec<bollard::models::ContainerSummary> {
    engine
        .docker()
        .list_containers(Some(
            bollard::query_parameters::ListContainersOptionsBuilder::default()
                .all(true)
                .build(),
        ))
        .await
        .unwrap()
}

#[tokio::test]
async fn a_failing_build_fails_the_run_naming_the_step_keeps_diagnostics_and_removes_the_cluster() {
    let test =
        "a_failing_build_fails_the_run_naming_the_step_keeps_diagnostics_and_removes_the_cluster";
    if !prerequisites(test, false).await {
        return;
    }
    let _one_at_a_time = DATASTORAGE_CLUSTER.lock().await;
    let repo = repo_with_dockerfile(
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo undefined: auditStore; exit 2\"]\n",
    );
    let cli = Cli::new();
    // Standard: the cluster exists before the build fails, so there is
    // something to diagnose and to remove.
    let output = cli.run(&[
        "e2e",
        "datastorage",
        "--cluster",
        "sim",
        "--pattern",
        "standard",
        "--repo-root",
        repo.path().to_str().unwrap(),
        "--json",
    ]);
    assert!(!output.status.success());
    let report = report(&String::from_utf8_lossy(&output.stdout));
    assert_eq!(report["ok"], false);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("failed: build kubernaut/datastorage"),
        "{stderr}"
    );
    assert!(
        stderr.contains("RUN") && stderr.contains("undefined: auditStore"),
        "{stderr}"
    );
    let run_dir = stderr
        .lines()
        .find_map(|l| l.strip_prefix("run folder: "))
        .map(PathBuf::from)
        .expect("the run folder is printed");
    let error = std::fs::read_to_string(run_dir.join("error.txt")).unwrap();
    assert!(error.starts_with("build kubernaut/datastorage:"), "{error}");
    let server_log = run_dir.join("diagnostics/nodes/sim-kube-apiserver.log");
    assert!(
        std::fs::metadata(&server_log).is_ok_and(|m| m.len() > 0),
        "the failed run keeps its cluster's logs: {}",
        server_log.display()
    );
    assert!(run_dir.join("report.json").exists());

    let engine = testing::engine(test).await.unwrap();
    assert_eq!(
        node_containers_of(&all_containers(&engine).await, "datastorage-e2e"),
        0
    );
}

#[test]
fn plan_shows_the_graph_under_a_pattern_and_what_would_be_built() {
    let cli = Cli::new();
    let standard = cli.ok(&["plan", "datastorage", "--pattern", "standard"]);
    let line = standard
        .lines()
        .find(|l| l.contains("build kubernaut/datastorage"))
        .expect("the build is planned");
    assert!(
        line.contains("after: create cluster datastorage-e2e"),
        "{standard}"
    );
    assert!(
        standard.contains("would build localhost/kubernaut/datastorage:datastorage-")
            || standard.contains("cached: localhost/kubernaut/datastorage:datastorage-")
            || standard.contains("no engine answers"),
        "{standard}"
    );
    let pipelined = cli.ok(&["plan", "datastorage"]);
    let line = pipelined
        .lines()
        .find(|l| l.contains("build kubernaut/datastorage"))
        .unwrap();
    assert!(
        line.contains("after: -"),
        "pipelined builds wait for nothing: {pipelined}"
    );
    let bad = cli.run(&["plan", "datastorage", "--pattern", "fastest"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("standard, hybrid or pipelined"));
}

/// What an interrupted `e2e` run left: its exit status, its stderr, how long
/// it took to stop after the signal, and its run folder.
struct Interrupted {
    status: std::process::ExitStatus,
    stderr: String,
    stopped_after: Duration,
    run_dir: Option<PathBuf>,
}

/// Runs `xtask args` in its own process group, waits for a stderr line
/// containing `marker`, waits `after`, signals the whole group (as a
/// terminal's Ctrl-C, `timeout` or a closed terminal would: cargo and the
/// suite get it too) and waits for the run to stop.
fn interrupt(
    cli: &Cli,
    args: &[&str],
    marker: &str,
    after: Duration,
    signal: nix::sys::signal::Signal,
) -> Interrupted {
    let mut child = cli
        .command(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = String::new();
    let deadline = Instant::now() + Duration::from_secs(180);
    while !seen.contains(marker) {
        let Ok(line) = lines_rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        else {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("never saw {marker:?}: {seen}");
        };
        seen.push_str(&line);
        seen.push('\n');
    }
    std::thread::sleep(after);
    nix::sys::signal::killpg(nix::unistd::Pid::from_raw(child.id() as i32), signal).unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "did not stop within 90s of {signal}: {seen}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let stopped_after = started.elapsed();
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(2)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    eprintln!(
        "{seen}\nstopped {:.1}s after {signal}",
        stopped_after.as_secs_f64()
    );
    let run_dir = seen
        .lines()
        .find_map(|l| l.strip_prefix("run folder: "))
        .map(PathBuf::from);
    Interrupted {
        status,
        stderr: seen,
        stopped_after,
        run_dir,
    }
}

/// Asserts that nothing of the `datastorage-e2e` sim cluster is left: node
/// containers, the supervisor and control-plane processes, the kubeconfig
/// and the state folder under `cli`'s HOME.
async fn assert_nothing_left(cli: &Cli, engine: &infra_core::Engine) {
    let containers = all_containers(engine).await;
    assert_eq!(
        node_containers_of(&containers, "datastorage-e2e"),
        0,
        "node containers left behind"
    );
    let home = cli.home.path().to_string_lossy().to_string();
    // Give a supervisor that is still stopping its control plane its 5s.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
            .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
            .filter(|c| {
                c.contains(&home)
                    && (c.contains("sim-serve")
                        || c.contains("kube-apiserver")
                        || c.contains("etcd"))
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "processes left behind: {left:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        !cli.home
            .path()
            .join(".kube/datastorage-e2e-config")
            .exists(),
        "kubeconfig left behind"
    );
    assert!(
        !cli.home
            .path()
            .join("state/kind-e2e/sim/datastorage-e2e")
            .exists(),
        "sim state left behind"
    );
}

fn report_of(interrupted: &Interrupted) -> serde_json::Value {
    let dir = interrupted
        .run_dir
        .as_ref()
        .expect("the run folder is printed");
    serde_json::from_slice(&std::fs::read(dir.join("report.json")).unwrap()).unwrap()
}

#[tokio::test]
async fn sigterm_and_sighup_tear_down_like_ctrl_c_and_an_interrupted_run_is_never_ok() {
    let test = "sigterm_and_sighup_tear_down_like_ctrl_c_and_an_interrupted_run_is_never_ok";
    if !prerequisites(test, false).await {
        return;
    }
    let engine = testing::engine(test).await.unwrap();
    let _one_at_a_time = DATASTORAGE_CLUSTER.lock().await;
    let args = ["e2e", "datastorage", "--cluster", "sim"];
    use nix::sys::signal::Signal;
    // SIGTERM (what `timeout` and CI runners send) once the cluster is up,
    // while images load and the stack deploys.
    let cli = Cli::new();
    let run = interrupt(
        &cli,
        &args,
        "done   create cluster datastorage-e2e",
        Duration::ZERO,
        Signal::SIGTERM,
    );
    assert!(!run.status.success(), "an interrupted run fails");
    assert!(run.stderr.contains("SIGTERM: cancelling"), "{}", run.stderr);
    let report = report_of(&run);
    assert_eq!(report["ok"], false);
    assert_eq!(report["interrupted"], true);
    assert_nothing_left(&cli, &engine).await;
    assert!(run.stopped_after < Duration::from_secs(60));

    // SIGHUP (a closed terminal) while the suite runs: the suite may well
    // pass, the run still is not ok.
    let cli = Cli::new();
    let run = interrupt(
        &cli,
        &args,
        "start  test datastorage-e2e",
        Duration::ZERO,
        Signal::SIGHUP,
    );
    assert!(
        !run.status.success(),
        "an interrupted run fails: {}",
        run.stderr
    );
    let report = report_of(&run);
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["interrupted"], true);
    assert_nothing_left(&cli, &engine).await;
}

#[tokio::test]
async fn ctrl_c_during_a_build_cancels_it_and_leaves_no_containers() {
    let test = "ctrl_c_during_a_build_cancels_it_and_leaves_no_containers";
    if !prerequisites(test, false).await {
        return;
    }
    let _one_at_a_time = DATASTORAGE_CLUSTER.lock().await;
    // A repository whose DataStorage build takes a minute.
    let repo = repo_with_dockerfile(
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sleep\", \"60\"]\n",
    );
    let cli = Cli::new();
    // Let the slow RUN step start, then interrupt like a terminal would.
    let run = interrupt(
        &cli,
        &[
            "e2e",
            "datastorage",
            "--cluster",
            "sim",
            "--repo-root",
            repo.path().to_str().unwrap(),
        ],
        "start  build kubernaut/datastorage",
        Duration::from_secs(3),
        nix::sys::signal::Signal::SIGINT,
    );
    assert!(
        !run.status.success(),
        "a cancelled run fails: {}",
        run.stderr
    );
    assert!(run.stderr.contains("SIGINT: cancelling"), "{}", run.stderr);
    assert_eq!(report_of(&run)["interrupted"], true);

    let engine = testing::engine(test).await.unwrap();
    assert_nothing_left(&cli, &engine).await;
    let containers = all_containers(&engine).await;
    for container in containers {
        let command = container.command.clone().unwrap_or_default();
        assert!(
            !command.contains("sleep 60"),
            "build container left behind: {container:?}"
        );
    }
}

#[tokio::test]
async fn a_second_run_of_the_same_service_refuses_at_once_naming_the_first() {
    let test = "a_second_run_of_the_same_service_refuses_at_once_naming_the_first";
    if !prerequisites(test, false).await {
        return;
    }
    let engine = testing::engine(test).await.unwrap();
    let _one_at_a_time = DATASTORAGE_CLUSTER.lock().await;
    let cli = Cli::new();
    let args = ["e2e", "datastorage", "--cluster", "sim"];
    let mut first = cli
        .command(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = first.stderr.take().unwrap();
    let (lines_tx, lines_rx) = std::sync::mpsc::channel::<String>();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    let mut seen = String::new();
    while !seen.contains("start  create cluster datastorage-e2e") {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|_| panic!("the first run never started: {seen}"));
        seen.push_str(&line);
        seen.push('\n');
    }
    let started = Instant::now();
    let second = cli.run(&args);
    let refused_in = started.elapsed();
    let stderr = String::from_utf8_lossy(&second.stderr);
    assert!(!second.status.success());
    assert!(
        stderr.contains("another run is using cluster datastorage-e2e")
            && stderr.contains(&format!("pid {}", first.id()))
            && stderr.contains("--wait"),
        "{stderr}"
    );
    assert!(
        refused_in < Duration::from_secs(10),
        "refused at once, not after {refused_in:?}"
    );
    // The first run is unharmed.
    let status = first.wait().unwrap();
    while let Ok(line) = lines_rx.recv_timeout(Duration::from_secs(1)) {
        seen.push_str(&line);
        seen.push('\n');
    }
    assert!(status.success(), "the first run still passes: {seen}");
    assert_nothing_left(&cli, &engine).await;
}

#[test]
fn bad_counts_and_a_benchmark_too_big_for_the_disk_fail_at_once_saying_what_to_give() {
    let cli = Cli::new();
    let negative = cli.run(&["compare", "datastorage", "--runs", "-1"]);
    let stderr = String::from_utf8_lossy(&negative.stderr);
    assert!(!negative.status.success());
    assert!(
        stderr.contains("-1 is not a count") && !stderr.contains("-- -1"),
        "{stderr}"
    );
    let zero = cli.run(&["bench", "image", "--runs", "0"]);
    assert!(String::from_utf8_lossy(&zero.stderr).contains("at least 1"));
    // Refused before a byte is written (it used to fill the disk first).
    let started = Instant::now();
    let huge = cli.run(&["bench", "image", "--size-mb", "99999999"]);
    let stderr = String::from_utf8_lossy(&huge.stderr);
    assert!(!huge.status.success());
    assert!(
        stderr.contains("needs about") && stderr.contains("choose a smaller --size-mb"),
        "{stderr}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn a_reused_cluster_that_lacks_the_services_workers_or_host_ports_is_refused_naming_them() {
    let test =
        "a_reused_cluster_that_lacks_the_services_workers_or_host_ports_is_refused_naming_them";
    if !prerequisites(test, false).await {
        return;
    }
    let engine = testing::engine(test).await.unwrap();
    let _one_at_a_time = DATASTORAGE_CLUSTER.lock().await;
    let cli = Cli::new();
    let reuse = ["e2e", "datastorage", "--cluster", "sim", "--reuse-cluster"];
    // Made by hand without the worker DataStorage's setup asks for.
    cli.ok(&[
        "cluster",
        "create",
        "datastorage-e2e",
        "--provider",
        "sim",
        "--workers",
        "0",
    ]);
    let refused = cli.run(&reuse);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("cannot be reused: it has 0 worker(s) and this run needs 1")
            && stderr.contains("cargo xtask cluster delete datastorage-e2e"),
        "{stderr}"
    );
    cli.ok(&["cluster", "delete", "datastorage-e2e"]);
    // The worker, but none of its host ports.
    cli.ok(&[
        "cluster",
        "create",
        "datastorage-e2e",
        "--provider",
        "sim",
        "--workers",
        "1",
    ]);
    let refused = cli.run(&reuse);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(
        stderr.contains("does not publish the host port(s) this run needs: 28090 (NodePort 30081)"),
        "{stderr}"
    );
    cli.ok(&["cluster", "delete", "datastorage-e2e"]);
    assert_nothing_left(&cli, &engine).await;
}
