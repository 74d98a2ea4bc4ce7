//! Where the time went: the run report (`report.json` and the table printed at
//! the end of a run), with the critical path and the lower bound the same task
//! durations would allow under the natural (pipelined) dependencies.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::cluster::Provider;
use crate::plan::{Execution, Pattern, TaskRecord, TaskState, critical_path, lower_bound};

/// The cluster a run used.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterRef {
    pub provider: Provider,
    pub name: String,
}

/// The report of one run. Its JSON form is a contract scripts rely on:
/// exactly these fields, times in seconds relative to the run's start.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunReport {
    pub service: String,
    pub pattern: Pattern,
    pub cluster: ClusterRef,
    pub ok: bool,
    /// A signal (Ctrl-C, SIGTERM, SIGHUP) cancelled the run: never ok.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub interrupted: bool,
    pub wall_seconds: f64,
    pub critical_path_seconds: f64,
    pub tasks: Vec<TaskRecord>,
    /// The first failure (task, message), shown in the table, not in the JSON.
    #[serde(skip)]
    pub failure: Option<(String, String)>,
    /// A coverage run's results ([`crate::coverage`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub coverage: Option<crate::coverage::CoverageReport>,
    /// Critical-path task indexes, first to last.
    #[serde(skip)]
    pub critical_path: Vec<usize>,
    /// What the same durations would take under the natural dependencies.
    #[serde(skip)]
    pub pipelined_bound_seconds: f64,
}

impl RunReport {
    /// Marks the run interrupted by a signal: not ok, whatever its tasks
    /// did (a suite that exits 0 on SIGINT, or a signal after the last task,
    /// must not pass).
    pub fn mark_interrupted(&mut self) {
        self.interrupted = true;
        self.ok = false;
        if self.failure.is_none() {
            self.failure = Some((
                "run".into(),
                "interrupted by a signal; what the run created was removed unless kept".into(),
            ));
        }
    }

    /// Builds the report of `execution`; `natural_deps` are the plan's
    /// pipelined dependencies (from `Plan::schedule(Pattern::Pipelined)`).
    pub fn new(
        service: &str,
        pattern: Pattern,
        cluster: ClusterRef,
        execution: &Execution,
        natural_deps: &[Vec<usize>],
    ) -> RunReport {
        let (path, length) = critical_path(&execution.tasks);
        RunReport {
            service: service.to_string(),
            pattern,
            cluster,
            ok: execution.ok(),
            interrupted: execution.cancelled,
            wall_seconds: execution.wall_seconds,
            critical_path_seconds: length,
            tasks: execution.tasks.clone(),
            failure: execution.failure.clone(),
            coverage: None,
            critical_path: path,
            pipelined_bound_seconds: lower_bound(&execution.tasks, natural_deps),
        }
    }

    /// The JSON contract, one line.
    #[allow(clippy::expect_used, reason = "plain data: serialising cannot fail")]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report serialises")
    }

    /// Writes `report.json` into `dir`.
    #[allow(clippy::expect_used, reason = "plain data: serialising cannot fail")]
    pub fn write(&self, dir: &Path) -> std::io::Result<PathBuf> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("report.json");
        std::fs::write(
            &path,
            serde_json::to_vec_pretty(self).expect("a report serialises"),
        )?;
        Ok(path)
    }

    /// The table printed at the end of a run.
    pub fn table(&self) -> String {
        let width = self
            .tasks
            .iter()
            .map(|t| t.name.len())
            .max()
            .unwrap_or(4)
            .max(4);
        let mut out = format!(
            "{:<width$}  {:<7}  {:>7}  {:>7}  {:>8}  {}\n",
            "task", "kind", "start", "end", "duration", "note"
        );
        for (i, task) in self.tasks.iter().enumerate() {
            let on_path = if self.critical_path.contains(&i) {
                "*"
            } else {
                " "
            };
            let (start, end, duration) = match task.state {
                TaskState::NotRun => ("-".to_string(), "-".to_string(), "-".to_string()),
                _ => (
                    format!("{:.1}s", task.start_seconds),
                    format!("{:.1}s", task.end_seconds),
                    format!("{:.1}s", task.end_seconds - task.start_seconds),
                ),
            };
            let note = match &task.state {
                TaskState::Failed(_) => "FAILED".to_string(),
                TaskState::Cancelled => "cancelled".to_string(),
                TaskState::NotRun => "not run".to_string(),
                TaskState::Succeeded if task.cached => {
                    format!("cached {}", task.note.clone().unwrap_or_default())
                }
                TaskState::Succeeded => task.note.clone().unwrap_or_default(),
            };
            out.push_str(&format!(
                "{on_path}{:<width$}  {:<7}  {:>7}  {:>7}  {:>8}  {}\n",
                task.name,
                serde_json::to_value(task.kind)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                start,
                end,
                duration,
                note.trim()
            ));
        }
        let path: Vec<&str> = self
            .critical_path
            .iter()
            .map(|&i| self.tasks[i].name.as_str())
            .collect();
        out.push_str(&format!(
            "\n{} {} on {} {}: {} in {:.1}s\n",
            self.service,
            self.pattern,
            self.cluster.provider,
            self.cluster.name,
            if self.ok { "ok" } else { "FAILED" },
            self.wall_seconds
        ));
        out.push_str(&format!(
            "critical path (*) {:.1}s: {}\n",
            self.critical_path_seconds,
            path.join(" → ")
        ));
        if self.pattern != Pattern::Pipelined {
            out.push_str(&format!(
                "the same task times, pipelined, would take at least {:.1}s\n",
                self.pipelined_bound_seconds
            ));
        }
        if let Some(coverage) = &self.coverage {
            out.push_str(&coverage.lines());
        }
        if let Some((task, message)) = &self.failure {
            out.push_str(&format!("\nfailed: {task}: {message}\n"));
        }
        out
    }
}

