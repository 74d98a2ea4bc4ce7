//! infra-core names no service: every service's name (from the workspace's
//! `crates/<service>-e2e` folders) and the product's name stay out of its
//! sources, tests and assets, so a service team never needs to edit it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

use std::path::Path;

#[test]
fn infra_core_sources_name_no_service() {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut names: Vec<String> = std::fs::read_dir(crate_dir.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter_map(|n| n.strip_suffix("-e2e").map(str::to_string))
        .collect();
    assert!(
        names.len() >= 4,
        "the service crates were not found next to infra-core: {names:?}"
    );
    names.push("kubernaut".into());
    let mut found = Vec::new();
    for entry in walkdir::WalkDir::new(crate_dir)
        .into_iter()
        .filter_entry(|e| e.file_name() != "target")
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        // This file names them to look for them.
        .filter(|e| !e.path().ends_with("tests/names_no_service.rs"))
    {
        let Ok(text) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        let lower = text.to_lowercase();
        for name in &names {
            if let Some(at) = lower.find(name.as_str()) {
                let line = lower[..at].lines().count().max(1);
                found.push(format!("{}:{line}: {name}", entry.path().display()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "infra-core must name no service (move it to the service's crate):\n{}",
        found.join("\n")
    );
}
