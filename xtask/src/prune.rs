//! `cargo xtask prune`: what the tool left on this machine's engines and in
//! its cache, down to the newest few of each kind.
//!
//! On every engine that answers (Docker and Podman): images are grouped by
//! repository and tag family (the tag without its trailing content digest,
//! e.g. `localhost/kubernaut/datastorage:datastorage-*` or
//! `localhost/kind-e2e/node:v1.34.4-*`); the newest `--keep` of each group
//! stay, older ones go. Only the tool's images are looked at: those labelled
//! by a service build (`io.kind-e2e.image.service`) and those under
//! `localhost/kind-e2e/`. A temporary import tag (`*-rootfs-*`) is always
//! removed, as are dangling images carrying the tool's labels. An image a
//! container uses stays (the engine refuses; it is reported). In the cache,
//! toolchains other than the newest `--keep` go, with their build logs
//! (rootfs folders stay: each is a different, current input).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;
use clap::Args;
use infra_core::Engine;

#[derive(Args)]
pub struct PruneArgs {
    /// How many of each image family (and of toolchains, rootfs folders)
    /// to keep, newest first.
    #[arg(long, default_value_t = 2, allow_negative_numbers = true, value_parser = crate::positive)]
    keep: usize,
    /// Say what would go, remove nothing.
    #[arg(long)]
    dry_run: bool,
}

const SERVICE_LABEL: &str = "io.kind-e2e.image.service";
const TOOL_PREFIX: &str = "localhost/kind-e2e/";

/// One tagged image.
#[derive(Debug, Clone)]
struct Tagged {
    reference: String,
    created: i64,
    size: i64,
}

/// `repo:family-<hex>` → `repo:family`; a tag without a digest suffix is its
/// own family.
fn family(reference: &str) -> String {
    let (repo, tag) = reference.rsplit_once(':').unwrap_or((reference, ""));
    let family = match tag.rsplit_once('-') {
        Some((head, digest))
            if digest.len() >= 8 && digest.chars().all(|c| c.is_ascii_hexdigit()) =>
        {
            head
        }
        _ => tag,
    };
    format!("{repo}:{family}")
}

/// What to remove of `images`: temporary import tags, and all but the
/// newest `keep` of each family.
fn to_remove(images: &[Tagged], keep: usize) -> Vec<Tagged> {
    let mut families: BTreeMap<String, Vec<&Tagged>> = BTreeMap::new();
    let mut remove = Vec::new();
    for image in images {
        if image.reference.contains("-rootfs-") {
            remove.push(image.clone());
        } else {
            families
                .entry(family(&image.reference))
                .or_default()
                .push(image);
        }
    }
    for (_, mut members) in families {
        members.sort_by(|a, b| {
            b.created
                .cmp(&a.created)
                .then(a.reference.cmp(&b.reference))
        });
        remove.extend(members.into_iter().skip(keep).cloned());
    }
    remove
}

async fn tool_images(engine: &Engine) -> Result<Vec<Tagged>> {
    let images = engine
        .docker()
        .list_images(None::<bollard::query_parameters::ListImagesOptions>)
        .await?;
    let mut tagged = Vec::new();
    for image in images {
        let ours = image.labels.contains_key(SERVICE_LABEL)
            || image.repo_tags.iter().any(|t| t.starts_with(TOOL_PREFIX));
        if !ours {
            continue;
        }
        for reference in &image.repo_tags {
            if reference == "<none>:<none>" {
                continue;
            }
            tagged.push(Tagged {
                reference: reference.clone(),
                created: image.created,
                size: image.size,
            });
        }
    }
    Ok(tagged)
}

async fn dangling_tool_images(engine: &Engine) -> Result<Vec<(String, i64)>> {
    let filters = std::collections::HashMap::from([("dangling", vec!["true"])]);
    let options = bollard::query_parameters::ListImagesOptionsBuilder::default()
        .filters(&filters)
        .build();
    let images = engine.docker().list_images(Some(options)).await?;
    Ok(images
        .into_iter()
        .filter(|i| i.labels.keys().any(|k| k.starts_with("io.kind-e2e.")))
        .map(|i| (i.id, i.size))
        .collect())
}

