//! Notification's E2E environment and suite.
//!
//! The recipe: the controller's image and DataStorage's built in parallel
//! (the original built DataStorage only after the cluster existed), a
//! `notification-e2e` cluster (one worker; host ports 30186→9186 metrics and
//! 30090→30090 DataStorage; the host folder `<repo>/notifications` mounted at
//! `/tmp/e2e-notifications` on every node: the file delivery channel), the
//! repository's CRDs, DataStorage's shared stack, then the controller from
//! `deploy/notification/` (RBAC, ConfigMap, NodePort Service, and the
//! Deployment whose init container fixes the delivery folder's permissions),
//! both containers running the image that was loaded. Ready means the
//! controller is available (its readiness says it listed NotificationRequests)
//! and DataStorage answers on its host port. The suite is `tests/e2e.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use infra_core::cluster::spec::{ClusterSpec, NodeSelector};
use infra_core::image::E2eImageConfig;
use infra_core::plan::setup::Setup;
use infra_core::plan::{Pattern, TaskError, TaskId};
use infra_core::run::{ServiceSetup, SetupError, SuiteEnv};
use infra_core::stack::manifests::Manifests;
use infra_core::stack::migrations::Database;

use datastorage_e2e::StackOptions;

pub const SERVICE: &str = "notification";
pub const CLUSTER: &str = "notification-e2e";
pub const NAMESPACE: &str = "notification-e2e";
/// The image's name; also the key the suite finds its reference under.
pub const IMAGE: &str = "kubernaut/notification";
/// The containers the image is set on in `deploy/notification/`.
pub const CONTAINERS: [&str; 2] = ["notification", "fix-permissions"];
pub const METRICS_NODE_PORT: u16 = 30186;
pub const METRICS_HOST_PORT: u16 = 9186;
pub const DATASTORAGE_NODE_PORT: u16 = 30090;
pub const DATASTORAGE_HOST_PORT: u16 = 30090;
/// Where the file channel delivers, inside the nodes.
pub const DELIVERY_DIR: &str = "/tmp/e2e-notifications";

/// Notification's setup.
pub struct Notification;

/// The host folder behind the delivery channel.
pub fn delivery_dir(repo_root: &Path) -> PathBuf {
    repo_root.join("notifications")
}

/// The controller's image, built from the repository root.
pub fn image_config(repo_root: &Path) -> E2eImageConfig {
    let config = E2eImageConfig::new(SERVICE, "docker/notification.Dockerfile")
        .image(IMAGE)
        .context(repo_root);
    if repo_root.join("scripts/prebuild.sh").exists() {
        config.pre_build("bash scripts/prebuild.sh notification")
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

fn with_image(manifests: Manifests, reference: &str) -> Result<Manifests, String> {
    CONTAINERS.iter().try_fold(manifests, |m, container| {
        m.image(container, reference).map_err(|e| e.to_string())
    })
}

impl ServiceSetup for Notification {
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
            .port(METRICS_NODE_PORT, METRICS_HOST_PORT)
            .port(DATASTORAGE_NODE_PORT, DATASTORAGE_HOST_PORT)
            .mount(delivery_dir(repo_root), DELIVERY_DIR, NodeSelector::All)
    }

    fn declare(
        &self,
        setup: &mut Setup,
        cluster: TaskId,
        repo_root: &Path,
    ) -> Result<SuiteEnv, SetupError> {
        // Read and checked now: a broken manifest fails before anything runs.
        let crds = Manifests::load(&repo_root.join("config/crd/bases"))
            .map_err(setup_error)?
            .component("crds", Duration::from_secs(60))
            .map_err(setup_error)?;
        let manifests = Manifests::load(&repo_root.join("deploy/notification"))
            .map_err(setup_error)?
            .in_namespace(NAMESPACE);
        with_image(manifests.clone(), IMAGE).map_err(setup_error)?;

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
                postgres_node_port: None,
            },
        )?;
        let key = image.key.clone();
        setup.component_with(
            "notification".into(),
            &[
                loaded,
                crds.ready,
                stack.namespace.ready,
                stack.datastorage.ready,
            ],
            move |ctx| {
                let built = ctx
                    .image(&key)
                    .ok_or_else(|| TaskError::msg(format!("image {key} was not built")))?;
                with_image(manifests, &built.reference)
                    .map_err(TaskError::msg)?
                    .component("notification", Duration::from_secs(180))
                    .map_err(|e| TaskError::msg(e.to_string()))
            },
        );
        setup.health(
            "datastorage",
            datastorage_e2e::health(NAMESPACE, DATASTORAGE_HOST_PORT),
            &[stack.datastorage.ready],
        );
        Ok(SuiteEnv {
            namespace: NAMESPACE.into(),
            endpoints: [
                (
                    "notification-metrics",
                    format!("http://127.0.0.1:{METRICS_HOST_PORT}"),
                ),
                (
                    "datastorage",
                    format!("http://127.0.0.1:{DATASTORAGE_HOST_PORT}"),
                ),
                (
                    "delivery-dir",
                    delivery_dir(repo_root).display().to_string(),
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

    fn example() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernaut-lite")
    }

    #[test]
    fn cluster_has_the_originals_ports_and_the_delivery_folder_mounted() {
        let spec = Notification.cluster_spec(Path::new("/repo"));
        assert_eq!(spec.name, "notification-e2e");
        let ports: Vec<(u16, u16)> = spec
            .port_mappings
            .iter()
            .map(|m| (m.container_port, m.host_port))
            .collect();
        assert_eq!(ports, [(30186, 9186), (30090, 30090)]);
        assert_eq!(spec.mounts.len(), 1);
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn both_containers_run_the_loaded_image_and_the_stack_comes_first() {
        let repo = example();
        let manifests = Manifests::load(&repo.join("deploy/notification"))
            .unwrap()
            .in_namespace(NAMESPACE);
        let manifests = with_image(manifests, "localhost/kubernaut/notification:x").unwrap();
        let deployment = manifests
            .values()
            .iter()
            .find(|v| v["kind"] == "Deployment")
            .unwrap();
        let pod = &deployment["spec"]["template"]["spec"];
        assert_eq!(
            pod["containers"][0]["image"],
            "localhost/kubernaut/notification:x"
        );
        assert_eq!(
            pod["initContainers"][0]["image"],
            "localhost/kubernaut/notification:x"
        );
        assert_eq!(pod["volumes"][0]["hostPath"]["path"], DELIVERY_DIR);

        let mut setup = Setup::new();
        let cluster = setup.cluster(Notification.cluster_spec(&repo));
        Notification.declare(&mut setup, cluster, &repo).unwrap();
        let names: Vec<String> = setup
            .into_plan()
            .schedule(Pattern::Pipelined)
            .into_iter()
            .map(|t| t.name)
            .collect();
        for expected in [
            "build kubernaut/notification",
            "build kubernaut/datastorage",
            "deploy crds",
            "deploy datastorage",
            "deploy notification",
            "wait notification",
            "health datastorage",
        ] {
            assert!(names.iter().any(|n| n == expected), "{expected}: {names:?}");
        }
    }
}
