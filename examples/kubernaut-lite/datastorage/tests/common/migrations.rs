//! Applies goose-style migrations the way the E2E tooling does: files named
//! `<number>_<name>.sql` in numeric order, only the `-- +goose Up` section,
//! `CONCURRENTLY` stripped from statements, and "already exists" errors
//! tolerated so that a second application is harmless.

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Migration {
    pub version: u64,
    pub name: String,
    pub path: PathBuf,
    pub up: Vec<String>,
    pub down: Vec<String>,
}

/// The migrations in `dir`, in numeric order.
pub fn load(dir: &Path) -> Result<Vec<Migration>, String> {
    let mut migrations = Vec::new();
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let Some(stem) = file.strip_suffix(".sql") else {
            continue;
        };
        let (number, name) = stem
            .split_once('_')
            .ok_or_else(|| format!("{file}: not named <number>_<name>.sql"))?;
        let version = number
            .parse()
            .map_err(|_| format!("{file}: `{number}` is not a number"))?;
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{file}: {e}"))?;
        let (up, down) = sections(&text).map_err(|e| format!("{file}: {e}"))?;
        migrations.push(Migration {
            version,
            name: name.to_string(),
            path,
            up,
            down,
        });
    }
    migrations.sort_by_key(|m| m.version);
    if let Some(pair) = migrations.windows(2).find(|w| w[0].version == w[1].version) {
        return Err(format!(
            "{} and {} share version {}",
            pair[0].path.display(),
            pair[1].path.display(),
            pair[0].version
        ));
    }
    Ok(migrations)
}

/// Splits a goose file into the statements of its Up and Down sections.
/// Statements end with a line ending in `;`, except between
/// `-- +goose StatementBegin` and `-- +goose StatementEnd`.
pub fn sections(text: &str) -> Result<(Vec<String>, Vec<String>), String> {
    #[derive(PartialEq)]
    enum Section {
        None,
        Up,
        Down,
    }
    let mut section = Section::None;
    let mut seen_up = false;
    let (mut up, mut down) = (Vec::new(), Vec::new());
    let mut current = String::new();
    let mut in_block = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if let Some(annotation) = trimmed.strip_prefix("-- +goose ") {
            match annotation.trim() {
                "Up" => {
                    section = Section::Up;
                    seen_up = true;
                }
                "Down" => section = Section::Down,
                "StatementBegin" => in_block = true,
                "StatementEnd" => {
                    in_block = false;
                    push(
                        &mut current,
                        if section == Section::Up {
                            &mut up
                        } else {
                            &mut down
                        },
                    );
                }
                _ => {}
            }
            continue;
        }
        if section == Section::None {
            continue;
        }
        current.push_str(line);
        current.push('\n');
        if !in_block && trimmed.ends_with(';') {
            push(
                &mut current,
                if section == Section::Up {
                    &mut up
                } else {
                    &mut down
                },
            );
        }
    }
    if !seen_up {
        return Err("no `-- +goose Up` annotation".into());
    }
    push(
        &mut current,
        if section == Section::Up {
            &mut up
        } else {
            &mut down
        },
    );
    Ok((up, down))
}

fn push(current: &mut String, into: &mut Vec<String>) {
    // Leading blank and comment lines belong to no statement.
    let statement: Vec<&str> = current
        .lines()
        .skip_while(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
        .collect();
    if !statement.is_empty() {
        into.push(statement.join("\n").trim().to_string());
    }
    current.clear();
}

/// Removes the word `CONCURRENTLY` (any case): the applier runs statements
/// where concurrent index builds are not allowed or not needed.
pub fn strip_concurrently(statement: &str) -> String {
    let upper = statement.to_ascii_uppercase();
    let mut out = String::new();
    let mut rest = 0;
    let mut from = 0;
    while let Some(found) = upper[from..].find("CONCURRENTLY") {
        let start = from + found;
        let end = start + "CONCURRENTLY".len();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_ascii_alphanumeric() || c == '_'));
        if boundary(upper[..start].chars().next_back()) && boundary(upper[end..].chars().next()) {
            out.push_str(&statement[rest..start]);
            // Drop the whitespace after the word too.
            let skip = statement[end..].len() - statement[end..].trim_start().len();
            rest = end + skip;
        }
        from = end;
    }
    out.push_str(&statement[rest..]);
    out
}

/// What [`apply`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Applied {
    pub statements: usize,
    /// Statements that failed with "already exists" and were skipped.
    pub tolerated: usize,
}

/// Runs the Up sections of `migrations`, in the order given.
pub async fn apply(
    client: &tokio_postgres::Client,
    migrations: &[Migration],
) -> Result<Applied, String> {
    run(client, migrations.iter().map(|m| (m, &m.up))).await
}

/// Runs the Down sections of `migrations` in reverse order.
pub async fn revert(
    client: &tokio_postgres::Client,
    migrations: &[Migration],
) -> Result<Applied, String> {
    run(client, migrations.iter().rev().map(|m| (m, &m.down))).await
}

async fn run<'a>(
    client: &tokio_postgres::Client,
    steps: impl Iterator<Item = (&'a Migration, &'a Vec<String>)>,
) -> Result<Applied, String> {
    let mut applied = Applied::default();
    for (migration, statements) in steps {
        for statement in statements {
            let statement = strip_concurrently(statement);
            match client.batch_execute(&statement).await {
                Ok(()) => applied.statements += 1,
                Err(e) => {
                    let message = e
                        .as_db_error()
                        .map(|d| d.message().to_string())
                        .unwrap_or_else(|| e.to_string());
                    if message.contains("already exists") {
                        applied.tolerated += 1;
                    } else {
                        return Err(format!(
                            "{}: {message}\nin: {statement}",
                            migration.path.display()
                        ));
                    }
                }
            }
        }
    }
    Ok(applied)
}
