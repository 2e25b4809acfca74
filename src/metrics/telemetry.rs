//! The facade: the metric list, samples and their dimensions, the sink port, and [`Telemetry`],
//! the handle every part of the service records on.

use std::sync::Arc;

use crate::source::BoxFuture;

/// Every metric this service publishes. The names are a contract with the alarms and dashboard in
/// `infra/`; a test compares the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Metric {
    /// Whole request, milliseconds.
    ForecastLatency,
    /// Preprocessing + forward + restore, milliseconds.
    InferenceLatency,
    /// Series forecast.
    Forecasts,
    /// Requests answered (any route of the API).
    Requests,
    /// 4xx answers.
    ClientErrors,
    /// 5xx answers.
    ServerErrors,
    /// Lambda init (or server start) until ready, milliseconds.
    ColdStartDuration,
    /// SnapStart: from the restore signal until the restore hooks are done (clients rebuilt, the
    /// alias re-checked), milliseconds. A restored environment publishes this, not
    /// `ColdStartDuration`.
    RestoreDuration,
    /// Loading and warming up a model, milliseconds.
    ModelLoadDuration,
    ModelReloads,
    ModelReloadFailures,
    ModelRollbacks,
    /// Resident set size, bytes.
    MemoryRss,
    /// Bytes of live allocations (jemalloc's count, libtorch's tensors included): a leak shows
    /// here first, without the pages the allocator or the kernel keep around.
    HeapAllocated,
    /// How far (training standard deviations) a request window lies from every training window
    /// (see `monitor::drift`); 0 for windows like the training data.
    InputDrift,
    /// Share of a window's values outside the training [min, max].
    OutOfRangeFraction,
    /// Accuracy against actuals (`evaluate`), also per `HorizonBucket`.
    Mae,
    Rmse,
    /// Weighted absolute percentage error: sum |error| / sum |actual|.
    Wape,
    /// Mean (forecast - actual).
    Bias,
    /// MAE relative to the repeat-last-value forecast on the same points.
    Mase,
    /// (forecast, actual) pairs an evaluation scored: the accuracy alarm ignores a WAPE that
    /// rests on fewer than its minimum.
    ScoredPairs,
    /// In-request backtest: MAE of a forecast from the history's older part against its newest values.
    BacktestMae,
    /// Metric samples dropped because a sink's buffer was full (CloudWatch unreachable for long).
    MetricsDropped,
    /// Share of the CPUs the process may use that it used over the last period, percent.
    CpuUtilization,
    /// Series a batch job forecast and wrote (its absence for a day means the output is stale).
    BatchSeries,
    /// Batch shards that failed (bad input, S3, the engine), counted per shard invocation.
    BatchShardFailures,
    /// Batch runs whose manifest was written (none within the run's deadline: the run is stuck).
    BatchManifests,
    /// Forecast-log records a flush could not write to the store (retried on the next flush while
    /// the buffer has room): the accuracy loop is going blind.
    ForecastLogFailures,
    /// Share of actuals inside the prediction intervals served with their forecasts (`evaluate`),
    /// per `Level` and `HorizonBucket`: below the level means overconfident intervals.
    IntervalCoverage,
    /// Mean width (upper - lower) of those intervals, in the target's units, per `Level`.
    IntervalWidth,
    /// Local: time a forecast waited for an engine thread, milliseconds.
    QueueLatency,
    /// Local: windows in the forward pass a forecast rode in (dynamic batching).
    BatchWindows,
    /// Local: forecasts waiting for an engine thread when one more arrived.
    QueueDepth,
}

/// How a metric aggregates and which CloudWatch unit it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Summed per period (CloudWatch Sum; Prometheus counter).
    Counter,
    /// A distribution of samples (CloudWatch Values/Counts with statistics; Prometheus histogram).
    Distribution,
    /// Last or average value (CloudWatch Values; Prometheus gauge).
    Gauge,
}

