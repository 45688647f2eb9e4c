//! Label and field selectors, parsed from query strings as Kubernetes does.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use serde_json::Value;

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SelectorError {
    #[error("unable to parse requirement: {0}")]
    Parse(String),
    #[error("\"{0}\" is not a known field selector: only \"{1}\"")]
    UnknownField(String, String),
}

#[derive(Clone, Debug, PartialEq)]
enum Op {
    Eq(String),
    NotEq(String),
    In(Vec<String>),
    NotIn(Vec<String>),
    Exists,
    NotExists,
    Gt(i64),
    Lt(i64),
}

#[derive(Clone, Debug, PartialEq)]
struct Requirement {
    key: String,
    op: Op,
}

/// A parsed label selector (`app=web,tier in (a,b),!legacy`). Empty matches everything.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selector(Vec<Requirement>);

/// Splits on commas that are not inside parentheses.
fn split_top(s: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut depth, mut start) = (0, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                out.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    out.push(&s[start..]);
    out
}

fn set_values(rest: &str, whole: &str) -> Result<Vec<String>, SelectorError> {
    let rest = rest.trim();
    let Some(open) = rest.strip_prefix('(') else {
        return Err(SelectorError::Parse(format!(
            "{whole}: found '{rest}', expected: '('"
        )));
    };
    let inner = open
        .strip_suffix(')')
        .ok_or_else(|| SelectorError::Parse(format!("{whole}: found '', expected: ',' or ')'")))?;
    Ok(inner
        .split(',')
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty())
        .collect())
}

impl Selector {
    pub fn parse(s: &str) -> Result<Selector, SelectorError> {
        let mut reqs = Vec::new();
        if s.trim().is_empty() {
            return Ok(Selector(reqs));
        }
        for part in split_top(s) {
            let p = part.trim();
            if p.is_empty() {
                return Err(SelectorError::Parse(format!(
                    "{s}: found '', expected: identifier"
                )));
            }
            let req = if let Some(k) = p.strip_prefix('!') {
                Requirement {
                    key: k.trim().to_string(),
                    op: Op::NotExists,
                }
            } else if let Some((k, v)) = p.split_once("!=") {
                Requirement {
                    key: k.trim().into(),
                    op: Op::NotEq(v.trim().into()),
                }
            } else if let Some((k, v)) = p.split_once("==") {
                Requirement {
                    key: k.trim().into(),
                    op: Op::Eq(v.trim().into()),
                }
            } else if let Some((k, v)) = p.split_once('=') {
                Requirement {
                    key: k.trim().into(),
                    op: Op::Eq(v.trim().into()),
                }
            } else if let Some((k, v)) = p.split_once(" notin ") {
                Requirement {
                    key: k.trim().into(),
                    op: Op::NotIn(set_values(v, p)?),
                }
            } else if let Some((k, v)) = p.split_once(" in ") {
                Requirement {
                    key: k.trim().into(),
                    op: Op::In(set_values(v, p)?),
                }
            } else if let Some((k, v)) = p.split_once('>') {
                let n = v.trim().parse().map_err(|_| {
                    SelectorError::Parse(format!(
                        "{p}: for 'Gt', 'Lt' operators, the value must be an integer"
                    ))
                })?;
                Requirement {
                    key: k.trim().into(),
                    op: Op::Gt(n),
                }
            } else if let Some((k, v)) = p.split_once('<') {
                let n = v.trim().parse().map_err(|_| {
                    SelectorError::Parse(format!(
                        "{p}: for 'Gt', 'Lt' operators, the value must be an integer"
                    ))
                })?;
                Requirement {
                    key: k.trim().into(),
                    op: Op::Lt(n),
                }
            } else if p.contains(' ') || p.contains('(') {
                return Err(SelectorError::Parse(format!(
                    "{p}: found '{}', expected: in, notin, =, ==, !=, gt, lt",
                    p.split_whitespace().nth(1).unwrap_or("")
                )));
            } else {
                Requirement {
                    key: p.into(),
                    op: Op::Exists,
                }
            };
            if req.key.is_empty() || req.key.contains(char::is_whitespace) {
                return Err(SelectorError::Parse(format!(
                    "{p}: invalid label key {:?}",
                    req.key
                )));
            }
            if let Some(msg) = crate::registry::validation::check_qualified_name(&req.key) {
                return Err(SelectorError::Parse(format!(
                    "key: Invalid value: {:?}: {msg}",
                    req.key
                )));
            }
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Matches against a value looked up by key (label map or object field).
    fn matches_with(&self, get: impl Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|r| {
            let v = get(&r.key);
            match &r.op {
                Op::Eq(x) => v.as_deref() == Some(x.as_str()),
                Op::NotEq(x) => v.as_deref() != Some(x.as_str()),
                Op::In(xs) => v.is_some_and(|v| xs.contains(&v)),
                Op::NotIn(xs) => v.is_none_or(|v| !xs.contains(&v)),
                Op::Exists => v.is_some(),
                Op::NotExists => v.is_none(),
                Op::Gt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v > *n),
                Op::Lt(n) => v
                    .and_then(|v| v.parse::<i64>().ok())
                    .is_some_and(|v| v < *n),
            }
        })
    }

