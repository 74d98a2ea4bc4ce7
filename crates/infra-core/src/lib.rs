//! Everything generic about standing up Kind end-to-end test environments:
//! the engine connection ([`engine`]), the split image API ([`image`]:
//! [`build_image_for_kind`], [`load_image_to_kind`],
//! [`build_and_load_image_to_kind`]), the streaming loader ([`load`]), and
//! cluster nodes ([`cluster`]).
//!
//! Service crates compose these parts; nothing here knows about a particular
//! service.

pub mod cluster;
pub mod engine;
pub mod image;
pub mod load;
#[cfg(feature = "testing")]
pub mod testing;

pub use engine::{Engine, EngineError, EngineKind, error_chain};
pub use image::{
    BuildAndLoadError, BuiltImage, E2eImageConfig, ImageError, build_and_load_image_to_kind,
    build_image_for_kind,
};
pub use load::{LoadError, LoadMethod, LoadReport, NodeLoad, load_image_to_kind};
