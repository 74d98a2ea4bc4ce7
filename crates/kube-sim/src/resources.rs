//! The resources the server knows: the built-in table, the resources of
//! established CRDs, and the documents derived from them (legacy discovery,
//! and the OpenAPI v3 index kubectl reads to learn that the server validates
//! fields itself).

use std::sync::RwLock;

use serde_json::{Value, json};

use crate::object;
use crate::store::GroupResource;

/// One served resource.
#[derive(Debug, Clone)]
pub struct ResourceDef {
    pub group: String,
    /// Versions served, preferred first. Objects are stored once and served
    /// in any of them with `apiVersion` rewritten (no conversion).
    pub versions: Vec<String>,
    pub plural: String,
    pub singular: String,
    pub kind: String,
    pub namespaced: bool,
    pub short_names: Vec<String>,
    pub categories: Vec<String>,
    /// Subresources, e.g. "status", "log", "scale".
    pub subresources: Vec<String>,
    /// For custom resources: the CRD's schema of the storage version and its
    /// additional printer columns.
    pub crd: Option<CrdInfo>,
}

/// What a custom resource's CRD says beyond names.
#[derive(Debug, Clone)]
pub struct CrdInfo {
    /// openAPIV3Schema per served version.
    pub schemas: Vec<(String, Value)>,
    /// additionalPrinterColumns per served version.
    pub printer_columns: Vec<(String, Vec<Value>)>,
}

impl ResourceDef {
    pub fn gr(&self) -> GroupResource {
        GroupResource::new(&self.group, &self.plural)
    }

    pub fn preferred_version(&self) -> &str {
        &self.versions[0]
    }

    pub fn api_version(&self, version: &str) -> String {
        if self.group.is_empty() {
            version.to_string()
        } else {
            format!("{}/{version}", self.group)
        }
    }

    pub fn has_status(&self) -> bool {
        self.subresources.iter().any(|s| s == "status")
    }

    pub fn schema(&self, version: &str) -> Option<&Value> {
        self.crd
            .as_ref()?
            .schemas
            .iter()
            .find(|(v, _)| v == version)
            .map(|(_, s)| s)
    }
}

struct Builtin {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    all: bool,
    sub: &'static [&'static str],
}

#[allow(clippy::too_many_arguments)] // one row of the table below
const fn b(
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    short: &'static [&'static str],
    all: bool,
    sub: &'static [&'static str],
) -> Builtin {
    Builtin {
        group,
        version,
        plural,
        kind,
        namespaced,
        short,
        all,
        sub,
    }
}

