//! Goose-style SQL migrations, applied in the cluster by a Job.
//!
//! Files are `<number>_<name>.sql`, applied in numeric order; only the part
//! between `-- +goose Up` and `-- +goose Down` runs, with `CONCURRENTLY`
//! stripped (it cannot run inside psql's implicit transaction handling the way
//! the original piped it). As in the original, an error whose message says
//! "already exists" is tolerated. Applied versions are recorded in
//! `e2e_schema_migrations`, so a reused cluster applies only new files.
//!
//! The files travel in a ConfigMap; the Job (named after the digest of all
//! files, because a Job's template cannot change) runs `psql` from the
//! PostgreSQL image. No kubectl, no exec.

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde_json::json;
use sha2::{Digest, Sha256};

use super::postgres::PostgresConfig;
use super::{Component, object};
use crate::deploy::wait::{Target, Workload};

/// Where `cargo xtask migrate` applies a repository's migrations: a kept
/// environment's PostgreSQL.
#[derive(Debug, Clone)]
pub struct Database {
    pub postgres: PostgresConfig,
    /// The repository's `migrations/` folder.
    pub migrations_dir: PathBuf,
}

/// One migration file, reduced to what is applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    pub version: u64,
    /// The file name, e.g. `001_audit_events.sql`.
    pub file: String,
    /// The Up section, `CONCURRENTLY` removed.
    pub up: String,
}

#[derive(Debug, thiserror::Error)]
pub enum MigrationError {
    #[error("reading migrations folder {dir} failed")]
    Read {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("migration {file}: {problem}")]
    Invalid { file: String, problem: String },
    #[error("migrations folder {dir} holds no `<number>_<name>.sql` files")]
    Empty { dir: PathBuf },
}

/// Reads every `*.sql` file of `dir`, in numeric order of their prefixes.
#[allow(
    clippy::expect_used,
    reason = "load_migrations lists files, which have names"
)]
pub fn load_migrations(dir: &Path) -> Result<Vec<Migration>, MigrationError> {
    let read = |source| MigrationError::Read {
        dir: dir.to_path_buf(),
        source,
    };
    let mut migrations = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(read)? {
        let path = entry.map_err(read)?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        let file = path
            .file_name()
            .expect("read_dir entries have names")
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).map_err(read)?;
        migrations.push(parse_migration(&file, &text)?);
    }
    if migrations.is_empty() {
        return Err(MigrationError::Empty {
            dir: dir.to_path_buf(),
        });
    }
    migrations.sort_by_key(|m| m.version);
    for pair in migrations.windows(2) {
        if pair[0].version == pair[1].version {
            return Err(MigrationError::Invalid {
                file: pair[1].file.clone(),
                problem: format!(
                    "version {} is also used by {}",
                    pair[1].version, pair[0].file
                ),
            });
        }
    }
    Ok(migrations)
}

/// Parses one goose file.
#[allow(clippy::expect_used, reason = "a constant, valid regex")]
pub fn parse_migration(file: &str, text: &str) -> Result<Migration, MigrationError> {
    let invalid = |problem: &str| MigrationError::Invalid {
        file: file.to_string(),
        problem: problem.to_string(),
    };
    let version = file
        .split('_')
        .next()
        .and_then(|prefix| prefix.parse::<u64>().ok())
        .ok_or_else(|| {
            invalid("the name must start with a number and `_`, like 001_create_tables.sql")
        })?;
    // Every line before the Down section keeps its place (blank when it is
    // not applied), so psql's line numbers are the file's.
    let mut up = String::new();
    let mut section = None;
    for line in text.lines() {
        let annotation = line.trim().strip_prefix("-- +goose").map(str::trim);
        match annotation {
            Some(a) if a.starts_with("Up") => section = Some(true),
            Some(a) if a.starts_with("Down") => section = Some(false),
            // StatementBegin/End and other annotations only guide goose's splitter.
            Some(_) => {}
            None if section == Some(true) => up.push_str(line),
            None => {}
        }
        if section == Some(false) {
            break;
        }
        up.push('\n');
    }
    if section.is_none() {
        return Err(invalid("it has no `-- +goose Up` annotation"));
    }
    // Spaces only: a newline eaten here would shift psql's line numbers.
    let concurrently = Regex::new(r"(?i)\bCONCURRENTLY\b[ \t]*").expect("a valid regex");
    Ok(Migration {
        version,
        file: file.to_string(),
        up: concurrently.replace_all(&up, "").into_owned(),
    })
}

