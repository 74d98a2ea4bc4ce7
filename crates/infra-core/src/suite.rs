//! What every service's E2E suite (`crates/<service>-e2e/tests/e2e.rs`) needs
//! (with the `testing` feature): the environment `cargo xtask e2e` set up, a
//! client of its cluster, JSON over HTTP to its host ports, and a bounded
//! wait. A suite test that needs running workloads calls [`workloads_run`]
//! and returns early when it says no: it prints `SKIPPED <test>: <why>`, which
//! the run counts as skipped, never as passed.

#![allow(
    clippy::expect_used,
    clippy::unwrap_used,
    reason = "suite helpers: a failure is the calling test's failure"
)]

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};

use crate::run::SuiteEnv;

/// The environment this suite runs in.
///
/// # Panics
/// When the suite was not started by `cargo xtask e2e` (saying so).
pub fn env() -> SuiteEnv {
    SuiteEnv::from_env().unwrap_or_else(|why| panic!("{why}"))
}

/// False (after printing `SKIPPED <test>: ...`) when workloads do not run in
/// this environment (the simulated cluster).
pub fn workloads_run(env: &SuiteEnv, test: &str) -> bool {
    if env.runs_workloads() {
        return true;
    }
    println!(
        "SKIPPED {test}: the {} cluster runs no containers",
        env.provider
    );
    false
}

/// A client of the environment's cluster.
pub async fn client(env: &SuiteEnv) -> kube::Client {
    crate::cluster::client_from_kubeconfig(&env.kubeconfig)
        .await
        .unwrap()
}

/// The endpoint named `name`, or a panic listing the ones there are.
pub fn endpoint<'a>(env: &'a SuiteEnv, name: &str) -> &'a str {
    env.endpoints.get(name).unwrap_or_else(|| {
        panic!(
            "no endpoint `{name}` in the environment (endpoints: {:?})",
            env.endpoints.keys().collect::<Vec<_>>()
        )
    })
}

/// Sends `body` as JSON with `method` to `url` (plain HTTP) and returns the
/// status and the answer as JSON (`Null` when it is not JSON), within 10 s.
pub async fn request(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let (status, bytes) = request_bytes(method, url, body).await;
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null),
    )
}

/// [`request`], the answer as bytes.
pub async fn request_bytes(
    method: &str,
    url: &str,
    body: Option<serde_json::Value>,
) -> (u16, Bytes) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = hyper::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), client.request(request))
        .await
        .unwrap_or_else(|_| panic!("{method} {url}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (status, bytes)
}

/// Polls `check` every 200 ms until it returns `Some`, for at most `timeout`;
/// panics naming `what` when it never does. For what the service does
/// asynchronously (a controller's status update, a file appearing).
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(start.elapsed() < timeout, "{what}: not within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
