//! The kind node image, built offline from the pinned toolchain and Debian's
//! packages, for machines (and air-gapped CI) where `kindest/node` cannot be
//! pulled.
//!
//! What kind expects of a node image (learnt from kind's own builder, files
//! written here): systemd as PID 1 behind an entrypoint that prepares mounts
//! and cgroups (`toolchain/node-image/files/usr/local/bin/entrypoint`);
//! containerd, runc and CNI plugins; kubeadm, kubelet and kubectl in
//! `/usr/bin`; `/kind/version`; `/kind/manifests/default-cni.yaml`; and every
//! image kubeadm will run already in containerd's `k8s.io` namespace, since
//! no registry answers. Those images (kube-apiserver, kube-controller-manager,
//! kube-scheduler, kube-proxy, etcd, CoreDNS, pause, and the pod-network
//! agent) are built through the engine from the toolchain's binaries, written
//! into the rootfs's containerd store by the host's own containerd, and the
//! rootfs is imported into the engine.
//!
//! The reference is content addressed,
//! `localhost/kind-e2e/node:<kubernetes>-<digest12>`, over the toolchain, the
//! node files, the package list and the recipe: an unchanged image is never
//! rebuilt. Labels on the image tell the kind provider what it holds
//! ([`LABEL_COREDNS_TAG`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use crate::engine::{Engine, last_lines};
use crate::image::debian::{self, DebianError};
use crate::image::{E2eImageConfig, ImageError, build_image_for_kind};
use crate::toolchain::Toolchain;

/// Bump when the way the image is assembled changes.
const RECIPE: &str = "node-image-recipe-1";

/// The Debian packages of a node, beside minbase.
pub const NODE_PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "iproute2",
    "iptables",
    "nftables",
    "kmod",
    "procps",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "conntrack",
    "ethtool",
    "socat",
    "util-linux",
    "mount",
    "ca-certificates",
    "libseccomp2",
];

/// Units that have nothing to do in a node container.
const MASKED_UNITS: &[&str] = &[
    "systemd-udevd.service",
    "systemd-udevd-control.socket",
    "systemd-udevd-kernel.socket",
    "systemd-binfmt.service",
    "systemd-modules-load.service",
    "systemd-firstboot.service",
    "getty@tty1.service",
    "console-getty.service",
];

/// The repository the node image is tagged under.
pub const REPOSITORY: &str = "localhost/kind-e2e/node";
/// The CoreDNS tag the image holds (kubeadm's default differs; the kind
/// provider patches ClusterConfiguration `dns.imageTag` to this).
pub const LABEL_COREDNS_TAG: &str = "io.kind-e2e.node.coredns-tag";
pub const LABEL_KUBERNETES: &str = "io.kind-e2e.node.kubernetes";
/// The image that runs the pod network (our agent).
const CNI_IMAGE: &str = "localhost/kind-e2e/cni";

/// Where the node image's inputs are.
#[derive(Debug, Clone)]
pub struct NodeImageOptions {
    /// The repository's `toolchain/` folder (its `node-image/files` tree is
    /// copied into the rootfs).
    pub source: PathBuf,
    /// The cache (rootfs, work folders).
    pub cache: PathBuf,
    /// Build logs of the images inside.
    pub log_dir: PathBuf,
}

/// A node image in the engine.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NodeImage {
    pub reference: String,
    pub kubernetes: String,
    /// The images preloaded into its containerd.
    pub images: Vec<String>,
    pub cached: bool,
    pub seconds: f64,
}