/// The hex digest of every migration's name and Up section.
pub fn digest(migrations: &[Migration]) -> String {
    let mut hasher = Sha256::new();
    for m in migrations {
        hasher.update(m.file.as_bytes());
        hasher.update([0]);
        hasher.update(m.up.as_bytes());
        hasher.update([0]);
    }
    hex::encode(hasher.finalize())
}

/// The shell script the Job runs (`MIGRATIONS_DIR` defaults to the mounted
/// ConfigMap at `/migrations`): for each file in order, skip it if its
/// version is recorded, else apply it and record it in one transaction
/// (stopping at the first error, so a bad file leaves nothing of itself).
/// When the only error is "already exists" (objects made before versions
/// were recorded), the file is applied again statement by statement,
/// tolerating those, as the original did; any other error fails.
pub const SCRIPT: &str = r#"set -u
n=0; until pg_isready -q; do n=$((n+1)); [ $n -ge 120 ] && { echo "PostgreSQL did not answer in 120 s" >&2; exit 1; }; sleep 1; done
psql -v ON_ERROR_STOP=1 -qc 'CREATE TABLE IF NOT EXISTS e2e_schema_migrations (version bigint PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())' || exit 1
dir=${MIGRATIONS_DIR:-/migrations}
for file in $(ls "$dir" | sort); do
  version=$(echo "${file%%_*}" | sed 's/^0*//'); [ -z "$version" ] && version=0
  if [ "$(psql -tAc "SELECT 1 FROM e2e_schema_migrations WHERE version = $version")" = "1" ]; then
    echo "migration $file: already applied"; continue
  fi
  record="INSERT INTO e2e_schema_migrations (version, name) VALUES ($version, '$file')"
  if out=$(psql -v ON_ERROR_STOP=1 --single-transaction -f "$dir/$file" -c "$record" 2>&1); then
    echo "$out"; echo "migration $file: applied"; continue
  fi
  echo "$out"
  if echo "$out" | grep 'ERROR:' | grep -qv 'already exists'; then
    echo "migration $file failed: nothing of it was applied" >&2; exit 1
  fi
  out=$(psql -f "$dir/$file" 2>&1); echo "$out"
  if echo "$out" | grep 'ERROR:' | grep -qv 'already exists'; then
    echo "migration $file: partly applied" ; echo "migration $file failed" >&2; exit 1
  fi
  psql -v ON_ERROR_STOP=1 -qc "$record" || exit 1
  echo "migration $file: applied"
done
"#;

/// The ConfigMap holding the files and the Job applying them, against `pg`.
/// The Job is named after the files' digest: a reused cluster re-applies
/// nothing, not even a Job.
pub fn component(pg: &PostgresConfig, migrations: &[Migration], timeout: Duration) -> Component {
    // Everything in the Job's template, since a Job's template cannot change.
    let mut hasher = Sha256::new();
    for part in [
        digest(migrations).as_str(),
        SCRIPT,
        &pg.image,
        &pg.secret_name(),
    ] {
        hasher.update(part.as_bytes());
        hasher.update([0]);
    }
    let name = format!("migrations-{}", &hex::encode(hasher.finalize())[..12]);
    component_named(pg, migrations, timeout, &name, None)
}

