//! The real `datastorage` binary against a real PostgreSQL server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]
mod common;

use common::http::{self, get, post, wait_for_status, wait_until};
use common::pg::PgServer;
use common::service::Service;
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;

const EVENTS: &str = "/api/v1/audit/events";

fn exe() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_datastorage"))
}

fn is_uuid(text: &str) -> bool {
    text.len() == 36
        && text.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        })
}

fn reason(response: &http::Response) -> String {
    response.json()["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn binary_is_ready_only_after_migrations_and_round_trips_events() {
    let Some(pg) = PgServer::start_with_app_db("binary_is_ready_only_after_migrations") else {
        return;
    };
    let mut svc = Service::spawn(exe(), &pg.service_env("127.0.0.1"));
    svc.wait_healthy();

    let health = get(svc.port, "/health");
    assert_eq!(health.status, 200);
    assert_eq!(health.json(), json!({"status": "ok"}));
    assert!(
        health
            .header("content-type")
            .unwrap()
            .contains("application/json")
    );

    // The database answers, but the schema is not there yet.
    let not_ready = wait_until(svc.port, "/health/ready", Duration::from_secs(10), |r| {
        !r.body.contains("database unavailable")
    });
    assert_eq!(not_ready.status, 503, "{}", not_ready.body);
    let body = not_ready.json();
    assert_eq!(body["status"], "not ready");
    assert_eq!(
        body["reason"],
        "tables audit_events, audit_retention_policies do not exist: run the migrations"
    );
    assert_eq!(
        body["missing_tables"],
        json!(["audit_events", "audit_retention_policies"])
    );
    // Writes fail the same way, without taking the service down.
    let early = post(
        svc.port,
        EVENTS,
        &json!({"event_type": "t", "correlation_id": "c"}),
    );
    assert_eq!(early.status, 503, "{}", early.body);
    assert!(
        early.json()["error"]
            .as_str()
            .unwrap()
            .contains("run the migrations")
    );

    // Half the schema is still not ready: the reason names what is missing.
    common::block_on(async {
        let client = pg.app_client().await;
        let migrations = common::migrations::load(&common::migrations_dir()).unwrap();
        common::migrations::apply(&client, &migrations[..1])
            .await
            .unwrap();
    });
    let partial = get(svc.port, "/health/ready");
    assert_eq!(partial.status, 503);
    assert_eq!(
        reason(&partial),
        "table audit_retention_policies does not exist: run the migrations"
    );

    pg.migrate();
    let ready = get(svc.port, "/health/ready");
    assert_eq!(ready.status, 200, "{}", ready.body);
    assert_eq!(ready.json(), json!({"status": "ready"}));

    // Round trip: two events under one correlation id, one under another.
    let first = json!({
        "event_type": "gateway.signal.received",
        "event_category": "gateway",
        "event_action": "received",
        "event_outcome": "success",
        "correlation_id": "rr-001",
        "actor_id": "gateway-service",
        "resource_type": "Signal",
        "resource_id": "fp-1",
        "event_data": {"alert": "HighMemory", "labels": {"ns": "prod"}, "count": 3}
    });
    let second = json!({
        "event_type": "remediation.started",
        "correlation_id": "rr-001",
        "event_data": [1, "two", null]
    });
    let other = json!({"event_type": "gateway.signal.received", "correlation_id": "rr-002"});
    let mut ids = Vec::new();
    for event in [&first, &second, &other] {
        let created = post(svc.port, EVENTS, event);
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.json()["event_id"].as_str().unwrap().to_string();
        assert!(is_uuid(&id), "{id}");
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1]);

    let listed = get(svc.port, &format!("{EVENTS}?correlation_id=rr-001"));
    assert_eq!(listed.status, 200, "{}", listed.body);
    let body = listed.json();
    assert_eq!(body["pagination"], json!({"limit": 50, "total": 2}));
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    // Newest first.
    assert_eq!(data[0]["event_id"], ids[1].as_str());
    assert_eq!(data[1]["event_id"], ids[0].as_str());
    assert_eq!(data[0]["event_data"], json!([1, "two", null]));
    assert_eq!(data[0]["event_category"], Value::Null);
    for field in [
        "event_type",
        "event_category",
        "event_action",
        "event_outcome",
        "correlation_id",
        "actor_id",
        "resource_type",
        "resource_id",
        "event_data",
    ] {
        assert_eq!(data[1][field], first[field], "{field}");
    }
    let stamp = data[1]["event_timestamp"].as_str().unwrap();
    assert!(stamp.ends_with('Z') && stamp.contains('T'), "{stamp}");
    assert!(data[0]["event_timestamp"].as_str().unwrap() > stamp);

    let limited = get(svc.port, &format!("{EVENTS}?correlation_id=rr-001&limit=1")).json();
    assert_eq!(limited["pagination"], json!({"limit": 1, "total": 2}));
    assert_eq!(limited["data"][0]["event_id"], ids[1].as_str());
    let by_type = get(
        svc.port,
        &format!("{EVENTS}?correlation_id=rr-001&event_type=gateway.signal.received"),
    )
    .json();
    assert_eq!(by_type["pagination"]["total"], 1);
    assert_eq!(by_type["data"][0]["event_id"], ids[0].as_str());
    let all = get(svc.port, EVENTS).json();
    assert_eq!(all["pagination"]["total"], 3);
    let none = get(svc.port, &format!("{EVENTS}?correlation_id=unknown")).json();
    assert_eq!(
        none,
        json!({"data": [], "pagination": {"limit": 50, "total": 0}})
    );

    // Bad requests name the field.
    let missing = post(svc.port, EVENTS, &json!({"correlation_id": "rr-003"}));
    assert_eq!(missing.status, 400);
    assert_eq!(missing.json()["field"], "event_type");
    assert!(
        missing.json()["error"]
            .as_str()
            .unwrap()
            .contains("event_type")
    );
    let wrong = post(
        svc.port,
        EVENTS,
        &json!({"event_type": "t", "correlation_id": 5}),
    );
    assert_eq!(wrong.status, 400);
    assert_eq!(wrong.json()["field"], "correlation_id");
    let garbage = http::request("POST", svc.port, EVENTS, Some("{not json")).unwrap();
    assert_eq!(garbage.status, 400);
    assert_eq!(garbage.json()["field"], "body");
    let bad_limit = get(svc.port, &format!("{EVENTS}?limit=0"));
    assert_eq!(bad_limit.status, 400);
    assert_eq!(bad_limit.json()["field"], "limit");
    assert_eq!(get(svc.port, EVENTS).json()["pagination"]["total"], 3);

    // Metrics on their own port.
    let metrics = get(svc.metrics_port, "/metrics");
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = metrics.body;
    assert!(
        text.contains("datastorage_audit_events_written_total 3\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "datastorage_http_requests_total{method=\"POST\",path=\"/api/v1/audit/events\",status=\"201\"} 3\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(
            "datastorage_http_requests_total{method=\"POST\",path=\"/api/v1/audit/events\",status=\"400\"} 3\n"
        ),
        "{text}"
    );
    assert!(text.contains("datastorage_db_connected 1\n"), "{text}");
    assert_eq!(get(svc.port, "/metrics").status, 404);

    // One log line per request, JSON, on stdout. The last request's line may
    // still be on its way through the pipe: wait for it, bounded.
    let requests_logged = || -> Vec<Value> {
        svc.output()
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["msg"] == "request")
            .collect()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let mut requests = requests_logged();
    while !requests.iter().any(|r| r["path"] == "/metrics") && std::time::Instant::now() < deadline
    {
        std::thread::sleep(std::time::Duration::from_millis(20));
        requests = requests_logged();
    }
    assert!(
        requests
            .iter()
            .any(|r| r["path"] == EVENTS && r["method"] == "POST" && r["status"] == 400),
        "{requests:?}"
    );
    assert!(requests.iter().any(|r| r["path"] == "/metrics"));

    // SIGTERM: a clean exit.
    let status = svc
        .terminate()
        .expect("datastorage did not stop within 20s of SIGTERM");
    assert!(status.success(), "{status}");
    let output = svc.output().join("\n");
    assert!(output.contains("\"signal\":\"SIGTERM\""), "{output}");
    assert!(output.contains("\"msg\":\"stopped\""), "{output}");
}

#[test]
fn binary_waits_for_the_database_and_survives_an_outage() {
    let mut pg = match PgServer::init() {
        Ok(pg) => pg,
        Err(why) => return common::skip("binary_waits_for_the_database", &why),
    };
    // The service starts first, as a pod may before PostgreSQL.
    let mut svc = Service::spawn(exe(), &pg.service_env("127.0.0.1"));
    svc.wait_healthy();
    let down = get(svc.port, "/health/ready");
    assert_eq!(down.status, 503);
    assert!(
        reason(&down).starts_with("database unavailable"),
        "{}",
        down.body
    );
    assert_eq!(get(svc.port, "/health").status, 200);

    pg.start();
    pg.create_app_db();
    pg.migrate();
    wait_for_status(svc.port, "/health/ready", 200, Duration::from_secs(15));
    let created = post(
        svc.port,
        EVENTS,
        &json!({"event_type": "a", "correlation_id": "out"}),
    );
    assert_eq!(created.status, 201, "{}", created.body);

    // Outage: readiness says so, liveness does not, the process stays up.
    pg.stop();
    let during = wait_for_status(svc.port, "/health/ready", 503, Duration::from_secs(15));
    assert!(
        reason(&during).starts_with("database unavailable"),
        "{}",
        during.body
    );
    assert_eq!(get(svc.port, "/health").status, 200);
    let refused = post(
        svc.port,
        EVENTS,
        &json!({"event_type": "b", "correlation_id": "out"}),
    );
    assert_eq!(refused.status, 503, "{}", refused.body);
    assert!(
        get(svc.metrics_port, "/metrics")
            .body
            .contains("datastorage_db_connected 0\n")
    );
    assert!(svc.running());

    pg.start();
    wait_for_status(svc.port, "/health/ready", 200, Duration::from_secs(15));
    let created = post(
        svc.port,
        EVENTS,
        &json!({"event_type": "c", "correlation_id": "out"}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let listed = get(svc.port, &format!("{EVENTS}?correlation_id=out")).json();
    assert_eq!(listed["pagination"]["total"], 2);
    assert_eq!(listed["data"][0]["event_type"], "c");
    assert!(
        svc.output()
            .iter()
            .any(|l| l.contains("database connection"))
    );
}

#[test]
fn redis_addr_gates_readiness() {
    let Some(pg) = PgServer::start_with_app_db("redis_addr_gates_readiness") else {
        return;
    };
    pg.migrate();
    let redis = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redis_addr = redis.local_addr().unwrap().to_string();
    let mut env = pg.service_env("127.0.0.1");
    env.push(("REDIS_ADDR", redis_addr.clone()));
    let mut svc = Service::spawn(exe(), &env);
    svc.wait_healthy();
    wait_for_status(svc.port, "/health/ready", 200, Duration::from_secs(10));

    drop(redis);
    let not_ready = get(svc.port, "/health/ready");
    assert_eq!(not_ready.status, 503);
    assert!(
        reason(&not_ready).starts_with(&format!("redis at {redis_addr} unreachable")),
        "{}",
        not_ready.body
    );
}

#[test]
fn binary_refuses_an_incomplete_configuration() {
    let mut svc = Service::spawn(
        exe(),
        &[
            ("DB_NAME", "action_history".into()),
            ("DB_USER", "slm_user".into()),
        ],
    );
    let status = svc
        .wait_exit(Duration::from_secs(10))
        .expect("it should exit");
    assert_eq!(status.code(), Some(2));
    let output = svc.output().join("\n");
    assert!(output.contains("DB_HOST: is required"), "{output}");
}
