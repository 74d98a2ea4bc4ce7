//! One JSON object per line on stdout.

use serde_json::{Map, Value};
use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| (d.as_millis() as f64) / 1000.0)
        .unwrap_or(0.0)
}

/// Writes `{"ts": <unix seconds>, "msg": msg, ...fields}` as one line.
pub fn line(msg: &str, fields: Map<String, Value>) {
    let mut object = Map::new();
    object.insert("ts".into(), now().into());
    object.insert("msg".into(), msg.into());
    object.extend(fields);
    let mut out = std::io::stdout().lock();
    // A closed stdout must not take the service down.
    let _ = writeln!(out, "{}", Value::Object(object));
    let _ = out.flush();
}

/// [`line()`] with string fields.
pub fn event(msg: &str, fields: &[(&str, &str)]) {
    line(
        msg,
        fields
            .iter()
            .map(|(k, v)| (k.to_string(), Value::from(*v)))
            .collect(),
    );
}
