//! Live tests against real kind clusters, made from the pinned toolchain's
//! kind and the offline node image (`cargo xtask toolchain build`, `cargo
//! xtask node-image build`; `.ci/run` builds both). Without them each test
//! prints why it skips; under `CI=true` it fails.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::time::{Duration, Instant};

use infra_core::cluster::node_image::OfflineKind;
use infra_core::cluster::spec::ClusterSpec;
use infra_core::cluster::{self, ClusterOptions, Existing, Provider};
use infra_core::deploy::Applier;
use infra_core::deploy::wait::{Target, Workload, wait_all};
use infra_core::testing::{self, unique_name};
use infra_core::{E2eImageConfig, LoadMethod, build_image_for_kind, load_image_to_kind_with};
use kube::api::DynamicObject;

/// One kind cluster at a time: two at once on a small machine is a test of
/// its CPU, not of the code.
static ONE_CLUSTER: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A host port nobody listens on now.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn options(offline: &OfflineKind, dir: &std::path::Path) -> ClusterOptions {
    offline.cluster_options(ClusterOptions {
        kubeconfig_dir: dir.join("kube"),
        state_dir: dir.join("state"),
        log_dir: testing::log_dir(),
        kind_wait: Duration::from_secs(180),
        ..ClusterOptions::default()
    })
}

#[tokio::test]
async fn kind_cluster_lifecycle_with_reuse_kubeconfig_and_logs() {
    let Some(offline) = testing::offline_kind("kind lifecycle").await else {
        return;
    };
    let _one = ONE_CLUSTER.lock().await;
    let engine = offline.engine.clone();
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(&offline, dir.path());
    let spec = ClusterSpec::new(unique_name("kind")).port(30080, free_port());
    let result = lifecycle(&engine, &spec, &mut options, dir.path())
        .catch_unwind_boxed()
        .await;
    // Whatever happened, the cluster goes.
    let _ = cluster::delete(&engine, &spec.name, &options).await;
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
}

async fn lifecycle(
    engine: &infra_core::Engine,
    spec: &ClusterSpec,
    options: &mut ClusterOptions,
    dir: &std::path::Path,
) {
    let created = cluster::create(engine, Provider::Kind, spec, options)
        .await
        .unwrap();
    assert_eq!(created.nodes.len(), 2);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&created.kubeconfig)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let client = created.client().await.unwrap();
    assert!(client.apiserver_version().await.is_ok());

    // An existing cluster is refused unless reuse is asked for.
    assert!(matches!(
        cluster::create(engine, Provider::Kind, spec, options).await,
        Err(cluster::ClusterError::Exists { .. })
    ));
    options.existing = Existing::Reuse;
    let reused = cluster::create(engine, Provider::Kind, spec, options)
        .await
        .unwrap();
    assert!(reused.reused);

    cluster::export_logs(engine, &reused, &dir.join("logs"), options)
        .await
        .unwrap();
    assert!(std::fs::read_dir(dir.join("logs")).unwrap().count() > 0);
    assert!(cluster::delete(engine, &spec.name, options).await.unwrap());
    assert!(!cluster::delete(engine, &spec.name, options).await.unwrap());
}

/// Images streamed in run; one never loaded fails at once with
/// `ErrImageNeverPull`, and a crashing container with `CrashLoopBackOff` and
/// its last log lines — not after the readiness timeout.
#[tokio::test]
async fn images_stream_into_a_real_kind_cluster_and_broken_pods_fail_fast() {
    let Some(offline) = testing::offline_kind("kind load").await else {
        return;
    };
    let _one = ONE_CLUSTER.lock().await;
    let engine = offline.engine.clone();
    let dir = tempfile::tempdir().unwrap();
    let options = options(&offline, dir.path());
    let spec = ClusterSpec::new(unique_name("kindload"));
    let created = cluster::create(&engine, Provider::Kind, &spec, &options)
        .await
        .unwrap();
    let result = std::panic::AssertUnwindSafe(load_and_fail_fast(&engine, &created))
        .catch_unwind_boxed()
        .await;
    let deleted = cluster::delete(&engine, &spec.name, &options).await;
    // The test's own failure first; then a failed delete.
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    deleted.unwrap();
}