/// The built-in resources. Those without a controller here are stored and
/// served only.
const BUILTINS: &[Builtin] = &[
    b(
        "",
        "v1",
        "namespaces",
        "Namespace",
        false,
        &["ns"],
        false,
        &["status", "finalize"],
    ),
    b(
        "",
        "v1",
        "nodes",
        "Node",
        false,
        &["no"],
        false,
        &["status"],
    ),
    b(
        "",
        "v1",
        "pods",
        "Pod",
        true,
        &["po"],
        true,
        &["status", "log", "exec", "attach", "portforward"],
    ),
    b(
        "",
        "v1",
        "services",
        "Service",
        true,
        &["svc"],
        true,
        &["status"],
    ),
    b(
        "",
        "v1",
        "endpoints",
        "Endpoints",
        true,
        &["ep"],
        false,
        &[],
    ),
    b(
        "",
        "v1",
        "configmaps",
        "ConfigMap",
        true,
        &["cm"],
        false,
        &[],
    ),
    b("", "v1", "secrets", "Secret", true, &[], false, &[]),
    b(
        "",
        "v1",
        "serviceaccounts",
        "ServiceAccount",
        true,
        &["sa"],
        false,
        &[],
    ),
    b("", "v1", "events", "Event", true, &["ev"], false, &[]),
    b(
        "",
        "v1",
        "persistentvolumeclaims",
        "PersistentVolumeClaim",
        true,
        &["pvc"],
        false,
        &["status"],
    ),
    b(
        "",
        "v1",
        "persistentvolumes",
        "PersistentVolume",
        false,
        &["pv"],
        false,
        &["status"],
    ),
    b(
        "",
        "v1",
        "resourcequotas",
        "ResourceQuota",
        true,
        &["quota"],
        false,
        &["status"],
    ),
    b(
        "",
        "v1",
        "limitranges",
        "LimitRange",
        true,
        &["limits"],
        false,
        &[],
    ),
    b(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        true,
        &["deploy"],
        true,
        &["status", "scale"],
    ),
    b(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        true,
        &["rs"],
        true,
        &["status", "scale"],
    ),
    b(
        "apps",
        "v1",
        "statefulsets",
        "StatefulSet",
        true,
        &["sts"],
        true,
        &["status", "scale"],
    ),
    b(
        "apps",
        "v1",
        "daemonsets",
        "DaemonSet",
        true,
        &["ds"],
        true,
        &["status"],
    ),
    b("batch", "v1", "jobs", "Job", true, &[], true, &["status"]),
    b(
        "batch",
        "v1",
        "cronjobs",
        "CronJob",
        true,
        &["cj"],
        true,
        &["status"],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "roles",
        "Role",
        true,
        &[],
        false,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterroles",
        "ClusterRole",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "rolebindings",
        "RoleBinding",
        true,
        &[],
        false,
        &[],
    ),
    b(
        "rbac.authorization.k8s.io",
        "v1",
        "clusterrolebindings",
        "ClusterRoleBinding",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "apiextensions.k8s.io",
        "v1",
        "customresourcedefinitions",
        "CustomResourceDefinition",
        false,
        &["crd", "crds"],
        false,
        &["status"],
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "mutatingwebhookconfigurations",
        "MutatingWebhookConfiguration",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "admissionregistration.k8s.io",
        "v1",
        "validatingwebhookconfigurations",
        "ValidatingWebhookConfiguration",
        false,
        &[],
        false,
        &[],
    ),
    b(
        "coordination.k8s.io",
        "v1",
        "leases",
        "Lease",
        true,
        &[],
        false,
        &[],
    ),
    b(
        "policy",
        "v1",
        "poddisruptionbudgets",
        "PodDisruptionBudget",
        true,
        &["pdb"],
        false,
        &["status"],
    ),
    b(
        "networking.k8s.io",
        "v1",
        "networkpolicies",
        "NetworkPolicy",
        true,
        &["netpol"],
        false,
        &[],
    ),
    b(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        true,
        &["ing"],
        false,
        &["status"],
    ),
    b(
        "autoscaling",
        "v2",
        "horizontalpodautoscalers",
        "HorizontalPodAutoscaler",
        true,
        &["hpa"],
        true,
        &["status"],
    ),
    b(
        "storage.k8s.io",
        "v1",
        "storageclasses",
        "StorageClass",
        false,
        &["sc"],
        false,
        &[],
    ),
    b(
        "scheduling.k8s.io",
        "v1",
        "priorityclasses",
        "PriorityClass",
        false,
        &["pc"],
        false,
        &[],
    ),
];

fn builtin_defs() -> Vec<ResourceDef> {
    BUILTINS
        .iter()
        .map(|r| ResourceDef {
            group: r.group.into(),
            versions: vec![r.version.into()],
            plural: r.plural.into(),
            singular: r.kind.to_lowercase(),
            kind: r.kind.into(),
            namespaced: r.namespaced,
            short_names: r.short.iter().map(|s| s.to_string()).collect(),
            categories: if r.all { vec!["all".into()] } else { vec![] },
            subresources: r.sub.iter().map(|s| s.to_string()).collect(),
            crd: None,
        })
        .collect()
}

/// The definition of a built-in resource by group and kind.
pub fn builtin(group: &str, kind: &str) -> Option<ResourceDef> {
    builtin_defs()
        .into_iter()
        .find(|r| r.group == group && r.kind == kind)
}

