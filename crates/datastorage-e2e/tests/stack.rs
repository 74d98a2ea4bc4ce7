//! DataStorage's shared stack (namespace, PostgreSQL, Redis, migrations,
//! DataStorage) on a simulated cluster: real node containers, the real
//! loader, the pinned toolchain's real control plane with the node agent.
//! It checks order and readiness in seconds; the live run is the kind test
//! in `xtask/tests/cli.rs`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::time::{Duration, Instant};

use datastorage_e2e::deployment::DataStorageConfig;
use infra_core::deploy::Applier;
use infra_core::stack::migrations::{self, load_migrations};
use infra_core::stack::namespace;
use infra_core::stack::redis::RedisConfig;
use infra_core::testing::{self, SimCluster};
use infra_core::{Engine, load_image_to_kind};

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
    let mut pg = datastorage_e2e::postgres_in(ns).node_port(30432);
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
