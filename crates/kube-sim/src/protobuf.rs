//! Decoding of the protobuf request bodies kubectl's typed clients send,
//! for the kinds its `create` generators make most in setup scripts:
//! Namespace, ConfigMap, Secret and ServiceAccount (`kubectl create
//! namespace|configmap|secret|serviceaccount`). Other kinds get a 415 that
//! says to apply YAML instead.
//!
//! Written by hand: only a few messages are needed, their field numbers are
//! those of Kubernetes' `generated.proto`, and a protobuf crate would still
//! need the Kubernetes schemas (k8s-openapi has no protobuf support).

use serde_json::{Map, Value, json};

/// The envelope Kubernetes puts before a protobuf-encoded `runtime.Unknown`.
const MAGIC: &[u8] = b"k8s\x00";

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, String> {
    let mut out: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *buf.get(*pos).ok_or("truncated varint")?;
        *pos += 1;
        out |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Ok(out);
        }
    }
    Err("varint too long".into())
}

/// The fields of one message, in wire order.
fn fields(buf: &[u8]) -> Result<Vec<(u64, Wire<'_>)>, String> {
    let mut pos = 0;
    let mut out = Vec::new();
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let wire = match key & 7 {
            0 => Wire::Varint(varint(buf, &mut pos)?),
            1 => {
                pos += 8;
                Wire::Fixed
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).map_err(|e| e.to_string())?;
                let end = pos
                    .checked_add(len)
                    .filter(|e| *e <= buf.len())
                    .ok_or("truncated field")?;
                let b = &buf[pos..end];
                pos = end;
                Wire::Bytes(b)
            }
            5 => {
                pos += 4;
                Wire::Fixed
            }
            other => return Err(format!("unsupported wire type {other}")),
        };
        out.push((key >> 3, wire));
    }
    Ok(out)
}

fn string(b: &[u8]) -> Result<String, String> {
    String::from_utf8(b.to_vec()).map_err(|e| e.to_string())
}

/// Go's generated marshallers write empty strings too; an empty scalar
/// means "not set" for the fields decoded here.
fn drop_empty(mut m: Map<String, Value>) -> Map<String, Value> {
    m.retain(|_, v| v.as_str() != Some(""));
    m
}

fn bytes_value(b: &[u8]) -> Value {
    serde_json::to_value(k8s_openapi::ByteString(b.to_vec())).unwrap_or(Value::Null)
}

/// A map entry (key = 1, value = 2); `binary` values become base64.
fn map_entry(b: &[u8], binary: bool, into: &mut Map<String, Value>) -> Result<(), String> {
    let mut key = String::new();
    let mut value = if binary { bytes_value(b"") } else { json!("") };
    for (n, w) in fields(b)? {
        match (n, w) {
            (1, Wire::Bytes(k)) => key = string(k)?,
            (2, Wire::Bytes(v)) => {
                value = if binary {
                    bytes_value(v)
                } else {
                    json!(string(v)?)
                }
            }
            _ => {}
        }
    }
    into.insert(key, value);
    Ok(())
}

fn push_map(
    obj: &mut Map<String, Value>,
    field: &str,
    b: &[u8],
    binary: bool,
) -> Result<(), String> {
    let entry = obj.entry(field).or_insert_with(|| json!({}));
    if let Some(m) = entry.as_object_mut() {
        map_entry(b, binary, m)?;
    }
    Ok(())
}

fn push_list(obj: &mut Map<String, Value>, field: &str, v: Value) {
    let entry = obj.entry(field).or_insert_with(|| json!([]));
    if let Some(a) = entry.as_array_mut() {
        a.push(v);
    }
}