/// [`component`] with a Job name of the caller's, removed by Kubernetes
/// `ttl_seconds` after it finished when given.
pub fn component_named(
    pg: &PostgresConfig,
    migrations: &[Migration],
    timeout: Duration,
    name: &str,
    ttl_seconds: Option<u32>,
) -> Component {
    let ns = &pg.namespace;
    let labels = json!({"app": "migrations", "app.kubernetes.io/part-of": "kind-e2e"});
    let files: serde_json::Map<String, serde_json::Value> = migrations
        .iter()
        .map(|m| (config_map_key(m), json!(m.up)))
        .collect();
    let secret_env = |env: &str, key: &str| json!({"name": env, "valueFrom": {"secretKeyRef": {"name": pg.secret_name(), "key": key}}});
    let mut job = object(json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [{
                        "name": "migrate",
                        "image": pg.image,
                        "imagePullPolicy": "IfNotPresent",
                        "command": ["sh", "-c", SCRIPT],
                        "env": [
                            {"name": "PGHOST", "value": pg.name},
                            {"name": "PGPORT", "value": "5432"},
                            secret_env("PGDATABASE", "DB_NAME"),
                            secret_env("PGUSER", "DB_USER"),
                            secret_env("PGPASSWORD", "DB_PASSWORD"),
                        ],
                        "volumeMounts": [{"name": "migrations", "mountPath": "/migrations"}]
                    }],
                    "volumes": [{"name": "migrations", "configMap": {"name": name}}]
                }
            }
        }
    }));
    if let Some(ttl) = ttl_seconds {
        job.data["spec"]["ttlSecondsAfterFinished"] = json!(ttl);
    }
    // A Job that cannot finish is stopped, not left looping.
    job.data["spec"]["activeDeadlineSeconds"] = json!(timeout.as_secs().max(1));
    Component {
        name: "migrations".into(),
        objects: vec![
            object(json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": ns, "labels": labels},
                "data": files
            })),
            job,
        ],
        ready: vec![Target::new(Workload::Job, ns, name, timeout)],
    }
}

/// What `apply` did with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Fate {
    Applied,
    AlreadyApplied,
}

/// Errors of [`apply`].
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(
        "no PostgreSQL Deployment {namespace}/{name} in the cluster: keep an environment with \
         `--keep-cluster` first"
    )]
    NoDatabase { namespace: String, name: String },
    #[error("{}: {message}; {}", location(file, *line), if *partial {
        "it was being applied statement by statement (some of its objects already existed), \
         so the statements before that line stayed applied"
    } else {
        "nothing of that file was applied (the files before it were)"
    })]
    Sql {
        file: String,
        line: Option<usize>,
        message: String,
        /// Applied outside a transaction (the "already exists" fallback).
        partial: bool,
    },
    #[error("the migrations Job {job} failed: {problem}")]
    Job { job: String, problem: String },
    #[error("{what}: {source}")]
    Kube {
        what: String,
        #[source]
        source: kube::Error,
    },
}

fn location(file: &str, line: Option<usize>) -> String {
    match line {
        Some(line) => format!("migration {file}, line {line}"),
        None => format!("migration {file}"),
    }
}

/// Applies `migrations` to the PostgreSQL of a kept environment (`pg`'s
/// Deployment, whose image runs the Job), as a new Job, and says per file
/// whether it was applied now or already before. A file that fails is rolled
/// back whole; the error names it and its line.
pub async fn apply(
    applier: &crate::deploy::Applier,
    pg: &PostgresConfig,
    migrations: &[Migration],
    timeout: Duration,
) -> Result<Vec<(String, Fate)>, ApplyError> {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::Pod;
    use kube::api::{Api, ListParams, LogParams};
    let client = applier.client();
    let kube = |what: String| move |source| ApplyError::Kube { what, source };
    let deployment = Api::<Deployment>::namespaced(client.clone(), &pg.namespace)
        .get_opt(&pg.name)
        .await
        .map_err(kube(format!(
            "reading Deployment {}/{}",
            pg.namespace, pg.name
        )))?
        .ok_or_else(|| ApplyError::NoDatabase {
            namespace: pg.namespace.clone(),
            name: pg.name.clone(),
        })?;
    let image = deployment
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().next())
        .and_then(|c| c.image)
        .ok_or_else(|| ApplyError::NoDatabase {
            namespace: pg.namespace.clone(),
            name: pg.name.clone(),
        })?;
    let mut pg = pg.clone();
    pg.image = image;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let job = format!("migrate-{}-{stamp:x}", &digest(migrations)[..12]);
    let component = component_named(&pg, migrations, timeout, &job, Some(600));
    applier
        .apply_all(component.objects.clone())
        .await
        .map_err(|e| ApplyError::Job {
            job: job.clone(),
            problem: crate::error_chain(&e),
        })?;
    let waited = component.wait(client).await;
    let pods = Api::<Pod>::namespaced(client.clone(), &pg.namespace);
    let listed = pods
        .list(&ListParams::default().labels(&format!("job-name={job}")))
        .await
        .map_err(kube(format!("listing the pods of Job {job}")))?;
    let mut log = String::new();
    for pod in listed.items {
        let name = pod.metadata.name.unwrap_or_default();
        if let Ok(text) = pods.logs(&name, &LogParams::default()).await {
            log.push_str(&text);
        }
    }
    // The Job goes by itself (its TTL); its ConfigMap has no owner.
    let _ = Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), &pg.namespace)
        .delete(&job, &Default::default())
        .await;
    let fates = read_log(&log, migrations)?;
    if let Err(e) = waited {
        return Err(ApplyError::Job {
            job,
            problem: crate::error_chain(&e),
        });
    }
    Ok(fates)
}

