//! The HTTP front: one axum fallback handler that parses Kubernetes API paths
//! (`/api/v1/namespaces/ns/pods/x/status`, `/apis/g/v/...`), dispatches the
//! verb, and renders errors as `metav1.Status` objects with the real
//! server's codes, reasons and messages.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::admission::{self, Refusal};
use crate::controllers;
use crate::object;
use crate::patch::{self, MergeRules, PatchType};
use crate::printers::{self, IncludeObject};
use crate::resources::{self, ResourceDef};
use crate::selectors::{self, FieldSelector, LabelSelector};
use crate::store::{Deletion, EventType, GroupResource, StoreError, Txn};
use crate::validate::{self, FieldError};
use crate::{KUBE_VERSION, Sim};

/// Bodies larger than this are refused (the real server's limit is 3 MiB per object).
const MAX_BODY: usize = 16 * 1024 * 1024;

pub fn router(sim: Arc<Sim>) -> Router {
    Router::new().fallback(handle).with_state(sim)
}

// ---- errors ---------------------------------------------------------------

/// An API error, rendered as a `Status`.
#[derive(Debug)]
pub struct ApiError {
    code: StatusCode,
    reason: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(code: StatusCode, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, details: Value) -> Self {
        self.details = Some(details);
        self
    }

    fn not_found(gr: &GroupResource, name: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", gr.qualified()),
        )
        .with_details(json!({"name": name, "group": gr.group, "kind": gr.resource}))
    }

    fn no_resource() -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "NotFound",
            "the server could not find the requested resource",
        )
        .with_details(json!({}))
    }

    fn already_exists(gr: &GroupResource, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", gr.qualified()),
        )
        .with_details(json!({"name": name, "group": gr.group, "kind": gr.resource}))
    }

    fn conflict(gr: &GroupResource, name: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
                gr.qualified()
            ),
        )
        .with_details(json!({"name": name, "group": gr.group, "kind": gr.resource}))
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "BadRequest", message)
    }

    fn method_not_allowed() -> Self {
        Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        )
        .with_details(json!({}))
    }

    fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "Forbidden", message)
    }

    fn invalid(def: &ResourceDef, name: &str, errs: &[FieldError]) -> Self {
        let qualified_kind = if def.group.is_empty() {
            def.kind.clone()
        } else {
            format!("{}.{}", def.kind, def.group)
        };
        let body = if errs.len() == 1 {
            errs[0].message()
        } else {
            format!(
                "[{}]",
                errs.iter()
                    .map(FieldError::message)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        let causes: Vec<Value> = errs
            .iter()
            .map(|e| json!({"reason": e.reason(), "message": e.body(), "field": e.field}))
            .collect();
        Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Invalid",
            format!("{qualified_kind} \"{name}\" is invalid: {body}"),
        )
        .with_details(json!({"name": name, "group": def.group, "kind": def.kind, "causes": causes}))
    }

    fn from_refusal(def: &ResourceDef, name: &str, r: Refusal) -> Self {
        match r {
            Refusal::Invalid(errs) => Self::invalid(def, name, &errs),
            Refusal::Forbidden(m) => Self::forbidden(m),
            Refusal::NamespaceNotFound(ns) => {
                Self::not_found(&GroupResource::new("", "namespaces"), &ns)
            }
        }
    }

    fn status_json(&self) -> Value {
        let mut s = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code.as_u16(),
        });
        if let Some(d) = &self.details {
            s["details"] = d.clone();
        }
        s
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json_response(self.code, &self.status_json())
    }
}

fn store_error(e: StoreError, gr: &GroupResource, name: &str) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found(gr, name),
        StoreError::AlreadyExists => ApiError::already_exists(gr, name),
    }
}

fn json_response(code: StatusCode, v: &Value) -> Response {
    (
        code,
        [(header::CONTENT_TYPE, "application/json")],
        v.to_string(),
    )
        .into_response()
}

fn with_warnings(mut resp: Response, warnings: &[String]) -> Response {
    for w in warnings {
        let text = format!("299 - {}", serde_json::to_string(w).unwrap_or_default());
        if let Ok(v) = HeaderValue::from_str(&text) {
            resp.headers_mut().append("Warning", v);
        }
    }
    resp
}

// ---- request plumbing -------------------------------------------------------

type Params = HashMap<String, String>;

/// A request for a resource.
struct Target {
    def: ResourceDef,
    version: String,
    namespace: Option<String>,
    name: Option<String>,
    sub: Option<String>,
}

impl Target {
    fn gr(&self) -> GroupResource {
        self.def.gr()
    }
    fn ns(&self) -> &str {
        self.namespace.as_deref().unwrap_or("")
    }
    fn name(&self) -> &str {
        self.name.as_deref().unwrap_or("")
    }
    fn api_version(&self) -> String {
        self.def.api_version(&self.version)
    }
}

fn param<'a>(q: &'a Params, k: &str) -> Option<&'a str> {
    q.get(k).map(String::as_str).filter(|s| !s.is_empty())
}

fn flag(q: &Params, k: &str) -> bool {
    matches!(param(q, k), Some("true" | "1"))
}

/// Decodes a request body: JSON, or YAML where the content type says so (or JSON fails).
fn decode_body(headers: &HeaderMap, body: &[u8]) -> Result<Value, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if ct.contains("protobuf") || ct.contains("cbor") {
        let unsupported = |why: String| {
            ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "UnsupportedMediaType",
                format!(
                    "kube-sim decodes JSON and YAML request bodies, and protobuf only for v1 Namespace, ConfigMap, Secret and ServiceAccount ({why}); generate the manifest with --dry-run=client -o yaml and apply it instead"
                ),
            )
        };
        if ct.contains("cbor") {
            return Err(unsupported(format!("got {ct}")));
        }
        return crate::protobuf::decode(body).map_err(unsupported);
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => Ok(v),
        Err(json_err) => {
            if ct.contains("yaml") || !ct.contains("json") {
                yaml_serde::from_slice::<Value>(body)
                    .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))
            } else {
                Err(ApiError::bad_request(format!(
                    "error decoding JSON: {json_err}"
                )))
            }
        }
    }
}

