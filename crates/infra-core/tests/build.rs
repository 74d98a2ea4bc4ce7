//! `build_image_for_kind` against the real engines `.ci/run` starts: Docker by
//! default, and Podman through its Docker-compatible socket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]
use std::path::Path;
use std::time::Duration;

use infra_core::testing::{self, unique_name};
use infra_core::{E2eImageConfig, Engine, ImageError, build_image_for_kind};

/// Podman tests in this file take turns: the cancelled-build test removes the
/// working containers created while it ran, which would include a concurrent
/// build's.
static PODMAN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A FROM-scratch context with a static busybox, so no registry is needed.
fn busybox_context(test: &str) -> Option<tempfile::TempDir> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        testing::skip_or_fail(
            test,
            "needs a static busybox at /bin/busybox (apt-get install busybox-static)",
        );
        return None;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(busybox, dir.path().join("busybox")).unwrap();
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nCOPY app/ /app/\n\
         ENTRYPOINT [\"/bin/busybox\", \"sh\"]\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("app")).unwrap();
    std::fs::write(dir.path().join("app/config.txt"), "v1\n").unwrap();
    std::fs::write(dir.path().join("app/scratch.log"), "noise\n").unwrap();
    std::fs::write(dir.path().join(".dockerignore"), "app/*.log\n").unwrap();
    Some(dir)
}

fn config(service: &str, dir: &Path) -> E2eImageConfig {
    E2eImageConfig::new(service, "Dockerfile")
        .image("e2e-test/busybox")
        .context(dir)
        .log_dir(testing::log_dir())
}

async fn cold_build_cache_hit_and_rebuild(engine: Engine, test: &str) {
    let Some(dir) = busybox_context(test) else {
        return;
    };
    let service = unique_name("svc");
    let config = config(&service, dir.path());

    let cold = build_image_for_kind(&engine, &config).await.unwrap();
    assert!(!cold.cached);
    assert!(
        cold.reference
            .starts_with(&format!("localhost/e2e-test/busybox:{service}-")),
        "{}",
        cold.reference
    );
    assert_eq!(
        cold.reference.rsplit('-').next().unwrap(),
        &cold.input_digest[..12]
    );
    assert!(cold.image_id.starts_with("sha256:"), "{}", cold.image_id);
    let inspect = engine
        .docker()
        .inspect_image(&cold.reference)
        .await
        .unwrap();
    let labels = inspect.config.unwrap().labels.unwrap();
    assert_eq!(labels["io.kind-e2e.image.service"], service);
    assert_eq!(labels["io.kind-e2e.image.input-digest"], cold.input_digest);
    assert!(
        !labels.contains_key("io.kind-e2e.service"),
        "run labels stay off images: every container made from one would inherit them"
    );
    assert!(
        std::fs::read_to_string(&cold.log)
            .unwrap()
            .contains("COPY busybox")
    );

    let warm = build_image_for_kind(&engine, &config).await.unwrap();
    assert!(warm.cached, "same inputs must hit the cache");
    assert_eq!(warm.reference, cold.reference);
    assert_eq!(warm.image_id, cold.image_id);
    assert!(
        warm.seconds < 1.0,
        "a cache hit took {:.2}s; it must not build",
        warm.seconds
    );

    std::fs::write(dir.path().join("app/scratch.log"), "ignored change\n").unwrap();
    let ignored = build_image_for_kind(&engine, &config).await.unwrap();
    assert!(
        ignored.cached,
        "changing an ignored file must not change the tag"
    );
    assert_eq!(ignored.reference, cold.reference);

    std::fs::write(dir.path().join("app/config.txt"), "v2\n").unwrap();
    let changed = build_image_for_kind(&engine, &config).await.unwrap();
    assert!(!changed.cached, "changing a sent file must rebuild");
    assert_ne!(changed.reference, cold.reference);
    assert_ne!(changed.image_id, cold.image_id);

    testing::remove_image(&engine, &cold.reference).await;
    testing::remove_image(&engine, &changed.reference).await;
}

#[tokio::test]
async fn docker_builds_then_hits_the_cache_then_rebuilds_on_change() {
    let test = "docker_builds_then_hits_the_cache_then_rebuilds_on_change";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    cold_build_cache_hit_and_rebuild(engine, test).await;
}

#[tokio::test]
async fn podman_builds_the_same_way_through_its_compatible_socket() {
    let test = "podman_builds_the_same_way_through_its_compatible_socket";
    let Some(engine) = testing::podman(test).await else {
        return;
    };
    let _turn = PODMAN.lock().await;
    assert_eq!(engine.kind(), infra_core::EngineKind::Podman);
    cold_build_cache_hit_and_rebuild(engine, test).await;
}

async fn failing_build_names_service_dockerfile_step_and_output(engine: Engine, test: &str) {
    let Some(dir) = busybox_context(test) else {
        return;
    };
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\n\
         RUN [\"/bin/busybox\", \"sh\", \"-c\", \"echo about to fail; exit 3\"]\n",
    )
    .unwrap();
    let service = unique_name("broken");
    let err = build_image_for_kind(&engine, &config(&service, dir.path()))
        .await
        .unwrap_err();
    let message = infra_core::error_chain(&err);
    match &err {
        ImageError::BuildFailed {
            step, tail, log, ..
        } => {
            assert!(step.contains("RUN"), "step: {step}");
            assert!(tail.contains("about to fail"), "tail: {tail}");
            assert!(log.exists());
        }
        other => panic!("expected BuildFailed, got {other:?}"),
    }
    assert!(message.contains(&service), "{message}");
    assert!(message.contains("Dockerfile"), "{message}");
}

