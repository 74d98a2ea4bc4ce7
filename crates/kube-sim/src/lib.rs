//! An in-memory Kubernetes API server with a simulated kubelet and
//! controllers: the "sim" cluster, for rehearsing end-to-end environment
//! setups on machines where kind and a real API server cannot run.
//!
//! [`ApiServer::start`] serves the Kubernetes REST API over plain HTTP on
//! 127.0.0.1; [`ApiServer::kubeconfig`] gives a kubeconfig that kube-rs and
//! kubectl use as they would a kind cluster's (cluster, user and context are
//! all named `kind-<cluster>`).
//!
//! **No container ever runs.** The simulated kubelet schedules pods, checks
//! that their images are present on the node (through the caller's
//! [`ImageProbe`], e.g. containerd in node containers) and that the
//! ConfigMaps and Secrets they use exist, and then reports them Running and
//! Ready. Readiness and liveness probes are not executed; pods of Jobs (and
//! other pods with `restartPolicy` Never/OnFailure) succeed as soon as they
//! would start. Logs say so; exec, attach and port-forward are refused.
//!
//! What is modelled:
//! - discovery: `/api`, `/apis`, per group/version resource lists with short
//!   names, categories and subresources (legacy discovery: kubectl falls back
//!   to it), and the `/openapi/v3` index kubectl reads to hand field
//!   validation to the server (`fieldValidation=Strict`);
//! - create/get/list/watch/update/patch (JSON, merge, strategic merge,
//!   server-side apply)/delete/deletecollection for the built-in kinds in
//!   `resources.rs` and for custom resources of established CRDs, with
//!   label and field selectors, watch bookmarks and `sendInitialEvents`,
//!   status and scale subresources, finalizers, generateName, dry runs, and
//!   `kubectl get`'s server-side Table printing;
//! - validation (`validate.rs`): typed decoding with field paths, unknown
//!   fields (dropped with a warning, or 400 under Strict), CRD schemas, and
//!   the real server's basic checks and messages;
//! - controllers: Deployment (simplified rolling update), ReplicaSet,
//!   StatefulSet, DaemonSet, Job, Service ClusterIP/NodePort allocation and
//!   Endpoints, CRD establishment and cleanup, namespace lifecycle (default
//!   ServiceAccount, `kube-root-ca.crt`, deletion of contents), garbage
//!   collection by ownerReferences (background, foreground, orphan);
//! - the scheduler and kubelet in `kubelet.rs`, with the kubelet's Events.
//!
//! What is not: authentication and authorization (every request is
//! allowed), admission webhooks (their configurations are stored but never
//! called), field-manager conflicts in server-side apply (every apply is
//! forced; managedFields record only Apply operations), conversion between
//! CRD versions, aggregated discovery, `/openapi/v2` and full OpenAPI schemas
//! (so no `kubectl explain`), `events.k8s.io`, EndpointSlices, networking,
//! volumes and PersistentVolume binding, resource requests and quotas,
//! CronJob schedules, HPA, graceful termination (pods go away at once), and
//! protobuf request bodies except for v1 Namespace, ConfigMap, Secret and
//! ServiceAccount (what `kubectl create namespace|configmap|secret|
//! serviceaccount` sends).
//!
//! Hand-written parts and why: label/field selectors (small grammar, no
//! maintained crate), strategic merge patch and the apply merge (no Rust
//! implementation exists), name and hash generation (a few lines), and the
//! protobuf decoding of the four kinds kubectl's `create` generators send
//! most (a protobuf crate would still need Kubernetes' schemas).
//! RFC 6902 and RFC 7386 patches come from the `json-patch` crate; typed
//! validation from `k8s-openapi` with `serde_path_to_error` for field paths.

mod admission;
mod controllers;
mod http;
mod kubelet;
mod object;
mod patch;
mod printers;
mod protobuf;
mod resources;
mod selectors;
mod store;
mod validate;

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::sync::watch;
use tokio::task::JoinHandle;

k8s_openapi::k8s_if_1_33! { const KUBE_MINOR: &str = "33"; }
k8s_openapi::k8s_if_1_34! { const KUBE_MINOR: &str = "34"; }
k8s_openapi::k8s_if_1_35! { const KUBE_MINOR: &str = "35"; }
k8s_openapi::k8s_if_1_36! { const KUBE_MINOR: &str = "36"; }
k8s_openapi::k8s_if_1_37! { const KUBE_MINOR: &str = "37"; }

