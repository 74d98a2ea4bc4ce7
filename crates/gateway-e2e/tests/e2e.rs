//! Gateway's E2E suite, run by `cargo xtask e2e gateway` against the
//! environment it set up (described by the file `E2E_ENV_FILE` names).
//!
//! The first tests check the environment through the Kubernetes API and hold
//! on any cluster: Gateway runs the image that was loaded, the
//! RemediationRequest CRD is established, its RBAC lets Gateway's
//! ServiceAccount create them. The rest send alerts to the running Gateway
//! and are skipped, saying why, on the simulated cluster.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::time::Duration;

use infra_core::suite::{client, endpoint, env, eventually, request, request_bytes, workloads_run};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};

fn remediation_requests(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kubernaut.ai", "v1alpha1", "RemediationRequest");
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk(&gvk))
}

/// An alert no other test, and no earlier run on a reused cluster, sends:
/// the fingerprint comes from the labels, which carry this run's id.
fn alert(name: &str) -> serde_json::Value {
    let run = env().run_id;
    serde_json::json!({
        "version": "4", "status": "firing",
        "alerts": [{
            "status": "firing",
            "labels": {"alertname": name, "run": run, "severity": "critical", "namespace": "prod", "pod": "api-7"},
            "annotations": {"summary": format!("{name} fired")},
            "startsAt": "2026-01-02T03:04:05Z"
        }]
    })
}

async fn send(
    env: &infra_core::run::SuiteEnv,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let url = format!("{}/api/v1/signals/prometheus", endpoint(env, "gateway"));
    request("POST", &url, Some(body)).await
}

#[tokio::test]
async fn the_deployment_runs_the_image_that_was_loaded_and_never_pulls() {
    let env = env();
    let loaded = &env.images[gateway_e2e::IMAGE];
    let deployments: Api<Deployment> = Api::namespaced(client(&env).await, &env.namespace);
    let pod = deployments
        .get("gateway")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let container = pod.containers.iter().find(|c| c.name == "gateway").unwrap();
    assert_eq!(container.image.as_deref(), Some(loaded.as_str()));
    assert_eq!(container.image_pull_policy.as_deref(), Some("Never"));
    assert_eq!(pod.service_account_name.as_deref(), Some("gateway"));
}

#[tokio::test]
async fn the_remediation_request_crd_is_established_and_gateway_may_create_them() {
    let env = env();
    let client = client(&env).await;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd = crds.get("remediationrequests.kubernaut.ai").await.unwrap();
    let established = crd
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True");
    assert!(established, "the CRD is not established");
    let reviews: Api<SubjectAccessReview> = Api::all(client);
    let review = SubjectAccessReview {
        spec: SubjectAccessReviewSpec {
            user: Some(format!("system:serviceaccount:{}:gateway", env.namespace)),
            resource_attributes: Some(ResourceAttributes {
                group: Some("kubernaut.ai".into()),
                resource: Some("remediationrequests".into()),
                verb: Some("create".into()),
                namespace: Some(env.namespace.clone()),
                ..ResourceAttributes::default()
            }),
            ..SubjectAccessReviewSpec::default()
        },
        ..SubjectAccessReview::default()
    };
    let answer = reviews
        .create(&PostParams::default(), &review)
        .await
        .unwrap();
    assert!(
        answer.status.is_some_and(|s| s.allowed),
        "Gateway's ServiceAccount may not create RemediationRequests"
    );
}

