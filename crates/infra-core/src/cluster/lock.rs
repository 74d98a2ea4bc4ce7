//! One run per cluster at a time: an exclusive `flock` on
//! `<state_dir>/locks/<cluster>.lock`, taken before anything is created and
//! held until the run has torn down. The kernel releases it when its holder
//! exits, however it exits, so a crashed run never keeps it. The file says
//! who holds it (pid, run id, since when), for the message the next run
//! prints.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};

/// Who holds a cluster's lock, as its file says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    pub run_id: String,
}

/// Why a cluster's lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another run is using cluster {cluster}{holder}: wait for it to finish (or pass --wait to \
         queue behind it)",
        holder = match holder {
            Some(h) => format!(" (pid {}, run {})", h.pid, h.run_id),
            None => String::new(),
        }
    )]
    Busy {
        cluster: String,
        holder: Option<Holder>,
    },
    #[error("the lock file {path} of cluster {cluster}: {source}")]
    Io {
        cluster: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A held lock; dropping it releases the lock.
#[derive(Debug)]
pub struct ClusterLock {
    _file: Flock<File>,
    path: PathBuf,
}

impl ClusterLock {
    /// The lock file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// `<state_dir>/locks/<cluster>.lock`.
pub fn lock_path(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join("locks").join(format!("{cluster}.lock"))
}

/// Who holds `cluster`'s lock now, if anyone (a file left by a holder that
/// exited is not a holder).
pub fn holder(state_dir: &Path, cluster: &str) -> Option<Holder> {
    let path = lock_path(state_dir, cluster);
    let file = File::options().read(true).write(true).open(&path).ok()?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        // Free: nobody holds it (the guard drops and unlocks at once).
        Ok(_) => None,
        Err((mut file, _)) => read_holder(&mut file),
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut text).ok()?;
    let mut pid = None;
    let mut run_id = None;
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("pid=") {
            pid = v.trim().parse().ok();
        } else if let Some(v) = line.strip_prefix("run=") {
            run_id = Some(v.trim().to_string());
        }
    }
    Some(Holder {
        pid: pid?,
        run_id: run_id.unwrap_or_default(),
    })
}

/// Takes `cluster`'s lock for `run_id`. Busy: fails at once naming the
/// holder, or with `wait` queues behind it (calling `waiting` once with the
/// holder) until it is free.
pub async fn acquire(
    state_dir: &Path,
    cluster: &str,
    run_id: &str,
    wait: bool,
    waiting: impl FnOnce(Option<&Holder>),
) -> Result<ClusterLock, LockError> {
    let path = lock_path(state_dir, cluster);
    let io = |source| LockError::Io {
        cluster: cluster.to_string(),
        path: path.clone(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    let file = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io)?;
    let mut locked = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(locked) => locked,
        Err((mut file, Errno::EWOULDBLOCK)) => {
            let holder = read_holder(&mut file);
            if !wait {
                return Err(LockError::Busy {
                    cluster: cluster.to_string(),
                    holder,
                });
            }
            waiting(holder.as_ref());
            // Poll the non-blocking lock: a blocking flock in a thread could
            // not be abandoned when this run is itself cancelled.
            let mut file = file;
            loop {
                tokio::time::sleep(Duration::from_millis(200)).await;
                match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
                    Ok(locked) => break locked,
                    Err((back, Errno::EWOULDBLOCK)) => file = back,
                    Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
                }
            }
        }
        Err((_, errno)) => return Err(io(std::io::Error::from(errno))),
    };
    let since = jiff::Timestamp::now();
    let text = format!("pid={}\nrun={run_id}\nsince={since}\n", std::process::id());
    locked
        .set_len(0)
        .and_then(|()| locked.rewind())
        .and_then(|()| locked.write_all(text.as_bytes()))
        .and_then(|()| locked.flush())
        .map_err(io)?;
    Ok(ClusterLock {
        _file: locked,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_second_run_is_refused_naming_the_first_and_gets_the_lock_once_it_is_released() {
        let state = tempfile::tempdir().unwrap();
        let first = acquire(state.path(), "c", "run-1", false, |_| {})
            .await
            .unwrap();
        assert_eq!(
            holder(state.path(), "c"),
            Some(Holder {
                pid: std::process::id(),
                run_id: "run-1".into()
            })
        );
        let busy = acquire(state.path(), "c", "run-2", false, |_| {})
            .await
            .unwrap_err();
        let message = busy.to_string();
        assert!(
            message.contains(&format!("pid {}", std::process::id()))
                && message.contains("run run-1")
                && message.contains("--wait"),
            "{message}"
        );
        // Another cluster is independent.
        let _other = acquire(state.path(), "d", "run-3", false, |_| {})
            .await
            .unwrap();
        drop(first);
        assert_eq!(holder(state.path(), "c"), None);
        let again = acquire(state.path(), "c", "run-2", false, |_| {})
            .await
            .unwrap();
        assert!(again.path().ends_with("locks/c.lock"));
    }

    #[tokio::test]
    async fn with_wait_a_second_run_queues_until_the_first_releases() {
        let state = tempfile::tempdir().unwrap();
        let first = acquire(state.path(), "c", "run-1", false, |_| {})
            .await
            .unwrap();
        let dir = state.path().to_path_buf();
        let (told_tx, told_rx) = tokio::sync::oneshot::channel();
        let second = tokio::spawn(async move {
            acquire(&dir, "c", "run-2", true, |h| {
                let _ = told_tx.send(h.cloned());
            })
            .await
        });
        let told = told_rx.await.unwrap();
        assert_eq!(told.map(|h| h.run_id), Some("run-1".to_string()));
        assert!(!second.is_finished());
        drop(first);
        let second = tokio::time::timeout(Duration::from_secs(5), second)
            .await
            .expect("the waiting run gets the lock")
            .unwrap()
            .unwrap();
        assert_eq!(
            holder(state.path(), "c").map(|h| h.run_id),
            Some("run-2".into())
        );
        drop(second);
    }

    #[test]
    fn a_lock_left_by_a_process_that_died_is_free() {
        let state = tempfile::tempdir().unwrap();
        let path = lock_path(state.path(), "c");
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        // A child takes the lock and is killed: the kernel releases it.
        let mut child = std::process::Command::new("flock")
            .arg(&path)
            .args(["sleep", "30"])
            .spawn()
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while holder(state.path(), "c").is_none() && std::fs::read(&path).is_ok() {
            // flock(1) writes nothing, so "held" shows as an empty holder; wait
            // until the lock is really taken.
            let file = File::open(&path).unwrap();
            if Flock::lock(file, FlockArg::LockExclusiveNonblock).is_err() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "flock(1) never took the lock"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(holder(state.path(), "c"), None);
    }
}