/// The Job's log, per file: applied or already there; the first SQL error
/// as the file and line it is on (the Up section keeps the file's lines).
pub fn read_log(log: &str, migrations: &[Migration]) -> Result<Vec<(String, Fate)>, ApplyError> {
    let file_of = |key: &str| {
        migrations
            .iter()
            .find(|m| config_map_key(m) == key)
            .map(|m| m.file.clone())
            .unwrap_or_else(|| key.to_string())
    };
    let mut fates = Vec::new();
    for line in log.lines() {
        if let Some(rest) = line.strip_prefix("migration ") {
            if let Some(key) = rest.strip_suffix(": already applied") {
                fates.push((file_of(key), Fate::AlreadyApplied));
            } else if let Some(key) = rest.strip_suffix(": applied") {
                fates.push((file_of(key), Fate::Applied));
            }
            continue;
        }
        // psql:/migrations/<key>:<line>: ERROR:  <message>
        let Some(rest) = line.strip_prefix("psql:") else {
            continue;
        };
        let Some((place, message)) = rest.split_once(": ERROR:") else {
            continue;
        };
        if message.contains("already exists") {
            continue;
        }
        let (path, number) = match place.rsplit_once(':') {
            Some((path, n)) if n.parse::<usize>().is_ok() => (path, n.parse().ok()),
            _ => (place, None),
        };
        let key = path.rsplit('/').next().unwrap_or(path);
        let file = file_of(key);
        let partial = log.contains(&format!("migration {key}: partly applied"));
        return Err(ApplyError::Sql {
            file,
            line: number,
            message: message.trim().to_string(),
            partial,
        });
    }
    Ok(fates)
}

