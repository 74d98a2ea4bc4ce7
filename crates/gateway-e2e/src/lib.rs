//! Gateway's E2E environment and suite.
//!
//! The recipe: the Gateway and DataStorage images built in parallel, a
//! `gateway-e2e` cluster (one worker; host ports 30080→8080 API, 30090→9090
//! metrics, 30081→18091 DataStorage; `./coverdata` on both nodes), the
//! repository's CRDs (`config/crd/bases/`), then DataStorage's shared stack
//! (namespace, PostgreSQL, Redis, migrations, DataStorage), then Gateway from
//! `deploy/gateway/` (config and policy ConfigMaps, ServiceAccount,
//! ClusterRole, Deployment, NodePort Service) running the image that was
//! loaded. Ready means Gateway's Deployment is available (its readiness probe
//! lists RemediationRequests, so the CRD is served and RBAC allows it),
//! `GET /health` answers on the host and DataStorage is ready on its host port.
//! The suite is `tests/e2e.rs`.
//!
//! Pipelined: the cluster comes up while both images build; the shared stack
//! deploys while Gateway's image is still building or loading.

use std::path::Path;
use std::time::Duration;

use infra_core::cluster::spec::{ClusterSpec, NodeSelector};
use infra_core::deploy::health::HealthCheck;
use infra_core::image::E2eImageConfig;
use infra_core::plan::setup::Setup;
use infra_core::plan::{Pattern, TaskError, TaskId};
use infra_core::run::{ServiceSetup, SetupError, SuiteEnv};
use infra_core::stack::manifests::Manifests;
use infra_core::stack::migrations::Database;

use datastorage_e2e::StackOptions;

pub const SERVICE: &str = "gateway";
pub const CLUSTER: &str = "gateway-e2e";
pub const NAMESPACE: &str = "gateway-e2e";
/// The image's name; also the key the suite finds its reference under.
pub const IMAGE: &str = "kubernaut/gateway";
/// The container the image is set on in `deploy/gateway/`.
pub const CONTAINER: &str = "gateway";
pub const API_NODE_PORT: u16 = 30080;
pub const API_HOST_PORT: u16 = 8080;
pub const METRICS_NODE_PORT: u16 = 30090;
pub const METRICS_HOST_PORT: u16 = 9090;
/// DataStorage's API on the host, where the suite reads audit events.
pub const DATASTORAGE_NODE_PORT: u16 = 30081;
pub const DATASTORAGE_HOST_PORT: u16 = 18091;

/// Gateway's setup.
pub struct Gateway;