impl Metric {
    pub const ALL: [Metric; 31] = [
        Metric::ForecastLatency,
        Metric::InferenceLatency,
        Metric::Forecasts,
        Metric::Requests,
        Metric::ClientErrors,
        Metric::ServerErrors,
        Metric::ColdStartDuration,
        Metric::RestoreDuration,
        Metric::ModelLoadDuration,
        Metric::ModelReloads,
        Metric::ModelReloadFailures,
        Metric::ModelRollbacks,
        Metric::MemoryRss,
        Metric::HeapAllocated,
        Metric::InputDrift,
        Metric::OutOfRangeFraction,
        Metric::Mae,
        Metric::Rmse,
        Metric::Wape,
        Metric::Bias,
        Metric::Mase,
        Metric::ScoredPairs,
        Metric::BacktestMae,
        Metric::MetricsDropped,
        Metric::ForecastLogFailures,
        Metric::CpuUtilization,
        Metric::BatchSeries,
        Metric::BatchShardFailures,
        Metric::BatchManifests,
        Metric::IntervalCoverage,
        Metric::IntervalWidth,
    ];

    /// Process-local detail: exposed on `GET /metrics`, never pushed to CloudWatch (every
    /// CloudWatch metric is billed, and these matter only to someone looking at one process).
    pub const LOCAL: [Metric; 3] = [
        Metric::QueueLatency,
        Metric::BatchWindows,
        Metric::QueueDepth,
    ];

    pub fn is_local(self) -> bool {
        Metric::LOCAL.contains(&self)
    }

    /// The CloudWatch metric name.
    pub fn name(self) -> &'static str {
        match self {
            Metric::ForecastLatency => "ForecastLatency",
            Metric::InferenceLatency => "InferenceLatency",
            Metric::Forecasts => "Forecasts",
            Metric::Requests => "Requests",
            Metric::ClientErrors => "ClientErrors",
            Metric::ServerErrors => "ServerErrors",
            Metric::ColdStartDuration => "ColdStartDuration",
            Metric::RestoreDuration => "RestoreDuration",
            Metric::ModelLoadDuration => "ModelLoadDuration",
            Metric::ModelReloads => "ModelReloads",
            Metric::ModelReloadFailures => "ModelReloadFailures",
            Metric::ModelRollbacks => "ModelRollbacks",
            Metric::MemoryRss => "MemoryRSS",
            Metric::HeapAllocated => "HeapAllocated",
            Metric::InputDrift => "InputDrift",
            Metric::OutOfRangeFraction => "OutOfRangeFraction",
            Metric::Mae => "MAE",
            Metric::Rmse => "RMSE",
            Metric::Wape => "WAPE",
            Metric::Bias => "Bias",
            Metric::Mase => "MASE",
            Metric::ScoredPairs => "ScoredPairs",
            Metric::BacktestMae => "BacktestMAE",
            Metric::MetricsDropped => "MetricsDropped",
            Metric::ForecastLogFailures => "ForecastLogFailures",
            Metric::CpuUtilization => "CPUUtilization",
            Metric::BatchSeries => "BatchSeries",
            Metric::BatchShardFailures => "BatchShardFailures",
            Metric::BatchManifests => "BatchManifests",
            Metric::IntervalCoverage => "IntervalCoverage",
            Metric::IntervalWidth => "IntervalWidth",
            Metric::QueueLatency => "QueueLatency",
            Metric::BatchWindows => "BatchWindows",
            Metric::QueueDepth => "QueueDepth",
        }
    }

    /// CloudWatch `StandardUnit` name.
    pub fn unit(self) -> &'static str {
        match self {
            Metric::ForecastLatency
            | Metric::InferenceLatency
            | Metric::ColdStartDuration
            | Metric::RestoreDuration
            | Metric::ModelLoadDuration
            | Metric::QueueLatency => "Milliseconds",
            Metric::MemoryRss | Metric::HeapAllocated => "Bytes",
            Metric::CpuUtilization => "Percent",
            Metric::BatchWindows | Metric::QueueDepth => "None",
            Metric::Forecasts
            | Metric::Requests
            | Metric::ClientErrors
            | Metric::ServerErrors
            | Metric::ModelReloads
            | Metric::ModelReloadFailures
            | Metric::ModelRollbacks
            | Metric::MetricsDropped
            | Metric::ForecastLogFailures
            | Metric::ScoredPairs
            | Metric::BatchSeries
            | Metric::BatchShardFailures
            | Metric::BatchManifests => "Count",
            Metric::InputDrift
            | Metric::OutOfRangeFraction
            | Metric::Mae
            | Metric::Rmse
            | Metric::Wape
            | Metric::Bias
            | Metric::Mase
            | Metric::BacktestMae
            | Metric::IntervalCoverage
            | Metric::IntervalWidth => "None",
        }
    }

    pub fn kind(self) -> Kind {
        if matches!(
            self,
            Metric::QueueDepth
                | Metric::CpuUtilization
                | Metric::IntervalCoverage
                | Metric::IntervalWidth
        ) {
            return Kind::Gauge;
        }
        match self.unit() {
            "Count" => Kind::Counter,
            "Bytes" => Kind::Gauge,
            _ => Kind::Distribution,
        }
    }

    /// Metrics that are also published per `HorizonBucket`.
    pub fn has_horizon_buckets(self) -> bool {
        matches!(
            self,
            Metric::Mae | Metric::Rmse | Metric::Wape | Metric::Bias | Metric::Mase
        )
    }
}

