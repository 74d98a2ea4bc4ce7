//! `load_image_to_kind` into real containerd node containers labelled like a
//! Kind cluster's, on the engines `.ci/run` starts.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]
use infra_core::load::nodes::image_ids_on_node;
use infra_core::testing::{self, TestCluster};
use infra_core::{Engine, LoadError, LoadMethod, load_image_to_kind, load_image_to_kind_with};

async fn busybox_image(engine: &Engine, test: &str) -> Option<infra_core::BuiltImage> {
    testing::busybox_image(engine, test, "loadtest", "load").await
}

async fn assert_on_every_node(engine: &Engine, cluster: &TestCluster, reference: &str, id: &str) {
    for node in &cluster.nodes {
        let ids = image_ids_on_node(engine, &node.name, reference)
            .await
            .unwrap();
        assert!(
            ids.iter().any(|i| i == id),
            "{reference} missing on {}: {ids:?}",
            node.name
        );
    }
}

async fn stream_skip_and_archive(engine: Engine, test: &str) {
    let Some(image) = busybox_image(&engine, test).await else {
        return;
    };
    let cluster = TestCluster::start(&engine, "load", 1).await;
    assert_eq!(cluster.nodes.len(), 2);

    let streamed = load_image_to_kind(&engine, &image.reference, &cluster.name)
        .await
        .unwrap();
    assert_eq!(streamed.method, LoadMethod::Stream);
    assert_eq!(streamed.temp_bytes, 0, "streaming writes no file");
    assert!(
        streamed.exported_bytes > 1_000_000,
        "{}",
        streamed.exported_bytes
    );
    let names: Vec<&str> = streamed.nodes.iter().map(|n| n.name.as_str()).collect();
    assert_eq!(
        names,
        [
            format!("{}-control-plane", cluster.name),
            format!("{}-worker", cluster.name)
        ]
    );
    assert!(streamed.nodes.iter().all(|n| !n.skipped));
    assert_on_every_node(&engine, &cluster, &image.reference, &image.image_id).await;

    let again = load_image_to_kind(&engine, &image.reference, &cluster.name)
        .await
        .unwrap();
    assert!(again.nodes.iter().all(|n| n.skipped), "{:?}", again.nodes);
    assert_eq!(
        again.exported_bytes, 0,
        "nothing is exported when every node has it"
    );

    let archived = load_image_to_kind_with(
        &engine,
        &image.reference,
        &cluster.name,
        LoadMethod::Archive,
    )
    .await
    .unwrap();
    assert_eq!(archived.method, LoadMethod::Archive);
    assert!(
        archived.temp_bytes > 1_000_000,
        "the archive method writes a tar"
    );
    assert!(archived.nodes.iter().all(|n| !n.skipped));
    assert_on_every_node(&engine, &cluster, &image.reference, &image.image_id).await;
    testing::remove_image(&engine, &image.reference).await;
}

#[tokio::test]
async fn docker_streams_into_two_nodes_skips_when_present_and_archive_still_works() {
    let test = "docker_streams_into_two_nodes_skips_when_present_and_archive_still_works";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    stream_skip_and_archive(engine, test).await;
}

#[tokio::test]
async fn podman_nodes_are_loaded_the_same_way() {
    let test = "podman_nodes_are_loaded_the_same_way";
    let Some(engine) = testing::podman(test).await else {
        return;
    };
    stream_skip_and_archive(engine, test).await;
}

#[tokio::test]
async fn loading_into_a_cluster_without_nodes_names_the_cluster_and_engine() {
    let test = "loading_into_a_cluster_without_nodes_names_the_cluster_and_engine";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let Some(image) = busybox_image(&engine, test).await else {
        return;
    };
    let err = load_image_to_kind(&engine, &image.reference, "no-such-cluster")
        .await
        .unwrap_err();
    assert!(matches!(err, LoadError::NoNodes { .. }), "{err:?}");
    let message = infra_core::error_chain(&err);
    assert!(
        message.contains("no-such-cluster") && message.contains("docker"),
        "{message}"
    );
    testing::remove_image(&engine, &image.reference).await;
}

#[tokio::test]
async fn loading_an_image_the_engine_lacks_says_to_build_it() {
    let test = "loading_an_image_the_engine_lacks_says_to_build_it";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let err = load_image_to_kind(
        &engine,
        "localhost/e2e-test/never-built:x-000000000000",
        "whatever",
    )
    .await
    .unwrap_err();
    assert!(matches!(err, LoadError::ImageMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("build it first"));
}

#[tokio::test]
async fn a_failing_import_reports_the_node_and_ctrs_error() {
    let test = "a_failing_import_reports_the_node_and_ctrs_error";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let Some(image) = busybox_image(&engine, test).await else {
        return;
    };
    // A node whose containerd names a snapshotter it does not have: the
    // loader reads it from `containerd config dump`, and ctr refuses it.
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        "version = 2\n[plugins.\"io.containerd.grpc.v1.cri\".containerd]\n  snapshotter = \"nosuch\"\n",
    )
    .unwrap();
    let path = config.path().to_path_buf();
    let cluster = TestCluster::start_with(&engine, "badimport", 0, |specs| {
        specs[0]
            .mounts
            .push((path, "/etc/containerd/config.toml".into()));
    })
    .await;
    let err = load_image_to_kind(&engine, &image.reference, &cluster.name)
        .await
        .unwrap_err();
    let message = infra_core::error_chain(&err);
    assert!(matches!(err, LoadError::Import { .. }), "{message}");
    // Commands the loader needs to succeed say which failed, and how.
    let failed = engine
        .exec_ok(&cluster.nodes[0].name, &["ctr", "no-such-command"])
        .await
        .unwrap_err();
    assert!(
        matches!(&failed, infra_core::EngineError::Command { command, .. } if command == "ctr no-such-command"),
        "{failed:?}"
    );
    assert!(
        message.contains(&cluster.nodes[0].name),
        "names the node: {message}"
    );
    assert!(
        message.contains("nosuch"),
        "carries ctr's stderr: {message}"
    );
    testing::remove_image(&engine, &image.reference).await;
}