trait CatchUnwind: std::future::Future + Sized {
    fn catch_unwind_boxed(
        self,
    ) -> futures::future::CatchUnwind<std::panic::AssertUnwindSafe<Self>> {
        futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(self))
    }
}
impl<F: std::future::Future> CatchUnwind for F {}

fn deployment(name: &str, image: &str, command: &[&str]) -> DynamicObject {
    // Never ready: a container that runs for a moment before it crashes is
    // not taken for an available one.
    let probe =
        serde_json::json!({"exec": {"command": ["/bin/busybox", "false"]}, "periodSeconds": 1});
    serde_json::from_value(serde_json::json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": name, "image": image, "imagePullPolicy": "Never",
                    "command": command,
                    "readinessProbe": if name == "runs" { serde_json::Value::Null } else { probe },
                }]}
            }
        }
    }))
    .unwrap()
}

/// Waits for Deployment `name` (timeout 120 s), which must fail within
/// `within`; returns the error's text.
async fn fails_within(client: &kube::Client, name: &str, within: Duration) -> String {
    let started = Instant::now();
    let target = Target::new(
        Workload::Deployment,
        "default",
        name,
        Duration::from_secs(120),
    );
    let err = wait_all(client, &[target]).await.unwrap_err();
    let elapsed = started.elapsed();
    assert!(elapsed < within, "{name} failed only after {elapsed:?}");
    infra_core::error_chain(&err)
}

async fn load_and_fail_fast(engine: &infra_core::Engine, created: &cluster::Cluster) {
    let Some(busybox) = testing::busybox_image(engine, "kind load", "kindload", "busybox").await
    else {
        return;
    };
    let report = load_image_to_kind_with(
        engine,
        &busybox.reference,
        &created.name,
        LoadMethod::Stream,
    )
    .await
    .unwrap();
    assert_eq!(report.nodes.len(), 2);
    assert_eq!(report.temp_bytes, 0);
    let client = created.client().await.unwrap();
    let applier = Applier::new(client.clone(), "kind-e2e-test");

    // Loaded: it runs and becomes available.
    applier
        .apply_all(vec![deployment(
            "runs",
            &busybox.reference,
            &["/bin/busybox", "sleep", "3600"],
        )])
        .await
        .unwrap();
    let timeout = Duration::from_secs(120);
    wait_all(
        &client,
        &[Target::new(
            Workload::Deployment,
            "default",
            "runs",
            timeout,
        )],
    )
    .await
    .unwrap();

    // Never loaded: ErrImageNeverPull, long before the timeout.
    applier
        .apply_all(vec![deployment(
            "never-loaded",
            "localhost/kind-e2e-test/never-loaded:1",
            &["/x"],
        )])
        .await
        .unwrap();
    let text = fails_within(&client, "never-loaded", Duration::from_secs(60)).await;
    assert!(text.contains("ErrImageNeverPull"), "{text}");

    // Crashing: CrashLoopBackOff, with what it printed.
    applier
        .apply_all(vec![deployment(
            "crashes",
            &busybox.reference,
            &["/bin/busybox", "sh", "-c", "echo crash-marker-42; exit 3"],
        )])
        .await
        .unwrap();
    let text = fails_within(&client, "crashes", Duration::from_secs(90)).await;
    assert!(text.contains("CrashLoopBackOff"), "{text}");
    assert!(text.contains("crash-marker-42"), "{text}");

    // The archive method (the original's) still lands the image.
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("hello.txt"), "hi").unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /\n",
    )
    .unwrap();
    let image = build_image_for_kind(
        engine,
        &E2eImageConfig::new("kindload", "Dockerfile")
            .context(context.path())
            .log_dir(testing::log_dir()),
    )
    .await
    .unwrap();
    for method in [LoadMethod::Stream, LoadMethod::Archive] {
        let report = load_image_to_kind_with(engine, &image.reference, &created.name, method)
            .await
            .unwrap();
        assert_eq!(report.nodes.len(), 2);
    }
}
