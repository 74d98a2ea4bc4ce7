//! Deploying on a simulated cluster: real node containers, kube-rs over
//! HTTPS to the pinned toolchain's real control plane, the node agent in
//! place of kubelets. Checks ordering, the fail-fast path, a port in use and
//! a frozen API server. (A service's whole shared stack is tested in its own crate.)

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::time::{Duration, Instant};

use infra_core::DeployError;
use infra_core::cluster::spec::ClusterSpec;
use infra_core::cluster::{self, ClusterOptions, Provider, SimServer};
use infra_core::deploy::Applier;
use infra_core::deploy::wait::WaitError;
use infra_core::stack::{Component, deployment, deployment_ready, namespace};
use infra_core::testing::{self, SimCluster, unique_name};

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
    // A hard-coded image that nobody loaded (the bug that once left an
    // environment at 0 of 84 ready).
    let timeout = Duration::from_secs(120);
    let image = "localhost/example/web:hardcoded";
    let component = Component {
        name: "web".into(),
        objects: vec![deployment(
            ns,
            "web",
            serde_json::json!({"containers": [
                {"name": "web", "image": image, "imagePullPolicy": "Never"}
            ]}),
        )],
        ready: vec![deployment_ready(ns, "web", timeout)],
    };
    component.deploy(&applier).await.unwrap();

    let started = Instant::now();
    let err = component.wait(&client).await.unwrap_err();
    let waited = started.elapsed();
    let message = infra_core::error_chain(&err);
    assert!(
        matches!(&err, DeployError::Wait(WaitError::Failed { reason, .. }) if reason == "ErrImageNeverPull"),
        "{message}"
    );
    assert!(message.contains(image), "{message}");
    assert!(
        message.contains("events of"),
        "the pod's events belong in the error: {message}"
    );
    assert!(
        waited < Duration::from_secs(15),
        "failing took {waited:?}: it must not wait for the {}s timeout",
        timeout.as_secs()
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
        .with_template_labels([("io.kind-e2e.service".to_string(), "shop".to_string())].into());
    // The custom resource comes first, its namespace next, its CRD last: in
    // this order a naive apply fails twice.
    let yaml = r#"
apiVersion: example.com/v1alpha1
kind: Widget
metadata:
  name: w-1
  namespace: shop
spec:
  size: 3
---
apiVersion: v1
kind: Namespace
metadata:
  name: shop
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.example.com
spec:
  group: example.com
  scope: Namespaced
  names:
    plural: widgets
    singular: widget
    kind: Widget
  versions:
  - name: v1alpha1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        x-kubernetes-preserve-unknown-fields: true
"#;
    let applied = applier.apply_yaml("shop.yaml", yaml).await.unwrap();
    let kinds: Vec<&str> = applied.iter().map(|a| a.kind.as_str()).collect();
    assert_eq!(kinds, ["CustomResourceDefinition", "Namespace", "Widget"]);

    let resource = kube::discovery::ApiResource::from_gvk(&kube::core::GroupVersionKind::gvk(
        "example.com",
        "v1alpha1",
        "Widget",
    ));
    let api: kube::Api<kube::api::DynamicObject> =
        kube::Api::namespaced_with(client.clone(), "shop", &resource);
    let rr = api.get("w-1").await.unwrap();
    assert_eq!(
        rr.metadata.labels.unwrap()["io.kind-e2e.run-id"],
        "run-1",
        "everything applied carries the run's labels"
    );

    // Workloads' pod templates carry the template labels, so their pods do.
    applier
        .apply_yaml(
            "app.yaml",
            "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: once\n  namespace: shop\n\
             spec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n\
             \x20     - name: c\n        image: busybox:1\n",
        )
        .await
        .unwrap();
    let jobs: kube::Api<k8s_openapi::api::batch::v1::Job> =
        kube::Api::namespaced(client.clone(), "shop");
    let job = jobs.get("once").await.unwrap();
    let template_labels = job.spec.unwrap().template.metadata.unwrap().labels.unwrap();
    assert_eq!(template_labels["io.kind-e2e.service"], "shop");

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

#[tokio::test]
async fn a_node_removed_during_a_wait_ends_it_within_seconds_naming_the_node() {
    use infra_core::plan::setup::{Setup, SetupContext};
    use infra_core::plan::{Outcome, Pattern, Silent, TaskError, TaskKind, execute};
    let test = "a_node_removed_during_a_wait_ends_it_within_seconds_naming_the_node";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let Some(bin) = testing::toolchain_bin(test).await else {
        return;
    };
    let dirs = tempfile::tempdir().unwrap();
    let options = ClusterOptions {
        toolchain_bin: Some(bin),
        kubeconfig_dir: dirs.path().join("kube"),
        state_dir: dirs.path().join("state"),
        sim_server: SimServer::InProcess,
        ..ClusterOptions::default()
    };
    let name = unique_name("gone");
    let worker = format!("{name}-worker");
    let mut setup = Setup::new();
    let cluster = setup.cluster(ClusterSpec::new(&name).workers(1));
    // A pod that waits for a ConfigMap nobody makes: not a failure, so the
    // wait would sit out its whole timeout.
    let ns = "gone";
    let stuck = Component {
        name: "stuck".into(),
        objects: vec![
            namespace(ns).objects[0].clone(),
            deployment(
                ns,
                "stuck",
                serde_json::json!({
                    "containers": [{"name": "stuck", "image": "localhost/example/stuck:1",
                                    "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}]}],
                    "volumes": [{"name": "cfg", "configMap": {"name": "never-made"}}],
                }),
            ),
        ],
        ready: vec![deployment_ready(ns, "stuck", Duration::from_secs(120))],
    };
    let stage = setup.component(stuck, &[cluster]);
    let remover = worker.clone();
    setup.task(
        "remove a node",
        TaskKind::Deploy,
        &[stage.deploy],
        move |ctx: std::sync::Arc<SetupContext>| async move {
            tokio::time::sleep(Duration::from_secs(2)).await;
            ctx.engine
                .docker()
                .remove_container(
                    &remover,
                    Some(
                        bollard::query_parameters::RemoveContainerOptionsBuilder::default()
                            .force(true)
                            .build(),
                    ),
                )
                .await
                .map_err(|e| TaskError::msg(e.to_string()))?;
            Ok(Outcome::done())
        },
    );
    let context = std::sync::Arc::new(SetupContext::new(
        engine.clone(),
        "test",
        "run-gone",
        dirs.path().join("run"),
        Provider::Sim,
        options.clone(),
    ));
    let started = Instant::now();
    let execution = execute(
        setup.into_plan(),
        Pattern::Pipelined,
        context.clone(),
        &Silent,
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    let waited = started.elapsed();
    let (task, message) = execution.failure.clone().expect("the wait fails");
    assert_eq!(task, "wait stuck");
    assert!(
        message.contains(&format!("node {worker} of cluster {name} is gone")),
        "{message}"
    );
    assert!(
        waited < Duration::from_secs(30),
        "took {waited:?}, not the 120s timeout"
    );
    let mut context = std::sync::Arc::try_unwrap(context).ok().unwrap();
    if let Some(cluster) = context.take_cluster() {
        cluster.release().await;
    }
    cluster::delete(&engine, &name, &options).await.unwrap();
}
