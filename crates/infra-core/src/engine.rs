//! One connection to a container engine (Docker or Podman) through the
//! Docker-compatible API, and the few engine operations every other module
//! shares: running a command in a container and feeding a command's stdin.
//!
//! The endpoint comes from `DOCKER_HOST` (`unix://` or `tcp://`) when it is set;
//! otherwise the Docker socket and Podman's rootful and rootless sockets are tried
//! in that order. Every attempt is bounded by [`PING_TIMEOUT`], so a dead engine is
//! reported in seconds, naming every endpoint that was tried.

use std::fmt;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;
use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;

/// How long one endpoint may take to answer a ping before the next is tried.
pub const PING_TIMEOUT: Duration = Duration::from_secs(3);

/// Read/write timeout for ordinary requests (builds and exports stream far
/// longer; bollard applies this only until the response headers arrive).
const REQUEST_TIMEOUT_SECS: u64 = 300;

/// Which engine answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    Docker,
    Podman,
}

impl fmt::Display for EngineKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            EngineKind::Docker => "docker",
            EngineKind::Podman => "podman",
        })
    }
}

/// Errors of the engine connection and of commands run in containers.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(
        "no container engine answered; tried:\n{}\nStart one, for example `dockerd &` or \
         `podman system service --time=0 unix:///run/podman/podman.sock &`, or point \
         DOCKER_HOST at a running engine (unix:///path/to.sock or tcp://host:port)",
        attempts.iter().map(|a| format!("  - {a}")).collect::<Vec<_>>().join("\n")
    )]
    NoEngine { attempts: Vec<String> },

    #[error("container engine request failed: {what}")]
    Api {
        what: String,
        #[source]
        source: bollard::errors::Error,
    },

    #[error("`{command}` in container {container} failed (exit code {exit_code}): {output}")]
    Command {
        container: String,
        command: String,
        exit_code: i64,
        output: String,
    },

    #[error("Podman API request `{request}` failed: {message}")]
    Libpod { request: String, message: String },

    #[error("writing to stdin of `{command}` in container {container} failed")]
    Stdin {
        container: String,
        command: String,
        #[source]
        source: std::io::Error,
    },
}

impl EngineError {
    pub(crate) fn api(what: impl Into<String>, source: bollard::errors::Error) -> Self {
        EngineError::Api {
            what: what.into(),
            source,
        }
    }
}

/// A connected engine. Cheap to clone; all clones share one HTTP client.
#[derive(Clone)]
pub struct Engine {
    docker: Docker,
    endpoint: String,
    kind: EngineKind,
    version: String,
}

impl fmt::Debug for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Engine")
            .field("endpoint", &self.endpoint)
            .field("kind", &self.kind)
            .field("version", &self.version)
            .finish()
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} at {}", self.kind, self.version, self.endpoint)
    }
}

impl Engine {
    /// Connects to `DOCKER_HOST` if set, otherwise to the first default socket
    /// that answers (Docker, then Podman rootful, then Podman rootless).
    pub async fn connect() -> Result<Engine, EngineError> {
        Self::connect_from(std::env::var("DOCKER_HOST").ok().as_deref()).await
    }

    /// [`Engine::connect`] with the value of `DOCKER_HOST` given explicitly:
    /// when it is set (and not blank) only that endpoint is tried.
    pub async fn connect_from(docker_host: Option<&str>) -> Result<Engine, EngineError> {
        match docker_host.map(str::trim).filter(|h| !h.is_empty()) {
            Some(host) => Self::connect_to(host)
                .await
                .map_err(|why| EngineError::NoEngine {
                    attempts: vec![format!("DOCKER_HOST={host}: {why}")],
                }),
            None => {
                let mut attempts = Vec::new();
                for endpoint in default_endpoints() {
                    match Self::connect_to(&endpoint).await {
                        Ok(engine) => return Ok(engine),
                        Err(why) => attempts.push(format!("{endpoint}: {why}")),
                    }
                }
                Err(EngineError::NoEngine { attempts })
            }
        }
    }