/// How unknown fields are treated (`fieldValidation`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum FieldValidation {
    Ignore,
    Warn,
    Strict,
}

fn field_validation(q: &Params) -> Result<FieldValidation, ApiError> {
    match param(q, "fieldValidation") {
        None | Some("Warn") => Ok(FieldValidation::Warn),
        Some("Strict") => Ok(FieldValidation::Strict),
        Some("Ignore") => Ok(FieldValidation::Ignore),
        Some(other) => Err(ApiError::bad_request(format!(
            "fieldValidation parameter unsupported: {other}, supported values are Ignore, Warn, Strict"
        ))),
    }
}

fn dry_run(q: &Params) -> bool {
    param(q, "dryRun") == Some("All")
}

/// The object as served at `version` (custom resources store one version
/// and are served in every served version without conversion).
fn served(def: &ResourceDef, version: &str, mut obj: Value) -> Value {
    if def.versions.len() > 1
        && let Some(m) = obj.as_object_mut()
    {
        m.insert("apiVersion".into(), json!(def.api_version(version)));
    }
    obj
}

// ---- routing ------------------------------------------------------------------

async fn handle(State(sim): State<Arc<Sim>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = match axum::body::to_bytes(body, MAX_BODY).await {
        Ok(b) => b,
        Err(e) => {
            return ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "RequestEntityTooLarge",
                format!("request body could not be read: {e}"),
            )
            .into_response();
        }
    };
    let q: Params = Query::<Params>::try_from_uri(&parts.uri)
        .map(|Query(q)| q)
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    tracing::debug!(method = %parts.method, %path, "request");
    match route(&sim, &parts.method, &path, &q, &parts.headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn route(
    sim: &Arc<Sim>,
    method: &Method,
    path: &str,
    q: &Params,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let segs: Vec<&str> = path
        .trim_matches('/')
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let get_only = |r: Response| -> Result<Response, ApiError> {
        if method == Method::GET || method == Method::HEAD {
            Ok(r)
        } else {
            Err(ApiError::method_not_allowed())
        }
    };
    match segs.as_slice() {
        ["version"] => get_only(json_response(StatusCode::OK, &version_info())),
        [probe, ..] if matches!(*probe, "healthz" | "readyz" | "livez") => {
            get_only((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], "ok").into_response())
        }
        ["api"] => get_only(json_response(
            StatusCode::OK,
            &resources::api_versions(&sim.server_address),
        )),
        ["apis"] => get_only(json_response(
            StatusCode::OK,
            &resources::api_group_list(&sim.registry),
        )),
        ["api", version] => match resources::api_resource_list(&sim.registry, "", version) {
            Some(doc) => get_only(json_response(StatusCode::OK, &doc)),
            None => Err(ApiError::no_resource()),
        },
        ["apis", group] => match resources::api_group_doc(&sim.registry, group) {
            Some(doc) => get_only(json_response(StatusCode::OK, &doc)),
            None => Err(ApiError::no_resource()),
        },
        ["apis", group, version] => {
            match resources::api_resource_list(&sim.registry, group, version) {
                Some(doc) => get_only(json_response(StatusCode::OK, &doc)),
                None => Err(ApiError::no_resource()),
            }
        }
        ["openapi", "v3"] => get_only(json_response(
            StatusCode::OK,
            &resources::openapi_v3_index(&sim.registry),
        )),
        ["openapi", "v3", "api", version] => {
            match resources::openapi_v3_group_version(&sim.registry, "", version) {
                Some(doc) => get_only(json_response(StatusCode::OK, &doc)),
                None => Err(ApiError::no_resource()),
            }
        }
        ["openapi", "v3", "apis", group, version] => {
            match resources::openapi_v3_group_version(&sim.registry, group, version) {
                Some(doc) => get_only(json_response(StatusCode::OK, &doc)),
                None => Err(ApiError::no_resource()),
            }
        }
        ["api", version, rest @ ..] => {
            let t = parse_target(sim, "", version, rest)?;
            dispatch(sim, method, t, q, headers, body).await
        }
        ["apis", group, version, rest @ ..] => {
            let t = parse_target(sim, group, version, rest)?;
            dispatch(sim, method, t, q, headers, body).await
        }
        _ => Err(ApiError::no_resource()),
    }
}

