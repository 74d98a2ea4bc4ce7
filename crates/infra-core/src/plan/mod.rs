//! A service's setup as a graph of tasks, and one scheduler that runs it.
//!
//! A [`Plan`] holds tasks (build an image, create the cluster, load an image,
//! deploy or wait for a component, run the suite) with their *natural*
//! dependencies: what each truly needs. A [`Pattern`] adds edges to that graph
//! to reproduce a way of working:
//!
//! - [`Pattern::Pipelined`] (default): nothing added. The cluster is created
//!   while images build, each load starts when its image and the cluster are
//!   ready, each deploy when its inputs are.
//! - [`Pattern::Hybrid`]: the cluster waits for every image build (the
//!   original's "build first" way).
//! - [`Pattern::Standard`]: every image build waits for the cluster, image
//!   builds run one after another (each after the previous image's load), and
//!   every deploy waits for every load (the original's old way).
//!
//! Only *image* builds (builds a load depends on) are ordered by a pattern;
//! another build, like compiling the test suite, runs from the start in all.
//!
//! [`execute`] runs the graph on tokio: a task starts the moment its
//! dependencies are done; the first failure cancels the rest; every task is
//! timed. The scheduler knows nothing about images or clusters: tasks are
//! closures over a shared context `C`, so it is tested with fake tasks.

pub mod setup;

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use futures::future::BoxFuture;
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What a task acts on, for reports and for the patterns' rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskKind {
    Build,
    Cluster,
    Load,
    Deploy,
    Wait,
    Test,
}

/// How the same tasks are scheduled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Pattern {
    Standard,
    Hybrid,
    #[default]
    Pipelined,
}

impl std::str::FromStr for Pattern {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "standard" => Ok(Pattern::Standard),
            "hybrid" => Ok(Pattern::Hybrid),
            "pipelined" => Ok(Pattern::Pipelined),
            other => Err(format!(
                "unknown pattern `{other}`: use standard, hybrid or pipelined"
            )),
        }
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pattern::Standard => "standard",
            Pattern::Hybrid => "hybrid",
            Pattern::Pipelined => "pipelined",
        })
    }
}

/// A task's handle inside its plan.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TaskId(pub usize);

/// What a task reports when it succeeds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Nothing had to be done (image already built, already loaded, ...).
    pub cached: bool,
    /// A short note for the progress display and the report.
    pub note: Option<String>,
}

impl Outcome {
    pub fn done() -> Outcome {
        Outcome::default()
    }

    pub fn cached(cached: bool) -> Outcome {
        Outcome { cached, note: None }
    }

    #[must_use]
    pub fn note(mut self, note: impl Into<String>) -> Outcome {
        self.note = Some(note.into());
        self
    }
}

/// Why a task failed: its message is the whole error chain, already saying
/// what failed and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct TaskError {
    pub message: String,
}

impl TaskError {
    pub fn new(error: &(dyn std::error::Error + 'static)) -> TaskError {
        TaskError {
            message: crate::error_chain(error),
        }
    }

    pub fn msg(message: impl Into<String>) -> TaskError {
        TaskError {
            message: message.into(),
        }
    }
}

type Action<C> = Box<dyn FnOnce(Arc<C>) -> BoxFuture<'static, Result<Outcome, TaskError>> + Send>;

struct TaskDef<C> {
    name: String,
    kind: TaskKind,
    deps: Vec<TaskId>,
    action: Action<C>,
}

/// The tasks of one service's setup.
pub struct Plan<C> {
    tasks: Vec<TaskDef<C>>,
}

impl<C> Default for Plan<C> {
    fn default() -> Self {
        Plan { tasks: Vec::new() }
    }
}

/// A task as scheduled: name, kind, and its dependencies under a pattern.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ScheduledTask {
    pub name: String,
    pub kind: TaskKind,
    pub deps: Vec<usize>,
}

impl<C: Send + Sync + 'static> Plan<C> {
    pub fn new() -> Plan<C> {
        Plan::default()
    }

    /// Adds a task that runs `action` once every task in `deps` succeeded.
    pub fn task<F, Fut>(
        &mut self,
        name: impl Into<String>,
        kind: TaskKind,
        deps: &[TaskId],
        action: F,
    ) -> TaskId
    where
        F: FnOnce(Arc<C>) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<Outcome, TaskError>> + Send + 'static,
    {
        let id = TaskId(self.tasks.len());
        for dep in deps {
            assert!(
                dep.0 < id.0,
                "dependencies must be added before their dependents"
            );
        }
        self.tasks.push(TaskDef {
            name: name.into(),
            kind,
            deps: deps.to_vec(),
            action: Box::new(move |ctx| Box::pin(action(ctx))),
        });
        id
    }

    pub fn len(&self) -> usize {
        self.tasks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    /// The tasks with the dependencies `pattern` gives them.
    pub fn schedule(&self, pattern: Pattern) -> Vec<ScheduledTask> {
        schedule(
            &self
                .tasks
                .iter()
                .map(|t| (t.name.clone(), t.kind, t.deps.clone()))
                .collect::<Vec<_>>(),
            pattern,
        )
    }
}