fn owner_reference(b: &[u8]) -> Result<Value, String> {
    let mut o = Map::new();
    for (n, w) in fields(b)? {
        match (n, w) {
            (1, Wire::Bytes(v)) => {
                o.insert("kind".into(), json!(string(v)?));
            }
            (3, Wire::Bytes(v)) => {
                o.insert("name".into(), json!(string(v)?));
            }
            (4, Wire::Bytes(v)) => {
                o.insert("uid".into(), json!(string(v)?));
            }
            (5, Wire::Bytes(v)) => {
                o.insert("apiVersion".into(), json!(string(v)?));
            }
            (6, Wire::Varint(v)) => {
                o.insert("controller".into(), json!(v != 0));
            }
            (7, Wire::Varint(v)) => {
                o.insert("blockOwnerDeletion".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(Value::Object(o))
}

fn object_meta(b: &[u8]) -> Result<Value, String> {
    let mut m = Map::new();
    for (n, w) in fields(b)? {
        match (n, w) {
            (1, Wire::Bytes(v)) => {
                m.insert("name".into(), json!(string(v)?));
            }
            (2, Wire::Bytes(v)) => {
                m.insert("generateName".into(), json!(string(v)?));
            }
            (3, Wire::Bytes(v)) => {
                m.insert("namespace".into(), json!(string(v)?));
            }
            (6, Wire::Bytes(v)) => {
                m.insert("resourceVersion".into(), json!(string(v)?));
            }
            (11, Wire::Bytes(v)) => push_map(&mut m, "labels", v, false)?,
            (12, Wire::Bytes(v)) => push_map(&mut m, "annotations", v, false)?,
            (13, Wire::Bytes(v)) => push_list(&mut m, "ownerReferences", owner_reference(v)?),
            (14, Wire::Bytes(v)) => push_list(&mut m, "finalizers", json!(string(v)?)),
            _ => {}
        }
    }
    Ok(Value::Object(drop_empty(m)))
}

fn name_ref(b: &[u8]) -> Result<Value, String> {
    let mut o = Map::new();
    for (n, w) in fields(b)? {
        if let (1, Wire::Bytes(v)) = (n, w) {
            o.insert("name".into(), json!(string(v)?));
        }
    }
    Ok(Value::Object(o))
}

fn object(kind: &str, raw: &[u8]) -> Result<Map<String, Value>, String> {
    let mut o = Map::new();
    for (n, w) in fields(raw)? {
        match (kind, n, w) {
            (_, 1, Wire::Bytes(v)) => {
                o.insert("metadata".into(), object_meta(v)?);
            }
            ("ConfigMap", 2, Wire::Bytes(v)) => push_map(&mut o, "data", v, false)?,
            ("ConfigMap", 3, Wire::Bytes(v)) => push_map(&mut o, "binaryData", v, true)?,
            ("ConfigMap", 4, Wire::Varint(v)) => {
                o.insert("immutable".into(), json!(v != 0));
            }
            ("Secret", 2, Wire::Bytes(v)) => push_map(&mut o, "data", v, true)?,
            ("Secret", 3, Wire::Bytes(v)) => {
                o.insert("type".into(), json!(string(v)?));
            }
            ("Secret", 4, Wire::Bytes(v)) => push_map(&mut o, "stringData", v, false)?,
            ("Secret", 5, Wire::Varint(v)) => {
                o.insert("immutable".into(), json!(v != 0));
            }
            ("Namespace", 2, Wire::Bytes(v)) => {
                let mut spec = Map::new();
                for (n, w) in fields(v)? {
                    if let (1, Wire::Bytes(f)) = (n, w) {
                        push_list(&mut spec, "finalizers", json!(string(f)?));
                    }
                }
                o.insert("spec".into(), Value::Object(spec));
            }
            ("ServiceAccount", 2, Wire::Bytes(v)) => push_list(&mut o, "secrets", name_ref(v)?),
            ("ServiceAccount", 3, Wire::Bytes(v)) => {
                push_list(&mut o, "imagePullSecrets", name_ref(v)?)
            }
            ("ServiceAccount", 4, Wire::Varint(v)) => {
                o.insert("automountServiceAccountToken".into(), json!(v != 0));
            }
            _ => {}
        }
    }
    Ok(drop_empty(o))
}

/// Decodes a protobuf body into the JSON object it stands for.
pub fn decode(body: &[u8]) -> Result<Value, String> {
    let rest = body
        .strip_prefix(MAGIC)
        .ok_or("the body lacks the Kubernetes protobuf envelope")?;
    let (mut api_version, mut kind, mut raw) = (String::new(), String::new(), &[][..]);
    for (n, w) in fields(rest)? {
        match (n, w) {
            (1, Wire::Bytes(tm)) => {
                for (n, w) in fields(tm)? {
                    match (n, w) {
                        (1, Wire::Bytes(v)) => api_version = string(v)?,
                        (2, Wire::Bytes(v)) => kind = string(v)?,
                        _ => {}
                    }
                }
            }
            (2, Wire::Bytes(r)) => raw = r,
            _ => {}
        }
    }
    if !matches!(
        kind.as_str(),
        "ConfigMap" | "Secret" | "Namespace" | "ServiceAccount"
    ) || api_version != "v1"
    {
        return Err(format!("{api_version} {kind} in protobuf is not supported"));
    }
    let mut o = object(&kind, raw)?;
    o.insert("apiVersion".into(), json!(api_version));
    o.insert("kind".into(), json!(kind));
    Ok(Value::Object(o))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(n: u64, payload: &[u8]) -> Vec<u8> {
        let mut out = vec![
            u8::try_from(n << 3 | 2).unwrap(),
            u8::try_from(payload.len()).unwrap(),
        ];
        out.extend_from_slice(payload);
        out
    }

    #[test]
    fn decodes_a_configmap_envelope() {
        let type_meta = [field(1, b"v1"), field(2, b"ConfigMap")].concat();
        let labels = [field(1, b"app"), field(2, b"web")].concat();
        let meta = [field(1, b"settings"), field(3, b"shop"), field(11, &labels)].concat();
        let entry = [field(1, b"LOG_LEVEL"), field(2, b"debug")].concat();
        let bin = [field(1, b"blob"), field(2, b"\x00\x01")].concat();
        let raw = [field(1, &meta), field(2, &entry), field(3, &bin)].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta), field(2, &raw)].concat();
        let obj = decode(&body).unwrap();
        assert_eq!(
            obj,
            json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "settings", "namespace": "shop", "labels": {"app": "web"}},
                   "data": {"LOG_LEVEL": "debug"}, "binaryData": {"blob": "AAE="}})
        );
    }

    #[test]
    fn refuses_other_kinds_and_garbage() {
        let type_meta = [field(1, b"apps/v1"), field(2, b"Deployment")].concat();
        let body = [MAGIC.to_vec(), field(1, &type_meta)].concat();
        assert!(decode(&body).unwrap_err().contains("Deployment"));
        assert!(decode(b"{}").is_err());
        assert!(decode(&[MAGIC, &[0x0a, 0x05, 0x01][..]].concat()).is_err());
    }
}
