//! [`build_image_for_kind`]: pre-build, digest, cache check, streamed build.

use std::collections::{HashMap, VecDeque};
use std::io::{self, Write};
use std::path::Path;
use std::time::Instant;

use bollard::query_parameters::BuildImageOptionsBuilder;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use super::context::BuildContext;
use super::{
    BuiltImage, E2eImageConfig, ImageError, LABEL_COVERAGE, LABEL_IMAGE_SERVICE, LABEL_INPUT_DIGEST,
};
use crate::engine::{Engine, last_lines};

/// Lines of build output kept for error messages.
const TAIL_LINES: usize = 20;
/// Size of the chunks the context tar is streamed in.
const CHUNK: usize = 256 * 1024;

/// Builds `config`'s image through `engine` and returns its fully qualified,
/// content-addressed reference. When the engine already holds that reference
/// the build is skipped (`cached: true`).
///
/// Runs the pre-build command first (its output and the build's go to the
/// build log), reads the context on a blocking thread, and streams it to the
/// engine as it is written: no tar file is made.
pub async fn build_image_for_kind(
    engine: &Engine,
    config: &E2eImageConfig,
) -> Result<BuiltImage, ImageError> {
    match build_once(engine, config).await {
        // Docker's legacy builder reuses a cached intermediate image; when a
        // concurrent `rmi` (ours or anyone's) prunes it mid-build, the step
        // fails with "unknown parent image ID". That cache entry is gone now,
        // so a second attempt builds the step afresh.
        Err(ImageError::BuildFailed { message, .. })
            if message.contains("unknown parent image ID") =>
        {
            tracing::warn!(
                "building {}: a cached layer was removed during the build ({message}); retrying",
                config.image_name
            );
            build_once(engine, config).await
        }
        other => other,
    }
}