/// Adds `pattern`'s edges to the natural graph (name, kind, deps per task).
fn schedule(tasks: &[(String, TaskKind, Vec<TaskId>)], pattern: Pattern) -> Vec<ScheduledTask> {
    let of_kind = |kind: TaskKind| -> Vec<usize> {
        tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.1 == kind)
            .map(|(i, _)| i)
            .collect()
    };
    let mut deps: Vec<BTreeSet<usize>> = tasks
        .iter()
        .map(|t| t.2.iter().map(|d| d.0).collect())
        .collect();
    let clusters = of_kind(TaskKind::Cluster);
    let loads = of_kind(TaskKind::Load);
    // The patterns order *image* builds (those a load takes) against the
    // cluster; other builds (a test suite's compile) are free in every pattern.
    let image_builds: Vec<usize> = of_kind(TaskKind::Build)
        .into_iter()
        .filter(|b| loads.iter().any(|&l| deps[l].contains(b)))
        .collect();
    match pattern {
        Pattern::Pipelined => {}
        Pattern::Hybrid => {
            for &cluster in &clusters {
                deps[cluster].extend(&image_builds);
            }
        }
        Pattern::Standard => {
            let mut previous_load: Option<usize> = None;
            for &build in &image_builds {
                deps[build].extend(&clusters);
                deps[build].extend(previous_load);
                // The load of this image: a load task that depends on it.
                previous_load = loads.iter().copied().find(|&l| deps[l].contains(&build));
            }
            for (i, task) in tasks.iter().enumerate() {
                if matches!(task.1, TaskKind::Deploy | TaskKind::Wait | TaskKind::Test) {
                    deps[i].extend(&loads);
                }
            }
        }
    }
    tasks
        .iter()
        .zip(deps)
        .map(|(t, d)| ScheduledTask {
            name: t.0.clone(),
            kind: t.1,
            deps: d.into_iter().collect(),
        })
        .collect()
}

/// How one task went.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TaskRecord {
    pub name: String,
    pub kind: TaskKind,
    /// Seconds since the run started.
    pub start_seconds: f64,
    pub end_seconds: f64,
    pub cached: bool,
    #[serde(skip)]
    pub deps: Vec<usize>,
    #[serde(skip)]
    pub state: TaskState,
    /// What was done, or why it failed (the table's note column).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// Where a task ended up.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TaskState {
    /// Never started (a dependency failed, or the run was cancelled first).
    #[default]
    NotRun,
    Succeeded,
    Failed(String),
    Cancelled,
}

/// Progress callbacks, for spinners or plain lines.
pub trait Observer: Send + Sync {
    fn started(&self, _task: &str, _kind: TaskKind) {}
    fn finished(&self, _task: &str, _outcome: &Outcome, _seconds: f64) {}
    fn failed(&self, _task: &str, _error: &str, _seconds: f64) {}
}

/// An observer that shows nothing.
pub struct Silent;
impl Observer for Silent {}

/// The result of [`execute`]: every task's record (in plan order), and the
/// first failure.
#[derive(Debug, Clone)]
pub struct Execution {
    pub tasks: Vec<TaskRecord>,
    pub failure: Option<(String, String)>,
    pub cancelled: bool,
    pub wall_seconds: f64,
}

impl Execution {
    pub fn ok(&self) -> bool {
        self.failure.is_none() && !self.cancelled
    }
}