    pub fn matches_labels(&self, labels: Option<&serde_json::Map<String, Value>>) -> bool {
        self.matches_with(|k| {
            labels
                .and_then(|l| l.get(k))
                .and_then(Value::as_str)
                .map(str::to_string)
        })
    }
}

/// A field that field selectors may name: where it is in the object, and what an unset
/// field reads as (its Go zero value, as Kubernetes' field sets print it: `""`, `"false"`,
/// `"0"`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    /// Dot-separated path in the object.
    pub path: &'static str,
    pub zero: &'static str,
}

impl Field {
    pub const fn string(name: &'static str) -> Field {
        Field::at(name, name)
    }
    /// A string field selected under another name (events' `source` is `source.component`).
    pub const fn at(name: &'static str, path: &'static str) -> Field {
        Field {
            name,
            path,
            zero: "",
        }
    }
    pub const fn boolean(name: &'static str) -> Field {
        Field {
            name,
            path: name,
            zero: "false",
        }
    }
    pub const fn integer(name: &'static str) -> Field {
        Field {
            name,
            path: name,
            zero: "0",
        }
    }

    /// The field's value in `obj` as a field selector compares it.
    fn value_in(&self, obj: &Value) -> String {
        let mut v = obj;
        for seg in self.path.split('.') {
            match v.get(seg) {
                Some(x) => v = x,
                None => return self.zero.to_string(),
            }
        }
        match v {
            Value::String(s) => s.clone(),
            Value::Null => self.zero.to_string(),
            other => other.to_string(),
        }
    }
}

/// A parsed field selector (`spec.nodeName=n1,status.phase!=Running`).
#[derive(Clone, Debug, Default)]
pub struct FieldSelector {
    sel: Selector,
    /// The field of each requirement, in order.
    fields: Vec<Field>,
}

impl FieldSelector {
    /// Parses and resolves each field among those the resource supports.
    pub fn parse(
        s: &str,
        field: impl Fn(&str) -> Option<Field>,
    ) -> Result<FieldSelector, SelectorError> {
        let mut reqs = Vec::new();
        let mut fields = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, op) = if let Some((k, v)) = part.split_once("!=") {
                (k, Op::NotEq(v.into()))
            } else if let Some((k, v)) = part.split_once("==") {
                (k, Op::Eq(v.into()))
            } else if let Some((k, v)) = part.split_once('=') {
                (k, Op::Eq(v.into()))
            } else {
                return Err(SelectorError::Parse(format!(
                    "invalid selector: '{s}'; can't understand '{part}'"
                )));
            };
            let key = key.trim().to_string();
            let Some(f) = field(&key) else {
                return Err(SelectorError::Parse(format!(
                    "field label not supported: {key}"
                )));
            };
            fields.push(f);
            reqs.push(Requirement { key, op });
        }
        Ok(FieldSelector {
            sel: Selector(reqs),
            fields,
        })
    }

    pub fn is_empty(&self) -> bool {
        self.sel.is_empty()
    }

    /// An unset field counts as its zero value, as in Kubernetes (`spec.unschedulable=false`
    /// matches a node without the field).
    pub fn matches(&self, obj: &Value) -> bool {
        self.sel.matches_with(|key| {
            self.fields
                .iter()
                .find(|f| f.name == key)
                .map(|f| f.value_in(obj))
        })
    }

    /// The value required for `field` by an equality term, if any (used to narrow a scan).
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.sel.0.iter().find_map(|r| match &r.op {
            Op::Eq(v) if r.key == field => Some(v.as_str()),
            _ => None,
        })
    }
}

/// Whether a typed `LabelSelector` (matchLabels + matchExpressions) matches a label map.
pub fn label_selector_matches(
    sel: &LabelSelector,
    labels: Option<&BTreeMap<String, String>>,
) -> bool {
    label_selector_matches_by(sel, |k| labels.and_then(|l| l.get(k)).map(String::as_str))
}

