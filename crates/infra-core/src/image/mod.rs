//! The split image API, with the names of the Go original:
//! [`build_image_for_kind`] builds a service's image through the engine,
//! [`crate::load::load_image_to_kind`] puts it into a cluster's nodes, and
//! [`build_and_load_image_to_kind`] does both for the standard pattern.
//!
//! Tags are content addressed: `localhost/<image>:<service>-<digest12>`, where
//! the digest covers the files actually sent (after `.dockerignore`), their
//! modes, the Dockerfile path, the target and the sorted build args. Same inputs,
//! same tag, so a build whose tag the engine already holds is skipped.

mod build;
pub mod context;
pub mod debian;
pub mod dockerignore;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

pub use build::{build_image_for_kind, finish_cancelled_builds};

use crate::engine::{Engine, EngineError};
use crate::load::{LoadError, LoadReport};

/// Label carrying the service an image was built for. (Image labels are
/// inherited by every container made from the image, so they use keys of
/// their own, apart from the run labels in [`crate::plan::setup`].)
pub const LABEL_IMAGE_SERVICE: &str = "io.kind-e2e.image.service";
/// Label carrying the full input digest (the tag holds its first 12 hex digits).
pub const LABEL_INPUT_DIGEST: &str = "io.kind-e2e.image.input-digest";
/// Label marking a coverage-instrumented image.
pub const LABEL_COVERAGE: &str = "io.kind-e2e.image.coverage";

/// Environment variable that switches coverage on for every build, as in the
/// original (`E2E_COVERAGE=true`).
pub const COVERAGE_ENV: &str = "E2E_COVERAGE";

/// How to build one service's image. Field names follow the Go original's
/// `E2EImageConfig`; the Kind cluster name is not here because loading is a
/// separate step ([`crate::load::load_image_to_kind`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E2eImageConfig {
    /// The service the image belongs to; part of the tag.
    pub service_name: String,
    /// Image name without registry or tag, e.g. `example/api`.
    pub image_name: String,
    /// Dockerfile path, relative to `build_context`.
    pub dockerfile: PathBuf,
    /// The folder sent to the engine.
    pub build_context: PathBuf,
    /// `--build-arg`s, kept sorted so the digest does not depend on order.
    pub build_args: BTreeMap<String, String>,
    /// Adds build arg `GOFLAGS=-cover` and labels the image; also switched on by
    /// `E2E_COVERAGE=true`.
    pub coverage: bool,
    /// Multi-stage target, if any.
    pub target: Option<String>,
    /// A shell command run on the host, in the build context, before the
    /// context is read: for projects that compile on the host and `COPY` the
    /// result into the image. Its environment includes the build args (so
    /// `GOFLAGS=-cover` reaches a host `go build` when coverage is on).
    pub pre_build: Option<String>,
    /// Where the build log goes (`build-<service>-<image>.log`); defaults to
    /// `target/e2e/logs` under the current directory.
    pub log_dir: Option<PathBuf>,
    /// Build every step again: no cache check by reference, no layer cache.
    pub no_cache: bool,
}

impl E2eImageConfig {
    /// A config for `service` built from `dockerfile` in the current directory;
    /// the image is named after the service until [`Self::image`] says otherwise.
    pub fn new(service: impl Into<String>, dockerfile: impl Into<PathBuf>) -> Self {
        let service_name = service.into();
        E2eImageConfig {
            image_name: service_name.clone(),
            service_name,
            dockerfile: dockerfile.into(),
            build_context: PathBuf::from("."),
            build_args: BTreeMap::new(),
            coverage: false,
            target: None,
            pre_build: None,
            log_dir: None,
            no_cache: false,
        }
    }

    #[must_use]
    pub fn image(mut self, name: impl Into<String>) -> Self {
        self.image_name = name.into();
        self
    }

    #[must_use]
    pub fn context(mut self, dir: impl Into<PathBuf>) -> Self {
        self.build_context = dir.into();
        self
    }

    #[must_use]
    pub fn build_arg(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.build_args.insert(key.into(), value.into());
        self
    }

    #[must_use]
    pub fn coverage(mut self, on: bool) -> Self {
        self.coverage = on;
        self
    }