/// Kubernetes' version priority: GA before beta before alpha, higher numbers
/// first, anything else last in name order.
fn version_rank(v: &str) -> (u8, i64, i64, String) {
    let parse = |s: &str| -> Option<(u8, i64, i64)> {
        let rest = s.strip_prefix('v')?;
        let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let major: i64 = digits.parse().ok()?;
        let tail = &rest[digits.len()..];
        if tail.is_empty() {
            return Some((0, -major, 0));
        }
        for (kind, prefix) in [(1u8, "beta"), (2u8, "alpha")] {
            if let Some(n) = tail.strip_prefix(prefix) {
                let minor: i64 = n.parse().ok()?;
                return Some((kind, -major, -minor));
            }
        }
        None
    };
    match parse(v) {
        Some((k, a, b)) => (k, a, b, String::new()),
        None => (3, 0, 0, v.to_string()),
    }
}

/// Sorts versions by Kubernetes' priority.
pub fn sort_versions(versions: &mut [String]) {
    versions.sort_by_key(|v| version_rank(v));
}

/// The table of served resources: built-ins plus established CRDs.
pub struct Registry {
    builtins: Vec<ResourceDef>,
    crds: RwLock<Vec<ResourceDef>>,
}

impl Default for Registry {
    fn default() -> Self {
        Self::new()
    }
}

impl Registry {
    pub fn new() -> Self {
        Self {
            builtins: builtin_defs(),
            crds: RwLock::new(Vec::new()),
        }
    }

    /// Every served resource.
    pub fn all(&self) -> Vec<ResourceDef> {
        let crds = self.crds.read().unwrap_or_else(|e| e.into_inner());
        self.builtins.iter().chain(crds.iter()).cloned().collect()
    }

    /// The resource served at `group/version/plural`.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<ResourceDef> {
        self.all().into_iter().find(|r| {
            r.group == group && r.plural == plural && r.versions.iter().any(|v| v == version)
        })
    }

    /// Replaces the CRD resources with those of `crds` that are established.
    /// Returns whether the set changed.
    pub fn sync_crds(&self, crds: &[Value]) -> bool {
        let defs: Vec<ResourceDef> = crds
            .iter()
            .filter(|c| object::condition_true(c, "Established") && !object::is_deleting(c))
            .filter_map(crd_resource)
            .collect();
        let mut cur = self.crds.write().unwrap_or_else(|e| e.into_inner());
        let changed = cur.len() != defs.len()
            || cur.iter().zip(&defs).any(|(a, b)| {
                a.group != b.group
                    || a.plural != b.plural
                    || a.versions != b.versions
                    || a.subresources != b.subresources
                    || a.short_names != b.short_names
            });
        *cur = defs;
        changed
    }

    /// Groups with their versions (preferred first), core group excluded.
    pub fn groups(&self) -> Vec<(String, Vec<String>)> {
        let mut out: Vec<(String, Vec<String>)> = Vec::new();
        for r in self.all() {
            if r.group.is_empty() {
                continue;
            }
            match out.iter_mut().find(|(g, _)| *g == r.group) {
                Some((_, vs)) => {
                    for v in &r.versions {
                        if !vs.contains(v) {
                            vs.push(v.clone());
                        }
                    }
                }
                None => out.push((r.group.clone(), r.versions.clone())),
            }
        }
        for (_, vs) in &mut out {
            sort_versions(vs);
        }
        out
    }

    /// The resources served in `group/version`.
    pub fn in_group_version(&self, group: &str, version: &str) -> Vec<ResourceDef> {
        self.all()
            .into_iter()
            .filter(|r| r.group == group && r.versions.iter().any(|v| v == version))
            .collect()
    }
}

