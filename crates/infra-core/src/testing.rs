//! Helpers for tests that need a real engine (enable the `testing` feature in
//! dev-dependencies).
//!
//! A test that needs an engine calls [`engine`] (or [`podman`]) and returns
//! early on `None`: on a machine without one it prints why it skipped; under
//! `CI=true` it fails instead, because CI installs and starts both engines.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "test helpers: a failure is the calling test's failure"
)]

use std::collections::HashMap;
use std::path::PathBuf;

use crate::cluster::node::{
    NodeSpec, ensure_node_image, node_specs, remove_node_containers, start_node_containers,
};
use crate::engine::Engine;
use crate::load::nodes::KindNode;

/// Podman's rootful API socket, where `.ci/run` starts it.
pub const PODMAN_SOCKET: &str = "unix:///run/podman/podman.sock";

/// Label put on everything a test creates, so leftovers can be found.
pub const TEST_LABEL: &str = "io.kind-e2e.test";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

/// Skips (prints why, returns `None`) or, under `CI=true`, fails.
pub fn skip_or_fail(test: &str, why: &str) {
    if in_ci() {
        panic!("{test}: {why} (CI=true, so this is a failure, not a skip)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// The default engine (DOCKER_HOST, else the first default socket).
pub async fn engine(test: &str) -> Option<Engine> {
    match Engine::connect().await {
        Ok(engine) => Some(engine),
        Err(e) => {
            skip_or_fail(test, &format!("needs a container engine: {e}"));
            None
        }
    }
}

/// The pinned toolchain's `bin/`, for sim clusters (their control plane
/// runs its etcd and Kubernetes binaries). Skips saying what to build, or
/// fails under `CI=true`.
pub async fn toolchain_bin(test: &str) -> Option<PathBuf> {
    match crate::toolchain::find(
        &crate::toolchain::default_source(),
        &crate::toolchain::default_cache(),
    )
    .await
    {
        Ok(toolchain) => Some(toolchain.dir.join("bin")),
        Err(why) => {
            skip_or_fail(
                test,
                &format!("a sim cluster runs the pinned control plane: {why}"),
            );
            None
        }
    }
}

/// Kind without a registry, for live kind tests: the pinned toolchain and
/// this checkout's node image (built by `cargo xtask toolchain build` and
/// `cargo xtask node-image build`; `.ci/run` builds both), and the engine
/// holding it. Skips saying what to build, or fails under `CI=true`.
pub async fn offline_kind(test: &str) -> Option<crate::cluster::node_image::OfflineKind> {
    match crate::cluster::node_image::find_offline(
        &crate::toolchain::default_source(),
        &crate::toolchain::default_cache(),
        &crate::engine::default_endpoints(),
    )
    .await
    {
        Ok(found) => Some(found),
        Err(why) => {
            skip_or_fail(test, &format!("needs a real kind cluster: {why}"));
            None
        }
    }
}

/// Podman's Docker-compatible API at [`PODMAN_SOCKET`] (or `E2E_PODMAN_HOST`).
pub async fn podman(test: &str) -> Option<Engine> {
    let endpoint = std::env::var("E2E_PODMAN_HOST").unwrap_or_else(|_| PODMAN_SOCKET.into());
    match Engine::connect_to(&endpoint).await {
        Ok(engine) => Some(engine),
        Err(e) => {
            skip_or_fail(
                test,
                &format!("needs Podman's API service at {endpoint}: {e}"),
            );
            None
        }
    }
}

/// A name unique to this process and call, for clusters, images and files.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Builds a small unique image for `test`: a static busybox plus a marker
/// file (so its image id is its own), `FROM scratch`, named
/// `localhost/e2e-test/<image>:<service>-<digest12>`. Skips (or fails under
/// `CI=true`) without `/bin/busybox`.
pub async fn busybox_image(
    engine: &Engine,
    test: &str,
    service: &str,
    image: &str,
) -> Option<crate::BuiltImage> {
    let busybox = std::path::Path::new("/bin/busybox");
    if !busybox.exists() {
        skip_or_fail(test, "needs /bin/busybox (apt-get install busybox-static)");
        return None;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::copy(busybox, dir.path().join("busybox")).expect("copying busybox");
    std::fs::write(dir.path().join("marker"), unique_name(test)).expect("writing the marker");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY marker /marker\n",
    )
    .expect("writing the Dockerfile");
    let config = crate::E2eImageConfig::new(service, "Dockerfile")
        .image(format!("e2e-test/{image}"))
        .context(dir.path())
        .log_dir(log_dir());
    Some(
        crate::build_image_for_kind(engine, &config)
            .await
            .unwrap_or_else(|e| panic!("building {image} for {test}: {}", crate::error_chain(&e))),
    )
}

/// Where tests write build logs.
pub fn log_dir() -> PathBuf {
    std::env::temp_dir().join("kind-e2e-test-logs")
}

/// Removes an image a test built (a failure to remove is only printed).
pub async fn remove_image(engine: &Engine, reference: &str) {
    if let Err(e) = engine.remove_image(reference).await {
        eprintln!("could not remove test image {reference}: {e}");
    }
}

/// Containerd node containers labelled like a Kind cluster's, removed when
/// dropped (also when the test panics).
pub struct TestCluster {
    pub name: String,
    pub nodes: Vec<KindNode>,
    endpoint: String,
}

impl TestCluster {
    /// A control plane and `workers` workers.
    pub async fn start(engine: &Engine, prefix: &str, workers: usize) -> TestCluster {
        Self::start_with(engine, prefix, workers, |_| {}).await
    }

    /// Like [`TestCluster::start`], with the node specs adjusted first (extra
    /// mounts, ports).
    pub async fn start_with(
        engine: &Engine,
        prefix: &str,
        workers: usize,
        adjust: impl FnOnce(&mut Vec<NodeSpec>),
    ) -> TestCluster {
        let name = unique_name(prefix);
        let mut specs = node_specs(&name, workers);
        adjust(&mut specs);
        let image = ensure_node_image(engine, &log_dir())
            .await
            .unwrap_or_else(|e| panic!("building the node image: {e:?}"));
        let labels = HashMap::from([(TEST_LABEL.to_string(), "true".to_string())]);
        let nodes = start_node_containers(engine, &image.reference, &name, &specs, &labels)
            .await
            .unwrap_or_else(|e| panic!("starting node containers for {name}: {e:?}"));
        TestCluster {
            name,
            nodes,
            endpoint: engine.endpoint().to_string(),
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        // Drop cannot await; remove from a thread with its own runtime, which
        // also works when the test's runtime is shutting down.
        let name = self.name.clone();
        let endpoint = self.endpoint.clone();
        let _ = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime for cleanup");
            runtime.block_on(async {
                if let Ok(engine) = Engine::connect_to(&endpoint).await {
                    let _ = remove_node_containers(&engine, &name).await;
                }
            });
        })
        .join();
    }
}

/// A sim cluster for a test, in-process, with its kubeconfig and state in a
/// temp folder; its node containers are removed even if the test panics.
pub struct SimCluster {
    engine: Engine,
    cluster: Option<crate::cluster::Cluster>,
    pub options: crate::cluster::ClusterOptions,
    _dirs: tempfile::TempDir,
}

impl SimCluster {
    /// Creates `<prefix>-<unique>` on `engine` with the toolchain in `bin`.
    pub async fn start(engine: &Engine, bin: PathBuf, prefix: &str) -> SimCluster {
        let dirs = tempfile::tempdir().unwrap();
        let options = crate::cluster::ClusterOptions {
            toolchain_bin: Some(bin),
            kubeconfig_dir: dirs.path().join("kube"),
            state_dir: dirs.path().join("state"),
            log_dir: log_dir(),
            sim_server: crate::cluster::SimServer::InProcess,
            ..crate::cluster::ClusterOptions::default()
        };
        let started = std::time::Instant::now();
        let spec = crate::cluster::spec::ClusterSpec::new(unique_name(prefix));
        let created =
            crate::cluster::create(engine, crate::cluster::Provider::Sim, &spec, &options)
                .await
                .unwrap_or_else(|e| panic!("{}", crate::error_chain(&e)));
        eprintln!(
            "sim cluster {} created in {:.2}s",
            created.name,
            started.elapsed().as_secs_f64()
        );
        SimCluster {
            engine: engine.clone(),
            cluster: Some(created),
            options,
            _dirs: dirs,
        }
    }

    /// The cluster.
    pub fn cluster(&self) -> &crate::cluster::Cluster {
        self.cluster.as_ref().unwrap()
    }

    /// Deletes it, checking nothing is left.
    pub async fn delete(mut self) {
        let cluster = self.cluster.take().unwrap();
        let name = cluster.name.clone();
        let started = std::time::Instant::now();
        crate::cluster::delete_cluster(&self.engine, cluster, &self.options)
            .await
            .unwrap();
        eprintln!(
            "sim cluster {name} deleted in {:.2}s",
            started.elapsed().as_secs_f64()
        );
        assert!(
            crate::cluster::find(&self.engine, &name)
                .await
                .unwrap()
                .is_none()
        );
    }
}

impl Drop for SimCluster {
    fn drop(&mut self) {
        // A panicking test still removes its node containers.
        if let Some(cluster) = &self.cluster {
            let name = cluster.name.clone();
            let endpoint = self.engine.endpoint().to_string();
            let _ = std::thread::spawn(move || {
                tokio::runtime::Runtime::new().unwrap().block_on(async {
                    if let Ok(engine) = Engine::connect_to(&endpoint).await {
                        let _ = crate::cluster::node::remove_node_containers(&engine, &name).await;
                    }
                })
            })
            .join();
        }
    }
}