    #[must_use]
    pub fn target(mut self, stage: impl Into<String>) -> Self {
        self.target = Some(stage.into());
        self
    }

    #[must_use]
    pub fn pre_build(mut self, command: impl Into<String>) -> Self {
        self.pre_build = Some(command.into());
        self
    }

    #[must_use]
    pub fn no_cache(mut self, on: bool) -> Self {
        self.no_cache = on;
        self
    }

    #[must_use]
    pub fn log_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.log_dir = Some(dir.into());
        self
    }

    /// Whether this build is instrumented: the flag or `E2E_COVERAGE=true`.
    pub fn coverage_enabled(&self) -> bool {
        self.coverage
            || std::env::var(COVERAGE_ENV)
                .map(|v| v.eq_ignore_ascii_case("true") || v == "1")
                .unwrap_or(false)
    }

    /// The build args actually sent: the configured ones plus `GOFLAGS=-cover`
    /// when coverage is on.
    pub fn effective_build_args(&self) -> BTreeMap<String, String> {
        let mut args = self.build_args.clone();
        if self.coverage_enabled() {
            args.insert("GOFLAGS".into(), "-cover".into());
        }
        args
    }

    /// The fully qualified reference for a given input digest.
    pub fn reference(&self, input_digest: &str) -> String {
        format!(
            "localhost/{}:{}-{}",
            self.image_name,
            self.service_name,
            &input_digest[..12.min(input_digest.len())]
        )
    }

    /// The build log's path.
    pub fn log_path(&self) -> PathBuf {
        let dir = self
            .log_dir
            .clone()
            .unwrap_or_else(|| Path::new("target").join("e2e").join("logs"));
        dir.join(format!(
            "build-{}-{}.log",
            self.service_name,
            self.image_name.replace('/', "_")
        ))
    }

    /// Checks the names that end up in the tag; the error says which and how to
    /// fix it.
    pub fn validate(&self) -> Result<(), ImageError> {
        let invalid = |what: &str, value: &str, fix: &str| ImageError::InvalidConfig {
            service: self.service_name.clone(),
            problem: format!("{what} `{value}` is not valid: {fix}"),
        };
        let service = &self.service_name;
        let service_ok = !service.is_empty()
            && service.len() <= 100
            && service
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
            && service.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !service_ok {
            return Err(invalid(
                "service name",
                service,
                "use lowercase letters, digits, `-`, `_` or `.`, starting with a letter or digit",
            ));
        }
        let image = &self.image_name;
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || "-_.".contains(ch))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
                && c.ends_with(|ch: char| ch.is_ascii_alphanumeric())
        };
        if image.starts_with("localhost/") || image.contains(':') || image.contains('@') {
            return Err(invalid(
                "image name",
                image,
                "give the bare name (like `example/api`); the `localhost/` prefix and \
                 the tag are added from the service and the input digest",
            ));
        }
        if !image.split('/').all(component_ok) {
            return Err(invalid(
                "image name",
                image,
                "use lowercase path components of letters, digits, `-`, `_` or `.`, separated by `/`",
            ));
        }
        for key in self.build_args.keys() {
            if key.is_empty() || key.contains('=') || key.contains(char::is_whitespace) {
                return Err(invalid(
                    "build arg",
                    key,
                    "write build args as KEY=VALUE with a non-empty KEY",
                ));
            }
        }
        Ok(())
    }
}

/// Scans `config`'s build context and computes its input digest, without
/// running the pre-build command or asking the engine. Reads every sent file:
/// call it off the async threads.
pub fn scan_and_digest(
    config: &E2eImageConfig,
) -> Result<(context::BuildContext, String), ImageError> {
    let context_error = |source| ImageError::Context {
        service: config.service_name.clone(),
        source,
    };
    let scanned = context::BuildContext::scan(&config.build_context, &config.dockerfile)
        .map_err(context_error)?;
    let build_args = config.effective_build_args();
    let digest = scanned
        .digest(&context::DigestInputs {
            target: config.target.as_deref(),
            build_args: &build_args,
        })
        .map_err(context_error)?;
    Ok((scanned, digest))
}