/// The Kubernetes version the sim reports: the one k8s-openapi is built for.
pub(crate) const KUBE_VERSION: &str = const_format_version();

const fn const_format_version() -> &'static str {
    // `concat!` cannot take a const; match the few possible values instead.
    match KUBE_MINOR.as_bytes() {
        b"33" => "v1.33.0",
        b"34" => "v1.34.0",
        b"35" => "v1.35.0",
        b"36" => "v1.36.0",
        _ => "v1.37.0",
    }
}

/// A node of the simulated cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimNode {
    /// Node name, e.g. `e2e-control-plane`, `e2e-worker`.
    pub name: String,
    /// `"control-plane"` or `"worker"`.
    pub role: String,
}

/// Tells the simulated kubelet which images a node has.
pub trait ImageProbe: Send + Sync + 'static {
    /// The image references present in `node`'s containerd (k8s.io namespace),
    /// e.g. "localhost/kubernaut/datastorage:datastorage-0123456789ab", "docker.io/library/busybox:1".
    fn images<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<HashSet<String>, String>>;
}

/// How to start a sim cluster.
#[derive(Clone)]
pub struct SimConfig {
    /// Cluster name; the kubeconfig names everything `kind-<cluster>`.
    pub cluster: String,
    pub nodes: Vec<SimNode>,
    pub probe: Arc<dyn ImageProbe>,
    /// Where to listen; default 127.0.0.1:0 (any free port).
    pub listen: SocketAddr,
    /// How often pending pods re-check their images (default 250 ms).
    pub kubelet_interval: Duration,
}

impl SimConfig {
    /// A config with the defaults for `listen` and `kubelet_interval`.
    pub fn new(
        cluster: impl Into<String>,
        nodes: Vec<SimNode>,
        probe: Arc<dyn ImageProbe>,
    ) -> Self {
        Self {
            cluster: cluster.into(),
            nodes,
            probe,
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            kubelet_interval: Duration::from_millis(250),
        }
    }
}

