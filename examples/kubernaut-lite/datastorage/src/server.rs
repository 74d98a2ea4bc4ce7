//! The HTTP routers: the API (with the health probes) and the metrics port.

use crate::db::{Db, DbError};
use crate::events::{self, ValidationError};
use crate::log;
use crate::metrics::Metrics;
use axum::body::Bytes;
use axum::extract::rejection::QueryRejection;
use axum::extract::{MatchedPath, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

const REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub db: Arc<Db>,
    pub metrics: Arc<Metrics>,
    pub redis_addr: Option<String>,
}

/// The API port: health probes and the audit events API.
pub fn api_router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/health/ready", get(ready))
        .route("/api/v1/audit/events", get(list_events).post(create_event))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// The metrics port: `GET /metrics`.
pub fn metrics_router(state: AppState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(middleware::from_fn(log_only))
        .with_state(state)
}

/// Logs one line per request and counts it.
async fn observe(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = request.method().to_string();
    let response = log_request(request, next).await;
    state
        .metrics
        .record_request(&method, &route, response.status().as_u16());
    response
}

async fn log_only(request: Request, next: Next) -> Response {
    log_request(request, next).await
}

async fn log_request(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = request.method().to_string();
    let path = request.uri().path().to_string();
    let response = next.run(request).await;
    let mut fields = serde_json::Map::new();
    fields.insert("method".into(), method.into());
    fields.insert("path".into(), path.into());
    fields.insert("status".into(), response.status().as_u16().into());
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    fields.insert(
        "duration_ms".into(),
        ((millis * 1000.0).round() / 1000.0).into(),
    );
    log::line("request", fields);
    response
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, Json(json!({"error": "not found"}))).into_response()
}

async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the database answers, the migrated tables exist and, if
/// configured, Redis accepts a TCP connection.
async fn ready(State(state): State<AppState>) -> Response {
    let mut reasons = Vec::new();
    let mut body = serde_json::Map::new();
    match state.db.schema_status().await {
        Ok(status) if status.missing_tables.is_empty() => {}
        Ok(status) => {
            let names = status.missing_tables.join(", ");
            reasons.push(if status.missing_tables.len() == 1 {
                format!("table {names} does not exist: run the migrations")
            } else {
                format!("tables {names} do not exist: run the migrations")
            });
            body.insert("missing_tables".into(), json!(status.missing_tables));
        }
        Err(e) => reasons.push(e.to_string()),
    }
    if let Some(addr) = &state.redis_addr {
        let connect = tokio::net::TcpStream::connect(addr.as_str());
        match tokio::time::timeout(REDIS_TIMEOUT, connect).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => reasons.push(format!("redis at {addr} unreachable: {e}")),
            Err(_) => reasons.push(format!(
                "redis at {addr} unreachable: no connection within {REDIS_TIMEOUT:?}"
            )),
        }
    }
    if reasons.is_empty() {
        return (StatusCode::OK, Json(json!({"status": "ready"}))).into_response();
    }
    body.insert("status".into(), "not ready".into());
    body.insert("reason".into(), reasons.join("; ").into());
    (StatusCode::SERVICE_UNAVAILABLE, Json(Value::Object(body))).into_response()
}

fn invalid(error: ValidationError) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({
            "error": error.message,
            "field": error.field,
        })),
    )
        .into_response()
}

fn db_failure(error: DbError) -> Response {
    let status = match error {
        DbError::Unavailable(_) | DbError::MissingSchema(_) => StatusCode::SERVICE_UNAVAILABLE,
        DbError::Query(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    log::event("database call failed", &[("error", &error.to_string())]);
    (status, Json(json!({"error": error.to_string()}))).into_response()
}

async fn create_event(State(state): State<AppState>, body: Bytes) -> Response {
    let event = match events::parse_new_event(&body) {
        Ok(event) => event,
        Err(e) => return invalid(e),
    };
    match state.db.insert_event(&event).await {
        Ok(event_id) => {
            state.metrics.record_event_written();
            (StatusCode::CREATED, Json(json!({"event_id": event_id}))).into_response()
        }
        Err(e) => db_failure(e),
    }
}

async fn list_events(
    State(state): State<AppState>,
    params: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let params = match params {
        Ok(Query(params)) => params,
        Err(e) => {
            return invalid(ValidationError {
                field: "query",
                message: e.body_text(),
            });
        }
    };
    let query = match events::parse_list_query(&params) {
        Ok(query) => query,
        Err(e) => return invalid(e),
    };
    match state.db.list_events(&query).await {
        Ok((data, total)) => Json(json!({
            "data": data,
            "pagination": {"limit": query.limit, "total": total},
        }))
        .into_response(),
        Err(e) => db_failure(e),
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let text = state.metrics.render(state.db.connected().await);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}