#[allow(
    clippy::expect_used,
    reason = "re-raises a panic of the context producer; re-raises a panic of the blocking task"
)]
async fn build_once(engine: &Engine, config: &E2eImageConfig) -> Result<BuiltImage, ImageError> {
    let started = Instant::now();
    config.validate()?;
    let service = config.service_name.clone();
    let log_path = config.log_path();
    let mut log = BuildLog::create(&service, &log_path).await?;

    if let Some(command) = &config.pre_build {
        run_pre_build(config, command, &mut log).await?;
    }

    let build_args = config.effective_build_args();
    let (context, input_digest) = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || super::scan_and_digest(&config))
            .await
            .expect("context scan does not panic")?
    };
    let reference = config.reference(&input_digest);

    // One build per reference at a time in this process: a second caller with
    // the same inputs waits and then finds the first one's image.
    let lock = reference_lock(&format!("{} {reference}", engine.endpoint()));
    let _guard = lock.lock().await;

    let cached = if config.no_cache {
        None
    } else {
        existing_image(engine, &service, &reference, &input_digest).await?
    };
    if let Some(image_id) = cached {
        log.line(&format!(
            "cache hit: {reference} ({image_id}) already built from these inputs"
        ))
        .await?;
        return Ok(BuiltImage {
            service,
            reference,
            image_id,
            input_digest,
            cached: true,
            coverage: config.coverage_enabled(),
            seconds: started.elapsed().as_secs_f64(),
            log: log_path,
        });
    }

    log.line(&format!(
        "building {reference} from {} ({} files, {} bytes sent) on {engine}",
        context.dockerfile(),
        context.paths().count(),
        context.file_bytes()
    ))
    .await?;

    let dockerfile = context.dockerfile().to_string();
    let labels = HashMap::from([
        (LABEL_IMAGE_SERVICE.to_string(), service.clone()),
        (LABEL_INPUT_DIGEST.to_string(), input_digest.clone()),
        (
            LABEL_COVERAGE.to_string(),
            config.coverage_enabled().to_string(),
        ),
    ]);
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(&dockerfile)
        .t(&reference)
        .rm(true)
        .forcerm(true)
        .nocache(config.no_cache)
        .labels(&labels)
        .buildargs(
            &build_args
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        );
    if let Some(target) = &config.target {
        options = options.target(target);
    }

    let (body, producer) = stream_context(context);
    let mut guard = CancelledBuildGuard::new(engine).await;
    let mut output =
        engine
            .docker()
            .build_image(options.build(), None, Some(bollard::body_try_stream(body)));
    let mut step = String::from("the start (before any step)");
    let mut tail: VecDeque<String> = VecDeque::with_capacity(TAIL_LINES);
    let mut failure = None;
    while let Some(item) = output.next().await {
        match item {
            Ok(info) => {
                let text = info.stream.or(info.status).unwrap_or_default();
                for line in text.lines().filter(|l| !l.trim().is_empty()) {
                    if is_step_line(line) {
                        step = line.trim().to_string();
                    }
                    if tail.len() == TAIL_LINES {
                        tail.pop_front();
                    }
                    tail.push_back(line.to_string());
                }
                log.write(text.as_bytes()).await?;
            }
            Err(bollard::errors::Error::DockerStreamError { error }) => {
                log.line(&format!("ERROR: {error}")).await?;
                failure = Some(error);
                break;
            }
            Err(source) => {
                // The context producer's own error explains a broken upload better.
                let producer = producer.await.expect("tar producer does not panic");
                if let Err(context_error) = producer {
                    return Err(ImageError::Context {
                        service,
                        source: context_error,
                    });
                }
                return Err(ImageError::Engine {
                    service,
                    what: format!("building {reference} through {engine}"),
                    source,
                });
            }
        }
    }
    drop(output);
    guard.finished = true;
    log.flush().await?;
    if let Some(message) = failure {
        return Err(ImageError::BuildFailed {
            service,
            dockerfile: config.dockerfile.display().to_string(),
            step,
            message: message.trim().to_string(),
            tail: Vec::from(tail).join("\n"),
            log: log_path,
        });
    }
    if let Err(source) = producer.await.expect("tar producer does not panic") {
        return Err(ImageError::Context { service, source });
    }

    let image_id = match existing_image(engine, &service, &reference, &input_digest).await? {
        Some(id) => id,
        None => {
            return Err(ImageError::BuildFailed {
                service,
                dockerfile: config.dockerfile.display().to_string(),
                step,
                message: format!("the engine reported success but has no image {reference}"),
                tail: Vec::from(tail).join("\n"),
                log: log_path,
            });
        }
    };
    Ok(BuiltImage {
        service,
        reference,
        image_id,
        input_digest,
        cached: false,
        coverage: config.coverage_enabled(),
        seconds: started.elapsed().as_secs_f64(),
        log: log_path,
    })
}

fn reference_lock(key: &str) -> std::sync::Arc<tokio::sync::Mutex<()>> {
    use std::sync::{Arc, LazyLock, Mutex};
    static LOCKS: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>> =
        LazyLock::new(Default::default);
    LOCKS
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .entry(key.to_string())
        .or_default()
        .clone()
}

/// The id of `reference` if the engine has it, built from `input_digest`.
async fn existing_image(
    engine: &Engine,
    service: &str,
    reference: &str,
    input_digest: &str,
) -> Result<Option<String>, ImageError> {
    match engine.docker().inspect_image(reference).await {
        Ok(image) => {
            let labelled = image
                .config
                .as_ref()
                .and_then(|c| c.labels.as_ref())
                .and_then(|l| l.get(LABEL_INPUT_DIGEST));
            // A same-named image from other inputs (a tag collision, or one
            // made by hand) is rebuilt rather than trusted.
            if labelled.is_some_and(|d| d != input_digest) {
                return Ok(None);
            }
            Ok(image.id)
        }
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(source) => Err(ImageError::Engine {
            service: service.to_string(),
            what: format!("inspecting {reference}"),
            source,
        }),
    }
}

/// Podman keeps a build's working containers when the client goes away in the
/// middle of it (Docker removes them). Dropped before the build stream ended
/// (the build was cancelled), this guard removes the buildah working
/// containers that appeared while the build ran: not there when it started,
/// created between its start and a moment after its end. The removal runs on
/// the runtime; [`finish_cancelled_builds`] waits for it.
struct CancelledBuildGuard {
    engine: Engine,
    started: std::time::SystemTime,
    /// Working containers that existed before the build (never removed).
    before: Vec<String>,
    finished: bool,
}