/// The reference a build of `config` would produce from the files as they are
/// now (the pre-build command is not run), for plans and dry runs.
pub fn planned_reference(config: &E2eImageConfig) -> Result<String, ImageError> {
    config.validate()?;
    let (_, digest) = scan_and_digest(config)?;
    Ok(config.reference(&digest))
}

/// What [`build_image_for_kind`] produced.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct BuiltImage {
    pub service: String,
    /// Fully qualified: `localhost/<image>:<service>-<digest12>`.
    pub reference: String,
    /// The engine's image id (`sha256:...`).
    pub image_id: String,
    /// Full hex sha256 of the build inputs.
    pub input_digest: String,
    /// True when the engine already had this reference and nothing was built.
    pub cached: bool,
    /// Built with `GOFLAGS=-cover` (see [`crate::coverage`]).
    pub coverage: bool,
    pub seconds: f64,
    /// The build log (pre-build output, build output, or the cache-hit note).
    pub log: PathBuf,
}

/// Errors of building an image. Each names the service.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("service {service}: {problem}")]
    InvalidConfig { service: String, problem: String },

    #[error("service {service}: cannot use the build context")]
    Context {
        service: String,
        #[source]
        source: context::ContextError,
    },

    #[error(
        "service {service}: pre-build command `{command}` failed ({status}); last output:\n{tail}\n\
         full log: {log}"
    )]
    PreBuild {
        service: String,
        command: String,
        status: String,
        tail: String,
        log: PathBuf,
    },

    #[error(
        "service {service}: build of {dockerfile} failed at {step}: {message}\nlast output:\n{tail}\n\
         full log: {log}"
    )]
    BuildFailed {
        service: String,
        dockerfile: String,
        step: String,
        message: String,
        tail: String,
        log: PathBuf,
    },

    #[error("service {service}: {what} failed")]
    Engine {
        service: String,
        what: String,
        #[source]
        source: bollard::errors::Error,
    },

    #[error("service {service}: writing the build log {path} failed")]
    Log {
        service: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Either step of [`build_and_load_image_to_kind`] failing.
#[derive(Debug, thiserror::Error)]
pub enum BuildAndLoadError {
    #[error(transparent)]
    Build(#[from] ImageError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// Builds `config`'s image and streams it into `cluster`: the one-call
/// wrapper the standard pattern uses.
pub async fn build_and_load_image_to_kind(
    engine: &Engine,
    config: &E2eImageConfig,
    cluster: &str,
) -> Result<(BuiltImage, LoadReport), BuildAndLoadError> {
    let built = build_image_for_kind(engine, config).await?;
    let loaded = crate::load::load_image_to_kind(engine, &built.reference, cluster).await?;
    Ok((built, loaded))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reference_is_fully_qualified_and_content_addressed() {
        let config = E2eImageConfig::new("api", "Dockerfile").image("example/api");
        assert_eq!(
            config.reference("0123456789abcdef0123"),
            "localhost/example/api:api-0123456789ab"
        );
    }

    #[test]
    fn coverage_adds_goflags() {
        let config = E2eImageConfig::new("gw", "Dockerfile").coverage(true);
        assert_eq!(
            config
                .effective_build_args()
                .get("GOFLAGS")
                .map(String::as_str),
            Some("-cover")
        );
    }

    #[test]
    fn invalid_names_are_refused_with_the_fix() {
        let bad = E2eImageConfig::new("Web", "Dockerfile");
        let err = bad.validate().unwrap_err().to_string();
        assert!(
            err.contains("service name `Web`") && err.contains("lowercase"),
            "{err}"
        );
        let bad = E2eImageConfig::new("gw", "Dockerfile").image("localhost/gw:1");
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("bare name")
        );
        let bad = E2eImageConfig::new("gw", "Dockerfile").image("Example/WEB");
        assert!(bad.validate().is_err());
        let bad = E2eImageConfig::new("gw", "Dockerfile").build_arg("", "x");
        assert!(bad.validate().is_err());
        assert!(
            E2eImageConfig::new("gw", "Dockerfile")
                .image("a/b-c")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn log_path_is_per_service_and_image() {
        let config = E2eImageConfig::new("gw", "Dockerfile")
            .image("example/web")
            .log_dir("/logs");
        assert_eq!(
            config.log_path(),
            PathBuf::from("/logs/build-gw-example_web.log")
        );
    }
}
