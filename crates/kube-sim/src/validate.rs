//! Manifest validation, the sim's main value: built-in kinds are decoded into
//! their k8s-openapi types (type errors name the field; fields the type does
//! not have are reported as unknown), custom resources are checked against
//! their CRD's OpenAPI v3 schema (and pruned like the real server does), and
//! the basics the real API server checks are checked with its messages:
//! names, labels, containers, selectors, Service ports, immutable fields.

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::object;
use crate::resources::ResourceDef;
use crate::selectors;

/// What kind of field error, with the offending value where the real server shows one.
#[derive(Debug, Clone, PartialEq)]
pub enum ErrorType {
    Required,
    Invalid(Value),
    NotSupported(Value, Vec<String>),
    Duplicate(Value),
    NotFound(Value),
    Forbidden,
}

/// One field error, rendered like `field.ErrorList` in Kubernetes.
#[derive(Debug, Clone, PartialEq)]
pub struct FieldError {
    pub field: String,
    pub ty: ErrorType,
    pub detail: String,
}

/// Go's `%#v`-ish rendering the real messages use for values.
fn show(v: &Value) -> String {
    match v {
        Value::Object(m) if m.values().all(Value::is_string) => {
            let inner: Vec<String> = m.iter().map(|(k, v)| format!("{:?}:{}", k, v)).collect();
            format!("map[string]string{{{}}}", inner.join(", "))
        }
        other => other.to_string(),
    }
}

impl FieldError {
    pub fn new(field: impl Into<String>, ty: ErrorType, detail: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            ty,
            detail: detail.into(),
        }
    }

    pub fn required(field: impl Into<String>) -> Self {
        Self::new(field, ErrorType::Required, "")
    }

    pub fn invalid(field: impl Into<String>, value: Value, detail: impl Into<String>) -> Self {
        Self::new(field, ErrorType::Invalid(value), detail)
    }

    /// The cause reason (`FieldValueInvalid`, ...).
    pub fn reason(&self) -> &'static str {
        match self.ty {
            ErrorType::Required => "FieldValueRequired",
            ErrorType::Invalid(_) => "FieldValueInvalid",
            ErrorType::NotSupported(..) => "FieldValueNotSupported",
            ErrorType::Duplicate(_) => "FieldValueDuplicate",
            ErrorType::NotFound(_) => "FieldValueNotFound",
            ErrorType::Forbidden => "FieldValueForbidden",
        }
    }

    /// The message without the field, e.g. `Invalid value: "x": must be ...`.
    pub fn body(&self) -> String {
        let (head, detail) = match &self.ty {
            ErrorType::Required => ("Required value".to_string(), self.detail.clone()),
            ErrorType::Invalid(v) => (format!("Invalid value: {}", show(v)), self.detail.clone()),
            ErrorType::NotSupported(v, allowed) => {
                let list: Vec<String> = allowed.iter().map(|a| format!("{a:?}")).collect();
                (
                    format!("Unsupported value: {}", show(v)),
                    format!("supported values: {}", list.join(", ")),
                )
            }
            ErrorType::Duplicate(v) => {
                (format!("Duplicate value: {}", show(v)), self.detail.clone())
            }
            ErrorType::NotFound(v) => (format!("Not found: {}", show(v)), self.detail.clone()),
            ErrorType::Forbidden => ("Forbidden".to_string(), self.detail.clone()),
        };
        if detail.is_empty() {
            head
        } else {
            format!("{head}: {detail}")
        }
    }

    /// `field: body`.
    pub fn message(&self) -> String {
        if self.field.is_empty() {
            self.body()
        } else {
            format!("{}: {}", self.field, self.body())
        }
    }
}

// ---- names --------------------------------------------------------------

const LABEL_MSG: &str = "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character (e.g. 'my-name',  or '123-abc', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?')";
const SUBDOMAIN_MSG: &str = "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character (e.g. 'example.com', regex used for validation is '[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*')";
const DNS1035_MSG: &str = "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character (e.g. 'my-name',  or 'abc-123', regex used for validation is '[a-z]([-a-z0-9]*[a-z0-9])?')";

fn is_label_chars(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// RFC 1123 label problems (empty when valid).
pub fn dns1123_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !is_label_chars(s) {
        errs.push(LABEL_MSG.to_string());
    }
    errs
}

/// RFC 1123 subdomain problems.
pub fn dns1123_subdomain(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 253 {
        errs.push("must be no more than 253 characters".to_string());
    }
    if s.is_empty() || !s.split('.').all(is_label_chars) {
        errs.push(SUBDOMAIN_MSG.to_string());
    }
    errs
}

/// RFC 1035 label problems (Service names).
pub fn dns1035_label(s: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if s.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !is_label_chars(s) || !s.starts_with(|c: char| c.is_ascii_lowercase()) {
        errs.push(DNS1035_MSG.to_string());
    }
    errs
}

/// Path-segment names (RBAC objects may contain ':').
fn path_segment(s: &str) -> Vec<String> {
    if s == "." || s == ".." {
        return vec![format!("may not be '{s}'")];
    }
    for bad in ["/", "%"] {
        if s.contains(bad) {
            return vec![format!("may not contain '{bad}'")];
        }
    }
    Vec::new()
}

