//! The sim cluster's control plane: the pinned toolchain's etcd,
//! kube-apiserver, kube-controller-manager and kube-scheduler, run as host
//! processes on 127.0.0.1 with a CA, serving certificate and service-account
//! key made per cluster (rcgen) and one admin token.
//!
//! Every process's output goes to `<dir>/<name>.log`; the error of a process
//! that exits or never becomes ready carries the tail of its log. The
//! children die with their parent (`PR_SET_PDEATHSIG`, which fires when the
//! spawning thread ends: a runtime thread, which lives as long as the
//! process) and are stopped by [`ControlPlane::stop`] (SIGTERM, then
//! SIGKILL). A new control plane never reuses an earlier one's etcd data.
//! etcd serves plain HTTP on 127.0.0.1 without authentication: the sim is
//! for a single-user machine.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use tokio::process::{Child, Command};

use super::super::{ClusterError, write_private};

/// The Service CIDR, as kind's default.
pub const SERVICE_CIDR: &str = "10.96.0.0/16";
/// How long the API server may take to answer `/readyz` (2 cores under load
/// take 10-20 s).
const READY_TIMEOUT: Duration = Duration::from_secs(90);

/// The binaries the control plane runs, all from one toolchain `bin/`.
pub const BINARIES: &[&str] = &[
    "etcd",
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
];

/// A running control plane.
pub struct ControlPlane {
    cluster: String,
    dir: PathBuf,
    url: String,
    ca_pem: String,
    token: String,
    children: Vec<(&'static str, Child)>,
}

fn sim_error(cluster: &str, problem: impl Into<String>) -> ClusterError {
    ClusterError::Sim {
        cluster: cluster.to_string(),
        problem: problem.into(),
    }
}

/// Three distinct free ports on 127.0.0.1 (held together so they differ).
fn free_ports() -> std::io::Result<[u16; 3]> {
    let listeners = [
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
        TcpListener::bind("127.0.0.1:0")?,
    ];
    Ok([
        listeners[0].local_addr()?.port(),
        listeners[1].local_addr()?.port(),
        listeners[2].local_addr()?.port(),
    ])
}

/// The PKI of one cluster, PEM-encoded.
struct Pki {
    ca_cert: String,
    serving_cert: String,
    serving_key: String,
    sa_key: String,
    sa_pub: String,
}

fn make_pki(cluster: &str) -> Result<Pki, rcgen::Error> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, format!("kind-e2e sim {cluster} CA"));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca, KeyPair::generate()?)?;
    let mut serving = CertificateParams::new(vec![
        "127.0.0.1".to_string(),
        "10.96.0.1".to_string(),
        "localhost".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ])?;
    serving
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    let serving_key = KeyPair::generate()?;
    let serving_cert = serving.signed_by(&serving_key, &ca)?;
    let sa = KeyPair::generate()?;
    Ok(Pki {
        ca_cert: ca.pem(),
        serving_cert: serving_cert.pem(),
        serving_key: serving_key.serialize_pem(),
        sa_key: sa.serialize_pem(),
        sa_pub: sa.public_key_pem(),
    })
}

/// A kubeconfig for `url`, named like kind's (`kind-<cluster>`).
pub fn kubeconfig(cluster: &str, url: &str, ca_pem: &str, token: &str) -> String {
    let name = format!("kind-{cluster}");
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- cluster:\n    certificate-authority-data: \
         {ca}\n    server: {url}\n  name: {name}\ncontexts:\n- context:\n    cluster: {name}\n    \
         user: {name}\n  name: {name}\ncurrent-context: {name}\npreferences: {{}}\nusers:\n- \
         name: {name}\n  user:\n    token: {token}\n"
    )
}

fn random_token() -> String {
    uuid::Uuid::new_v4().simple().to_string()
}

/// Fails unless every control-plane binary is in `bin`.
pub fn check_binaries(cluster: &str, bin: &Path) -> Result<(), ClusterError> {
    for name in BINARIES {
        if !bin.join(name).is_file() {
            return Err(sim_error(
                cluster,
                format!(
                    "{} is missing: the sim runs the pinned toolchain's control plane; run \
                     `cargo xtask toolchain build` first",
                    bin.join(name).display()
                ),
            ));
        }
    }
    Ok(())
}