/// Errors of the node image build; each says what failed and what to do.
#[derive(Debug, thiserror::Error)]
pub enum NodeImageError {
    #[error(transparent)]
    Debian(#[from] DebianError),
    #[error("building the node image's {image} image failed")]
    Image {
        image: String,
        #[source]
        source: ImageError,
    },
    #[error("{what} failed")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "`{program}` was not found on the host: install containerd (`apt-get install \
         containerd`); the host's containerd writes the images into the node's store"
    )]
    MissingProgram { program: String },
    #[error("{step} failed: {problem}")]
    Step { step: String, problem: String },
    #[error(
        "kubeadm {kubernetes} asks for {wanted}, but the toolchain pins etcd {pinned}: pin that \
         release in toolchain/etcd/go.mod"
    )]
    EtcdMismatch {
        kubernetes: String,
        wanted: String,
        pinned: String,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> NodeImageError {
    let what = what.into();
    move |source| NodeImageError::Io { what, source }
}

fn step(step: impl Into<String>, problem: impl Into<String>) -> NodeImageError {
    NodeImageError::Step {
        step: step.into(),
        problem: problem.into(),
    }
}

fn files_dir(source: &Path) -> PathBuf {
    source.join("node-image").join("files")
}

/// The content digest of the node image's inputs.
pub fn input_digest(toolchain: &Toolchain, source: &Path) -> Result<String, NodeImageError> {
    let mut hasher = Sha256::new();
    hasher.update(RECIPE.as_bytes());
    hasher.update([0]);
    hasher.update(toolchain.digest.as_bytes());
    hasher.update([0]);
    hasher.update(debian::rootfs_digest(NODE_PACKAGES).as_bytes());
    hasher.update([0]);
    hasher.update(debian::rootfs_digest(&[]).as_bytes());
    hasher.update([0]);
    hasher.update(MASKED_UNITS.join(",").as_bytes());
    // This file is the recipe (preload Dockerfiles, image config, containerd
    // import flags, which units are enabled): a change to it is a new image.
    hasher.update(include_str!("node_image.rs").as_bytes());
    let files = files_dir(source);
    let mut entries: Vec<walkdir::DirEntry> = walkdir::WalkDir::new(&files)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .collect();
    if entries.is_empty() {
        return Err(step(
            "reading the node image's files",
            format!("{} is missing or empty", files.display()),
        ));
    }
    entries.sort_by(|a, b| a.path().cmp(b.path()));
    for entry in entries {
        use std::os::unix::fs::PermissionsExt;
        let path = entry.path();
        let meta = entry
            .metadata()
            .map_err(|e| step("reading the node image's files", e.to_string()))?;
        hasher.update(
            path.strip_prefix(&files)
                .unwrap_or(path)
                .to_string_lossy()
                .as_bytes(),
        );
        hasher.update(format!("\0{:o}\0", meta.permissions().mode() & 0o777).as_bytes());
        hasher.update(std::fs::read(path).map_err(io(format!("reading {}", path.display())))?);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The reference the node image for these inputs has.
pub fn reference(toolchain: &Toolchain, source: &Path) -> Result<String, NodeImageError> {
    let digest = input_digest(toolchain, source)?;
    Ok(format!(
        "{REPOSITORY}:{}-{}",
        toolchain.versions.kubernetes,
        &digest[..12]
    ))
}

/// The node image for these inputs if the engine holds it.
pub async fn find(
    engine: &Engine,
    toolchain: &Toolchain,
    source: &Path,
) -> Result<Option<String>, NodeImageError> {
    let reference = reference(toolchain, source)?;
    Ok(engine
        .docker()
        .inspect_image(&reference)
        .await
        .ok()
        .map(|_| reference))
}

/// Kind without a registry, ready to use: the pinned toolchain (its `kind`)
/// and this checkout's node image, with the engine that holds the image
/// (kind's nodes run where their image is).
pub struct OfflineKind {
    pub toolchain: Toolchain,
    pub node_image: String,
    pub engine: Engine,
}

impl OfflineKind {
    /// Cluster options using the toolchain's kind and the node image.
    pub fn cluster_options(&self, base: super::ClusterOptions) -> super::ClusterOptions {
        super::ClusterOptions {
            kind_program: Some(self.toolchain.bin("kind")),
            node_image: Some(self.node_image.clone()),
            ..base
        }
    }
}

/// The offline kind setup if it is built: the toolchain for `source` in
/// `cache` and an engine among `endpoints` holding its node image. `Err`
/// says what is missing and the command that makes it.
pub async fn find_offline(
    source: &Path,
    cache: &Path,
    endpoints: &[String],
) -> Result<OfflineKind, String> {
    let toolchain = crate::toolchain::find(source, cache)
        .await
        .map_err(|e| e.to_string())?;
    let reference = reference(&toolchain, source).map_err(|e| e.to_string())?;
    // Podman first: where both hold the image, rootful Podman is the engine
    // that runs kind's privileged nodes on hosts Docker cannot.
    let mut ordered: Vec<&String> = endpoints.iter().filter(|e| e.contains("podman")).collect();
    ordered.extend(endpoints.iter().filter(|e| !e.contains("podman")));
    let mut unreachable = Vec::new();
    for endpoint in ordered {
        match Engine::connect_to(endpoint).await {
            Ok(engine) if engine.docker().inspect_image(&reference).await.is_ok() => {
                return Ok(OfflineKind {
                    toolchain,
                    node_image: reference,
                    engine,
                });
            }
            Ok(_) => {}
            Err(why) => unreachable.push(format!("{endpoint}: {why}")),
        }
    }
    let mut message =
        format!("no engine holds the node image {reference}: run `cargo xtask node-image build`");
    if !unreachable.is_empty() {
        message.push_str(&format!(
            " (or start the engine that holds it; not answering: {})",
            unreachable.join("; ")
        ));
    }
    Err(message)
}

/// One image the node preloads: its name in the node, and how it is built.
struct Preload {
    /// The reference kubeadm (or our CNI manifest) asks for.
    wanted: String,
    /// The toolchain binary it runs.
    binary: &'static str,
    /// ENTRYPOINT, when the Pod spec gives only args (CoreDNS, pause, CNI).
    entrypoint: bool,
    /// FROM this (kube-proxy needs iptables); scratch otherwise.
    from_debian: bool,
}

/// What kubeadm will ask for, mapped to what the toolchain built.
fn preloads(
    kubeadm_images: &[String],
    toolchain: &Toolchain,
) -> Result<Vec<Preload>, NodeImageError> {
    let mut out = Vec::new();
    for image in kubeadm_images {
        let (name, tag) = image.rsplit_once(':').unwrap_or((image, ""));
        let base = name.rsplit('/').next().unwrap_or(name);
        let preload = match base {
            "kube-apiserver" | "kube-controller-manager" | "kube-scheduler" => Preload {
                wanted: image.clone(),
                binary: match base {
                    "kube-apiserver" => "kube-apiserver",
                    "kube-controller-manager" => "kube-controller-manager",
                    _ => "kube-scheduler",
                },
                entrypoint: false,
                from_debian: false,
            },
            "kube-proxy" => Preload {
                wanted: image.clone(),
                binary: "kube-proxy",
                entrypoint: false,
                from_debian: true,
            },
            "etcd" => {
                let pinned = toolchain.versions.etcd.trim_start_matches('v');
                if tag.split('-').next() != Some(pinned) {
                    return Err(NodeImageError::EtcdMismatch {
                        kubernetes: toolchain.versions.kubernetes.clone(),
                        wanted: image.clone(),
                        pinned: toolchain.versions.etcd.clone(),
                    });
                }
                Preload {
                    wanted: image.clone(),
                    binary: "etcd",
                    entrypoint: false,
                    from_debian: false,
                }
            }
            "coredns" => Preload {
                wanted: format!("{name}:{}", toolchain.versions.coredns),
                binary: "coredns",
                entrypoint: true,
                from_debian: false,
            },
            "pause" => Preload {
                wanted: image.clone(),
                binary: "kind-e2e-pause",
                entrypoint: true,
                from_debian: false,
            },
            other => {
                return Err(step(
                    "mapping kubeadm's images",
                    format!(
                        "kubeadm asks for {image} ({other}), which the toolchain does not build"
                    ),
                ));
            }
        };
        out.push(preload);
    }
    out.push(Preload {
        wanted: format!("{CNI_IMAGE}:{}", toolchain.versions.kubernetes),
        binary: "kind-e2e-cni",
        entrypoint: true,
        from_debian: false,
    });
    Ok(out)
}

/// Builds the node image into `engine`, or finds it there.
pub async fn build(
    engine: &Engine,
    toolchain: &Toolchain,
    options: &NodeImageOptions,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<NodeImage, NodeImageError> {
    let started = Instant::now();
    let digest = input_digest(toolchain, &options.source)?;
    let kubernetes = toolchain.versions.kubernetes.clone();
    let tag = format!("{kubernetes}-{}", &digest[..12]);
    let reference = format!("{REPOSITORY}:{tag}");
    let kubeadm_images = kubeadm_images(toolchain).await?;
    let preloads = preloads(&kubeadm_images, toolchain)?;
    let images: Vec<String> = preloads.iter().map(|p| p.wanted.clone()).collect();
    if engine.docker().inspect_image(&reference).await.is_ok() {
        progress(&format!("node image {reference} is built"));
        return Ok(NodeImage {
            reference,
            kubernetes,
            images,
            cached: true,
            seconds: started.elapsed().as_secs_f64(),
        });
    }
    for program in ["containerd", "ctr"] {
        which::which(program).map_err(|_| NodeImageError::MissingProgram {
            program: program.into(),
        })?;
    }

    let rootfs = debian::rootfs(&options.cache, NODE_PACKAGES, progress).await?;
    let base = debian::base_image(engine, &options.cache, progress).await?;

    let work_root = options.cache.join("work");
    std::fs::create_dir_all(&work_root).map_err(io("creating the work folder"))?;
    remove_stale_work(&work_root);
    let work = tempfile::Builder::new()
        .prefix("node-image-")
        .tempdir_in(&work_root)
        .map_err(io("creating the work folder"))?;
    let root = work.path().join("rootfs");

    progress("assembling the node's root filesystem");
    copy_tree(&rootfs, &root).await?;
    let sandbox = kubeadm_images
        .iter()
        .find(|i| i.contains("/pause:"))
        .cloned()
        .ok_or_else(|| step("reading kubeadm's images", "no pause image listed"))?;
    let cni_image = format!("{CNI_IMAGE}:{kubernetes}");
    assemble(
        &root,
        &files_dir(&options.source),
        toolchain,
        &[("@SANDBOX_IMAGE@", &sandbox), ("@CNI_IMAGE@", &cni_image)],
    )?;

    progress(&format!("building {} images for the node", preloads.len()));
    let mut built = Vec::new();
    for preload in &preloads {
        let reference =
            build_preload(engine, toolchain, preload, &base, work.path(), options).await?;
        built.push((reference, preload.wanted.clone()));
    }

    progress("writing the images into the node's containerd");
    preload_into(engine, &root, work.path(), &built).await?;

    progress(&format!("importing {reference}"));
    let changes = vec![
        r#"ENTRYPOINT ["/usr/local/bin/entrypoint", "/sbin/init"]"#.to_string(),
        "STOPSIGNAL SIGRTMIN+3".into(),
        "ENV container=docker".into(),
        format!("LABEL {LABEL_KUBERNETES}={kubernetes}"),
        format!("LABEL {LABEL_COREDNS_TAG}={}", toolchain.versions.coredns),
    ];
    debian::import_rootfs(engine, &root, REPOSITORY, &tag, changes).await?;
    drop(work);
    let seconds = started.elapsed().as_secs_f64();
    progress(&format!("node image {reference} built in {seconds:.0}s"));
    Ok(NodeImage {
        reference,
        kubernetes,
        images,
        cached: false,
        seconds,
    })
}

/// Removes work folders of builds that were killed (over a day old, so a
/// concurrent build's folder is left alone).
fn remove_stale_work(work_root: &Path) {
    let Ok(entries) = std::fs::read_dir(work_root) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > std::time::Duration::from_secs(24 * 3600));
        if old {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// `kubeadm config images list` of the pinned release.
async fn kubeadm_images(toolchain: &Toolchain) -> Result<Vec<String>, NodeImageError> {
    let out = tokio::process::Command::new(toolchain.bin("kubeadm"))
        .args([
            "config",
            "images",
            "list",
            "--kubernetes-version",
            &toolchain.versions.kubernetes,
        ])
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(io("running kubeadm config images list"))?;
    if !out.status.success() {
        return Err(step(
            "kubeadm config images list",
            last_lines(&String::from_utf8_lossy(&out.stderr), 10),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect())
}

/// `cp -a` (keeps owners, modes, links, device nodes; reflinks where the
/// filesystem can).
async fn copy_tree(from: &Path, to: &Path) -> Result<(), NodeImageError> {
    let out = tokio::process::Command::new("cp")
        .arg("-a")
        .arg("--reflink=auto")
        .arg(from)
        .arg(to)
        .output()
        .await
        .map_err(io("running cp"))?;
    if !out.status.success() {
        return Err(step(
            format!("copying {}", from.display()),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ));
    }
    Ok(())
}

/// Puts our files, the binaries and the version into the rootfs, masks units
/// a container has no use for and enables containerd and kubelet.
#[allow(clippy::expect_used, reason = "walkdir yields paths inside its root")]
fn assemble(
    root: &Path,
    files: &Path,
    toolchain: &Toolchain,
    substitutions: &[(&str, &str)],
) -> Result<(), NodeImageError> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let systemd = root.join("etc/systemd/system");
    // Debian's packages enable timers, gettys and the like: a node runs only
    // what kind needs.
    for wants in [
        "getty.target.wants",
        "timers.target.wants",
        "sysinit.target.wants",
        "multi-user.target.wants",
    ] {
        let dir = systemd.join(wants);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io(format!("clearing {wants}")))?;
        }
    }
    for entry in walkdir::WalkDir::new(files).min_depth(1) {
        let entry = entry.map_err(|e| step("reading the node files", e.to_string()))?;
        let rel = entry.path().strip_prefix(files).expect("inside");
        let dest = root.join(rel);
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&dest).map_err(io(format!("creating {}", rel.display())))?;
            continue;
        }
        let mut text = std::fs::read(entry.path())
            .map_err(io(format!("reading {}", entry.path().display())))?;
        if let Ok(s) = std::str::from_utf8(&text) {
            let mut s = s.to_string();
            for (from, to) in substitutions {
                s = s.replace(from, to);
            }
            text = s.into_bytes();
        }
        let _ = std::fs::remove_file(&dest);
        std::fs::write(&dest, text).map_err(io(format!("writing {}", rel.display())))?;
        let mode = entry
            .metadata()
            .map_err(|e| step("reading the node files", e.to_string()))?
            .permissions()
            .mode();
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(mode & 0o777))
            .map_err(io(format!("setting the mode of {}", rel.display())))?;
    }
    for unit in MASKED_UNITS {
        let path = systemd.join(unit);
        let _ = std::fs::remove_file(&path);
        symlink("/dev/null", &path).map_err(io(format!("masking {unit}")))?;
    }
    let wants = systemd.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).map_err(io("creating multi-user.target.wants"))?;
    for unit in ["containerd.service", "kubelet.service"] {
        symlink(format!("/etc/systemd/system/{unit}"), wants.join(unit))
            .map_err(io(format!("enabling {unit}")))?;
    }
    for dir in [
        "etc/kubernetes/manifests",
        "etc/cni/net.d",
        "kind/manifests",
    ] {
        std::fs::create_dir_all(root.join(dir)).map_err(io(format!("creating {dir}")))?;
    }
    for bin in ["kubeadm", "kubelet", "kubectl", "crictl"] {
        let dest = root.join("usr/bin").join(bin);
        std::fs::copy(toolchain.bin(bin), &dest).map_err(io(format!("copying {bin}")))?;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))
            .map_err(io(format!("setting the mode of {bin}")))?;
    }
    std::fs::write(
        root.join("kind/version"),
        format!("{}\n", toolchain.versions.kubernetes),
    )
    .map_err(io("writing /kind/version"))?;
    Ok(())
}

/// Builds one preloaded image through the engine (content addressed, so an
/// unchanged binary is a cache hit) and returns its engine reference.
async fn build_preload(
    engine: &Engine,
    toolchain: &Toolchain,
    preload: &Preload,
    base: &str,
    work: &Path,
    options: &NodeImageOptions,
) -> Result<String, NodeImageError> {
    let name = preload
        .wanted
        .rsplit_once(':')
        .map_or(preload.wanted.as_str(), |(n, _)| n)
        .rsplit('/')
        .next()
        .unwrap_or("image")
        .to_string();
    let context = work.join("contexts").join(&name);
    std::fs::create_dir_all(&context).map_err(io(format!("creating {}", context.display())))?;
    let binary = context.join(preload.binary);
    // A hard link when the cache and work folders share a filesystem.
    if std::fs::hard_link(toolchain.bin(preload.binary), &binary).is_err() {
        std::fs::copy(toolchain.bin(preload.binary), &binary)
            .map_err(io(format!("copying {}", preload.binary)))?;
    }
    let mut dockerfile = String::new();
    if preload.from_debian {
        // kube-proxy programs the node's iptables/nftables through their CLIs.
        dockerfile.push_str(
            "ARG BASE\nFROM ${BASE}\nRUN apt-get update \\\n && apt-get install -y \
             --no-install-recommends iptables nftables conntrack ipset \\\n && rm -rf \
             /var/lib/apt/lists/* /var/cache/apt/archives/*.deb\n",
        );
    } else {
        dockerfile.push_str("FROM scratch\n");
    }
    dockerfile.push_str(&format!(
        "COPY {bin} /usr/local/bin/{bin}\nENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin\n",
        bin = preload.binary
    ));
    if preload.entrypoint {
        dockerfile.push_str(&format!(
            "ENTRYPOINT [\"/usr/local/bin/{}\"]\n",
            preload.binary
        ));
    }
    std::fs::write(context.join("Dockerfile"), dockerfile).map_err(io("writing a Dockerfile"))?;
    let mut config = E2eImageConfig::new("node-image", "Dockerfile")
        .image(format!("kind-e2e/{name}"))
        .context(&context)
        .log_dir(&options.log_dir);
    if preload.from_debian {
        config = config.build_arg("BASE", base);
    }
    let built = build_image_for_kind(engine, &config)
        .await
        .map_err(|source| NodeImageError::Image {
            image: preload.wanted.clone(),
            source,
        })?;
    Ok(built.reference)
}

/// Starts the host's containerd on the rootfs's `/var/lib/containerd`,
/// streams each image from the engine into it (not unpacked: the node's CRI
/// unpacks on first use), names it as kubeadm expects and pins it.
#[allow(clippy::expect_used, reason = "stdin is piped just above")]
async fn preload_into(
    engine: &Engine,
    root: &Path,
    work: &Path,
    images: &[(String, String)],
) -> Result<(), NodeImageError> {
    let state = work.join("containerd");
    std::fs::create_dir_all(&state).map_err(io("creating containerd's state folder"))?;
    let socket = state.join("containerd.sock");
    let config = state.join("config.toml");
    std::fs::write(
        &config,
        format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = \
             [\"io.containerd.grpc.v1.cri\"]\n[grpc]\n  address = {:?}\n",
            root.join("var/lib/containerd"),
            state.join("run"),
            socket,
        ),
    )
    .map_err(io("writing containerd's config"))?;
    let log = std::fs::File::create(state.join("containerd.log"))
        .map_err(io("creating containerd's log"))?;
    let mut containerd = tokio::process::Command::new("containerd")
        .arg("--config")
        .arg(&config)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(io("opening containerd's log"))?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(io("starting containerd"))?;
    let result = async {
        let ctr = |args: &[&str]| {
            let mut c = tokio::process::Command::new("ctr");
            c.arg("--address")
                .arg(&socket)
                .args(["--namespace", "k8s.io"]);
            c.args(args);
            c
        };
        let deadline = Instant::now() + std::time::Duration::from_secs(30);
        loop {
            let ok = ctr(&["version"])
                .output()
                .await
                .is_ok_and(|o| o.status.success());
            if ok {
                break;
            }
            if Instant::now() > deadline {
                let text =
                    std::fs::read_to_string(state.join("containerd.log")).unwrap_or_default();
                return Err(step(
                    "starting the host's containerd",
                    format!("it did not answer within 30s:\n{}", last_lines(&text, 10)),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        for (from, wanted) in images {
            let mut import = ctr(&["images", "import", "--all-platforms", "--no-unpack", "-"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .kill_on_drop(true)
                .spawn()
                .map_err(io("running ctr images import"))?;
            let mut stdin = import.stdin.take().expect("piped");
            let mut export = engine.docker().export_image(from);
            let mut failure = None;
            while let Some(chunk) = export.next().await {
                match chunk {
                    Ok(bytes) => {
                        if let Err(e) = stdin.write_all(&bytes).await {
                            failure = Some(format!("writing to ctr: {e}"));
                            break;
                        }
                    }
                    Err(e) => {
                        failure = Some(format!("exporting {from}: {e}"));
                        break;
                    }
                }
            }
            drop(stdin);
            let out = tokio::time::timeout(
                std::time::Duration::from_secs(300),
                import.wait_with_output(),
            )
            .await
            .map_err(|_| step(format!("preloading {wanted}"), "ctr import took over 300s"))?
            .map_err(io("waiting for ctr images import"))?;
            // ctr's own words first: a broken pipe only says that it died.
            if !out.status.success() {
                return Err(step(
                    format!("preloading {wanted}"),
                    last_lines(&String::from_utf8_lossy(&out.stderr), 10),
                ));
            }
            if let Some(problem) = failure {
                return Err(step(format!("preloading {wanted}"), problem));
            }
            for args in [
                vec!["images", "tag", "--force", from.as_str(), wanted.as_str()],
                vec!["images", "rm", from.as_str()],
                vec![
                    "images",
                    "label",
                    wanted.as_str(),
                    "io.cri-containerd.pinned=pinned",
                ],
            ] {
                let out = ctr(&args).output().await.map_err(io("running ctr"))?;
                if !out.status.success() {
                    return Err(step(
                        format!("ctr {}", args.join(" ")),
                        last_lines(&String::from_utf8_lossy(&out.stderr), 5),
                    ));
                }
            }
        }
        Ok(())
    }
    .await;
    let _ = containerd.start_kill();
    let _ = containerd.wait().await;
    result
}

/// The labels a node image carries, if `reference` is one of ours.
pub async fn labels(engine: &Engine, reference: &str) -> BTreeMap<String, String> {
    engine
        .docker()
        .inspect_image(reference)
        .await
        .ok()
        .and_then(|i| i.config)
        .and_then(|c| c.labels)
        .map(|l| l.into_iter().collect())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::toolchain::Versions;

    fn toolchain() -> Toolchain {
        Toolchain {
            dir: PathBuf::from("/nonexistent"),
            digest: "ab".repeat(32),
            versions: Versions {
                kubernetes: "v1.34.4".into(),
                etcd: "v3.6.5".into(),
                coredns: "v1.14.3".into(),
                kind: "v0.30.0".into(),
            },
            go_version: "go1.26".into(),
            build_seconds: 0.0,
            cached: true,
        }
    }

    fn kubeadm_list() -> Vec<String> {
        [
            "registry.k8s.io/kube-apiserver:v1.34.4",
            "registry.k8s.io/kube-controller-manager:v1.34.4",
            "registry.k8s.io/kube-scheduler:v1.34.4",
            "registry.k8s.io/kube-proxy:v1.34.4",
            "registry.k8s.io/coredns/coredns:v1.12.1",
            "registry.k8s.io/pause:3.10.1",
            "registry.k8s.io/etcd:3.6.5-0",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn every_image_kubeadm_asks_for_is_built_from_the_toolchain() {
        let preloads = preloads(&kubeadm_list(), &toolchain()).unwrap();
        let wanted: Vec<&str> = preloads.iter().map(|p| p.wanted.as_str()).collect();
        assert!(wanted.contains(&"registry.k8s.io/kube-apiserver:v1.34.4"));
        assert!(wanted.contains(&"registry.k8s.io/etcd:3.6.5-0"));
        // CoreDNS is the pinned release, not kubeadm's default tag.
        assert!(wanted.contains(&"registry.k8s.io/coredns/coredns:v1.14.3"));
        assert!(wanted.contains(&"localhost/kind-e2e/cni:v1.34.4"));
        let proxy = preloads.iter().find(|p| p.binary == "kube-proxy").unwrap();
        assert!(proxy.from_debian);
        let pause = preloads
            .iter()
            .find(|p| p.binary == "kind-e2e-pause")
            .unwrap();
        assert_eq!(pause.wanted, "registry.k8s.io/pause:3.10.1");
        assert!(pause.entrypoint);
    }

    #[test]
    fn an_etcd_kubeadm_does_not_expect_is_refused() {
        let mut t = toolchain();
        t.versions.etcd = "v3.6.4".into();
        let err = preloads(&kubeadm_list(), &t).err().unwrap().to_string();
        assert!(err.contains("toolchain/etcd/go.mod"), "{err}");
    }

    #[test]
    fn the_reference_follows_the_node_files() {
        let dir = tempfile::tempdir().unwrap();
        let files = dir.path().join("node-image/files/kind");
        std::fs::create_dir_all(&files).unwrap();
        std::fs::write(files.join("a"), "1").unwrap();
        let a = reference(&toolchain(), dir.path()).unwrap();
        assert!(a.starts_with("localhost/kind-e2e/node:v1.34.4-"), "{a}");
        std::fs::write(files.join("a"), "2").unwrap();
        assert_ne!(a, reference(&toolchain(), dir.path()).unwrap());
        let mut other = toolchain();
        other.digest = "cd".repeat(32);
        assert_ne!(
            reference(&toolchain(), dir.path()).unwrap(),
            reference(&other, dir.path()).unwrap()
        );
    }
}
