//! Everything generic about standing up Kind end-to-end test environments:
//!
//! - [`engine`]: one connection to Docker or Podman;
//! - [`image`]: the split image API ([`build_image_for_kind`],
//!   [`load_image_to_kind`], [`build_and_load_image_to_kind`]);
//! - [`load`]: the streaming multi-node loader;
//! - [`cluster`]: kind and simulated clusters;
//! - [`deploy`]: server-side apply, readiness by watching, health checks;
//! - [`stack`]: PostgreSQL, Redis, migrations, namespaces and manifest builders;
//! - [`plan`]: the task graph, its patterns and scheduler;
//! - [`report`] and [`run`]: a whole run, its teardown and its report;
//! - [`coverage`]: Go coverage of the deployed workloads (`--coverage`).
//!
//! Service crates compose these parts; nothing here knows about a particular
//! service.

// Errors carry what a user needs to act (log tails, pod events, the failing
// step); they are rare and large by design.
#![allow(clippy::result_large_err)]

pub mod cluster;
pub mod coverage;
pub mod deploy;
pub mod engine;
pub mod image;
pub mod load;
pub mod plan;
pub mod report;
pub mod run;
pub mod stack;
#[cfg(feature = "testing")]
pub mod suite;
#[cfg(feature = "testing")]
pub mod testing;
pub mod toolchain;

pub use deploy::DeployError;
pub use engine::{Engine, EngineError, EngineKind, error_chain};
pub use image::{
    BuildAndLoadError, BuiltImage, E2eImageConfig, ImageError, build_and_load_image_to_kind,
    build_image_for_kind,
};
pub use load::{
    LoadError, LoadMethod, LoadReport, NodeLoad, load_image_to_kind, load_image_to_kind_with,
};