/// Runs `plan` under `pattern`. Returns when every task has finished, or after
/// the first failure or `cancel` has stopped the tasks in flight (they are
/// aborted: their futures are dropped, which ends their engine requests).
#[allow(clippy::expect_used, reason = "the executor starts each task once")]
pub async fn execute<C: Send + Sync + 'static>(
    plan: Plan<C>,
    pattern: Pattern,
    context: Arc<C>,
    observer: &dyn Observer,
    cancel: CancellationToken,
) -> Execution {
    let scheduled = plan.schedule(pattern);
    let started = Instant::now();
    let mut actions: Vec<Option<Action<C>>> =
        plan.tasks.into_iter().map(|t| Some(t.action)).collect();
    let mut records: Vec<TaskRecord> = scheduled
        .iter()
        .map(|t| TaskRecord {
            name: t.name.clone(),
            kind: t.kind,
            start_seconds: 0.0,
            end_seconds: 0.0,
            cached: false,
            deps: t.deps.clone(),
            state: TaskState::NotRun,
            note: None,
        })
        .collect();
    let mut running: JoinSet<(usize, Result<Outcome, TaskError>)> = JoinSet::new();
    let mut in_flight = BTreeSet::new();
    let mut task_ids: std::collections::HashMap<tokio::task::Id, usize> = Default::default();
    let mut failure: Option<(String, String)> = None;
    let mut cancelled = false;

    loop {
        if failure.is_none() && !cancelled {
            // Start everything whose dependencies all succeeded.
            let startable: Vec<usize> = (0..records.len())
                .filter(|&i| {
                    records[i].state == TaskState::NotRun
                        && !in_flight.contains(&i)
                        && scheduled[i]
                            .deps
                            .iter()
                            .all(|&d| records[d].state == TaskState::Succeeded)
                })
                .collect();
            for i in startable {
                let action = actions[i].take().expect("each task starts once");
                records[i].start_seconds = started.elapsed().as_secs_f64();
                observer.started(&records[i].name, records[i].kind);
                in_flight.insert(i);
                let context = context.clone();
                let handle = running.spawn(async move { (i, action(context).await) });
                task_ids.insert(handle.id(), i);
            }
        }
        if running.is_empty() {
            break;
        }
        tokio::select! {
            joined = running.join_next() => {
                let Some(joined) = joined else { break };
                let (i, result) = match joined {
                    Ok(done) => done,
                    // A panicking task is a failure like any other.
                    Err(e) if e.is_panic() => match task_ids.get(&e.id()) {
                        Some(&i) => (i, Err(TaskError::msg(format!("task panicked: {e}")))),
                        None => continue,
                    },
                    Err(_) => continue,
                };
                in_flight.remove(&i);
                let record = &mut records[i];
                record.end_seconds = started.elapsed().as_secs_f64();
                let seconds = record.end_seconds - record.start_seconds;
                match result {
                    Ok(outcome) => {
                        observer.finished(&record.name, &outcome, seconds);
                        record.cached = outcome.cached;
                        record.note = outcome.note;
                        record.state = TaskState::Succeeded;
                    }
                    Err(error) => {
                        observer.failed(&record.name, &error.message, seconds);
                        record.state = TaskState::Failed(error.message.clone());
                        if failure.is_none() {
                            failure = Some((record.name.clone(), error.message));
                        }
                        stop_in_flight(&mut running, &mut records, &in_flight, started);
                        in_flight.clear();
                    }
                }
            }
            () = cancel.cancelled(), if !cancelled && failure.is_none() => {
                cancelled = true;
                stop_in_flight(&mut running, &mut records, &in_flight, started);
                in_flight.clear();
            }
        }
    }
    Execution {
        tasks: records,
        failure,
        cancelled,
        wall_seconds: started.elapsed().as_secs_f64(),
    }
}

/// Aborts every task in flight and marks it cancelled at this instant.
fn stop_in_flight(
    running: &mut JoinSet<(usize, Result<Outcome, TaskError>)>,
    records: &mut [TaskRecord],
    in_flight: &BTreeSet<usize>,
    started: Instant,
) {
    running.abort_all();
    let now = started.elapsed().as_secs_f64();
    for &i in in_flight {
        records[i].state = TaskState::Cancelled;
        records[i].end_seconds = now;
    }
}

/// The chain of tasks that set the run's length: from the task that ended
/// last, back through the dependency that finished last each time. Returns
/// the chain (first to last) and its length in seconds, which is the lower
/// bound on the wall time these durations and dependencies allow.
pub fn critical_path(tasks: &[TaskRecord]) -> (Vec<usize>, f64) {
    let finished = |i: &usize| tasks[*i].state != TaskState::NotRun;
    let Some(mut current) = (0..tasks.len())
        .filter(finished)
        .max_by(|&a, &b| tasks[a].end_seconds.total_cmp(&tasks[b].end_seconds))
    else {
        return (Vec::new(), 0.0);
    };
    let mut chain = vec![current];
    while let Some(previous) = tasks[current]
        .deps
        .iter()
        .copied()
        .filter(finished)
        .max_by(|&a, &b| tasks[a].end_seconds.total_cmp(&tasks[b].end_seconds))
    {
        chain.push(previous);
        current = previous;
    }
    chain.reverse();
    let length = chain
        .iter()
        .map(|&i| (tasks[i].end_seconds - tasks[i].start_seconds).max(0.0))
        .sum();
    (chain, length)
}

/// The wall time the same task durations would take under `deps` (for
/// example the natural, pipelined dependencies of a run made under another
/// pattern): the longest path through the graph, by duration.
pub fn lower_bound(tasks: &[TaskRecord], deps: &[Vec<usize>]) -> f64 {
    let mut finish = vec![0.0f64; tasks.len()];
    for i in 0..tasks.len() {
        let start = deps[i].iter().map(|&d| finish[d]).fold(0.0, f64::max);
        finish[i] = start + (tasks[i].end_seconds - tasks[i].start_seconds).max(0.0);
    }
    finish.into_iter().fold(0.0, f64::max)
}

#[cfg(test)]
mod tests;