/// The resource an established CRD defines.
fn crd_resource(crd: &Value) -> Option<ResourceDef> {
    let spec = crd.get("spec")?;
    let names = spec.get("names")?;
    let plural = names.get("plural")?.as_str()?.to_string();
    let kind = names.get("kind")?.as_str()?.to_string();
    let mut versions: Vec<String> = object::array_at(spec, "/versions")
        .iter()
        .filter(|v| v.get("served").and_then(Value::as_bool) != Some(false))
        .filter_map(|v| v.get("name").and_then(Value::as_str).map(str::to_string))
        .collect();
    if versions.is_empty() {
        return None;
    }
    sort_versions(&mut versions);
    let mut subresources = Vec::new();
    let mut schemas = Vec::new();
    let mut printer_columns = Vec::new();
    for v in object::array_at(spec, "/versions") {
        let name = object::str_at(v, "/name").to_string();
        if v.pointer("/subresources/status").is_some()
            && !subresources.contains(&"status".to_string())
        {
            subresources.push("status".to_string());
        }
        if v.pointer("/subresources/scale").is_some()
            && !subresources.contains(&"scale".to_string())
        {
            subresources.push("scale".to_string());
        }
        if let Some(s) = v.pointer("/schema/openAPIV3Schema") {
            schemas.push((name.clone(), s.clone()));
        }
        printer_columns.push((
            name,
            object::array_at(v, "/additionalPrinterColumns").to_vec(),
        ));
    }
    Some(ResourceDef {
        group: object::str_at(spec, "/group").to_string(),
        versions,
        singular: names
            .get("singular")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_lowercase()),
        plural,
        kind,
        namespaced: object::str_at(spec, "/scope") != "Cluster",
        short_names: object::array_at(names, "/shortNames")
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        categories: object::array_at(names, "/categories")
            .iter()
            .filter_map(|s| s.as_str().map(str::to_string))
            .collect(),
        subresources,
        crd: Some(CrdInfo {
            schemas,
            printer_columns,
        }),
    })
}

const ALL_VERBS: &[&str] = &[
    "create",
    "delete",
    "deletecollection",
    "get",
    "list",
    "patch",
    "update",
    "watch",
];

/// The entries of an APIResourceList for one resource and its subresources.
fn resource_entries(r: &ResourceDef) -> Vec<Value> {
    let mut main = json!({
        "name": r.plural,
        "singularName": r.singular,
        "namespaced": r.namespaced,
        "kind": r.kind,
        "verbs": ALL_VERBS,
    });
    if !r.short_names.is_empty() {
        main["shortNames"] = json!(r.short_names);
    }
    if !r.categories.is_empty() {
        main["categories"] = json!(r.categories);
    }
    let mut out = vec![main];
    for sub in &r.subresources {
        let (kind, verbs, group_version): (&str, &[&str], Option<(&str, &str)>) = match sub.as_str()
        {
            "status" => (&r.kind, &["get", "patch", "update"], None),
            "scale" => (
                "Scale",
                &["get", "patch", "update"],
                Some(("autoscaling", "v1")),
            ),
            "log" => ("Pod", &["get"], None),
            "exec" => ("PodExecOptions", &["create", "get"], None),
            "attach" => ("PodAttachOptions", &["create", "get"], None),
            "portforward" => ("PodPortForwardOptions", &["create", "get"], None),
            "finalize" => ("Namespace", &["update"], None),
            _ => continue,
        };
        let mut e = json!({
            "name": format!("{}/{sub}", r.plural),
            "singularName": "",
            "namespaced": r.namespaced,
            "kind": kind,
            "verbs": verbs,
        });
        if let Some((g, v)) = group_version {
            e["group"] = json!(g);
            e["version"] = json!(v);
        }
        out.push(e);
    }
    out
}

/// `/api/v1` or `/apis/<group>/<version>`.
pub fn api_resource_list(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs = registry.in_group_version(group, version);
    if defs.is_empty() {
        return None;
    }
    let group_version = if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    };
    let resources: Vec<Value> = defs.iter().flat_map(resource_entries).collect();
    Some(json!({
        "kind": "APIResourceList",
        "apiVersion": "v1",
        "groupVersion": group_version,
        "resources": resources,
    }))
}