fn qualified_name_part(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// Label/annotation key problems.
fn qualified_name(key: &str) -> Vec<String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let mut errs = Vec::new();
    if let Some(p) = prefix {
        errs.extend(
            dns1123_subdomain(p)
                .into_iter()
                .map(|e| format!("prefix part {e}")),
        );
    }
    if !qualified_name_part(name) {
        errs.push("name part must consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyName',  or 'my.name',  or '123-abc', regex used for validation is '([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]')".to_string());
    }
    errs
}

fn label_value(v: &str) -> Vec<String> {
    let mut errs = Vec::new();
    if v.len() > 63 {
        errs.push("must be no more than 63 characters".to_string());
    }
    if !v.is_empty() && !qualified_name_part(&v[..v.len().min(63)]) {
        errs.push("a valid label must be an empty string or consist of alphanumeric characters, '-', '_' or '.', and must start and end with an alphanumeric character (e.g. 'MyValue',  or 'my_value',  or '12345', regex used for validation is '(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?')".to_string());
    }
    errs
}

fn push_all(errs: &mut Vec<FieldError>, field: &str, value: &Value, problems: Vec<String>) {
    for p in problems {
        errs.push(FieldError::invalid(field, value.clone(), p));
    }
}

// ---- typed decoding -----------------------------------------------------

/// Decodes `obj` as `T`; on failure the error names the field. On success,
/// returns the paths of fields `T` does not have (unknown fields).
fn roundtrip<T: DeserializeOwned + Serialize>(obj: &mut Value) -> Result<Vec<String>, FieldError> {
    let typed: T = serde_path_to_error::deserialize(&*obj).map_err(|e| {
        let path = e.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let value = obj
            .pointer(&format!("/{}", path.replace('.', "/")))
            .cloned()
            .unwrap_or(Value::Null);
        FieldError::invalid(path, value, e.into_inner().to_string())
    })?;
    let back = serde_json::to_value(&typed).unwrap_or(Value::Null);
    let mut unknown = Vec::new();
    prune_unknown(obj, &back, "", &mut unknown);
    Ok(unknown)
}

