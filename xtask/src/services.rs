//! The services xtask knows, each from its own crate.

use anyhow::{Result, bail};
use infra_core::run::ServiceSetup;

/// Every service whose setup has been migrated to infra-core.
pub fn all() -> Vec<&'static dyn ServiceSetup> {
    vec![
        &datastorage_e2e::DataStorage,
        &gateway_e2e::Gateway,
        &notification_e2e::Notification,
        &authwebhook_e2e::AuthWebhook,
    ]
}

/// The service called `name`, or an error listing the known ones.
pub fn find(name: &str) -> Result<&'static dyn ServiceSetup> {
    match all().into_iter().find(|s| s.name() == name) {
        Some(service) => Ok(service),
        None => {
            let known: Vec<&str> = all().iter().map(|s| s.name()).collect();
            bail!(
                "unknown service `{name}`; known services: {}",
                known.join(", ")
            )
        }
    }
}
