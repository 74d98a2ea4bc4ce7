//! The tasks a service's setup is made of, on a shared [`SetupContext`]:
//! build an image, create the cluster, load an image, deploy a component and
//! wait for it, check an HTTP endpoint, run the suite. A service crate calls
//! these on a [`Setup`] to declare its environment; the scheduler decides when
//! each runs.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::{Outcome, Plan, TaskError, TaskId, TaskKind};
use crate::cluster::spec::ClusterSpec;
use crate::cluster::{self, Cluster, ClusterOptions, Provider};
use crate::deploy::Applier;
use crate::deploy::health::{HealthCheck, wait_healthy};
use crate::engine::Engine;
use crate::image::{BuiltImage, E2eImageConfig, build_image_for_kind};
use crate::load::{LoadMethod, load_image_to_kind_with};
use crate::stack::Component;

/// Label carrying the id of the run that created an object or container.
pub const LABEL_RUN_ID: &str = "io.kind-e2e.run-id";
/// Label carrying the service whose run created it.
pub const LABEL_SERVICE: &str = "io.kind-e2e.service";

/// What every task of one run shares.
pub struct SetupContext {
    pub engine: Engine,
    pub service: String,
    pub run_id: String,
    /// `target/e2e/<run-id>/`: build logs, diagnostics, report.
    pub run_dir: PathBuf,
    pub provider: Provider,
    pub cluster_options: ClusterOptions,
    pub load_method: LoadMethod,
    /// Build every image from scratch (no cache), e.g. to measure builds.
    pub rebuild: bool,
    /// A coverage run: workloads running instrumented images write
    /// coverage data ([`crate::coverage`]).
    pub coverage: bool,
    coverage_targets: Mutex<Vec<crate::coverage::Target>>,
    cluster: OnceCell<Cluster>,
    /// Set the moment this run starts making its cluster (not when it found
    /// one): only then may teardown delete a cluster by that name.
    creating_cluster: std::sync::atomic::AtomicBool,
    applier: OnceCell<Applier>,
    images: Mutex<HashMap<String, BuiltImage>>,
}

impl SetupContext {
    pub fn new(
        engine: Engine,
        service: &str,
        run_id: &str,
        run_dir: PathBuf,
        provider: Provider,
        mut cluster_options: ClusterOptions,
    ) -> SetupContext {
        cluster_options
            .labels
            .insert(LABEL_RUN_ID.into(), run_id.to_string());
        cluster_options
            .labels
            .insert(LABEL_SERVICE.into(), service.to_string());
        cluster_options.log_dir = run_dir.clone();
        SetupContext {
            engine,
            service: service.to_string(),
            run_id: run_id.to_string(),
            run_dir,
            provider,
            cluster_options,
            load_method: LoadMethod::Stream,
            rebuild: false,
            coverage: false,
            coverage_targets: Mutex::new(Vec::new()),
            cluster: OnceCell::new(),
            creating_cluster: Default::default(),
            applier: OnceCell::new(),
            images: Mutex::new(HashMap::new()),
        }
    }

    /// The cluster, once its task has run.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.cluster.get()
    }

    /// Whether this run started making its cluster (even if it did not
    /// finish): a cluster that existed before the run is never this run's.
    pub fn created_cluster(&self) -> bool {
        self.creating_cluster
            .load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Takes the cluster out (for teardown).
    pub fn take_cluster(&mut self) -> Option<Cluster> {
        self.cluster.take()
    }

    /// The image built by the task named `build <image>`.
    pub fn image(&self, key: &str) -> Option<BuiltImage> {
        self.images
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(key)
            .cloned()
    }

    /// Every image built so far, by key.
    pub fn images(&self) -> BTreeMap<String, BuiltImage> {
        self.images
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The workloads deployed with coverage output so far.
    pub fn coverage_targets(&self) -> Vec<crate::coverage::Target> {
        self.coverage_targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// In a coverage run, points the workloads of `component` that run an
    /// instrumented image at their coverage folder, and remembers them.
    fn instrument(&self, component: &mut Component) {
        if !self.coverage {
            return;
        }
        let instrumented = self
            .images()
            .into_values()
            .filter(|i| i.coverage)
            .map(|i| i.reference)
            .collect();
        let targets =
            crate::coverage::instrument(&mut component.objects, &instrumented, &self.run_id);
        let mut known = self
            .coverage_targets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for target in targets {
            if !known.contains(&target) {
                known.push(target);
            }
        }
    }

    fn labels(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (LABEL_RUN_ID.to_string(), self.run_id.clone()),
            (LABEL_SERVICE.to_string(), self.service.clone()),
        ])
    }

    fn applier(&self) -> Result<&Applier, TaskError> {
        self.applier.get().ok_or_else(|| {
            TaskError::msg("the cluster task has not run: declare it as a dependency")
        })
    }
}