/// Dimension names, shared with the alarms.
pub const DIM_MODEL: &str = "Model";
pub const DIM_MODEL_VERSION: &str = "ModelVersion";
pub const DIM_STAGE: &str = "Stage";
pub const DIM_HORIZON_BUCKET: &str = "HorizonBucket";
pub const DIM_FEATURE: &str = "Feature";
pub const DIM_LEVEL: &str = "Level";

/// One recorded value with its dimensions.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub metric: Metric,
    pub value: f64,
    pub dimensions: Dimensions,
}

/// The dimensions of a sample: the model always, the stage when configured, the horizon bucket
/// for the accuracy set, the input feature for per-feature drift.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Dimensions {
    pub model: Arc<str>,
    pub model_version: Arc<str>,
    pub stage: Option<Arc<str>>,
    pub horizon_bucket: Option<Arc<str>>,
    pub feature: Option<Arc<str>>,
    /// The interval level, for interval coverage and width.
    pub level: Option<Arc<str>>,
}

impl Dimensions {
    /// The dimension sets each sample is published under: without `ModelVersion` (what alarms and
    /// the dashboard watch, stable across releases) and with it (to compare versions).
    pub fn dimension_sets(&self) -> [Vec<(&'static str, &str)>; 2] {
        let all = self.pairs();
        let stable = all
            .iter()
            .filter(|(name, _)| *name != DIM_MODEL_VERSION)
            .copied()
            .collect();
        [stable, all]
    }

    /// `(name, value)` pairs in a fixed order.
    pub fn pairs(&self) -> Vec<(&'static str, &str)> {
        let mut pairs = vec![
            (DIM_MODEL, &*self.model),
            (DIM_MODEL_VERSION, &*self.model_version),
        ];
        if let Some(stage) = &self.stage {
            pairs.push((DIM_STAGE, stage));
        }
        if let Some(bucket) = &self.horizon_bucket {
            pairs.push((DIM_HORIZON_BUCKET, bucket));
        }
        if let Some(feature) = &self.feature {
            pairs.push((DIM_FEATURE, feature));
        }
        if let Some(level) = &self.level {
            pairs.push((DIM_LEVEL, level));
        }
        pairs
    }
}

/// One answered HTTP request, as the adapter saw it. Recorded once; each sink derives what it
/// publishes from it (Prometheus: requests by route and status, latency by route, errors by code;
/// CloudWatch and EMF: `Requests`, `ClientErrors`, `ServerErrors`, `ForecastLatency`).
#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome<'a> {
    /// The matched route (`/v1/forecast`), or `unmatched`.
    pub route: &'a str,
    pub status: u16,
    /// The error body's code, for answers that carry one.
    pub error_code: Option<&'a str>,
    pub elapsed: std::time::Duration,
}

impl RequestOutcome<'_> {
    /// API traffic, as opposed to probes and scrapes (`/healthz`, `/readyz`, `/metrics`), which
    /// CloudWatch does not count: a load balancer's health checks would drown the real requests.
    pub fn is_api(&self) -> bool {
        self.route.starts_with("/v1/") || self.route == "unmatched"
    }

    /// The samples a push sink publishes for this request.
    pub fn samples(&self) -> impl Iterator<Item = (Metric, f64)> {
        let api = self.is_api();
        [
            (api).then_some((Metric::Requests, 1.0)),
            (api && (400..500).contains(&self.status)).then_some((Metric::ClientErrors, 1.0)),
            (api && self.status >= 500).then_some((Metric::ServerErrors, 1.0)),
            (self.route == "/v1/forecast")
                .then_some((Metric::ForecastLatency, self.elapsed.as_secs_f64() * 1e3)),
        ]
        .into_iter()
        .flatten()
    }
}

