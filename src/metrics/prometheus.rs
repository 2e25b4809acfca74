//! Prometheus metrics of the serving process (`GET /metrics`).
//!
//! One registry per server instance rather than the global default, so several servers can live in
//! one process (integration tests do) without their counters mixing. Nothing writes to these
//! families but the [`PrometheusSink`]: it reads the same samples and request outcomes as the
//! CloudWatch and EMF sinks, and maps them onto the native families (requests by route and status,
//! inference and queue time, batch sizes, ...) or onto one family per facade metric (drift,
//! accuracy, backtest, ...), as each metric's row of [`super::telemetry::METRICS`] says. Memory is
//! read at scrape time ([`super::process`]).

use std::collections::HashMap;
use std::sync::Mutex;

use prometheus::{
    Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use super::telemetry::{
    Dimensions, Kind, Metric, MetricSink, MetricSpec, Prometheus, RequestOutcome, Sample,
};
use crate::model::contract::ModelMetadata;
use crate::source::BoxFuture;

#[derive(Clone)]
pub struct ServerMetrics {
    registry: Registry,
    /// Whole-request latency by route, including queueing and JSON.
    pub request_duration: HistogramVec,
    /// Preprocessing + forward + restore, per request.
    pub inference_duration: Histogram,
    /// Time requests waited for an engine thread.
    pub queue_duration: Histogram,
    /// Series forecast (a request may carry many).
    pub forecasts: IntCounter,
    /// Answered requests by route and status code.
    pub requests: IntCounterVec,
    /// Failed requests by error code (`wrong_window_length`, `overloaded`, ...).
    pub errors: IntCounterVec,
    /// Windows per forward pass (requests batched together, backtests included).
    pub batch_windows: Histogram,
    /// Requests waiting for an engine thread, sampled when a forecast request arrives.
    pub queue_depth: prometheus::IntGauge,
    /// Successful hot reloads (a new version from the registry alias).
    pub model_reloads: IntCounter,
    /// Reloads that failed; the previous model kept serving.
    pub model_reload_failures: IntCounter,
    model_info: IntGaugeVec,
}

/// Latency buckets from 100 µs to 10 s: a single forward takes well under a millisecond and a
/// full batch a few milliseconds, so the fine buckets sit at the bottom and the coarse ones catch
/// queueing and stalls (figures: BENCHMARKS.md, "Forward latency and the latency buckets").
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    10.0,
];

fn histogram(name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric")
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::new(name, help).expect("valid metric")
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric")
}

impl ServerMetrics {
    pub fn new() -> Self {
        let latency = |name, help| histogram(name, help, LATENCY_BUCKETS.to_vec());
        let metrics = ServerMetrics {
            registry: Registry::new(),
            request_duration: HistogramVec::new(
                HistogramOpts::new(
                    "lstm_forecast_request_duration_seconds",
                    "Whole-request latency by route.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["route"],
            )
            .expect("valid metric"),
            inference_duration: latency(
                "lstm_forecast_inference_duration_seconds",
                "Preprocessing, forward pass and restore, per request.",
            ),
            queue_duration: latency(
                "lstm_forecast_queue_duration_seconds",
                "Time a request waited for an engine thread.",
            ),
            forecasts: counter("lstm_forecast_forecasts_total", "Series forecast."),
            requests: counter_vec(
                "lstm_forecast_requests_total",
                "Answered requests by route and status.",
                &["route", "status"],
            ),
            errors: counter_vec(
                "lstm_forecast_errors_total",
                "Failed requests by error code.",
                &["kind"],
            ),
            model_reloads: counter(
                "lstm_forecast_model_reloads_total",
                "Models hot-reloaded from the registry.",
            ),
            model_reload_failures: counter(
                "lstm_forecast_model_reload_failures_total",
                "Hot reloads that failed (the previous model kept serving).",
            ),
            batch_windows: histogram(
                "lstm_forecast_batch_windows",
                "Windows per forward pass (dynamic batching).",
                vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0],
            ),
            queue_depth: prometheus::IntGauge::new(
                "lstm_forecast_queue_depth",
                "Requests waiting for an engine thread.",
            )
            .expect("valid metric"),
            model_info: IntGaugeVec::new(
                Opts::new(
                    "lstm_forecast_model_info",
                    "The model in service (value is always 1).",
                ),
                &["name", "version"],
            )
            .expect("valid metric"),
        };
        metrics.register_all();
        metrics
    }

