//! `run::remove_leftovers` (behind `cargo xtask down`): it removes what a
//! service's runs left behind and nothing else, not even containers made from
//! that service's images.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::collections::HashMap;

use bollard::models::ContainerCreateBody;
use bollard::query_parameters::CreateContainerOptionsBuilder;
use infra_core::Engine;
use infra_core::plan::setup::{LABEL_RUN_ID, LABEL_SERVICE};
use infra_core::testing::{self, unique_name};

async fn create(engine: &Engine, name: &str, image: &str, labels: HashMap<String, String>) {
    engine
        .docker()
        .create_container(
            Some(CreateContainerOptionsBuilder::default().name(name).build()),
            ContainerCreateBody {
                image: Some(image.to_string()),
                cmd: Some(vec!["/bin/busybox".into(), "true".into()]),
                labels: Some(labels),
                ..Default::default()
            },
        )
        .await
        .unwrap();
}

async fn exists(engine: &Engine, name: &str) -> bool {
    engine
        .docker()
        .inspect_container(
            name,
            None::<bollard::query_parameters::InspectContainerOptions>,
        )
        .await
        .is_ok()
}

#[tokio::test]
async fn down_removes_run_leftovers_of_its_service_only() {
    let test = "down_removes_run_leftovers_of_its_service_only";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let service = unique_name("leftover");
    let Some(image) = testing::busybox_image(&engine, test, &service, "leftover").await else {
        return;
    };

    let leftover = unique_name("leftover-run");
    let users = unique_name("leftover-user");
    let other = unique_name("leftover-other");
    let run_labels = |svc: &str| {
        HashMap::from([
            (LABEL_RUN_ID.to_string(), "run-1".to_string()),
            (LABEL_SERVICE.to_string(), svc.to_string()),
        ])
    };
    create(&engine, &leftover, &image.reference, run_labels(&service)).await;
    // Someone's own container from the service's image: it inherits the
    // image's labels, which must not make it a leftover.
    create(&engine, &users, &image.reference, HashMap::new()).await;
    create(
        &engine,
        &other,
        &image.reference,
        run_labels("another-service"),
    )
    .await;
    // A node of a cluster that still exists is the cluster's, not a leftover.
    let node = unique_name("leftover-node");
    let mut node_labels = run_labels(&service);
    node_labels.insert("io.x-k8s.kind.cluster".into(), unique_name("live"));
    create(&engine, &node, &image.reference, node_labels).await;

    let removed = infra_core::run::remove_leftovers(&engine, &service)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    assert!(!exists(&engine, &leftover).await);
    assert!(
        exists(&engine, &users).await,
        "a user's container is not a leftover"
    );
    assert!(
        exists(&engine, &other).await,
        "another service's leftovers stay"
    );
    assert!(exists(&engine, &node).await, "a live cluster's node stays");

    for name in [&users, &other, &node] {
        let options = bollard::query_parameters::RemoveContainerOptionsBuilder::default()
            .force(true)
            .build();
        engine
            .docker()
            .remove_container(name, Some(options))
            .await
            .unwrap();
    }
    testing::remove_image(&engine, &image.reference).await;
}
