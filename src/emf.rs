//! CloudWatch Embedded Metric Format: metrics as structured log lines on stdout.
//!
//! Inside Lambda this is the cheapest way to publish a metric: the log line is the metric, with no
//! CloudWatch API call on the request path. Limits from the EMF specification are enforced here
//! (at most 100 metrics per directive, 30 dimensions).

use std::io::Write;

use serde_json::{json, Map, Value};

pub const MAX_METRICS_PER_DIRECTIVE: usize = 100;
pub const MAX_DIMENSIONS: usize = 30;

/// The namespace all of this service's metrics live in, unless configured otherwise.
pub const DEFAULT_NAMESPACE: &str = "LstmForecast";

/// One metric value in a line.
#[derive(Debug, Clone, Copy)]
pub struct Datum<'a> {
    pub name: &'a str,
    pub unit: &'a str,
    pub value: f64,
}

/// Builds one EMF document. `dimensions` become both the dimension set and top-level members.
pub fn document(namespace: &str, dimensions: &[(&str, &str)], metrics: &[Datum<'_>], timestamp_ms: i64) -> Value {
    assert!(metrics.len() <= MAX_METRICS_PER_DIRECTIVE, "EMF allows 100 metrics per directive");
    assert!(dimensions.len() <= MAX_DIMENSIONS, "EMF allows 30 dimensions");
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": [dimensions.iter().map(|(k, _)| *k).collect::<Vec<_>>()],
                "Metrics": metrics.iter().map(|m| json!({"Name": m.name, "Unit": m.unit})).collect::<Vec<_>>(),
            }]
        }),
    );
    for (key, value) in dimensions {
        root.insert((*key).into(), Value::String((*value).into()));
    }
    for metric in metrics {
        root.insert(metric.name.into(), json!(metric.value));
    }
    Value::Object(root)
}

/// Writes one EMF line to stdout (CloudWatch Logs picks it up in Lambda and from awslogs in ECS).
pub fn emit(namespace: &str, dimensions: &[(&str, &str)], metrics: &[Datum<'_>]) {
    let line = document(namespace, dimensions, metrics, chrono::Utc::now().timestamp_millis());
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_document_declares_its_metrics_and_carries_their_values() {
        let doc = document(
            "LstmForecast",
            &[("Model", "m"), ("ModelVersion", "1")],
            &[Datum { name: "ModelRollbacks", unit: "Count", value: 1.0 }],
            1_700_000_000_000,
        );
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "LstmForecast");
        assert_eq!(directive["Dimensions"][0], json!(["Model", "ModelVersion"]));
        assert_eq!(directive["Metrics"][0], json!({"Name": "ModelRollbacks", "Unit": "Count"}));
        assert_eq!(doc["ModelRollbacks"], 1.0);
        assert_eq!(doc["Model"], "m");
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000i64);
    }
}
