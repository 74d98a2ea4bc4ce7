//! The scheduler with fake tasks on tokio's paused clock: durations are exact,
//! so start times can be asserted to the second.

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::*;

/// A task that sleeps `seconds`, then succeeds (or fails when `fail`).
fn sleeper(
    seconds: u64,
    fail: bool,
) -> impl FnOnce(Arc<()>) -> BoxFuture<'static, Result<Outcome, TaskError>> + Send + 'static {
    move |_| {
        Box::pin(async move {
            tokio::time::sleep(Duration::from_secs(seconds)).await;
            if fail {
                Err(TaskError::msg("boom"))
            } else {
                Ok(Outcome::done())
            }
        })
    }
}

/// Two images, a cluster, their loads, PostgreSQL (needs only the cluster),
/// and Api (needs its image loaded and PostgreSQL).
fn sample() -> Plan<()> {
    let mut plan = Plan::new();
    let build_a = plan.task("build api", TaskKind::Build, &[], sleeper(10, false));
    let build_b = plan.task("build web", TaskKind::Build, &[], sleeper(20, false));
    let cluster = plan.task("create cluster", TaskKind::Cluster, &[], sleeper(5, false));
    let load_a = plan.task(
        "load api",
        TaskKind::Load,
        &[build_a, cluster],
        sleeper(2, false),
    );
    plan.task(
        "load web",
        TaskKind::Load,
        &[build_b, cluster],
        sleeper(2, false),
    );
    let pg = plan.task(
        "deploy postgresql",
        TaskKind::Deploy,
        &[cluster],
        sleeper(3, false),
    );
    plan.task(
        "deploy api",
        TaskKind::Deploy,
        &[load_a, pg],
        sleeper(1, false),
    );
    plan
}

fn start(execution: &Execution, name: &str) -> f64 {
    let task = execution.tasks.iter().find(|t| t.name == name).unwrap();
    task.start_seconds.round()
}

async fn run(plan: Plan<()>, pattern: Pattern) -> Execution {
    execute(
        plan,
        pattern,
        Arc::new(()),
        &Silent,
        CancellationToken::new(),
    )
    .await
}

#[tokio::test(start_paused = true)]
async fn pipelined_overlaps_the_cluster_with_builds_and_deploys_early() {
    let e = run(sample(), Pattern::Pipelined).await;
    assert!(e.ok());
    assert_eq!(start(&e, "create cluster"), 0.0);
    assert_eq!(
        start(&e, "deploy postgresql"),
        5.0,
        "PostgreSQL waits for no build"
    );
    assert_eq!(start(&e, "load api"), 10.0);
    assert_eq!(start(&e, "load web"), 20.0);
    assert_eq!(start(&e, "deploy api"), 12.0);
    assert_eq!(e.wall_seconds.round(), 22.0);
    let (chain, length) = critical_path(&e.tasks);
    let names: Vec<&str> = chain.iter().map(|&i| e.tasks[i].name.as_str()).collect();
    assert_eq!(names, ["build web", "load web"]);
    assert_eq!(length.round(), 22.0);
}

#[tokio::test(start_paused = true)]
async fn hybrid_creates_the_cluster_after_every_build() {
    let e = run(sample(), Pattern::Hybrid).await;
    assert!(e.ok());
    assert_eq!(start(&e, "create cluster"), 20.0);
    assert_eq!(start(&e, "load api"), 25.0);
    assert_eq!(start(&e, "deploy postgresql"), 25.0);
    assert_eq!(e.wall_seconds.round(), 29.0);
}