    fn register_all(&self) {
        for collector in [
            Box::new(super::process::ProcessCollector::new())
                as Box<dyn prometheus::core::Collector>,
            Box::new(self.request_duration.clone()),
            Box::new(self.inference_duration.clone()),
            Box::new(self.queue_duration.clone()),
            Box::new(self.forecasts.clone()),
            Box::new(self.requests.clone()),
            Box::new(self.errors.clone()),
            Box::new(self.model_info.clone()),
            Box::new(self.model_reloads.clone()),
            Box::new(self.batch_windows.clone()),
            Box::new(self.queue_depth.clone()),
            Box::new(self.model_reload_failures.clone()),
        ] {
            self.registry
                .register(collector)
                .expect("metric names are unique");
        }
    }

    /// Marks `metadata` as the model in service (and only it).
    pub fn set_model(&self, metadata: &ModelMetadata) {
        self.model_info.reset();
        self.model_info
            .with_label_values(&[metadata.name.as_str(), metadata.version.as_str()])
            .set(1);
    }

    /// Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory cannot fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl ServerMetrics {
    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// The facade's metrics in Prometheus form: those with a native family (forecasts, inference and
/// queue time, batch sizes, reloads, requests) go there; the rest become families
/// `lstm_forecast_<name>` with labels `model`, `model_version`, `horizon_bucket`, `feature`, `level`,
/// `challenger`.
pub struct PrometheusSink {
    native: ServerMetrics,
    families: Mutex<HashMap<Metric, Family>>,
}

enum Family {
    Counter(prometheus::CounterVec),
    Histogram(HistogramVec),
    Gauge(GaugeVec),
}

const LABELS: [&str; 6] = [
    "model",
    "model_version",
    "horizon_bucket",
    "feature",
    "level",
    "challenger",
];

/// Prometheus name for a facade metric's own family, or `None` when a native family covers it
/// (see [`PrometheusSink::record_native`]), the request families do (see
/// [`PrometheusSink::record_request`]) or the process collector reads it at scrape time.
pub fn prometheus_name(metric: Metric) -> Option<&'static str> {
    match metric.spec().prometheus {
        Prometheus::Family(name) => Some(name),
        Prometheus::Native | Prometheus::PerRequest | Prometheus::AtScrape => None,
    }
}

impl PrometheusSink {
    pub fn new(metrics: &ServerMetrics) -> Self {
        PrometheusSink {
            native: metrics.clone(),
            families: Mutex::new(HashMap::new()),
        }
    }

    /// Samples of the [`Prometheus::Native`] rows; false for the others.
    fn record_native(&self, sample: &Sample) -> bool {
        let native = &self.native;
        let value = sample.value;
        match sample.metric {
            Metric::Forecasts => native.forecasts.inc_by(value.max(0.0) as u64),
            Metric::InferenceLatency => native.inference_duration.observe(value / 1e3),
            Metric::QueueLatency => native.queue_duration.observe(value / 1e3),
            Metric::BatchWindows => native.batch_windows.observe(value),
            Metric::QueueDepth => native.queue_depth.set(value as i64),
            Metric::ModelReloads => native.model_reloads.inc_by(value.max(0.0) as u64),
            Metric::ModelReloadFailures => {
                native.model_reload_failures.inc_by(value.max(0.0) as u64)
            }
            _ => return false,
        }
        true
    }

