//! The four PATCH flavours: JSON patch (RFC 6902) and JSON merge patch
//! (RFC 7386) through the `json-patch` crate, and, written here because no
//! crate implements them, Kubernetes' strategic merge patch and the merge step
//! of server-side apply.
//!
//! Both hand-written merges need to know which lists merge by a key. For
//! built-in kinds that comes from a table of the common fields (containers,
//! env, ports, volumes, volumeMounts, conditions, ...), which is what
//! Kubernetes' `patchMergeKey`/`listMapKeys` tags say for them; for custom
//! resources from the CRD schema's `x-kubernetes-list-type`.

use serde_json::{Map, Value};

/// The patch types the API server accepts, by Content-Type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchType {
    Json,
    Merge,
    Strategic,
    Apply,
}

impl PatchType {
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/json-patch+json" => Some(PatchType::Json),
            "application/merge-patch+json" => Some(PatchType::Merge),
            "application/strategic-merge-patch+json" => Some(PatchType::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+cbor" => {
                Some(PatchType::Apply)
            }
            _ => None,
        }
    }
}

/// How a list merges.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListMerge {
    /// The new list replaces the old one.
    Replace,
    /// Items are matched by these keys.
    Keyed(Vec<String>),
    /// A list of scalars merged as a set (e.g. finalizers).
    Set,
}

/// Where the list merge rules come from.
pub enum MergeRules<'a> {
    /// Built-in kinds: the table in [`builtin_list_merge`].
    Builtin,
    /// A custom resource: its CRD's OpenAPI v3 schema (`openAPIV3Schema`).
    Schema(&'a Value),
}

/// The merge rule for the list at `path` (field names from the object root).
pub fn builtin_list_merge(path: &[String], sample: &[Value]) -> ListMerge {
    let keyed = |k: &str| ListMerge::Keyed(vec![k.to_string()]);
    let field = path.last().map(String::as_str).unwrap_or("");
    match field {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "env"
        | "volumes"
        | "imagePullSecrets"
        | "resourceClaims"
        | "schedulingGates" => keyed("name"),
        "volumeMounts" => keyed("mountPath"),
        "volumeDevices" => keyed("devicePath"),
        "hostAliases" => keyed("ip"),
        "conditions" => keyed("type"),
        "ownerReferences" => keyed("uid"),
        "readinessGates" => keyed("conditionType"),
        "topologySpreadConstraints" => keyed("topologyKey"),
        "finalizers" => ListMerge::Set,
        "ports" => {
            if sample.iter().any(|i| i.get("containerPort").is_some()) {
                keyed("containerPort")
            } else if path.len() == 2
                && path[0] == "spec"
                && sample.iter().all(|i| i.get("port").is_some())
            {
                // Service ports.
                keyed("port")
            } else {
                ListMerge::Replace
            }
        }
        _ => ListMerge::Replace,
    }
}

/// The sub-schema at `path` in a CRD schema (properties / items / additionalProperties).
fn schema_at<'a>(schema: &'a Value, path: &[String]) -> Option<&'a Value> {
    let mut cur = schema;
    for seg in path {
        if seg == "[]" {
            cur = cur.get("items")?;
        } else if let Some(p) = cur.get("properties").and_then(|p| p.get(seg)) {
            cur = p;
        } else {
            cur = cur.get("additionalProperties").filter(|v| v.is_object())?;
        }
    }
    Some(cur)
}

