//! Audit events: validation of what clients send.

use serde::Serialize;
use serde_json::{Map, Value};
use std::collections::HashMap;

/// The longest value accepted in a text field (the columns are `VARCHAR(255)`).
pub const MAX_TEXT_LEN: usize = 255;
/// `limit` when a listing names none.
pub const DEFAULT_LIMIT: i64 = 50;
/// The largest `limit` a listing accepts.
pub const MAX_LIMIT: i64 = 1000;
/// The values `event_outcome` may take.
pub const OUTCOMES: [&str; 3] = ["success", "failure", "pending"];

/// A validated event, ready to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub event_type: String,
    pub event_category: Option<String>,
    pub event_action: Option<String>,
    pub event_outcome: Option<String>,
    pub correlation_id: String,
    pub actor_id: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    /// Any JSON; `{}` when absent.
    pub event_data: Value,
}

/// A stored event, as listings return it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Event {
    pub event_id: String,
    pub event_timestamp: String,
    pub event_type: String,
    pub event_category: Option<String>,
    pub event_action: Option<String>,
    pub event_outcome: Option<String>,
    pub correlation_id: String,
    pub actor_id: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub event_data: Value,
}

/// Why a request was refused: the field at fault and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidationError {
    /// The offending field, or `body` when the body itself is unusable.
    pub field: &'static str,
    pub message: String,
}

impl ValidationError {
    fn new(field: &'static str, message: impl Into<String>) -> ValidationError {
        ValidationError {
            field,
            message: message.into(),
        }
    }
}

/// Parses and validates the body of `POST /api/v1/audit/events`.
pub fn parse_new_event(body: &[u8]) -> Result<NewEvent, ValidationError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ValidationError::new("body", format!("body is not valid JSON: {e}")))?;
    let Value::Object(object) = value else {
        return Err(ValidationError::new("body", "body must be a JSON object"));
    };
    let event_outcome = optional_text(&object, "event_outcome")?;
    if let Some(outcome) = &event_outcome
        && !OUTCOMES.contains(&outcome.as_str())
    {
        return Err(ValidationError::new(
            "event_outcome",
            format!(
                "event_outcome must be one of {}, not `{outcome}`",
                OUTCOMES.join(", ")
            ),
        ));
    }
    Ok(NewEvent {
        event_type: required_text(&object, "event_type")?,
        event_category: optional_text(&object, "event_category")?,
        event_action: optional_text(&object, "event_action")?,
        event_outcome,
        correlation_id: required_text(&object, "correlation_id")?,
        actor_id: optional_text(&object, "actor_id")?,
        resource_type: optional_text(&object, "resource_type")?,
        resource_id: optional_text(&object, "resource_id")?,
        event_data: match object.get("event_data") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(data) => data.clone(),
        },
    })
}

fn required_text(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<String, ValidationError> {
    optional_text(object, field)?
        .ok_or_else(|| ValidationError::new(field, format!("{field} is required")))
}

fn optional_text(
    object: &Map<String, Value>,
    field: &'static str,
) -> Result<Option<String>, ValidationError> {
    match object.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(text)) => {
            let text = text.trim();
            if text.is_empty() {
                Ok(None)
            } else if text.chars().count() > MAX_TEXT_LEN {
                Err(ValidationError::new(
                    field,
                    format!("{field} is longer than {MAX_TEXT_LEN} characters"),
                ))
            } else {
                Ok(Some(text.to_string()))
            }
        }
        Some(_) => Err(ValidationError::new(
            field,
            format!("{field} must be a string"),
        )),
    }
}

/// The filters of `GET /api/v1/audit/events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListQuery {
    pub correlation_id: Option<String>,
    pub event_type: Option<String>,
    pub limit: i64,
}