fn gib(bytes: i64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// Removes older folders of `<cache>/<kind>/` (full-digest names), keeping
/// the newest `keep`; returns the bytes freed.
fn prune_cache(dir: &Path, keep: usize, dry_run: bool) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    let mut folders: Vec<(std::time::SystemTime, std::path::PathBuf)> = entries
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    folders.sort_by_key(|f| std::cmp::Reverse(f.0));
    let mut freed = 0;
    for (_, path) in folders.into_iter().skip(keep) {
        let size: u64 = walkdir_size(&path);
        println!(
            "{} {} ({:.2} GiB)",
            if dry_run { "would remove" } else { "removing" },
            path.display(),
            size as f64 / f64::from(1u32 << 30)
        );
        if dry_run || std::fs::remove_dir_all(&path).is_ok() {
            freed += size;
        }
        // Its build logs, `<digest16>-<module>.log`, beside it.
        if let (false, Some(name)) = (dry_run, path.file_name().and_then(|n| n.to_str())) {
            let prefix = format!("{name}-");
            for log in std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
            {
                if log.file_name().to_string_lossy().starts_with(&prefix) {
                    let _ = std::fs::remove_file(log.path());
                }
            }
        }
    }
    freed
}

fn walkdir_size(path: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.filter_map(Result::ok) {
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

pub async fn prune(args: PruneArgs) -> Result<()> {
    let verb = if args.dry_run {
        "would remove"
    } else {
        "removing"
    };
    let mut engines = 0;
    for endpoint in infra_core::engine::default_endpoints() {
        let Ok(engine) = Engine::connect_to(&endpoint).await else {
            continue;
        };
        engines += 1;
        let images = tool_images(&engine).await?;
        let remove = to_remove(&images, args.keep);
        let dangling = dangling_tool_images(&engine).await?;
        let mut freed = 0;
        let mut kept_in_use = Vec::new();
        for image in &remove {
            println!(
                "{verb} {} on {engine} ({:.2} GiB)",
                image.reference,
                gib(image.size)
            );
            if args.dry_run {
                freed += image.size;
                continue;
            }
            match engine.remove_image(&image.reference).await {
                Ok(()) => freed += image.size,
                Err(e) => kept_in_use.push(format!("{}: {e}", image.reference)),
            }
        }
        for (id, size) in &dangling {
            println!("{verb} dangling image {id} on {engine}");
            if args.dry_run || engine.remove_image(id).await.is_ok() {
                freed += size;
            }
        }
        for kept in &kept_in_use {
            println!("kept {kept}");
        }
        println!(
            "{engine}: {} of {} tagged images and {} dangling {}, {:.2} GiB",
            remove.len() - kept_in_use.len(),
            images.len(),
            dangling.len(),
            if args.dry_run { "would go" } else { "removed" },
            gib(freed)
        );
    }
    if engines == 0 {
        anyhow::bail!(
            "no engine answers at {}: start Docker or Podman (`bash scripts/engines.sh`)",
            infra_core::engine::default_endpoints().join(", ")
        );
    }
    let cache = infra_core::toolchain::default_cache();
    // Rootfs folders are not pruned by count: the node image's and the base
    // image's are different inputs, both current.
    let freed = prune_cache(&cache.join("toolchain"), args.keep, args.dry_run);
    println!(
        "cache {}: {:.2} GiB {}",
        cache.display(),
        freed as f64 / f64::from(1u32 << 30),
        if args.dry_run { "would go" } else { "freed" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(reference: &str, created: i64) -> Tagged {
        Tagged {
            reference: reference.into(),
            created,
            size: 1,
        }
    }

    #[test]
    fn the_newest_of_each_family_stay_and_import_tags_always_go() {
        let images = [
            image(
                "localhost/kubernaut/datastorage:datastorage-aaaaaaaaaaaa",
                1,
            ),
            image(
                "localhost/kubernaut/datastorage:datastorage-bbbbbbbbbbbb",
                3,
            ),
            image(
                "localhost/kubernaut/datastorage:datastorage-cccccccccccc",
                2,
            ),
            image("localhost/kind-e2e/node:v1.34.4-111111111111", 5),
            image("localhost/kind-e2e/node:node-222222222222", 1),
            image(
                "localhost/kind-e2e/debian:bookworm-d7e047abfb9e-rootfs-32417-0",
                9,
            ),
        ];
        let gone: Vec<String> = to_remove(&images, 2)
            .into_iter()
            .map(|i| i.reference)
            .collect();
        assert_eq!(
            gone,
            [
                "localhost/kind-e2e/debian:bookworm-d7e047abfb9e-rootfs-32417-0",
                "localhost/kubernaut/datastorage:datastorage-aaaaaaaaaaaa",
            ]
        );
        let gone = to_remove(&images, 1);
        assert_eq!(gone.len(), 3, "{gone:?}");
        assert_eq!(
            family("localhost/kind-e2e/node:v1.34.4-111111111111"),
            "localhost/kind-e2e/node:v1.34.4"
        );
        assert_eq!(family("postgres:16-alpine"), "postgres:16-alpine");
    }
}