/// Whether creating a cluster failed because one of that name appeared in the
/// meantime: kind says its nodes "already exist"; the engine refuses a node
/// container name "already in use".
fn made_by_someone_else(error: &cluster::ClusterError) -> bool {
    if matches!(error, cluster::ClusterError::Exists { .. }) {
        return true;
    }
    let text = crate::error_chain(error);
    text.contains("already exist") || text.contains("already in use")
}

/// An image declared in a setup: the key its build is stored under and the
/// build task.
#[derive(Debug, Clone)]
pub struct ImageTask {
    pub key: String,
    pub build: TaskId,
}

/// A deployed component: its apply task and the task after which it is
/// ready (the same task when there is nothing to wait for).
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    pub deploy: TaskId,
    pub ready: TaskId,
}

/// A setup being declared.
pub struct Setup {
    plan: Plan<SetupContext>,
    cluster: Option<TaskId>,
    images: Vec<E2eImageConfig>,
    coverage: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Setup::new()
    }
}

impl Setup {
    pub fn new() -> Setup {
        Setup {
            plan: Plan::new(),
            cluster: None,
            images: Vec::new(),
            coverage: false,
        }
    }

    /// A coverage run: every image [`Setup::build`] declares is built with
    /// `GOFLAGS=-cover`.
    pub fn with_coverage(mut self, on: bool) -> Setup {
        self.coverage = on;
        self
    }

    /// The plan, for the scheduler.
    pub fn into_plan(self) -> Plan<SetupContext> {
        self.plan
    }

    /// Builds an image (skipped when the engine has one from the same inputs).
    /// Its log goes to the run folder.
    pub fn build(&mut self, config: E2eImageConfig) -> ImageTask {
        let config = if self.coverage {
            config.coverage(true)
        } else {
            config
        };
        self.images.push(config.clone());
        let key = config.image_name.clone();
        let stored = key.clone();
        let build = self.plan.task(
            build_task_name(&config.image_name),
            TaskKind::Build,
            &[],
            move |ctx: Arc<SetupContext>| async move {
                let no_cache = config.no_cache || ctx.rebuild;
                let config = config.log_dir(&ctx.run_dir).no_cache(no_cache);
                let built = build_image_for_kind(&ctx.engine, &config)
                    .await
                    .map_err(|e| TaskError::new(&e))?;
                let outcome = Outcome::cached(built.cached).note(built.reference.clone());
                ctx.images
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(stored, built);
                Ok(outcome)
            },
        );
        ImageTask { key, build }
    }

    /// Makes a third-party image (PostgreSQL, Redis) exist in the engine:
    /// already there, pulled once, or built offline when no registry answers
    /// ([`crate::stack::images`]). Load it like a built image.
    pub fn third_party(&mut self, image: crate::stack::images::ThirdPartyImage) -> ImageTask {
        let key = image.key.clone();
        let stored = key.clone();
        let build = self.plan.task(
            format!("image {key}"),
            TaskKind::Build,
            &[],
            move |ctx: Arc<SetupContext>| async move {
                let (built, provenance) = crate::stack::images::provide(
                    &ctx.engine,
                    &image,
                    &crate::toolchain::default_cache(),
                    &ctx.run_dir,
                    ctx.rebuild,
                )
                .await
                .map_err(|e| TaskError::new(&e))?;
                let outcome = Outcome::cached(built.cached)
                    .note(format!("{}: {provenance}", built.reference));
                ctx.images
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .insert(stored, built);
                Ok(outcome)
            },
        );
        ImageTask { key, build }
    }

