//! The sim API server as kube-rs sees it: discovery, server-side apply,
//! selectors, watches, the simulated kubelet and controllers, and Status errors.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use futures::future::BoxFuture;
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Endpoints, Event, Namespace, Pod, Secret, Service};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{
    Api, DeleteParams, DynamicObject, ListParams, Patch, PatchParams, PostParams, WatchEvent,
    WatchParams,
};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::discovery::Discovery;
use kube::runtime::wait::{await_condition, conditions};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Config, ResourceExt};
use kube_sim::{ApiServer, ImageProbe, SimConfig, SimNode};
use serde_json::json;

const WORKER: &str = "sim-worker";

/// Images per node, changed by the tests while the server runs.
#[derive(Default)]
struct Images(Mutex<HashMap<String, HashSet<String>>>);

impl Images {
    fn load(&self, node: &str, image: &str) {
        self.0
            .lock()
            .unwrap()
            .entry(node.to_string())
            .or_default()
            .insert(image.to_string());
    }
}

struct Probe(Arc<Images>);

impl ImageProbe for Probe {
    fn images<'a>(&'a self, node: &'a str) -> BoxFuture<'a, Result<HashSet<String>, String>> {
        let set = self
            .0
            .0
            .lock()
            .unwrap()
            .get(node)
            .cloned()
            .unwrap_or_default();
        Box::pin(async move { Ok(set) })
    }
}

struct Sim {
    server: ApiServer,
    client: Client,
    images: Arc<Images>,
}

async fn start() -> Result<Sim> {
    let images = Arc::new(Images::default());
    let nodes = vec![
        SimNode {
            name: "sim-control-plane".into(),
            role: "control-plane".into(),
        },
        SimNode {
            name: WORKER.into(),
            role: "worker".into(),
        },
    ];
    let mut config = SimConfig::new("sim", nodes, Arc::new(Probe(images.clone())));
    config.kubelet_interval = Duration::from_millis(50);
    let server = ApiServer::start(config).await?;
    let kubeconfig = Kubeconfig::from_yaml(&server.kubeconfig())?;
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    let client = Client::try_from(config)?;
    Ok(Sim {
        server,
        client,
        images,
    })
}

fn ssa() -> PatchParams {
    PatchParams::apply("kube-sim-test").force()
}

async fn wait<T>(what: &str, fut: impl std::future::Future<Output = T>) -> Result<T> {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .with_context(|| format!("timed out waiting for {what}"))
}

async fn create_namespace(client: &Client, name: &str) -> Result<()> {
    let api: Api<Namespace> = Api::all(client.clone());
    api.patch(
        name,
        &ssa(),
        &Patch::Apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})),
    )
    .await?;
    Ok(())
}

fn deployment(name: &str, image: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": image, "imagePullPolicy": "Never",
                                         "ports": [{"containerPort": 8080, "name": "http"}]}]}
            }
        }
    })
}

fn api_error(e: kube::Error) -> Result<kube::core::Status> {
    match e {
        kube::Error::Api(status) => Ok(*status),
        other => bail!("expected an API error, got {other:?}"),
    }
}