fn version_info() -> Value {
    let minor = KUBE_VERSION
        .trim_start_matches("v1.")
        .trim_end_matches(".0");
    json!({
        "major": "1",
        "minor": minor,
        "emulationMajor": "1",
        "emulationMinor": minor,
        "gitVersion": format!("{KUBE_VERSION}+kube-sim"),
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "1970-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    })
}

fn parse_target(sim: &Sim, group: &str, version: &str, rest: &[&str]) -> Result<Target, ApiError> {
    let (namespace, rest) = match rest {
        ["namespaces", ns, plural, tail @ ..] if !matches!(*plural, "status" | "finalize") => {
            (Some(ns.to_string()), [&[*plural][..], tail].concat())
        }
        _ => (None, rest.to_vec()),
    };
    let (plural, name, sub) = match rest.as_slice() {
        [plural] => (*plural, None, None),
        [plural, name] => (*plural, Some(name.to_string()), None),
        [plural, name, sub] => (*plural, Some(name.to_string()), Some(sub.to_string())),
        _ => return Err(ApiError::no_resource()),
    };
    let def = sim
        .registry
        .find(group, version, plural)
        .ok_or_else(ApiError::no_resource)?;
    if namespace.is_some() && !def.namespaced {
        return Err(ApiError::no_resource());
    }
    if def.namespaced && namespace.is_none() && name.is_some() {
        return Err(ApiError::no_resource());
    }
    if let Some(s) = &sub
        && !def.subresources.iter().any(|x| x == s)
    {
        return Err(ApiError::no_resource());
    }
    Ok(Target {
        def,
        version: version.to_string(),
        namespace,
        name,
        sub,
    })
}

async fn dispatch(
    sim: &Arc<Sim>,
    method: &Method,
    t: Target,
    q: &Params,
    headers: &HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let accept = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    if let Some(sub) = t.sub.as_deref()
        && matches!(sub, "exec" | "attach" | "portforward")
    {
        return Err(ApiError::bad_request(format!(
            "the sim cluster runs no containers: pods/{sub} is not available for pod {}/{} (kube-sim only simulates the kubelet)",
            t.ns(),
            t.name()
        )));
    }
    match (method.clone(), t.name.is_some()) {
        (Method::GET, false) => {
            if flag(q, "watch") {
                watch(sim.clone(), t, q, &accept)
            } else {
                list(sim, &t, q, &accept)
            }
        }
        (Method::GET, true) => get(sim, &t, q, &accept),
        (Method::POST, false) => create(sim, &t, q, headers, &body),
        (Method::PUT, true) => update(sim, &t, q, headers, &body),
        (Method::PATCH, true) => patch(sim, &t, q, headers, &body),
        (Method::DELETE, true) => delete(sim, &t, q, headers, &body),
        (Method::DELETE, false) => delete_collection(sim, &t, q),
        _ => Err(ApiError::method_not_allowed()),
    }
}

// ---- reads --------------------------------------------------------------------

struct Filter {
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn from(t: &Target, q: &Params) -> Result<Self, ApiError> {
        Ok(Self {
            namespace: t.namespace.clone(),
            labels: selectors::parse_label_selector(param(q, "labelSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
            fields: selectors::parse_field_selector(param(q, "fieldSelector").unwrap_or(""))
                .map_err(ApiError::bad_request)?,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        self.namespace
            .as_deref()
            .is_none_or(|ns| object::namespace(obj) == ns)
            && self.labels.matches_object(obj)
            && self.fields.matches(obj)
    }
}

fn get(sim: &Sim, t: &Target, q: &Params, accept: &str) -> Result<Response, ApiError> {
    let gr = t.gr();
    let obj = sim
        .store
        .transact(|txn| txn.get(&gr, t.ns(), t.name()).cloned())
        .ok_or_else(|| ApiError::not_found(&gr, t.name()))?;
    match t.sub.as_deref() {
        Some("log") => {
            let container = param(q, "container")
                .map(str::to_string)
                .or_else(|| {
                    object::array_at(&obj, "/spec/containers")
                        .first()
                        .map(|c| object::str_at(c, "/name").to_string())
                })
                .unwrap_or_default();
            let text = format!(
                "kube-sim: container \"{container}\" of pod {}/{} did not run. The sim cluster runs no containers: its kubelet only checks that images are present and reports pods as started, so there are no logs.\n",
                t.ns(),
                t.name()
            );
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain")], text).into_response())
        }
        Some("scale") => Ok(json_response(StatusCode::OK, &scale_of(&obj))),
        _ => {
            let obj = served(&t.def, &t.version, obj);
            if printers::wants_table(accept) {
                let rv = object::resource_version(&obj).to_string();
                let table = printers::table(
                    &t.def,
                    &t.version,
                    &[obj],
                    &rv,
                    IncludeObject::parse(param(q, "includeObject")),
                );
                return Ok(json_response(StatusCode::OK, &table));
            }
            Ok(json_response(StatusCode::OK, &obj))
        }
    }
}

fn list(sim: &Sim, t: &Target, q: &Params, accept: &str) -> Result<Response, ApiError> {
    let filter = Filter::from(t, q)?;
    let gr = t.gr();
    let (items, rv) = sim.store.transact(|txn| {
        let items: Vec<Value> = txn
            .list(&gr)
            .filter(|o| filter.matches(o))
            .map(|o| served(&t.def, &t.version, o.clone()))
            .collect();
        (items, txn.rv())
    });
    if printers::wants_table(accept) {
        let table = printers::table(
            &t.def,
            &t.version,
            &items,
            &rv.to_string(),
            IncludeObject::parse(param(q, "includeObject")),
        );
        return Ok(json_response(StatusCode::OK, &table));
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", t.def.kind),
            "apiVersion": t.api_version(),
            "metadata": {"resourceVersion": rv.to_string()},
            "items": items,
        }),
    ))
}

fn watch_line(kind: &str, obj: Value) -> Bytes {
    let mut line = json!({"type": kind, "object": obj}).to_string();
    line.push('\n');
    Bytes::from(line)
}

fn bookmark(t: &Target, rv: u64, initial_end: bool) -> Value {
    let mut meta = json!({"resourceVersion": rv.to_string()});
    if initial_end {
        meta["annotations"] = json!({"k8s.io/initial-events-end": "true"});
    }
    json!({"kind": t.def.kind, "apiVersion": t.api_version(), "metadata": meta})
}

fn watch(sim: Arc<Sim>, t: Target, q: &Params, accept: &str) -> Result<Response, ApiError> {
    let filter = Filter::from(&t, q)?;
    let send_initial = flag(q, "sendInitialEvents");
    let rv_param = param(q, "resourceVersion").unwrap_or("");
    let from_current_state = send_initial || rv_param.is_empty() || rv_param == "0";
    let gr = t.gr();
    let (initial, start_rv) = if from_current_state {
        sim.store.transact(|txn| {
            let objs: Vec<Value> = txn
                .list(&gr)
                .filter(|o| filter.matches(o))
                .cloned()
                .collect();
            (objs, txn.rv())
        })
    } else {
        let rv: u64 = rv_param
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv_param}")))?;
        (Vec::new(), rv)
    };
    let timeout = param(q, "timeoutSeconds")
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1800);
    let bookmarks = flag(q, "allowWatchBookmarks");
    let table =
        printers::wants_table(accept).then(|| IncludeObject::parse(param(q, "includeObject")));
    let (tx, rx) = mpsc::channel::<Bytes>(256);
    tokio::spawn(run_watch(WatchTask {
        sim,
        t,
        filter,
        initial,
        start_rv,
        from_current_state,
        send_initial_end: send_initial && bookmarks,
        bookmarks,
        timeout: Duration::from_secs(timeout),
        table,
        tx,
    }));
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(b), rx))
    });
    Ok(Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()))
}