impl MergeRules<'_> {
    fn list_merge(&self, path: &[String], sample: &[Value]) -> ListMerge {
        match self {
            MergeRules::Builtin => {
                let fields: Vec<String> = path.iter().filter(|s| *s != "[]").cloned().collect();
                builtin_list_merge(&fields, sample)
            }
            MergeRules::Schema(schema) => {
                let Some(s) = schema_at(schema, path) else {
                    return ListMerge::Replace;
                };
                match s.get("x-kubernetes-list-type").and_then(Value::as_str) {
                    Some("map") => ListMerge::Keyed(
                        s.get("x-kubernetes-list-map-keys")
                            .and_then(Value::as_array)
                            .map(|a| {
                                a.iter()
                                    .filter_map(|k| k.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default(),
                    ),
                    Some("set") => ListMerge::Set,
                    _ => ListMerge::Replace,
                }
            }
        }
    }
}

/// Applies an RFC 6902 JSON patch.
pub fn json_patch(target: &Value, patch: &Value) -> Result<Value, String> {
    let ops: json_patch::Patch =
        serde_json::from_value(patch.clone()).map_err(|e| format!("invalid JSON patch: {e}"))?;
    let mut doc = target.clone();
    json_patch::patch(&mut doc, &ops).map_err(|e| e.to_string())?;
    Ok(doc)
}

/// Applies an RFC 7386 JSON merge patch.
pub fn merge_patch(target: &Value, patch: &Value) -> Value {
    let mut doc = target.clone();
    json_patch::merge(&mut doc, patch);
    doc
}

fn item_matches(item: &Value, other: &Value, keys: &[String]) -> bool {
    !keys.is_empty()
        && keys
            .iter()
            .all(|k| item.get(k).is_some() && item.get(k) == other.get(k))
}

/// Applies a strategic merge patch (built-in kinds only, like the real server).
///
/// Supports `null` deletes, keyed list merges, scalar-set merges, and the
/// directives `$patch: replace|delete|merge`, `$retainKeys`,
/// `$deleteFromPrimitiveList/<field>` and `$setElementOrder/<field>` (accepted,
/// order not enforced).
pub fn strategic_merge(target: &Value, patch: &Value) -> Result<Value, String> {
    let mut path = Vec::new();
    smp_value(target, patch, &mut path)
}

fn smp_value(target: &Value, patch: &Value, path: &mut Vec<String>) -> Result<Value, String> {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => smp_map(t, p, path),
        (_, Value::Object(p)) => smp_map(&Map::new(), p, path),
        _ => Ok(patch.clone()),
    }
}

fn smp_map(
    target: &Map<String, Value>,
    patch: &Map<String, Value>,
    path: &mut Vec<String>,
) -> Result<Value, String> {
    match patch.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut m = patch.clone();
            m.remove("$patch");
            return Ok(Value::Object(strip_directives(m)));
        }
        Some("delete") => return Ok(Value::Null),
        Some("merge") | None => {}
        Some(other) => return Err(format!("unknown patch type: {other}")),
    }
    let mut out = target.clone();
    if let Some(retain) = patch.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = retain.iter().filter_map(Value::as_str).collect();
        out.retain(|k, _| keep.contains(&k.as_str()));
    }
    for (k, v) in patch {
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            if let (Some(Value::Array(list)), Some(del)) = (out.get_mut(field), v.as_array()) {
                list.retain(|x| !del.contains(x));
            }
            continue;
        }
        if k.starts_with('$') {
            continue;
        }
        if v.is_null() {
            out.remove(k);
            continue;
        }
        path.push(k.clone());
        let merged = match (out.get(k), v) {
            (Some(Value::Array(t)), Value::Array(p)) => smp_list(t, p, path)?,
            (Some(t), _) => smp_value(t, v, path)?,
            (None, Value::Array(p)) => smp_list(&[], p, path)?,
            (None, _) => smp_value(&Value::Null, v, path)?,
        };
        path.pop();
        if merged.is_null() {
            out.remove(k);
        } else {
            out.insert(k.clone(), merged);
        }
    }
    Ok(Value::Object(out))
}

fn strip_directives(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|k, _| !k.starts_with('$'));
    m
}

