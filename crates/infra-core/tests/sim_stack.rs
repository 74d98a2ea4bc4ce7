//! The shared stack on a simulated cluster: real node containers, the real
//! loader, kube-rs over HTTPS to the pinned toolchain's real control plane,
//! the node agent in place of kubelets. Checks ordering, readiness and the
//! fail-fast path.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use infra_core::cluster::spec::ClusterSpec;
use infra_core::cluster::{self, ClusterOptions, Provider, SimServer};
use infra_core::deploy::Applier;
use infra_core::deploy::wait::WaitError;
use infra_core::stack::datastorage::DataStorageConfig;
use infra_core::stack::migrations::{self, load_migrations};
use infra_core::stack::namespace;
use infra_core::stack::postgres::PostgresConfig;
use infra_core::stack::redis::RedisConfig;
use infra_core::testing::{self, unique_name};
use infra_core::{DeployError, Engine, load_image_to_kind};

struct SimCluster {
    engine: Engine,
    cluster: Option<cluster::Cluster>,
    options: ClusterOptions,
    _dirs: tempfile::TempDir,
}

impl SimCluster {
    async fn start(engine: &Engine, bin: PathBuf, prefix: &str) -> SimCluster {
        let dirs = tempfile::tempdir().unwrap();
        let options = ClusterOptions {
            toolchain_bin: Some(bin),
            kubeconfig_dir: dirs.path().join("kube"),
            state_dir: dirs.path().join("state"),
            log_dir: testing::log_dir(),
            sim_server: SimServer::InProcess,
            ..ClusterOptions::default()
        };
        let started = Instant::now();
        let spec = ClusterSpec::new(unique_name(prefix));
        let created = cluster::create(engine, Provider::Sim, &spec, &options)
            .await
            .unwrap_or_else(|e| panic!("{}", infra_core::error_chain(&e)));
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

    fn cluster(&self) -> &cluster::Cluster {
        self.cluster.as_ref().unwrap()
    }

    async fn delete(mut self) {
        let cluster = self.cluster.take().unwrap();
        let name = cluster.name.clone();
        let started = Instant::now();
        cluster::delete_cluster(&self.engine, cluster, &self.options)
            .await
            .unwrap();
        eprintln!(
            "sim cluster {name} deleted in {:.2}s",
            started.elapsed().as_secs_f64()
        );
        assert!(cluster::find(&self.engine, &name).await.unwrap().is_none());
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
                        let _ =
                            infra_core::cluster::node::remove_node_containers(&engine, &name).await;
                    }
                })
            })
            .join();
        }
    }
}

/// A small image standing in for DataStorage: the sim only checks it is on the nodes.
async fn stand_in_image(engine: &Engine, test: &str) -> Option<infra_core::BuiltImage> {
    testing::busybox_image(engine, test, "stack", "datastorage").await
}

fn migrations_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("001_audit.sql"),
        "-- +goose Up\nCREATE TABLE audit_events (id int);\n-- +goose Down\nDROP TABLE audit_events;\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("002_index.sql"),
        "-- +goose Up\nCREATE INDEX CONCURRENTLY i ON audit_events (id);\n",
    )
    .unwrap();
    dir
}