#[tokio::test]
async fn discovery_lists_builtin_groups_and_resources() -> Result<()> {
    let sim = start().await?;
    let discovery = Discovery::new(sim.client.clone()).run().await?;
    let groups: HashSet<String> = discovery.groups().map(|g| g.name().to_string()).collect();
    for g in [
        "",
        "apps",
        "batch",
        "rbac.authorization.k8s.io",
        "apiextensions.k8s.io",
        "admissionregistration.k8s.io",
    ] {
        assert!(groups.contains(g), "group {g:?} missing from {groups:?}");
    }
    let (deploy, caps) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "apps",
            "v1",
            "Deployment",
        ))
        .context("Deployment not discovered")?;
    assert_eq!(deploy.plural, "deployments");
    assert!(
        caps.subresources
            .iter()
            .any(|(r, _)| r.plural == "deployments/status" || r.plural == "status")
    );
    let (pods, caps) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk("", "v1", "Pod"))
        .context("Pod not discovered")?;
    assert_eq!(pods.plural, "pods");
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);

    let nodes: Api<k8s_openapi::api::core::v1::Node> = Api::all(sim.client.clone());
    let list = nodes.list(&ListParams::default()).await?;
    let names: Vec<String> = list.items.iter().map(|n| n.name_any()).collect();
    assert_eq!(names, ["sim-control-plane", "sim-worker"]);
    let cp = &list.items[0];
    assert!(
        cp.labels()
            .contains_key("node-role.kubernetes.io/control-plane")
    );
    assert_eq!(cp.labels()["kubernetes.io/hostname"], "sim-control-plane");
    let version = sim.client.apiserver_version().await?;
    assert_eq!(version.major, "1");
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn server_side_apply_creates_then_updates() -> Result<()> {
    let sim = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    let first = cms
        .patch(
            "settings",
            &ssa(),
            &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "labels": {"team": "a"}},
            "data": {"a": "1", "b": "2"}})),
        )
        .await?;
    let rv1 = first.resource_version().unwrap();
    assert_eq!(first.data.as_ref().unwrap()["a"], "1");
    assert!(first.metadata.uid.is_some());
    assert!(
        first
            .metadata
            .managed_fields
            .as_ref()
            .is_some_and(|m| m[0].manager.as_deref() == Some("kube-sim-test"))
    );

    // A second apply changes a value and stops applying `b`: b goes away.
    let second = cms
        .patch(
            "settings",
            &ssa(),
            &Patch::Apply(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "settings", "labels": {"team": "a"}},
            "data": {"a": "10"}})),
        )
        .await?;
    assert_ne!(second.resource_version().unwrap(), rv1);
    assert_eq!(second.metadata.uid, first.metadata.uid);
    assert_eq!(
        second.data.as_ref().unwrap().get("a").map(String::as_str),
        Some("10")
    );
    assert!(
        second.data.as_ref().unwrap().get("b").is_none(),
        "{:?}",
        second.data
    );

    // Typed objects, and a spec change bumps generation.
    let deploys: Api<Deployment> = Api::namespaced(sim.client.clone(), "default");
    let d: Deployment = serde_json::from_value(deployment("web", "nginx:1.27"))?;
    let created = deploys.patch("web", &ssa(), &Patch::Apply(&d)).await?;
    assert_eq!(created.metadata.generation, Some(1));
    let mut d2 = d.clone();
    d2.spec.as_mut().unwrap().replicas = Some(3);
    let updated = deploys.patch("web", &ssa(), &Patch::Apply(&d2)).await?;
    assert_eq!(updated.metadata.generation, Some(2));
    assert_eq!(updated.spec.unwrap().replicas, Some(3));

    // The body must name what the URL names.
    let err = cms
        .patch(
            "other",
            &ssa(),
            &Patch::Apply(
                json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}}),
            ),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err)?.code, 400);
    let err = cms
        .patch(
            "x",
            &ssa(),
            &Patch::Apply(json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "x"}})),
        )
        .await
        .unwrap_err();
    assert_eq!(api_error(err)?.code, 400);

    // Strategic merge and JSON merge patches.
    let patched = deploys
        .patch("web", &PatchParams::default(), &Patch::Strategic(json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "nginx:1.28"}]}}}})))
        .await?;
    let c = &patched
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap()
        .containers[0];
    assert_eq!(c.image.as_deref(), Some("nginx:1.28"));
    assert_eq!(
        c.ports.as_ref().unwrap()[0].container_port,
        8080,
        "merged by name, ports kept"
    );
    let merged = cms
        .patch(
            "settings",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"c": "3"}})),
        )
        .await?;
    assert_eq!(merged.data.unwrap().len(), 2);
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn lists_filter_by_label_and_field_selectors() -> Result<()> {
    let sim = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    for (name, labels) in [
        ("a", json!({"tier": "front", "env": "dev"})),
        ("b", json!({"tier": "front", "env": "prod"})),
        ("c", json!({"tier": "back", "env": "qa", "legacy": "yes"})),
        ("d", json!({"env": "dev"})),
    ] {
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": name, "labels": labels}}))?,
        )
        .await?;
    }
    let names = |l: kube::core::ObjectList<ConfigMap>| -> Vec<String> {
        l.items.iter().map(|c| c.name_any()).collect()
    };
    let q = |s: &str| ListParams::default().labels(s);
    assert_eq!(names(cms.list(&q("tier=front")).await?), ["a", "b"]);
    assert_eq!(names(cms.list(&q("tier==front,env!=prod")).await?), ["a"]);
    assert_eq!(
        names(cms.list(&q("env in (dev, qa)")).await?),
        ["a", "c", "d"]
    );
    assert_eq!(
        names(cms.list(&q("env notin (dev),tier")).await?),
        ["b", "c"]
    );
    assert_eq!(names(cms.list(&q("legacy")).await?), ["c"]);
    assert_eq!(names(cms.list(&q("!tier,env")).await?), ["d"]);
    assert_eq!(
        names(
            cms.list(&ListParams::default().fields("metadata.name=b"))
                .await?
        ),
        ["b"]
    );
    let all = cms.list(&ListParams::default().limit(2)).await?;
    assert!(all.items.len() >= 4, "limit is ignored, not an error");
    let generated: ConfigMap =
        serde_json::from_value(json!({"metadata": {"generateName": "gen-"}}))?;
    let name = cms
        .create(&PostParams::default(), &generated)
        .await?
        .name_any();
    assert!(name.starts_with("gen-") && name.len() == 9, "{name}");
    let err = cms.list(&q("env in dev")).await.unwrap_err();
    assert_eq!(api_error(err)?.code, 400);
    sim.server.shutdown().await;
    Ok(())
}