#[tokio::test]
async fn an_alert_creates_a_remediation_request_carrying_its_fingerprint() {
    let test = "an_alert_creates_a_remediation_request_carrying_its_fingerprint";
    let env = env();
    if !workloads_run(&env, test) {
        return;
    }
    let (status, answer) = send(&env, alert("E2eCreates")).await;
    assert_eq!(status, 201, "{answer}");
    let result = &answer["results"][0];
    assert_eq!(result["status"], "created", "{answer}");
    let name = result["remediationRequest"].as_str().unwrap();
    let fingerprint = result["fingerprint"].as_str().unwrap();
    let rrs = remediation_requests(client(&env).await, &env.namespace);
    let rr = rrs.get(name).await.unwrap();
    assert_eq!(rr.data["spec"]["signalFingerprint"], fingerprint);
    assert_eq!(rr.data["spec"]["signalName"], "E2eCreates");
    assert_eq!(rr.data["spec"]["priority"], "P0");
    assert_eq!(rr.data["spec"]["targetResource"]["name"], "api-7");
    assert_eq!(rr.data["spec"]["deduplication"]["occurrenceCount"], 1);
}

#[tokio::test]
async fn the_same_alert_again_is_deduplicated_onto_the_same_resource() {
    let test = "the_same_alert_again_is_deduplicated_onto_the_same_resource";
    let env = env();
    if !workloads_run(&env, test) {
        return;
    }
    let (first, answer) = send(&env, alert("E2eDeduplicates")).await;
    assert_eq!(first, 201, "{answer}");
    let name = answer["results"][0]["remediationRequest"]
        .as_str()
        .unwrap()
        .to_string();
    let (second, answer) = send(&env, alert("E2eDeduplicates")).await;
    assert_eq!(second, 202, "{answer}");
    assert_eq!(answer["results"][0]["status"], "duplicate");
    assert_eq!(answer["results"][0]["remediationRequest"], name.as_str());
    let rrs = remediation_requests(client(&env).await, &env.namespace);
    let rr = rrs.get(&name).await.unwrap();
    assert_eq!(rr.data["spec"]["deduplication"]["occurrenceCount"], 2);
    let same: Vec<_> = rrs
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|r| r.data["spec"]["signalName"] == "E2eDeduplicates")
        .collect();
    assert_eq!(same.len(), 1, "one resource per fingerprint");
}

#[tokio::test]
async fn each_signal_is_audited_in_datastorage() {
    let test = "each_signal_is_audited_in_datastorage";
    let env = env();
    if !workloads_run(&env, test) {
        return;
    }
    let (_, answer) = send(&env, alert("E2eAudited")).await;
    let name = answer["results"][0]["remediationRequest"]
        .as_str()
        .unwrap()
        .to_string();
    send(&env, alert("E2eAudited")).await;
    let url = format!(
        "{}/api/v1/audit/events?correlation_id={name}",
        endpoint(&env, "datastorage")
    );
    let (status, events) = request("GET", &url, None).await;
    assert_eq!(status, 200, "{events}");
    let types: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert!(
        types.contains(&"gateway.crd.created") && types.contains(&"gateway.signal.deduplicated"),
        "audit events for {name}: {events}"
    );
}

#[tokio::test]
async fn bad_alerts_are_refused_naming_the_field_and_metrics_count_signals() {
    let test = "bad_alerts_are_refused_naming_the_field_and_metrics_count_signals";
    let env = env();
    if !workloads_run(&env, test) {
        return;
    }
    let (status, answer) = send(
        &env,
        serde_json::json!({"alerts": [{"labels": {"severity": "critical"}}]}),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        answer["error"].as_str().unwrap().contains("alertname"),
        "{answer}"
    );
    let url = format!("{}/metrics", endpoint(&env, "gateway-metrics"));
    let created = || async {
        let (status, body) = request_bytes("GET", &url, None).await;
        assert_eq!(status, 200);
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix("gateway_remediation_requests_created_total "))
            .map(|v| v.parse::<f64>().unwrap())
            .unwrap_or(0.0)
    };
    let before = created().await;
    let (status, answer) = send(&env, alert("E2eCounted")).await;
    assert_eq!(status, 201, "{answer}");
    // Counted before the answer was sent; other tests only ever add to it.
    let after = eventually("the created counter", Duration::from_secs(10), || async {
        let now = created().await;
        (now > before).then_some(now)
    })
    .await;
    assert!(after >= before + 1.0, "{before} → {after}");
}
