//! Label and field selectors: the `labelSelector=` / `fieldSelector=` query
//! strings, and `metav1.LabelSelector` objects (matchLabels/matchExpressions)
//! as Deployments, Services and the like carry them.
//!
//! Written by hand: the grammar is small and no maintained Rust crate parses
//! Kubernetes selector strings.

use serde_json::Value;

use crate::object;

/// One requirement of a label selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

impl Requirement {
    fn matches(&self, labels: &[(String, String)]) -> bool {
        let get = |k: &str| labels.iter().find(|(lk, _)| lk == k).map(|(_, v)| v);
        match self {
            Requirement::Equals(k, v) => get(k) == Some(v),
            Requirement::NotEquals(k, v) => get(k) != Some(v),
            Requirement::In(k, vs) => get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => get(k).is_some(),
            Requirement::DoesNotExist(k) => get(k).is_none(),
        }
    }
}

/// A parsed label selector; empty matches everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LabelSelector(pub Vec<Requirement>);

impl LabelSelector {
    pub fn matches(&self, labels: &[(String, String)]) -> bool {
        self.0.iter().all(|r| r.matches(labels))
    }

    /// Matches an object's `metadata.labels`.
    pub fn matches_object(&self, obj: &Value) -> bool {
        self.matches(&object::labels(obj))
    }
}

/// Splits on commas outside parentheses.
fn split_top_level(s: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0i32;
    let mut start = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn parse_set(rest: &str, whole: &str) -> Result<Vec<String>, String> {
    let rest = rest.trim();
    let inner = rest
        .strip_prefix('(')
        .and_then(|r| r.strip_suffix(')'))
        .ok_or_else(|| {
            format!("unable to parse requirement: found '{rest}', expected: '(' in \"{whole}\"")
        })?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

fn check_key(key: &str, whole: &str) -> Result<String, String> {
    let key = key.trim();
    if key.is_empty()
        || !key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    {
        return Err(format!(
            "unable to parse requirement: invalid label key \"{key}\" in \"{whole}\""
        ));
    }
    Ok(key.to_string())
}

/// Parses a label selector string (`a=b,c!=d,e in (f,g),h notin (i),j,!k`).
pub fn parse_label_selector(s: &str) -> Result<LabelSelector, String> {
    let mut reqs = Vec::new();
    if s.trim().is_empty() {
        return Ok(LabelSelector(reqs));
    }
    for part in split_top_level(s) {
        let p = part.trim();
        if p.is_empty() {
            return Err(format!(
                "unable to parse requirement: empty requirement in \"{s}\""
            ));
        }
        if let Some(k) = p.strip_prefix('!') {
            reqs.push(Requirement::DoesNotExist(check_key(k, s)?));
        } else if let Some((k, v)) = p.split_once("!=") {
            reqs.push(Requirement::NotEquals(
                check_key(k, s)?,
                v.trim().to_string(),
            ));
        } else if let Some((k, v)) = p.split_once("==") {
            reqs.push(Requirement::Equals(check_key(k, s)?, v.trim().to_string()));
        } else if let Some((k, v)) = p.split_once('=') {
            reqs.push(Requirement::Equals(check_key(k, s)?, v.trim().to_string()));
        } else if let Some(idx) = p.find(" notin ") {
            reqs.push(Requirement::NotIn(
                check_key(&p[..idx], s)?,
                parse_set(&p[idx + 7..], s)?,
            ));
        } else if let Some(idx) = p.find(" in ") {
            reqs.push(Requirement::In(
                check_key(&p[..idx], s)?,
                parse_set(&p[idx + 4..], s)?,
            ));
        } else if p.contains('(') || p.contains(' ') {
            return Err(format!("unable to parse requirement: \"{p}\" in \"{s}\""));
        } else {
            reqs.push(Requirement::Exists(check_key(p, s)?));
        }
    }
    Ok(LabelSelector(reqs))
}

/// Converts a `metav1.LabelSelector` object. `None` selector (absent) gives
/// None: callers decide whether that means "nothing" or "everything".
pub fn from_label_selector_object(sel: &Value) -> Result<LabelSelector, String> {
    let mut reqs = Vec::new();
    if let Some(m) = sel.get("matchLabels").and_then(Value::as_object) {
        for (k, v) in m {
            reqs.push(Requirement::Equals(
                k.clone(),
                v.as_str().unwrap_or("").to_string(),
            ));
        }
    }
    for expr in object::array_at(sel, "/matchExpressions") {
        let key = object::str_at(expr, "/key").to_string();
        let values: Vec<String> = object::array_at(expr, "/values")
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        let req = match object::str_at(expr, "/operator") {
            "In" => Requirement::In(key, values),
            "NotIn" => Requirement::NotIn(key, values),
            "Exists" => Requirement::Exists(key),
            "DoesNotExist" => Requirement::DoesNotExist(key),
            other => return Err(format!("{other:?} is not a valid label selector operator")),
        };
        reqs.push(req);
    }
    Ok(LabelSelector(reqs))
}

/// A map selector (Service `spec.selector`, `nodeSelector`) as requirements.
pub fn from_map(map: &Value) -> LabelSelector {
    LabelSelector(
        map.as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        Requirement::Equals(k.clone(), v.as_str().unwrap_or("").to_string())
                    })
                    .collect()
            })
            .unwrap_or_default(),
    )
}