/// Why the sim could not start.
#[derive(Debug, thiserror::Error)]
pub enum SimError {
    /// The configuration cannot describe a cluster.
    #[error("invalid sim cluster configuration: {0}")]
    InvalidConfig(String),
    /// The listen address could not be bound.
    #[error("the sim API server cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// State shared by the HTTP handlers, the controllers and the kubelet.
pub(crate) struct Sim {
    pub store: store::Store,
    pub registry: resources::Registry,
    pub nodes: Vec<SimNode>,
    pub probe: Arc<dyn ImageProbe>,
    pub kubelet_interval: Duration,
    /// host:port clients reach the server at (for `/api`).
    pub server_address: String,
    pub shutdown: watch::Receiver<bool>,
    /// The last configuration each field manager applied to each object
    /// (by uid), so a later apply can drop fields the manager no longer sets.
    pub applied: Mutex<HashMap<(String, String), serde_json::Value>>,
}

/// Resolves once shutdown was requested (or the sender is gone).
pub(crate) async fn wait_shutdown(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// A running sim API server. Dropping it without [`ApiServer::shutdown`]
/// leaves the tasks running until the runtime ends.
pub struct ApiServer {
    addr: SocketAddr,
    cluster: String,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

fn check_config(config: &SimConfig) -> Result<(), SimError> {
    if config.cluster.is_empty() {
        return Err(SimError::InvalidConfig("the cluster name is empty".into()));
    }
    if config.nodes.is_empty() {
        return Err(SimError::InvalidConfig(
            "a cluster needs at least one node".into(),
        ));
    }
    let mut seen = HashSet::new();
    for n in &config.nodes {
        if !validate::dns1123_subdomain(&n.name).is_empty() {
            return Err(SimError::InvalidConfig(format!(
                "node name {:?} is not a valid DNS-1123 subdomain",
                n.name
            )));
        }
        if n.role != "control-plane" && n.role != "worker" {
            return Err(SimError::InvalidConfig(format!(
                "node {} has role {:?}; use \"control-plane\" or \"worker\"",
                n.name, n.role
            )));
        }
        if !seen.insert(n.name.as_str()) {
            return Err(SimError::InvalidConfig(format!(
                "node {} is listed twice",
                n.name
            )));
        }
    }
    if config.kubelet_interval.is_zero() {
        return Err(SimError::InvalidConfig(
            "kubelet_interval must be positive".into(),
        ));
    }
    Ok(())
}

impl ApiServer {
    /// Binds, seeds the cluster (namespaces, nodes, the `kubernetes`
    /// Service) and starts serving, with the controllers and kubelet running.
    pub async fn start(config: SimConfig) -> Result<ApiServer, SimError> {
        check_config(&config)?;
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .map_err(|source| SimError::Bind {
                addr: config.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| SimError::Bind {
            addr: config.listen,
            source,
        })?;
        let (shutdown_tx, shutdown_rx) = watch::channel(false);
        let sim = Arc::new(Sim {
            store: store::Store::new(),
            registry: resources::Registry::new(),
            nodes: config.nodes.clone(),
            probe: config.probe.clone(),
            kubelet_interval: config.kubelet_interval,
            server_address: addr.to_string(),
            shutdown: shutdown_rx.clone(),
            applied: Mutex::new(HashMap::new()),
        });
        controllers::seed(&sim);

        let mut tasks = Vec::new();
        let app = http::router(sim.clone());
        let mut stop = shutdown_rx.clone();
        tasks.push(tokio::spawn(async move {
            let graceful = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(graceful)
                .await
            {
                tracing::warn!("sim API server stopped: {e}");
            }
        }));
        tasks.push(tokio::spawn(controllers::run(sim.clone())));
        tasks.push(tokio::spawn(kubelet::run(sim.clone())));
        tracing::info!(cluster = %config.cluster, %addr, "sim API server started");
        Ok(ApiServer {
            addr,
            cluster: config.cluster,
            shutdown: shutdown_tx,
            tasks,
        })
    }

    /// The server's URL, `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A kubeconfig for this server, named like kind's (`kind-<cluster>`),
    /// with current-context set.
    pub fn kubeconfig(&self) -> String {
        let name = format!("kind-{}", self.cluster);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    server: {url}\n  name: {name}\ncontexts:\n- context:\n    cluster: {name}\n    user: {name}\n  name: {name}\ncurrent-context: {name}\npreferences: {{}}\nusers:\n- name: {name}\n  user: {{}}\n",
            url = self.url()
        )
    }

    /// Stops serving: in-flight watches end, controllers and kubelet stop.
    pub async fn shutdown(self) {
        let _ = self.shutdown.send(true);
        for task in self.tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                abort.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct NoImages;
    impl ImageProbe for NoImages {
        fn images<'a>(&'a self, _node: &'a str) -> BoxFuture<'a, Result<HashSet<String>, String>> {
            Box::pin(async { Ok(HashSet::new()) })
        }
    }

    #[test]
    fn config_is_checked() {
        let node = |n: &str, r: &str| SimNode {
            name: n.into(),
            role: r.into(),
        };
        let ok = SimConfig::new(
            "e2e",
            vec![node("e2e-control-plane", "control-plane")],
            Arc::new(NoImages),
        );
        assert!(check_config(&ok).is_ok());
        assert_eq!(ok.kubelet_interval, Duration::from_millis(250));
        let mut bad = ok.clone();
        bad.nodes.push(node("e2e-worker", "master"));
        assert!(
            matches!(check_config(&bad), Err(SimError::InvalidConfig(m)) if m.contains("role"))
        );
        let mut dup = ok.clone();
        dup.nodes.push(node("e2e-control-plane", "worker"));
        assert!(check_config(&dup).is_err());
        let mut none = ok;
        none.nodes.clear();
        assert!(check_config(&none).is_err());
    }

    #[tokio::test]
    async fn kubeconfig_names_follow_kind() {
        let config = SimConfig::new(
            "e2e",
            vec![SimNode {
                name: "e2e-control-plane".into(),
                role: "control-plane".into(),
            }],
            Arc::new(NoImages),
        );
        let server = ApiServer::start(config).await.unwrap();
        let kc = server.kubeconfig();
        assert!(kc.contains("current-context: kind-e2e\n"));
        assert!(kc.contains(&format!("server: {}\n", server.url())));
        assert!(server.url().starts_with("http://127.0.0.1:"));
        let parsed: serde_json::Value = yaml_serde::from_str(&kc).unwrap();
        assert_eq!(parsed["users"][0]["name"], "kind-e2e");
        server.shutdown().await;
    }
}