/// A destination for samples.
pub trait MetricSink: Send + Sync {
    fn record(&self, sample: &Sample);
    /// A finished request. By default, the samples [`RequestOutcome::samples`] lists.
    fn record_request(&self, outcome: &RequestOutcome<'_>, dimensions: &Dimensions) {
        for (metric, value) in outcome.samples() {
            self.record(&Sample {
                metric,
                value,
                dimensions: dimensions.clone(),
            });
        }
    }
    /// Ships what is buffered (no-op for pull sinks). Errors are handled inside: counted, retried
    /// or dropped, never returned to a request.
    fn flush(&self) -> BoxFuture<'_, ()>;
}

/// Where metrics go; cheap to clone.
#[derive(Clone)]
pub struct Telemetry {
    sinks: Arc<Vec<Arc<dyn MetricSink>>>,
    model: Arc<std::sync::RwLock<(Arc<str>, Arc<str>)>>,
    stage: Option<Arc<str>>,
}

impl Telemetry {
    pub fn new(
        sinks: Vec<Arc<dyn MetricSink>>,
        model: &str,
        model_version: &str,
        stage: Option<&str>,
    ) -> Self {
        Telemetry {
            sinks: Arc::new(sinks),
            model: Arc::new(std::sync::RwLock::new((model.into(), model_version.into()))),
            stage: stage.map(Into::into),
        }
    }

    /// The same facade (model, stage, sinks) with one more sink.
    pub fn with_sink(&self, sink: Arc<dyn MetricSink>) -> Telemetry {
        let mut sinks: Vec<Arc<dyn MetricSink>> = self.sinks.iter().cloned().collect();
        sinks.push(sink);
        Telemetry {
            sinks: Arc::new(sinks),
            model: Arc::clone(&self.model),
            stage: self.stage.clone(),
        }
    }

    /// A facade that records nothing (tools and tests that do not care).
    pub fn disabled() -> Self {
        Telemetry::new(Vec::new(), "", "", None)
    }

    /// The model in service changed (reload, rollback): later samples carry the new version.
    pub fn set_model(&self, model: &str, model_version: &str) {
        *self.model.write().unwrap_or_else(|p| p.into_inner()) =
            (model.into(), model_version.into());
    }

    fn dimensions(&self, horizon_bucket: Option<&str>) -> Dimensions {
        let (model, model_version) = self.model.read().unwrap_or_else(|p| p.into_inner()).clone();
        Dimensions {
            model,
            model_version,
            stage: self.stage.clone(),
            horizon_bucket: horizon_bucket.map(Into::into),
            feature: None,
            level: None,
        }
    }

    pub fn record(&self, metric: Metric, value: f64) {
        self.record_in_bucket(metric, value, None);
    }

    /// Samples the process's memory now: resident set and live heap, where readable.
    pub fn record_process_memory(&self) {
        if let Some(rss) = super::process::resident_set_bytes() {
            self.record(Metric::MemoryRss, rss);
        }
        if let Some(heap) = super::process::live_heap_bytes() {
            self.record(Metric::HeapAllocated, heap);
        }
    }

    /// Records for an explicit model version (evaluation scores versions other than the current).
    pub fn record_for(
        &self,
        metric: Metric,
        value: f64,
        model: &str,
        model_version: &str,
        horizon_bucket: Option<&str>,
    ) {
        self.emit(metric, value, || {
            self.scored_dimensions((model, model_version), horizon_bucket, None)
        });
    }

    /// Records an interval metric for one level (`Level` dimension, e.g. `0.8`) of a scored model
    /// version, overall or per horizon bucket.
    pub fn record_for_level(
        &self,
        metric: Metric,
        value: f64,
        (model, model_version): (&str, &str),
        horizon_bucket: Option<&str>,
        level: f64,
    ) {
        self.emit(metric, value, || {
            self.scored_dimensions((model, model_version), horizon_bucket, Some(level))
        });
    }

    /// The dimensions of a score of an explicit model version.
    fn scored_dimensions(
        &self,
        (model, model_version): (&str, &str),
        horizon_bucket: Option<&str>,
        level: Option<f64>,
    ) -> Dimensions {
        Dimensions {
            model: model.into(),
            model_version: model_version.into(),
            stage: self.stage.clone(),
            horizon_bucket: horizon_bucket.map(Into::into),
            feature: None,
            level: level.map(|l| l.to_string().into()),
        }
    }

