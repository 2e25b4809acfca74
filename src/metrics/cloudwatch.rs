//! The CloudWatch `PutMetricData` sink.
//!
//! Samples are aggregated in memory and shipped by [`CloudWatchSink::flush`]: from the service's
//! periodic flush, at the end of a job or invocation, and on shutdown. So the number of API calls per
//! period is independent of the request rate: one call per 1,000 datums, each datum at most 150
//! distinct values (the API's limits). A failed call is retried (SDK backoff), then its datums wait
//! in a bounded buffer for the next flush; what no longer fits is dropped and counted as
//! `MetricsDropped`, which is itself shipped once CloudWatch answers again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StandardUnit};

use super::aggregate::{Aggregated, Aggregator};
use super::telemetry::{Dimensions, Metric, MetricSink, Sample};
use crate::source::BoxFuture;

/// CloudWatch limits: values per datum and datums per PutMetricData call.
pub const MAX_VALUES_PER_DATUM: usize = 150;
pub const MAX_DATUMS_PER_CALL: usize = 1000;

/// Datums kept for retry while CloudWatch is unreachable (about 10 flushes of a busy server).
pub const DEFAULT_MAX_PENDING_DATUMS: usize = 10_000;

pub struct CloudWatchSink {
    client: crate::aws::Shared<aws_sdk_cloudwatch::Client>,
    namespace: String,
    current: Mutex<Aggregator>,
    /// Datums whose call failed, oldest first; bounded by `max_pending`.
    pending: Mutex<VecDeque<MetricDatum>>,
    max_pending: usize,
    /// Datums dropped since last reported; becomes a `MetricsDropped` datum.
    dropped: AtomicU64,
    /// Successful PutMetricData calls, for tests and benchmarks.
    calls: AtomicU64,
    /// Failed PutMetricData calls (after the SDK's retries).
    failures: AtomicU64,
    /// Datums the last flush tried to send.
    last_flush_datums: AtomicU64,
    /// The dimensions `MetricsDropped` is reported under (the last seen).
    last_dimensions: Mutex<Option<Dimensions>>,
    /// One flush at a time: a periodic flush and a shutdown flush must not interleave.
    flushing: tokio::sync::Mutex<()>,
}

impl CloudWatchSink {
    pub fn new(
        client: impl Into<crate::aws::Shared<aws_sdk_cloudwatch::Client>>,
        namespace: impl Into<String>,
        max_pending: usize,
    ) -> Self {
        CloudWatchSink {
            client: client.into(),
            namespace: namespace.into(),
            current: Mutex::new(Aggregator::default()),
            pending: Mutex::new(VecDeque::new()),
            max_pending,
            dropped: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            last_flush_datums: AtomicU64::new(0),
            last_dimensions: Mutex::new(None),
            flushing: tokio::sync::Mutex::new(()),
        }
    }

    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub fn last_flush_datums(&self) -> usize {
        self.last_flush_datums.load(Ordering::Relaxed) as usize
    }

