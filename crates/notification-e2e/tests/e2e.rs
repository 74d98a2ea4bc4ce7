//! Notification's E2E suite, run by `cargo xtask e2e notification` against
//! the environment it set up (described by the file `E2E_ENV_FILE` names).
//!
//! The first tests check the environment through the Kubernetes API and hold
//! on any cluster. The rest create NotificationRequests for the running
//! controller, read the delivered files on the host (through the Kind mount)
//! and are skipped, saying why, on the simulated cluster.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::path::Path;
use std::time::Duration;

use infra_core::run::SuiteEnv;
use infra_core::suite::{client, endpoint, env, eventually, request, workloads_run};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};

fn notification_requests(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kubernaut.ai", "v1alpha1", "NotificationRequest");
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk(&gvk))
}

/// A NotificationRequest named after the test and this run (names are unique
/// across runs that reuse the cluster and the delivery folder).
async fn create(env: &SuiteEnv, test: &str, channel: &str) -> (String, Api<DynamicObject>) {
    // `<service>-<seconds>-<hex>`: the part after the service is unique.
    let suffix = env.run_id.split_once('-').map_or("run", |(_, rest)| rest);
    let name = format!("{test}-{suffix}");
    let api = notification_requests(client(env).await, &env.namespace);
    let object: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubernaut.ai/v1alpha1", "kind": "NotificationRequest",
        "metadata": {"name": name},
        "spec": {
            "subject": format!("{test}: disk full"),
            "body": "node-3 /var at 99%",
            "channel": channel,
            "recipients": ["oncall@example.org"],
            "correlationId": format!("corr-{name}")
        }
    }))
    .unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
    (name, api)
}

/// The resource once the controller has written a phase in its status.
async fn settled(api: &Api<DynamicObject>, name: &str) -> serde_json::Value {
    eventually(
        &format!("NotificationRequest {name} gets a phase"),
        Duration::from_secs(30),
        || async {
            let object = api.get(name).await.ok()?;
            let status = object.data.get("status")?.clone();
            status.get("phase").is_some().then_some(status)
        },
    )
    .await
}

#[tokio::test]
async fn both_containers_run_the_image_that_was_loaded_and_never_pull() {
    let env = env();
    let loaded = &env.images[notification_e2e::IMAGE];
    let deployments: Api<Deployment> = Api::namespaced(client(&env).await, &env.namespace);
    let pod = deployments
        .get("notification-controller")
        .await
        .unwrap()
        .spec
        .unwrap()
        .template
        .spec
        .unwrap();
    let init = pod.init_containers.unwrap_or_default();
    for container in pod.containers.iter().chain(init.iter()) {
        assert_eq!(container.image.as_deref(), Some(loaded.as_str()));
        assert_eq!(container.image_pull_policy.as_deref(), Some("Never"));
    }
    assert_eq!(init.len(), 1, "the permissions init container");
}

#[tokio::test]
async fn the_controller_may_write_the_status_of_notification_requests() {
    let env = env();
    let reviews: Api<SubjectAccessReview> = Api::all(client(&env).await);
    for (verb, subresource) in [("watch", None), ("patch", Some("status"))] {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(format!(
                    "system:serviceaccount:{}:notification-controller",
                    env.namespace
                )),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("kubernaut.ai".into()),
                    resource: Some("notificationrequests".into()),
                    subresource: subresource.map(String::from),
                    verb: Some(verb.into()),
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
            "the controller may not {verb} {subresource:?}"
        );
    }
}

#[tokio::test]
async fn a_request_is_delivered_to_a_file_on_the_host_and_marked_sent() {
    let test = "a-request-is-delivered";
    let env = env();
    if !workloads_run(&env, test) {
        return;
    }
    let (name, api) = create(&env, test, "file").await;
    let status = settled(&api, &name).await;
    assert_eq!(status["phase"], "Sent", "{status}");
    assert_eq!(status["channel"], "file");
    let on_host = Path::new(endpoint(&env, "delivery-dir")).join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&on_host)
        .unwrap_or_else(|e| panic!("{} on the host: {e}", on_host.display()));
    assert!(
        text.contains(&format!("Subject: {test}: disk full")),
        "{text}"
    );
    assert!(text.contains("To: oncall@example.org"), "{text}");
    assert!(text.contains("node-3 /var at 99%"), "{text}");
}

#[tokio::test]
async fn a_delivery_is_audited_in_datastorage() {
    let test = "a-delivery-is-audited";
    let env = env();
    if !workloads_run(&env, test) {
        return;
    }
    let (name, api) = create(&env, test, "file").await;
    settled(&api, &name).await;
    let url = format!(
        "{}/api/v1/audit/events?correlation_id=corr-{name}",
        endpoint(&env, "datastorage")
    );
    let events = eventually("the audit event", Duration::from_secs(10), || async {
        let (status, events) = request("GET", &url, None).await;
        (status == 200 && !events["data"].as_array()?.is_empty()).then_some(events)
    })
    .await;
    let event = &events["data"][0];
    assert_eq!(event["event_type"], "notification.message.sent", "{events}");
    assert_eq!(event["event_outcome"], "success", "{events}");
}

#[tokio::test]
async fn an_unsupported_channel_fails_with_the_reason_in_the_status() {
    let test = "an-unsupported-channel";
    let env = env();
    if !workloads_run(&env, test) {
        return;
    }
    let (name, api) = create(&env, test, "pager").await;
    let status = settled(&api, &name).await;
    assert_eq!(status["phase"], "Failed", "{status}");
    assert!(
        status["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("pager"),
        "{status}"
    );
}