struct WatchTask {
    sim: Arc<Sim>,
    t: Target,
    filter: Filter,
    initial: Vec<Value>,
    start_rv: u64,
    from_current_state: bool,
    send_initial_end: bool,
    bookmarks: bool,
    timeout: Duration,
    table: Option<IncludeObject>,
    tx: mpsc::Sender<Bytes>,
}

async fn run_watch(w: WatchTask) {
    let WatchTask {
        sim,
        t,
        filter,
        initial,
        start_rv,
        from_current_state,
        send_initial_end,
        bookmarks,
        timeout,
        table,
        tx,
    } = w;
    let render = |obj: Value| -> Value {
        let obj = served(&t.def, &t.version, obj);
        match table {
            Some(inc) => {
                let rv = object::resource_version(&obj).to_string();
                printers::table(&t.def, &t.version, &[obj], &rv, inc)
            }
            None => obj,
        }
    };
    let key = |o: &Value| {
        (
            object::namespace(o).to_string(),
            object::name(o).to_string(),
        )
    };
    let mut known: HashSet<(String, String)> = HashSet::new();
    let resumed = !from_current_state;
    for obj in initial {
        known.insert(key(&obj));
        if tx.send(watch_line("ADDED", render(obj))).await.is_err() {
            return;
        }
    }
    if send_initial_end
        && tx
            .send(watch_line("BOOKMARK", bookmark(&t, start_rv, true)))
            .await
            .is_err()
    {
        return;
    }
    let gr = t.gr();
    let mut cursor = start_rv;
    let mut changes = sim.store.subscribe();
    let mut shutdown = sim.shutdown.clone();
    let deadline = tokio::time::Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.tick().await;
    loop {
        changes.borrow_and_update();
        match sim.store.events_after(cursor) {
            Err(expired) => {
                let status = ApiError::new(
                    StatusCode::GONE,
                    "Expired",
                    format!(
                        "too old resource version: {} ({})",
                        expired.requested, expired.oldest
                    ),
                )
                .status_json();
                let _ = tx.send(watch_line("ERROR", status)).await;
                return;
            }
            Ok(entries) => {
                for e in entries {
                    cursor = e.rv;
                    if e.gr != gr {
                        continue;
                    }
                    let k = key(&e.object);
                    let matches = filter.matches(&e.object);
                    let was_known = known.contains(&k);
                    let kind: &str = match e.kind {
                        EventType::Deleted if was_known || matches => {
                            known.remove(&k);
                            "DELETED"
                        }
                        EventType::Deleted => continue,
                        _ if matches => {
                            known.insert(k);
                            // A resumed watch has no initial state: what it did not see
                            // created is a modification of something it already had.
                            if e.kind == EventType::Added || (!was_known && !resumed) {
                                "ADDED"
                            } else {
                                "MODIFIED"
                            }
                        }
                        _ if was_known => {
                            // Stopped matching the selector: gone from this watch's view.
                            known.remove(&k);
                            "DELETED"
                        }
                        _ => continue,
                    };
                    if tx
                        .send(watch_line(kind, render(e.object.clone())))
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            }
        }
        tokio::select! {
            r = changes.changed() => if r.is_err() { return },
            _ = tokio::time::sleep_until(deadline) => return,
            _ = crate::wait_shutdown(&mut shutdown) => return,
            _ = tick.tick() => {
                if bookmarks && tx.send(watch_line("BOOKMARK", bookmark(&t, cursor, false))).await.is_err() {
                    return;
                }
                if tx.is_closed() {
                    return;
                }
            }
        }
    }
}

fn scale_of(obj: &Value) -> Value {
    let selector = obj
        .pointer("/spec/selector")
        .map(|s| match selectors::from_label_selector_object(s) {
            Ok(sel) => sel
                .0
                .iter()
                .map(|r| match r {
                    selectors::Requirement::Equals(k, v) => format!("{k}={v}"),
                    other => format!("{other:?}"),
                })
                .collect::<Vec<_>>()
                .join(","),
            Err(_) => String::new(),
        })
        .unwrap_or_default();
    json!({
        "kind": "Scale",
        "apiVersion": "autoscaling/v1",
        "metadata": {
            "name": object::name(obj),
            "namespace": object::namespace(obj),
            "uid": object::uid(obj),
            "resourceVersion": object::resource_version(obj),
            "creationTimestamp": object::str_at(obj, "/metadata/creationTimestamp"),
        },
        "spec": {"replicas": object::i64_at(obj, "/spec/replicas").unwrap_or(0)},
        "status": {"replicas": object::i64_at(obj, "/status/replicas").unwrap_or(0), "selector": selector},
    })
}

// ---- writes -------------------------------------------------------------------

/// Checks apiVersion/kind/namespace/name of a body against the URL and fills
/// what is missing.
fn settle_identity(t: &Target, obj: &mut Value, url_name: Option<&str>) -> Result<(), ApiError> {
    let Some(map) = obj.as_object_mut() else {
        return Err(ApiError::bad_request("the request body is not an object"));
    };
    let api_version = t.api_version();
    match map.get("apiVersion").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("apiVersion".into(), json!(api_version));
        }
        Some(v)
            if v == api_version
                || (t.def.crd.is_some()
                    && t.def.versions.iter().any(|sv| t.def.api_version(sv) == v)) => {}
        Some(v) => {
            return Err(ApiError::bad_request(format!(
                "the API version in the data ({v}) does not match the expected API version ({api_version})"
            )));
        }
    }
    // Stored in the preferred version.
    map.insert(
        "apiVersion".into(),
        json!(t.def.api_version(t.def.preferred_version())),
    );
    match map.get("kind").and_then(Value::as_str) {
        None | Some("") => {
            map.insert("kind".into(), json!(t.def.kind));
        }
        Some(k) if k == t.def.kind => {}
        Some(k) => {
            return Err(ApiError::bad_request(format!(
                "the kind in the data ({k}) does not match the expected kind ({})",
                t.def.kind
            )));
        }
    }
    let meta = object::ensure_object(obj, &["metadata"]);
    if t.def.namespaced {
        let url_ns = t.ns();
        match meta.get("namespace").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("namespace".into(), json!(url_ns));
            }
            Some(ns) if ns == url_ns => {}
            Some(_) => {
                return Err(ApiError::bad_request(
                    "the namespace of the provided object does not match the namespace sent on the request",
                ));
            }
        }
    } else {
        meta.remove("namespace");
    }
    if let Some(url_name) = url_name {
        match meta.get("name").and_then(Value::as_str) {
            None | Some("") => {
                meta.insert("name".into(), json!(url_name));
            }
            Some(n) if n == url_name => {}
            Some(n) => {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({n}) does not match the name on the URL ({url_name})"
                )));
            }
        }
    }
    Ok(())
}

