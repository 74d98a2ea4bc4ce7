//! The build context: which files are sent (after `.dockerignore`), the input
//! digest that names the image, and the deterministic tar streamed to the engine.
//!
//! The digest and the tar are computed from the same sorted entry list, so the
//! tag changes exactly when what the engine would receive changes. Both read
//! files synchronously; callers run them on blocking threads.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::dockerignore::{DockerIgnore, DockerIgnoreError};

/// Why a build context could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    #[error(
        "build context {0} is not a directory; pass --context with the folder holding the sources"
    )]
    NotADirectory(PathBuf),
    #[error(
        "Dockerfile {dockerfile} not found (paths are relative to the build context {context}); \
         check the Dockerfile path and the context"
    )]
    DockerfileMissing {
        dockerfile: String,
        context: PathBuf,
    },
    #[error(
        "Dockerfile {dockerfile} is outside the build context {context}; move it inside or \
         widen the context"
    )]
    DockerfileOutside {
        dockerfile: String,
        context: PathBuf,
    },
    #[error(transparent)]
    Ignore(#[from] DockerIgnoreError),
    #[error("reading {path} in the build context failed")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ContextError + '_ {
    move |source| ContextError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum EntryKind {
    Dir,
    File { size: u64 },
    Symlink { target: PathBuf },
}

/// One path sent to the engine.
#[derive(Debug, Clone)]
struct Entry {
    /// Relative to the context root, `/`-separated.
    rel: String,
    mode: u32,
    kind: EntryKind,
}

/// A scanned build context: the sorted list of what would be sent.
#[derive(Debug, Clone)]
pub struct BuildContext {
    root: PathBuf,
    dockerfile: String,
    entries: Vec<Entry>,
}

/// What besides the files decides the image: the digest covers these too.
#[derive(Debug, Clone)]
pub struct DigestInputs<'a> {
    pub target: Option<&'a str>,
    pub build_args: &'a BTreeMap<String, String>,
}

impl BuildContext {
    /// Walks `root`, applying `<dockerfile>.dockerignore` when it exists, else
    /// the root `.dockerignore`. `dockerfile` is relative to `root`; it and
    /// the ignore file used are always sent, as Docker does.
    #[allow(clippy::expect_used, reason = "walkdir yields paths inside its root")]
    pub fn scan(root: &Path, dockerfile: &Path) -> Result<BuildContext, ContextError> {
        if !root.is_dir() {
            return Err(ContextError::NotADirectory(root.to_path_buf()));
        }
        let root = root.canonicalize().map_err(io_err(root))?;
        let dockerfile_abs = root.join(dockerfile);
        let missing = || ContextError::DockerfileMissing {
            dockerfile: dockerfile.display().to_string(),
            context: root.clone(),
        };
        if !dockerfile_abs.is_file() {
            return Err(missing());
        }
        let dockerfile_rel = dockerfile_abs
            .canonicalize()
            .map_err(|_| missing())?
            .strip_prefix(&root)
            .map_err(|_| ContextError::DockerfileOutside {
                dockerfile: dockerfile.display().to_string(),
                context: root.clone(),
            })?
            .to_string_lossy()
            .replace('\\', "/");

        // As BuildKit does: `<Dockerfile>.dockerignore` next to the Dockerfile,
        // when there is one, replaces the root `.dockerignore`. Images built
        // from one repository root then hash (and send) only their own inputs.
        let own_ignore = format!("{dockerfile_rel}.dockerignore");
        let ignore_rel = if root.join(&own_ignore).is_file() {
            own_ignore
        } else {
            ".dockerignore".to_string()
        };
        let ignore_path = root.join(&ignore_rel);
        let ignore = match fs::read_to_string(&ignore_path) {
            Ok(text) => DockerIgnore::parse(&text)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => DockerIgnore::default(),
            Err(e) => return Err(io_err(&ignore_path)(e)),
        };
        let always_sent = |rel: &str| rel == dockerfile_rel || rel == ignore_rel;

        let mut entries = Vec::new();
        let mut walk = walkdir::WalkDir::new(&root)
            .follow_links(false)
            .sort_by_file_name()
            .min_depth(1)
            .into_iter();
        while let Some(item) = walk.next() {
            let item = item.map_err(|e| {
                let path = e.path().unwrap_or(&root).to_path_buf();
                ContextError::Io {
                    path,
                    source: e.into(),
                }
            })?;
            let rel = item
                .path()
                .strip_prefix(&root)
                .expect("walkdir yields paths under its root")
                .to_string_lossy()
                .replace('\\', "/");
            let file_type = item.file_type();
            if ignore.is_excluded(&rel) && !always_sent(&rel) {
                // Without exceptions nothing below an excluded directory can
                // come back (but the Dockerfile, always sent), so do not even
                // read it.
                let holds_dockerfile = dockerfile_rel.starts_with(&format!("{rel}/"));
                if file_type.is_dir() && !ignore.has_exceptions() && !holds_dockerfile {
                    walk.skip_current_dir();
                }
                continue;
            }
            let meta = item.metadata().map_err(|e| ContextError::Io {
                path: item.path().to_path_buf(),
                source: e.into(),
            })?;
            let kind = if file_type.is_dir() {
                EntryKind::Dir
            } else if file_type.is_symlink() {
                EntryKind::Symlink {
                    target: fs::read_link(item.path()).map_err(io_err(item.path()))?,
                }
            } else if file_type.is_file() {
                EntryKind::File { size: meta.len() }
            } else {
                // Sockets, fifos and devices cannot be sent; Docker skips them too.
                continue;
            };
            entries.push(Entry {
                rel,
                mode: meta.permissions().mode() & 0o7777,
                kind,
            });
        }
        // Sort by full path so the order does not depend on the walk.
        entries.sort_by(|a, b| a.rel.cmp(&b.rel));
        Ok(BuildContext {
            root,
            dockerfile: dockerfile_rel,
            entries,
        })
    }

