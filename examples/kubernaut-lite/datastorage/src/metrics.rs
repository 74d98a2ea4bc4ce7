//! Prometheus counters, rendered in the text exposition format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub struct Metrics {
    /// (method, route, status) -> count.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    events_written: AtomicU64,
}

impl Metrics {
    pub fn record_request(&self, method: &str, route: &str, status: u16) {
        let mut requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        *requests
            .entry((method.to_string(), route.to_string(), status))
            .or_default() += 1;
    }

    pub fn record_event_written(&self) {
        self.events_written.fetch_add(1, Ordering::Relaxed);
    }

    pub fn events_written(&self) -> u64 {
        self.events_written.load(Ordering::Relaxed)
    }

    /// The exposition text; `db_connected` is sampled by the caller.
    pub fn render(&self, db_connected: bool) -> String {
        let mut out = String::new();
        out.push_str(
            "# HELP datastorage_http_requests_total HTTP requests served on the API port.\n\
             # TYPE datastorage_http_requests_total counter\n",
        );
        let requests = self.requests.lock().unwrap_or_else(|e| e.into_inner());
        for ((method, route, status), count) in requests.iter() {
            let _ = writeln!(
                out,
                "datastorage_http_requests_total{{method=\"{}\",path=\"{}\",status=\"{status}\"}} {count}",
                escape(method),
                escape(route),
            );
        }
        drop(requests);
        let _ = write!(
            out,
            "# HELP datastorage_audit_events_written_total Audit events written to the database.\n\
             # TYPE datastorage_audit_events_written_total counter\n\
             datastorage_audit_events_written_total {}\n\
             # HELP datastorage_db_connected Whether a database connection is open.\n\
             # TYPE datastorage_db_connected gauge\n\
             datastorage_db_connected {}\n",
            self.events_written(),
            u8::from(db_connected),
        );
        out
    }
}

/// Escapes a label value (`\`, `"` and newlines).
fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters() {
        let metrics = Metrics::default();
        metrics.record_request("GET", "/health", 200);
        metrics.record_request("GET", "/health", 200);
        metrics.record_request("POST", "/api/v1/audit/events", 400);
        metrics.record_event_written();
        let text = metrics.render(true);
        assert!(text.contains(
            "datastorage_http_requests_total{method=\"GET\",path=\"/health\",status=\"200\"} 2\n"
        ));
        assert!(text.contains(
            "datastorage_http_requests_total{method=\"POST\",path=\"/api/v1/audit/events\",status=\"400\"} 1\n"
        ));
        assert!(text.contains("datastorage_audit_events_written_total 1\n"));
        assert!(text.contains("datastorage_db_connected 1\n"));
        assert!(text.contains("# TYPE datastorage_http_requests_total counter\n"));
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