/// Defaults, validation and allocation for an object about to be written.
/// Returns warnings (unknown fields under fieldValidation=Warn).
fn admit(
    txn: &Txn<'_>,
    t: &Target,
    obj: &mut Value,
    old: Option<&Value>,
    fv: FieldValidation,
) -> Result<Vec<String>, ApiError> {
    let def = &t.def;
    admission::apply_defaults(def, obj, old);
    let name = object::name(obj).to_string();
    let unknown = match def.schema(def.preferred_version()) {
        Some(schema) => {
            let mut errs = Vec::new();
            let unknown = validate::check_schema(schema, obj, &mut errs);
            if !errs.is_empty() {
                return Err(ApiError::invalid(def, &name, &errs));
            }
            unknown
        }
        None => validate::check_typed(def, obj).map_err(|e| ApiError::invalid(def, &name, &[e]))?,
    };
    let mut warnings = Vec::new();
    if !unknown.is_empty() {
        match fv {
            FieldValidation::Strict => {
                let list: Vec<String> = unknown
                    .iter()
                    .map(|u| format!("unknown field \"{u}\""))
                    .collect();
                return Err(ApiError::bad_request(format!(
                    "{} in version \"{}\" cannot be handled as a {}: strict decoding error: {}",
                    def.kind,
                    def.preferred_version(),
                    def.kind,
                    list.join(", ")
                )));
            }
            FieldValidation::Warn => {
                warnings = unknown
                    .iter()
                    .map(|u| format!("unknown field \"{u}\""))
                    .collect();
            }
            FieldValidation::Ignore => {}
        }
    }
    let errs = validate::validate(def, obj, old);
    if !errs.is_empty() {
        return Err(ApiError::invalid(def, &name, &errs));
    }
    if def.group.is_empty() && def.kind == "Service" {
        admission::allocate_service(txn, obj, old)
            .map_err(|r| ApiError::from_refusal(def, &name, r))?;
    }
    Ok(warnings)
}

/// Drops what clients may not set on create.
fn strip_server_fields(obj: &mut Value) {
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        for k in [
            "uid",
            "resourceVersion",
            "creationTimestamp",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "generation",
            "managedFields",
            "selfLink",
        ] {
            meta.remove(k);
        }
    }
}

/// Creates `obj` inside a transaction (shared by POST and apply-creates).
fn create_in(
    txn: &mut Txn<'_>,
    t: &Target,
    mut obj: Value,
    q: &Params,
) -> Result<(Value, Vec<String>), ApiError> {
    strip_server_fields(&mut obj);
    let gr = t.gr();
    if object::name(&obj).is_empty() {
        let prefix = object::str_at(&obj, "/metadata/generateName").to_string();
        if !prefix.is_empty() {
            let ns = object::namespace(&obj).to_string();
            let name = loop {
                let n = object::generate_name(&prefix);
                if txn.get(&gr, &ns, &n).is_none() {
                    break n;
                }
            };
            object::ensure_object(&mut obj, &["metadata"]).insert("name".into(), json!(name));
        }
    }
    let name = object::name(&obj).to_string();
    if t.def.namespaced {
        let what = format!("{} \"{name}\"", gr.qualified());
        admission::check_namespace(txn, object::namespace(&obj), &what)
            .map_err(|r| ApiError::from_refusal(&t.def, &name, r))?;
    }
    if t.def.has_status() || t.def.group.is_empty() && t.def.kind == "Namespace" {
        match admission::initial_status(&t.def) {
            Some(s) => obj["status"] = s,
            None => {
                if let Some(m) = obj.as_object_mut() {
                    m.remove("status");
                }
            }
        }
    }
    let warnings = admit(txn, t, &mut obj, None, field_validation(q)?)?;
    if t.def.group.is_empty() && t.def.kind == "Pod" {
        admission::admit_pod(txn, &obj).map_err(|r| ApiError::from_refusal(&t.def, &name, r))?;
    }
    if txn.get(&gr, object::namespace(&obj), &name).is_some() {
        return Err(ApiError::already_exists(&gr, &name));
    }
    if dry_run(q) {
        return Ok((obj, warnings));
    }
    let created = txn
        .create(&gr, obj)
        .map_err(|e| store_error(e, &gr, &name))?;
    if t.def.group.is_empty() && t.def.kind == "Namespace" {
        controllers::namespace::populate(txn, &name);
    }
    Ok((created, warnings))
}