    /// Connects to one endpoint (`unix:///path`, `/path`, `tcp://host:port` or
    /// `http://host:port`). The error is a one-line reason, for listing.
    pub async fn connect_to(endpoint: &str) -> Result<Engine, String> {
        let docker = if let Some(path) = unix_path(endpoint) {
            if !std::path::Path::new(path).exists() {
                return Err("socket does not exist".into());
            }
            Docker::connect_with_unix(path, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        } else if endpoint.starts_with("tcp://") || endpoint.starts_with("http://") {
            Docker::connect_with_http(endpoint, REQUEST_TIMEOUT_SECS, bollard::API_DEFAULT_VERSION)
        } else {
            return Err("unsupported scheme (use unix:// or tcp://)".into());
        }
        .map_err(|e| error_chain(&e))?;

        let version = tokio::time::timeout(PING_TIMEOUT, docker.version())
            .await
            .map_err(|_| format!("no answer within {}s", PING_TIMEOUT.as_secs()))?
            .map_err(|e| error_chain(&e))?;
        // The engine may speak an older API than bollard's default (Debian's
        // Docker 20.10 speaks 1.41); downgrade to what it announces.
        let docker = tokio::time::timeout(PING_TIMEOUT, docker.negotiate_version())
            .await
            .map_err(|_| "version negotiation timed out".to_string())?
            .map_err(|e| error_chain(&e))?;

        let is_podman = version
            .components
            .iter()
            .flatten()
            .any(|c| c.name.to_ascii_lowercase().contains("podman"));
        let kind = if is_podman {
            EngineKind::Podman
        } else {
            EngineKind::Docker
        };
        Ok(Engine {
            docker,
            endpoint: endpoint.to_string(),
            kind,
            version: version.version.unwrap_or_else(|| "unknown".into()),
        })
    }

    /// The bollard client, for operations this module does not wrap.
    pub fn docker(&self) -> &Docker {
        &self.docker
    }

    /// Docker or Podman.
    pub fn kind(&self) -> EngineKind {
        self.kind
    }

    /// The engine's own version string (e.g. `20.10.24+dfsg1`, `4.3.1`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The endpoint this connection uses (`unix:///var/run/docker.sock`, ...).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// A request to Podman's own (libpod) API, for what its Docker-compatible
    /// API cannot do; returns the status code and the JSON body (`null` when
    /// empty). `path` starts with `/v4.0.0/libpod/`. An answer outside 2xx is
    /// an error carrying Podman's message.
    pub async fn libpod(
        &self,
        method: &str,
        path: &str,
    ) -> Result<(u16, serde_json::Value), EngineError> {
        let failed = |message: String| EngineError::Libpod {
            request: format!("{method} {path}"),
            message,
        };
        let response = match unix_path(&self.endpoint) {
            Some(socket) => {
                let stream = tokio::net::UnixStream::connect(socket)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                send_raw(stream, method, path).await
            }
            None => {
                let address = self
                    .endpoint
                    .trim_start_matches("tcp://")
                    .trim_start_matches("http://");
                let stream = tokio::net::TcpStream::connect(address)
                    .await
                    .map_err(|e| failed(e.to_string()))?;
                send_raw(stream, method, path).await
            }
        }
        .map_err(failed)?;
        let (status, body) = response;
        if !(200..300).contains(&status) {
            return Err(failed(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        let json = if body.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&body).map_err(|e| failed(e.to_string()))?
        };
        Ok((status, json))
    }

    /// Every container (running or not) carrying `label`, given as `key` or
    /// `key=value`.
    pub async fn containers_labelled(
        &self,
        label: &str,
    ) -> Result<Vec<bollard::models::ContainerSummary>, EngineError> {
        let filters =
            std::collections::HashMap::from([("label".to_string(), vec![label.to_string()])]);
        let options = bollard::query_parameters::ListContainersOptionsBuilder::default()
            .all(true)
            .filters(&filters)
            .build();
        self.docker
            .list_containers(Some(options))
            .await
            .map_err(|e| EngineError::api(format!("listing containers labelled {label}"), e))
    }

    /// Removes an image (forcefully); an image that is not there is no error.
    pub async fn remove_image(&self, reference: &str) -> Result<(), EngineError> {
        let options = bollard::query_parameters::RemoveImageOptionsBuilder::default()
            .force(true)
            .build();
        match self
            .docker
            .remove_image(reference, Some(options), None)
            .await
        {
            Ok(_)
            | Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 404, ..
            }) => Ok(()),
            Err(e) => Err(EngineError::api(format!("removing image {reference}"), e)),
        }
    }

