//! DataStorage's E2E suite, run by `cargo xtask e2e datastorage` against the
//! environment it set up (described by the file `E2E_ENV_FILE` names).
//!
//! The first tests check the environment through the Kubernetes API and hold on
//! any cluster, simulated or real: the Deployment runs the image that was
//! loaded (the original once deployed a hard-coded name and went 0/84), the
//! migrations ran, the NodePorts are the ones Kind maps. The rest talk to the
//! running service and are skipped, saying why, on the simulated cluster.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use infra_core::suite::{client, env, request, workloads_run};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ListParams};

#[tokio::test]
async fn the_deployment_runs_the_image_that_was_loaded_and_never_pulls() {
    let env = env();
    let loaded = &env.images[datastorage_e2e::IMAGE];
    let deployments: Api<Deployment> = Api::namespaced(client(&env).await, &env.namespace);
    let deployment = deployments.get("datastorage").await.unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let container = pod
        .containers
        .iter()
        .find(|c| c.name == "datastorage")
        .expect("a datastorage container");
    assert_eq!(container.image.as_deref(), Some(loaded.as_str()));
    assert_eq!(container.image_pull_policy.as_deref(), Some("Never"));
    let status = deployment.status.unwrap();
    assert_eq!(status.available_replicas, Some(1), "{status:?}");
}

#[tokio::test]
async fn the_migrations_job_completed() {
    let env = env();
    let jobs: Api<Job> = Api::namespaced(client(&env).await, &env.namespace);
    let list = jobs
        .list(&ListParams::default().labels("app=migrations"))
        .await
        .unwrap();
    assert!(
        !list.items.is_empty(),
        "no migrations Job in {}",
        env.namespace
    );
    // On the sim the Job "completes" without its pod running: no SQL ran,
    // so its completion proves nothing. Say so rather than pass.
    if !workloads_run(&env, "the_migrations_job_completed (no SQL ran)") {
        return;
    }
    for job in list.items {
        let name = job.metadata.name.clone().unwrap_or_default();
        let complete = job
            .status
            .and_then(|s| s.conditions)
            .unwrap_or_default()
            .iter()
            .any(|c| c.type_ == "Complete" && c.status == "True");
        assert!(complete, "Job {name} is not complete");
    }
}

#[tokio::test]
async fn services_use_the_node_ports_kind_maps_to_the_host() {
    let env = env();
    let services: Api<Service> = Api::namespaced(client(&env).await, &env.namespace);
    let node_port = |service: Service, port: &str| {
        service
            .spec
            .unwrap()
            .ports
            .unwrap()
            .into_iter()
            .find(|p| p.name.as_deref() == Some(port))
            .and_then(|p| p.node_port)
    };
    let api = services.get("datastorage").await.unwrap();
    assert_eq!(
        node_port(api, "http"),
        Some(i32::from(datastorage_e2e::API_NODE_PORT))
    );
    let pg = services.get("postgresql").await.unwrap();
    assert_eq!(
        node_port(pg, "postgres"),
        Some(i32::from(datastorage_e2e::POSTGRES_NODE_PORT))
    );
}

#[tokio::test]
async fn readiness_reports_the_database_and_schema_ready() {
    let env = env();
    if !workloads_run(&env, "readiness_reports_the_database_and_schema_ready") {
        return;
    }
    let (status, body) = request(
        "GET",
        &format!("{}/health/ready", env.endpoints["datastorage"]),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn audit_events_written_are_read_back_by_correlation_id() {
    let env = env();
    if !workloads_run(&env, "audit_events_written_are_read_back_by_correlation_id") {
        return;
    }
    let base = &env.endpoints["datastorage"];
    let correlation = format!("e2e-{}", env.run_id);
    for outcome in ["success", "failure"] {
        let (status, body) = request(
            "POST",
            &format!("{base}/api/v1/audit/events"),
            Some(serde_json::json!({
                "event_type": "gateway.signal.received",
                "event_category": "gateway",
                "event_outcome": outcome,
                "correlation_id": correlation,
                "event_data": {"signal": "HighMemory"}
            })),
        )
        .await;
        assert_eq!(status, 201, "{body}");
        assert!(body["event_id"].is_string(), "{body}");
    }
    let (status, body) = request(
        "GET",
        &format!("{base}/api/v1/audit/events?correlation_id={correlation}"),
        None,
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let events = body["data"].as_array().expect("a data array");
    assert_eq!(events.len(), 2, "{body}");
    assert!(
        events
            .iter()
            .all(|e| e["correlation_id"] == correlation.as_str())
    );
}

#[tokio::test]
async fn an_event_without_its_correlation_id_is_refused_naming_the_field() {
    let env = env();
    if !workloads_run(
        &env,
        "an_event_without_its_correlation_id_is_refused_naming_the_field",
    ) {
        return;
    }
    let (status, body) = request(
        "POST",
        &format!("{}/api/v1/audit/events", env.endpoints["datastorage"]),
        Some(serde_json::json!({"event_type": "x"})),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.to_string().contains("correlation_id"), "{body}");
}

#[tokio::test]
async fn the_schema_is_migrated_and_every_version_recorded() {
    let env = env();
    if !workloads_run(&env, "the_schema_is_migrated_and_every_version_recorded") {
        return;
    }
    let (db, connection) =
        tokio_postgres::connect(&env.endpoints["postgresql"], tokio_postgres::NoTls)
            .await
            .unwrap();
    tokio::spawn(connection);
    let row = db
        .query_one("SELECT to_regclass('public.audit_events') IS NOT NULL", &[])
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "audit_events does not exist");
    let recorded: i64 = db
        .query_one("SELECT count(*) FROM e2e_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert!(recorded >= 1, "no migration recorded");
}