/// `<20-digit version>_<name>`: sorts numerically as text, and only uses the
/// characters ConfigMap keys allow.
fn config_map_key(m: &Migration) -> String {
    let rest = m
        .file
        .split_once('_')
        .map(|(_, r)| r)
        .unwrap_or("migration.sql");
    let rest: String = rest
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    format!("{:020}_{rest}", m.version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stack::test_support::assert_round_trips;

    const AUDIT: &str = "-- +goose Up\n-- +goose StatementBegin\nCREATE TABLE audit_events (id int);\n\
        -- +goose StatementEnd\nCREATE INDEX CONCURRENTLY idx_a ON audit_events (id);\n\
        -- +goose Down\nDROP TABLE audit_events;\n";

    #[test]
    fn only_the_up_section_without_concurrently() {
        let m = parse_migration("001_audit_events.sql", AUDIT).unwrap();
        assert_eq!(m.version, 1);
        assert!(m.up.contains("CREATE TABLE audit_events"));
        assert!(m.up.contains("CREATE INDEX idx_a"), "{}", m.up);
        assert!(!m.up.contains("DROP TABLE"));
        assert!(!m.up.contains("goose"));
    }

    #[test]
    fn files_sort_numerically_and_bad_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("10_later.sql"),
            "-- +goose Up\nSELECT 10;\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("9_earlier.sql"),
            "-- +goose Up\nSELECT 9;\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("README.md"), "not sql").unwrap();
        let files: Vec<_> = load_migrations(dir.path())
            .unwrap()
            .into_iter()
            .map(|m| m.file)
            .collect();
        assert_eq!(
            files,
            ["9_earlier.sql", "10_later.sql"],
            "10 after 9, not before"
        );

        std::fs::write(dir.path().join("010_dup.sql"), "-- +goose Up\n").unwrap();
        let err = load_migrations(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("010_dup.sql") && err.contains("10_later.sql"),
            "{err}"
        );

        let err = parse_migration("create.sql", AUDIT)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("create.sql") && err.contains("start with a number"),
            "{err}"
        );
        let err = parse_migration("1_x.sql", "CREATE TABLE x();")
            .unwrap_err()
            .to_string();
        assert!(err.contains("goose Up"), "{err}");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(
            load_migrations(empty.path()),
            Err(MigrationError::Empty { .. })
        ));
    }

    #[test]
    fn job_is_named_by_content_and_keys_sort_numerically() {
        let a = vec![
            parse_migration("9_a.sql", "-- +goose Up\nSELECT 1;\n").unwrap(),
            parse_migration("10_b.sql", "-- +goose Up\nSELECT 2;\n").unwrap(),
        ];
        let pg = PostgresConfig::new("ds-e2e");
        let component = component(&pg, &a, Duration::from_secs(60));
        component.objects.iter().for_each(assert_round_trips);
        let cm = serde_json::to_value(&component.objects[0]).unwrap();
        let mut keys: Vec<&String> = cm["data"].as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            ["00000000000000000009_a.sql", "00000000000000000010_b.sql"]
        );
        let job_name = component.ready[0].name.clone();
        assert!(job_name.starts_with("migrations-"));
        let mut b = a.clone();
        b[1].up.push_str("SELECT 3;\n");
        assert_ne!(
            super::component(&pg, &b, Duration::from_secs(60)).ready[0].name,
            job_name
        );
    }

    /// The Job's script, run by a real `sh` against stand-in `psql` and
    /// `pg_isready` that keep the recorded versions in a file: order, skip on
    /// re-run, "already exists" tolerated, any other error fatal.
    #[test]
    fn the_job_script_applies_in_order_skips_applied_and_tolerates_only_already_exists() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("bin");
        let files = dir.path().join("migrations");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(&files).unwrap();
        let state = dir.path().join("applied");
        let calls = dir.path().join("calls");
        std::fs::write(&state, "").unwrap();
        let psql = format!(
            r#"#!/bin/sh
case "$*" in
  *"-tAc SELECT 1"*) v=$(echo "$*" | sed 's/.*version = //'); grep -qx "$v" {state} && echo 1; exit 0 ;;
  *"--single-transaction -f "*) f=$(echo "$*" | sed 's/.*-f \([^ ]*\) -c.*/\1/')
     echo "$(basename "$f")" >> {calls}
     grep -q OTHER "$f" && {{ echo "psql:$f:1: ERROR:  syntax error at or near \"OTHER\""; exit 3; }}
     grep -q EXISTS "$f" && {{ echo "psql:$f:1: ERROR:  relation \"t\" already exists"; exit 3; }}
     echo "$*" | sed 's/.*VALUES (\([0-9]*\).*/\1/' >> {state}; exit 0 ;;
  *"-f "*) f=$(echo "$*" | sed 's/.*-f //'); echo "$(basename "$f")" >> {calls}
     grep -q OTHER "$f" && echo 'ERROR:  syntax error at or near "OTHER"'
     grep -q EXISTS "$f" && echo 'ERROR:  relation "t" already exists'
     exit 0 ;;
  *"INSERT INTO"*) echo "$*" | sed 's/.*VALUES (\([0-9]*\).*/\1/' >> {state}; exit 0 ;;
  *) exit 0 ;;
