//! AuthWebhook's E2E environment and suite.
//!
//! The recipe: the webhook's image and DataStorage's built in parallel, an
//! `authwebhook-e2e` cluster (one worker; host ports 30442→25442 PostgreSQL,
//! 30099→28099 DataStorage, 30443→30443 the webhook), the repository's CRDs,
//! DataStorage's shared stack, a CA and a serving certificate for
//! `authwebhook.<ns>.svc` made for this run (a Secret, and files 0600 in the
//! run folder), the webhook from `deploy/authwebhook/`, and only once it is
//! available the Mutating and Validating configurations
//! (`deploy/authwebhook/webhooks/`) with this run's CA as their caBundle —
//! with `failurePolicy: Fail`, configurations that exist before their webhook
//! answers would refuse every matching request. The suite is `tests/e2e.rs`.

use std::path::Path;
use std::time::Duration;

use infra_core::cluster::spec::{ClusterSpec, NodeSelector};
use infra_core::image::E2eImageConfig;
use infra_core::plan::setup::Setup;
use infra_core::plan::{Pattern, TaskError, TaskId};
use infra_core::run::{ServiceSetup, SetupError, SuiteEnv};
use infra_core::stack::Component;
use infra_core::stack::manifests::Manifests;
use infra_core::stack::migrations::Database;
use infra_core::stack::tls::ServingCert;

use datastorage_e2e::StackOptions;

pub const SERVICE: &str = "authwebhook";
pub const CLUSTER: &str = "authwebhook-e2e";
pub const NAMESPACE: &str = "authwebhook-e2e";
pub const IMAGE: &str = "kubernaut/authwebhook";
pub const CONTAINER: &str = "authwebhook";
/// The Secret the webhook's certificate is in (`deploy/authwebhook/` mounts it).
pub const TLS_SECRET: &str = "authwebhook-tls";
/// Both webhook configurations' name.
pub const CONFIGURATION: &str = "kubernaut-authwebhook";
pub const WEBHOOK_NODE_PORT: u16 = 30443;
pub const WEBHOOK_HOST_PORT: u16 = 30443;
pub const DATASTORAGE_NODE_PORT: u16 = 30099;
pub const DATASTORAGE_HOST_PORT: u16 = 28099;
pub const POSTGRES_NODE_PORT: u16 = 30442;
pub const POSTGRES_HOST_PORT: u16 = 25442;

/// AuthWebhook's setup.
pub struct AuthWebhook;

pub fn image_config(repo_root: &Path) -> E2eImageConfig {
    let config = E2eImageConfig::new(SERVICE, "docker/authwebhook.Dockerfile")
        .image(IMAGE)
        .context(repo_root);
    if repo_root.join("scripts/prebuild.sh").exists() {
        config.pre_build("bash scripts/prebuild.sh authwebhook")
    } else {
        config
    }
}

fn setup_error(problem: impl std::fmt::Display) -> SetupError {
    SetupError {
        service: SERVICE.into(),
        problem: problem.to_string(),
    }
}

fn task_error(problem: impl std::fmt::Display) -> TaskError {
    TaskError::msg(problem.to_string())
}

impl ServiceSetup for AuthWebhook {
    fn database(&self, repo_root: &Path) -> Option<Database> {
        Some(datastorage_e2e::database(NAMESPACE, repo_root))
    }