    /// A sample of a metric with a family of its own (`name`), made on its first sample: a
    /// counter, gauge or histogram by the metric's kind, with the row's buckets.
    fn record_in_family(&self, name: &'static str, spec: &MetricSpec, sample: &Sample) {
        let mut families = self.families.lock().unwrap_or_else(|p| p.into_inner());
        let family = families.entry(sample.metric).or_insert_with(|| {
            let help = format!(
                "{} (CloudWatch metric {}, unit {})",
                name, spec.name, spec.unit
            );
            let family = match spec.kind {
                Kind::Counter => Family::Counter(
                    prometheus::CounterVec::new(Opts::new(name, help), &LABELS).expect("valid"),
                ),
                Kind::Gauge => {
                    Family::Gauge(GaugeVec::new(Opts::new(name, help), &LABELS).expect("valid"))
                }
                Kind::Distribution => Family::Histogram(
                    HistogramVec::new(
                        HistogramOpts::new(name, help).buckets(spec.buckets.to_vec()),
                        &LABELS,
                    )
                    .expect("valid"),
                ),
            };
            let collector: Box<dyn prometheus::core::Collector> = match &family {
                Family::Counter(c) => Box::new(c.clone()),
                Family::Gauge(g) => Box::new(g.clone()),
                Family::Histogram(h) => Box::new(h.clone()),
            };
            if let Err(e) = self.native.registry().register(collector) {
                tracing::warn!("prometheus family {name}: {e}");
            }
            family
        });
        let d = &sample.dimensions;
        let labels = [
            &*d.model,
            &*d.model_version,
            d.horizon_bucket.as_deref().unwrap_or(""),
            d.feature.as_deref().unwrap_or(""),
            d.level.as_deref().unwrap_or(""),
            d.challenger.as_deref().unwrap_or(""),
        ];
        match family {
            Family::Counter(c) => c.with_label_values(&labels).inc_by(sample.value.max(0.0)),
            Family::Gauge(g) => g.with_label_values(&labels).set(sample.value),
            Family::Histogram(h) => h.with_label_values(&labels).observe(sample.value),
        }
    }
}

impl MetricSink for PrometheusSink {
    fn record_request(&self, outcome: &RequestOutcome<'_>, _dimensions: &Dimensions) {
        let native = &self.native;
        native
            .request_duration
            .with_label_values(&[outcome.route])
            .observe(outcome.elapsed.as_secs_f64());
        native
            .requests
            .with_label_values(&[outcome.route, &outcome.status.to_string()])
            .inc();
        if let Some(code) = outcome.error_code {
            native.errors.with_label_values(&[code]).inc();
        }
    }

    fn record(&self, sample: &Sample) {
        let spec = sample.metric.spec();
        match spec.prometheus {
            Prometheus::Native => {
                self.record_native(sample);
            }
            Prometheus::Family(name) => self.record_in_family(name, spec, sample),
            Prometheus::PerRequest | Prometheus::AtScrape => {}
        }
    }

    fn flush(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }
}

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::telemetry::{test_sample, METRICS};

    #[test]
    fn the_native_families_take_exactly_the_native_rows() {
        let sink = PrometheusSink::new(&ServerMetrics::new());
        for spec in METRICS {
            assert_eq!(
                sink.record_native(&test_sample(spec.metric, 1.0)),
                spec.prometheus == Prometheus::Native,
                "{:?}",
                spec.metric
            );
        }
    }

    #[test]
    fn a_family_of_its_own_is_exposed_with_its_rows_buckets() {
        let metrics = ServerMetrics::new();
        let sink = PrometheusSink::new(&metrics);
        sink.record(&test_sample(Metric::ColdStartDuration, 30.0));
        sink.record(&test_sample(Metric::ScoredPairs, 2.0));
        let text = metrics.render();
        // 10 s: the start-up buckets' last, beyond every native family's.
        assert!(
            text.contains("lstm_forecast_cold_start_duration_milliseconds_bucket{")
                && text.contains("le=\"10000\""),
            "{text}"
        );
        assert!(
            text.contains("lstm_forecast_accuracy_scored_pairs_total{"),
            "{text}"
        );
    }
}
