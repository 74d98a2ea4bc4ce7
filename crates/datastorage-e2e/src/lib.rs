//! DataStorage's E2E environment and suite.
//!
//! The recipe: one image (`kubernaut/datastorage`), a cluster `datastorage-e2e`
//! with one worker and the original's host ports (API 30081→28090, PostgreSQL
//! 30432→25433, `./coverdata` on the worker), a namespace, PostgreSQL and
//! Redis, the repository's migrations, then DataStorage running the image that
//! was loaded. Ready means the Deployment is available and `/health/ready`
//! answers on the host port. The suite is `tests/e2e.rs`.
//!
//! Migrated to the pipelined pattern: the cluster comes up while the image
//! builds, and PostgreSQL and Redis deploy before the image is loaded.

use std::path::Path;
use std::time::Duration;

use infra_core::cluster::spec::{ClusterSpec, NodeSelector};
use infra_core::deploy::health::HealthCheck;
use infra_core::image::E2eImageConfig;
use infra_core::plan::setup::{ImageTask, Setup, SetupContext, Stage};
use infra_core::plan::{Pattern, TaskError, TaskId};
use infra_core::run::{ServiceSetup, SetupError, SuiteEnv};
pub mod deployment;

use deployment::DataStorageConfig;
use infra_core::stack::images;
use infra_core::stack::migrations::{self, Database, load_migrations};
use infra_core::stack::namespace;
use infra_core::stack::postgres::PostgresConfig;
use infra_core::stack::redis::RedisConfig;

pub const SERVICE: &str = "datastorage";
pub const CLUSTER: &str = "datastorage-e2e";
pub const NAMESPACE: &str = "datastorage-e2e";
/// The image's name; also the key the suite finds its reference under.
pub const IMAGE: &str = "kubernaut/datastorage";
/// The API on the host (Kind maps NodePort 30081 here).
pub const API_HOST_PORT: u16 = 28090;
pub const API_NODE_PORT: u16 = 30081;
/// PostgreSQL on the host (NodePort 30432).
pub const POSTGRES_HOST_PORT: u16 = 25433;
pub const POSTGRES_NODE_PORT: u16 = 30432;

/// DataStorage's setup.
pub struct DataStorage;

/// The image, built from the repository root; a repository that compiles on
/// the host (like the bundled example) has `scripts/prebuild.sh`.
pub fn image_config(repo_root: &Path) -> E2eImageConfig {
    let config = E2eImageConfig::new(SERVICE, "docker/data-storage.Dockerfile")
        .image(IMAGE)
        .context(repo_root);
    if repo_root.join("scripts/prebuild.sh").exists() {
        config.pre_build("bash scripts/prebuild.sh datastorage")
    } else {
        config
    }
}

/// The original's database: `action_history`, owned by `slm_user`.
pub fn postgres_in(namespace: &str) -> PostgresConfig {
    PostgresConfig::new(namespace).database("action_history", "slm_user", "slm_password_e2e")
}

/// The shared stack's database in `namespace` and the repository's
/// migrations: what `cargo xtask migrate` applies to a kept environment.
pub fn database(namespace: &str, repo_root: &Path) -> Database {
    Database {
        postgres: postgres_in(namespace),
        migrations_dir: repo_root.join("migrations"),
    }
}

pub fn postgres() -> PostgresConfig {
    postgres_in(NAMESPACE).node_port(POSTGRES_NODE_PORT)
}

/// The reference of an image this run built or provided and loaded.
fn loaded_reference(ctx: &SetupContext, key: &str) -> Result<String, TaskError> {
    ctx.image(key)
        .map(|built| built.reference)
        .ok_or_else(|| TaskError::msg(format!("image {key} was not provided")))
}

/// `pg` running the PostgreSQL image this run loaded.
fn with_image(
    mut pg: PostgresConfig,
    ctx: &SetupContext,
    key: &str,
) -> Result<PostgresConfig, TaskError> {
    pg.image = loaded_reference(ctx, key)?;
    Ok(pg)
}

/// DataStorage is ready when `/health/ready` answers on `host_port` (the
/// host side of its NodePort): the database answers and is migrated.
pub fn health(namespace: &str, host_port: u16) -> HealthCheck {
    HealthCheck {
        url: format!("http://127.0.0.1:{host_port}/health/ready"),
        namespace: namespace.into(),
        pod_selector: "app=datastorage".into(),
        pod_port: deployment::API_PORT,
        timeout: Duration::from_secs(120),
    }
}

/// Where the shared stack goes and which NodePorts it publishes.
#[derive(Debug, Clone)]
pub struct StackOptions {
    pub namespace: String,
    /// DataStorage's API on this NodePort (each service maps its own host port).
    pub datastorage_node_port: Option<u16>,
    pub postgres_node_port: Option<u16>,
}

/// The tasks of the shared stack a recipe builds on.
#[derive(Debug, Clone)]
pub struct SharedStack {
    /// The namespace exists.
    pub namespace: Stage,
    /// DataStorage's image (built from the repository, loaded into the nodes).
    pub image: ImageTask,
    /// PostgreSQL migrated, Redis up, DataStorage deployed and available.
    pub datastorage: Stage,
}