/// Gateway's image, built from the repository root (after
/// `scripts/prebuild.sh gateway` where the repository has it).
pub fn image_config(repo_root: &Path) -> E2eImageConfig {
    let config = E2eImageConfig::new(SERVICE, "docker/gateway.Dockerfile")
        .image(IMAGE)
        .context(repo_root);
    if repo_root.join("scripts/prebuild.sh").exists() {
        config.pre_build("bash scripts/prebuild.sh gateway")
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

impl ServiceSetup for Gateway {
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
            .port(API_NODE_PORT, API_HOST_PORT)
            .port(METRICS_NODE_PORT, METRICS_HOST_PORT)
            .port(DATASTORAGE_NODE_PORT, DATASTORAGE_HOST_PORT)
            .mount(repo_root.join("coverdata"), "/coverdata", NodeSelector::All)
    }

    fn declare(
        &self,
        setup: &mut Setup,
        cluster: TaskId,
        repo_root: &Path,
    ) -> Result<SuiteEnv, SetupError> {
        // Read and checked now, so a broken manifest fails before anything
        // is built or created.
        let crds = Manifests::load(&repo_root.join("config/crd/bases"))
            .map_err(setup_error)?
            .component("crds", Duration::from_secs(60))
            .map_err(setup_error)?;
        let manifests = Manifests::load(&repo_root.join("deploy/gateway"))
            .map_err(setup_error)?
            .in_namespace(NAMESPACE);
        manifests
            .clone()
            .image(CONTAINER, IMAGE)
            .map_err(setup_error)?;

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
        let gateway = setup.component_with(
            "gateway".into(),
            &[
                loaded,
                crds.ready,
                stack.namespace.ready,
                stack.datastorage.ready,
            ],
            move |ctx| {
                // The reference built and loaded in this run.
                let built = ctx
                    .image(&key)
                    .ok_or_else(|| TaskError::msg(format!("image {key} was not built")))?;
                let manifests = manifests
                    .image(CONTAINER, &built.reference)
                    .map_err(|e| TaskError::msg(e.to_string()))?;
                manifests
                    .component("gateway", Duration::from_secs(180))
                    .map_err(|e| TaskError::msg(e.to_string()))
            },
        );
        setup.health(
            "datastorage",
            datastorage_e2e::health(NAMESPACE, DATASTORAGE_HOST_PORT),
            &[stack.datastorage.ready],
        );
        setup.health(
            "gateway",
            HealthCheck {
                url: format!("http://127.0.0.1:{API_HOST_PORT}/health"),
                namespace: NAMESPACE.into(),
                pod_selector: "app=gateway".into(),
                pod_port: 8080,
                timeout: Duration::from_secs(120),
            },
            &[gateway.ready],
        );
        Ok(SuiteEnv {
            namespace: NAMESPACE.into(),
            endpoints: [
                ("gateway", format!("http://127.0.0.1:{API_HOST_PORT}")),
                (
                    "gateway-metrics",
                    format!("http://127.0.0.1:{METRICS_HOST_PORT}"),
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

    fn example() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernaut-lite")
    }

    #[test]
    fn cluster_has_the_originals_ports_one_worker_and_coverage_on_both_nodes() {
        let spec = Gateway.cluster_spec(Path::new("/repo"));
        assert_eq!(spec.name, "gateway-e2e");
        assert_eq!(spec.workers, 1);
        let ports: Vec<(u16, u16)> = spec
            .port_mappings
            .iter()
            .map(|m| (m.container_port, m.host_port))
            .collect();
        assert_eq!(ports, [(30080, 8080), (30090, 9090), (30081, 18091)]);
        assert_eq!(spec.mounts.len(), 1);
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn the_bundled_example_declares_both_images_the_stack_and_gateway() {
        let repo = example();
        let mut setup = Setup::new();
        let cluster = setup.cluster(Gateway.cluster_spec(&repo));
        let env = Gateway.declare(&mut setup, cluster, &repo).unwrap();
        assert_eq!(env.endpoints["gateway"], "http://127.0.0.1:8080");
        let names: Vec<String> = setup
            .into_plan()
            .schedule(Pattern::Pipelined)
            .into_iter()
            .map(|t| t.name)
            .collect();
        for expected in [
            "build kubernaut/gateway",
            "build kubernaut/datastorage",
            "deploy crds",
            "wait migrations",
            "deploy datastorage",
            "deploy gateway",
            "wait gateway",
            "health gateway",
            "health datastorage",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn gateways_manifests_name_its_container_service_account_and_node_ports() {
        let manifests = Manifests::load(&example().join("deploy/gateway"))
            .unwrap()
            .in_namespace(NAMESPACE)
            .image(CONTAINER, "localhost/kubernaut/gateway:x")
            .unwrap();
        let values = manifests.values();
        let service = values.iter().find(|v| v["kind"] == "Service").unwrap();
        let node_ports: Vec<i64> = service["spec"]["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["nodePort"].as_i64().unwrap())
            .collect();
        assert_eq!(
            node_ports,
            [i64::from(API_NODE_PORT), i64::from(METRICS_NODE_PORT)]
        );
        let binding = values
            .iter()
            .find(|v| v["kind"] == "ClusterRoleBinding")
            .unwrap();
        assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
        for object in manifests.objects().unwrap() {
            if matches!(
                object.types.as_ref().map(|t| t.kind.as_str()),
                Some("Deployment" | "Service" | "ConfigMap")
            ) {
                infra_core::stack::test_support::assert_round_trips(&object);
            }
        }
    }

    #[test]
    fn a_repository_without_gateways_manifests_is_refused_by_name() {
        let empty = tempfile::tempdir().unwrap();
        let mut setup = Setup::new();
        let cluster = setup.cluster(Gateway.cluster_spec(empty.path()));
        let err = Gateway
            .declare(&mut setup, cluster, empty.path())
            .unwrap_err();
        assert!(err.to_string().contains("config/crd/bases"), "{err}");
    }
}
