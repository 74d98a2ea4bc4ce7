//! The pinned Kubernetes toolchain: kubeadm, kubelet, kubectl, the control
//! plane, kube-proxy, etcd, CoreDNS, kind, crictl, and the node image's own pause and
//! pod-network agent, built from the Go modules under `toolchain/` with the
//! ordinary `go` command (modules come through the Go module proxy; no code
//! of those projects is in the repository).
//!
//! Each Go module pins one release in its `go.mod`; [`GO_BUILDS`] says which
//! commands are built from which module. The output goes to a
//! content-addressed cache outside `target/`:
//! `<cache>/toolchain/<digest16>/bin/`, where the digest covers every file of
//! the modules (go.mod, go.sum, our sources), the Go version and the build
//! recipe. A complete build writes `toolchain.json` last and the folder is
//! moved into place atomically, so a half-built toolchain is never used and a
//! second build with the same inputs takes no time.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Bump when the way binaries are built changes (flags, layout).
const RECIPE: &str = "toolchain-recipe-1";

/// One `go build` of one module.
#[derive(Debug, Clone, Copy)]
pub struct GoBuild {
    /// The module's folder under `toolchain/`.
    pub module: &'static str,
    /// Package paths (or `./cmd/...`) and the binary each gives.
    pub commands: &'static [(&'static str, &'static str)],
    /// Whether Kubernetes' version variables are set (`--version`, and
    /// kubeadm's choice of control-plane images, depend on them).
    pub kubernetes_version_ldflags: bool,
}

/// What is built, module by module.
pub const GO_BUILDS: &[GoBuild] = &[
    GoBuild {
        module: "kubernetes",
        commands: &[
            ("k8s.io/kubernetes/cmd/kubeadm", "kubeadm"),
            ("k8s.io/kubernetes/cmd/kubelet", "kubelet"),
            ("k8s.io/kubernetes/cmd/kubectl", "kubectl"),
            ("k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver"),
            (
                "k8s.io/kubernetes/cmd/kube-controller-manager",
                "kube-controller-manager",
            ),
            ("k8s.io/kubernetes/cmd/kube-scheduler", "kube-scheduler"),
            ("k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy"),
            ("./cmd/kind-e2e-pause", "kind-e2e-pause"),
            ("./cmd/kind-e2e-cni", "kind-e2e-cni"),
        ],
        kubernetes_version_ldflags: true,
    },
    GoBuild {
        module: "etcd",
        commands: &[("go.etcd.io/etcd/server/v3", "etcd")],
        kubernetes_version_ldflags: false,
    },
    GoBuild {
        module: "coredns",
        commands: &[("github.com/coredns/coredns", "coredns")],
        kubernetes_version_ldflags: false,
    },
    GoBuild {
        module: "kind",
        commands: &[("sigs.k8s.io/kind", "kind")],
        kubernetes_version_ldflags: false,
    },
    GoBuild {
        module: "cri-tools",
        commands: &[("sigs.k8s.io/cri-tools/cmd/crictl", "crictl")],
        kubernetes_version_ldflags: false,
    },
];

/// The versions pinned in the modules' `go.mod` files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    /// e.g. `v1.34.4`.
    pub kubernetes: String,
    pub etcd: String,
    pub coredns: String,
    pub kind: String,
}

/// A complete toolchain in the cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Toolchain {
    /// `<cache>/toolchain/<digest16>`.
    pub dir: PathBuf,
    /// The content digest of its inputs (hex).
    pub digest: String,
    pub versions: Versions,
    /// `go version` of the compiler used.
    pub go_version: String,
    /// Seconds the build took (0 when it was already there).
    pub build_seconds: f64,
    /// Whether it was found in the cache rather than built now.
    #[serde(skip)]
    pub cached: bool,
}

impl Toolchain {
    /// The path of one built binary (`kubeadm`, `kind`, …).
    pub fn bin(&self, name: &str) -> PathBuf {
        self.dir.join("bin").join(name)
    }
}