esac
"#,
            state = state.display(),
            calls = calls.display()
        );
        for (name, body) in [
            ("psql", psql.as_str()),
            ("pg_isready", "#!/bin/sh\nexit 0\n"),
        ] {
            let path = bin.join(name);
            std::fs::write(&path, body).unwrap();
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        let run = || {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(SCRIPT)
                .env("MIGRATIONS_DIR", &files)
                .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
                .output()
                .unwrap()
        };
        let write = |key: &str, sql: &str| std::fs::write(files.join(key), sql).unwrap();
        write("00000000000000000010_b.sql", "SELECT 10;");
        write("00000000000000000009_a.sql", "SELECT 9; -- EXISTS");

        let first = run();
        assert!(
            first.status.success(),
            "{}",
            String::from_utf8_lossy(&first.stderr)
        );
        let applied = std::fs::read_to_string(&calls).unwrap();
        assert_eq!(
            applied,
            "00000000000000000009_a.sql\n00000000000000000009_a.sql\n00000000000000000010_b.sql\n",
            "9 in one transaction, then again tolerating \"already exists\"; 10 at once"
        );
        assert_eq!(std::fs::read_to_string(&state).unwrap(), "9\n10\n");

        let second = run();
        assert!(second.status.success());
        assert_eq!(
            std::fs::read_to_string(&calls).unwrap(),
            applied,
            "nothing re-applied"
        );
        assert!(String::from_utf8_lossy(&second.stdout).contains("already applied"));

        write("00000000000000000011_c.sql", "OTHER;");
        let third = run();
        assert!(!third.status.success(), "another error must fail the Job");
        assert!(
            String::from_utf8_lossy(&third.stderr)
                .contains("00000000000000000011_c.sql failed: nothing of it was applied")
        );
        assert!(
            String::from_utf8_lossy(&third.stdout).contains("psql:"),
            "psql's message, with file and line, is in the log"
        );
        assert_eq!(
            std::fs::read_to_string(&state).unwrap(),
            "9\n10\n",
            "11 is not recorded"
        );
    }

    #[test]
    fn the_up_section_keeps_the_files_line_numbers() {
        let m = parse_migration("001_audit_events.sql", AUDIT).unwrap();
        let lines: Vec<&str> = m.up.lines().collect();
        let file: Vec<&str> = AUDIT.lines().collect();
        assert_eq!(lines[2], file[2], "line 3 is line 3");
        assert!(lines[4].starts_with("CREATE INDEX idx_a"));
        assert_eq!(lines.len(), 5, "nothing after the Down marker: {lines:?}");
    }

    #[test]
    fn the_log_says_per_file_what_was_done_and_names_a_bad_files_line() {
        let a = parse_migration("001_a.sql", "-- +goose Up\nSELECT 1;\n").unwrap();
        let b = parse_migration("002_b.sql", "-- +goose Up\nSELECT 2;\n").unwrap();
        let c = parse_migration("003_c.sql", "-- +goose Up\n\nGARBAGE;\n").unwrap();
        let all = [a.clone(), b.clone(), c.clone()];
        let log = format!(
            "migration {}: already applied\nmigration {}: applied\n",
            config_map_key(&a),
            config_map_key(&b)
        );
        assert_eq!(
            read_log(&log, &all).unwrap(),
            [
                ("001_a.sql".to_string(), Fate::AlreadyApplied),
                ("002_b.sql".to_string(), Fate::Applied)
            ]
        );
        let failed = format!(
            "{log}psql:/migrations/{}:3: ERROR:  syntax error at or near \"GARBAGE\"\n",
            config_map_key(&c)
        );
        let error = read_log(&failed, &all).unwrap_err().to_string();
        assert_eq!(
            error,
            "migration 003_c.sql, line 3: syntax error at or near \"GARBAGE\"; nothing of that \
             file was applied (the files before it were)"
        );
        // Applied statement by statement after "already exists": says so.
        let partly = format!(
            "psql:/migrations/{key}:2: ERROR:  relation \"t\" already exists\n\
             psql:/migrations/{key}:3: ERROR:  syntax error at or near \"GARBAGE\"\n\
             migration {key}: partly applied\n",
            key = config_map_key(&c)
        );
        let error = read_log(&partly, &all).unwrap_err().to_string();
        assert!(
            error.starts_with("migration 003_c.sql, line 3: syntax error")
                && error.contains("the statements before that line stayed applied"),
            "{error}"
        );
        // "already exists" is tolerated, not an error.
        let tolerated = format!(
            "psql:/migrations/{}:2: ERROR:  relation \"t\" already exists\n",
            config_map_key(&a)
        );
        assert!(read_log(&tolerated, &all).unwrap().is_empty());
    }
}