fn create(
    sim: &Sim,
    t: &Target,
    q: &Params,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    if t.sub.is_some() {
        return Err(ApiError::method_not_allowed());
    }
    let mut obj = decode_body(headers, body)?;
    settle_identity(t, &mut obj, None)?;
    let (created, warnings) = sim.store.transact(|txn| create_in(txn, t, obj, q))?;
    Ok(with_warnings(
        json_response(StatusCode::CREATED, &served(&t.def, &t.version, created)),
        &warnings,
    ))
}

/// Gives `to` the status of `from` (none when `from` has none).
fn carry_status(from: &Value, to: &mut Value) {
    match from.get("status") {
        Some(status) => to["status"] = status.clone(),
        None => {
            if let Some(map) = to.as_object_mut() {
                map.remove("status");
            }
        }
    }
}

/// Applies the subresource rules to a new version of an object: the main
/// resource keeps the stored status; `/status` changes only status.
fn merge_for_subresource(t: &Target, old: &Value, mut new: Value) -> Value {
    match t.sub.as_deref() {
        Some("status") => {
            let mut out = old.clone();
            carry_status(&new, &mut out);
            out
        }
        Some("finalize") => {
            let mut out = old.clone();
            out["spec"]["finalizers"] = new
                .pointer("/spec/finalizers")
                .cloned()
                .unwrap_or(json!([]));
            out
        }
        _ => {
            if t.def.has_status() {
                carry_status(old, &mut new);
            }
            new
        }
    }
}

/// Writes a new version of an existing object (PUT and PATCH).
fn update_in(
    txn: &mut Txn<'_>,
    t: &Target,
    old: &Value,
    new: Value,
    q: &Params,
) -> Result<(Value, Vec<String>), ApiError> {
    let gr = t.gr();
    let name = t.name().to_string();
    let rv = object::resource_version(&new).to_string();
    if !rv.is_empty() && rv != object::resource_version(old) {
        return Err(ApiError::conflict(&gr, &name));
    }
    let mut obj = merge_for_subresource(t, old, new);
    if let Some(meta) = obj.get_mut("metadata").and_then(Value::as_object_mut) {
        meta.remove("selfLink");
    }
    let warnings = if t.sub.as_deref() == Some("status") {
        Vec::new()
    } else {
        admit(txn, t, &mut obj, Some(old), field_validation(q)?)?
    };
    if dry_run(q) {
        return Ok((obj, warnings));
    }
    let updated = txn
        .update(&gr, obj)
        .map_err(|e| store_error(e, &gr, &name))?;
    Ok((updated, warnings))
}

fn update(
    sim: &Sim,
    t: &Target,
    q: &Params,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let mut body = decode_body(headers, body)?;
    let gr = t.gr();
    if t.sub.as_deref() == Some("scale") {
        let replicas = body
            .pointer("/spec/replicas")
            .and_then(Value::as_i64)
            .unwrap_or(0);
        let (obj, _) = sim.store.transact(|txn| {
            let old = txn
                .get(&gr, t.ns(), t.name())
                .cloned()
                .ok_or_else(|| ApiError::not_found(&gr, t.name()))?;
            let mut new = old.clone();
            new["spec"]["replicas"] = json!(replicas);
            let main = Target {
                def: t.def.clone(),
                version: t.version.clone(),
                namespace: t.namespace.clone(),
                name: t.name.clone(),
                sub: None,
            };
            update_in(txn, &main, &old, new, q)
        })?;
        return Ok(json_response(StatusCode::OK, &scale_of(&obj)));
    }
    settle_identity(t, &mut body, t.name.as_deref())?;
    let (obj, warnings) = sim.store.transact(|txn| {
        let old = txn
            .get(&gr, t.ns(), t.name())
            .cloned()
            .ok_or_else(|| ApiError::not_found(&gr, t.name()))?;
        update_in(txn, t, &old, body, q)
    })?;
    Ok(with_warnings(
        json_response(StatusCode::OK, &served(&t.def, &t.version, obj)),
        &warnings,
    ))
}

/// `managedFields`-style field set of an applied configuration.
fn fields_v1(v: &Value, path: &mut Vec<String>) -> Value {
    match v {
        Value::Object(m) => {
            let mut out = serde_json::Map::new();
            for (k, child) in m {
                path.push(k.clone());
                out.insert(format!("f:{k}"), fields_v1(child, path));
                path.pop();
            }
            Value::Object(out)
        }
        Value::Array(items) => {
            let fields: Vec<String> = path.clone();
            match patch::builtin_list_merge(&fields, items) {
                patch::ListMerge::Keyed(keys) => {
                    let mut out = serde_json::Map::new();
                    for item in items {
                        let key: serde_json::Map<String, Value> = keys
                            .iter()
                            .filter_map(|k| item.get(k).map(|v| (k.clone(), v.clone())))
                            .collect();
                        let mut inner = fields_v1(item, path);
                        inner["."] = json!({});
                        out.insert(format!("k:{}", Value::Object(key)), inner);
                    }
                    Value::Object(out)
                }
                patch::ListMerge::Set => {
                    let out: serde_json::Map<String, Value> = items
                        .iter()
                        .map(|i| (format!("v:{i}"), json!({})))
                        .collect();
                    Value::Object(out)
                }
                patch::ListMerge::Replace => json!({}),
            }
        }
        _ => json!({}),
    }
}

fn record_apply(obj: &mut Value, manager: &str, api_version: &str, applied: &Value) {
    let mut fields = applied.clone();
    if let Some(m) = fields.as_object_mut() {
        m.remove("apiVersion");
        m.remove("kind");
        if let Some(meta) = m.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.remove("name");
            meta.remove("namespace");
            if meta.is_empty() {
                m.remove("metadata");
            }
        }
    }
    let entry = json!({
        "manager": manager,
        "operation": "Apply",
        "apiVersion": api_version,
        "time": object::now(),
        "fieldsType": "FieldsV1",
        "fieldsV1": fields_v1(&fields, &mut Vec::new()),
    });
    let meta = object::ensure_object(obj, &["metadata"]);
    let list = meta.entry("managedFields").or_insert_with(|| json!([]));
    if let Some(list) = list.as_array_mut() {
        list.retain(|e| !(e["manager"] == manager && e["operation"] == "Apply"));
        list.push(entry);
    }
}