#[tokio::test]
async fn a_failing_build_names_the_service_the_dockerfile_the_step_and_the_output() {
    let test = "a_failing_build_names_the_service_the_dockerfile_the_step_and_the_output";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    failing_build_names_service_dockerfile_step_and_output(engine, test).await;
}

#[tokio::test]
async fn a_failing_podman_build_is_reported_the_same_way() {
    let test = "a_failing_podman_build_is_reported_the_same_way";
    let Some(engine) = testing::podman(test).await else {
        return;
    };
    let _turn = PODMAN.lock().await;
    failing_build_names_service_dockerfile_step_and_output(engine, test).await;
}

#[tokio::test]
async fn a_missing_dockerfile_is_reported_before_anything_is_sent() {
    let test = "a_missing_dockerfile_is_reported_before_anything_is_sent";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let Some(dir) = busybox_context(test) else {
        return;
    };
    let config = E2eImageConfig::new("web", "docker/web.Dockerfile")
        .context(dir.path())
        .log_dir(testing::log_dir());
    let err = build_image_for_kind(&engine, &config).await.unwrap_err();
    let message = infra_core::error_chain(&err);
    assert!(
        message.contains("web") && message.contains("docker/web.Dockerfile"),
        "{message}"
    );
    assert!(matches!(err, ImageError::Context { .. }), "{err:?}");
}

#[tokio::test]
async fn a_failing_pre_build_command_stops_the_build_with_its_output() {
    let test = "a_failing_pre_build_command_stops_the_build_with_its_output";
    let Some(engine) = testing::engine(test).await else {
        return;
    };
    let Some(dir) = busybox_context(test) else {
        return;
    };
    let config = config("prebuild", dir.path()).pre_build("echo compiling; echo boom >&2; exit 7");
    let err = build_image_for_kind(&engine, &config).await.unwrap_err();
    let message = infra_core::error_chain(&err);
    assert!(
        message.contains("prebuild") && message.contains("boom"),
        "{message}"
    );

    // A pre-build that writes into the context is part of the inputs.
    let config = config_with_artifact(dir.path(), "one");
    let first = build_image_for_kind(&engine, &config).await.unwrap();
    let again = build_image_for_kind(&engine, &config).await.unwrap();
    assert!(again.cached);
    let changed = build_image_for_kind(&engine, &config_with_artifact(dir.path(), "two"))
        .await
        .unwrap();
    assert_ne!(changed.reference, first.reference);
    testing::remove_image(&engine, &first.reference).await;
    testing::remove_image(&engine, &changed.reference).await;
}

fn config_with_artifact(dir: &Path, content: &str) -> E2eImageConfig {
    config("prebuild-ok", dir).pre_build(format!("echo {content} > app/artifact.txt"))
}

#[tokio::test]
async fn a_dead_docker_host_is_reported_in_seconds_naming_it() {
    let started = std::time::Instant::now();
    let err = Engine::connect_from(Some("unix:///nonexistent/e2e-test.sock"))
        .await
        .unwrap_err();
    let message = infra_core::error_chain(&err);
    assert!(
        message.contains("DOCKER_HOST=unix:///nonexistent/e2e-test.sock"),
        "{message}"
    );
    assert!(message.contains("podman system service"), "{message}");

    // A TCP listener that accepts but never answers: the ping timeout bounds it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let err = Engine::connect_from(Some(&format!("tcp://127.0.0.1:{port}")))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no answer within"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    drop(listener);
}

/// Buildah working containers on the Podman service (its "external" ones).
async fn working_containers(engine: &Engine) -> Vec<String> {
    let (_, listed) = engine
        .libpod(
            "GET",
            "/v4.0.0/libpod/containers/json?all=true&external=true",
        )
        .await
        .unwrap();
    listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| c["Command"] == serde_json::json!(["buildah"]))
        .filter_map(|c| c["Id"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test]
async fn a_build_cancelled_on_podman_leaves_no_working_container() {
    let test = "a_build_cancelled_on_podman_leaves_no_working_container";
    let Some(engine) = testing::podman(test).await else {
        return;
    };
    let _turn = PODMAN.lock().await;
    let Some(dir) = busybox_context(test) else {
        return;
    };
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"sleep\", \"30\"]\n",
    )
    .unwrap();
    let before = working_containers(&engine).await;
    let config = config(&unique_name("cancelled"), dir.path());
    let building = {
        let engine = engine.clone();
        tokio::spawn(async move { build_image_for_kind(&engine, &config).await })
    };
    // Until the RUN step is under way.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        working_containers(&engine).await.len() > before.len(),
        "the build has not started: the test proves nothing"
    );
    building.abort();
    let _ = building.await;
    infra_core::image::finish_cancelled_builds().await;
    let after = working_containers(&engine).await;
    let left: Vec<&String> = after.iter().filter(|c| !before.contains(c)).collect();
    assert!(left.is_empty(), "working containers left behind: {left:?}");
}
