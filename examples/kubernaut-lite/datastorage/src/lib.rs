//! DataStorage: an HTTP service that stores audit events in PostgreSQL.
//!
//! The API port serves `/health`, `/health/ready` and
//! `/api/v1/audit/events`; the metrics port serves `/metrics`. See the
//! example's README for the configuration.

pub mod config;
pub mod db;
pub mod events;
pub mod log;
pub mod metrics;
pub mod server;

use config::Config;
use server::AppState;
use std::future::IntoFuture;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long in-flight requests may take to finish after SIGTERM.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds both ports and serves until SIGTERM or SIGINT.
pub async fn run(config: Config) -> std::io::Result<()> {
    let state = AppState {
        db: Arc::new(db::Db::new(&config.db)),
        metrics: Arc::new(metrics::Metrics::default()),
        redis_addr: config.redis_addr.clone(),
    };
    let bind = |port: u16| async move {
        TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding port {port}: {e}")))
    };
    let api_listener = bind(config.port).await?;
    let metrics_listener = bind(config.metrics_port).await?;
    log::event(
        "datastorage listening",
        &[
            ("api", &api_listener.local_addr()?.to_string()),
            ("metrics", &metrics_listener.local_addr()?.to_string()),
            (
                "database",
                &format!(
                    "{}@{}:{}/{}",
                    config.db.user, config.db.host, config.db.port, config.db.name
                ),
            ),
            ("redis", config.redis_addr.as_deref().unwrap_or("")),
        ],
    );

    // Connect in the background; readiness reports the outcome meanwhile.
    let db = state.db.clone();
    tokio::spawn(async move {
        while db.client().await.is_err() {
            tokio::time::sleep(Duration::from_secs(2)).await;
        }
    });

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let api = axum::serve(api_listener, server::api_router(state.clone()))
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future();
    let metrics = axum::serve(metrics_listener, server::metrics_router(state))
        .with_graceful_shutdown(stopped(stop_rx.clone()))
        .into_future();
    let servers = async { tokio::try_join!(api, metrics).map(|_| ()) };

    let signal = async {
        let signal = shutdown_signal().await;
        log::event("shutting down", &[("signal", signal)]);
        let _ = stop_tx.send(true);
        tokio::time::sleep(DRAIN_TIMEOUT).await;
    };
    tokio::select! {
        result = servers => result?,
        () = signal => log::event("requests still in flight after the drain timeout", &[]),
    }
    log::event("stopped", &[]);
    Ok(())
}

#[allow(
    clippy::expect_used,
    reason = "the stand-in service cannot drain without its handlers; failing to start is right"
)]
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}
