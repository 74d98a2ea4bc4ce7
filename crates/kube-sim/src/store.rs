//! The object store: every object of every resource as JSON, one global
//! resourceVersion counter, and an event log that watches read from.
//!
//! All reads and writes go through [`Store::transact`], which holds one lock
//! for the closure's duration. That makes every read-modify-write atomic (the
//! HTTP handlers and the controllers never lose each other's updates) without
//! retry loops. Watchers do not hold the lock: they wait on a `watch` channel
//! carrying the latest resourceVersion and then copy the log entries after
//! their cursor.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Value, json};
use tokio::sync::watch;

use crate::object;

/// How many change events are kept for watches that resume from an older
/// resourceVersion. A watch asking for something older gets 410 Gone, as from
/// a compacted etcd, and a kube-runtime watcher then lists again.
const LOG_CAPACITY: usize = 20_000;

/// A resource (plural) in an API group; "" is the core group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupResource {
    pub group: String,
    pub resource: String,
}

impl GroupResource {
    pub fn new(group: &str, resource: &str) -> Self {
        Self {
            group: group.to_string(),
            resource: resource.to_string(),
        }
    }

    /// "deployments.apps", or "pods" for the core group, as in API messages.
    pub fn qualified(&self) -> String {
        if self.group.is_empty() {
            self.resource.clone()
        } else {
            format!("{}.{}", self.resource, self.group)
        }
    }
}

/// The kind of change a watch event reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

/// One change in the log.
#[derive(Debug)]
pub struct LogEntry {
    pub rv: u64,
    pub gr: GroupResource,
    pub kind: EventType,
    pub object: Value,
}

/// Errors of store operations; the HTTP layer turns them into Status objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    NotFound,
    AlreadyExists,
}

/// What a delete did.
#[derive(Debug)]
pub enum Deletion {
    /// The object is gone; this was its last state.
    Gone(Value),
    /// Finalizers hold it: deletionTimestamp is set and it stays until they are removed.
    Pending(Value),
}

type Key = (String, String);

struct State {
    rv: u64,
    objects: BTreeMap<GroupResource, BTreeMap<Key, Value>>,
    log: VecDeque<Arc<LogEntry>>,
    /// Highest resourceVersion whose event is no longer in the log.
    compacted: u64,
}

/// The shared object store.
pub struct Store {
    state: Mutex<State>,
    notify: watch::Sender<u64>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    pub fn new() -> Self {
        let (notify, _) = watch::channel(1);
        Self {
            state: Mutex::new(State {
                rv: 1,
                objects: BTreeMap::new(),
                log: VecDeque::new(),
                compacted: 1,
            }),
            notify,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic inside a transaction leaves the data consistent enough for a
        // test server; keep serving rather than poisoning every later request.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` with exclusive access; watchers are woken if it wrote anything.
    pub fn transact<R>(&self, f: impl FnOnce(&mut Txn<'_>) -> R) -> R {
        let (result, changed, rv) = {
            let mut guard = self.lock();
            let mut txn = Txn {
                state: &mut guard,
                changed: false,
            };
            let r = f(&mut txn);
            let changed = txn.changed;
            (r, changed, guard.rv)
        };
        if changed {
            self.notify.send_replace(rv);
        }
        result
    }

    /// A receiver that changes whenever the store does.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.notify.subscribe()
    }

    /// The current resourceVersion.
    pub fn current_rv(&self) -> u64 {
        self.lock().rv
    }

    /// Log entries after `rv`, or Err(()) when some of them were dropped already.
    pub fn events_after(&self, rv: u64) -> Result<Vec<Arc<LogEntry>>, Expired> {
        let state = self.lock();
        if rv < state.compacted {
            return Err(Expired {
                requested: rv,
                oldest: state.compacted,
            });
        }
        let start = state.log.partition_point(|e| e.rv <= rv);
        Ok(state.log.range(start..).cloned().collect())
    }
}

/// A watch asked for a resourceVersion older than the log keeps.
#[derive(Debug, Clone, Copy)]
pub struct Expired {
    pub requested: u64,
    pub oldest: u64,
}

/// Access to the store inside [`Store::transact`].
pub struct Txn<'a> {
    state: &'a mut State,
    changed: bool,
}

fn key_of(obj: &Value) -> Key {
    (
        object::namespace(obj).to_string(),
        object::name(obj).to_string(),
    )
}

/// Whether finalizers keep `obj` alive after a delete: metadata.finalizers, and
/// for namespaces also spec.finalizers (the namespace controller's "kubernetes").
fn has_finalizers(gr: &GroupResource, obj: &Value) -> bool {
    let meta = !object::array_at(obj, "/metadata/finalizers").is_empty();
    let ns = gr.group.is_empty()
        && gr.resource == "namespaces"
        && !object::array_at(obj, "/spec/finalizers").is_empty();
    meta || ns
}

/// Whether anything besides metadata and status differs (that bumps generation).
fn spec_changed(old: &Value, new: &Value) -> bool {
    let strip = |v: &Value| -> Value {
        let mut v = v.clone();
        if let Some(m) = v.as_object_mut() {
            for k in ["metadata", "status", "apiVersion", "kind"] {
                m.remove(k);
            }
        }
        v
    };
    strip(old) != strip(new)
}

impl Txn<'_> {
    /// The resourceVersion as of now.
    pub fn rv(&self) -> u64 {
        self.state.rv
    }

