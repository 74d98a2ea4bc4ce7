//! Images without a registry: Debian root filesystems made with
//! `debootstrap` (from a Debian mirror, which hosts without a registry can
//! often still reach), cached by content, and imported into the engine as base images.
//!
//! A rootfs lives in `<cache>/rootfs/<digest16>/rootfs` (the digest covers the
//! suite, variant and package list). It is made in a private folder beside it
//! and renamed into place when complete, so an interrupted debootstrap is
//! never used, and two processes making the same one do not meet (the second
//! rename loses and its copy is removed). Within a process one lock
//! serialises making rootfs and base images, so parallel tasks wait for the
//! first instead of doing the work twice.

use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::StreamExt;
use sha2::{Digest, Sha256};

use crate::engine::{Engine, last_lines};

/// The Debian release the offline images are made of.
pub const SUITE: &str = "bookworm";

/// Errors of making Debian images; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum DebianError {
    #[error(
        "`debootstrap` was not found: install it (`apt-get install debootstrap`); it makes the \
         Debian root filesystems of images built without a registry"
    )]
    NoDebootstrap,
    #[error("debootstrap must run as root (it creates device nodes and chroots): run as root")]
    NotRoot,
    #[error("debootstrap of {suite} failed ({status}); its log is {log}:\n{tail}")]
    Debootstrap {
        suite: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("importing {reference} into {engine} failed: {problem}")]
    Import {
        reference: String,
        engine: String,
        problem: String,
    },
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DebianError {
    let what = what.into();
    move |source| DebianError::Io { what, source }
}

/// The digest naming a rootfs made of `packages` (sorted, deduplicated).
pub fn rootfs_digest(packages: &[&str]) -> String {
    let mut packages: Vec<&str> = packages.to_vec();
    packages.sort_unstable();
    packages.dedup();
    let mut hasher = Sha256::new();
    hasher.update(format!("debootstrap minbase {SUITE}\0{}", packages.join(",")).as_bytes());
    hex::encode(hasher.finalize())
}

