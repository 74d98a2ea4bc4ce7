//! Small helpers for reading and writing Kubernetes objects held as
//! `serde_json::Value`: metadata accessors, timestamps and generated names.
//!
//! The store keeps every object as JSON (built-in kinds and custom resources
//! alike) so that what a client sent is what it reads back; typed k8s-openapi
//! structs are only used to validate.

use serde_json::{Map, Value, json};

/// `metadata.name`, or "" when absent.
pub fn name(obj: &Value) -> &str {
    obj.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.namespace`, or "" when absent (cluster-scoped objects).
pub fn namespace(obj: &Value) -> &str {
    obj.pointer("/metadata/namespace")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.uid`, or "".
pub fn uid(obj: &Value) -> &str {
    obj.pointer("/metadata/uid")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// `metadata.generation`, or 0.
pub fn generation(obj: &Value) -> i64 {
    obj.pointer("/metadata/generation")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

/// `metadata.resourceVersion`, or "".
pub fn resource_version(obj: &Value) -> &str {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .unwrap_or("")
}

/// Whether `metadata.deletionTimestamp` is set.
pub fn is_deleting(obj: &Value) -> bool {
    obj.pointer("/metadata/deletionTimestamp")
        .is_some_and(|v| !v.is_null())
}

/// A string-to-string map at `pointer` (labels, annotations, selectors).
pub fn string_map(obj: &Value, pointer: &str) -> Vec<(String, String)> {
    obj.pointer(pointer)
        .and_then(Value::as_object)
        .map(|m| {
            m.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect()
        })
        .unwrap_or_default()
}

/// `metadata.labels` as pairs.
pub fn labels(obj: &Value) -> Vec<(String, String)> {
    string_map(obj, "/metadata/labels")
}

/// The string at `pointer`, or "".
pub fn str_at<'a>(obj: &'a Value, pointer: &str) -> &'a str {
    obj.pointer(pointer).and_then(Value::as_str).unwrap_or("")
}

/// The integer at `pointer`, if any.
pub fn i64_at(obj: &Value, pointer: &str) -> Option<i64> {
    obj.pointer(pointer).and_then(Value::as_i64)
}

/// The array at `pointer`, or an empty slice.
pub fn array_at<'a>(obj: &'a Value, pointer: &str) -> &'a [Value] {
    obj.pointer(pointer)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or(&[])
}

/// A mutable object at `path` (a list of keys), created as `{}` along the way.
pub fn ensure_object<'a>(obj: &'a mut Value, path: &[&str]) -> &'a mut Map<String, Value> {
    let mut cur = obj;
    for key in path {
        if !cur.is_object() {
            *cur = Value::Object(Map::new());
        }
        let map = cur.as_object_mut().expect("just made an object");
        cur = map
            .entry((*key).to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if cur.is_null() {
            *cur = Value::Object(Map::new());
        }
    }
    if !cur.is_object() {
        *cur = Value::Object(Map::new());
    }
    cur.as_object_mut().expect("just made an object")
}

/// The owner references of `obj` (uid and whether it is the controller).
pub fn owner_refs(obj: &Value) -> Vec<OwnerRef> {
    array_at(obj, "/metadata/ownerReferences")
        .iter()
        .map(|r| OwnerRef {
            uid: str_at(r, "/uid").to_string(),
            controller: r.get("controller").and_then(Value::as_bool) == Some(true),
        })
        .collect()
}

/// One entry of `metadata.ownerReferences`.
#[derive(Debug, Clone)]
pub struct OwnerRef {
    pub uid: String,
    pub controller: bool,
}

/// Whether `obj` has a controller owner reference to `owner_uid`.
pub fn is_controlled_by(obj: &Value, owner_uid: &str) -> bool {
    owner_refs(obj)
        .iter()
        .any(|r| r.controller && r.uid == owner_uid)
}