impl ControlPlane {
    /// Starts etcd, then the API server (waiting for `/readyz`), then the
    /// controller manager and scheduler. Files go to `dir` (created). On
    /// failure every started process is stopped.
    pub async fn start(
        cluster: &str,
        bin: &Path,
        dir: &Path,
    ) -> Result<ControlPlane, ClusterError> {
        check_binaries(cluster, bin)?;
        let io = |what: &str| {
            let what = format!("{what} in {}", dir.display());
            move |source| ClusterError::Io { what, source }
        };
        std::fs::create_dir_all(dir).map_err(io("creating the control plane folder"))?;
        // A new cluster never starts on an earlier one's data (a folder left
        // when its supervisor stopped on its own, or its nodes were removed
        // by hand).
        for stale in ["etcd", "apiserver-certs", "pki"] {
            let path = dir.join(stale);
            if path.exists() {
                std::fs::remove_dir_all(&path)
                    .map_err(io("removing the earlier cluster's data"))?;
            }
        }
        let pki = make_pki(cluster)
            .map_err(|e| sim_error(cluster, format!("making its certificates: {e}")))?;
        let pki_dir = dir.join("pki");
        for (file, text) in [
            ("ca.crt", &pki.ca_cert),
            ("apiserver.crt", &pki.serving_cert),
            ("apiserver.key", &pki.serving_key),
            ("sa.key", &pki.sa_key),
            ("sa.pub", &pki.sa_pub),
        ] {
            write_private(&pki_dir.join(file), text)?;
        }
        let token = random_token();
        write_private(
            &pki_dir.join("tokens.csv"),
            &format!("{token},kubernetes-admin,kubernetes-admin,system:masters\n"),
        )?;
        // The ports are free when chosen but not held: another process may
        // take one before etcd or the API server binds it. Then try again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let [etcd_client, etcd_peer, api_port] =
                free_ports().map_err(io("finding free ports"))?;
            let url = format!("https://127.0.0.1:{api_port}");
            let admin = dir.join("admin.kubeconfig");
            write_private(&admin, &kubeconfig(cluster, &url, &pki.ca_cert, &token))?;
            let _ = std::fs::remove_dir_all(dir.join("etcd"));
            let mut plane = ControlPlane {
                cluster: cluster.to_string(),
                dir: dir.to_path_buf(),
                url,
                ca_pem: pki.ca_cert.clone(),
                token: token.clone(),
                children: Vec::new(),
            };
            let result = plane
                .start_processes(bin, &pki_dir, &admin, etcd_client, etcd_peer, api_port)
                .await;
            match result {
                Ok(()) => return Ok(plane),
                Err(error) => {
                    plane.stop().await;
                    let port_taken = ["etcd", "kube-apiserver"]
                        .iter()
                        .any(|name| plane.log_tail(name).contains("address already in use"));
                    if !(port_taken && attempt < 3) {
                        return Err(error);
                    }
                }
            }
        }
    }

    async fn start_processes(
        &mut self,
        bin: &Path,
        pki: &Path,
        admin: &Path,
        etcd_client: u16,
        etcd_peer: u16,
        api_port: u16,
    ) -> Result<(), ClusterError> {
        let p = |file: &str| pki.join(file).display().to_string();
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let data = self.dir.join("etcd");
        self.spawn(
            bin,
            "etcd",
            vec![
                "--name=sim".into(),
                format!("--data-dir={}", data.display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=sim={peer_url}"),
                // Throwaway state: durability buys nothing and fsync is slow.
                "--unsafe-no-fsync".into(),
                "--log-level=warn".into(),
            ],
        )?;
        self.spawn(
            bin,
            "kube-apiserver",
            vec![
                format!("--etcd-servers={etcd_url}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={api_port}"),
                format!("--tls-cert-file={}", p("apiserver.crt")),
                format!("--tls-private-key-file={}", p("apiserver.key")),
                format!("--client-ca-file={}", p("ca.crt")),
                format!("--token-auth-file={}", p("tokens.csv")),
                "--authorization-mode=RBAC".into(),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
                format!("--service-account-key-file={}", p("sa.pub")),
                format!("--service-account-signing-key-file={}", p("sa.key")),
                "--allow-privileged=true".into(),
                "--profiling=false".into(),
                // The `kubernetes` Service's endpoint would be 127.0.0.1,
                // which Endpoints refuse; nothing in the cluster dials it.
                "--endpoint-reconciler-type=none".into(),
                format!("--cert-dir={}", self.dir.join("apiserver-certs").display()),
            ],
        )?;
        self.wait_ready().await?;
        let kubeconfig = format!("--kubeconfig={}", admin.display());
        self.spawn(
            bin,
            "kube-controller-manager",
            vec![
                kubeconfig.clone(),
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                format!("--cluster-name={}", self.cluster),
                format!("--service-account-private-key-file={}", p("sa.key")),
                format!("--root-ca-file={}", p("ca.crt")),
                format!("--service-cluster-ip-range={SERVICE_CIDR}"),
                "--profiling=false".into(),
            ],
        )?;
        self.spawn(
            bin,
            "kube-scheduler",
            vec![
                kubeconfig,
                "--secure-port=0".into(),
                "--leader-elect=false".into(),
                "--profiling=false".into(),
            ],
        )?;
        Ok(())
    }

    #[allow(unsafe_code, reason = "pre_exec: a child must die with its supervisor")]
    fn spawn(
        &mut self,
        bin: &Path,
        name: &'static str,
        args: Vec<String>,
    ) -> Result<(), ClusterError> {
        let log_path = self.dir.join(format!("{name}.log"));
        let io = |what: String| move |source| ClusterError::Io { what, source };
        let log = std::fs::File::create(&log_path)
            .map_err(io(format!("creating {}", log_path.display())))?;
        let mut command = Command::new(bin.join(name));
        // etcd reads ETCD_* variables as flags and refuses a flag set twice.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("ETCD_") {
                command.env_remove(&key);
            }
        }
        command
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(
                log.try_clone()
                    .map_err(io(format!("opening {}", log_path.display())))?,
            )
            .stderr(log)
            .kill_on_drop(true);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork
        // and exec.
        unsafe {
            command.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
                    .map_err(std::io::Error::from)
            });
        }
        let child = command
            .spawn()
            .map_err(io(format!("starting {}", bin.join(name).display())))?;
        self.children.push((name, child));
        Ok(())
    }

    /// The tail of one process's log.
    pub fn log_tail(&self, name: &str) -> String {
        crate::engine::last_lines(
            &std::fs::read_to_string(self.dir.join(format!("{name}.log"))).unwrap_or_default(),
            15,
        )
    }

    /// The first child that exited, with its status and log tail.
    pub fn exited(&mut self) -> Option<String> {
        let mut gone = None;
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                gone = Some((*name, status));
                break;
            }
        }
        gone.map(|(name, status)| {
            format!(
                "{name} exited ({status}); the end of its log:\n{}",
                self.log_tail(name)
            )
        })
    }

    #[allow(clippy::expect_used, reason = "a constant, valid request")]
    async fn wait_ready(&mut self) -> Result<(), ClusterError> {
        let client = self.client().await?;
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(why) = self.exited() {
                return Err(sim_error(&self.cluster, why));
            }
            let request = hyper::Request::get("/readyz")
                .body(Vec::new())
                .expect("a valid request");
            let last =
                match tokio::time::timeout(Duration::from_secs(5), client.request_text(request))
                    .await
                {
                    Ok(Ok(text)) if text.trim() == "ok" => return Ok(()),
                    Ok(Ok(text)) => text,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => "no answer within 5s".into(),
                };
            if tokio::time::Instant::now() >= deadline {
                return Err(sim_error(
                    &self.cluster,
                    format!(
                        "kube-apiserver was not ready within {}s (last answer: {last}); the end of \
                         its log:\n{}",
                        READY_TIMEOUT.as_secs(),
                        self.log_tail("kube-apiserver")
                    ),
                ));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A kube-rs client for this control plane.
    pub async fn client(&self) -> Result<kube::Client, ClusterError> {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig())
            .map_err(|e| sim_error(&self.cluster, format!("its kubeconfig: {e}")))?;
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .map_err(|e| sim_error(&self.cluster, format!("its kubeconfig: {e}")))?;
        kube::Client::try_from(config).map_err(|e| sim_error(&self.cluster, e.to_string()))
    }

    /// The admin kubeconfig (cluster, user and context `kind-<cluster>`).
    pub fn kubeconfig(&self) -> String {
        kubeconfig(&self.cluster, &self.url, &self.ca_pem, &self.token)
    }

    /// `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// SIGTERM to every process at once, then waits for each (scheduler
    /// first, etcd last), SIGKILL to any still running after 5 s.
    pub async fn stop(&mut self) {
        use nix::sys::signal::{Signal, kill};
        use nix::unistd::Pid;
        for (_, child) in self.children.iter().rev() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
        }
        for (_, child) in self.children.iter_mut().rev() {
            if tokio::time::timeout(Duration::from_secs(5), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.children.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_follows_kinds_names_and_carries_the_ca_and_token() {
        let kc = kubeconfig("e2e", "https://127.0.0.1:6443", "PEM", "t0k3n");
        let parsed: serde_json::Value = yaml_serde::from_str(&kc).unwrap();
        assert_eq!(parsed["current-context"], "kind-e2e");
        assert_eq!(parsed["users"][0]["user"]["token"], "t0k3n");
        assert_eq!(
            parsed["clusters"][0]["cluster"]["certificate-authority-data"],
            "UEVN"
        );
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"],
            "https://127.0.0.1:6443"
        );
    }

    #[test]
    fn the_pki_is_pem_and_the_serving_certificate_names_the_loopback_and_the_service() {
        let pki = make_pki("e2e").unwrap();
        assert!(pki.ca_cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pki.sa_pub.starts_with("-----BEGIN PUBLIC KEY-----"));
        assert!(pki.sa_key.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert_ne!(pki.serving_key, pki.sa_key);
        assert!(pki.serving_cert.contains("CERTIFICATE"));
    }
}
