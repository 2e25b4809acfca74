//! Reading what the code published: samples caught in process, and EMF lines from a log.

use std::collections::BTreeMap;
use std::sync::Mutex;

use lstm_forecast::metrics::{Metric, MetricSink, Sample};
use lstm_forecast::source::BoxFuture;

/// A metric sink that keeps every sample, for tests that look at what the code recorded.
#[derive(Default)]
pub struct Collected(Mutex<Vec<Sample>>);

impl Collected {
    /// Every value recorded for `metric`, in order.
    pub fn values(&self, metric: Metric) -> Vec<f64> {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.metric == metric)
            .map(|s| s.value)
            .collect()
    }
}

impl MetricSink for Collected {
    fn record(&self, sample: &Sample) {
        self.0.lock().unwrap().push(sample.clone());
    }
    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

/// Every value of every metric in the EMF documents among `log`'s lines (counters: one value per
/// document, the sum of its period; distributions: each value).
pub fn emf_values(log: &str) -> BTreeMap<String, Vec<f64>> {
    let mut values: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    for line in log.lines().filter(|l| l.contains("\"_aws\"")) {
        let doc: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("an EMF line that is not JSON ({e}): {line}"));
        for metric in doc["_aws"]["CloudWatchMetrics"][0]["Metrics"]
            .as_array()
            .unwrap()
        {
            let name = metric["Name"].as_str().unwrap();
            let entry = values.entry(name.to_string()).or_default();
            match &doc[name] {
                serde_json::Value::Array(items) => {
                    entry.extend(items.iter().map(|v| v.as_f64().unwrap()))
                }
                other => entry.push(other.as_f64().unwrap()),
            }
        }
    }
    values
}
