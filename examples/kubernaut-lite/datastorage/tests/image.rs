//! The image as the E2E tooling builds it: `scripts/prebuild.sh`, then the
//! Dockerfile with the example as context; then the container against a
//! throwaway PostgreSQL server.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a test fails by panicking"
)]

mod common;

use common::http::{get, post, wait_for_status, wait_until};
use common::pg::PgServer;
use serde_json::{Value, json};
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn docker(args: &[&str]) -> Output {
    Command::new("docker")
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .output()
        .unwrap_or_else(|e| panic!("running docker {args:?}: {e}"))
}

fn docker_ok(args: &[&str]) -> String {
    let out = docker(args);
    assert!(
        out.status.success(),
        "docker {args:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Why Docker cannot be used here, if it cannot.
fn docker_unavailable() -> Option<String> {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Err(e) => Some(format!("no docker CLI: {e}")),
        Ok(out) if !out.status.success() => Some(format!(
            "the Docker engine does not answer: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Ok(_) => None,
    }
}

/// Removes the test's container and image, also when the test fails.
struct Cleanup {
    image: String,
    container: Option<String>,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if let Some(container) = &self.container {
            if std::thread::panicking() {
                let logs = docker(&["logs", container]);
                eprintln!(
                    "container logs:\n{}{}",
                    String::from_utf8_lossy(&logs.stdout),
                    String::from_utf8_lossy(&logs.stderr)
                );
            }
            docker(&["rm", "-f", container]);
        }
        docker(&["rmi", "-f", &self.image]);
    }
}

/// Whether an ELF file asks for a program interpreter (the dynamic loader):
/// a FROM-scratch image has none, so the binary must not.
fn has_interpreter(elf: &[u8]) -> bool {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    let u16_at = |at: usize| u16::from_le_bytes([elf[at], elf[at + 1]]) as usize;
    let phoff = u64::from_le_bytes(elf[0x20..0x28].try_into().unwrap()) as usize;
    let (size, count) = (u16_at(0x36), u16_at(0x38));
    (0..count).any(|i| {
        let at = phoff + i * size;
        u32::from_le_bytes(elf[at..at + 4].try_into().unwrap()) == 3 // PT_INTERP
    })
}

fn prebuild(root: &Path) -> (Output, Duration) {
    let started = Instant::now();
    let out = Command::new("bash")
        .arg("scripts/prebuild.sh")
        .arg("datastorage")
        .current_dir(root)
        .output()
        .expect("running scripts/prebuild.sh");
    assert!(
        out.status.success(),
        "prebuild failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    (out, started.elapsed())
}

#[test]
fn image_from_prebuilt_binary_serves_probes_and_api() {
    const TEST: &str = "image_from_prebuilt_binary_serves_probes_and_api";
    if let Some(why) = docker_unavailable() {
        return common::skip(TEST, &why);
    }
    let Some(pg) = PgServer::start_with_app_db(TEST) else {
        return;
    };
    let root = common::example_root();

    // Prebuild twice: the second is a no-op that leaves bin/ untouched.
    let (_, first) = prebuild(&root);
    let binary = root.join("bin/datastorage");
    let bytes = std::fs::read(&binary).unwrap();
    let modified = std::fs::metadata(&binary).unwrap().modified().unwrap();
    assert!(!has_interpreter(&bytes), "bin/datastorage is not static");
    let (again, second) = prebuild(&root);
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("bin/datastorage unchanged"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert_eq!(std::fs::read(&binary).unwrap(), bytes);
    assert_eq!(
        std::fs::metadata(&binary).unwrap().modified().unwrap(),
        modified
    );
    eprintln!(
        "prebuild: {first:.1?}, again {second:.1?}; binary {} bytes",
        bytes.len()
    );

    let unique = format!(
        "{}-{}",
        std::process::id(),
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let mut cleanup = Cleanup {
        image: format!("localhost/kubernaut-lite-test/datastorage:{unique}"),
        container: None,
    };
    let root_arg = root.to_str().unwrap();
    docker_ok(&[
        "build",
        "-q",
        "-f",
        &format!("{root_arg}/docker/data-storage.Dockerfile"),
        "-t",
        &cleanup.image,
        root_arg,
    ]);
    let config: Value = serde_json::from_str(&docker_ok(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        &cleanup.image,
    ]))
    .unwrap();
    assert_eq!(config["Entrypoint"], json!(["/datastorage"]));
    assert_eq!(config["User"], "65532:65532");
    let exposed = config["ExposedPorts"].as_object().unwrap();
    assert!(exposed.contains_key("8080/tcp") && exposed.contains_key("9181/tcp"));
    let size = docker_ok(&["image", "inspect", "--format", "{{.Size}}", &cleanup.image]);
    eprintln!("image {}: {size} bytes", cleanup.image);

    // The database listens on 127.0.0.1 only, so the container shares the
    // host's network; its ports then come from the environment.
    let port = common::free_port();
    let metrics_port = common::free_port();
    let name = format!("kubernaut-lite-test-datastorage-{unique}");
    let mut args = vec![
        "run".to_string(),
        "-d".into(),
        "--name".into(),
        name.clone(),
        "--network".into(),
        "host".into(),
        "-e".into(),
        format!("DATASTORAGE_PORT={port}"),
        "-e".into(),
        format!("METRICS_PORT={metrics_port}"),
    ];
    for (key, value) in pg.service_env("127.0.0.1") {
        args.push("-e".into());
        args.push(format!("{key}={value}"));
    }
    args.push(cleanup.image.clone());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    docker_ok(&args);
    cleanup.container = Some(name.clone());

    let health = wait_for_status(port, "/health", 200, Duration::from_secs(30));
    assert_eq!(health.json(), json!({"status": "ok"}));
    let not_ready = wait_until(port, "/health/ready", Duration::from_secs(10), |r| {
        !r.body.contains("database unavailable")
    });
    assert_eq!(not_ready.status, 503, "{}", not_ready.body);
    assert!(
        not_ready.json()["reason"]
            .as_str()
            .unwrap()
            .contains("audit_events"),
        "{}",
        not_ready.body
    );

    pg.migrate();
    let ready = get(port, "/health/ready");
    assert_eq!(ready.status, 200, "{}", ready.body);
    let created = post(
        port,
        "/api/v1/audit/events",
        &json!({"event_type": "image.test", "correlation_id": unique}),
    );
    assert_eq!(created.status, 201, "{}", created.body);
    let listed = get(
        port,
        &format!("/api/v1/audit/events?correlation_id={unique}"),
    )
    .json();
    assert_eq!(listed["pagination"]["total"], 1);
    assert!(
        get(metrics_port, "/metrics")
            .body
            .contains("datastorage_audit_events_written_total 1\n")
    );

    // `docker stop` sends SIGTERM, as scaling the deployment to 0 does.
    docker_ok(&["stop", "-t", "15", &name]);
    let exit = docker_ok(&["inspect", "--format", "{{.State.ExitCode}}", &name]);
    assert_eq!(exit, "0");
    let logs = docker(&["logs", &name]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("\"msg\":\"request\""), "{logs}");
    assert!(logs.contains("\"signal\":\"SIGTERM\""), "{logs}");
}