    /// The context root (canonical).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The Dockerfile's path inside the context, as the engine expects it.
    pub fn dockerfile(&self) -> &str {
        &self.dockerfile
    }

    /// The relative paths that would be sent, in tar order.
    pub fn paths(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|e| e.rel.as_str())
    }

    /// Number of bytes of regular files sent.
    pub fn file_bytes(&self) -> u64 {
        self.entries
            .iter()
            .map(|e| match e.kind {
                EntryKind::File { size } => size,
                _ => 0,
            })
            .sum()
    }

    /// The input digest (hex sha256) over every sent path, its type, mode and
    /// contents, the Dockerfile path, the target and the sorted build args.
    pub fn digest(&self, inputs: &DigestInputs<'_>) -> Result<String, ContextError> {
        let mut hasher = Sha256::new();
        // Bump the version when the digest's layout changes, so old tags go stale.
        hasher.update(b"e2e-context-digest/v1\n");
        field(&mut hasher, b"dockerfile", self.dockerfile.as_bytes());
        field(
            &mut hasher,
            b"target",
            inputs.target.unwrap_or_default().as_bytes(),
        );
        for (key, value) in inputs.build_args {
            field(&mut hasher, b"arg", format!("{key}={value}").as_bytes());
        }
        let mut buffer = vec![0u8; 256 * 1024];
        for entry in &self.entries {
            field(&mut hasher, b"path", entry.rel.as_bytes());
            field(&mut hasher, b"mode", format!("{:o}", entry.mode).as_bytes());
            match &entry.kind {
                EntryKind::Dir => field(&mut hasher, b"dir", b""),
                EntryKind::Symlink { target } => {
                    field(&mut hasher, b"link", target.to_string_lossy().as_bytes())
                }
                EntryKind::File { .. } => {
                    let path = self.root.join(&entry.rel);
                    let mut file = fs::File::open(&path).map_err(io_err(&path))?;
                    let mut content = Sha256::new();
                    let mut length = 0u64;
                    loop {
                        let n = file.read(&mut buffer).map_err(io_err(&path))?;
                        if n == 0 {
                            break;
                        }
                        length += n as u64;
                        content.update(&buffer[..n]);
                    }
                    field(&mut hasher, b"size", length.to_string().as_bytes());
                    field(&mut hasher, b"file", &content.finalize());
                }
            }
        }
        Ok(hex::encode(hasher.finalize()))
    }

    /// Writes the context as a deterministic tar: sorted paths, real modes,
    /// owner 0:0, a fixed modification time. Same inputs, same bytes.
    pub fn write_tar<W: Write>(&self, out: W) -> Result<W, ContextError> {
        let mut tar = tar::Builder::new(out);
        tar.mode(tar::HeaderMode::Complete);
        let tar_err = |rel: &str| {
            let path = self.root.join(rel);
            move |source| ContextError::Io { path, source }
        };
        for entry in &self.entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(entry.mode);
            header.set_uid(0);
            header.set_gid(0);
            header.set_mtime(0);
            match &entry.kind {
                EntryKind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    tar.append_data(&mut header, &entry.rel, io::empty())
                        .map_err(tar_err(&entry.rel))?;
                }
                EntryKind::Symlink { target } => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    tar.append_link(&mut header, &entry.rel, target)
                        .map_err(tar_err(&entry.rel))?;
                }
                EntryKind::File { size } => {
                    let path = self.root.join(&entry.rel);
                    let file = fs::File::open(&path).map_err(io_err(&path))?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(*size);
                    // A file that changed size since the scan would corrupt the
                    // archive; `take` keeps the header honest, and the digest
                    // (computed first) already names what was scanned.
                    tar.append_data(&mut header, &entry.rel, file.take(*size))
                        .map_err(tar_err(&entry.rel))?;
                }
            }
        }
        tar.into_inner().map_err(tar_err("."))
    }
}