    /// Records for one input feature of a multi-feature model (`Feature` dimension).
    pub fn record_for_feature(&self, metric: Metric, value: f64, feature: &str) {
        self.emit(metric, value, || Dimensions {
            feature: Some(feature.into()),
            ..self.dimensions(None)
        });
    }

    pub fn record_in_bucket(&self, metric: Metric, value: f64, horizon_bucket: Option<&str>) {
        self.emit(metric, value, || self.dimensions(horizon_bucket));
    }

    /// Hands one sample to every sink; nothing is built when there is no sink, and non-finite
    /// values are never recorded.
    fn emit(&self, metric: Metric, value: f64, dimensions: impl FnOnce() -> Dimensions) {
        if self.sinks.is_empty() || !value.is_finite() {
            return;
        }
        let sample = Sample {
            metric,
            value,
            dimensions: dimensions(),
        };
        for sink in self.sinks.iter() {
            sink.record(&sample);
        }
    }

    /// A finished HTTP request (see [`RequestOutcome`]).
    pub fn record_request(&self, outcome: &RequestOutcome<'_>) {
        if self.sinks.is_empty() {
            return;
        }
        let dimensions = self.dimensions(None);
        for sink in self.sinks.iter() {
            sink.record_request(outcome, &dimensions);
        }
    }

    /// Ships every sink's buffer (end of a job, end of an invocation, shutdown).
    pub async fn flush(&self) {
        for sink in self.sinks.iter() {
            sink.flush().await;
        }
    }
}

/// Which sinks to publish to (`--metrics-sinks`, `METRICS_SINKS`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SinkKind {
    Prometheus,
    CloudWatch,
    Emf,
}

impl std::str::FromStr for SinkKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "prometheus" => Ok(SinkKind::Prometheus),
            "cloudwatch" => Ok(SinkKind::CloudWatch),
            "emf" => Ok(SinkKind::Emf),
            other => Err(format!(
                "unknown metrics sink `{other}` (use prometheus, cloudwatch, emf)"
            )),
        }
    }
}

/// A sample for model `m` version `1`, for the sinks' unit tests.
#[cfg(test)]
pub(crate) fn test_sample(metric: Metric, value: f64) -> Sample {
    Sample {
        metric,
        value,
        dimensions: Dimensions {
            model: Arc::from("m"),
            model_version: Arc::from("1"),
            stage: None,
            horizon_bucket: None,
            feature: None,
            level: None,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<Sample>>);

    impl MetricSink for Collect {
        fn record(&self, sample: &Sample) {
            self.0.lock().unwrap().push(sample.clone());
        }
        fn flush(&self) -> BoxFuture<'_, ()> {
            Box::pin(async {})
        }
    }

    #[test]
    fn metric_names_are_unique_and_all_listed() {
        let mut names: Vec<&str> = Metric::ALL
            .iter()
            .chain(&Metric::LOCAL)
            .map(|m| m.name())
            .collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), Metric::ALL.len() + Metric::LOCAL.len());
        assert!(Metric::ALL.iter().all(|m| !m.is_local()));
        assert!(names.contains(&"MemoryRSS") && names.contains(&"BacktestMAE"));
    }

    #[test]
    fn samples_carry_the_current_model_and_optional_bucket() {
        let sink = Arc::new(Collect::default());
        let telemetry = Telemetry::new(vec![sink.clone()], "m", "1", Some("prod"));
        telemetry.record(Metric::Forecasts, 3.0);
        telemetry.set_model("m", "2");
        telemetry.record_in_bucket(Metric::Mae, 0.5, Some("1-6"));
        telemetry.record(Metric::Mae, f64::NAN);
        let samples = sink.0.lock().unwrap();
        assert_eq!(samples.len(), 2, "non-finite values are not recorded");
        assert_eq!(
            samples[0].dimensions.pairs(),
            vec![("Model", "m"), ("ModelVersion", "1"), ("Stage", "prod")]
        );
        assert_eq!(
            samples[1].dimensions.pairs().last(),
            Some(&("HorizonBucket", "1-6"))
        );
        assert_eq!(&*samples[1].dimensions.model_version, "2");
    }
}