/// Removes from `input` the fields the typed round trip dropped (the real
/// server drops them too), returning their paths.
fn prune_unknown(input: &mut Value, back: &Value, path: &str, out: &mut Vec<String>) {
    match (input, back) {
        (Value::Object(i), Value::Object(b)) => {
            let mut drop = Vec::new();
            for (k, v) in i.iter_mut() {
                if v.is_null() {
                    continue;
                }
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                match b.get(k) {
                    Some(bv) => prune_unknown(v, bv, &p, out),
                    None => {
                        out.push(p);
                        drop.push(k.clone());
                    }
                }
            }
            for k in drop {
                i.remove(&k);
            }
        }
        (Value::Array(i), Value::Array(b)) => {
            for (n, (iv, bv)) in i.iter_mut().zip(b).enumerate() {
                prune_unknown(iv, bv, &format!("{path}[{n}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes a built-in object into its k8s-openapi type. Returns the unknown
/// fields, which are removed from `obj`; kinds without a typed check return none.
pub fn check_typed(def: &ResourceDef, obj: &mut Value) -> Result<Vec<String>, FieldError> {
    use k8s_openapi::api::{
        admissionregistration::v1 as adm, apps::v1 as apps, autoscaling::v2 as hpa,
        batch::v1 as batch, coordination::v1 as coord, core::v1 as core, networking::v1 as net,
        policy::v1 as policy, rbac::v1 as rbac, scheduling::v1 as sched, storage::v1 as storage,
    };
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1 as ext;
    if def.crd.is_some() {
        return Ok(Vec::new());
    }
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Namespace") => roundtrip::<core::Namespace>(obj),
        ("", "Node") => roundtrip::<core::Node>(obj),
        ("", "Pod") => roundtrip::<core::Pod>(obj),
        ("", "Service") => roundtrip::<core::Service>(obj),
        ("", "Endpoints") => roundtrip::<core::Endpoints>(obj),
        ("", "ConfigMap") => roundtrip::<core::ConfigMap>(obj),
        ("", "Secret") => roundtrip::<core::Secret>(obj),
        ("", "ServiceAccount") => roundtrip::<core::ServiceAccount>(obj),
        ("", "Event") => roundtrip::<core::Event>(obj),
        ("", "PersistentVolumeClaim") => roundtrip::<core::PersistentVolumeClaim>(obj),
        ("", "PersistentVolume") => roundtrip::<core::PersistentVolume>(obj),
        ("", "ResourceQuota") => roundtrip::<core::ResourceQuota>(obj),
        ("", "LimitRange") => roundtrip::<core::LimitRange>(obj),
        ("apps", "Deployment") => roundtrip::<apps::Deployment>(obj),
        ("apps", "ReplicaSet") => roundtrip::<apps::ReplicaSet>(obj),
        ("apps", "StatefulSet") => roundtrip::<apps::StatefulSet>(obj),
        ("apps", "DaemonSet") => roundtrip::<apps::DaemonSet>(obj),
        ("batch", "Job") => roundtrip::<batch::Job>(obj),
        ("batch", "CronJob") => roundtrip::<batch::CronJob>(obj),
        ("rbac.authorization.k8s.io", "Role") => roundtrip::<rbac::Role>(obj),
        ("rbac.authorization.k8s.io", "ClusterRole") => roundtrip::<rbac::ClusterRole>(obj),
        ("rbac.authorization.k8s.io", "RoleBinding") => roundtrip::<rbac::RoleBinding>(obj),
        ("rbac.authorization.k8s.io", "ClusterRoleBinding") => {
            roundtrip::<rbac::ClusterRoleBinding>(obj)
        }
        ("apiextensions.k8s.io", "CustomResourceDefinition") => {
            roundtrip::<ext::CustomResourceDefinition>(obj)
        }
        ("admissionregistration.k8s.io", "MutatingWebhookConfiguration") => {
            roundtrip::<adm::MutatingWebhookConfiguration>(obj)
        }
        ("admissionregistration.k8s.io", "ValidatingWebhookConfiguration") => {
            roundtrip::<adm::ValidatingWebhookConfiguration>(obj)
        }
        ("coordination.k8s.io", "Lease") => roundtrip::<coord::Lease>(obj),
        ("policy", "PodDisruptionBudget") => roundtrip::<policy::PodDisruptionBudget>(obj),
        ("networking.k8s.io", "NetworkPolicy") => roundtrip::<net::NetworkPolicy>(obj),
        ("networking.k8s.io", "Ingress") => roundtrip::<net::Ingress>(obj),
        ("autoscaling", "HorizontalPodAutoscaler") => {
            roundtrip::<hpa::HorizontalPodAutoscaler>(obj)
        }
        ("storage.k8s.io", "StorageClass") => roundtrip::<storage::StorageClass>(obj),
        ("scheduling.k8s.io", "PriorityClass") => roundtrip::<sched::PriorityClass>(obj),
        _ => Ok(Vec::new()),
    }
}

// ---- custom resources -----------------------------------------------------

/// Checks a custom resource against its CRD schema and prunes fields the
/// schema does not declare (unless `x-kubernetes-preserve-unknown-fields`).
/// Returns the pruned (unknown) field paths.
pub fn check_schema(schema: &Value, obj: &mut Value, errs: &mut Vec<FieldError>) -> Vec<String> {
    let mut unknown = Vec::new();
    if let Some(map) = obj.as_object_mut() {
        for (k, v) in map.iter_mut() {
            if matches!(k.as_str(), "apiVersion" | "kind" | "metadata") {
                continue;
            }
            match schema.get("properties").and_then(|p| p.get(k)) {
                Some(s) => schema_value(s, v, k, errs, &mut unknown),
                None if preserves(schema) => {}
                None => unknown.push(k.clone()),
            }
        }
        let top_unknown: Vec<String> = unknown
            .iter()
            .filter(|u| !u.contains(['.', '[']))
            .cloned()
            .collect();
        for k in top_unknown {
            map.remove(&k);
        }
        for r in object::array_at(schema, "/required") {
            if let Some(r) = r.as_str()
                && !matches!(r, "apiVersion" | "kind" | "metadata")
                && !map.contains_key(r)
            {
                errs.push(FieldError::required(r));
            }
        }
    }
    unknown
}

fn preserves(schema: &Value) -> bool {
    schema
        .get("x-kubernetes-preserve-unknown-fields")
        .and_then(Value::as_bool)
        == Some(true)
}

fn schema_value(
    schema: &Value,
    v: &mut Value,
    path: &str,
    errs: &mut Vec<FieldError>,
    unknown: &mut Vec<String>,
) {
    if v.is_null() {
        return;
    }
    let int_or_string = schema
        .get("x-kubernetes-int-or-string")
        .and_then(Value::as_bool)
        == Some(true);
    let ty = schema.get("type").and_then(Value::as_str).unwrap_or("");
    let type_ok = int_or_string && (v.is_string() || v.is_i64() || v.is_u64())
        || match ty {
            "" => true,
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "integer" => v.is_i64() || v.is_u64(),
            "number" => v.is_number(),
            "boolean" => v.is_boolean(),
            _ => true,
        };
    if !type_ok {
        let expected = if int_or_string {
            "integer or string"
        } else {
            ty
        };
        errs.push(FieldError::invalid(
            path,
            json!(json_type(v)),
            format!(
                "{path} in body must be of type {expected}: {:?}",
                json_type(v)
            ),
        ));
        return;
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array)
        && !allowed.contains(v)
    {
        errs.push(FieldError::new(
            path,
            ErrorType::NotSupported(
                v.clone(),
                allowed
                    .iter()
                    .map(|a| {
                        a.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| a.to_string())
                    })
                    .collect(),
            ),
            "",
        ));
    }
    let num = |k: &str| schema.get(k).and_then(Value::as_f64);
    if let Some(n) = v.as_f64() {
        if let Some(min) = num("minimum")
            && n < min
        {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{path} in body should be greater than or equal to {min}"),
            ));
        }
        if let Some(max) = num("maximum")
            && n > max
        {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{path} in body should be less than or equal to {max}"),
            ));
        }
    }
    if let Some(s) = v.as_str() {
        let len = s.chars().count() as f64;
        if let Some(min) = num("minLength")
            && len < min
        {
            errs.push(FieldError::invalid(
                path,
                v.clone(),
                format!("{path} in body should be at least {min} chars long"),
            ));
        }
        if let Some(max) = num("maxLength")
            && len > max
        {
            errs.push(FieldError::new(
                path,
                ErrorType::Invalid(v.clone()),
                format!("may not be more than {max} bytes"),
            ));
        }
    }
    match v {
        Value::Object(map) => {
            let props = schema.get("properties").and_then(Value::as_object);
            let additional = schema.get("additionalProperties");
            let additional_schema = additional.filter(|a| a.is_object());
            let keep_unknown = preserves(schema)
                || ty.is_empty()
                || additional.and_then(Value::as_bool) == Some(true);
            let mut drop = Vec::new();
            for (k, child) in map.iter_mut() {
                let p = format!("{path}.{k}");
                match props.and_then(|p| p.get(k)).or(additional_schema) {
                    Some(s) => schema_value(s, child, &p, errs, unknown),
                    None if keep_unknown => {}
                    None => {
                        unknown.push(p);
                        drop.push(k.clone());
                    }
                }
            }
            for k in drop {
                map.remove(&k);
            }
            for r in object::array_at(schema, "/required") {
                if let Some(r) = r.as_str()
                    && !map.contains_key(r)
                {
                    errs.push(FieldError::required(format!("{path}.{r}")));
                }
            }
        }
        Value::Array(items) => {
            if let Some(s) = schema.get("items") {
                for (i, item) in items.iter_mut().enumerate() {
                    schema_value(s, item, &format!("{path}[{i}]"), errs, unknown);
                }
            }
            let len = items.len() as f64;
            if let Some(min) = num("minItems")
                && len < min
            {
                errs.push(FieldError::invalid(
                    path,
                    json!(items.len()),
                    format!("{path} in body should have at least {min} items"),
                ));
            }
            if let Some(max) = num("maxItems")
                && len > max
            {
                errs.push(FieldError::new(
                    path,
                    ErrorType::Invalid(json!(items.len())),
                    format!("must have at most {max} items"),
                ));
            }
        }
        _ => {}
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_f64() => "number",
        Value::Number(_) => "integer",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

// ---- semantic checks ------------------------------------------------------

/// The checks the real API server makes beyond types. `old` is the stored
/// object on update (for immutable fields).
pub fn validate(def: &ResourceDef, obj: &Value, old: Option<&Value>) -> Vec<FieldError> {
    let mut errs = Vec::new();
    validate_meta(def, obj, &mut errs);
    match (def.group.as_str(), def.kind.as_str()) {
        ("", "Pod") => validate_pod_spec(
            obj.get("spec").unwrap_or(&Value::Null),
            "spec",
            &["Always", "OnFailure", "Never"],
            &mut errs,
        ),
        ("apps", "Deployment" | "ReplicaSet" | "StatefulSet" | "DaemonSet") => {
            validate_workload(obj, &mut errs);
            if let Some(old) = old {
                immutable(obj, old, "/spec/selector", "spec.selector", &mut errs);
                if def.kind == "StatefulSet" {
                    statefulset_update(obj, old, &mut errs);
                }
            }
        }
        ("batch", "Job") => {
            let tmpl = obj.pointer("/spec/template/spec").unwrap_or(&Value::Null);
            validate_pod_spec(
                tmpl,
                "spec.template.spec",
                &["OnFailure", "Never"],
                &mut errs,
            );
            if let Some(old) = old {
                immutable(obj, old, "/spec/template", "spec.template", &mut errs);
                immutable(obj, old, "/spec/selector", "spec.selector", &mut errs);
            }
        }
        ("batch", "CronJob") => {
            if object::str_at(obj, "/spec/schedule").is_empty() {
                errs.push(FieldError::required("spec.schedule"));
            }
            let tmpl = obj
                .pointer("/spec/jobTemplate/spec/template/spec")
                .unwrap_or(&Value::Null);
            validate_pod_spec(
                tmpl,
                "spec.jobTemplate.spec.template.spec",
                &["OnFailure", "Never"],
                &mut errs,
            );
        }
        ("", "Service") => {
            validate_service(obj, &mut errs);
            if let Some(old) = old {
                let (o, n) = (
                    object::str_at(old, "/spec/clusterIP"),
                    object::str_at(obj, "/spec/clusterIP"),
                );
                if !o.is_empty() && !n.is_empty() && o != n {
                    errs.push(FieldError::invalid(
                        "spec.clusterIPs[0]",
                        json!(n),
                        "may not change once set",
                    ));
                }
            }
        }
        ("", "ConfigMap") => validate_data_keys(obj, &["data", "binaryData"], &mut errs),
        ("", "Secret") => validate_data_keys(obj, &["data", "stringData"], &mut errs),
        ("apiextensions.k8s.io", "CustomResourceDefinition") => validate_crd(obj, &mut errs),
        _ => {}
    }
    errs
}

fn immutable(obj: &Value, old: &Value, pointer: &str, field: &str, errs: &mut Vec<FieldError>) {
    let (n, o) = (obj.pointer(pointer), old.pointer(pointer));
    if n != o && n.is_some() {
        errs.push(FieldError::invalid(
            field,
            n.cloned().unwrap_or(Value::Null),
            "field is immutable",
        ));
    }
}

fn statefulset_update(obj: &Value, old: &Value, errs: &mut Vec<FieldError>) {
    let strip = |v: &Value| {
        let mut s = v.get("spec").cloned().unwrap_or(Value::Null);
        if let Some(m) = s.as_object_mut() {
            for k in [
                "replicas",
                "ordinals",
                "template",
                "updateStrategy",
                "persistentVolumeClaimRetentionPolicy",
                "minReadySeconds",
            ] {
                m.remove(k);
            }
        }
        s
    };
    if strip(obj) != strip(old) {
        errs.push(FieldError::new("spec", ErrorType::Forbidden, "updates to statefulset spec for fields other than 'replicas', 'ordinals', 'template', 'updateStrategy', 'persistentVolumeClaimRetentionPolicy' and 'minReadySeconds' are forbidden"));
    }
}

fn validate_meta(def: &ResourceDef, obj: &Value, errs: &mut Vec<FieldError>) {
    let name = object::name(obj);
    let nv = json!(name);
    if name.is_empty() {
        errs.push(FieldError::new(
            "metadata.name",
            ErrorType::Required,
            "name or generateName is required",
        ));
    } else {
        let problems = match (def.group.as_str(), def.kind.as_str()) {
            ("", "Namespace") => dns1123_label(name),
            ("", "Service") => dns1035_label(name),
            ("rbac.authorization.k8s.io", _) => path_segment(name),
            _ => dns1123_subdomain(name),
        };
        push_all(errs, "metadata.name", &nv, problems);
    }
    for (k, v) in object::labels(obj) {
        push_all(errs, "metadata.labels", &json!(k), qualified_name(&k));
        push_all(
            errs,
            &format!("metadata.labels[{k}]"),
            &json!(v),
            label_value(&v),
        );
    }
    for (k, _) in object::string_map(obj, "/metadata/annotations") {
        push_all(errs, "metadata.annotations", &json!(k), qualified_name(&k));
    }
}

fn validate_workload(obj: &Value, errs: &mut Vec<FieldError>) {
    if let Some(r) = object::i64_at(obj, "/spec/replicas")
        && r < 0
    {
        errs.push(FieldError::invalid(
            "spec.replicas",
            json!(r),
            "must be greater than or equal to 0",
        ));
    }
    let labels = obj
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or(json!({}));
    match obj.pointer("/spec/selector") {
        None | Some(Value::Null) => errs.push(FieldError::required("spec.selector")),
        Some(sel) => match selectors::from_label_selector_object(sel) {
            Err(e) => errs.push(FieldError::invalid("spec.selector", sel.clone(), e)),
            Ok(s) if s.0.is_empty() => errs.push(FieldError::invalid(
                "spec.selector",
                sel.clone(),
                "empty selector is invalid for deployment",
            )),
            Ok(s) => {
                let pairs = object::string_map(obj, "/spec/template/metadata/labels");
                if !s.matches(&pairs) {
                    errs.push(FieldError::invalid(
                        "spec.template.metadata.labels",
                        labels,
                        "`selector` does not match template `labels`",
                    ));
                }
            }
        },
    }
    let tmpl = obj.pointer("/spec/template/spec").unwrap_or(&Value::Null);
    validate_pod_spec(tmpl, "spec.template.spec", &["Always"], errs);
}

fn validate_pod_spec(spec: &Value, p: &str, restart_policies: &[&str], errs: &mut Vec<FieldError>) {
    let volumes: Vec<&str> = object::array_at(spec, "/volumes")
        .iter()
        .map(|v| object::str_at(v, "/name"))
        .collect();
    for (i, v) in volumes.iter().enumerate() {
        let f = format!("{p}.volumes[{i}].name");
        if v.is_empty() {
            errs.push(FieldError::required(f));
        } else {
            push_all(errs, &f, &json!(v), dns1123_label(v));
            if volumes[..i].contains(v) {
                errs.push(FieldError::new(f, ErrorType::Duplicate(json!(v)), ""));
            }
        }
    }
    let containers = object::array_at(spec, "/containers");
    if containers.is_empty() {
        errs.push(FieldError::required(format!("{p}.containers")));
    }
    let mut seen: Vec<String> = Vec::new();
    for (field, list) in [
        ("initContainers", object::array_at(spec, "/initContainers")),
        ("containers", containers),
    ] {
        for (i, c) in list.iter().enumerate() {
            let cp = format!("{p}.{field}[{i}]");
            let name = object::str_at(c, "/name");
            if name.is_empty() {
                errs.push(FieldError::required(format!("{cp}.name")));
            } else {
                push_all(
                    errs,
                    &format!("{cp}.name"),
                    &json!(name),
                    dns1123_label(name),
                );
                if seen.iter().any(|s| s == name) {
                    errs.push(FieldError::new(
                        format!("{cp}.name"),
                        ErrorType::Duplicate(json!(name)),
                        "",
                    ));
                }
                seen.push(name.to_string());
            }
            if object::str_at(c, "/image").trim().is_empty() {
                errs.push(FieldError::required(format!("{cp}.image")));
            }
            if let Some(pp) = c.get("imagePullPolicy").and_then(Value::as_str)
                && !["Always", "IfNotPresent", "Never"].contains(&pp)
            {
                errs.push(FieldError::new(
                    format!("{cp}.imagePullPolicy"),
                    ErrorType::NotSupported(
                        json!(pp),
                        vec!["Always".into(), "IfNotPresent".into(), "Never".into()],
                    ),
                    "",
                ));
            }
            for (j, port) in object::array_at(c, "/ports").iter().enumerate() {
                let n = object::i64_at(port, "/containerPort").unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    errs.push(FieldError::invalid(
                        format!("{cp}.ports[{j}].containerPort"),
                        json!(n),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
                validate_protocol(port, &format!("{cp}.ports[{j}].protocol"), errs);
                let pname = object::str_at(port, "/name");
                if !pname.is_empty()
                    && (pname.len() > 15
                        || !is_label_chars(pname)
                        || !pname.chars().any(|c| c.is_ascii_lowercase()))
                {
                    errs.push(FieldError::invalid(
                        format!("{cp}.ports[{j}].name"),
                        json!(pname),
                        "must be no more than 15 characters and a valid IANA service name",
                    ));
                }
            }
            for (j, m) in object::array_at(c, "/volumeMounts").iter().enumerate() {
                let mname = object::str_at(m, "/name");
                if mname.is_empty() {
                    errs.push(FieldError::required(format!("{cp}.volumeMounts[{j}].name")));
                } else if !volumes.contains(&mname) {
                    errs.push(FieldError::new(
                        format!("{cp}.volumeMounts[{j}].name"),
                        ErrorType::NotFound(json!(mname)),
                        "",
                    ));
                }
                if object::str_at(m, "/mountPath").is_empty() {
                    errs.push(FieldError::required(format!(
                        "{cp}.volumeMounts[{j}].mountPath"
                    )));
                }
            }
            for (j, e) in object::array_at(c, "/env").iter().enumerate() {
                if object::str_at(e, "/name").is_empty() {
                    errs.push(FieldError::required(format!("{cp}.env[{j}].name")));
                }
            }
        }
    }
    if let Some(rp) = spec.get("restartPolicy").and_then(Value::as_str) {
        if !restart_policies.contains(&rp) {
            errs.push(FieldError::new(
                format!("{p}.restartPolicy"),
                ErrorType::NotSupported(
                    json!(rp),
                    restart_policies.iter().map(|s| s.to_string()).collect(),
                ),
                "",
            ));
        }
    } else if !restart_policies.contains(&"Always") {
        errs.push(FieldError::new(
            format!("{p}.restartPolicy"),
            ErrorType::Required,
            format!(
                "valid values: {}",
                restart_policies
                    .iter()
                    .map(|s| format!("{s:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
}

fn validate_protocol(port: &Value, field: &str, errs: &mut Vec<FieldError>) {
    if let Some(proto) = port.get("protocol").and_then(Value::as_str)
        && !["TCP", "UDP", "SCTP"].contains(&proto)
    {
        errs.push(FieldError::new(
            field,
            ErrorType::NotSupported(
                json!(proto),
                vec!["SCTP".into(), "TCP".into(), "UDP".into()],
            ),
            "",
        ));
    }
}

fn validate_service(obj: &Value, errs: &mut Vec<FieldError>) {
    let ty = obj
        .pointer("/spec/type")
        .and_then(Value::as_str)
        .unwrap_or("ClusterIP");
    let types = ["ClusterIP", "ExternalName", "LoadBalancer", "NodePort"];
    if !types.contains(&ty) {
        errs.push(FieldError::new(
            "spec.type",
            ErrorType::NotSupported(json!(ty), types.iter().map(|s| s.to_string()).collect()),
            "",
        ));
    }
    let headless = object::str_at(obj, "/spec/clusterIP") == "None";
    let ports = object::array_at(obj, "/spec/ports");
    if ports.is_empty() && !headless && ty != "ExternalName" {
        errs.push(FieldError::required("spec.ports"));
    }
    if ty == "ExternalName" && object::str_at(obj, "/spec/externalName").is_empty() {
        errs.push(FieldError::required("spec.externalName"));
    }
    let mut names: Vec<&str> = Vec::new();
    for (i, port) in ports.iter().enumerate() {
        let pp = format!("spec.ports[{i}]");
        let name = object::str_at(port, "/name");
        if ports.len() > 1 && name.is_empty() {
            errs.push(FieldError::required(format!("{pp}.name")));
        }
        if !name.is_empty() {
            push_all(
                errs,
                &format!("{pp}.name"),
                &json!(name),
                dns1123_label(name),
            );
            if names.contains(&name) {
                errs.push(FieldError::new(
                    format!("{pp}.name"),
                    ErrorType::Duplicate(json!(name)),
                    "",
                ));
            }
            names.push(name);
        }
        match object::i64_at(port, "/port") {
            None => errs.push(FieldError::required(format!("{pp}.port"))),
            Some(n) if !(1..=65535).contains(&n) => {
                errs.push(FieldError::invalid(
                    format!("{pp}.port"),
                    json!(n),
                    "must be between 1 and 65535, inclusive",
                ));
            }
            _ => {}
        }
        validate_protocol(port, &format!("{pp}.protocol"), errs);
        match port.get("targetPort") {
            Some(Value::Number(n)) => {
                let n = n.as_i64().unwrap_or(0);
                if !(1..=65535).contains(&n) {
                    errs.push(FieldError::invalid(
                        format!("{pp}.targetPort"),
                        json!(n),
                        "must be between 1 and 65535, inclusive",
                    ));
                }
            }
            Some(Value::String(s)) if s.is_empty() || s.len() > 15 => {
                errs.push(FieldError::invalid(
                    format!("{pp}.targetPort"),
                    json!(s),
                    "must be no more than 15 characters",
                ));
            }
            _ => {}
        }
        if let Some(np) = object::i64_at(port, "/nodePort")
            && np != 0
        {
            if ty != "NodePort" && ty != "LoadBalancer" {
                errs.push(FieldError::new(
                    format!("{pp}.nodePort"),
                    ErrorType::Forbidden,
                    "may not be used when `type` is 'ClusterIP'",
                ));
            } else if !(30000..=32767).contains(&np) {
                errs.push(FieldError::invalid(
                    format!("{pp}.nodePort"),
                    json!(np),
                    "provided port is not in the valid range. The range of valid ports is 30000-32767",
                ));
            }
        }
    }
}

fn validate_data_keys(obj: &Value, fields: &[&str], errs: &mut Vec<FieldError>) {
    let mut seen: Vec<String> = Vec::new();
    for f in fields {
        if let Some(m) = obj.get(*f).and_then(Value::as_object) {
            for k in m.keys() {
                let ok = !k.is_empty()
                    && k.len() <= 253
                    && k.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
                if !ok {
                    errs.push(FieldError::invalid(f.to_string(), json!(k), "a valid config key must consist of alphanumeric characters, '-', '_' or '.' (e.g. 'key.name',  or 'KEY_NAME',  or 'key-name', regex used for validation is '[-._a-zA-Z0-9]+')"));
                }
                if *f != "stringData" && seen.contains(k) {
                    errs.push(FieldError::invalid(
                        format!("{f}[{k}]"),
                        json!(k),
                        "duplicate of key present in data",
                    ));
                }
                seen.push(k.clone());
            }
        }
    }
}

fn validate_crd(obj: &Value, errs: &mut Vec<FieldError>) {
    let group = object::str_at(obj, "/spec/group");
    let plural = object::str_at(obj, "/spec/names/plural");
    if group.is_empty() {
        errs.push(FieldError::required("spec.group"));
    } else if !group.contains('.') {
        errs.push(FieldError::invalid(
            "spec.group",
            json!(group),
            "should be a domain with at least one dot",
        ));
    }
    if plural.is_empty() {
        errs.push(FieldError::required("spec.names.plural"));
    }
    if object::str_at(obj, "/spec/names/kind").is_empty() {
        errs.push(FieldError::required("spec.names.kind"));
    }
    let expected = format!("{plural}.{group}");
    if !plural.is_empty() && !group.is_empty() && object::name(obj) != expected {
        errs.push(FieldError::invalid(
            "metadata.name",
            json!(object::name(obj)),
            "must be spec.names.plural+\".\"+spec.group",
        ));
    }
    let scope = object::str_at(obj, "/spec/scope");
    if scope != "Namespaced" && scope != "Cluster" {
        errs.push(FieldError::new(
            "spec.scope",
            ErrorType::NotSupported(json!(scope), vec!["Cluster".into(), "Namespaced".into()]),
            "",
        ));
    }
    let versions = object::array_at(obj, "/spec/versions");
    if versions.is_empty() {
        errs.push(FieldError::invalid(
            "spec.versions",
            json!([]),
            "must have exactly one version marked as storage version",
        ));
    } else {
        let storage = versions
            .iter()
            .filter(|v| v.get("storage").and_then(Value::as_bool) == Some(true))
            .count();
        if storage != 1 {
            errs.push(FieldError::invalid(
                "spec.versions",
                json!(versions.len()),
                "must have exactly one version marked as storage version",
            ));
        }
        for (i, v) in versions.iter().enumerate() {
            if v.pointer("/schema/openAPIV3Schema").is_none() {
                errs.push(FieldError::required(format!(
                    "spec.versions[{i}].schema.openAPIV3Schema"
                )));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(group: &str, kind: &str) -> ResourceDef {
        crate::resources::builtin(group, kind).unwrap()
    }

    fn deployment() -> Value {
        json!({"apiVersion": "apps/v1", "kind": "Deployment",
               "metadata": {"name": "web", "namespace": "default"},
               "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                        "template": {"metadata": {"labels": {"app": "web"}},
                                     "spec": {"containers": [{"name": "web", "image": "nginx"}]}}}})
    }

    #[test]
    fn names() {
        assert!(dns1123_label("my-ns").is_empty());
        assert!(!dns1123_label("My_ns").is_empty());
        assert!(!dns1123_label(&"a".repeat(64)).is_empty());
        assert!(dns1123_subdomain("a.b-c.d").is_empty());
        assert!(!dns1123_subdomain("a..b").is_empty());
        assert!(dns1035_label("svc-1").is_empty());
        assert!(!dns1035_label("1svc").is_empty());
        assert!(qualified_name("app.kubernetes.io/name").is_empty());
        assert!(!qualified_name("bad key").is_empty());
        assert!(label_value("").is_empty());
        assert!(!label_value("-x").is_empty());
    }

    #[test]
    fn a_good_deployment_passes() {
        let d = def("apps", "Deployment");
        assert_eq!(
            check_typed(&d, &mut deployment()).unwrap(),
            Vec::<String>::new()
        );
        assert_eq!(validate(&d, &deployment(), None), vec![]);
    }

    #[test]
    fn type_errors_name_the_field() {
        let mut obj = deployment();
        obj["spec"]["replicas"] = json!("three");
        let err = check_typed(&def("apps", "Deployment"), &mut obj).unwrap_err();
        assert_eq!(err.field, "spec.replicas");
        assert!(
            err.message()
                .starts_with("spec.replicas: Invalid value: \"three\""),
            "{}",
            err.message()
        );

        let mut obj = deployment();
        obj["spec"]["template"]["spec"]["containers"][0]["ports"] =
            json!([{"containerPort": "http"}]);
        let err = check_typed(&def("apps", "Deployment"), &mut obj).unwrap_err();
        assert_eq!(
            err.field,
            "spec.template.spec.containers[0].ports[0].containerPort"
        );
    }

    #[test]
    fn unknown_fields_are_reported() {
        let mut obj = deployment();
        obj["spec"]["replica"] = json!(2);
        obj["spec"]["template"]["spec"]["containers"][0]["imagePolicy"] = json!("x");
        obj["metadata"]["creationTimestamp"] = Value::Null;
        let unknown = check_typed(&def("apps", "Deployment"), &mut obj).unwrap();
        assert!(
            obj["spec"].get("replica").is_none(),
            "unknown fields are dropped"
        );
        assert_eq!(obj["spec"]["replicas"], 1);
        assert_eq!(
            unknown,
            vec![
                "spec.replica",
                "spec.template.spec.containers[0].imagePolicy"
            ]
        );
    }

    #[test]
    fn selector_must_match_template_labels() {
        let mut obj = deployment();
        obj["spec"]["template"]["metadata"]["labels"] = json!({"app": "other"});
        let errs = validate(&def("apps", "Deployment"), &obj, None);
        assert_eq!(errs.len(), 1);
        assert_eq!(
            errs[0].message(),
            "spec.template.metadata.labels: Invalid value: map[string]string{\"app\":\"other\"}: `selector` does not match template `labels`"
        );
        let mut obj = deployment();
        obj["spec"].as_object_mut().unwrap().remove("selector");
        assert_eq!(
            validate(&def("apps", "Deployment"), &obj, None)[0].message(),
            "spec.selector: Required value"
        );
    }

    #[test]
    fn containers_need_name_and_image() {
        let mut obj = deployment();
        obj["spec"]["template"]["spec"]["containers"] = json!([{"name": "Web"}, {"image": "x"}]);
        let msgs: Vec<String> = validate(&def("apps", "Deployment"), &obj, None)
            .iter()
            .map(FieldError::message)
            .collect();
        assert!(
            msgs.iter()
                .any(|m| m
                    .starts_with("spec.template.spec.containers[0].name: Invalid value: \"Web\"")),
            "{msgs:?}"
        );
        assert!(
            msgs.contains(&"spec.template.spec.containers[0].image: Required value".to_string())
        );
        assert!(
            msgs.contains(&"spec.template.spec.containers[1].name: Required value".to_string())
        );
        let job = json!({"metadata": {"name": "j"}, "spec": {"template": {"spec": {"containers": [{"name": "a", "image": "b"}]}}}});
        let msgs: Vec<String> = validate(&def("batch", "Job"), &job, None)
            .iter()
            .map(FieldError::message)
            .collect();
        assert_eq!(
            msgs,
            vec![
                "spec.template.spec.restartPolicy: Required value: valid values: \"OnFailure\", \"Never\""
            ]
        );
    }

    #[test]
    fn bad_names_and_service_ports() {
        let svc = json!({"metadata": {"name": "1web"}, "spec": {"ports": [{"port": 0}, {"name": "b", "port": 80, "nodePort": 30001}]}});
        let msgs: Vec<String> = validate(&def("", "Service"), &svc, None)
            .iter()
            .map(FieldError::message)
            .collect();
        assert!(
            msgs[0].starts_with("metadata.name: Invalid value: \"1web\": a DNS-1035 label"),
            "{msgs:?}"
        );
        assert!(msgs.contains(&"spec.ports[0].name: Required value".to_string()));
        assert!(
            msgs.contains(
                &"spec.ports[0].port: Invalid value: 0: must be between 1 and 65535, inclusive"
                    .to_string()
            )
        );
        assert!(
            msgs.iter()
                .any(|m| m.starts_with("spec.ports[1].nodePort: Forbidden"))
        );
    }

    #[test]
    fn immutable_selector() {
        let old = deployment();
        let mut new = deployment();
        new["spec"]["selector"] = json!({"matchLabels": {"app": "web", "v": "2"}});
        new["spec"]["template"]["metadata"]["labels"]["v"] = json!("2");
        let errs = validate(&def("apps", "Deployment"), &new, Some(&old));
        assert_eq!(errs.len(), 1);
        assert!(errs[0].message().ends_with("field is immutable"));
    }

    #[test]
    fn custom_resource_schema() {
        let schema = json!({"type": "object", "properties": {"spec": {"type": "object", "required": ["size"],
            "properties": {"size": {"type": "integer", "minimum": 1}, "mode": {"type": "string", "enum": ["a", "b"]},
                           "extra": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}}}}});
        let mut obj = json!({"apiVersion": "x/v1", "kind": "W", "metadata": {"name": "w"},
                             "spec": {"size": "big", "mode": "c", "junk": 1, "extra": {"anything": 1}}, "other": 1});
        let mut errs = Vec::new();
        let unknown = check_schema(&schema, &mut obj, &mut errs);
        assert_eq!(unknown, vec!["other", "spec.junk"]);
        assert!(obj.get("other").is_none() && obj["spec"].get("junk").is_none());
        assert_eq!(obj["spec"]["extra"]["anything"], 1);
        let msgs: Vec<String> = errs.iter().map(FieldError::message).collect();
        assert!(msgs.contains(&"spec.size: Invalid value: \"string\": spec.size in body must be of type integer: \"string\"".to_string()), "{msgs:?}");
        assert!(
            msgs.contains(
                &"spec.mode: Unsupported value: \"c\": supported values: \"a\", \"b\"".to_string()
            ),
            "{msgs:?}"
        );

        let mut obj = json!({"spec": {}});
        let mut errs = Vec::new();
        check_schema(&schema, &mut obj, &mut errs);
        assert_eq!(errs[0].message(), "spec.size: Required value");
    }
}
