//! CloudWatch Embedded Metric Format: metrics as structured log lines on stdout.
//!
//! Inside Lambda this is the cheapest way to publish a metric: the log line is the metric, with no
//! CloudWatch API call on the request path. Limits from the EMF specification are enforced here
//! (at most 100 metrics per directive, 30 dimensions).

use std::io::Write;
use std::sync::Mutex;

use serde_json::{json, Map, Value};

use super::aggregate::Aggregator;
use super::telemetry::{Kind, MetricSink, Sample};
use crate::source::BoxFuture;

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

/// Builds one EMF document. `dimensions` become top-level members; the metrics are published under
/// two dimension sets: all of them, and all but `ModelVersion` (see `Dimensions::dimension_sets`).
pub fn document(
    namespace: &str,
    dimensions: &[(&str, &str)],
    metrics: &[Datum<'_>],
    timestamp_ms: i64,
) -> Value {
    assert!(
        metrics.len() <= MAX_METRICS_PER_DIRECTIVE,
        "EMF allows 100 metrics per directive"
    );
    assert!(
        dimensions.len() <= MAX_DIMENSIONS,
        "EMF allows 30 dimensions"
    );
    let all: Vec<&str> = dimensions.iter().map(|(k, _)| *k).collect();
    let stable: Vec<&str> = all
        .iter()
        .copied()
        .filter(|k| *k != super::DIM_MODEL_VERSION)
        .collect();
    let sets = if stable.len() == all.len() {
        vec![all]
    } else {
        vec![stable, all]
    };
    let mut root = Map::new();
    root.insert(
        "_aws".into(),
        json!({
            "Timestamp": timestamp_ms,
            "CloudWatchMetrics": [{
                "Namespace": namespace,
                "Dimensions": sets,
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

/// The EMF sink: aggregates like the CloudWatch sink and, on flush, writes one line per dimension
/// set (more when over 100 metrics). Distributions are written as value arrays (at most 100 values
/// per metric per line), which CloudWatch turns into statistics.
pub struct EmfSink {
    namespace: String,
    current: Mutex<Aggregator>,
    out: Mutex<Box<dyn Write + Send>>,
}

impl EmfSink {
    pub fn stdout(namespace: impl Into<String>) -> Self {
        Self::new(namespace, Box::new(std::io::stdout()))
    }

    pub fn new(namespace: impl Into<String>, out: Box<dyn Write + Send>) -> Self {
        EmfSink {
            namespace: namespace.into(),
            current: Mutex::new(Aggregator::default()),
            out: Mutex::new(out),
        }
    }

    /// The EMF documents for everything recorded since the last call.
    pub fn drain_documents(&self) -> Vec<Value> {
        let aggregated = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let timestamp = chrono::Utc::now().timestamp_millis();
        let mut groups: std::collections::BTreeMap<_, Vec<_>> = std::collections::BTreeMap::new();
        for a in aggregated {
            groups.entry(a.dimensions.clone()).or_default().push(a);
        }
        let mut documents = Vec::new();
        for (dimensions, metrics) in groups {
            let pairs = dimensions.pairs();
            for chunk in metrics.chunks(MAX_METRICS_PER_DIRECTIVE) {
                // Expand value/count pairs into at most 100 values per metric per document.
                let expanded: Vec<(&'static str, &'static str, Vec<f64>)> = chunk
                    .iter()
                    .map(|a| {
                        let values = match a.metric.kind() {
                            Kind::Counter | Kind::Gauge => vec![a.values[0].0],
                            Kind::Distribution => a
                                .values
                                .iter()
                                .flat_map(|(v, c)| std::iter::repeat_n(*v, *c as usize))
                                .collect(),
                        };
                        (a.metric.name(), a.metric.unit(), values)
                    })
                    .collect();
                let lines = expanded
                    .iter()
                    .map(|(_, _, v)| v.len().div_ceil(MAX_VALUES_PER_METRIC))
                    .max()
                    .unwrap_or(1);
                for line in 0..lines {
                    let mut data = Vec::new();
                    for (name, unit, values) in &expanded {
                        let part: Vec<f64> = values
                            .iter()
                            .skip(line * MAX_VALUES_PER_METRIC)
                            .take(MAX_VALUES_PER_METRIC)
                            .copied()
                            .collect();
                        if !part.is_empty() {
                            data.push((*name, *unit, part));
                        }
                    }
                    documents.push(document_with_values(
                        &self.namespace,
                        &pairs,
                        &data,
                        timestamp,
                    ));
                }
            }
        }
        documents
    }
}

/// EMF allows at most 100 values in one metric's array.
pub const MAX_VALUES_PER_METRIC: usize = 100;

/// Like [`document`], with each metric's value an array when it has several.
pub fn document_with_values(
    namespace: &str,
    dimensions: &[(&str, &str)],
    metrics: &[(&str, &str, Vec<f64>)],
    timestamp_ms: i64,
) -> Value {
    let data: Vec<Datum<'_>> = metrics
        .iter()
        .map(|(name, unit, values)| Datum {
            name,
            unit,
            value: values[0],
        })
        .collect();
    let mut doc = document(namespace, dimensions, &data, timestamp_ms);
    for (name, _, values) in metrics {
        if values.len() > 1 {
            doc[*name] = json!(values);
        }
    }
    doc
}

impl MetricSink for EmfSink {
    fn record(&self, sample: &Sample) {
        if sample.metric.is_local() {
            return;
        }
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(sample);
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        let documents = self.drain_documents();
        Box::pin(async move {
            let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
            for doc in documents {
                let _ = writeln!(out, "{doc}");
            }
            let _ = out.flush();
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::metrics::telemetry::Metric;

    use crate::metrics::telemetry::test_sample as sample;

    #[test]
    fn a_flush_writes_valid_documents_within_the_limits() {
        let sink = EmfSink::new("LstmForecast", Box::new(std::io::sink()));
        for i in 0..250 {
            sink.record(&sample(Metric::ForecastLatency, i as f64));
        }
        sink.record(&sample(Metric::Forecasts, 1.0));
        sink.record(&sample(Metric::Forecasts, 1.0));
        let docs = sink.drain_documents();
        assert_eq!(
            docs.len(),
            3,
            "250 latency values need 3 documents of <= 100"
        );
        for doc in &docs {
            let directive = &doc["_aws"]["CloudWatchMetrics"][0];
            assert!(directive["Metrics"].as_array().unwrap().len() <= MAX_METRICS_PER_DIRECTIVE);
            for set in directive["Dimensions"].as_array().unwrap() {
                assert!(set.as_array().unwrap().len() <= MAX_DIMENSIONS);
            }
            for metric in directive["Metrics"].as_array().unwrap() {
                let name = metric["Name"].as_str().unwrap();
                let values = &doc[name];
                assert!(
                    values.is_number() || values.as_array().unwrap().len() <= MAX_VALUES_PER_METRIC
                );
            }
        }
        assert_eq!(docs[0]["Forecasts"], 2.0);
        assert_eq!(docs[0]["ForecastLatency"].as_array().unwrap().len(), 100);
    }

    #[test]
    fn a_document_declares_its_metrics_and_carries_their_values() {
        let doc = document(
            "LstmForecast",
            &[("Model", "m"), ("ModelVersion", "1")],
            &[Datum {
                name: "ModelRollbacks",
                unit: "Count",
                value: 1.0,
            }],
            1_700_000_000_000,
        );
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "LstmForecast");
        assert_eq!(
            directive["Dimensions"],
            json!([["Model"], ["Model", "ModelVersion"]])
        );
        assert_eq!(
            directive["Metrics"][0],
            json!({"Name": "ModelRollbacks", "Unit": "Count"})
        );
        assert_eq!(doc["ModelRollbacks"], 1.0);
        assert_eq!(doc["Model"], "m");
        assert_eq!(doc["_aws"]["Timestamp"], 1_700_000_000_000i64);
    }
}