impl CancelledBuildGuard {
    async fn new(engine: &Engine) -> CancelledBuildGuard {
        let before = if engine.kind() == crate::engine::EngineKind::Podman {
            working_containers(engine)
                .await
                .map(|list| list.into_iter().map(|(id, _)| id).collect())
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        CancelledBuildGuard {
            engine: engine.clone(),
            // A second of slack: the engine's clock stamps the containers.
            started: std::time::SystemTime::now() - std::time::Duration::from_secs(1),
            before,
            finished: false,
        }
    }
}

type Cleanups = std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>;
static PENDING_CLEANUPS: Cleanups = std::sync::Mutex::new(Vec::new());

impl Drop for CancelledBuildGuard {
    fn drop(&mut self) {
        if self.finished || self.engine.kind() != crate::engine::EngineKind::Podman {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let engine = self.engine.clone();
        let window = (
            self.started,
            // The build may start one more stage as the client goes away.
            std::time::SystemTime::now() + std::time::Duration::from_secs(2),
        );
        let before = std::mem::take(&mut self.before);
        let cleanup = runtime.spawn(async move {
            // Let Podman notice the client went away and stop the build.
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            if let Err(e) = remove_working_containers(&engine, window, &before).await {
                tracing::warn!("removing a cancelled build's working containers: {e}");
            }
        });
        PENDING_CLEANUPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(cleanup);
    }
}

/// Waits (at most 15 s) for the removal of cancelled builds' leftovers.
pub async fn finish_cancelled_builds() {
    let pending: Vec<_> = std::mem::take(
        &mut *PENDING_CLEANUPS
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner),
    );
    for cleanup in pending {
        let _ = tokio::time::timeout(std::time::Duration::from_secs(15), cleanup).await;
    }
}

/// Podman's buildah working containers (its "external" containers): id and
/// creation time.
async fn working_containers(
    engine: &Engine,
) -> Result<Vec<(String, Option<jiff::Timestamp>)>, crate::EngineError> {
    let (_, listed) = engine
        .libpod(
            "GET",
            "/v4.0.0/libpod/containers/json?all=true&external=true",
        )
        .await?;
    Ok(listed
        .as_array()
        .into_iter()
        .flatten()
        .filter(|c| {
            c["Command"] == serde_json::json!(["buildah"])
                && c["Names"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|n| n.as_str().is_some_and(|n| n.ends_with("working-container")))
        })
        .filter_map(|c| {
            let id = c["Id"].as_str()?.to_string();
            let created = c["Created"].as_str().and_then(|t| t.parse().ok());
            Some((id, created))
        })
        .collect())
}

/// Removes the working containers created within `window` that were not in
/// `before`.
async fn remove_working_containers(
    engine: &Engine,
    window: (std::time::SystemTime, std::time::SystemTime),
    before: &[String],
) -> Result<usize, crate::EngineError> {
    let start = jiff::Timestamp::try_from(window.0).unwrap_or(jiff::Timestamp::UNIX_EPOCH);
    let end = jiff::Timestamp::try_from(window.1).unwrap_or(jiff::Timestamp::MAX);
    let mut removed = 0;
    for (id, created) in working_containers(engine).await? {
        let in_window = created.is_some_and(|t| start <= t && t <= end);
        if !in_window || before.contains(&id) {
            continue;
        }
        engine
            .libpod(
                "DELETE",
                &format!("/v4.0.0/libpod/containers/{id}?force=true"),
            )
            .await?;
        removed += 1;
    }
    Ok(removed)
}

/// `Step 3/5 : RUN ...` (Docker's classic builder) or `STEP 3/5: RUN ...`
/// (Podman/Buildah).
fn is_step_line(line: &str) -> bool {
    let line = line.trim_start();
    line.starts_with("Step ") || line.starts_with("STEP ")
}

/// Writes the context tar on a blocking thread into a bounded channel whose
/// receiving end is the request body, so the engine reads the tar as it is made.
fn stream_context(
    context: BuildContext,
) -> (
    impl futures::Stream<Item = io::Result<Bytes>> + Send + 'static,
    tokio::task::JoinHandle<Result<(), super::context::ContextError>>,
) {
    let (tx, rx) = mpsc::channel::<io::Result<Bytes>>(8);
    let producer = tokio::task::spawn_blocking(move || {
        let writer = ChannelWriter {
            tx: tx.clone(),
            buffer: Vec::with_capacity(CHUNK),
        };
        match context.write_tar(writer).and_then(|mut w| {
            w.flush()
                .map_err(|source| super::context::ContextError::Io {
                    path: context.root().to_path_buf(),
                    source,
                })
        }) {
            Ok(()) => Ok(()),
            Err(e) => {
                // Fail the upload too, so the engine does not build a truncated context.
                let _ = tx.blocking_send(Err(io::Error::other(e.to_string())));
                Err(e)
            }
        }
    });
    let body = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    (body, producer)
}

struct ChannelWriter {
    tx: mpsc::Sender<io::Result<Bytes>>,
    buffer: Vec<u8>,
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        if self.buffer.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.buffer.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buffer,
            Vec::with_capacity(CHUNK),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            io::Error::new(
                io::ErrorKind::BrokenPipe,
                "the engine stopped reading the build context",
            )
        })
    }
}

