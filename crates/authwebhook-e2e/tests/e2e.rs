//! AuthWebhook's E2E suite, run by `cargo xtask e2e authwebhook` against the
//! environment it set up (described by the file `E2E_ENV_FILE` names).
//!
//! The first test checks the configurations through the Kubernetes API and
//! holds on any cluster. The others make the API server really call the
//! webhook (a status update, a DELETE) and are skipped, saying why, on the
//! simulated cluster, where the webhook's pod never runs.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use base64::Engine as _;
use infra_core::run::SuiteEnv;
use std::time::Duration;

use infra_core::suite::{client, env, eventually, workloads_run};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::authentication::v1::SelfSubjectReview;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams,
};

fn notification_requests(client: kube::Client, namespace: &str) -> Api<DynamicObject> {
    let gvk = GroupVersionKind::gvk("kubernaut.ai", "v1alpha1", "NotificationRequest");
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk(&gvk))
}

async fn create(env: &SuiteEnv, test: &str) -> (String, Api<DynamicObject>) {
    // `<service>-<seconds>-<hex>`: the part after the service is unique.
    let suffix = env.run_id.split_once('-').map_or("run", |(_, rest)| rest);
    let name = format!("{test}-{suffix}");
    let api = notification_requests(client(env).await, &env.namespace);
    let object: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "kubernaut.ai/v1alpha1", "kind": "NotificationRequest",
        "metadata": {"name": name},
        "spec": {"subject": test, "body": "b"}
    }))
    .unwrap();
    api.create(&PostParams::default(), &object).await.unwrap();
    (name, api)
}

#[tokio::test]
async fn both_configurations_carry_this_runs_ca_bundle() {
    let env = env();
    let client = client(&env).await;
    let secret = Api::<Secret>::namespaced(client.clone(), &env.namespace)
        .get(authwebhook_e2e::TLS_SECRET)
        .await
        .unwrap();
    let ca = secret.data.unwrap()["ca.crt"].0.clone();
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get(authwebhook_e2e::CONFIGURATION)
        .await
        .unwrap();
    let validating = Api::<ValidatingWebhookConfiguration>::all(client)
        .get(authwebhook_e2e::CONFIGURATION)
        .await
        .unwrap();
    let bundles: Vec<Vec<u8>> = mutating
        .webhooks
        .unwrap()
        .into_iter()
        .map(|w| w.client_config.ca_bundle.unwrap().0)
        .chain(
            validating
                .webhooks
                .unwrap()
                .into_iter()
                .map(|w| w.client_config.ca_bundle.unwrap().0),
        )
        .collect();
    assert_eq!(bundles.len(), 2);
    for bundle in bundles {
        assert_eq!(bundle, ca, "the caBundle is this run's CA");
    }
    assert!(
        String::from_utf8_lossy(&ca).starts_with("-----BEGIN CERTIFICATE-----"),
        "{}",
        base64::engine::general_purpose::STANDARD.encode(&ca)
    );
}

#[tokio::test]
async fn a_status_update_is_stamped_with_the_user_by_the_mutating_webhook() {
    let test = "a-status-update-is-stamped";
    let env = env();
    if !workloads_run(&env, test) {
        return;
    }
    let client = client(&env).await;
    let me = Api::<SelfSubjectReview>::all(client.clone())
        .create(&PostParams::default(), &SelfSubjectReview::default())
        .await
        .unwrap()
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap();
    let (name, api) = create(&env, test).await;
    // The API server starts calling a new configuration a moment after it
    // exists: until then an update goes through unstamped (or the call
    // fails); retry, bounded.
    let patch = serde_json::json!({"status": {"phase": "Sent", "channel": "file"}});
    let updated = eventually(
        "a status update stamped by the webhook",
        Duration::from_secs(30),
        || async {
            let updated = api
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .ok()?;
            updated.data["status"].get("lastModifiedBy")?;
            Some(updated)
        },
    )
    .await;
    assert_eq!(updated.data["status"]["phase"], "Sent");
    assert_eq!(
        updated.data["status"]["lastModifiedBy"],
        me.as_str(),
        "{}",
        updated.data
    );
}

#[tokio::test]
async fn a_delete_is_refused_by_the_validating_webhook_until_approved() {
    let test = "a-delete-is-refused";
    let env = env();
    if !workloads_run(&env, test) {
        return;
    }
    let (name, api) = create(&env, test).await;
    // As above: wait (bounded, with dry-run deletes) until the API server
    // calls the new configuration, then the real DELETE must be refused.
    let dry_run = DeleteParams {
        dry_run: true,
        ..DeleteParams::default()
    };
    eventually(
        "the validating webhook refusing a DELETE",
        Duration::from_secs(30),
        || async {
            let error = api.delete(&name, &dry_run).await.err()?;
            error
                .to_string()
                .contains("kubernaut.ai/deletion-approved")
                .then_some(())
        },
    )
    .await;
    let refused = api
        .delete(&name, &DeleteParams::default())
        .await
        .expect_err("the webhook refuses the DELETE");
    let message = refused.to_string();
    assert!(
        message.contains("kubernaut.ai/deletion-approved"),
        "the refusal names what to do: {message}"
    );
    assert!(api.get(&name).await.is_ok(), "still there");
    let approve = serde_json::json!({"metadata": {"annotations": {"kubernaut.ai/deletion-approved": "true"}}});
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&approve))
        .await
        .unwrap();
    api.delete(&name, &DeleteParams::default()).await.unwrap();
}
