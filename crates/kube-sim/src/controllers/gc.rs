//! Garbage collection by ownerReferences: an object all of whose owners are
//! gone is deleted (background propagation); an owner deleted in the
//! foreground waits, with its `foregroundDeletion` finalizer, until its
//! dependents are gone; orphaning removes the owner reference.

use std::collections::HashSet;

use serde_json::{Value, json};

use crate::Sim;
use crate::object;
use crate::store::{GroupResource, Txn};

fn all_objects(txn: &Txn<'_>) -> Vec<(GroupResource, Value)> {
    txn.resources()
        .into_iter()
        .flat_map(|gr| {
            txn.list(&gr)
                .map(|o| (gr.clone(), o.clone()))
                .collect::<Vec<_>>()
        })
        .collect()
}

pub fn reconcile(sim: &Sim) {
    sim.store.transact(|txn| {
        let objects = all_objects(txn);
        let uids: HashSet<&str> = objects.iter().map(|(_, o)| object::uid(o)).collect();
        let mut to_delete = Vec::new();
        let mut owners_waiting = Vec::new();
        for (gr, o) in &objects {
            let refs = object::owner_refs(o);
            if !refs.is_empty()
                && !object::is_deleting(o)
                && refs.iter().all(|r| !uids.contains(r.uid.as_str()))
            {
                to_delete.push((gr.clone(), o.clone()));
            }
            if object::is_deleting(o)
                && object::array_at(o, "/metadata/finalizers")
                    .iter()
                    .any(|f| f == "foregroundDeletion")
            {
                owners_waiting.push((gr.clone(), o.clone()));
            }
        }
        for (gr, o) in to_delete {
            let _ = txn.delete(&gr, object::namespace(&o), object::name(&o));
        }
        for (gr, owner) in owners_waiting {
            let uid = object::uid(&owner).to_string();
            let dependents: Vec<(GroupResource, Value)> = objects
                .iter()
                .filter(|(_, o)| object::owner_refs(o).iter().any(|r| r.uid == uid))
                .cloned()
                .collect();
            let mut remaining = 0;
            for (dgr, d) in dependents {
                if let Ok(crate::store::Deletion::Pending(_)) =
                    txn.delete(&dgr, object::namespace(&d), object::name(&d))
                {
                    remaining += 1;
                }
            }
            if remaining == 0
                && let Some(mut current) = txn
                    .get(&gr, object::namespace(&owner), object::name(&owner))
                    .cloned()
            {
                let fins: Vec<Value> = object::array_at(&current, "/metadata/finalizers")
                    .iter()
                    .filter(|f| *f != "foregroundDeletion")
                    .cloned()
                    .collect();
                current["metadata"]["finalizers"] = json!(fins);
                let _ = txn.update(&gr, current);
            }
        }
    });
}

/// Removes owner references to `uid` from every object (orphan propagation).
pub fn orphan_dependents(txn: &mut Txn<'_>, uid: &str) {
    for (gr, o) in all_objects(txn) {
        if !object::owner_refs(&o).iter().any(|r| r.uid == uid) {
            continue;
        }
        let mut updated = o.clone();
        let refs: Vec<Value> = object::array_at(&o, "/metadata/ownerReferences")
            .iter()
            .filter(|r| object::str_at(r, "/uid") != uid)
            .cloned()
            .collect();
        updated["metadata"]["ownerReferences"] = json!(refs);
        let _ = txn.update(&gr, updated);
    }
}