#[tokio::test(start_paused = true)]
async fn standard_builds_one_at_a_time_after_the_cluster_and_deploys_last() {
    let e = run(sample(), Pattern::Standard).await;
    assert!(e.ok());
    assert_eq!(start(&e, "create cluster"), 0.0);
    assert_eq!(start(&e, "build api"), 5.0);
    assert_eq!(start(&e, "load api"), 15.0);
    assert_eq!(start(&e, "build web"), 17.0);
    assert_eq!(start(&e, "load web"), 37.0);
    assert_eq!(start(&e, "deploy postgresql"), 39.0);
    assert_eq!(e.wall_seconds.round(), 43.0);

    // The same durations under the natural dependencies: what pipelining
    // would have taken.
    let natural: Vec<Vec<usize>> = sample()
        .schedule(Pattern::Pipelined)
        .into_iter()
        .map(|t| t.deps)
        .collect();
    assert_eq!(lower_bound(&e.tasks, &natural).round(), 22.0);
}

#[tokio::test(start_paused = true)]
async fn the_first_failure_cancels_the_rest_and_is_reported() {
    let mut plan = Plan::new();
    let slow = plan.task("build slow", TaskKind::Build, &[], sleeper(10, false));
    plan.task("create cluster", TaskKind::Cluster, &[], sleeper(3, true));
    plan.task("load slow", TaskKind::Load, &[slow], sleeper(1, false));
    let e = run(plan, Pattern::Pipelined).await;
    assert!(!e.ok());
    assert_eq!(
        e.failure,
        Some(("create cluster".to_string(), "boom".to_string()))
    );
    assert_eq!(e.tasks[0].state, TaskState::Cancelled);
    assert_eq!(
        e.tasks[0].end_seconds.round(),
        3.0,
        "stopped at the failure"
    );
    assert_eq!(e.tasks[2].state, TaskState::NotRun);
    assert_eq!(e.wall_seconds.round(), 3.0);
}

#[tokio::test(start_paused = true)]
async fn cancellation_stops_tasks_in_flight() {
    let mut plan = Plan::new();
    plan.task("build", TaskKind::Build, &[], sleeper(60, false));
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(2)).await;
        trigger.cancel();
    });
    let e = execute(plan, Pattern::Pipelined, Arc::new(()), &Silent, cancel).await;
    assert!(e.cancelled && !e.ok());
    assert_eq!(e.tasks[0].state, TaskState::Cancelled);
    assert_eq!(e.wall_seconds.round(), 2.0);
}

#[tokio::test(start_paused = true)]
async fn a_panicking_task_is_a_failure_named_after_it() {
    let mut plan: Plan<()> = Plan::new();
    plan.task("deploy broken", TaskKind::Deploy, &[], |_| async {
        panic!("bug in a task");
        #[allow(unreachable_code)]
        Ok(Outcome::done())
    });
    let e = run(plan, Pattern::Pipelined).await;
    let (task, message) = e.failure.unwrap();
    assert_eq!(task, "deploy broken");
    assert!(message.contains("panicked"), "{message}");
}

#[test]
fn builds_that_no_load_takes_are_left_alone_by_every_pattern() {
    let mut plan = sample();
    plan.task("build suite", TaskKind::Build, &[], sleeper(1, false));
    for pattern in [Pattern::Standard, Pattern::Hybrid, Pattern::Pipelined] {
        let scheduled = plan.schedule(pattern);
        let suite = scheduled.last().unwrap();
        assert!(suite.deps.is_empty(), "{pattern}: {:?}", suite.deps);
        let cluster = &scheduled[2];
        assert!(
            !cluster.deps.contains(&7),
            "{pattern}: the cluster does not wait for it"
        );
    }
}

#[test]
fn patterns_parse_and_standard_serialises_builds_through_their_loads() {
    assert_eq!("hybrid".parse::<Pattern>().unwrap(), Pattern::Hybrid);
    assert!("fast".parse::<Pattern>().unwrap_err().contains("pipelined"));
    let scheduled = sample().schedule(Pattern::Standard);
    // build web (1) waits for the cluster (2) and for load api (3).
    assert_eq!(scheduled[1].deps, vec![2, 3]);
    // deploy postgresql (5) waits for both loads (3, 4).
    assert_eq!(scheduled[5].deps, vec![2, 3, 4]);
}