/// A task's record for tests and reports built by hand.
pub fn record(
    name: &str,
    kind: crate::plan::TaskKind,
    start: f64,
    end: f64,
    deps: Vec<usize>,
) -> TaskRecord {
    TaskRecord {
        name: name.into(),
        kind,
        start_seconds: start,
        end_seconds: end,
        cached: false,
        deps,
        state: TaskState::Succeeded,
        note: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::TaskKind;

    fn execution() -> Execution {
        let mut tasks = vec![
            record("build api", TaskKind::Build, 0.0, 10.0, vec![]),
            record(
                "create cluster api-e2e",
                TaskKind::Cluster,
                10.0,
                15.0,
                vec![0],
            ),
            record("load api", TaskKind::Load, 15.0, 17.0, vec![0, 1]),
            record("deploy postgresql", TaskKind::Deploy, 15.0, 16.0, vec![1]),
        ];
        tasks[0].cached = true;
        Execution {
            tasks,
            failure: None,
            cancelled: false,
            wall_seconds: 17.0,
        }
    }

    #[test]
    fn json_has_exactly_the_contract_fields() {
        let natural = vec![vec![], vec![], vec![0, 1], vec![1]];
        let report = RunReport::new(
            "api",
            Pattern::Hybrid,
            ClusterRef {
                provider: Provider::Sim,
                name: "api-e2e".into(),
            },
            &execution(),
            &natural,
        );
        let value: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        let mut keys: Vec<&String> = value.as_object().unwrap().keys().collect();
        keys.sort();
        assert_eq!(
            keys,
            [
                "cluster",
                "critical_path_seconds",
                "ok",
                "pattern",
                "service",
                "tasks",
                "wall_seconds"
            ]
        );
        assert_eq!(value["pattern"], "hybrid");
        assert_eq!(value["cluster"]["provider"], "sim");
        let task = value["tasks"][0].as_object().unwrap();
        let mut task_keys: Vec<&String> = task.keys().collect();
        task_keys.sort();
        assert_eq!(
            task_keys,
            ["cached", "end_seconds", "kind", "name", "start_seconds"]
        );
        assert_eq!(value["tasks"][0]["cached"], true);
        assert_eq!(value["tasks"][1]["kind"], "cluster");
        assert_eq!(report.critical_path_seconds, 17.0);
        assert_eq!(report.pipelined_bound_seconds, 12.0);
        let table = report.table();
        assert!(
            table.contains("critical path (*) 17.0s: build api → create cluster"),
            "{table}"
        );
        assert!(
            table.contains("pipelined, would take at least 12.0s"),
            "{table}"
        );
        let dir = tempfile::tempdir().unwrap();
        let path = report.write(dir.path()).unwrap();
        assert!(
            std::fs::read_to_string(path)
                .unwrap()
                .contains("\"service\": \"api\"")
        );
    }
}