    /// Samples dropped and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn pending(&self) -> usize {
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    async fn flush_now(&self) {
        let _one_at_a_time = self.flushing.lock().await;
        let aggregated = self
            .current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        let timestamp = aws_sdk_cloudwatch::primitives::DateTime::from(SystemTime::now());
        let mut datums: Vec<MetricDatum> = aggregated
            .iter()
            .flat_map(|a| to_datums(a, timestamp))
            .collect();
        let dropped = self.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            let dimensions = self
                .last_dimensions
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            if let Some(dimensions) = dimensions {
                datums.extend(to_datums(
                    &Aggregated {
                        metric: Metric::MetricsDropped,
                        dimensions,
                        values: vec![(dropped as f64, 1.0)],
                    },
                    timestamp,
                ));
            }
        }
        let batch: Vec<MetricDatum> = {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            pending.extend(datums);
            let overflow = pending.len().saturating_sub(self.max_pending);
            if overflow > 0 {
                pending.drain(..overflow);
                self.dropped.fetch_add(overflow as u64, Ordering::Relaxed);
            }
            pending.drain(..).collect()
        };
        self.last_flush_datums
            .store(batch.len() as u64, Ordering::Relaxed);
        let mut unsent = Vec::new();
        let mut chunks = batch.chunks(MAX_DATUMS_PER_CALL);
        for chunk in chunks.by_ref() {
            let result = self
                .client
                .current()
                .put_metric_data()
                .namespace(&self.namespace)
                .set_metric_data(Some(chunk.to_vec()))
                .send()
                .await;
            match result {
                Ok(_) => {
                    self.calls.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(
                        datums = chunk.len(),
                        "CloudWatch PutMetricData failed; keeping the datums for the next flush: {}",
                        aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
                    );
                    unsent.extend_from_slice(chunk);
                    // CloudWatch is down: do not hammer it with the rest in this flush.
                    break;
                }
            }
        }
        unsent.extend(chunks.flatten().cloned());
        if !unsent.is_empty() {
            let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
            for datum in unsent.into_iter().rev() {
                pending.push_front(datum);
            }
            let overflow = pending.len().saturating_sub(self.max_pending);
            if overflow > 0 {
                pending.drain(..overflow);
                self.dropped.fetch_add(overflow as u64, Ordering::Relaxed);
            }
        }
    }
}

/// One datum per dimension set (see [`Dimensions::dimension_sets`]) and per 150 distinct values.
fn to_datums(
    aggregated: &Aggregated,
    timestamp: aws_sdk_cloudwatch::primitives::DateTime,
) -> Vec<MetricDatum> {
    let mut datums = Vec::new();
    for set in aggregated.dimensions.dimension_sets() {
        let dimensions: Vec<Dimension> = set
            .into_iter()
            .map(|(name, value)| Dimension::builder().name(name).value(value).build())
            .collect();
        for chunk in aggregated.values.chunks(MAX_VALUES_PER_DATUM) {
            datums.push(
                MetricDatum::builder()
                    .metric_name(aggregated.metric.name())
                    .unit(StandardUnit::from(aggregated.metric.unit()))
                    .timestamp(timestamp)
                    .set_dimensions(Some(dimensions.clone()))
                    .set_values(Some(chunk.iter().map(|(v, _)| *v).collect()))
                    .set_counts(Some(chunk.iter().map(|(_, c)| *c).collect()))
                    .build(),
            );
        }
    }
    datums
}

impl MetricSink for CloudWatchSink {
    fn record(&self, sample: &Sample) {
        if sample.metric.is_local() {
            return;
        }
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .record(sample);
        let mut last = self
            .last_dimensions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if last.as_ref() != Some(&sample.dimensions) && sample.dimensions.horizon_bucket.is_none() {
            *last = Some(sample.dimensions.clone());
        }
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.flush_now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_distribution_with_many_distinct_values_is_split_into_datums_of_150() {
        let aggregated = Aggregated {
            metric: Metric::ForecastLatency,
            dimensions: Dimensions {
                model: Arc::from("m"),
                model_version: Arc::from("1"),
                stage: None,
                horizon_bucket: None,
                feature: None,
                level: None,
                challenger: None,
            },
            values: (0..400).map(|i| (i as f64, 2.0)).collect(),
        };
        let datums = to_datums(
            &aggregated,
            aws_sdk_cloudwatch::primitives::DateTime::from_secs(0),
        );
        assert_eq!(
            datums.len(),
            6,
            "3 chunks of <= 150 values, under 2 dimension sets"
        );
        assert_eq!(datums[0].values().len(), 150);
        assert_eq!(datums[2].counts().len(), 100);
        assert_eq!(datums[0].unit(), Some(&StandardUnit::Milliseconds));
        assert_eq!(
            datums[0].dimensions().len(),
            1,
            "Model only: what alarms watch"
        );
        assert_eq!(datums[3].dimensions().len(), 2, "Model and ModelVersion");
    }
}