    /// Creates the cluster (or reuses it, per the run's options), and the
    /// client and applier every deploy task uses.
    pub fn cluster(&mut self, spec: ClusterSpec) -> TaskId {
        let id = self.plan.task(
            format!("create cluster {}", spec.name),
            TaskKind::Cluster,
            &[],
            move |ctx: Arc<SetupContext>| async move {
                let existing = cluster::find(&ctx.engine, &spec.name)
                    .await
                    .map_err(|e| TaskError::new(&e))?;
                if existing.is_none() {
                    ctx.creating_cluster
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                let cluster =
                    match cluster::create(&ctx.engine, ctx.provider, &spec, &ctx.cluster_options)
                        .await
                    {
                        Ok(cluster) => cluster,
                        Err(error) => {
                            // Another run made the same cluster between our
                            // look and our create: it is theirs, not ours.
                            if made_by_someone_else(&error) {
                                ctx.creating_cluster
                                    .store(false, std::sync::atomic::Ordering::SeqCst);
                            }
                            return Err(TaskError::new(&error));
                        }
                    };
                let reused = cluster.reused;
                let client = cluster.client().await.map_err(|e| TaskError::new(&e))?;
                let applier = Applier::new(client, format!("kind-e2e-{}", ctx.service))
                    .with_labels(ctx.labels())
                    .with_template_labels(BTreeMap::from([(
                        LABEL_SERVICE.to_string(),
                        ctx.service.clone(),
                    )]));
                let _ = ctx.applier.set(applier);
                let note = format!("{} nodes, {}", cluster.nodes.len(), ctx.provider);
                let _ = ctx.cluster.set(cluster);
                Ok(Outcome::cached(reused).note(note))
            },
        );
        self.cluster = Some(id);
        id
    }

    /// Loads `image` into every node of the cluster.
    #[allow(
        clippy::expect_used,
        reason = "a recipe bug, found while the plan is declared, before anything exists"
    )]
    pub fn load(&mut self, image: &ImageTask) -> TaskId {
        let cluster = self
            .cluster
            .expect("declare the cluster before loading into it");
        let key = image.key.clone();
        self.plan.task(
            load_task_name(&image.key),
            TaskKind::Load,
            &[image.build, cluster],
            move |ctx: Arc<SetupContext>| async move {
                let built = ctx
                    .image(&key)
                    .ok_or_else(|| TaskError::msg(format!("image {key} was not built")))?;
                let cluster = ctx
                    .cluster()
                    .ok_or_else(|| TaskError::msg("the cluster task did not run"))?;
                let report = load_image_to_kind_with(
                    &ctx.engine,
                    &built.reference,
                    &cluster.name,
                    ctx.load_method,
                )
                .await
                .map_err(|e| TaskError::new(&e))?;
                let skipped = report.nodes.iter().all(|n| n.skipped);
                Ok(Outcome::cached(skipped).note(format!("{} nodes", report.nodes.len())))
            },
        )
    }

    /// Applies `component` once `deps` are done, then waits for it to be ready.
    pub fn component(&mut self, component: Component, deps: &[TaskId]) -> Stage {
        if !component.ready.is_empty() {
            return self.component_with(component.name.clone(), deps, move |_| Ok(component));
        }
        // Nothing to wait for (a Namespace, a ConfigMap): one task.
        let mut all_deps = deps.to_vec();
        all_deps.extend(self.cluster);
        let deploy = self.plan.task(
            format!("deploy {}", component.name),
            TaskKind::Deploy,
            &all_deps,
            move |ctx: Arc<SetupContext>| async move {
                let applied = component
                    .deploy(ctx.applier()?)
                    .await
                    .map_err(|e| TaskError::new(&e))?;
                Ok(Outcome::done().note(format!("{} objects", applied.len())))
            },
        );
        Stage {
            deploy,
            ready: deploy,
        }
    }

    /// Like [`Setup::component`], with the component made at run time from
    /// the context (for example from the reference of an image built in this
    /// run, which is how the image that was loaded is the one deployed).
    pub fn component_with<F>(&mut self, name: String, deps: &[TaskId], make: F) -> Stage
    where
        F: FnOnce(&SetupContext) -> Result<Component, TaskError> + Send + 'static,
    {
        let mut all_deps = deps.to_vec();
        all_deps.extend(self.cluster);
        let made: Arc<Mutex<Option<Component>>> = Arc::default();
        let slot = made.clone();
        let deploy = self.plan.task(
            format!("deploy {name}"),
            TaskKind::Deploy,
            &all_deps,
            move |ctx: Arc<SetupContext>| async move {
                let mut component = make(&ctx)?;
                ctx.instrument(&mut component);
                let applied = component
                    .deploy(ctx.applier()?)
                    .await
                    .map_err(|e| TaskError::new(&e))?;
                let note = format!("{} objects", applied.len());
                *slot
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(component);
                Ok(Outcome::done().note(note))
            },
        );
        let ready = self.plan.task(
            format!("wait {name}"),
            TaskKind::Wait,
            &[deploy],
            move |ctx: Arc<SetupContext>| async move {
                let component = made
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .take()
                    .ok_or_else(|| TaskError::msg("the deploy task stored no component"))?;
                if component.ready.is_empty() {
                    return Ok(Outcome::done().note("nothing to wait for"));
                }
                let wait = component.wait(ctx.applier()?.client());
                tokio::select! {
                    waited = wait => waited.map_err(|e| TaskError::new(&e))?,
                    gone = node_gone(&ctx) => return Err(TaskError::msg(format!(
                        "waiting for {}: {gone}; the cluster cannot become ready (delete it \
                         with `cargo xtask cluster delete {}` and run again)",
                        component.name,
                        ctx.cluster().map(|c| c.name.as_str()).unwrap_or_default()
                    ))),
                }
                Ok(Outcome::done())
            },
        );
        Stage { deploy, ready }
    }

    /// Waits until `check` answers 2xx (host port, then port-forward). A
    /// simulated cluster runs no containers, so there it is skipped, saying so.
    pub fn health(&mut self, name: &str, check: HealthCheck, deps: &[TaskId]) -> TaskId {
        self.plan.task(
            format!("health {name}"),
            TaskKind::Wait,
            deps,
            move |ctx: Arc<SetupContext>| async move {
                if ctx.provider == Provider::Sim {
                    return Ok(Outcome::done().note("skipped: the sim cluster runs no containers"));
                }
                let client = ctx.applier()?.client().clone();
                wait_healthy(&client, &check)
                    .await
                    .map_err(|e| TaskError::new(&e))?;
                Ok(Outcome::done().note(check.url.clone()))
            },
        )
    }

    /// Any other task (the suite, a custom step).
    pub fn task<F, Fut>(
        &mut self,
        name: impl Into<String>,
        kind: TaskKind,
        deps: &[TaskId],
        action: F,
    ) -> TaskId
    where
        F: FnOnce(Arc<SetupContext>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Outcome, TaskError>> + Send + 'static,
    {
        self.plan.task(name, kind, deps, action)
    }

    /// The image configs of the build tasks, for plans.
    pub fn image_configs(&self) -> Vec<E2eImageConfig> {
        self.images.clone()
    }

    /// Every task declared so far (for "run the suite after everything").
    pub fn all_tasks(&self) -> Vec<TaskId> {
        (0..self.plan.len()).map(TaskId).collect()
    }
}