    /// Runs `cmd` in `container` and collects its output and exit code.
    pub async fn exec(&self, container: &str, cmd: &[&str]) -> Result<ExecOutput, EngineError> {
        self.exec_with_stdin(
            container,
            cmd,
            None::<futures::stream::Empty<std::io::Result<Bytes>>>,
        )
        .await
    }

    /// Like [`Engine::exec`], but a non-zero exit is an error carrying the
    /// command's last output lines.
    pub async fn exec_ok(&self, container: &str, cmd: &[&str]) -> Result<ExecOutput, EngineError> {
        let output = self.exec(container, cmd).await?;
        if !output.success() {
            return Err(EngineError::Command {
                container: container.to_string(),
                command: cmd.join(" "),
                exit_code: output.exit_code,
                output: output.tail(5),
            });
        }
        Ok(output)
    }

    /// Runs `cmd` in `container`, feeding it `stdin` (then closing it) while its
    /// output is read concurrently, so neither side can stall the other. An
    /// error reading `stdin` stops the feed and is returned.
    pub async fn exec_with_stdin<S>(
        &self,
        container: &str,
        cmd: &[&str],
        stdin: Option<S>,
    ) -> Result<ExecOutput, EngineError>
    where
        S: Stream<Item = std::io::Result<Bytes>> + Send,
    {
        let session = self.start_exec(container, cmd, stdin.is_some()).await?;
        let ExecSession {
            id,
            output,
            mut input,
        } = session;
        let collect = collect_output(output);
        let feed = async {
            if let Some(stdin) = stdin {
                futures::pin_mut!(stdin);
                while let Some(chunk) = stdin.next().await {
                    input.write_all(&chunk?).await?;
                }
            }
            input.shutdown().await
        };
        let (collected, fed) = tokio::join!(collect, feed);
        let (stdout, stderr) =
            collected.map_err(|e| EngineError::api(format!("reading output of {cmd:?}"), e))?;
        fed.map_err(|source| EngineError::Stdin {
            container: container.into(),
            command: cmd.join(" "),
            source,
        })?;
        let exit_code = self.exec_exit_code(&id).await?;
        Ok(ExecOutput {
            exit_code,
            stdout,
            stderr,
        })
    }

