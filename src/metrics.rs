//! Prometheus metrics of the serving process (`GET /metrics`).
//!
//! One registry per server instance rather than the global default, so several servers can live in
//! one process (integration tests do) without their counters mixing.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::model::contract::ModelMetadata;

#[derive(Clone)]
pub struct ServerMetrics {
    registry: Registry,
    /// Whole-request latency by route, including queueing and JSON.
    pub request_duration: HistogramVec,
    /// Preprocessing + forward + restore, per request.
    pub inference_duration: Histogram,
    /// Time requests waited for the engine thread.
    pub queue_duration: Histogram,
    /// Series forecast (a request may carry many).
    pub forecasts: IntCounter,
    /// Answered requests by route and status code.
    pub requests: IntCounterVec,
    /// Failed requests by error code (`wrong_window_length`, `overloaded`, ...).
    pub errors: IntCounterVec,
    /// Successful hot reloads (a new version from the registry alias).
    pub model_reloads: IntCounter,
    /// Reloads that failed; the previous model kept serving.
    pub model_reload_failures: IntCounter,
    model_info: IntGaugeVec,
}

/// Latency buckets from 100 µs to 10 s: a single forward is ~0.4 ms, a batch of 64 ~6 ms.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

impl ServerMetrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let request_duration = HistogramVec::new(
            HistogramOpts::new(
                "lstm_forecast_request_duration_seconds",
                "Whole-request latency by route.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )
        .expect("valid metric");
        let inference_duration = Histogram::with_opts(
            HistogramOpts::new(
                "lstm_forecast_inference_duration_seconds",
                "Preprocessing, forward pass and restore, per request.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let queue_duration = Histogram::with_opts(
            HistogramOpts::new(
                "lstm_forecast_queue_duration_seconds",
                "Time a request waited for the engine thread.",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        let forecasts = IntCounter::new("lstm_forecast_forecasts_total", "Series forecast.").expect("valid metric");
        let requests = IntCounterVec::new(
            Opts::new("lstm_forecast_requests_total", "Answered requests by route and status."),
            &["route", "status"],
        )
        .expect("valid metric");
        let errors = IntCounterVec::new(
            Opts::new("lstm_forecast_errors_total", "Failed requests by error code."),
            &["kind"],
        )
        .expect("valid metric");
        let model_reloads =
            IntCounter::new("lstm_forecast_model_reloads_total", "Models hot-reloaded from the registry.").expect("valid metric");
        let model_reload_failures = IntCounter::new(
            "lstm_forecast_model_reload_failures_total",
            "Hot reloads that failed (the previous model kept serving).",
        )
        .expect("valid metric");
        let model_info = IntGaugeVec::new(
            Opts::new("lstm_forecast_model_info", "The model in service (value is always 1)."),
            &["name", "version"],
        )
        .expect("valid metric");
        for collector in [
            Box::new(request_duration.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(inference_duration.clone()),
            Box::new(queue_duration.clone()),
            Box::new(forecasts.clone()),
            Box::new(requests.clone()),
            Box::new(errors.clone()),
            Box::new(model_info.clone()),
            Box::new(model_reloads.clone()),
            Box::new(model_reload_failures.clone()),
        ] {
            registry.register(collector).expect("metric names are unique");
        }
        ServerMetrics {
            registry,
            request_duration,
            inference_duration,
            queue_duration,
            forecasts,
            requests,
            errors,
            model_reloads,
            model_reload_failures,
            model_info,
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

impl Default for ServerMetrics {
    fn default() -> Self {
        Self::new()
    }
}