/// What every service's E2E needs, as one call: the namespace, PostgreSQL
/// and Redis (images put into the nodes), the repository's migrations, and
/// DataStorage built from `repo_root`, loaded and available. PostgreSQL and
/// Redis deploy while DataStorage's image still builds or loads.
pub fn shared_stack(
    setup: &mut Setup,
    cluster: TaskId,
    repo_root: &Path,
    options: &StackOptions,
) -> Result<SharedStack, SetupError> {
    let namespace_name = options.namespace.as_str();
    let image_config = image_config(repo_root);
    let image = setup.build(image_config);
    let loaded = setup.load(&image);
    let migrations = load_migrations(&repo_root.join("migrations")).map_err(|e| SetupError {
        service: SERVICE.into(),
        problem: infra_core::error_chain(&e),
    })?;
    let mut pg = postgres_in(namespace_name);
    if let Some(port) = options.postgres_node_port {
        pg = pg.node_port(port);
    }
    let redis = RedisConfig::new(namespace_name);

    // PostgreSQL and Redis run images put into the nodes like ours:
    // pulled once where a registry answers, built offline where none does.
    let pg_image = setup.third_party(images::postgres());
    let pg_loaded = setup.load(&pg_image);
    let redis_image = setup.third_party(images::redis());
    let redis_loaded = setup.load(&redis_image);

    let ns = setup.component(namespace(namespace_name), &[cluster]);
    let pg_up = {
        let (pg, key) = (pg.clone(), pg_image.key.clone());
        setup.component_with("postgresql".into(), &[ns.ready, pg_loaded], move |ctx| {
            Ok(with_image(pg, ctx, &key)?.component())
        })
    };
    let redis_up = {
        let (redis, key) = (redis.clone(), redis_image.key.clone());
        setup.component_with("redis".into(), &[ns.ready, redis_loaded], move |ctx| {
            let mut redis = redis;
            redis.image = loaded_reference(ctx, &key)?;
            Ok(redis.component())
        })
    };
    let migrated = {
        let (pg, key) = (pg.clone(), pg_image.key.clone());
        setup.component_with("migrations".into(), &[pg_up.ready], move |ctx| {
            let pg = with_image(pg, ctx, &key)?;
            Ok(migrations::component(
                &pg,
                &migrations,
                Duration::from_secs(180),
            ))
        })
    };
    let key = image.key.clone();
    let node_port = options.datastorage_node_port;
    let ds = setup.component_with(
        "datastorage".into(),
        &[loaded, migrated.ready, redis_up.ready],
        move |ctx| {
            // The reference that was built and loaded in this run: never a
            // hard-coded name.
            let reference = loaded_reference(ctx, &key)?;
            let mut config = DataStorageConfig::new(&reference, &pg, &redis);
            if let Some(port) = node_port {
                config = config.node_port(port);
            }
            Ok(config.component())
        },
    );
    Ok(SharedStack {
        namespace: ns,
        image,
        datastorage: ds,
    })
}

impl ServiceSetup for DataStorage {
    fn database(&self, repo_root: &Path) -> Option<Database> {
        Some(database(NAMESPACE, repo_root))
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
            .port(POSTGRES_NODE_PORT, POSTGRES_HOST_PORT)
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
        let stack = shared_stack(
            setup,
            cluster,
            repo_root,
            &StackOptions {
                namespace: NAMESPACE.into(),
                datastorage_node_port: Some(API_NODE_PORT),
                postgres_node_port: Some(POSTGRES_NODE_PORT),
            },
        )?;
        let ds = stack;
        setup.health(
            "datastorage",
            health(NAMESPACE, API_HOST_PORT),
            &[ds.datastorage.ready],
        );
        Ok(SuiteEnv {
            namespace: NAMESPACE.into(),
            endpoints: [
                (
                    "datastorage".to_string(),
                    format!("http://127.0.0.1:{API_HOST_PORT}"),
                ),
                (
                    "postgresql".to_string(),
                    format!(
                        "host=127.0.0.1 port={POSTGRES_HOST_PORT} user={} password={} dbname={}",
                        postgres().user,
                        postgres().password,
                        postgres().database
                    ),
                ),
            ]
            .into(),
            ..SuiteEnv::default()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_has_the_originals_ports_and_one_worker() {
        let spec = DataStorage.cluster_spec(Path::new("/repo"));
        assert_eq!(spec.name, "datastorage-e2e");
        assert_eq!(spec.workers, 1);
        let ports: Vec<(u16, u16)> = spec
            .port_mappings
            .iter()
            .map(|m| (m.container_port, m.host_port))
            .collect();
        assert_eq!(ports, [(30081, 28090), (30432, 25433)]);
        assert!(spec.validate().is_ok());
    }

    #[test]
    fn the_bundled_example_declares_a_complete_setup() {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/kubernaut-lite");
        let mut setup = Setup::new();
        let cluster = setup.cluster(DataStorage.cluster_spec(&repo));
        let env = DataStorage.declare(&mut setup, cluster, &repo).unwrap();
        assert_eq!(env.namespace, NAMESPACE);
        let names: Vec<String> = setup
            .into_plan()
            .schedule(Pattern::Pipelined)
            .into_iter()
            .map(|t| t.name)
            .collect();
        for expected in [
            "build kubernaut/datastorage",
            "create cluster datastorage-e2e",
            "load kubernaut/datastorage",
            "deploy postgresql",
            "wait migrations",
            "deploy datastorage",
            "health datastorage",
        ] {
            assert!(
                names.iter().any(|n| n == expected),
                "{expected} missing from {names:?}"
            );
        }
    }

    #[test]
    fn a_repository_without_migrations_is_refused_by_name() {
        let empty = tempfile::tempdir().unwrap();
        let mut setup = Setup::new();
        let cluster = setup.cluster(DataStorage.cluster_spec(empty.path()));
        let err = DataStorage
            .declare(&mut setup, cluster, empty.path())
            .unwrap_err();
        assert!(err.to_string().contains("migrations"), "{err}");
    }
}