/// Runs the pre-build command with `sh -c` in the build context; its output
/// goes to the build log.
async fn run_pre_build(
    config: &E2eImageConfig,
    command: &str,
    log: &mut BuildLog,
) -> Result<(), ImageError> {
    log.line(&format!(
        "pre-build: {command} (in {})",
        config.build_context.display()
    ))
    .await?;
    let output = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(&config.build_context)
        // The build args are its environment too: a host-compiled binary
        // sees `GOFLAGS=-cover` exactly when the engine build would.
        .envs(config.effective_build_args())
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output()
        .await;
    let log_path = log.path.clone();
    let failed = |status: String, text: &str| ImageError::PreBuild {
        service: config.service_name.clone(),
        command: command.to_string(),
        status,
        tail: last_lines(text, TAIL_LINES),
        log: log_path.clone(),
    };
    let output = match output {
        Ok(output) => output,
        Err(e) => return Err(failed(format!("could not start `sh`: {e}"), "")),
    };
    log.write(&output.stdout).await?;
    log.write(&output.stderr).await?;
    log.flush().await?;
    if !output.status.success() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        return Err(failed(output.status.to_string(), &text));
    }
    Ok(())
}

/// The per-image build log file.
struct BuildLog {
    service: String,
    path: std::path::PathBuf,
    file: tokio::io::BufWriter<tokio::fs::File>,
}

impl BuildLog {
    async fn create(service: &str, path: &Path) -> Result<BuildLog, ImageError> {
        let error = |source| ImageError::Log {
            service: service.to_string(),
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await.map_err(error)?;
        }
        let file = tokio::fs::File::create(path).await.map_err(error)?;
        Ok(BuildLog {
            service: service.to_string(),
            path: path.to_path_buf(),
            file: tokio::io::BufWriter::new(file),
        })
    }

    async fn write(&mut self, bytes: &[u8]) -> Result<(), ImageError> {
        self.file
            .write_all(bytes)
            .await
            .map_err(|source| ImageError::Log {
                service: self.service.clone(),
                path: self.path.clone(),
                source,
            })
    }

    async fn line(&mut self, text: &str) -> Result<(), ImageError> {
        self.write(format!("{text}\n").as_bytes()).await?;
        self.flush().await
    }

    async fn flush(&mut self) -> Result<(), ImageError> {
        self.file.flush().await.map_err(|source| ImageError::Log {
            service: self.service.clone(),
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn step_lines_of_both_builders_are_recognised() {
        assert!(is_step_line("Step 2/3 : RUN false"));
        assert!(is_step_line("STEP 2/3: RUN false"));
        assert!(!is_step_line(" ---> Running in 1234"));
    }
}