fn api_group(name: &str, versions: &[String]) -> Value {
    let vs: Vec<Value> = versions
        .iter()
        .map(|v| json!({"groupVersion": format!("{name}/{v}"), "version": v}))
        .collect();
    json!({
        "name": name,
        "versions": vs,
        "preferredVersion": vs[0],
    })
}

/// `/apis`.
pub fn api_group_list(registry: &Registry) -> Value {
    let groups: Vec<Value> = registry
        .groups()
        .iter()
        .map(|(g, vs)| api_group(g, vs))
        .collect();
    json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
}

/// `/apis/<group>`.
pub fn api_group_doc(registry: &Registry, group: &str) -> Option<Value> {
    let (_, vs) = registry.groups().into_iter().find(|(g, _)| g == group)?;
    let mut doc = api_group(group, &vs);
    doc["kind"] = json!("APIGroup");
    doc["apiVersion"] = json!("v1");
    Some(doc)
}

/// `/api`.
pub fn api_versions(server_address: &str) -> Value {
    json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    })
}

/// `/openapi/v3`: one entry per group/version. kubectl reads it to learn
/// whether PATCH takes `fieldValidation`, i.e. whether the server validates
/// fields itself; with a yes it sends `fieldValidation=Strict` instead of
/// validating client-side against full schemas (which the sim does not have).
pub fn openapi_v3_index(registry: &Registry) -> Value {
    let mut paths = serde_json::Map::new();
    let mut gvs = vec![(String::new(), "v1".to_string())];
    for (g, vs) in registry.groups() {
        for v in vs {
            gvs.push((g.clone(), v));
        }
    }
    for (g, v) in gvs {
        let key = if g.is_empty() {
            format!("api/{v}")
        } else {
            format!("apis/{g}/{v}")
        };
        let url = format!("/openapi/v3/{key}?hash={}", openapi_hash(registry, &g, &v));
        paths.insert(key, json!({"serverRelativeURL": url}));
    }
    json!({"paths": paths})
}

fn openapi_hash(registry: &Registry, group: &str, version: &str) -> String {
    let names: Vec<String> = registry
        .in_group_version(group, version)
        .iter()
        .map(|r| format!("{}:{}", r.plural, r.kind))
        .collect();
    object::template_hash(&json!(names))
}