/// Hashes a length-prefixed, tagged field so no two layouts can collide.
fn field(hasher: &mut Sha256, tag: &[u8], value: &[u8]) {
    hasher.update(tag);
    hasher.update((value.len() as u64).to_le_bytes());
    hasher.update(value);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
    }

    fn sample() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "Dockerfile", "FROM scratch\nCOPY . /\n");
        write(dir.path(), "src/main.rs", "fn main() {}\n");
        write(dir.path(), "notes/todo.txt", "later\n");
        write(dir.path(), "target/big.bin", "ignored\n");
        write(
            dir.path(),
            ".dockerignore",
            "target\nnotes\n!notes/keep.txt\n",
        );
        dir
    }

    fn digest(dir: &Path) -> String {
        let args = BTreeMap::new();
        BuildContext::scan(dir, Path::new("Dockerfile"))
            .unwrap()
            .digest(&DigestInputs {
                target: None,
                build_args: &args,
            })
            .unwrap()
    }

    #[test]
    fn scan_applies_dockerignore_and_always_sends_the_dockerfile() {
        let dir = sample();
        write(dir.path(), "notes/keep.txt", "kept\n");
        fs::write(
            dir.path().join(".dockerignore"),
            "target\nnotes\n!notes/keep.txt\nDockerfile\n.dockerignore\n",
        )
        .unwrap();
        let ctx = BuildContext::scan(dir.path(), Path::new("Dockerfile")).unwrap();
        let paths: Vec<&str> = ctx.paths().collect();
        assert_eq!(
            paths,
            [
                ".dockerignore",
                "Dockerfile",
                "notes/keep.txt",
                "src",
                "src/main.rs"
            ]
        );
    }

    #[test]
    fn a_dockerfiles_own_ignore_file_replaces_the_root_one() {
        let dir = sample();
        write(dir.path(), "bin/a", "a\n");
        write(dir.path(), "bin/b", "b\n");
        write(
            dir.path(),
            "docker/a.Dockerfile",
            "FROM scratch\nCOPY bin/a /a\n",
        );
        write(
            dir.path(),
            "docker/a.Dockerfile.dockerignore",
            "*\n!bin/a\n",
        );
        fs::write(dir.path().join(".dockerignore"), "src\n").unwrap();
        let scan = |dockerfile: &str| {
            BuildContext::scan(dir.path(), Path::new(dockerfile))
                .unwrap()
                .paths()
                .map(str::to_string)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            scan("docker/a.Dockerfile"),
            [
                "bin/a",
                "docker/a.Dockerfile",
                "docker/a.Dockerfile.dockerignore"
            ]
        );
        // Another Dockerfile still uses the root file.
        assert!(scan("Dockerfile").contains(&"bin/b".to_string()));
    }

    #[test]
    fn a_dockerfile_inside_an_ignored_folder_is_still_sent() {
        let dir = sample();
        write(dir.path(), "docker/app.Dockerfile", "FROM scratch\n");
        write(dir.path(), "docker/other.txt", "not sent\n");
        fs::write(dir.path().join(".dockerignore"), "docker\ntarget\nnotes\n").unwrap();
        let ctx = BuildContext::scan(dir.path(), Path::new("docker/app.Dockerfile")).unwrap();
        let paths: Vec<&str> = ctx.paths().collect();
        assert_eq!(
            paths,
            [
                ".dockerignore",
                "Dockerfile",
                "docker/app.Dockerfile",
                "src",
                "src/main.rs"
            ]
        );
    }

    #[test]
    fn digest_ignores_ignored_files_and_sees_every_sent_change() {
        let dir = sample();
        let before = digest(dir.path());
        assert_eq!(before, digest(dir.path()), "stable across scans");

        write(dir.path(), "target/big.bin", "changed but ignored\n");
        write(dir.path(), "notes/todo.txt", "also ignored\n");
        assert_eq!(before, digest(dir.path()));

        write(dir.path(), "src/main.rs", "fn main() { println!() }\n");
        let after_edit = digest(dir.path());
        assert_ne!(before, after_edit, "content change");

        let main = dir.path().join("src/main.rs");
        fs::set_permissions(&main, fs::Permissions::from_mode(0o755)).unwrap();
        let after_chmod = digest(dir.path());
        assert_ne!(after_edit, after_chmod, "mode change");

        fs::rename(&main, dir.path().join("src/lib.rs")).unwrap();
        assert_ne!(after_chmod, digest(dir.path()), "rename");
    }

    #[test]
    fn digest_covers_target_args_and_dockerfile_path() {
        let dir = sample();
        write(
            dir.path(),
            "docker/Other.Dockerfile",
            "FROM scratch\nCOPY . /\n",
        );
        let ctx = BuildContext::scan(dir.path(), Path::new("Dockerfile")).unwrap();
        let none = BTreeMap::new();
        let mut cover = BTreeMap::new();
        cover.insert("GOFLAGS".to_string(), "-cover".to_string());
        let plain = ctx
            .digest(&DigestInputs {
                target: None,
                build_args: &none,
            })
            .unwrap();
        let with_arg = ctx
            .digest(&DigestInputs {
                target: None,
                build_args: &cover,
            })
            .unwrap();
        let with_target = ctx
            .digest(&DigestInputs {
                target: Some("runtime"),
                build_args: &none,
            })
            .unwrap();
        assert_ne!(plain, with_arg);
        assert_ne!(plain, with_target);
        let other = BuildContext::scan(dir.path(), Path::new("docker/Other.Dockerfile")).unwrap();
        assert_eq!(other.dockerfile(), "docker/Other.Dockerfile");
        let other_digest = other
            .digest(&DigestInputs {
                target: None,
                build_args: &none,
            })
            .unwrap();
        assert_ne!(plain, other_digest);
    }

    #[test]
    fn tar_is_deterministic_and_holds_exactly_the_sent_paths() {
        let dir = sample();
        std::os::unix::fs::symlink("main.rs", dir.path().join("src/link.rs")).unwrap();
        let ctx = BuildContext::scan(dir.path(), Path::new("Dockerfile")).unwrap();
        let first = ctx.write_tar(Vec::new()).unwrap();
        let second = ctx.write_tar(Vec::new()).unwrap();
        assert_eq!(first, second);
        let mut archive = tar::Archive::new(&first[..]);
        let names: Vec<String> = archive
            .entries()
            .unwrap()
            .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                ".dockerignore",
                "Dockerfile",
                "src",
                "src/link.rs",
                "src/main.rs"
            ]
        );
    }

    #[test]
    fn missing_or_outside_dockerfile_is_named() {
        let dir = sample();
        let err = BuildContext::scan(dir.path(), Path::new("Nope.Dockerfile")).unwrap_err();
        assert!(err.to_string().contains("Nope.Dockerfile"), "{err}");
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "Dockerfile", "FROM scratch\n");
        let rel = Path::new("..")
            .join(outside.path().file_name().unwrap())
            .join("Dockerfile");
        let err = BuildContext::scan(dir.path(), &rel).unwrap_err();
        assert!(
            matches!(err, ContextError::DockerfileOutside { .. }),
            "{err}"
        );
        let err =
            BuildContext::scan(&dir.path().join("nope"), Path::new("Dockerfile")).unwrap_err();
        assert!(matches!(err, ContextError::NotADirectory(_)));
    }
}