fn patch(
    sim: &Sim,
    t: &Target,
    q: &Params,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let unsupported = || {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "UnsupportedMediaType",
            format!(
                "the body of the request was in an unknown format - accepted media types include: application/json-patch+json, application/merge-patch+json, application/apply-patch+yaml{}",
                if t.def.crd.is_none() {
                    ", application/strategic-merge-patch+json"
                } else {
                    ""
                }
            ),
        )
    };
    let pt = PatchType::from_content_type(ct).ok_or_else(unsupported)?;
    if pt == PatchType::Strategic && t.def.crd.is_some() {
        return Err(unsupported());
    }
    let patch_body = decode_body(headers, body)?;
    let gr = t.gr();
    let name = t.name().to_string();
    let manager = param(q, "fieldManager").unwrap_or("").to_string();
    if pt == PatchType::Apply {
        if manager.is_empty() {
            return Err(ApiError::bad_request(
                "PatchOptions.meta.k8s.io \"\" is invalid: fieldManager: Required value: is required for apply patch",
            ));
        }
        if patch_body
            .pointer("/metadata/managedFields")
            .is_some_and(|m| !m.is_null())
        {
            return Err(ApiError::bad_request("metadata.managedFields must be nil"));
        }
    }
    let rules_schema = t.def.schema(t.def.preferred_version()).cloned();
    let rules = match &rules_schema {
        Some(s) => MergeRules::Schema(s),
        None => MergeRules::Builtin,
    };
    let main = Target {
        def: t.def.clone(),
        version: t.version.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        sub: None,
    };
    let (code, obj, warnings) = sim.store.transact(
        |txn| -> Result<(StatusCode, Value, Vec<String>), ApiError> {
            let current = txn.get(&gr, t.ns(), &name).cloned();
            let mut applied = Value::Null;
            if pt == PatchType::Apply {
                applied = patch_body.clone();
                settle_identity(t, &mut applied, Some(&name))?;
            }
            let Some(current) = current else {
                if pt != PatchType::Apply || t.sub.is_some() {
                    return Err(ApiError::not_found(&gr, &name));
                }
                let (mut created, warnings) = create_in(txn, t, applied.clone(), q)?;
                if !dry_run(q) {
                    record_apply(&mut created, &manager, &t.api_version(), &patch_body);
                    created = txn
                        .update(&gr, created)
                        .map_err(|e| store_error(e, &gr, &name))?;
                    remember_apply(sim, &created, &manager, &applied);
                }
                return Ok((StatusCode::CREATED, created, warnings));
            };
            let (target_doc, is_scale) = match t.sub.as_deref() {
                Some("scale") => (scale_of(&current), true),
                _ => (current.clone(), false),
            };
            let patched = match pt {
                PatchType::Json => patch::json_patch(&target_doc, &patch_body)
                    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e))?,
                PatchType::Merge => patch::merge_patch(&target_doc, &patch_body),
                PatchType::Strategic => patch::strategic_merge(&target_doc, &patch_body)
                    .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "Invalid", e))?,
                PatchType::Apply => {
                    let mut base = target_doc.clone();
                    let previous = sim
                        .applied
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get(&(object::uid(&current).to_string(), manager.clone()))
                        .cloned();
                    if let Some(prev) = previous {
                        patch::remove_unapplied(&mut base, &prev, &applied, &rules);
                    }
                    let mut merged = patch::apply_merge(&base, &applied, &rules);
                    // Apply carries no resourceVersion precondition unless the config sets one.
                    if applied.pointer("/metadata/resourceVersion").is_none() {
                        merged["metadata"]["resourceVersion"] =
                            json!(object::resource_version(&current));
                    }
                    merged
                }
            };
            if is_scale {
                let replicas = patched
                    .pointer("/spec/replicas")
                    .cloned()
                    .unwrap_or(json!(0));
                let mut new = current.clone();
                new["spec"]["replicas"] = replicas;
                let (obj, w) = update_in(txn, &main, &current, new, q)?;
                return Ok((StatusCode::OK, scale_of(&obj), w));
            }
            let mut patched = patched;
            if !patched.is_object() {
                return Err(ApiError::bad_request(
                    "the patch did not result in an object",
                ));
            }
            if object::name(&patched) != name {
                return Err(ApiError::bad_request(format!(
                    "the name of the object ({}) does not match the name on the URL ({name})",
                    object::name(&patched)
                )));
            }
            if pt == PatchType::Apply {
                record_apply(&mut patched, &manager, &t.api_version(), &patch_body);
            }
            let (obj, w) = update_in(txn, t, &current, patched, q)?;
            if pt == PatchType::Apply && !dry_run(q) {
                remember_apply(sim, &obj, &manager, &applied);
            }
            Ok((StatusCode::OK, obj, w))
        },
    )?;
    let obj = if t.sub.as_deref() == Some("scale") {
        obj
    } else {
        served(&t.def, &t.version, obj)
    };
    Ok(with_warnings(json_response(code, &obj), &warnings))
}

fn remember_apply(sim: &Sim, obj: &Value, manager: &str, applied: &Value) {
    sim.applied
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(
            (object::uid(obj).to_string(), manager.to_string()),
            applied.clone(),
        );
}