fn waiting_reason(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .state
        .as_ref()?
        .waiting
        .as_ref()?
        .reason
        .clone()
}

#[tokio::test]
async fn deployment_becomes_available_once_its_local_image_is_loaded() -> Result<()> {
    let sim = start().await?;
    create_namespace(&sim.client, "shop").await?;
    let image = "localhost/kubernaut/datastorage:datastorage-0123456789ab";
    let deploys: Api<Deployment> = Api::namespaced(sim.client.clone(), "shop");
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), "shop");
    deploys
        .patch("store", &ssa(), &Patch::Apply(deployment("store", image)))
        .await?;

    // The pod waits with ErrImageNeverPull while the node lacks the image.
    let stream =
        watcher(pods.clone(), watcher::Config::default().labels("app=store")).applied_objects();
    let mut stream = std::pin::pin!(stream);
    let stuck = wait("ErrImageNeverPull", async {
        while let Some(p) = stream.try_next().await? {
            if waiting_reason(&p).as_deref() == Some("ErrImageNeverPull") {
                return Ok::<_, anyhow::Error>(p);
            }
        }
        bail!("watch ended")
    })
    .await??;
    let msg = stuck
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .waiting
        .as_ref()
        .unwrap()
        .message
        .clone()
        .unwrap();
    assert_eq!(
        msg,
        format!("Container image \"{image}\" is not present with pull policy of Never")
    );
    assert_eq!(
        stuck.spec.as_ref().unwrap().node_name.as_deref(),
        Some(WORKER)
    );
    let name = stuck.name_any();
    assert!(
        name.starts_with("store-") && name.len() == "store-".len() + 10 + 1 + 5,
        "{name}"
    );
    assert_eq!(stuck.owner_references()[0].kind, "ReplicaSet");
    let d = deploys.get("store").await?;
    let available = d
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Available"))
        .unwrap();
    assert_eq!(available.status, "False");
    let events: Api<Event> = Api::namespaced(sim.client.clone(), "shop");
    let evs = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?;
    assert!(
        evs.items
            .iter()
            .any(|e| e.reason.as_deref() == Some("ErrImageNeverPull")),
        "{:?}",
        evs.items.iter().map(|e| &e.reason).collect::<Vec<_>>()
    );

    // Loading the image (short name form on the node) lets it start.
    sim.images.load(WORKER, image);
    let available = |d: Option<&Deployment>| {
        d.and_then(|d| {
            d.status
                .as_ref()?
                .conditions
                .as_ref()?
                .iter()
                .find(|c| c.type_ == "Available")
                .map(|c| {
                    c.status == "True" && c.reason.as_deref() == Some("MinimumReplicasAvailable")
                })
        })
        .unwrap_or(false)
    };
    let d = wait(
        "Available",
        await_condition(deploys.clone(), "store", available),
    )
    .await??
    .unwrap();
    let st = d.status.unwrap();
    assert_eq!(
        (
            st.ready_replicas,
            st.available_replicas,
            st.updated_replicas
        ),
        (Some(1), Some(1), Some(1))
    );
    assert_eq!(st.observed_generation, d.metadata.generation);
    let running = pods.get(&name).await?;
    assert_eq!(
        running.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    assert!(
        running
            .status
            .as_ref()
            .unwrap()
            .pod_ip
            .as_ref()
            .unwrap()
            .starts_with("10.244.")
    );
    let evs = events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await?;
    let reasons: Vec<String> = evs.items.iter().filter_map(|e| e.reason.clone()).collect();
    for r in ["Scheduled", "Pulled", "Created", "Started"] {
        assert!(
            reasons.iter().any(|x| x == r),
            "{r} missing from {reasons:?}"
        );
    }
    let logs = pods.logs(&name, &Default::default()).await?;
    assert!(logs.contains("runs no containers"), "{logs}");

    // A Service gets the ready pod as an endpoint, via the named port.
    let services: Api<Service> = Api::namespaced(sim.client.clone(), "shop");
    services
        .patch("store", &ssa(), &Patch::Apply(json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "store"},
            "spec": {"type": "NodePort", "selector": {"app": "store"}, "ports": [{"port": 80, "targetPort": "http", "nodePort": 30080}]}})))
        .await?;
    let eps: Api<Endpoints> = Api::namespaced(sim.client.clone(), "shop");
    let ep = wait(
        "endpoints",
        await_condition(eps, "store", |e: Option<&Endpoints>| {
            e.and_then(|e| e.subsets.as_ref())
                .is_some_and(|s| s.iter().any(|s| s.addresses.is_some()))
        }),
    )
    .await??
    .unwrap();
    let subset = &ep.subsets.unwrap()[0];
    assert_eq!(subset.ports.as_ref().unwrap()[0].port, 8080);
    assert_eq!(
        subset.addresses.as_ref().unwrap()[0].ip,
        running.status.unwrap().pod_ip.unwrap()
    );
    let svc = services.get("store").await?;
    assert!(
        svc.spec
            .as_ref()
            .unwrap()
            .cluster_ip
            .as_ref()
            .unwrap()
            .starts_with("10.96.")
    );
    let clash = services
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "clash"},
            "spec": {"type": "NodePort", "ports": [{"port": 80, "nodePort": 30080}]}}))?,
        )
        .await
        .unwrap_err();
    let status = api_error(clash)?;
    assert_eq!(status.code, 422);
    assert!(
        status
            .message
            .contains("provided port is already allocated"),
        "{}",
        status.message
    );

    // Scaling adds a pod.
    deploys
        .patch(
            "store",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 2}})),
        )
        .await?;
    wait(
        "2 ready",
        await_condition(deploys.clone(), "store", |d: Option<&Deployment>| {
            d.and_then(|d| d.status.as_ref()?.ready_replicas) == Some(2)
        }),
    )
    .await??;

    // A template change replaces the pods through a new ReplicaSet.
    let v2 = "localhost/kubernaut/datastorage:datastorage-v2";
    sim.images.load(WORKER, v2);
    let patch =
        json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": v2}]}}}});
    let changed = deploys
        .patch("store", &PatchParams::default(), &Patch::Strategic(patch))
        .await?;
    assert_eq!(changed.metadata.generation, Some(3));
    wait("rollout", async {
        loop {
            let list = pods
                .list(&ListParams::default().labels("app=store"))
                .await?;
            let images: Vec<String> = list
                .items
                .iter()
                .filter_map(|p| p.spec.as_ref()?.containers[0].image.clone())
                .collect();
            let st = deploys.get("store").await?.status.unwrap_or_default();
            if images.len() == 2
                && images.iter().all(|i| i == v2)
                && st.updated_replicas == Some(2)
                && st.available_replicas == Some(2)
                && st.observed_generation == Some(3)
            {
                return Ok::<_, anyhow::Error>(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await??;
    let rss: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::namespaced(sim.client.clone(), "shop");
    let mut sizes: Vec<i32> = rss
        .list(&ListParams::default())
        .await?
        .items
        .iter()
        .filter_map(|r| r.spec.as_ref()?.replicas)
        .collect();
    sizes.sort();
    assert_eq!(sizes, [0, 2], "the old ReplicaSet is scaled to zero");
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_pulled_localhost_image_backs_off_and_recovers() -> Result<()> {
    let sim = start().await?;
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), "default");
    let pod: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"containers": [{"name": "c", "image": "localhost/app:v2"}]}}))?;
    pods.create(&PostParams::default(), &pod).await?;
    wait(
        "ImagePullBackOff",
        await_condition(pods.clone(), "p", |p: Option<&Pod>| {
            p.and_then(waiting_reason).as_deref() == Some("ImagePullBackOff")
        }),
    )
    .await??;
    sim.images.load(WORKER, "localhost/app:v2");
    wait(
        "Running",
        await_condition(pods.clone(), "p", conditions::is_pod_running()),
    )
    .await??;
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn a_job_completes() -> Result<()> {
    let sim = start().await?;
    let jobs: Api<Job> = Api::namespaced(sim.client.clone(), "default");
    jobs.patch("migrate", &ssa(), &Patch::Apply(json!({
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "migrate"},
        "spec": {"template": {"spec": {"restartPolicy": "Never",
                 "containers": [{"name": "m", "image": "docker.io/library/busybox:1", "command": ["true"]}]}}}})))
        .await?;
    let job = wait(
        "Complete",
        await_condition(jobs.clone(), "migrate", conditions::is_job_completed()),
    )
    .await??
    .unwrap();
    let st = job.status.unwrap();
    assert_eq!(st.succeeded, Some(1));
    assert!(st.completion_time.is_some());
    let types: Vec<&str> = st
        .conditions
        .as_ref()
        .unwrap()
        .iter()
        .map(|c| c.type_.as_str())
        .collect();
    assert!(
        types.contains(&"Complete") && types.contains(&"SuccessCriteriaMet"),
        "{types:?}"
    );
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), "default");
    let list = pods
        .list(&ListParams::default().labels("job-name=migrate"))
        .await?;
    assert_eq!(list.items.len(), 1);
    assert_eq!(
        list.items[0].status.as_ref().unwrap().phase.as_deref(),
        Some("Succeeded")
    );
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn statefulsets_and_daemonsets_run_their_pods() -> Result<()> {
    let sim = start().await?;
    let template = json!({"metadata": {"labels": {"app": "db"}},
        "spec": {"containers": [{"name": "db", "image": "postgres:16"}]}});
    let sts: Api<StatefulSet> = Api::namespaced(sim.client.clone(), "default");
    sts.patch("db", &ssa(), &Patch::Apply(json!({"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": "db"},
        "spec": {"replicas": 2, "serviceName": "db", "selector": {"matchLabels": {"app": "db"}}, "template": template,
                 "volumeClaimTemplates": [{"metadata": {"name": "data"}, "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}}]}})))
        .await?;
    let s = wait(
        "sts ready",
        await_condition(sts.clone(), "db", |s: Option<&StatefulSet>| {
            s.and_then(|s| s.status.as_ref()?.ready_replicas) == Some(2)
        }),
    )
    .await??
    .unwrap();
    assert_eq!(s.status.unwrap().updated_replicas, Some(2));
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), "default");
    let mut names: Vec<String> = pods
        .list(&ListParams::default().labels("app=db"))
        .await?
        .items
        .iter()
        .map(|p| p.name_any())
        .collect();
    names.sort();
    assert_eq!(names, ["db-0", "db-1"]);
    let pvcs: Api<k8s_openapi::api::core::v1::PersistentVolumeClaim> =
        Api::namespaced(sim.client.clone(), "default");
    assert!(pvcs.get_opt("data-db-1").await?.is_some());

    // The control plane is tainted (there is a worker): one daemon pod, unless tolerated.
    let ds: Api<DaemonSet> = Api::namespaced(sim.client.clone(), "default");
    let daemon = |name: &str, tolerate: bool| {
        let mut spec = json!({"containers": [{"name": "agent", "image": "agent:1"}]});
        if tolerate {
            spec["tolerations"] = json!([{"key": "node-role.kubernetes.io/control-plane", "operator": "Exists", "effect": "NoSchedule"}]);
        }
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
               "spec": {"selector": {"matchLabels": {"app": name}}, "template": {"metadata": {"labels": {"app": name}}, "spec": spec}}})
    };
    ds.patch("agent", &ssa(), &Patch::Apply(daemon("agent", false)))
        .await?;
    ds.patch(
        "everywhere",
        &ssa(),
        &Patch::Apply(daemon("everywhere", true)),
    )
    .await?;
    for (name, n) in [("agent", 1), ("everywhere", 2)] {
        let d = wait(
            "ds ready",
            await_condition(ds.clone(), name, move |d: Option<&DaemonSet>| {
                d.and_then(|d| d.status.as_ref())
                    .is_some_and(|s| s.number_ready == n)
            }),
        )
        .await??
        .unwrap();
        assert_eq!(d.status.unwrap().desired_number_scheduled, n);
    }
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn crds_become_established_and_serve_custom_resources() -> Result<()> {
    let sim = start().await?;
    let crds: Api<CustomResourceDefinition> = Api::all(sim.client.clone());
    crds.patch("widgets.example.com", &ssa(), &Patch::Apply(json!({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "widgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "widgets", "singular": "widget", "kind": "Widget", "shortNames": ["wd"]},
                 "versions": [{"name": "v1", "served": true, "storage": true, "subresources": {"status": {}},
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "required": ["size"], "properties": {"size": {"type": "integer"}}},
                                   "status": {"type": "object", "properties": {"ready": {"type": "boolean"}}}}}}}]}})))
        .await?;
    wait(
        "Established",
        await_condition(
            crds.clone(),
            "widgets.example.com",
            conditions::is_crd_established(),
        ),
    )
    .await??;

    let discovery = Discovery::new(sim.client.clone()).run().await?;
    let (ar, caps) = discovery
        .resolve_gvk(&kube::api::GroupVersionKind::gvk(
            "example.com",
            "v1",
            "Widget",
        ))
        .context("Widget not discovered")?;
    assert_eq!(caps.scope, kube::discovery::Scope::Namespaced);
    let widgets: Api<DynamicObject> = Api::namespaced_with(sim.client.clone(), "default", &ar);
    let mut w = DynamicObject::new("w1", &ar);
    w.data = json!({"spec": {"size": 3}});
    let applied = widgets.patch("w1", &ssa(), &Patch::Apply(&w)).await?;
    assert_eq!(applied.data["spec"]["size"], 3);
    assert_eq!(widgets.list(&ListParams::default()).await?.items.len(), 1);

    // Status goes through the status subresource only.
    let with_status = widgets
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}, "spec": {"size": 4}})),
        )
        .await?;
    assert!(
        with_status.data.get("status").is_none(),
        "status ignored on the main resource"
    );
    assert_eq!(with_status.data["spec"]["size"], 4);
    let st = widgets
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"ready": true}})),
        )
        .await?;
    assert_eq!(st.data["status"]["ready"], true);

    // The schema is enforced.
    let mut bad = DynamicObject::new("w2", &ar);
    bad.data = json!({"spec": {"size": "big"}});
    let status = api_error(
        widgets
            .patch("w2", &ssa(), &Patch::Apply(&bad))
            .await
            .unwrap_err(),
    )?;
    assert_eq!(status.code, 422);
    assert!(status.message.contains("spec.size"), "{}", status.message);

    // Deleting the CRD deletes its resources and stops serving the group.
    crds.delete("widgets.example.com", &DeleteParams::default())
        .await?;
    let uid = crds
        .get_opt("widgets.example.com")
        .await?
        .and_then(|c| c.metadata.uid);
    if let Some(uid) = uid {
        wait(
            "CRD gone",
            await_condition(
                crds.clone(),
                "widgets.example.com",
                conditions::is_deleted(&uid),
            ),
        )
        .await??;
    }
    let discovery = Discovery::new(sim.client.clone()).run().await?;
    assert!(!discovery.has_group("example.com"));
    let err = widgets.get("w1").await.unwrap_err();
    assert_eq!(api_error(err)?.code, 404);
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn deleting_a_namespace_removes_its_contents() -> Result<()> {
    let sim = start().await?;
    create_namespace(&sim.client, "doomed").await?;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "doomed");
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "c"}}))?,
    )
    .await?;
    let deploys: Api<Deployment> = Api::namespaced(sim.client.clone(), "doomed");
    deploys
        .patch("web", &ssa(), &Patch::Apply(deployment("web", "nginx")))
        .await?;
    let sas: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(sim.client.clone(), "doomed");
    assert!(
        sas.get_opt("default").await?.is_some(),
        "namespaces get a default ServiceAccount"
    );

    let namespaces: Api<Namespace> = Api::all(sim.client.clone());
    let uid = namespaces.get("doomed").await?.metadata.uid.unwrap();
    let deleted = namespaces
        .delete("doomed", &DeleteParams::default())
        .await?;
    let ns = deleted
        .left()
        .context("a namespace is deleted in the background")?;
    assert_eq!(ns.status.unwrap().phase.as_deref(), Some("Terminating"));
    let status = api_error(
        cms.create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "late"}}))?,
        )
        .await
        .unwrap_err(),
    )?;
    assert_eq!(status.code, 403);
    wait(
        "namespace gone",
        await_condition(namespaces.clone(), "doomed", conditions::is_deleted(&uid)),
    )
    .await??;
    assert_eq!(api_error(cms.get("c").await.unwrap_err())?.code, 404);
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), "doomed");
    assert!(pods.list(&ListParams::default()).await?.items.is_empty());
    assert!(deploys.list(&ListParams::default()).await?.items.is_empty());
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn owner_references_garbage_collect_dependents() -> Result<()> {
    let sim = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner"}}))?,
        )
        .await?;
    let secrets: Api<Secret> = Api::namespaced(sim.client.clone(), "default");
    let dep: Secret = serde_json::from_value(
        json!({"metadata": {"name": "dependent", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner", "uid": owner.metadata.uid}]},
        "stringData": {"k": "v"}}),
    )?;
    let dep = secrets.create(&PostParams::default(), &dep).await?;
    assert_eq!(dep.data.unwrap()["k"].0, b"v");
    cms.delete("owner", &DeleteParams::default()).await?;
    let uid = dep.metadata.uid.unwrap();
    wait(
        "dependent collected",
        await_condition(secrets.clone(), "dependent", conditions::is_deleted(&uid)),
    )
    .await??;

    // Deleting a Deployment takes its ReplicaSet and pods with it.
    let deploys: Api<Deployment> = Api::namespaced(sim.client.clone(), "default");
    deploys
        .patch("web", &ssa(), &Patch::Apply(deployment("web", "nginx:1")))
        .await?;
    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), "default");
    wait("pod", async {
        while pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .map(|l| l.items.len())
            .unwrap_or(0)
            == 0
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    deploys.delete("web", &DeleteParams::default()).await?;
    wait("pods collected", async {
        while !pods
            .list(&ListParams::default().labels("app=web"))
            .await
            .map(|l| l.items.is_empty())
            .unwrap_or(false)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await?;
    let rss: Api<k8s_openapi::api::apps::v1::ReplicaSet> =
        Api::namespaced(sim.client.clone(), "default");
    assert!(rss.list(&ListParams::default()).await?.items.is_empty());

    // Finalizers hold an object until they are removed.
    let held: ConfigMap = serde_json::from_value(
        json!({"metadata": {"name": "held", "finalizers": ["example.com/hold"]}}),
    )?;
    cms.create(&PostParams::default(), &held).await?;
    let pending = cms
        .delete("held", &DeleteParams::default())
        .await?
        .left()
        .context("held by its finalizer")?;
    assert!(pending.metadata.deletion_timestamp.is_some());
    assert!(cms.get("held").await?.metadata.deletion_timestamp.is_some());
    cms.patch(
        "held",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"finalizers": null}})),
    )
    .await?;
    assert!(cms.get_opt("held").await?.is_none());

    // Orphaning keeps dependents and drops the reference.
    let owner = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "owner2"}}))?,
        )
        .await?;
    let dep: Secret = serde_json::from_value(
        json!({"metadata": {"name": "kept", "ownerReferences": [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "owner2", "uid": owner.metadata.uid}]}}),
    )?;
    secrets.create(&PostParams::default(), &dep).await?;
    cms.delete("owner2", &DeleteParams::orphan()).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = secrets.get("kept").await?;
    assert!(
        kept.metadata
            .owner_references
            .unwrap_or_default()
            .is_empty()
    );
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn errors_are_status_objects_with_the_right_codes() -> Result<()> {
    let sim = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    let status = api_error(cms.get("nope").await.unwrap_err())?;
    assert_eq!((status.code, status.reason.as_str()), (404, "NotFound"));
    assert_eq!(status.message, "configmaps \"nope\" not found");

    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "dup"}}))?;
    let created = cms.create(&PostParams::default(), &cm).await?;
    let status = api_error(cms.create(&PostParams::default(), &cm).await.unwrap_err())?;
    assert_eq!(
        (status.code, status.reason.as_str()),
        (409, "AlreadyExists")
    );

    // A stale resourceVersion on update conflicts.
    let mut stale = created.clone();
    cms.patch(
        "dup",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"x": "1"}})),
    )
    .await?;
    stale.data = Some([("y".to_string(), "2".to_string())].into());
    let status = api_error(
        cms.replace("dup", &PostParams::default(), &stale)
            .await
            .unwrap_err(),
    )?;
    assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));

    let deploys: Api<Deployment> = Api::namespaced(sim.client.clone(), "default");
    let mut bad = deployment("bad", "nginx");
    bad["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
    let status = api_error(
        deploys
            .patch("bad", &ssa(), &Patch::Apply(bad))
            .await
            .unwrap_err(),
    )?;
    assert_eq!((status.code, status.reason.as_str()), (422, "Invalid"));
    assert!(
        status
            .message
            .starts_with("Deployment.apps \"bad\" is invalid: spec.template.metadata.labels"),
        "{}",
        status.message
    );

    let mut typo = deployment("typo", "nginx");
    typo["spec"]["replicas"] = json!("two");
    let status = api_error(
        deploys
            .patch("typo", &ssa(), &Patch::Apply(typo))
            .await
            .unwrap_err(),
    )?;
    assert_eq!(status.code, 422);
    assert!(
        status.message.contains("spec.replicas"),
        "{}",
        status.message
    );

    let mut unknown = deployment("unknown", "nginx");
    unknown["spec"]["replica"] = json!(2);
    let strict = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..ssa()
    };
    let status = api_error(
        deploys
            .patch("unknown", &strict, &Patch::Apply(unknown.clone()))
            .await
            .unwrap_err(),
    )?;
    assert_eq!(status.code, 400);
    assert!(
        status.message.contains("unknown field \"spec.replica\""),
        "{}",
        status.message
    );
    // Without Strict the unknown field is dropped (with a warning).
    let created = deploys
        .patch("unknown", &ssa(), &Patch::Apply(unknown))
        .await?;
    assert_eq!(created.spec.unwrap().replicas, Some(1));

    let elsewhere: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "missing");
    let status = api_error(
        elsewhere
            .create(&PostParams::default(), &cm)
            .await
            .unwrap_err(),
    )?;
    assert_eq!(
        (status.code, status.message.as_str()),
        (404, "namespaces \"missing\" not found")
    );

    let bad_name: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "Bad_Name"}}))?;
    let status = api_error(
        cms.create(&PostParams::default(), &bad_name)
            .await
            .unwrap_err(),
    )?;
    assert_eq!(status.code, 422);

    // POST to an object's URL is not a verb the API has.
    let addr = sim.server.url().trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await?;
    let request = format!(
        "POST /api/v1/namespaces/default/configmaps/dup HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes()).await?;
    let mut raw = String::new();
    tokio::io::AsyncReadExt::read_to_string(&mut conn, &mut raw).await?;
    assert!(raw.starts_with("HTTP/1.1 405"), "{raw}");
    assert!(raw.contains("\"reason\":\"MethodNotAllowed\""), "{raw}");

    let pods: Api<Pod> = Api::namespaced(sim.client.clone(), "default");
    let no_sa: Pod = serde_json::from_value(json!({"metadata": {"name": "p"},
        "spec": {"serviceAccountName": "ghost", "containers": [{"name": "c", "image": "x:1"}]}}))?;
    let status = api_error(
        pods.create(&PostParams::default(), &no_sa)
            .await
            .unwrap_err(),
    )?;
    assert_eq!(status.code, 403);
    assert!(
        status
            .message
            .contains("serviceaccount \"ghost\" not found"),
        "{}",
        status.message
    );
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn watches_resume_from_a_resource_version() -> Result<()> {
    let sim = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    let created = cms
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "w", "labels": {"watch": "me"}}}))?,
        )
        .await?;
    let rv = created.resource_version().unwrap();
    cms.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"data": {"a": "1"}})),
    )
    .await?;
    cms.delete("w", &DeleteParams::default()).await?;

    let wp = WatchParams::default().labels("watch=me").timeout(5);
    let events: Vec<WatchEvent<ConfigMap>> =
        wait("events", cms.watch(&wp, &rv).await?.take(2).try_collect()).await??;
    assert!(
        matches!(&events[0], WatchEvent::Modified(c) if c.data.as_ref().is_some_and(|d| d["a"] == "1")),
        "{events:?}"
    );
    assert!(matches!(&events[1], WatchEvent::Deleted(c) if c.name_any() == "w"));

    // From "0": the current state as ADDED, then changes.
    cms.create(
        &PostParams::default(),
        &serde_json::from_value(json!({"metadata": {"name": "x", "labels": {"watch": "me"}}}))?,
    )
    .await?;
    let mut stream = std::pin::pin!(cms.watch(&wp, "0").await?);
    let first = wait("ADDED", stream.try_next()).await??;
    assert!(matches!(first, Some(WatchEvent::Added(c)) if c.name_any() == "x"));
    cms.patch(
        "x",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"watch": "no"}}})),
    )
    .await?;
    let gone = wait("DELETED", stream.try_next()).await??;
    assert!(
        matches!(gone, Some(WatchEvent::Deleted(_))),
        "an object leaving the selector is DELETED for the watch: {gone:?}"
    );

    // A watcher with bookmarks and streaming lists (sendInitialEvents) both work.
    let streaming = watcher::Config::default()
        .streaming_lists()
        .labels("watch=no");
    let seen = wait(
        "streaming list",
        watcher(cms.clone(), streaming)
            .applied_objects()
            .boxed()
            .try_next(),
    )
    .await??;
    assert_eq!(seen.map(|c| c.name_any()).as_deref(), Some("x"));
    sim.server.shutdown().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_ends_in_flight_watches() -> Result<()> {
    let sim = start().await?;
    let cms: Api<ConfigMap> = Api::namespaced(sim.client.clone(), "default");
    let mut stream = cms
        .watch(&WatchParams::default().timeout(290), "0")
        .await?
        .boxed();
    // The namespace's own objects arrive first.
    assert!(matches!(
        wait("first event", stream.try_next()).await??,
        Some(WatchEvent::Added(_))
    ));
    let started = std::time::Instant::now();
    sim.server.shutdown().await;
    let ended = wait("watch to end", async {
        while let Ok(Some(_)) = stream.try_next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the watch outlived the server");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "shutdown took {:?}",
        started.elapsed()
    );
    Ok(())
}