/// An ownerReference entry (controller, blockOwnerDeletion) pointing at `owner`.
pub fn controller_ref(owner: &Value) -> Value {
    json!({
        "apiVersion": str_at(owner, "/apiVersion"),
        "kind": str_at(owner, "/kind"),
        "name": name(owner),
        "uid": uid(owner),
        "controller": true,
        "blockOwnerDeletion": true,
    })
}

/// Now, as the API server formats `metav1.Time` (RFC 3339, seconds).
pub fn now() -> String {
    format_time(jiff::Timestamp::now())
}

/// A timestamp as `metav1.Time` renders it.
pub fn format_time(ts: jiff::Timestamp) -> String {
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses a `metav1.Time`; None when absent or malformed.
pub fn parse_time(s: &str) -> Option<jiff::Timestamp> {
    s.parse().ok()
}

/// Random characters from the alphabet Kubernetes uses for generated names
/// (no vowels, no easily confused digits), e.g. the `x7k2p` in `web-x7k2p`.
pub fn random_suffix(len: usize) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut out = String::with_capacity(len);
    while out.len() < len {
        for b in uuid::Uuid::new_v4().as_bytes() {
            if out.len() == len {
                break;
            }
            out.push(ALPHABET[usize::from(*b) % ALPHABET.len()] as char);
        }
    }
    out
}

/// The name the API server makes from `generateName` (prefix + 5 characters;
/// the prefix is cut so the result stays within 63 characters).
pub fn generate_name(prefix: &str) -> String {
    const MAX_PREFIX: usize = 63 - 5;
    let prefix = if prefix.len() > MAX_PREFIX {
        &prefix[..MAX_PREFIX]
    } else {
        prefix
    };
    format!("{prefix}{}", random_suffix(5))
}

/// The hash the controllers put in `pod-template-hash` and
/// `controller-revision-hash`: FNV-1a (32 bit) of the template's JSON, its
/// decimal digits mapped onto the name alphabet, as Kubernetes' `SafeEncodeString`
/// does. Written by hand: it is ten lines and only needs to be stable.
pub fn template_hash(template: &Value) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut hash: u32 = 0x811c_9dc5;
    for b in template.to_string().bytes() {
        hash ^= u32::from(b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    hash.to_string()
        .bytes()
        .map(|d| ALPHABET[usize::from(d) % ALPHABET.len()] as char)
        .collect()
}

/// Kubernetes' short human duration (`5s`, `3m20s`, `4h`, `2d3h`), used in the
/// AGE column of `kubectl get`.
pub fn human_duration(secs: i64) -> String {
    if secs < -1 {
        return "<invalid>".into();
    }
    if secs < 0 {
        return "0s".into();
    }
    if secs < 120 {
        return format!("{secs}s");
    }
    let minutes = secs / 60;
    if minutes < 10 {
        let s = secs % 60;
        return if s == 0 {
            format!("{minutes}m")
        } else {
            format!("{minutes}m{s}s")
        };
    }
    if minutes < 180 {
        return format!("{minutes}m");
    }
    let hours = secs / 3600;
    if hours < 8 {
        let m = minutes % 60;
        return if m == 0 {
            format!("{hours}h")
        } else {
            format!("{hours}h{m}m")
        };
    }
    if hours < 48 {
        return format!("{hours}h");
    }
    if hours < 24 * 8 {
        let h = hours % 24;
        return if h == 0 {
            format!("{}d", hours / 24)
        } else {
            format!("{}d{h}h", hours / 24)
        };
    }
    if hours < 24 * 365 * 2 {
        return format!("{}d", hours / 24);
    }
    format!("{}y", hours / 24 / 365)
}

/// Age of `obj` (from creationTimestamp) for the AGE column.
pub fn age(obj: &Value) -> String {
    let created = str_at(obj, "/metadata/creationTimestamp");
    match parse_time(created) {
        Some(ts) => {
            let secs = jiff::Timestamp::now().as_second() - ts.as_second();
            human_duration(secs)
        }
        None => "<unknown>".into(),
    }
}

/// Sets or replaces the condition of `cond["type"]` in the array at
/// `status.conditions`, keeping `lastTransitionTime` when the status did not
/// change. Returns whether anything changed.
pub fn set_condition(obj: &mut Value, mut cond: Value) -> bool {
    let status = ensure_object(obj, &["status"]);
    let list = status
        .entry("conditions")
        .or_insert_with(|| Value::Array(Vec::new()));
    if !list.is_array() {
        *list = Value::Array(Vec::new());
    }
    let list = list.as_array_mut().expect("array");
    let ty = cond["type"].clone();
    if let Some(existing) = list.iter_mut().find(|c| c["type"] == ty) {
        let same = ["status", "reason", "message"]
            .iter()
            .all(|k| existing.get(*k) == cond.get(*k));
        if same {
            return false;
        }
        if existing.get("status") == cond.get("status")
            && let Some(t) = existing.get("lastTransitionTime")
        {
            cond["lastTransitionTime"] = t.clone();
        }
        *existing = cond;
    } else {
        list.push(cond);
    }
    true
}

/// The condition of type `ty` in `status.conditions`, if present.
pub fn condition<'a>(obj: &'a Value, ty: &str) -> Option<&'a Value> {
    array_at(obj, "/status/conditions")
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(ty))
}