fn delete_options(
    headers: &HeaderMap,
    body: &[u8],
    q: &Params,
) -> Result<(String, Value), ApiError> {
    let opts = if body.iter().all(u8::is_ascii_whitespace) {
        json!({})
    } else {
        decode_body(headers, body)?
    };
    let policy = param(q, "propagationPolicy")
        .map(str::to_string)
        .or_else(|| {
            opts.get("propagationPolicy")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .unwrap_or_else(|| "Background".to_string());
    if !matches!(policy.as_str(), "Background" | "Foreground" | "Orphan") {
        return Err(ApiError::bad_request(format!(
            "DeleteOptions.meta.k8s.io \"\" is invalid: propagationPolicy: Unsupported value: \"{policy}\": supported values: \"Foreground\", \"Background\", \"Orphan\", \"nil\""
        )));
    }
    Ok((policy, opts))
}

/// Deletes one object inside a transaction, honouring the propagation policy.
fn delete_in(
    txn: &mut Txn<'_>,
    def: &ResourceDef,
    ns: &str,
    name: &str,
    policy: &str,
    opts: &Value,
    dry: bool,
) -> Result<Result<Value, Value>, ApiError> {
    let gr = def.gr();
    let current = txn
        .get(&gr, ns, name)
        .cloned()
        .ok_or_else(|| ApiError::not_found(&gr, name))?;
    if let Some(uid) = opts.pointer("/preconditions/uid").and_then(Value::as_str)
        && uid != object::uid(&current)
    {
        return Err(ApiError::conflict(&gr, name));
    }
    if let Some(rv) = opts
        .pointer("/preconditions/resourceVersion")
        .and_then(Value::as_str)
        && rv != object::resource_version(&current)
    {
        return Err(ApiError::conflict(&gr, name));
    }
    if def.group.is_empty()
        && def.kind == "Namespace"
        && matches!(name, "default" | "kube-system" | "kube-public")
    {
        return Err(ApiError::forbidden(format!(
            "namespaces \"{name}\" is forbidden: this namespace may not be deleted"
        )));
    }
    if dry {
        return Ok(Err(current));
    }
    let uid = object::uid(&current).to_string();
    match policy {
        "Orphan" => controllers::gc::orphan_dependents(txn, &uid),
        "Foreground" => {
            let mut held = current.clone();
            let fin = object::ensure_object(&mut held, &["metadata"])
                .entry("finalizers")
                .or_insert_with(|| json!([]));
            if let Some(list) = fin.as_array_mut()
                && !list.iter().any(|f| f == "foregroundDeletion")
            {
                list.push(json!("foregroundDeletion"));
            }
            txn.update(&gr, held)
                .map_err(|e| store_error(e, &gr, name))?;
        }
        _ => {}
    }
    match txn
        .delete(&gr, ns, name)
        .map_err(|e| store_error(e, &gr, name))?
    {
        Deletion::Gone(obj) => Ok(Ok(obj)),
        Deletion::Pending(mut obj) => {
            if def.group.is_empty()
                && def.kind == "Namespace"
                && object::str_at(&obj, "/status/phase") != "Terminating"
            {
                obj["status"]["phase"] = json!("Terminating");
                obj = txn
                    .update(&gr, obj)
                    .map_err(|e| store_error(e, &gr, name))?;
            }
            Ok(Err(obj))
        }
    }
}

fn delete(
    sim: &Sim,
    t: &Target,
    q: &Params,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Response, ApiError> {
    if t.sub.is_some() {
        return Err(ApiError::method_not_allowed());
    }
    let (policy, opts) = delete_options(headers, body, q)?;
    let result = sim
        .store
        .transact(|txn| delete_in(txn, &t.def, t.ns(), t.name(), &policy, &opts, dry_run(q)))?;
    match result {
        Ok(gone) => Ok(json_response(
            StatusCode::OK,
            &json!({
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Success",
                "details": {"name": t.name(), "group": t.def.group, "kind": t.def.plural, "uid": object::uid(&gone)},
            }),
        )),
        Err(pending) => Ok(json_response(
            StatusCode::OK,
            &served(&t.def, &t.version, pending),
        )),
    }
}

fn delete_collection(sim: &Sim, t: &Target, q: &Params) -> Result<Response, ApiError> {
    let filter = Filter::from(t, q)?;
    let gr = t.gr();
    let policy = param(q, "propagationPolicy")
        .unwrap_or("Background")
        .to_string();
    let items = sim.store.transact(|txn| -> Result<Vec<Value>, ApiError> {
        let keys: Vec<(String, String)> = txn
            .list(&gr)
            .filter(|o| filter.matches(o))
            .map(|o| {
                (
                    object::namespace(o).to_string(),
                    object::name(o).to_string(),
                )
            })
            .collect();
        let mut out = Vec::new();
        for (ns, name) in keys {
            match delete_in(txn, &t.def, &ns, &name, &policy, &json!({}), dry_run(q)) {
                Ok(Ok(o)) | Ok(Err(o)) => out.push(o),
                Err(e) if e.code == StatusCode::FORBIDDEN => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    })?;
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "kind": format!("{}List", t.def.kind),
            "apiVersion": t.api_version(),
            "metadata": {"resourceVersion": sim.store.current_rv().to_string()},
            "items": items,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_messages_match_the_real_server() {
        let gr = GroupResource::new("apps", "deployments");
        let e = ApiError::not_found(&gr, "x");
        let s = e.status_json();
        assert_eq!(s["message"], "deployments.apps \"x\" not found");
        assert_eq!(s["code"], 404);
        assert_eq!(s["reason"], "NotFound");
        assert_eq!(s["details"]["kind"], "deployments");
        let e = ApiError::already_exists(&GroupResource::new("", "configmaps"), "c");
        assert_eq!(
            e.status_json()["message"],
            "configmaps \"c\" already exists"
        );
        assert_eq!(e.status_json()["code"], 409);
    }

    #[test]
    fn field_sets_use_keys_for_keyed_lists() {
        let applied = json!({"spec": {"template": {"spec": {"containers": [{"name": "app", "image": "x"}]}}}});
        let f = fields_v1(&applied, &mut Vec::new());
        let c = &f["f:spec"]["f:template"]["f:spec"]["f:containers"];
        assert!(c.get("k:{\"name\":\"app\"}").is_some(), "{c}");
        assert!(c["k:{\"name\":\"app\"}"].get("f:image").is_some());
    }
}
