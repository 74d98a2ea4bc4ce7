//! The `datastorage` binary as a child process, its output collected.

use crate::common::pg::{signal, wait_or_kill};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct Service {
    child: Child,
    pub port: u16,
    pub metrics_port: u16,
    lines: Arc<Mutex<Vec<String>>>,
}

fn collect(stream: impl Read + Send + 'static, lines: Arc<Mutex<Vec<String>>>) {
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            lines.lock().unwrap().push(line);
        }
    });
}

impl Service {
    /// Starts `exe` with only `env` (plus free ports unless given).
    pub fn spawn(exe: &Path, env: &[(&str, String)]) -> Service {
        let port = crate::common::free_port();
        let metrics_port = crate::common::free_port();
        let mut command = Command::new(exe);
        command
            .env_clear()
            .env("DATASTORAGE_PORT", port.to_string())
            .env("METRICS_PORT", metrics_port.to_string())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = command.spawn().expect("starting datastorage");
        let lines = Arc::new(Mutex::new(Vec::new()));
        collect(child.stdout.take().unwrap(), lines.clone());
        collect(child.stderr.take().unwrap(), lines.clone());
        Service {
            child,
            port,
            metrics_port,
            lines,
        }
    }

    /// Everything the process printed so far, one entry a line.
    pub fn output(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    /// Whether the process is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits until `/health` answers 200.
    pub fn wait_healthy(&mut self) {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "datastorage exited ({status}):\n{}",
                    self.output().join("\n")
                );
            }
            if crate::common::http::request("GET", self.port, "/health", None)
                .is_ok_and(|r| r.status == 200)
            {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "datastorage did not serve /health in 20s:\n{}",
                self.output().join("\n")
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Sends SIGTERM and waits (at most 20 s) for the exit.
    pub fn terminate(&mut self) -> Option<ExitStatus> {
        signal(self.child.id(), "TERM");
        wait_or_kill(&mut self.child, Duration::from_secs(20))
    }

    /// Waits for the process to exit on its own.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        wait_or_kill(&mut self.child, timeout)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("datastorage output:\n{}", self.output().join("\n"));
        }
    }
}