    pub fn get(&self, gr: &GroupResource, namespace: &str, name: &str) -> Option<&Value> {
        self.state
            .objects
            .get(gr)?
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// All objects of `gr`, ordered by namespace then name.
    pub fn list(&self, gr: &GroupResource) -> impl Iterator<Item = &Value> {
        self.state
            .objects
            .get(gr)
            .into_iter()
            .flat_map(|m| m.values())
    }

    /// Objects of `gr` in `namespace`.
    pub fn list_in<'s>(
        &'s self,
        gr: &'s GroupResource,
        namespace: &'s str,
    ) -> impl Iterator<Item = &'s Value> + 's {
        self.list(gr)
            .filter(move |o| object::namespace(o) == namespace)
    }

    /// Every resource that holds at least one object.
    pub fn resources(&self) -> Vec<GroupResource> {
        self.state
            .objects
            .iter()
            .filter(|(_, m)| !m.is_empty())
            .map(|(gr, _)| gr.clone())
            .collect()
    }

    fn bump(&mut self) -> u64 {
        self.state.rv += 1;
        self.changed = true;
        self.state.rv
    }

    fn log(&mut self, gr: &GroupResource, kind: EventType, object: Value) {
        let entry = Arc::new(LogEntry {
            rv: self.state.rv,
            gr: gr.clone(),
            kind,
            object,
        });
        self.state.log.push_back(entry);
        while self.state.log.len() > LOG_CAPACITY {
            if let Some(old) = self.state.log.pop_front() {
                self.state.compacted = old.rv;
            }
        }
    }