fn smp_list(target: &[Value], patch: &[Value], path: &mut Vec<String>) -> Result<Value, String> {
    // `$patch: replace` as a list element replaces the whole list.
    if patch
        .iter()
        .any(|i| i.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        let items = patch
            .iter()
            .filter(|i| i.get("$patch").is_none())
            .cloned()
            .collect();
        return Ok(Value::Array(items));
    }
    match builtin_list_merge(path, patch) {
        ListMerge::Keyed(keys) => {
            let mut out: Vec<Value> = target.to_vec();
            for item in patch {
                let pos = out.iter().position(|t| item_matches(t, item, &keys));
                let delete = item.get("$patch").and_then(Value::as_str) == Some("delete");
                match (pos, delete) {
                    (Some(i), true) => {
                        out.remove(i);
                    }
                    (None, true) => {}
                    (Some(i), false) => out[i] = smp_value(&out[i], item, path)?,
                    (None, false) => out.push(smp_value(&Value::Null, item, path)?),
                }
            }
            Ok(Value::Array(out))
        }
        ListMerge::Set => {
            let mut out = target.to_vec();
            for item in patch {
                if !out.contains(item) {
                    out.push(item.clone());
                }
            }
            Ok(Value::Array(out))
        }
        ListMerge::Replace => Ok(Value::Array(patch.to_vec())),
    }
}

/// The merge step of server-side apply: the applied configuration's fields
/// win; maps merge recursively; keyed lists merge item by item; other lists
/// are replaced. Field ownership between managers is not modelled (every
/// apply behaves as if forced), and fields a manager stops applying are
/// removed by [`remove_unapplied`] before the merge.
pub fn apply_merge(live: &Value, applied: &Value, rules: &MergeRules<'_>) -> Value {
    let mut path = Vec::new();
    apply_value(live, applied, rules, &mut path)
}

fn apply_value(
    live: &Value,
    applied: &Value,
    rules: &MergeRules<'_>,
    path: &mut Vec<String>,
) -> Value {
    match (live, applied) {
        (Value::Object(l), Value::Object(a)) => {
            let mut out = l.clone();
            for (k, v) in a {
                if v.is_null() {
                    out.remove(k);
                    continue;
                }
                path.push(k.clone());
                let merged = match out.get(k) {
                    Some(lv) => apply_value(lv, v, rules, path),
                    None => v.clone(),
                };
                path.pop();
                out.insert(k.clone(), merged);
            }
            Value::Object(out)
        }
        (Value::Array(l), Value::Array(a)) => {
            path.push("[]".into());
            let rule = rules.list_merge(&path[..path.len() - 1], a);
            let merged = match rule {
                ListMerge::Keyed(keys) if !keys.is_empty() => {
                    let mut out = Vec::new();
                    // Applied items, in the applied order, merged with their live counterpart;
                    // then live items the applied config does not mention.
                    for item in a {
                        match l.iter().find(|x| item_matches(x, item, &keys)) {
                            Some(existing) => out.push(apply_value(existing, item, rules, path)),
                            None => out.push(item.clone()),
                        }
                    }
                    for existing in l {
                        if !a.iter().any(|i| item_matches(existing, i, &keys)) {
                            out.push(existing.clone());
                        }
                    }
                    Value::Array(out)
                }
                ListMerge::Set => {
                    let mut out = l.clone();
                    for item in a {
                        if !out.contains(item) {
                            out.push(item.clone());
                        }
                    }
                    Value::Array(out)
                }
                _ => applied.clone(),
            };
            path.pop();
            merged
        }
        _ => applied.clone(),
    }
}

/// Removes from `live` what `previous` (a manager's last applied
/// configuration) set and `current` (its new one) no longer does, the way
/// server-side apply drops fields a manager stops owning. Keyed list items
/// are matched by key; items of other lists are left to the replace.
pub fn remove_unapplied(
    live: &mut Value,
    previous: &Value,
    current: &Value,
    rules: &MergeRules<'_>,
) {
    let mut path = Vec::new();
    remove_value(live, previous, current, rules, &mut path);
}