/// `/openapi/v3/<api/v1 | apis/g/v>`: paths with the PATCH operation of each
/// kind (its group-version-kind and the `fieldValidation` parameter) and an
/// open schema per kind. Not a full OpenAPI document: no field schemas.
pub fn openapi_v3_group_version(registry: &Registry, group: &str, version: &str) -> Option<Value> {
    let defs = registry.in_group_version(group, version);
    if defs.is_empty() {
        return None;
    }
    let prefix = if group.is_empty() {
        format!("/api/{version}")
    } else {
        format!("/apis/{group}/{version}")
    };
    let mut paths = serde_json::Map::new();
    let mut schemas = serde_json::Map::new();
    for r in &defs {
        let gvk = json!({"group": r.group, "version": version, "kind": r.kind});
        let item_path = if r.namespaced {
            format!("{prefix}/namespaces/{{namespace}}/{}/{{name}}", r.plural)
        } else {
            format!("{prefix}/{}/{{name}}", r.plural)
        };
        let params = json!([
            {"name": "dryRun", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": true}},
            {"name": "force", "in": "query", "schema": {"type": "boolean", "uniqueItems": true}},
        ]);
        let op = |action: &str| {
            json!({
                "operationId": format!("{action}{}", r.kind),
                "x-kubernetes-action": action,
                "x-kubernetes-group-version-kind": gvk,
                "responses": {"200": {"description": "OK"}},
            })
        };
        let mut patch = op("patch");
        patch["parameters"] = params;
        let mut item = serde_json::Map::new();
        item.insert("get".into(), op("get"));
        item.insert("put".into(), op("put"));
        item.insert("patch".into(), patch);
        item.insert("delete".into(), op("delete"));
        paths.insert(item_path, Value::Object(item));
        let schema_name = format!(
            "{}.{version}.{}",
            if r.group.is_empty() {
                "io.k8s.api.core"
            } else {
                &r.group
            },
            r.kind
        );
        let mut schema = r.schema(version).cloned().unwrap_or_else(
            || json!({"type": "object", "x-kubernetes-preserve-unknown-fields": true}),
        );
        schema["x-kubernetes-group-version-kind"] = json!([gvk]);
        schemas.insert(schema_name, schema);
    }
    Some(json!({
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes", "version": crate::KUBE_VERSION},
        "paths": paths,
        "components": {"schemas": schemas},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_priority() {
        let mut v: Vec<String> = ["v1alpha1", "v2beta1", "v1", "foo", "v1beta2", "v2"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        sort_versions(&mut v);
        assert_eq!(v, ["v2", "v1", "v2beta1", "v1beta2", "v1alpha1", "foo"]);
    }

    #[test]
    fn discovery_lists_builtins_with_short_names_and_subresources() {
        let reg = Registry::new();
        let apps = api_resource_list(&reg, "apps", "v1").unwrap();
        let res = apps["resources"].as_array().unwrap();
        let deploy = res.iter().find(|r| r["name"] == "deployments").unwrap();
        assert_eq!(deploy["shortNames"], json!(["deploy"]));
        assert_eq!(deploy["kind"], "Deployment");
        assert!(res.iter().any(|r| r["name"] == "deployments/status"));
        let scale = res
            .iter()
            .find(|r| r["name"] == "deployments/scale")
            .unwrap();
        assert_eq!(scale["group"], "autoscaling");
        let core = api_resource_list(&reg, "", "v1").unwrap();
        assert!(
            core["resources"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["name"] == "pods/log")
        );
        assert!(api_resource_list(&reg, "example.com", "v1").is_none());
    }

    #[test]
    fn crds_are_served_once_established() {
        let reg = Registry::new();
        let mut crd = json!({
            "metadata": {"name": "widgets.example.com"},
            "spec": {"group": "example.com", "scope": "Namespaced",
                     "names": {"plural": "widgets", "kind": "Widget", "shortNames": ["wd"]},
                     "versions": [{"name": "v1alpha1", "served": true, "storage": false},
                                  {"name": "v1", "served": true, "storage": true, "subresources": {"status": {}}}]}
        });
        assert!(!reg.sync_crds(std::slice::from_ref(&crd)));
        assert!(reg.find("example.com", "v1", "widgets").is_none());
        crd["status"] = json!({"conditions": [{"type": "Established", "status": "True"}]});
        assert!(reg.sync_crds(std::slice::from_ref(&crd)));
        let def = reg.find("example.com", "v1alpha1", "widgets").unwrap();
        assert_eq!(def.versions, ["v1", "v1alpha1"]);
        assert!(def.has_status());
        let group = api_group_doc(&reg, "example.com").unwrap();
        assert_eq!(group["preferredVersion"]["version"], "v1");
        assert!(reg.sync_crds(&[]));
        assert!(reg.find("example.com", "v1", "widgets").is_none());
    }

    #[test]
    fn openapi_v3_declares_field_validation_on_patch() {
        let reg = Registry::new();
        let index = openapi_v3_index(&reg);
        assert!(
            index["paths"]["apis/apps/v1"]["serverRelativeURL"]
                .as_str()
                .unwrap()
                .starts_with("/openapi/v3/apis/apps/v1?hash=")
        );
        let doc = openapi_v3_group_version(&reg, "apps", "v1").unwrap();
        let op = &doc["paths"]["/apis/apps/v1/namespaces/{namespace}/deployments/{name}"]["patch"];
        assert_eq!(op["x-kubernetes-group-version-kind"]["kind"], "Deployment");
        assert!(
            op["parameters"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["name"] == "fieldValidation")
        );
    }
}