/// Whether the condition `ty` has status "True".
pub fn condition_true(obj: &Value, ty: &str) -> bool {
    condition(obj, ty).is_some_and(|c| c.get("status").and_then(Value::as_str) == Some("True"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_names_have_prefix_and_safe_suffix() {
        let n = generate_name("web-");
        assert_eq!(n.len(), 9);
        assert!(n.starts_with("web-"));
        assert!(
            n[4..]
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
        assert_ne!(generate_name("web-"), generate_name("web-"));
        let long = "a".repeat(80);
        assert_eq!(generate_name(&long).len(), 63);
    }

    #[test]
    fn template_hash_is_stable_and_sensitive() {
        let a = json!({"spec": {"containers": [{"name": "a", "image": "x"}]}});
        let b = json!({"spec": {"containers": [{"name": "a", "image": "y"}]}});
        assert_eq!(template_hash(&a), template_hash(&a.clone()));
        assert_ne!(template_hash(&a), template_hash(&b));
        assert!(
            template_hash(&a)
                .chars()
                .all(|c| "bcdfghjklmnpqrstvwxz2456789".contains(c))
        );
    }

    #[test]
    fn human_durations_match_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(119), "119s");
        assert_eq!(human_duration(200), "3m20s");
        assert_eq!(human_duration(600), "10m");
        assert_eq!(human_duration(4 * 3600), "4h");
        assert_eq!(human_duration(51 * 3600), "2d3h");
    }

    #[test]
    fn set_condition_keeps_transition_time_when_status_is_unchanged() {
        let mut obj = json!({});
        assert!(set_condition(
            &mut obj,
            json!({"type": "Ready", "status": "False", "reason": "A", "lastTransitionTime": "t1"})
        ));
        assert!(!set_condition(
            &mut obj,
            json!({"type": "Ready", "status": "False", "reason": "A", "lastTransitionTime": "t2"})
        ));
        assert!(set_condition(
            &mut obj,
            json!({"type": "Ready", "status": "False", "reason": "B", "lastTransitionTime": "t3"})
        ));
        assert_eq!(obj["status"]["conditions"][0]["lastTransitionTime"], "t1");
        assert!(set_condition(
            &mut obj,
            json!({"type": "Ready", "status": "True", "reason": "B", "lastTransitionTime": "t4"})
        ));
        assert_eq!(obj["status"]["conditions"][0]["lastTransitionTime"], "t4");
        assert!(condition_true(&obj, "Ready"));
    }
}