#[tokio::test]
async fn the_shared_stack_deploys_in_order_and_becomes_ready_on_sim() {
    let test = "the_shared_stack_deploys_in_order_and_becomes_ready_on_sim";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let Some(bin) = testing::toolchain_bin(test).await else {
        return;
    };
    let Some(image) = stand_in_image(&engine, test).await else {
        return;
    };
    let sim = SimCluster::start(&engine, bin, "stack").await;
    let cluster = sim.cluster();
    load_image_to_kind(&engine, &image.reference, &cluster.name)
        .await
        .unwrap();
    let client = cluster.client().await.unwrap();
    let applier = Applier::new(client.clone(), "stack-test");

    let started = Instant::now();
    let ns = "stack";
    // Nothing runs on the sim, but every image must be on the nodes (as on
    // kind without a registry): the loaded stand-in plays PostgreSQL and
    // Redis here.
    let mut pg = PostgresConfig::new(ns).node_port(30432);
    pg.image = image.reference.clone();
    let mut redis = RedisConfig::new(ns);
    redis.image = image.reference.clone();
    let migrations = load_migrations(migrations_dir().path()).unwrap();
    let ds = DataStorageConfig::new(&image.reference, &pg, &redis).node_port(30081);
    for component in [
        namespace(ns),
        pg.component(),
        redis.component(),
        migrations::component(&pg, &migrations, Duration::from_secs(30)),
        ds.component(),
    ] {
        component.deploy(&applier).await.unwrap();
        component
            .wait(&client)
            .await
            .unwrap_or_else(|e| panic!("{}: {}", component.name, infra_core::error_chain(&e)));
    }
    eprintln!(
        "shared stack deployed and ready on sim in {:.2}s",
        started.elapsed().as_secs_f64()
    );

    // Applying again is a no-op that still succeeds (server-side apply).
    ds.component().deploy(&applier).await.unwrap();
    sim.delete().await;
    testing::remove_image(&engine, &image.reference).await;
}

#[tokio::test]
async fn a_deployment_whose_image_was_not_loaded_fails_fast_with_err_image_never_pull() {
    let test = "a_deployment_whose_image_was_not_loaded_fails_fast_with_err_image_never_pull";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let Some(bin) = testing::toolchain_bin(test).await else {
        return;
    };
    let sim = SimCluster::start(&engine, bin, "neverpull").await;
    let client = sim.cluster().client().await.unwrap();
    let applier = Applier::new(client.clone(), "stack-test");
    let ns = "neverpull";
    namespace(ns).deploy(&applier).await.unwrap();
    let pg = PostgresConfig::new(ns);
    let redis = RedisConfig::new(ns);
    // The original's bug: a hard-coded image that nobody loaded.
    let mut ds = DataStorageConfig::new("localhost/kubernaut/datastorage:hardcoded", &pg, &redis);
    ds.timeout = Duration::from_secs(120);
    let component = ds.component();
    component.deploy(&applier).await.unwrap();

    let started = Instant::now();
    let err = component.wait(&client).await.unwrap_err();
    let waited = started.elapsed();
    let message = infra_core::error_chain(&err);
    assert!(
        matches!(&err, DeployError::Wait(WaitError::Failed { reason, .. }) if reason == "ErrImageNeverPull"),
        "{message}"
    );
    assert!(
        message.contains("localhost/kubernaut/datastorage:hardcoded"),
        "{message}"
    );
    assert!(
        message.contains("events of"),
        "the pod's events belong in the error: {message}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "failing took {waited:?}: it must not wait for the {}s timeout",
        ds.timeout.as_secs()
    );
    sim.delete().await;
}