/// Errors of the toolchain build; each says what to do.
#[derive(Debug, thiserror::Error)]
pub enum ToolchainError {
    #[error(
        "the `go` command was not found on PATH: install Go 1.25 or newer (the toolchain's \
         modules are built with it)"
    )]
    NoGo,
    #[error("toolchain source {path}: {problem}")]
    Source { path: PathBuf, problem: String },
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`go build` of {module} failed ({status}); the full log is {log}:\n{tail}\nIf a module \
         could not be downloaded, check that the Go module proxy answers (GOPROXY)"
    )]
    Build {
        module: String,
        status: String,
        log: PathBuf,
        tail: String,
    },
    #[error(
        "no toolchain is built for these sources (digest {digest}): run `cargo xtask toolchain \
         build` (about 15 minutes the first time)"
    )]
    NotBuilt { digest: String },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ToolchainError {
    let what = what.into();
    move |source| ToolchainError::Io { what, source }
}

/// The repository's `toolchain/` folder.
pub fn default_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../toolchain")
}

/// `$XDG_CACHE_HOME/kind-e2e` or `~/.cache/kind-e2e`: outside `target/`, so
/// `cargo clean` keeps the toolchain and node images' inputs.
pub fn default_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("KIND_E2E_CACHE") {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("kind-e2e")
}

/// The version a `go.mod` requires of `module` (from a `require` line).
pub fn required_version(go_mod: &str, module: &str) -> Option<String> {
    go_mod.lines().find_map(|line| {
        let line = line.trim().trim_start_matches("require").trim();
        let mut parts = line.split_whitespace();
        (parts.next()? == module).then(|| parts.next().map(str::to_string))?
    })
}

fn read(path: &Path) -> Result<String, ToolchainError> {
    std::fs::read_to_string(path).map_err(|e| ToolchainError::Source {
        path: path.to_path_buf(),
        problem: e.to_string(),
    })
}

/// The pinned versions, read from the modules' `go.mod`.
pub fn versions(source: &Path) -> Result<Versions, ToolchainError> {
    let pin = |module_dir: &str, module: &str| {
        let path = source.join(module_dir).join("go.mod");
        let text = read(&path)?;
        required_version(&text, module).ok_or_else(|| ToolchainError::Source {
            path,
            problem: format!("it does not require {module}"),
        })
    };
    Ok(Versions {
        kubernetes: pin("kubernetes", "k8s.io/kubernetes")?,
        etcd: pin("etcd", "go.etcd.io/etcd/server/v3")?,
        coredns: pin("coredns", "github.com/coredns/coredns")?,
        kind: pin("kind", "sigs.k8s.io/kind")?,
    })
}