    fn name(&self) -> &'static str {
        SERVICE
    }

    fn default_pattern(&self) -> Pattern {
        Pattern::Pipelined
    }

    fn cluster_spec(&self, repo_root: &Path) -> ClusterSpec {
        ClusterSpec::new(CLUSTER)
            .port(POSTGRES_NODE_PORT, POSTGRES_HOST_PORT)
            .port(DATASTORAGE_NODE_PORT, DATASTORAGE_HOST_PORT)
            .port(WEBHOOK_NODE_PORT, WEBHOOK_HOST_PORT)
            .mount(
                repo_root.join("coverdata"),
                "/coverdata",
                NodeSelector::Workers,
            )
    }

    fn declare(
        &self,
        setup: &mut Setup,
        cluster: TaskId,
        repo_root: &Path,
    ) -> Result<SuiteEnv, SetupError> {
        let crds = Manifests::load(&repo_root.join("config/crd/bases"))
            .map_err(setup_error)?
            .component("crds", Duration::from_secs(60))
            .map_err(setup_error)?;
        let webhook = Manifests::load(&repo_root.join("deploy/authwebhook"))
            .map_err(setup_error)?
            .in_namespace(NAMESPACE);
        webhook
            .clone()
            .image(CONTAINER, IMAGE)
            .map_err(setup_error)?;
        let configurations = Manifests::load(&repo_root.join("deploy/authwebhook/webhooks"))
            .map_err(setup_error)?
            .in_namespace(NAMESPACE);
        // This run's certificates: made now, never stored in the repository.
        let cert = ServingCert::for_service(SERVICE, NAMESPACE)
            .map_err(|e| setup_error(format!("making the webhook's certificates: {e}")))?;

        let image = setup.build(image_config(repo_root));
        let loaded = setup.load(&image);
        let crds = setup.component(crds, &[cluster]);
        let stack = datastorage_e2e::shared_stack(
            setup,
            cluster,
            repo_root,
            &StackOptions {
                namespace: NAMESPACE.into(),
                datastorage_node_port: Some(DATASTORAGE_NODE_PORT),
                postgres_node_port: Some(POSTGRES_NODE_PORT),
            },
        )?;
        let key = image.key.clone();
        let serving = cert.clone();
        let up = setup.component_with(
            "authwebhook".into(),
            &[loaded, crds.ready, stack.namespace.ready],
            move |ctx| {
                let built = ctx
                    .image(&key)
                    .ok_or_else(|| task_error(format!("image {key} was not built")))?;
                serving
                    .write_to(&ctx.run_dir.join("authwebhook-tls"))
                    .map_err(|e| task_error(format!("writing the certificates: {e}")))?;
                // A new certificate (every run makes one) rolls the pod on a
                // reused cluster: the process reads it once, at start.
                let mut component = webhook
                    .image(CONTAINER, &built.reference)
                    .map_err(task_error)?
                    .pod_annotation("kubernaut.ai/tls-sha256", &serving.fingerprint())
                    .component("authwebhook", Duration::from_secs(180))
                    .map_err(task_error)?;
                component
                    .objects
                    .insert(0, serving.secret(NAMESPACE, TLS_SECRET));
                Ok(component)
            },
        );
        let ca = cert.ca_pem.clone();
        setup.component_with("webhook configurations".into(), &[up.ready], move |_| {
            let objects = configurations
                .ca_bundle(&ca)
                .objects()
                .map_err(task_error)?;
            Ok(Component {
                name: "webhook configurations".into(),
                objects,
                ready: Vec::new(),
            })
        });
        setup.health(
            "datastorage",
            datastorage_e2e::health(NAMESPACE, DATASTORAGE_HOST_PORT),
            &[stack.datastorage.ready],
        );
        Ok(SuiteEnv {
            namespace: NAMESPACE.into(),
            endpoints: [
                (
                    "authwebhook",
                    format!("https://127.0.0.1:{WEBHOOK_HOST_PORT}"),
                ),
                (
                    "datastorage",
                    format!("http://127.0.0.1:{DATASTORAGE_HOST_PORT}"),
                ),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            ..SuiteEnv::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configurations_come_after_the_webhook_is_available() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernaut-lite");
        let mut setup = Setup::new();
        let cluster = setup.cluster(AuthWebhook.cluster_spec(&repo));
        AuthWebhook.declare(&mut setup, cluster, &repo).unwrap();
        let names: Vec<String> = setup
            .into_plan()
            .schedule(Pattern::Pipelined)
            .into_iter()
            .map(|t| t.name)
            .collect();
        let at = |name: &str| {
            names
                .iter()
                .position(|n| n == name)
                .unwrap_or_else(|| panic!("{name} missing from {names:?}"))
        };
        assert!(at("wait authwebhook") < at("deploy webhook configurations"));
        at("build kubernaut/datastorage");
        at("health datastorage");
    }

    #[test]
    fn both_configurations_fail_closed_and_call_the_service_in_the_namespace() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernaut-lite");
        let m = Manifests::load(&repo.join("deploy/authwebhook/webhooks"))
            .unwrap()
            .in_namespace(NAMESPACE)
            .ca_bundle("CA");
        assert_eq!(m.values().len(), 2);
        for configuration in m.values() {
            let hook = &configuration["webhooks"][0];
            assert_eq!(hook["failurePolicy"], "Fail");
            assert_eq!(hook["clientConfig"]["service"]["namespace"], NAMESPACE);
            assert_eq!(hook["clientConfig"]["caBundle"], "Q0E=");
        }
    }
}