#[tokio::test]
async fn manifests_are_applied_crds_and_namespaces_first_whatever_their_order() {
    let test = "manifests_are_applied_crds_and_namespaces_first_whatever_their_order";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let Some(bin) = testing::toolchain_bin(test).await else {
        return;
    };
    let sim = SimCluster::start(&engine, bin, "order").await;
    let client = sim.cluster().client().await.unwrap();
    let applier = Applier::new(client.clone(), "order-test")
        .with_labels([("io.kind-e2e.run-id".to_string(), "run-1".to_string())].into())
        .with_template_labels([("io.kind-e2e.service".to_string(), "gateway".to_string())].into());
    // The custom resource comes first, its namespace next, its CRD last: in
    // this order a naive apply fails twice.
    let yaml = r#"
apiVersion: kubernaut.ai/v1alpha1
kind: RemediationRequest
metadata:
  name: rr-1
  namespace: gateway
spec:
  signalName: HighMemory
---
apiVersion: v1
kind: Namespace
metadata:
  name: gateway
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: remediationrequests.kubernaut.ai
spec:
  group: kubernaut.ai
  scope: Namespaced
  names:
    plural: remediationrequests
    singular: remediationrequest
    kind: RemediationRequest
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;
    let applied = applier.apply_yaml("gateway.yaml", yaml).await.unwrap();
    let kinds: Vec<&str> = applied.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(
        kinds,
        [
            "CustomResourceDefinition",
            "Namespace",
            "RemediationRequest"
        ]
    );

    let resource = kube::discovery::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "kubernaut.ai",
        "v1alpha1",
        "RemediationRequest",
    ));
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(client.clone(), "gateway", &resource);
    let rr = api.get("rr-1").await.unwrap();
    assert_eq!(
        rr.metadata.labels.unwrap()["io.kind-e2e.run-id"],
        "run-1",
        "everything applied carries the run's labels"
    );

    // Workloads' pod templates carry the template labels, so their pods do.
    applier
        .apply_yaml(
            "app.yaml",
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: once\n  namespace: gateway\n\
             spec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n\
             \x20     - name: c\n        image: busybox:1\n",
        )
        .await
        .unwrap();
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> =
        kube::Api::namespaced(client.clone(), "gateway");
    let job = jobs.get("once").await.unwrap();
    let template_labels = job.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!(template_labels["io.kind-e2e.service"], "gateway");

    // A kind the cluster does not serve is named, with the fix.
    let err = applier
        .apply_yaml(
            "x.yaml",
            "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n",
        )
        .await
        .unwrap_err();
    let message = infra_core::error_chain(&err);
    assert!(
        message.contains("Widget") && message.contains("CustomResourceDefinition"),
        "{message}"
    );
    sim.delete().await;
}

#[tokio::test]
async fn a_host_port_in_use_is_named_before_anything_is_created() {
    let test = "a_host_port_in_use_is_named_before_anything_is_created";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let Some(bin) = testing::toolchain_bin(test).await else {
        return;
    };
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let dirs = tempfile::tempdir().unwrap();
    let options = ClusterOptions {
        toolchain_bin: Some(bin),
        kubeconfig_dir: dirs.path().join("kube"),
        state_dir: dirs.path().join("state"),
        log_dir: testing::log_dir(),
        sim_server: SimServer::InProcess,
        ..ClusterOptions::default()
    };
    let spec = ClusterSpec::new(unique_name("port")).port(30080, port);
    let started = Instant::now();
    let error = cluster::create(&engine, Provider::Sim, &spec, &options)
        .await
        .unwrap_err();
    let message = infra_core::error_chain(&error);
    assert!(
        message.contains(&format!("host port {port}")) && message.contains("another process"),
        "{message}"
    );
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(cluster::find(&engine, &spec.name).await.unwrap().is_none());
    assert!(!options.kubeconfig_path(&spec.name).exists());
}

#[tokio::test]
async fn a_frozen_api_server_ends_an_apply_with_an_error_instead_of_a_hang() {
    let test = "a_frozen_api_server_ends_an_apply_with_an_error_instead_of_a_hang";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let Some(bin) = testing::toolchain_bin(test).await else {
        return;
    };
    let sim = SimCluster::start(&engine, bin, "frozen").await;
    let client = sim.cluster().client().await.unwrap();
    let applier = Applier::new(client, "frozen-test").request_timeout(Duration::from_secs(3));
    // The cluster's kube-apiserver: the one whose certificates are in its state folder.
    let state = sim.options.state_dir.to_string_lossy().to_string();
    let apiserver = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let cmdline = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            (cmdline.contains("kube-apiserver") && cmdline.contains(&state)).then_some(pid)
        })
        .next()
        .expect("the cluster's kube-apiserver runs");
    let pid = nix::unistd::Pid::from_raw(apiserver);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let started = Instant::now();
    let result = applier
        .apply_yaml(
            "test",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: frozen\n",
        )
        .await;
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let error = result.expect_err("a frozen API server cannot apply");
    let message = infra_core::error_chain(&error);
    assert!(message.contains("did not answer within 3s"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(10));
    sim.delete().await;
}
