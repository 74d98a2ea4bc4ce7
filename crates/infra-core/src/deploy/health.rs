//! HTTP health checks against the host ports Kind maps, with a kube-rs
//! port-forward fallback for engines that do not honour port mappings (the
//! original hit this under Podman).
//!
//! An HTTP endpoint has nothing to watch, so this is the one place that polls.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};

/// How often an endpoint is asked again.
const INTERVAL: Duration = Duration::from_millis(250);
/// How long a host port may refuse connections before the port-forward is tried.
const FALLBACK_AFTER: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("{url} was not healthy after {seconds}s; last answer: {last}")]
    Unhealthy {
        url: String,
        seconds: u64,
        last: String,
    },

    #[error("`{url}` is not a valid http:// URL")]
    BadUrl { url: String },

    #[error("port-forward to {namespace}/{pod}:{port} failed: {message}")]
    PortForward {
        namespace: String,
        pod: String,
        port: u16,
        message: String,
    },
}

/// Where a service's health endpoint is, from the host and from inside the
/// cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    /// e.g. `http://127.0.0.1:28090/health/ready` (a Kind host port mapping).
    pub url: String,
    /// For the fallback: a label selector picking one of the service's pods,
    /// its namespace, and the container port serving `url`'s path.
    pub namespace: String,
    pub pod_selector: String,
    pub pod_port: u16,
    pub timeout: Duration,
}

/// The outcome of one request: the status code, or why there was none.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Status(u16),
    Refused(String),
}

/// Waits until `check.url` answers 2xx; if the host port keeps refusing
/// connections, asks the pod through a port-forward instead.
pub async fn wait_healthy(client: &kube::Client, check: &HealthCheck) -> Result<(), HealthError> {
    let started = Instant::now();
    let path = url_path(&check.url)?;
    let mut last = String::from("no answer yet");
    let mut refused_since: Option<Instant> = None;
    while started.elapsed() < check.timeout {
        match get(&check.url).await {
            Probe::Status(code) if (200..300).contains(&code) => return Ok(()),
            Probe::Status(code) => {
                refused_since = None;
                last = format!("HTTP {code}");
            }
            Probe::Refused(why) => {
                last = why;
                let since = *refused_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= FALLBACK_AFTER
                    && let Some(pod) = ready_pod(client, check).await
                {
                    match get_via_port_forward(
                        client,
                        &check.namespace,
                        &pod,
                        check.pod_port,
                        &path,
                    )
                    .await
                    {
                        Ok(code) if (200..300).contains(&code) => return Ok(()),
                        Ok(code) => last = format!("HTTP {code} (through port-forward to {pod})"),
                        Err(e) => last = e.to_string(),
                    }
                }
            }
        }
        tokio::time::sleep(INTERVAL).await;
    }
    Err(HealthError::Unhealthy {
        url: check.url.clone(),
        seconds: check.timeout.as_secs(),
        last,
    })
}

/// One GET with a short timeout.
pub async fn get(url: &str) -> Probe {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Empty<Bytes>>();
    let Ok(uri) = url.parse::<hyper::Uri>() else {
        return Probe::Refused(format!("bad URL {url}"));
    };
    match tokio::time::timeout(Duration::from_secs(2), client.get(uri)).await {
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let _ = response.into_body().collect().await;
            Probe::Status(status)
        }
        Ok(Err(e)) => Probe::Refused(crate::error_chain(&e)),
        Err(_) => Probe::Refused("no answer within 2s".into()),
    }
}

fn url_path(url: &str) -> Result<String, HealthError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| HealthError::BadUrl { url: url.into() })?;
    if uri.scheme_str() != Some("http") || uri.host().is_none() {
        return Err(HealthError::BadUrl { url: url.into() });
    }
    Ok(uri
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "/".into()))
}

async fn ready_pod(client: &kube::Client, check: &HealthCheck) -> Option<String> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &check.namespace);
    let list = pods
        .list(&ListParams::default().labels(&check.pod_selector))
        .await
        .ok()?;
    list.items
        .into_iter()
        .find(|p| {
            p.status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        })
        .and_then(|p| p.metadata.name)
}

/// GET `path` on `pod:port` through a kube-rs port-forward.
pub async fn get_via_port_forward(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    port: u16,
    path: &str,
) -> Result<u16, HealthError> {
    let failed = |message: String| HealthError::PortForward {
        namespace: namespace.into(),
        pod: pod.into(),
        port,
        message,
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut forwarder = pods
        .portforward(pod, &[port])
        .await
        .map_err(|e| failed(super::api_message(&e)))?;
    let stream = forwarder
        .take_stream(port)
        .ok_or_else(|| failed("no stream for the port".into()))?;
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| failed(crate::error_chain(&e)))?;
    let driver = tokio::spawn(connection);
    let request = hyper::Request::get(path)
        .header("host", "localhost")
        .body(Empty::<Bytes>::new())
        .map_err(|e| failed(e.to_string()))?;
    let response = tokio::time::timeout(Duration::from_secs(5), sender.send_request(request))
        .await
        .map_err(|_| failed("no answer within 5s".into()))?
        .map_err(|e| failed(crate::error_chain(&e)))?;
    let status = response.status().as_u16();
    drop(sender);
    driver.abort();
    forwarder.abort();
    Ok(status)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(url: String, timeout: Duration) -> HealthCheck {
        HealthCheck {
            url,
            namespace: "ns".into(),
            pod_selector: "app=x".into(),
            pod_port: 8080,
            timeout,
        }
    }

    #[tokio::test]
    async fn a_real_server_is_seen_and_a_failing_one_reported_with_its_answer() {
        // The port-forward fallback is never reached here (the host port
        // answers, or the wait ends first), so the client points nowhere.
        let client =
            kube::Client::try_from(kube::Config::new("http://127.0.0.1:9".parse().unwrap()))
                .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buffer = [0u8; 1024];
                let n = socket.read(&mut buffer).await.unwrap();
                let request = String::from_utf8_lossy(&buffer[..n]);
                let status = if request.starts_with("GET /health ") {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                let _ = socket
                    .write_all(format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").as_bytes())
                    .await;
            }
        });
        let url = |path: &str| format!("http://127.0.0.1:{port}{path}");
        wait_healthy(&client, &check(url("/health"), Duration::from_secs(5)))
            .await
            .unwrap();
        let err = wait_healthy(&client, &check(url("/ready"), Duration::from_millis(600)))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("HTTP 503"), "{err}");
        server.abort();

        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let closed_port = closed.local_addr().unwrap().port();
        drop(closed);
        let err = wait_healthy(
            &client,
            &check(
                format!("http://127.0.0.1:{closed_port}/"),
                Duration::from_millis(300),
            ),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, HealthError::Unhealthy { .. }));
        assert!(matches!(
            wait_healthy(&client, &check("ftp://x/".into(), Duration::from_secs(1))).await,
            Err(HealthError::BadUrl { .. })
        ));
    }
}