/// How often a wait looks at the cluster's node containers.
const NODE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// Resolves, naming the node, once one of the cluster's node containers is
/// removed or stops; never otherwise. A wait would otherwise sit out its
/// whole timeout (the API server notices a dead kubelet only after 40 s,
/// and a removed control plane never answers).
async fn node_gone(ctx: &SetupContext) -> String {
    let Some(cluster) = ctx.cluster() else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(NODE_CHECK_INTERVAL).await;
        let Ok(now) = crate::load::nodes::find_kind_nodes(&ctx.engine, &cluster.name).await else {
            // The engine not answering is not a node gone; the wait's own
            // timeout still bounds this.
            continue;
        };
        for node in &cluster.nodes {
            match now.iter().find(|n| n.name == node.name) {
                None => return format!("node {} of cluster {} is gone", node.name, cluster.name),
                Some(n) if n.state != "running" => {
                    return format!(
                        "node {} of cluster {} is {} (not running)",
                        node.name, cluster.name, n.state
                    );
                }
                Some(_) => {}
            }
        }
    }
}

/// The name of the task that builds image `image_name` (e.g.
/// `build example/api`), for tools that show plans.
pub fn build_task_name(image_name: &str) -> String {
    format!("build {image_name}")
}

/// The name of the task that loads image `key` into every node.
pub fn load_task_name(key: &str) -> String {
    format!("load {key}")
}
