//! Third-party images (PostgreSQL, Redis) for clusters that cannot pull.
//!
//! A kind node pulls nothing here: every image a pod runs is put into the
//! nodes by the loader, third-party ones included. [`provide`] makes the
//! image exist in the host engine, in this order:
//!
//! 1. the upstream image (`docker.io/library/postgres:16-alpine`) is already
//!    there: use it;
//! 2. the offline stand-in from these sources was built before: use it (no
//!    pull is tried again on every run);
//! 3. pull it once into the engine (bounded: a registry that does not answer
//!    costs seconds, not minutes);
//! 4. otherwise build the offline stand-in from `offline-images/<name>` (a
//!    Debian base plus Debian's packages, [`crate::image::debian`]), content
//!    addressed like every built image, so a second run is a cache hit.
//!
//! Which one was used is reported ([`Provenance`]), and the loader then
//! streams the image into every node like a built one (no per-node pulls).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;

use crate::engine::Engine;
use crate::image::{BuiltImage, E2eImageConfig, build_image_for_kind, debian};

/// How long a pull may take before the offline image is built instead.
pub const PULL_TIMEOUT: Duration = Duration::from_secs(30);

/// A third-party image a component runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThirdPartyImage {
    /// The key its [`BuiltImage`] is stored under in a run.
    pub key: String,
    /// The fully qualified upstream reference.
    pub upstream: String,
    /// The offline stand-in's build context (a Dockerfile taking `BASE`).
    pub offline_context: PathBuf,
}

fn offline_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("offline-images")
        .join(name)
}

/// `postgres:16-alpine`, or Debian's PostgreSQL 15 offline.
pub fn postgres() -> ThirdPartyImage {
    ThirdPartyImage {
        key: "postgresql".into(),
        upstream: "docker.io/library/postgres:16-alpine".into(),
        offline_context: offline_dir("postgresql"),
    }
}

/// `redis:7-alpine`, or Debian's Redis 7.0 offline.
pub fn redis() -> ThirdPartyImage {
    ThirdPartyImage {
        key: "redis".into(),
        upstream: "docker.io/library/redis:7-alpine".into(),
        offline_context: offline_dir("redis"),
    }
}

/// Where the image came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Provenance {
    /// The engine already had the upstream image.
    Present,
    /// Pulled now.
    Pulled,
    /// Built offline because the pull failed (the reason).
    Offline { pull_error: String },
    /// The offline stand-in built by an earlier run.
    OfflineBuilt,
}

impl std::fmt::Display for Provenance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Provenance::Present => f.write_str("upstream image already in the engine"),
            Provenance::Pulled => f.write_str("pulled from its registry"),
            Provenance::Offline { pull_error } => {
                write!(
                    f,
                    "built offline from Debian packages (pull failed: {pull_error})"
                )
            }
            Provenance::OfflineBuilt => {
                f.write_str("the offline build from Debian packages, made by an earlier run")
            }
        }
    }
}

/// Errors of providing a third-party image.
#[derive(Debug, thiserror::Error)]
pub enum ThirdPartyError {
    #[error(
        "{upstream} could not be pulled ({pull_error}) and its offline stand-in could not be \
         made"
    )]
    Offline {
        upstream: String,
        pull_error: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Makes `image` exist in `engine` (see the module docs). `cache` is where
/// the Debian rootfs of the offline base lives; build logs go to `log_dir`.
pub async fn provide(
    engine: &Engine,
    image: &ThirdPartyImage,
    cache: &Path,
    log_dir: &Path,
    rebuild: bool,
) -> Result<(BuiltImage, Provenance), ThirdPartyError> {
    let started = Instant::now();
    let found = |id: String, provenance: Provenance| {
        (
            BuiltImage {
                service: "third-party".into(),
                reference: image.upstream.clone(),
                input_digest: id.trim_start_matches("sha256:").to_string(),
                image_id: id,
                cached: provenance == Provenance::Present,
                coverage: false,
                seconds: started.elapsed().as_secs_f64(),
                log: log_dir.join(format!("pull-{}.log", image.key)),
            },
            provenance,
        )
    };
    if let Ok(inspect) = engine.docker().inspect_image(&image.upstream).await {
        return Ok(found(inspect.id.unwrap_or_default(), Provenance::Present));
    }
    let config = E2eImageConfig::new("third-party", "Dockerfile")
        .image(format!("kind-e2e/{}", image.key))
        .context(&image.offline_context)
        .build_arg("BASE", debian::base_reference())
        .log_dir(log_dir)
        .no_cache(rebuild);
    if !rebuild
        && let Ok(reference) = crate::image::planned_reference(&config)
        && engine.docker().inspect_image(&reference).await.is_ok()
    {
        // Content addressed: the same reference is the same build.
        let built =
            build_image_for_kind(engine, &config)
                .await
                .map_err(|e| ThirdPartyError::Offline {
                    upstream: image.upstream.clone(),
                    pull_error: "not tried (an offline build exists)".into(),
                    source: Box::new(e),
                })?;
        return Ok((built, Provenance::OfflineBuilt));
    }
    let pull_error = match pull(engine, &image.upstream).await {
        Ok(()) => match engine.docker().inspect_image(&image.upstream).await {
            Ok(inspect) => return Ok(found(inspect.id.unwrap_or_default(), Provenance::Pulled)),
            Err(e) => format!("pulled but not found: {e}"),
        },
        Err(why) => why,
    };
    let offline = async {
        debian::base_image(engine, cache, &|line| tracing::info!("{line}")).await?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(
            build_image_for_kind(engine, &config).await?,
        )
    };
    match offline.await {
        Ok(built) => Ok((built, Provenance::Offline { pull_error })),
        Err(source) => Err(ThirdPartyError::Offline {
            upstream: image.upstream.clone(),
            pull_error,
            source,
        }),
    }
}

/// Pulls `reference`, bounded by [`PULL_TIMEOUT`]; the error is one line.
async fn pull(engine: &Engine, reference: &str) -> Result<(), String> {
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
        .from_image(reference)
        .build();
    let pulling = async {
        let mut stream = engine.docker().create_image(Some(options), None, None);
        while let Some(item) = stream.next().await {
            let info = item.map_err(|e| crate::error_chain(&e))?;
            if let Some(message) = info.error_detail.and_then(|d| d.message) {
                return Err(message);
            }
        }
        Ok(())
    };
    match tokio::time::timeout(PULL_TIMEOUT, pulling).await {
        Ok(result) => result.map_err(|e| crate::engine::last_lines(&e, 1)),
        Err(_) => Err(format!("no answer within {}s", PULL_TIMEOUT.as_secs())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offline_contexts_exist_and_take_a_base() {
        for image in [postgres(), redis()] {
            let dockerfile =
                std::fs::read_to_string(image.offline_context.join("Dockerfile")).unwrap();
            assert!(dockerfile.contains("FROM ${BASE}"), "{}", image.key);
            assert!(image.upstream.starts_with("docker.io/library/"));
        }
    }
}