/// `go version`, or [`ToolchainError::NoGo`].
pub async fn go_version() -> Result<String, ToolchainError> {
    let go = which::which("go").map_err(|_| ToolchainError::NoGo)?;
    let out = tokio::process::Command::new(go)
        .arg("version")
        .env("GOTOOLCHAIN", "local")
        .output()
        .await
        .map_err(io("running `go version`"))?;
    if !out.status.success() {
        return Err(ToolchainError::Source {
            path: PathBuf::from("go"),
            problem: format!(
                "`go version` failed ({}): {}",
                out.status,
                crate::engine::last_lines(&String::from_utf8_lossy(&out.stderr), 5)
            ),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The digest of everything a build reads: each module's files (sorted by
/// path), the Go version and the recipe.
pub fn input_digest(source: &Path, go_version: &str) -> Result<String, ToolchainError> {
    let mut hasher = Sha256::new();
    hasher.update(RECIPE.as_bytes());
    hasher.update([0]);
    // This file is the recipe: what is built, with which flags and env.
    hasher.update(include_str!("toolchain.rs").as_bytes());
    hasher.update([0]);
    hasher.update(go_version.as_bytes());
    hasher.update([0]);
    for build in GO_BUILDS {
        let dir = source.join(build.module);
        let mut files: Vec<PathBuf> = walkdir::WalkDir::new(&dir)
            .into_iter()
            .filter_map(Result::ok)
            .filter(|e| e.file_type().is_file())
            .map(|e| e.into_path())
            .collect();
        if files.is_empty() {
            return Err(ToolchainError::Source {
                path: dir,
                problem: "the module folder is missing or empty".into(),
            });
        }
        files.sort();
        for file in files {
            let rel = file.strip_prefix(source).unwrap_or(&file);
            hasher.update(rel.to_string_lossy().as_bytes());
            hasher.update([0]);
            hasher.update(std::fs::read(&file).map_err(io(format!("reading {}", file.display())))?);
            hasher.update([0]);
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The `-ldflags` of a build: stripped, plus Kubernetes' version variables
/// where asked (the build date is the release's, so builds are reproducible).
pub fn ldflags(build: &GoBuild, versions: &Versions, release_date: &str) -> String {
    let mut flags = vec!["-s".to_string(), "-w".to_string()];
    if build.kubernetes_version_ldflags {
        let version = &versions.kubernetes;
        let mut parts = version.trim_start_matches('v').split('.');
        let major = parts.next().unwrap_or("1");
        let minor = parts.next().unwrap_or("0");
        for package in [
            "k8s.io/component-base/version",
            "k8s.io/client-go/pkg/version",
        ] {
            for (var, value) in [
                ("gitVersion", version.as_str()),
                ("gitMajor", major),
                ("gitMinor", minor),
                ("gitTreeState", "clean"),
                ("buildDate", release_date),
            ] {
                flags.push(format!("-X {package}.{var}={value}"));
            }
        }
    }
    flags.join(" ")
}

/// The toolchain for `source` if it is complete in `cache`.
pub async fn find(source: &Path, cache: &Path) -> Result<Toolchain, ToolchainError> {
    let go = go_version().await?;
    let digest = input_digest(source, &go)?;
    cached(cache, &digest).ok_or(ToolchainError::NotBuilt { digest })
}

fn cached(cache: &Path, digest: &str) -> Option<Toolchain> {
    let dir = cache.join("toolchain").join(&digest[..16]);
    let text = std::fs::read_to_string(dir.join("toolchain.json")).ok()?;
    let mut toolchain: Toolchain = serde_json::from_str(&text).ok()?;
    let complete = GO_BUILDS
        .iter()
        .flat_map(|b| b.commands.iter())
        .all(|(_, bin)| dir.join("bin").join(bin).is_file());
    (toolchain.digest == digest && complete).then(|| {
        toolchain.dir = dir;
        toolchain.cached = true;
        toolchain
    })
}

/// Builds the toolchain (or finds it in the cache). `progress` gets one line
/// per step.
#[allow(clippy::expect_used, reason = "plain data: serialising cannot fail")]
pub async fn build(
    source: &Path,
    cache: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Toolchain, ToolchainError> {
    let go = go_version().await?;
    let digest = input_digest(source, &go)?;
    if let Some(found) = cached(cache, &digest) {
        progress(&format!(
            "toolchain {} is built ({})",
            &digest[..16],
            found.dir.display()
        ));
        return Ok(found);
    }
    let versions = versions(source)?;
    let started = Instant::now();
    let root = cache.join("toolchain");
    std::fs::create_dir_all(&root).map_err(io(format!("creating {}", root.display())))?;
    let work = tempfile::Builder::new()
        .prefix(&format!(".{}-", &digest[..16]))
        .tempdir_in(&root)
        .map_err(io("creating the toolchain's work folder"))?;
    let bin = work.path().join("bin");
    std::fs::create_dir_all(&bin).map_err(io("creating bin/"))?;
    let release_date = release_date(&source.join("kubernetes"), &versions.kubernetes).await;
    for build in GO_BUILDS {
        let step = Instant::now();
        let names: Vec<&str> = build.commands.iter().map(|(_, b)| *b).collect();
        progress(&format!(
            "go build ({}): {}",
            build.module,
            names.join(", ")
        ));
        let log = root.join(format!("{}-{}.log", &digest[..16], build.module));
        go_build(
            source,
            build,
            &versions,
            &release_date,
            &bin,
            &log,
            progress,
        )
        .await?;
        progress(&format!(
            "  {} built in {:.0}s",
            build.module,
            step.elapsed().as_secs_f64()
        ));
    }
    let toolchain = Toolchain {
        dir: root.join(&digest[..16]),
        digest: digest.clone(),
        versions,
        go_version: go,
        build_seconds: started.elapsed().as_secs_f64(),
        cached: false,
    };
    let manifest = serde_json::to_string_pretty(&toolchain).expect("serialisable");
    std::fs::write(work.path().join("toolchain.json"), manifest)
        .map_err(io("writing toolchain.json"))?;
    let work = work.keep();
    if toolchain.dir.exists() && cached(cache, &digest).is_none() {
        // Incomplete (a binary removed, a broken manifest): replace it.
        let _ = std::fs::remove_dir_all(&toolchain.dir);
    }
    if let Err(e) = std::fs::rename(&work, &toolchain.dir) {
        // A concurrent build finished first: use its result.
        let _ = std::fs::remove_dir_all(&work);
        if cached(cache, &digest).is_none() {
            return Err(io(format!(
                "moving the toolchain to {}",
                toolchain.dir.display()
            ))(e));
        }
    }
    progress(&format!(
        "toolchain built in {:.0}s: {}",
        toolchain.build_seconds,
        toolchain.dir.display()
    ));
    Ok(toolchain)
}

/// The release date of the pinned Kubernetes module (`go list -m`), for the
/// `buildDate` version variable; a fixed date if the go command cannot say.
async fn release_date(module_dir: &Path, version: &str) -> String {
    let out = tokio::process::Command::new("go")
        .args(["list", "-m", "-f", "{{.Time}}", "k8s.io/kubernetes"])
        .current_dir(module_dir)
        .env("GOTOOLCHAIN", "local")
        .env("GOFLAGS", "-mod=readonly")
        .output()
        .await;
    let parsed = out.ok().and_then(|o| {
        let text = String::from_utf8_lossy(&o.stdout).trim().to_string();
        text.parse::<jiff::Timestamp>().ok()
    });
    match parsed {
        Some(t) => t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
        None => {
            tracing::warn!("could not read the release date of k8s.io/kubernetes {version}");
            "1970-01-01T00:00:00Z".into()
        }
    }
}

async fn go_build(
    source: &Path,
    build: &GoBuild,
    versions: &Versions,
    release_date: &str,
    bin: &Path,
    log: &Path,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(), ToolchainError> {
    let log_file = std::fs::File::create(log).map_err(io(format!("creating {}", log.display())))?;
    // One command: name the file. Several: `go build -o dir/` names each
    // after its package's last path element (checked below).
    let output = match build.commands {
        [(_, name)] => bin.join(name).display().to_string(),
        _ => format!("{}/", bin.display()),
    };
    let mut command = tokio::process::Command::new("go");
    command
        .arg("build")
        // One line per package compiled: the log shows how far it got.
        .arg("-v")
        .arg("-trimpath")
        .arg("-ldflags")
        .arg(ldflags(build, versions, release_date))
        .arg("-o")
        .arg(output)
        .args(build.commands.iter().map(|(pkg, _)| *pkg))
        .current_dir(source.join(build.module))
        .env("CGO_ENABLED", "0")
        .env("GOTOOLCHAIN", "local")
        // Only these modules: no go.work of a parent folder.
        .env("GOWORK", "off")
        .env("GOFLAGS", "-mod=readonly -buildvcs=false")
        .stdin(std::process::Stdio::null())
        .stdout(log_file.try_clone().map_err(io("opening the build log"))?)
        .stderr(log_file)
        .kill_on_drop(true);
    let mut child = command
        .spawn()
        .map_err(io(format!("running go build for {}", build.module)))?;
    // A cold Kubernetes build is silent for minutes: say how far it is.
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs(30));
    ticker.tick().await;
    let status = loop {
        tokio::select! {
            status = child.wait() => {
                break status.map_err(io(format!("waiting for go build of {}", build.module)))?;
            }
            _ = ticker.tick() => {
                let packages = std::fs::read_to_string(log)
                    .map(|t| t.lines().count())
                    .unwrap_or(0);
                progress(&format!(
                    "  {}: {packages} packages compiled or downloaded, {:.0}s",
                    build.module,
                    started.elapsed().as_secs_f64()
                ));
            }
        }
    };
    if !status.success() {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        return Err(ToolchainError::Build {
            module: build.module.to_string(),
            status: status.to_string(),
            log: log.to_path_buf(),
            tail: crate::engine::last_lines(&text, 20),
        });
    }
    for (_, name) in build.commands {
        let wanted = bin.join(name);
        if !wanted.is_file() {
            return Err(ToolchainError::Build {
                module: build.module.to_string(),
                status: "finished".into(),
                log: log.to_path_buf(),
                tail: format!("go build did not produce {name}"),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_read_from_go_mod() {
        let text = "module x\n\nrequire k8s.io/kubernetes v1.34.4\n\nrequire (\n\tgithub.com/a/b v1.2.3 // indirect\n)\n";
        assert_eq!(
            required_version(text, "k8s.io/kubernetes").as_deref(),
            Some("v1.34.4")
        );
        assert_eq!(
            required_version(text, "github.com/a/b").as_deref(),
            Some("v1.2.3")
        );
        assert_eq!(required_version(text, "github.com/a"), None);
    }

    #[test]
    fn the_repository_pins_kubernetes_1_34() {
        let v = versions(&default_source()).unwrap();
        assert!(v.kubernetes.starts_with("v1.34."), "{v:?}");
        assert!(v.kind.starts_with("v0."), "{v:?}");
    }

    #[test]
    fn version_ldflags_only_where_asked() {
        let v = Versions {
            kubernetes: "v1.34.4".into(),
            etcd: "v3.6.5".into(),
            coredns: "v1.14.3".into(),
            kind: "v0.30.0".into(),
        };
        let k8s = ldflags(&GO_BUILDS[0], &v, "2026-02-10T19:32:20Z");
        assert!(k8s.contains("-X k8s.io/component-base/version.gitVersion=v1.34.4"));
        assert!(k8s.contains("-X k8s.io/client-go/pkg/version.gitMinor=34"));
        assert!(k8s.contains("buildDate=2026-02-10T19:32:20Z"));
        assert_eq!(ldflags(&GO_BUILDS[1], &v, "x"), "-s -w");
    }

    #[test]
    fn the_digest_follows_every_source_file() {
        let dir = tempfile::tempdir().unwrap();
        for build in GO_BUILDS {
            std::fs::create_dir_all(dir.path().join(build.module)).unwrap();
            std::fs::write(dir.path().join(build.module).join("go.mod"), "module x\n").unwrap();
        }
        let a = input_digest(dir.path(), "go1.26").unwrap();
        assert_eq!(a, input_digest(dir.path(), "go1.26").unwrap());
        assert_ne!(a, input_digest(dir.path(), "go1.27").unwrap());
        std::fs::write(dir.path().join("kind/tools.go"), "package tools\n").unwrap();
        assert_ne!(a, input_digest(dir.path(), "go1.26").unwrap());
        std::fs::remove_dir_all(dir.path().join("etcd")).unwrap();
        assert!(input_digest(dir.path(), "go1.26").is_err());
    }
}