    /// Stores a new object: sets uid (unless set), creationTimestamp,
    /// generation and resourceVersion. The caller has settled name and namespace.
    pub fn create(&mut self, gr: &GroupResource, mut obj: Value) -> Result<Value, StoreError> {
        let key = key_of(&obj);
        if self
            .state
            .objects
            .get(gr)
            .is_some_and(|m| m.contains_key(&key))
        {
            return Err(StoreError::AlreadyExists);
        }
        let rv = self.bump();
        let meta = object::ensure_object(&mut obj, &["metadata"]);
        // Admission may have picked the uid already (a Job's generated selector names it).
        if meta
            .get("uid")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            meta.insert("uid".into(), json!(uuid::Uuid::new_v4().to_string()));
        }
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        meta.insert("creationTimestamp".into(), json!(object::now()));
        meta.insert("generation".into(), json!(1));
        meta.remove("deletionTimestamp");
        meta.remove("deletionGracePeriodSeconds");
        self.state
            .objects
            .entry(gr.clone())
            .or_default()
            .insert(key, obj.clone());
        self.log(gr, EventType::Added, obj.clone());
        Ok(obj)
    }

    /// Replaces an existing object. Identity fields (uid, creationTimestamp,
    /// deletionTimestamp once set) are kept; generation goes up when anything
    /// but metadata and status changed; nothing happens when nothing changed.
    /// An object being deleted whose last finalizer goes away is removed.
    pub fn update(&mut self, gr: &GroupResource, mut obj: Value) -> Result<Value, StoreError> {
        let key = key_of(&obj);
        let old = self
            .state
            .objects
            .get(gr)
            .and_then(|m| m.get(&key))
            .ok_or(StoreError::NotFound)?
            .clone();
        {
            let meta = object::ensure_object(&mut obj, &["metadata"]);
            for k in [
                "uid",
                "creationTimestamp",
                "resourceVersion",
                "generation",
                "deletionTimestamp",
                "deletionGracePeriodSeconds",
            ] {
                match old["metadata"].get(k) {
                    Some(v) => {
                        meta.insert(k.into(), v.clone());
                    }
                    None => {
                        meta.remove(k);
                    }
                }
            }
        }
        if obj == old {
            return Ok(old);
        }
        let bump_generation = spec_changed(&old, &obj);
        let rv = self.bump();
        let meta = object::ensure_object(&mut obj, &["metadata"]);
        meta.insert("resourceVersion".into(), json!(rv.to_string()));
        if bump_generation {
            meta.insert(
                "generation".into(),
                json!(object::generation(&old).max(1) + 1),
            );
        }
        if object::is_deleting(&obj) && !has_finalizers(gr, &obj) {
            self.remove(gr, &key, obj.clone());
            return Ok(obj);
        }
        self.state
            .objects
            .entry(gr.clone())
            .or_default()
            .insert(key, obj.clone());
        self.log(gr, EventType::Modified, obj.clone());
        Ok(obj)
    }

    fn remove(&mut self, gr: &GroupResource, key: &Key, last: Value) {
        if let Some(m) = self.state.objects.get_mut(gr) {
            m.remove(key);
        }
        self.log(gr, EventType::Deleted, last);
    }

    /// Deletes an object, or marks it for deletion when finalizers hold it.
    pub fn delete(
        &mut self,
        gr: &GroupResource,
        namespace: &str,
        name: &str,
    ) -> Result<Deletion, StoreError> {
        let key = (namespace.to_string(), name.to_string());
        let mut obj = self
            .state
            .objects
            .get(gr)
            .and_then(|m| m.get(&key))
            .ok_or(StoreError::NotFound)?
            .clone();
        if has_finalizers(gr, &obj) {
            if object::is_deleting(&obj) {
                return Ok(Deletion::Pending(obj));
            }
            let rv = self.bump();
            let meta = object::ensure_object(&mut obj, &["metadata"]);
            meta.insert("deletionTimestamp".into(), json!(object::now()));
            meta.insert("deletionGracePeriodSeconds".into(), json!(0));
            meta.insert("resourceVersion".into(), json!(rv.to_string()));
            self.state
                .objects
                .entry(gr.clone())
                .or_default()
                .insert(key, obj.clone());
            self.log(gr, EventType::Modified, obj.clone());
            return Ok(Deletion::Pending(obj));
        }
        let rv = self.bump();
        object::ensure_object(&mut obj, &["metadata"])
            .insert("resourceVersion".into(), json!(rv.to_string()));
        self.remove(gr, &key, obj.clone());
        Ok(Deletion::Gone(obj))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cm(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap",
               "metadata": {"name": name, "namespace": "default"}, "data": {"a": "1"}})
    }

    #[test]
    fn create_update_delete_bump_one_counter_and_log_events() {
        let store = Store::new();
        let gr = GroupResource::new("", "configmaps");
        let start = store.current_rv();
        let created = store.transact(|t| t.create(&gr, cm("x"))).unwrap();
        assert_eq!(object::generation(&created), 1);
        assert!(!object::uid(&created).is_empty());
        assert_eq!(
            store.transact(|t| t.create(&gr, cm("x"))).unwrap_err(),
            StoreError::AlreadyExists
        );

        // Unchanged update: no new version.
        let same = store.transact(|t| t.update(&gr, created.clone())).unwrap();
        assert_eq!(
            object::resource_version(&same),
            object::resource_version(&created)
        );

        let mut changed = created.clone();
        changed["data"]["a"] = json!("2");
        let updated = store.transact(|t| t.update(&gr, changed)).unwrap();
        assert_eq!(object::generation(&updated), 2);
        assert_eq!(object::uid(&updated), object::uid(&created));

        // Status-only changes keep the generation.
        let mut status = updated.clone();
        status["status"] = json!({"x": 1});
        let st = store.transact(|t| t.update(&gr, status)).unwrap();
        assert_eq!(object::generation(&st), 2);

        store.transact(|t| t.delete(&gr, "default", "x")).unwrap();
        let events = store.events_after(start).unwrap();
        let kinds: Vec<_> = events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            vec![
                EventType::Added,
                EventType::Modified,
                EventType::Modified,
                EventType::Deleted
            ]
        );
        assert!(events.windows(2).all(|w| w[0].rv < w[1].rv));
        assert!(store.transact(|t| t.get(&gr, "default", "x").is_none()));
    }

    #[test]
    fn finalizers_hold_an_object_until_removed() {
        let store = Store::new();
        let gr = GroupResource::new("", "configmaps");
        let mut obj = cm("f");
        obj["metadata"]["finalizers"] = json!(["example.com/hold"]);
        store.transact(|t| t.create(&gr, obj)).unwrap();
        let pending = store.transact(|t| t.delete(&gr, "default", "f")).unwrap();
        let Deletion::Pending(mut held) = pending else {
            panic!("finalizer should hold the object")
        };
        assert!(object::is_deleting(&held));
        held["metadata"]["finalizers"] = json!([]);
        store.transact(|t| t.update(&gr, held)).unwrap();
        assert!(store.transact(|t| t.get(&gr, "default", "f").is_none()));
    }
}