/// Whether a typed `LabelSelector` matches the labels of a JSON object's metadata.
pub fn label_selector_matches_json(sel: &LabelSelector, obj: &Value) -> bool {
    let labels = obj.pointer("/metadata/labels").and_then(Value::as_object);
    label_selector_matches_by(sel, |k| {
        labels.and_then(|l| l.get(k)).and_then(Value::as_str)
    })
}

fn label_selector_matches_by<'a>(
    sel: &LabelSelector,
    get: impl Fn(&str) -> Option<&'a str>,
) -> bool {
    sel.match_labels
        .iter()
        .flatten()
        .all(|(k, v)| get(k) == Some(v.as_str()))
        && sel.match_expressions.iter().flatten().all(|e| {
            let vals = e.values.as_deref().unwrap_or_default();
            let has = |v: &str| vals.iter().any(|x| x == v);
            match e.operator.as_str() {
                "In" => get(&e.key).is_some_and(has),
                "NotIn" => get(&e.key).is_none_or(|v| !has(v)),
                "Exists" => get(&e.key).is_some(),
                "DoesNotExist" => get(&e.key).is_none(),
                _ => false,
            }
        })
}

/// A typed `LabelSelector` rendered in query-string form (`a=b,c in (x,y)`).
pub fn label_selector_string(sel: &LabelSelector) -> String {
    let mut parts: Vec<String> = sel
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in sel.match_expressions.iter().flatten() {
        let vals = e.values.as_deref().unwrap_or_default().join(",");
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({vals})", e.key),
            "NotIn" => format!("{} notin ({vals})", e.key),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn labels(v: Value) -> serde_json::Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn label_selector_operators() {
        let l = labels(json!({"app": "web", "tier": "front", "track": "stable"}));
        for (sel, want) in [
            ("app=web", true),
            ("app==web", true),
            ("app!=web", false),
            ("tier in (front,back)", true),
            ("tier notin (front)", false),
            ("track", true),
            ("!track", false),
            ("!missing,app=web", true),
            ("app=web,tier in (back)", false),
            ("", true),
        ] {
            assert_eq!(
                Selector::parse(sel).unwrap().matches_labels(Some(&l)),
                want,
                "{sel}"
            );
        }
        assert!(Selector::parse("a in x").is_err());
        let err = Selector::parse("a in (").unwrap_err().to_string();
        assert!(
            err.ends_with("a in (: found '', expected: ',' or ')'"),
            "{err}"
        );
        assert!(Selector::parse("a b").is_err());
    }

    #[test]
    fn field_selectors() {
        let pod = json!({"metadata": {"name": "p"}, "spec": {"nodeName": "n1"}, "status": {"phase": "Running"}});
        let known = [
            Field::string("metadata.name"),
            Field::string("spec.nodeName"),
            Field::string("status.phase"),
        ];
        let ok = |f: &str| known.iter().find(|k| k.name == f).copied();
        assert!(
            FieldSelector::parse("spec.nodeName=n1,status.phase!=Failed", ok)
                .unwrap()
                .matches(&pod)
        );
        assert!(!FieldSelector::parse("spec.nodeName=", ok)
            .unwrap()
            .matches(&pod));
        assert!(FieldSelector::parse("spec.nodeName=", ok)
            .unwrap()
            .matches(&json!({"spec": {}})));
        assert_eq!(
            FieldSelector::parse("spec.bogus=1", ok).unwrap_err(),
            SelectorError::Parse("field label not supported: spec.bogus".into())
        );
    }

    /// Regression: `spec.unschedulable=false` did not match a node without the field
    /// (kube-rs's cordon test): an unset field reads as its type's zero value.
    #[test]
    fn unset_fields_read_as_their_zero_value() {
        let fields = [
            Field::boolean("spec.unschedulable"),
            Field::integer("status.replicas"),
            Field::at("source", "source.component"),
        ];
        let field = |f: &str| fields.iter().find(|x| x.name == f).copied();
        let sel = |s: &str| FieldSelector::parse(s, field).unwrap();
        let plain = json!({"spec": {}});
        assert!(sel("spec.unschedulable=false").matches(&plain));
        assert!(!sel("spec.unschedulable=true").matches(&plain));
        assert!(sel("spec.unschedulable!=true").matches(&plain));
        let cordoned = json!({"spec": {"unschedulable": true}});
        assert!(sel("spec.unschedulable=true").matches(&cordoned));
        assert!(!sel("spec.unschedulable=false").matches(&cordoned));
        assert!(sel("status.replicas=0").matches(&json!({})));
        assert!(sel("status.replicas=3").matches(&json!({"status": {"replicas": 3}})));
        let ev = json!({"source": {"component": "kubelet", "host": "n1"}});
        assert!(sel("source=kubelet").matches(&ev));
        assert!(sel("source=").matches(&json!({})));
    }
}