/// Validates the query string's parameters (empty values count as absent).
pub fn parse_list_query(params: &HashMap<String, String>) -> Result<ListQuery, ValidationError> {
    let get = |name: &str| {
        params
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
    };
    let limit = match get("limit") {
        None => DEFAULT_LIMIT,
        Some(text) => match text.parse::<i64>() {
            Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
            _ => {
                return Err(ValidationError::new(
                    "limit",
                    format!("limit must be an integer from 1 to {MAX_LIMIT}, not `{text}`"),
                ));
            }
        },
    };
    Ok(ListQuery {
        correlation_id: get("correlation_id"),
        event_type: get("event_type"),
        limit,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(value: Value) -> Result<NewEvent, ValidationError> {
        parse_new_event(value.to_string().as_bytes())
    }

    #[test]
    fn a_full_event_is_accepted() {
        let event = parse(json!({
            "event_type": "gateway.signal.received",
            "event_category": "gateway",
            "event_action": "received",
            "event_outcome": "success",
            "correlation_id": "rr-2025-001",
            "actor_id": "gateway-service",
            "resource_type": "Signal",
            "resource_id": "fp-abc",
            "event_data": {"alert": "HighMemory", "count": 3},
            "unknown_field": "ignored"
        }))
        .unwrap();
        assert_eq!(event.event_type, "gateway.signal.received");
        assert_eq!(event.event_outcome.as_deref(), Some("success"));
        assert_eq!(event.correlation_id, "rr-2025-001");
        assert_eq!(event.resource_id.as_deref(), Some("fp-abc"));
        assert_eq!(event.event_data, json!({"alert": "HighMemory", "count": 3}));
    }

    #[test]
    fn a_minimal_event_gets_defaults() {
        let event = parse(json!({"event_type": "t", "correlation_id": "c"})).unwrap();
        assert_eq!(event.event_category, None);
        assert_eq!(event.event_outcome, None);
        assert_eq!(event.event_data, json!({}));
    }

    #[test]
    fn event_data_may_be_any_json() {
        for data in [json!([1, 2]), json!("text"), json!(42), json!(true)] {
            let event =
                parse(json!({"event_type": "t", "correlation_id": "c", "event_data": data}))
                    .unwrap();
            assert_eq!(event.event_data, data);
        }
    }

    #[test]
    fn required_fields_are_named() {
        let err = parse(json!({"correlation_id": "c"})).unwrap_err();
        assert_eq!(err.field, "event_type");
        assert_eq!(err.message, "event_type is required");
        let err = parse(json!({"event_type": "t", "correlation_id": "  "})).unwrap_err();
        assert_eq!(err.field, "correlation_id");
        let err = parse(json!({"event_type": null, "correlation_id": "c"})).unwrap_err();
        assert_eq!(err.field, "event_type");
    }

    #[test]
    fn wrong_types_and_lengths_are_named() {
        let err = parse(json!({"event_type": 7, "correlation_id": "c"})).unwrap_err();
        assert_eq!(err.field, "event_type");
        assert!(err.message.contains("must be a string"));
        let err =
            parse(json!({"event_type": "t", "correlation_id": "c", "actor_id": {}})).unwrap_err();
        assert_eq!(err.field, "actor_id");
        let long = "x".repeat(MAX_TEXT_LEN + 1);
        let err = parse(json!({"event_type": "t", "correlation_id": "c", "resource_id": long}))
            .unwrap_err();
        assert_eq!(err.field, "resource_id");
        let exact = "é".repeat(MAX_TEXT_LEN);
        assert!(parse(json!({"event_type": exact, "correlation_id": "c"})).is_ok());
    }

    #[test]
    fn outcome_must_be_known() {
        let err = parse(json!({"event_type": "t", "correlation_id": "c", "event_outcome": "ok"}))
            .unwrap_err();
        assert_eq!(err.field, "event_outcome");
        assert!(
            err.message.contains("success, failure, pending"),
            "{}",
            err.message
        );
    }

    #[test]
    fn the_body_must_be_a_json_object() {
        assert_eq!(parse_new_event(b"not json").unwrap_err().field, "body");
        assert_eq!(parse_new_event(b"").unwrap_err().field, "body");
        assert_eq!(parse(json!(["event_type"])).unwrap_err().field, "body");
    }

    fn query(pairs: &[(&str, &str)]) -> Result<ListQuery, ValidationError> {
        let params = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse_list_query(&params)
    }

    #[test]
    fn list_query_defaults_and_filters() {
        assert_eq!(
            query(&[]).unwrap(),
            ListQuery {
                correlation_id: None,
                event_type: None,
                limit: DEFAULT_LIMIT
            }
        );
        let q = query(&[
            ("correlation_id", "c1"),
            ("event_type", ""),
            ("limit", "1000"),
        ])
        .unwrap();
        assert_eq!(q.correlation_id.as_deref(), Some("c1"));
        assert_eq!(q.event_type, None);
        assert_eq!(q.limit, 1000);
    }

    #[test]
    fn list_limit_is_bounded() {
        for bad in ["0", "-3", "1001", "ten", "1.5"] {
            let err = query(&[("limit", bad)]).unwrap_err();
            assert_eq!(err.field, "limit", "{bad}");
        }
    }
}
