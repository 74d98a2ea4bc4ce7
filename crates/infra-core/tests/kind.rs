//! Live tests against real kind clusters. kind cannot run on every machine (it
//! needs a registry for its node image and privileged containers), so these
//! are ignored by default; run them with `cargo test -p infra-core --test kind
//! -- --ignored` where kind works. `cargo xtask e2e <service>` exercises the
//! same paths end to end.

use std::time::Duration;

use infra_core::cluster::spec::ClusterSpec;
use infra_core::cluster::{self, ClusterOptions, Existing, Provider};
use infra_core::testing::{self, unique_name};
use infra_core::{E2eImageConfig, LoadMethod, build_image_for_kind, load_image_to_kind_with};

fn options(dir: &std::path::Path) -> ClusterOptions {
    ClusterOptions {
        kubeconfig_dir: dir.join("kube"),
        state_dir: dir.join("state"),
        log_dir: testing::log_dir(),
        kind_wait: Duration::from_secs(180),
        ..ClusterOptions::default()
    }
}

#[tokio::test]
#[ignore = "needs kind"]
async fn kind_cluster_lifecycle_with_reuse_kubeconfig_and_logs() {
    let engine = testing::engine("kind lifecycle").await.expect("an engine");
    let dir = tempfile::tempdir().unwrap();
    let mut options = options(dir.path());
    let spec = ClusterSpec::new(unique_name("kind")).port(30080, 18080);
    let created = cluster::create(&engine, Provider::Kind, &spec, &options)
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
        cluster::create(&engine, Provider::Kind, &spec, &options).await,
        Err(cluster::ClusterError::Exists { .. })
    ));
    options.existing = Existing::Reuse;
    let reused = cluster::create(&engine, Provider::Kind, &spec, &options)
        .await
        .unwrap();
    assert!(reused.reused);

    cluster::export_logs(&engine, &reused, &dir.path().join("logs"), &options)
        .await
        .unwrap();
    assert!(std::fs::read_dir(dir.path().join("logs")).unwrap().count() > 0);
    assert!(
        cluster::delete(&engine, &spec.name, &options)
            .await
            .unwrap()
    );
    assert!(
        !cluster::delete(&engine, &spec.name, &options)
            .await
            .unwrap()
    );
}

#[tokio::test]
#[ignore = "needs kind"]
async fn images_stream_into_a_real_kind_cluster() {
    let engine = testing::engine("kind load").await.expect("an engine");
    let dir = tempfile::tempdir().unwrap();
    let options = options(dir.path());
    let spec = ClusterSpec::new(unique_name("kindload"));
    cluster::create(&engine, Provider::Kind, &spec, &options)
        .await
        .unwrap();
    let context = tempfile::tempdir().unwrap();
    std::fs::write(context.path().join("hello.txt"), "hi").unwrap();
    std::fs::write(
        context.path().join("Dockerfile"),
        "FROM scratch\nCOPY hello.txt /\n",
    )
    .unwrap();
    let image = build_image_for_kind(
        &engine,
        &E2eImageConfig::new("kindload", "Dockerfile")
            .context(context.path())
            .log_dir(testing::log_dir()),
    )
    .await
    .unwrap();
    for method in [LoadMethod::Stream, LoadMethod::Archive] {
        let report = load_image_to_kind_with(&engine, &image.reference, &spec.name, method)
            .await
            .unwrap();
        assert_eq!(report.nodes.len(), 2);
    }
    cluster::delete(&engine, &spec.name, &options)
        .await
        .unwrap();
}