/// One term of a field selector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldTerm {
    pub path: String,
    pub value: String,
    pub negated: bool,
}

/// A parsed field selector (`metadata.name=x,status.phase!=Running`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FieldSelector(pub Vec<FieldTerm>);

/// Parses a field selector. Any dotted path into the object is accepted
/// (the real server allows a fixed set per kind; being lenient here only
/// accepts more).
pub fn parse_field_selector(s: &str) -> Result<FieldSelector, String> {
    let mut terms = Vec::new();
    if s.trim().is_empty() {
        return Ok(FieldSelector(terms));
    }
    for part in s.split(',') {
        let p = part.trim();
        let (path, value, negated) = if let Some((k, v)) = p.split_once("!=") {
            (k, v, true)
        } else if let Some((k, v)) = p.split_once("==") {
            (k, v, false)
        } else if let Some((k, v)) = p.split_once('=') {
            (k, v, false)
        } else {
            return Err(format!("invalid selector: '{s}'; can't understand '{p}'"));
        };
        terms.push(FieldTerm {
            path: path.trim().to_string(),
            value: value.trim().to_string(),
            negated,
        });
    }
    Ok(FieldSelector(terms))
}

impl FieldSelector {
    pub fn matches(&self, obj: &Value) -> bool {
        self.0.iter().all(|t| {
            let pointer = format!("/{}", t.path.replace('.', "/"));
            let actual = match obj.pointer(&pointer) {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Null) | None => String::new(),
                Some(v) => v.to_string(),
            };
            (actual == t.value) != t.negated
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn l(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn equality_and_inequality() {
        let s = parse_label_selector("app=web,tier==front,env!=prod").unwrap();
        assert!(s.matches(&l(&[("app", "web"), ("tier", "front")])));
        assert!(!s.matches(&l(&[("app", "web"), ("tier", "front"), ("env", "prod")])));
        assert!(!s.matches(&l(&[("app", "api"), ("tier", "front")])));
        // != matches objects without the label.
        assert!(parse_label_selector("env!=prod").unwrap().matches(&[]));
    }

    #[test]
    fn set_based_requirements() {
        let s = parse_label_selector("env in (dev, qa),tier notin (db),app,!legacy").unwrap();
        assert_eq!(s.0.len(), 4);
        assert!(s.matches(&l(&[("env", "qa"), ("app", "x")])));
        assert!(!s.matches(&l(&[("env", "prod"), ("app", "x")])));
        assert!(!s.matches(&l(&[("env", "dev"), ("app", "x"), ("tier", "db")])));
        assert!(!s.matches(&l(&[("env", "dev")])));
        assert!(!s.matches(&l(&[("env", "dev"), ("app", "x"), ("legacy", "")])));
    }

    #[test]
    fn empty_selector_matches_everything_and_garbage_is_rejected() {
        assert!(parse_label_selector("").unwrap().matches(&l(&[("a", "b")])));
        assert!(parse_label_selector("a in b").is_err());
        assert!(parse_label_selector("a,,b").is_err());
        assert!(parse_label_selector("bad key=x").is_err());
    }

    #[test]
    fn label_selector_objects() {
        let sel = json!({"matchLabels": {"app": "web"},
                         "matchExpressions": [{"key": "tier", "operator": "In", "values": ["a", "b"]},
                                              {"key": "old", "operator": "DoesNotExist"}]});
        let s = from_label_selector_object(&sel).unwrap();
        assert!(s.matches(&l(&[("app", "web"), ("tier", "b")])));
        assert!(!s.matches(&l(&[("app", "web"), ("tier", "c")])));
        assert!(!s.matches(&l(&[("app", "web"), ("tier", "a"), ("old", "1")])));
        assert!(
            from_label_selector_object(
                &json!({"matchExpressions": [{"key": "a", "operator": "Near"}]})
            )
            .is_err()
        );
    }

    #[test]
    fn field_selectors() {
        let obj =
            json!({"metadata": {"name": "x", "namespace": "ns"}, "status": {"phase": "Running"}});
        let s = parse_field_selector("metadata.name=x,metadata.namespace==ns").unwrap();
        assert!(s.matches(&obj));
        assert!(
            !parse_field_selector("metadata.name=y")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            parse_field_selector("status.phase!=Pending")
                .unwrap()
                .matches(&obj)
        );
        assert!(
            !parse_field_selector("status.phase!=Running")
                .unwrap()
                .matches(&obj)
        );
        assert!(parse_field_selector("nonsense").is_err());
    }
}