/// A minbase Debian rootfs with `packages` added, made once and then reused.
/// Apt's caches and lists, documentation and manual pages are removed.
pub async fn rootfs(
    cache: &Path,
    packages: &[&str],
    progress: &(dyn Fn(&str) + Sync),
) -> Result<PathBuf, DebianError> {
    let _one_at_a_time = LOCK.lock().await;
    let digest = rootfs_digest(packages);
    let parent = cache.join("rootfs");
    let final_dir = parent.join(&digest[..16]);
    if final_dir.join(".complete").exists() {
        return Ok(final_dir.join("rootfs"));
    }
    let debootstrap = which::which("debootstrap").map_err(|_| DebianError::NoDebootstrap)?;
    if !nix::unistd::Uid::effective().is_root() {
        return Err(DebianError::NotRoot);
    }
    std::fs::create_dir_all(&parent).map_err(io(format!("creating {}", parent.display())))?;
    // Removed when dropped: on failure, cancel, or a lost race.
    let work = WorkDir(Some(
        tempfile::Builder::new()
            .prefix(&format!(".{}-", &digest[..16]))
            .tempdir_in(&parent)
            .map_err(io(format!(
                "creating a work folder in {}",
                parent.display()
            )))?,
    ));
    let dir = work.path().to_path_buf();
    let root = dir.join("rootfs");
    let log = dir.join("debootstrap.log");
    let log_file =
        std::fs::File::create(&log).map_err(io(format!("creating {}", log.display())))?;
    let started = Instant::now();
    progress(&format!(
        "debootstrap {SUITE} (minbase{}{}) into {}",
        if packages.is_empty() { "" } else { " + " },
        packages.join(","),
        root.display()
    ));
    let mut command = tokio::process::Command::new(debootstrap);
    command.arg("--variant=minbase");
    if !packages.is_empty() {
        command.arg(format!("--include={}", packages.join(",")));
    }
    command.arg(SUITE).arg(&root);
    // A mirror of the user's choosing; debootstrap's default otherwise.
    if let Some(mirror) = std::env::var_os("DEBOOTSTRAP_MIRROR") {
        command.arg(mirror);
    }
    let status = command
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().map_err(io("opening the log"))?)
        .stderr(log_file)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(io("running debootstrap"))?;
    if !status.success() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        return Err(DebianError::Debootstrap {
            suite: SUITE.into(),
            status: status.to_string(),
            log,
            tail: last_lines(&text, 15),
        });
    }
    for junk in [
        "var/cache/apt/archives",
        "var/lib/apt/lists",
        "usr/share/doc",
        "usr/share/man",
        "usr/share/info",
    ] {
        let path = root.join(junk);
        if path.is_dir() {
            for entry in std::fs::read_dir(&path).map_err(io(format!("reading {junk}")))? {
                let entry = entry.map_err(io(format!("reading {junk}")))?;
                let p = entry.path();
                // Keep apt's lock and partial folders where apt expects them.
                if p.file_name().is_some_and(|n| n == "partial" || n == "lock") {
                    continue;
                }
                let _ = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
            }
        }
    }
    std::fs::write(dir.join(".complete"), b"").map_err(io("marking the rootfs complete"))?;
    if final_dir.exists() && !final_dir.join(".complete").exists() {
        // Left by an older layout or a crash: not usable.
        std::fs::remove_dir_all(&final_dir).map_err(io(format!(
            "removing the incomplete {}",
            final_dir.display()
        )))?;
    }
    let kept = work.keep();
    if std::fs::rename(&kept, &final_dir).is_err() {
        // Another process finished the same rootfs first: use theirs.
        let _ = std::fs::remove_dir_all(&kept);
        if !final_dir.join(".complete").exists() {
            return Err(DebianError::Io {
                what: format!("moving the rootfs to {}", final_dir.display()),
                source: std::io::Error::other("the folder exists and is incomplete"),
            });
        }
    }
    progress(&format!(
        "  debootstrap done in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(final_dir.join("rootfs"))
}

/// A debootstrap target that is removed when dropped, after unmounting what
/// a killed debootstrap left mounted in it (its /proc and /sys, or a bind
/// mount of /dev in a container): removing through a mount would reach the
/// host's files.
struct WorkDir(Option<tempfile::TempDir>);

impl WorkDir {
    #[allow(
        clippy::expect_used,
        reason = "present until kept, and keeping consumes it"
    )]
    fn path(&self) -> &Path {
        self.0.as_ref().expect("present until kept").path()
    }

    #[allow(
        clippy::expect_used,
        reason = "present until kept, and keeping consumes it"
    )]
    fn keep(mut self) -> PathBuf {
        self.0.take().expect("present until kept").keep()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let Some(dir) = self.0.take() else {
            return;
        };
        for mount in mounts_under(dir.path()) {
            let _ = std::process::Command::new("umount")
                .arg("--lazy")
                .arg(&mount)
                .status();
        }
        if mounts_under(dir.path()).is_empty() {
            drop(dir);
        } else {
            // Never delete through a mount: leave it, and say so.
            let kept = dir.keep();
            tracing::warn!(
                "left {} in place: it still has mounts in it; unmount them and remove it",
                kept.display()
            );
        }
    }
}

/// Mount points under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .filter(|p| p.starts_with(dir))
        .collect();
    found.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    found
}

/// Serialises rootfs and base-image work in this process.
static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Streams `root` as a tar (GNU tar, which keeps device nodes, hard links and
/// modes as they are) into the engine as image `repo:tag`, then gives it the
/// Dockerfile `config` instructions (ENTRYPOINT, ENV, LABEL, ...) in a
/// build of its own: Podman's import reads several `changes` as one.
/// Returns the image id.
pub async fn import_rootfs(
    engine: &Engine,
    root: &Path,
    repo: &str,
    tag: &str,
    config: Vec<String>,
) -> Result<String, DebianError> {
    let reference = format!("{repo}:{tag}");
    // A tag of this import's own: a concurrent import of the same image
    // cannot remove it from under this one's build.
    let plain = format!(
        "{repo}:{tag}-rootfs-{}-{}",
        std::process::id(),
        IMPORTS.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    );
    let result = match import_plain(engine, root, &plain).await {
        Ok(()) => with_config(engine, &plain, &reference, &config).await,
        Err(e) => Err(e),
    };
    // On every path: the engine may hold a partial import.
    let _ = engine.remove_image(&plain).await;
    result
}

static IMPORTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// A build of `FROM from` plus `instructions`, tagged `reference`.
async fn with_config(
    engine: &Engine,
    from: &str,
    reference: &str,
    instructions: &[String],
) -> Result<String, DebianError> {
    let import_error = |problem: String| DebianError::Import {
        reference: reference.to_string(),
        engine: engine.to_string(),
        problem,
    };
    let dockerfile = format!("FROM {from}\n{}\n", instructions.join("\n"));
    let mut tar = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes())
        .map_err(io("writing the build context"))?;
    let context = tar.into_inner().map_err(io("writing the build context"))?;
    let options = bollard::query_parameters::BuildImageOptionsBuilder::default()
        .dockerfile("Dockerfile")
        .t(reference)
        .rm(true)
        .forcerm(true)
        .build();
    let mut output = engine.docker().build_image(
        options,
        None,
        Some(bollard::body_full(bytes::Bytes::from(context))),
    );
    while let Some(item) = output.next().await {
        let info = item.map_err(|e| import_error(crate::error_chain(&e)))?;
        if let Some(error) = info.error_detail.and_then(|d| d.message) {
            return Err(import_error(error));
        }
    }
    let inspect = engine
        .docker()
        .inspect_image(reference)
        .await
        .map_err(|e| import_error(format!("the image is not there after its build: {e}")))?;
    Ok(inspect.id.unwrap_or_default())
}

