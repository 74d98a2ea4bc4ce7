//! Kind nodes as the loader sees them: containers labelled
//! `io.x-k8s.kind.cluster=<name>` (skipping the external load balancer), the
//! snapshotter each node's containerd uses, and which image ids a node holds.

use crate::engine::{Engine, EngineError};

/// Label kind puts on every node container, valued with the cluster name.
pub const CLUSTER_LABEL: &str = "io.x-k8s.kind.cluster";
/// Label kind puts on every node container, valued with its role.
pub const ROLE_LABEL: &str = "io.x-k8s.kind.role";
/// The role of kind's HA load balancer, which runs no containerd.
pub const EXTERNAL_LOAD_BALANCER: &str = "external-load-balancer";
/// The containerd namespace Kubernetes' CRI uses.
pub const K8S_NAMESPACE: &str = "k8s.io";

/// One node container of a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KindNode {
    /// Container name (`<cluster>-control-plane`, `<cluster>-worker`, ...).
    pub name: String,
    pub id: String,
    pub role: String,
    /// The engine's state (`running`, `exited`, ...).
    pub state: String,
}

/// The node containers of `cluster`, sorted by name, without the external load
/// balancer. Empty when no container carries the cluster label.
pub async fn find_kind_nodes(engine: &Engine, cluster: &str) -> Result<Vec<KindNode>, EngineError> {
    let containers = engine
        .containers_labelled(&format!("{CLUSTER_LABEL}={cluster}"))
        .await?;
    let mut nodes: Vec<KindNode> = containers
        .into_iter()
        .filter_map(|c| {
            let labels = c.labels.unwrap_or_default();
            let role = labels.get(ROLE_LABEL).cloned().unwrap_or_default();
            if role == EXTERNAL_LOAD_BALANCER {
                return None;
            }
            let name = c
                .names
                .unwrap_or_default()
                .first()
                .map(|n| n.trim_start_matches('/').to_string())?;
            Some(KindNode {
                name,
                id: c.id.unwrap_or_default(),
                role,
                state: c
                    .state
                    .map(|s| s.to_string().to_ascii_lowercase())
                    .unwrap_or_default(),
            })
        })
        .collect();
    nodes.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(nodes)
}

/// The snapshotter named in a `containerd config dump`: config version 3
/// (`plugins."io.containerd.cri.v1.images".snapshotter`) or 2
/// (`plugins."io.containerd.grpc.v1.cri".containerd.snapshotter`); `overlayfs`
/// when neither says, which is containerd's default.
pub fn snapshotter_from_config(dump: &str) -> String {
    let parsed: toml::Table = match dump.parse() {
        Ok(table) => table,
        Err(_) => return "overlayfs".into(),
    };
    let plugins = parsed.get("plugins");
    let v3 = plugins
        .and_then(|p| p.get("io.containerd.cri.v1.images"))
        .and_then(|p| p.get("snapshotter"));
    let v2 = plugins
        .and_then(|p| p.get("io.containerd.grpc.v1.cri"))
        .and_then(|p| p.get("containerd"))
        .and_then(|p| p.get("snapshotter"));
    v3.or(v2)
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty())
        .unwrap_or("overlayfs")
        .to_string()
}

/// Asks the node's containerd which snapshotter its CRI plugin uses.
pub async fn node_snapshotter(engine: &Engine, node: &str) -> Result<String, EngineError> {
    let dump = engine
        .exec_ok(node, &["containerd", "config", "dump"])
        .await?;
    Ok(snapshotter_from_config(&dump.stdout))
}

/// The `ctr` command line kind uses to import an image archive read on stdin.
pub fn ctr_import_command(snapshotter: &str) -> Vec<String> {
    vec![
        "ctr".into(),
        format!("--namespace={K8S_NAMESPACE}"),
        "images".into(),
        "import".into(),
        "--all-platforms".into(),
        "--digests".into(),
        format!("--snapshotter={snapshotter}"),
        "-".into(),
    ]
}

