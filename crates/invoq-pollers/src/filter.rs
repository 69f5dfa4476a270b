//! FilterCriteria patterns (EventBridge's pattern language, the subset Lambda documents for
//! SQS sources): a record is kept when it matches any pattern. A pattern is a JSON object
//! whose leaves are arrays of accepted values or rules: exact values, `{"prefix": s}`,
//! `{"suffix": s}`, `{"exists": bool}`, `{"anything-but": v | [v...]}` and
//! `{"numeric": [op, n, (op, n)]}`.

use serde_json::Value;

/// Whether `record` matches any of `patterns` (JSON text each); no patterns keep everything.
pub(crate) fn keeps(patterns: &[String], record: &Value) -> bool {
    patterns.is_empty()
        || patterns
            .iter()
            .filter_map(|pattern| serde_json::from_str::<Value>(pattern).ok())
            .any(|pattern| matches(&pattern, Some(record)))
}

fn matches(pattern: &Value, value: Option<&Value>) -> bool {
    match pattern {
        Value::Object(fields) => fields
            .iter()
            .all(|(key, sub)| matches(sub, value.and_then(|value| value.get(key)))),
        Value::Array(alternatives) => alternatives.iter().any(|rule| rule_matches(rule, value)),
        _ => false,
    }
}

fn rule_matches(rule: &Value, value: Option<&Value>) -> bool {
    let Value::Object(rule) = rule else {
        return value.is_some_and(|value| {
            value == rule || value.as_array().is_some_and(|items| items.contains(rule))
        });
    };
    let text = value.and_then(Value::as_str);
    rule.iter()
        .all(|(operator, operand)| match operator.as_str() {
            "exists" => operand.as_bool() == Some(value.is_some()),
            "prefix" => text
                .zip(operand.as_str())
                .is_some_and(|(t, p)| t.starts_with(p)),
            "suffix" => text
                .zip(operand.as_str())
                .is_some_and(|(t, s)| t.ends_with(s)),
            "anything-but" => value.is_some_and(|value| match operand {
                Value::Array(excluded) => !excluded.contains(value),
                excluded => value != excluded,
            }),
            "numeric" => value
                .and_then(Value::as_f64)
                .is_some_and(|number| numeric(operand, number)),
            _ => false,
        })
}

fn numeric(conditions: &Value, number: f64) -> bool {
    let Some(conditions) = conditions.as_array() else {
        return false;
    };
    conditions.chunks(2).all(|pair| {
        match (
            pair.first().and_then(Value::as_str),
            pair.get(1).and_then(Value::as_f64),
        ) {
            (Some("="), Some(n)) => number == n,
            (Some("<"), Some(n)) => number < n,
            (Some("<="), Some(n)) => number <= n,
            (Some(">"), Some(n)) => number > n,
            (Some(">="), Some(n)) => number >= n,
            _ => false,
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn patterns_match_like_lambda_filters() {
        let record = json!({"body": {"kind": "order", "total": 42, "region": "eu-west-1"}, "messageId": "m"});
        let keep = |pattern: Value| keeps(&[pattern.to_string()], &record);
        assert!(keep(json!({"body": {"kind": ["order"]}})));
        assert!(!keep(json!({"body": {"kind": ["refund"]}})));
        assert!(keep(json!({"body": {"region": [{"prefix": "eu-"}]}})));
        assert!(keep(
            json!({"body": {"total": [{"numeric": [">", 10, "<=", 42]}]}})
        ));
        assert!(!keep(json!({"body": {"total": [{"numeric": [">", 42]}]}})));
        assert!(keep(json!({"body": {"coupon": [{"exists": false}]}})));
        assert!(keep(
            json!({"body": {"kind": [{"anything-but": ["refund"]}]}})
        ));
        assert!(keeps(&[], &record), "no filters keep everything");
        let either = [
            json!({"body": {"kind": ["refund"]}}).to_string(),
            json!({"body": {"total": [42]}}).to_string(),
        ];
        assert!(keeps(&either, &record), "any pattern may match");
    }
}

#[cfg(test)]
mod properties {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    /// JSON values up to a few levels deep.
    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<f64>().prop_map(|n| json!(n)),
            "\\PC{0,12}".prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
                prop::collection::btree_map(
                    "(body|prefix|suffix|exists|anything-but|numeric|[a-z]{1,4})",
                    inner,
                    0..4
                )
                .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn any_pattern_text_against_any_record_never_panics(
            pattern in "\\PC{0,120}",
            record in json_value(),
        ) {
            let _ = keeps(&[pattern], &record);
        }

        #[test]
        fn any_pattern_value_against_any_record_never_panics(
            pattern in json_value(),
            record in json_value(),
        ) {
            let _ = keeps(&[pattern.to_string()], &record);
        }
    }
}