/// `root` as a tar into the engine as `reference`, with no config.
#[allow(clippy::expect_used, reason = "stdout is piped just above")]
async fn import_plain(engine: &Engine, root: &Path, reference: &str) -> Result<(), DebianError> {
    let import_error = |problem: String| DebianError::Import {
        reference: reference.to_string(),
        engine: engine.to_string(),
        problem,
    };
    let mut tar = tokio::process::Command::new("tar")
        .arg("-C")
        .arg(root)
        .args(["--numeric-owner", "-c", "."])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(io("running tar"))?;
    let stdout = tar.stdout.take().expect("piped");
    let body = tokio_util::io::ReaderStream::with_capacity(stdout, 1 << 20);
    let options = bollard::query_parameters::CreateImageOptionsBuilder::default()
        .from_src("-")
        // `repo:tag` in `repo` (the API allows a tag there): Podman ignores
        // the separate `tag` parameter.
        .repo(reference)
        .build();
    let mut stream =
        engine
            .docker()
            .create_image(Some(options), Some(bollard::body_try_stream(body)), None);
    while let Some(item) = stream.next().await {
        let info = item.map_err(|e| import_error(crate::error_chain(&e)))?;
        if let Some(error) = info.error_detail.and_then(|d| d.message) {
            return Err(import_error(error));
        }
    }
    let output = tar
        .wait_with_output()
        .await
        .map_err(io("waiting for tar"))?;
    if !output.status.success() {
        return Err(import_error(format!(
            "tar failed: {}",
            last_lines(&String::from_utf8_lossy(&output.stderr), 5)
        )));
    }
    engine
        .docker()
        .inspect_image(reference)
        .await
        .map_err(|e| import_error(format!("the image is not there after import: {e}")))?;
    Ok(())
}

/// The base image's reference: `localhost/kind-e2e/debian:<suite>-<digest12>`.
pub fn base_reference() -> String {
    format!(
        "localhost/kind-e2e/debian:{SUITE}-{}",
        &rootfs_digest(&[])[..12]
    )
}

/// The plain Debian base image (minbase, no extra packages) other offline
/// images start `FROM`: `localhost/kind-e2e/debian:<suite>-<digest12>`,
/// imported once per engine.
#[allow(
    clippy::expect_used,
    reason = "the reference is built with a tag just above"
)]
pub async fn base_image(
    engine: &Engine,
    cache: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<String, DebianError> {
    let reference = base_reference();
    let (repo, tag) = reference.rsplit_once(':').expect("a tag");
    if engine.docker().inspect_image(&reference).await.is_ok() {
        return Ok(reference);
    }
    let root = rootfs(cache, &[], progress).await?;
    let _one_at_a_time = LOCK.lock().await;
    if engine.docker().inspect_image(&reference).await.is_ok() {
        // A parallel task imported it while this one waited.
        return Ok(reference);
    }
    let started = Instant::now();
    import_rootfs(
        engine,
        &root,
        repo,
        tag,
        vec!["ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
    )
    .await?;
    progress(&format!(
        "imported {reference} in {:.0}s",
        started.elapsed().as_secs_f64()
    ));
    Ok(reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts_under_a_folder_are_found_deepest_first() {
        let proc_mounts = mounts_under(Path::new("/proc"));
        assert!(proc_mounts.iter().any(|p| p == Path::new("/proc")));
        let plain = tempfile::tempdir().unwrap();
        assert!(mounts_under(plain.path()).is_empty());
        let lengths: Vec<usize> = proc_mounts.iter().map(|p| p.as_os_str().len()).collect();
        assert!(lengths.windows(2).all(|w| w[0] >= w[1]));
    }

    #[test]
    fn the_rootfs_digest_ignores_order_and_repeats() {
        assert_eq!(
            rootfs_digest(&["systemd", "iptables"]),
            rootfs_digest(&["iptables", "systemd", "iptables"])
        );
        assert_ne!(rootfs_digest(&["systemd"]), rootfs_digest(&[]));
    }
}
