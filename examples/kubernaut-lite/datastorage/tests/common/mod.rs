//! Helpers shared by the integration tests: a throwaway PostgreSQL server, a
//! goose-style migration applier, a tiny HTTP client and the service binary
//! as a child process.
#![allow(dead_code)]

pub mod http;
pub mod migrations;
pub mod pg;
pub mod service;

use std::net::TcpListener;
use std::path::PathBuf;

/// Whether this run must not skip (CI sets `CI=true`).
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
}

/// Reports why a test cannot run: a skip locally, a failure under `CI=true`.
pub fn skip(test: &str, why: &str) {
    if ci() {
        panic!("{test}: {why} (required because CI=true)");
    }
    eprintln!("SKIPPED {test}: {why}");
}

/// A TCP port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding an ephemeral port")
}

/// `examples/kubernaut-lite`, the images' build context.
pub fn example_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the crate lives in the example")
        .to_path_buf()
}

/// The example's `migrations/` folder.
pub fn migrations_dir() -> PathBuf {
    example_root().join("migrations")
}

/// Runs `future` on a fresh single-threaded runtime (the tests are sync).
pub fn block_on<F: Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a tokio runtime")
        .block_on(future)
}