    /// Starts `cmd` in `container` with output attached (and stdin when asked);
    /// the caller drives both halves. See [`ExecSession`].
    pub async fn start_exec(
        &self,
        container: &str,
        cmd: &[&str],
        attach_stdin: bool,
    ) -> Result<ExecSession, EngineError> {
        let what = || format!("exec {cmd:?} in container {container}");
        let created = self
            .docker
            .create_exec(
                container,
                ExecConfig {
                    attach_stdin: Some(attach_stdin),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    tty: Some(false),
                    cmd: Some(cmd.iter().map(|s| s.to_string()).collect()),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| EngineError::api(what(), e))?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: Some(64 * 1024),
                }),
            )
            .await
            .map_err(|e| EngineError::api(what(), e))?;
        match started {
            StartExecResults::Attached { output, input } => Ok(ExecSession {
                id: created.id,
                output,
                input,
            }),
            StartExecResults::Detached => Err(EngineError::api(
                what(),
                bollard::errors::Error::DockerResponseServerError {
                    status_code: 500,
                    message: "engine detached an exec that asked to attach".into(),
                },
            )),
        }
    }

    /// The exit code of a finished exec (`-1` if the engine does not say).
    pub async fn exec_exit_code(&self, exec_id: &str) -> Result<i64, EngineError> {
        // The output stream ends when the process closes it, which can be a
        // moment before the engine records the exit code.
        for _ in 0..50 {
            let inspect = self
                .docker
                .inspect_exec(exec_id)
                .await
                .map_err(|e| EngineError::api(format!("inspect exec {exec_id}"), e))?;
            if inspect.running != Some(true) {
                return Ok(inspect.exit_code.unwrap_or(-1));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(-1)
    }
}

/// A started exec: read `output`, write `input` (shut it down for EOF), then ask
/// [`Engine::exec_exit_code`] with `id`.
pub struct ExecSession {
    pub id: String,
    pub output:
        std::pin::Pin<Box<dyn Stream<Item = Result<LogOutput, bollard::errors::Error>> + Send>>,
    pub input: std::pin::Pin<Box<dyn tokio::io::AsyncWrite + Send>>,
}

/// What a command run in a container printed, and how it ended.
#[derive(Debug, Clone)]
pub struct ExecOutput {
    pub exit_code: i64,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutput {
    pub fn success(&self) -> bool {
        self.exit_code == 0
    }

    /// The last `n` non-empty lines of stderr (or stdout when stderr is empty),
    /// for error messages.
    pub fn tail(&self, n: usize) -> String {
        let text = if self.stderr.trim().is_empty() {
            &self.stdout
        } else {
            &self.stderr
        };
        last_lines(text, n)
    }
}

/// Reads an exec's multiplexed output to the end, split into stdout and stderr.
pub async fn collect_output(
    mut output: impl Stream<Item = Result<LogOutput, bollard::errors::Error>> + Unpin,
) -> Result<(String, String), bollard::errors::Error> {
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    while let Some(item) = output.next().await {
        match item? {
            LogOutput::StdOut { message } | LogOutput::Console { message } => {
                stdout.extend_from_slice(&message)
            }
            LogOutput::StdErr { message } => stderr.extend_from_slice(&message),
            LogOutput::StdIn { .. } => {}
        }
    }
    Ok((
        String::from_utf8_lossy(&stdout).into_owned(),
        String::from_utf8_lossy(&stderr).into_owned(),
    ))
}

/// An error and its causes on one line, `outer: inner: innermost`, skipping a
/// cause whose text its parent already contains.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The last `n` non-empty lines of `text`, joined with newlines.
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// One HTTP/1.1 request on a fresh connection.
async fn send_raw<S>(stream: S, method: &str, path: &str) -> Result<(u16, Vec<u8>), String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    use http_body_util::BodyExt;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .body(http_body_util::Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request))
        .await
        .map_err(|_| "no answer within 30s".to_string())?
        .map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    driver.abort();
    Ok((status, body))
}

fn unix_path(endpoint: &str) -> Option<&str> {
    if let Some(path) = endpoint.strip_prefix("unix://") {
        Some(path)
    } else if endpoint.starts_with('/') {
        Some(endpoint)
    } else {
        None
    }
}

/// The sockets tried when `DOCKER_HOST` is not set, in order.
pub fn default_endpoints() -> Vec<String> {
    let mut endpoints = vec![
        "unix:///var/run/docker.sock".to_string(),
        "unix:///run/podman/podman.sock".to_string(),
    ];
    let runtime_dir = std::env::var("XDG_RUNTIME_DIR")
        .ok()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| format!("/run/user/{}", current_uid()));
    let rootless = format!("unix://{runtime_dir}/podman/podman.sock");
    if !endpoints.contains(&rootless) {
        endpoints.push(rootless);
    }
    endpoints
}

fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_lines_keeps_the_tail_without_blank_lines() {
        assert_eq!(last_lines("a\n\nb\nc\n\n", 2), "b\nc");
        assert_eq!(last_lines("a", 5), "a");
        assert_eq!(last_lines("", 5), "");
    }

    #[test]
    fn default_endpoints_start_with_docker_then_podman() {
        let e = default_endpoints();
        assert_eq!(e[0], "unix:///var/run/docker.sock");
        assert_eq!(e[1], "unix:///run/podman/podman.sock");
        assert!(e.len() >= 3 && e[2].ends_with("/podman/podman.sock"));
    }

    #[tokio::test]
    async fn a_dead_endpoint_is_refused_quickly_with_a_reason() {
        let started = std::time::Instant::now();
        let why = Engine::connect_to("unix:///nonexistent/docker.sock")
            .await
            .unwrap_err();
        assert!(why.contains("does not exist"), "{why}");
        // A closed TCP port on loopback is refused at once.
        let why = Engine::connect_to("tcp://127.0.0.1:9").await.unwrap_err();
        assert!(!why.is_empty());
        assert!(started.elapsed() < Duration::from_secs(5));
        let why = Engine::connect_to("ssh://host").await.unwrap_err();
        assert!(why.contains("unsupported scheme"), "{why}");
    }
}