fn remove_value(
    live: &mut Value,
    previous: &Value,
    current: &Value,
    rules: &MergeRules<'_>,
    path: &mut Vec<String>,
) {
    match (live, previous) {
        (Value::Object(l), Value::Object(p)) => {
            for (k, pv) in p {
                if k == "metadata" && path.is_empty() {
                    // Name and namespace stay; labels and annotations follow the usual rule.
                    if let (Some(lm), Some(cm)) = (l.get_mut(k), current.get(k)) {
                        path.push(k.clone());
                        for sub in ["labels", "annotations"] {
                            if let (Some(lsub), Some(psub)) = (lm.get_mut(sub), pv.get(sub)) {
                                path.push(sub.into());
                                remove_value(
                                    lsub,
                                    psub,
                                    cm.get(sub).unwrap_or(&Value::Null),
                                    rules,
                                    path,
                                );
                                path.pop();
                            }
                        }
                        path.pop();
                    }
                    continue;
                }
                match current.get(k) {
                    None | Some(Value::Null) => {
                        l.remove(k);
                    }
                    Some(cv) => {
                        if let Some(lv) = l.get_mut(k) {
                            path.push(k.clone());
                            remove_value(lv, pv, cv, rules, path);
                            path.pop();
                        }
                    }
                }
            }
        }
        (Value::Array(l), Value::Array(p)) => {
            let Some(c) = current.as_array() else { return };
            path.push("[]".into());
            let rule = rules.list_merge(&path[..path.len() - 1], p);
            match rule {
                ListMerge::Keyed(keys) if !keys.is_empty() => {
                    l.retain(|item| {
                        let was_applied = p.iter().any(|pi| item_matches(item, pi, &keys));
                        let still = c.iter().any(|ci| item_matches(item, ci, &keys));
                        !was_applied || still
                    });
                    for item in l.iter_mut() {
                        let prev = p.iter().find(|pi| item_matches(item, pi, &keys));
                        let cur = c.iter().find(|ci| item_matches(item, ci, &keys));
                        if let (Some(pi), Some(ci)) = (prev, cur) {
                            remove_value(item, pi, ci, rules, path);
                        }
                    }
                }
                ListMerge::Set => l.retain(|item| !p.contains(item) || c.contains(item)),
                _ => {}
            }
            path.pop();
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn deploy() -> Value {
        json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "env": [{"name": "A", "value": "1"}, {"name": "B", "value": "2"}],
             "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "s:1"}
        ]}}}})
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml; charset=utf-8"),
            Some(PatchType::Apply)
        );
        assert_eq!(
            PatchType::from_content_type("application/strategic-merge-patch+json"),
            Some(PatchType::Strategic)
        );
        assert_eq!(PatchType::from_content_type("application/json"), None);
    }

    #[test]
    fn strategic_merge_merges_containers_and_env_by_name() {
        let patch = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "a:2", "env": [{"name": "B", "value": "two"}, {"name": "C", "value": "3"}]}
        ]}}}});
        let out = strategic_merge(&deploy(), &patch).unwrap();
        let c = &out["spec"]["template"]["spec"]["containers"];
        assert_eq!(c.as_array().unwrap().len(), 2, "sidecar kept");
        assert_eq!(c[0]["image"], "a:2");
        assert_eq!(c[0]["ports"][0]["containerPort"], 80);
        let env = c[0]["env"].as_array().unwrap();
        assert_eq!(env.len(), 3);
        assert_eq!(env[1], json!({"name": "B", "value": "two"}));
        assert_eq!(out["spec"]["replicas"], 1);
    }

    #[test]
    fn strategic_merge_directives() {
        let del = json!({"spec": {"template": {"spec": {"containers": [{"name": "side", "$patch": "delete"}]}}}});
        let out = strategic_merge(&deploy(), &del).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"]
                .as_array()
                .unwrap()
                .len(),
            1
        );

        let replace = json!({"spec": {"template": {"spec": {"containers": [{"name": "only", "image": "o"}, {"$patch": "replace"}]}}}});
        let out = strategic_merge(&deploy(), &replace).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"],
            json!([{"name": "only", "image": "o"}])
        );

        let null = json!({"spec": {"replicas": null}});
        assert!(
            strategic_merge(&deploy(), &null).unwrap()["spec"]
                .get("replicas")
                .is_none()
        );

        let fin = json!({"metadata": {"finalizers": ["a", "b"]}});
        let more = json!({"metadata": {"finalizers": ["b", "c"]}});
        let out = strategic_merge(&fin, &more).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["a", "b", "c"]));
        let rm = json!({"metadata": {"$deleteFromPrimitiveList/finalizers": ["a"]}});
        assert_eq!(
            strategic_merge(&out, &rm).unwrap()["metadata"]["finalizers"],
            json!(["b", "c"])
        );
    }

    #[test]
    fn unkeyed_lists_are_replaced() {
        let t = json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["x", "y"]}]}}}});
        let p =
            json!({"spec": {"template": {"spec": {"containers": [{"name": "a", "args": ["z"]}]}}}});
        let out = strategic_merge(&t, &p).unwrap();
        assert_eq!(
            out["spec"]["template"]["spec"]["containers"][0]["args"],
            json!(["z"])
        );
    }

    #[test]
    fn merge_and_json_patch() {
        let out = merge_patch(
            &deploy(),
            &json!({"spec": {"replicas": 3, "template": null}}),
        );
        assert_eq!(out, json!({"spec": {"replicas": 3}}));
        let out = json_patch(
            &deploy(),
            &json!([{"op": "replace", "path": "/spec/replicas", "value": 5}]),
        )
        .unwrap();
        assert_eq!(out["spec"]["replicas"], 5);
        assert!(
            json_patch(
                &deploy(),
                &json!([{"op": "test", "path": "/spec/replicas", "value": 9}])
            )
            .is_err()
        );
        assert!(json_patch(&deploy(), &json!({"op": "nope"})).is_err());
    }

    #[test]
    fn apply_merges_by_key_and_keeps_other_fields() {
        let live = json!({"metadata": {"labels": {"a": "1"}}, "spec": {"ports": [{"port": 80, "nodePort": 30080}],
                          "clusterIP": "10.96.0.5"}});
        let applied = json!({"metadata": {"labels": {"b": "2"}}, "spec": {"ports": [{"port": 80, "targetPort": 8080}]}});
        let out = apply_merge(&live, &applied, &MergeRules::Builtin);
        assert_eq!(
            out["spec"]["ports"],
            json!([{"port": 80, "nodePort": 30080, "targetPort": 8080}])
        );
        assert_eq!(out["spec"]["clusterIP"], "10.96.0.5");
        assert_eq!(out["metadata"]["labels"], json!({"a": "1", "b": "2"}));
    }

    #[test]
    fn apply_removes_what_the_manager_stopped_applying() {
        let prev = json!({"metadata": {"name": "x", "labels": {"a": "1", "b": "2"}},
                          "spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "A"}, {"name": "B"}]}]}}}});
        let cur = json!({"metadata": {"name": "x", "labels": {"a": "1"}},
                         "spec": {"template": {"spec": {"containers": [{"name": "app", "env": [{"name": "A"}]}]}}}});
        let mut live = prev.clone();
        live["metadata"]["labels"]["other"] = json!("kept");
        live["status"] = json!({"replicas": 1});
        remove_unapplied(&mut live, &prev, &cur, &MergeRules::Builtin);
        assert_eq!(
            live["metadata"]["labels"],
            json!({"a": "1", "other": "kept"})
        );
        assert_eq!(live["metadata"]["name"], "x");
        assert_eq!(
            live["spec"]["template"]["spec"]["containers"][0]["env"],
            json!([{"name": "A"}])
        );
        assert_eq!(live["status"]["replicas"], 1);
    }

    #[test]
    fn crd_schema_list_types() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "properties": {
            "items": {"type": "array", "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["id"],
                      "items": {"type": "object"}},
            "tags": {"type": "array", "items": {"type": "string"}}}}}});
        let live = json!({"spec": {"items": [{"id": 1, "v": "a"}, {"id": 2}], "tags": ["x"]}});
        let applied = json!({"spec": {"items": [{"id": 1, "v": "b"}], "tags": ["y"]}});
        let out = apply_merge(&live, &applied, &MergeRules::Schema(&schema));
        assert_eq!(
            out["spec"]["items"],
            json!([{"id": 1, "v": "b"}, {"id": 2}])
        );
        assert_eq!(out["spec"]["tags"], json!(["y"]));
    }
}