/// The config digests (image ids) that `reference` points to on `node`, empty
/// when the node does not have the reference. An image id equals the digest of
/// the image's config blob, which `ctr import` keeps byte for byte.
pub async fn image_ids_on_node(
    engine: &Engine,
    node: &str,
    reference: &str,
) -> Result<Vec<String>, EngineError> {
    let namespace = format!("--namespace={K8S_NAMESPACE}");
    let filter = format!("name=={reference}");
    let listed = engine
        .exec_ok(node, &["ctr", &namespace, "images", "ls", &filter])
        .await?;
    let Some(target) = manifest_digest(&listed.stdout, reference) else {
        return Ok(Vec::new());
    };
    let mut ids = Vec::new();
    let mut pending = vec![(target, true)];
    // An index lists manifests; follow them (at most a handful) to their
    // configs. The image's own manifest must be readable; a platform's
    // manifest that is not on the node (imported for one platform only) is
    // simply not there.
    while let Some((digest, top)) = pending.pop() {
        let command = ["ctr", namespace.as_str(), "content", "get", digest.as_str()];
        let blob = if top {
            engine.exec_ok(node, &command).await?
        } else {
            match engine.exec(node, &command).await? {
                output if output.success() => output,
                _ => continue,
            }
        };
        let Ok(json) = serde_json::from_str::<serde_json::Value>(&blob.stdout) else {
            continue;
        };
        if let Some(config) = json["config"]["digest"].as_str() {
            ids.push(config.to_string());
        }
        if let Some(manifests) = json["manifests"].as_array() {
            pending.extend(
                manifests
                    .iter()
                    .filter_map(|m| m["digest"].as_str().map(|d| (d.to_string(), false)))
                    .take(16),
            );
        }
    }
    Ok(ids)
}

/// The DIGEST column of `ctr images ls` for the row whose REF is `reference`.
fn manifest_digest(listing: &str, reference: &str) -> Option<String> {
    listing.lines().skip(1).find_map(|line| {
        let mut columns = line.split_whitespace();
        let name = columns.next()?;
        let _media_type = columns.next()?;
        let digest = columns.next()?;
        (name == reference && digest.starts_with("sha256:")).then(|| digest.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshotter_is_read_from_v2_and_v3_configs() {
        let v2 = r#"
version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "native"
"#;
        assert_eq!(snapshotter_from_config(v2), "native");
        let v3 = r#"
version = 3
[plugins."io.containerd.cri.v1.images"]
  snapshotter = "fuse-overlayfs"
"#;
        assert_eq!(snapshotter_from_config(v3), "fuse-overlayfs");
        assert_eq!(snapshotter_from_config("version = 2\n"), "overlayfs");
        assert_eq!(snapshotter_from_config("not toml ["), "overlayfs");
    }

    #[test]
    fn ctr_listing_is_parsed_by_reference() {
        let listing = "REF TYPE DIGEST SIZE PLATFORMS LABELS\n\
            import-2026@sha256:aa application/vnd.docker.distribution.manifest.v2+json sha256:aa 1.9 MiB linux/amd64 -\n\
            localhost/bb:1 application/vnd.docker.distribution.manifest.v2+json sha256:332c 1.9 MiB linux/amd64 io.cri-containerd.image=managed\n";
        assert_eq!(
            manifest_digest(listing, "localhost/bb:1").as_deref(),
            Some("sha256:332c")
        );
        assert_eq!(manifest_digest(listing, "localhost/bb:2"), None);
        assert_eq!(manifest_digest("REF TYPE DIGEST\n", "x"), None);
    }

    #[test]
    fn import_command_matches_kinds() {
        assert_eq!(
            ctr_import_command("overlayfs").join(" "),
            "ctr --namespace=k8s.io images import --all-platforms --digests --snapshotter=overlayfs -"
        );
    }
}
