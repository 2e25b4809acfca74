//! The facade: the metric table, samples and their dimensions, the sink port, and [`Telemetry`],
//! the handle every part of the service records on.
//!
//! # One table
//!
//! Each metric is one row of [`METRICS`]: its CloudWatch name and unit, how it aggregates, its
//! Prometheus form (a family of its own, with histogram buckets, or a native one), whether it is
//! also published per horizon bucket, and whether it stays in the process. The sinks and the
//! infra contract test (`tests/it/infra.rs`) read the table, so adding a metric is its variant, its
//! row and the call that records it. (Only a metric that wants a typed field of `ServerMetrics`
//! instead of a family of its own, [`Prometheus::Native`], is also wired in `prometheus.rs`.)
//!
//! # Why not the `metrics` crate
//!
//! The `metrics` facade (what text-embeddings-inference records on) sends every call site's
//! sample to one global recorder per process, while here each service owns a [`Telemetry`] with
//! its own sinks and model dimensions, and the integration tests run several services in one
//! process (the reason the Prometheus sink already keeps a registry per server); its
//! `with_local_recorder` covers one thread's closure, not a request that moves between tokio's
//! workers. Its call sites name metrics by string, so there would be no list of every metric for
//! the alarms' contract test to check, and the CloudWatch side (a unit per datum, Values/Counts,
//! two dimension sets, EMF) would still be recorders of our own. So it would add a dependency and
//! a global, and replace only the few lines of dispatch in [`Telemetry`].

use std::sync::Arc;

use self::Kind::{Counter, Distribution, Gauge};
use self::Prometheus::{AtScrape, Family, Native, PerRequest};
use crate::source::BoxFuture;

/// Every metric this service publishes. The names are a contract with the alarms and dashboard in
/// `infra/`; a test compares the two. Each variant has its row in [`METRICS`], in this order.
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
    /// Evaluation partitions that failed, counted per attempt (a retry may finish them).
    EvaluationPartitionFailures,
    /// Forecast-log records a flush could not write to the store (retried on the next flush while
    /// the buffer has room): the accuracy loop is going blind.
    ForecastLogFailures,
    /// Share of actuals inside the prediction intervals served with their forecasts (`evaluate`),
    /// per `Level` and `HorizonBucket`: below the level means overconfident intervals.
    IntervalCoverage,
    /// Mean width (upper - lower) of those intervals, in the target's units, per `Level`.
    IntervalWidth,
    /// The `Challenger` version's mean squared error over the `ModelVersion`'s on the same
    /// actuals (`evaluate`), overall and per `HorizonBucket`: below 1, the challenger is better.
    ChallengerRelativeLoss,
    /// Origins the two versions were compared at (the test's sample size).
    ComparedOrigins,
    /// The Diebold-Mariano p-value of that comparison (Holm-adjusted per `HorizonBucket`).
    ChallengerPValue,
    /// Champion/challenger decisions taken (promote, reject, rollback, keep), acted on or only
    /// recorded.
    ModelDecisions,
    /// Shadow forecasts not run because the engine was busy (the live answer always goes first).
    ShadowSkipped,
    /// Forecasts that reached the log after their actuals were read, scored late (`evaluate`):
    /// the log's delivery is lagging.
    LateForecasts,
    /// Versions refused because their signature did not verify (`MODEL_VERIFY_KEY`): someone
    /// without the publisher's key wrote the registry.
    ModelVerificationFailures,
    /// Local: time a forecast waited for an engine thread, milliseconds.
    QueueLatency,
    /// Local: windows in the forward pass a forecast rode in (dynamic batching).
    BatchWindows,
    /// Local: forecasts waiting for an engine thread when one more arrived.
    QueueDepth,
}

/// How a metric aggregates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Summed per period (CloudWatch Sum; Prometheus counter).
    Counter,
    /// A distribution of samples (CloudWatch Values/Counts with statistics; Prometheus histogram).
    Distribution,
    /// Last or average value (CloudWatch Values; Prometheus gauge).
    Gauge,
}

/// Where a metric shows on the Prometheus sink (`GET /metrics`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prometheus {
    /// One of the typed families of `ServerMetrics` (forecasts, inference and queue time, batch
    /// sizes, reloads), which the sink fills from the sample.
    Native,
    /// The request families instead, filled from each [`RequestOutcome`] (requests by route and
    /// status, latency by route, errors by code); samples of it are not exposed again.
    PerRequest,
    /// Read by the process collector at scrape time, not from samples.
    AtScrape,
    /// A family of its own with this name, labelled `model`, `model_version`, `horizon_bucket`,
    /// `feature` and `level`: a counter, a gauge or a histogram (with the row's buckets) by the
    /// metric's [`Kind`].
    Family(&'static str),
}

/// One metric: everything a sink, or the contract test, needs to know about it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MetricSpec {
    pub metric: Metric,
    /// The CloudWatch metric name, which the alarms and the dashboard in `infra/` use.
    pub name: &'static str,
    /// CloudWatch `StandardUnit` name.
    pub unit: &'static str,
    pub kind: Kind,
    pub prometheus: Prometheus,
    /// Histogram buckets of the Prometheus family, for a distribution with a
    /// [`Prometheus::Family`]; empty for every other row.
    pub buckets: &'static [f64],
    /// Also published per `HorizonBucket` (the accuracy set).
    pub horizon_buckets: bool,
    /// Process-local detail: exposed on `GET /metrics`, never pushed to CloudWatch (every
    /// CloudWatch metric is billed, and these matter only to someone looking at one process).
    pub local: bool,
}

/// A row of [`METRICS`]: pushed, with no buckets of either kind until said otherwise.
const fn row(
    metric: Metric,
    name: &'static str,
    unit: &'static str,
    kind: Kind,
    prometheus: Prometheus,
) -> MetricSpec {
    MetricSpec {
        metric,
        name,
        unit,
        kind,
        prometheus,
        buckets: &[],
        horizon_buckets: false,
        local: false,
    }
}

impl MetricSpec {
    const fn with_buckets(self, buckets: &'static [f64]) -> MetricSpec {
        MetricSpec { buckets, ..self }
    }

    const fn by_horizon_bucket(self) -> MetricSpec {
        MetricSpec {
            horizon_buckets: true,
            ..self
        }
    }

    const fn local_only(self) -> MetricSpec {
        MetricSpec {
            local: true,
            ..self
        }
    }
}

/// Histogram buckets for start-up work (cold start, restore, model load): 10 ms to 10 s.
const STARTUP_MS: &[f64] = &[
    10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0,
];
/// Histogram buckets for a share of values, 0 to 1.
const FRACTION: &[f64] = &[0.0, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0];
/// Histogram buckets for scores: drift distances and forecast errors.
const SCORE: &[f64] = &[0.01, 0.025, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0];

/// Every metric, one row each, in the order of [`Metric`] ([`Metric::spec`] indexes it; a row out
/// of place fails the build).
#[rustfmt::skip]
pub const METRICS: &[MetricSpec] = &[
    // metric                          CloudWatch name        unit            kind          Prometheus
    row(Metric::ForecastLatency,      "ForecastLatency",     "Milliseconds", Distribution, PerRequest),
    row(Metric::InferenceLatency,     "InferenceLatency",    "Milliseconds", Distribution, Native),
    row(Metric::Forecasts,            "Forecasts",           "Count",        Counter,      Native),
    row(Metric::Requests,             "Requests",            "Count",        Counter,      PerRequest),
    row(Metric::ClientErrors,         "ClientErrors",        "Count",        Counter,      PerRequest),
    row(Metric::ServerErrors,         "ServerErrors",        "Count",        Counter,      PerRequest),
    row(Metric::ColdStartDuration,    "ColdStartDuration",   "Milliseconds", Distribution, Family("lstm_forecast_cold_start_duration_milliseconds"))
        .with_buckets(STARTUP_MS),
    row(Metric::RestoreDuration,      "RestoreDuration",     "Milliseconds", Distribution, Family("lstm_forecast_restore_duration_milliseconds"))
        .with_buckets(STARTUP_MS),
    row(Metric::ModelLoadDuration,    "ModelLoadDuration",   "Milliseconds", Distribution, Family("lstm_forecast_model_load_duration_milliseconds"))
        .with_buckets(STARTUP_MS),
    row(Metric::ModelReloads,         "ModelReloads",        "Count",        Counter,      Native),
    row(Metric::ModelReloadFailures,  "ModelReloadFailures", "Count",        Counter,      Native),
    row(Metric::ModelRollbacks,       "ModelRollbacks",      "Count",        Counter,      Family("lstm_forecast_model_rollbacks_total")),
    row(Metric::MemoryRss,            "MemoryRSS",           "Bytes",        Gauge,        AtScrape),
    row(Metric::HeapAllocated,        "HeapAllocated",       "Bytes",        Gauge,        AtScrape),
    row(Metric::InputDrift,           "InputDrift",          "None",         Distribution, Family("lstm_forecast_input_drift"))
        .with_buckets(SCORE),
    row(Metric::OutOfRangeFraction,   "OutOfRangeFraction",  "None",         Distribution, Family("lstm_forecast_out_of_range_fraction"))
        .with_buckets(FRACTION),
    row(Metric::Mae,                  "MAE",                 "None",         Distribution, Family("lstm_forecast_accuracy_mae"))
        .with_buckets(SCORE).by_horizon_bucket(),
    row(Metric::Rmse,                 "RMSE",                "None",         Distribution, Family("lstm_forecast_accuracy_rmse"))
        .with_buckets(SCORE).by_horizon_bucket(),
    row(Metric::Wape,                 "WAPE",                "None",         Distribution, Family("lstm_forecast_accuracy_wape"))
        .with_buckets(SCORE).by_horizon_bucket(),
    row(Metric::Bias,                 "Bias",                "None",         Distribution, Family("lstm_forecast_accuracy_bias"))
        .with_buckets(SCORE).by_horizon_bucket(),
    row(Metric::Mase,                 "MASE",                "None",         Distribution, Family("lstm_forecast_accuracy_mase"))
        .with_buckets(SCORE).by_horizon_bucket(),
    row(Metric::ScoredPairs,          "ScoredPairs",         "Count",        Counter,      Family("lstm_forecast_accuracy_scored_pairs_total")),
    row(Metric::BacktestMae,          "BacktestMAE",         "None",         Distribution, Family("lstm_forecast_backtest_mae"))
        .with_buckets(SCORE),
    row(Metric::MetricsDropped,       "MetricsDropped",      "Count",        Counter,      Family("lstm_forecast_metrics_dropped_total")),
    row(Metric::CpuUtilization,       "CPUUtilization",      "Percent",      Gauge,        Family("lstm_forecast_cpu_utilization_percent")),
    row(Metric::BatchSeries,          "BatchSeries",         "Count",        Counter,      Family("lstm_forecast_batch_series_total")),
    row(Metric::BatchShardFailures,   "BatchShardFailures",  "Count",        Counter,      Family("lstm_forecast_batch_shard_failures_total")),
    row(Metric::BatchManifests,       "BatchManifests",      "Count",        Counter,      Family("lstm_forecast_batch_manifests_total")),
    row(Metric::EvaluationPartitionFailures, "EvaluationPartitionFailures", "Count", Counter, Family("lstm_forecast_evaluation_partition_failures_total")),
    row(Metric::ForecastLogFailures,  "ForecastLogFailures", "Count",        Counter,      Family("lstm_forecast_forecast_log_failures_total")),
    row(Metric::IntervalCoverage,     "IntervalCoverage",    "None",         Gauge,        Family("lstm_forecast_interval_coverage")),
    row(Metric::IntervalWidth,        "IntervalWidth",       "None",         Gauge,        Family("lstm_forecast_interval_width")),
    row(Metric::ChallengerRelativeLoss, "ChallengerRelativeLoss", "None",  Gauge,        Family("lstm_forecast_challenger_relative_loss")),
    row(Metric::ComparedOrigins,      "ComparedOrigins",     "None",         Gauge,        Family("lstm_forecast_compared_origins")),
    row(Metric::ChallengerPValue,     "ChallengerPValue",    "None",         Gauge,        Family("lstm_forecast_challenger_p_value")),
    row(Metric::ModelDecisions,       "ModelDecisions",      "Count",        Counter,      Family("lstm_forecast_model_decisions_total")),
    row(Metric::ShadowSkipped,        "ShadowSkipped",       "Count",        Counter,      Family("lstm_forecast_shadow_skipped_total")),
    row(Metric::LateForecasts,        "LateForecasts",       "Count",        Counter,      Family("lstm_forecast_late_forecasts_total")),
    row(Metric::ModelVerificationFailures, "ModelVerificationFailures", "Count", Counter, Family("lstm_forecast_model_verification_failures_total")),
    row(Metric::QueueLatency,         "QueueLatency",        "Milliseconds", Distribution, Native).local_only(),
    row(Metric::BatchWindows,         "BatchWindows",        "None",         Distribution, Native).local_only(),
    row(Metric::QueueDepth,           "QueueDepth",          "None",         Gauge,        Native).local_only(),
];

// Each row sits at its metric's index: a row out of place, or one missing before the last, fails
// the build here instead of lending a metric another's name and unit. (A missing last row makes
// `Metric::spec` panic, at the first test that records that metric.)
const _: () = {
    let mut i = 0;
    while i < METRICS.len() {
        assert!(
            METRICS[i].metric as usize == i,
            "a row of METRICS is out of the order of Metric"
        );
        i += 1;
    }
};

/// How many rows are local (`true`) or pushed (`false`).
const fn count_rows(local: bool) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i < METRICS.len() {
        if METRICS[i].local == local {
            count += 1;
        }
        i += 1;
    }
    count
}

/// The metrics of the local (`true`) or pushed (`false`) rows, in table order.
const fn select_rows<const N: usize>(local: bool) -> [Metric; N] {
    let mut metrics = [Metric::ForecastLatency; N];
    let mut found = 0;
    let mut i = 0;
    while i < METRICS.len() {
        if METRICS[i].local == local {
            metrics[found] = METRICS[i].metric;
            found += 1;
        }
        i += 1;
    }
    metrics
}

const PUSHED_ROWS: usize = count_rows(false);
const LOCAL_ROWS: usize = count_rows(true);

impl Metric {
    /// The metrics pushed to CloudWatch (and EMF), in table order.
    pub const ALL: [Metric; PUSHED_ROWS] = select_rows::<PUSHED_ROWS>(false);

    /// Process-local detail (see [`MetricSpec::local`]), in table order.
    pub const LOCAL: [Metric; LOCAL_ROWS] = select_rows::<LOCAL_ROWS>(true);

    /// This metric's row of [`METRICS`].
    pub fn spec(self) -> &'static MetricSpec {
        &METRICS[self as usize]
    }

    pub fn is_local(self) -> bool {
        self.spec().local
    }

    /// The CloudWatch metric name.
    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// CloudWatch `StandardUnit` name.
    pub fn unit(self) -> &'static str {
        self.spec().unit
    }

    pub fn kind(self) -> Kind {
        self.spec().kind
    }

    /// Metrics that are also published per `HorizonBucket`.
    pub fn has_horizon_buckets(self) -> bool {
        self.spec().horizon_buckets
    }
}

/// Dimension names, shared with the alarms.
pub const DIM_MODEL: &str = "Model";
pub const DIM_MODEL_VERSION: &str = "ModelVersion";
pub const DIM_STAGE: &str = "Stage";
pub const DIM_HORIZON_BUCKET: &str = "HorizonBucket";
pub const DIM_FEATURE: &str = "Feature";
pub const DIM_LEVEL: &str = "Level";
pub const DIM_CHALLENGER: &str = "Challenger";

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
    /// The version compared with `model_version`, for the champion/challenger set.
    pub challenger: Option<Arc<str>>,
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
        if let Some(challenger) = &self.challenger {
            pairs.push((DIM_CHALLENGER, challenger));
        }
        pairs
    }
}

/// What kind of request a [`RequestOutcome`] was. The adapter's router, which knows its paths,
/// decides; the sinks only follow it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// A forecast: API traffic whose whole latency is also `ForecastLatency`.
    Forecast,
    /// Any other request to the API, one for a path the router does not know included.
    Api,
    /// Probes and scrapes (health checks, `/metrics`), which CloudWatch does not count: a load
    /// balancer's health checks would drown the real requests.
    Probe,
}

/// One answered HTTP request, as the adapter saw it. Recorded once; each sink derives what it
/// publishes from it (Prometheus: requests by route and status, latency by route, errors by code;
/// CloudWatch and EMF: `Requests`, `ClientErrors`, `ServerErrors`, `ForecastLatency`).
#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome<'a> {
    /// The matched route (`/v1/forecast`), or `unmatched`: a label, never interpreted here.
    pub route: &'a str,
    /// What the request was, by the adapter's routes.
    pub traffic: Traffic,
    pub status: u16,
    /// The error body's code, for answers that carry one.
    pub error_code: Option<&'a str>,
    pub elapsed: std::time::Duration,
}

impl RequestOutcome<'_> {
    /// API traffic, as opposed to probes and scrapes (see [`Traffic::Probe`]).
    pub fn is_api(&self) -> bool {
        self.traffic != Traffic::Probe
    }

    /// The samples a push sink publishes for this request.
    pub fn samples(&self) -> impl Iterator<Item = (Metric, f64)> {
        let api = self.is_api();
        [
            (api).then_some((Metric::Requests, 1.0)),
            (api && (400..500).contains(&self.status)).then_some((Metric::ClientErrors, 1.0)),
            (api && self.status >= 500).then_some((Metric::ServerErrors, 1.0)),
            (self.traffic == Traffic::Forecast)
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

    /// A facade on the same sinks and stage for another model version (a canary challenger
    /// serving beside live): what it records carries that version.
    pub fn for_model(&self, model: &str, model_version: &str) -> Telemetry {
        Telemetry {
            sinks: Arc::clone(&self.sinks),
            model: Arc::new(std::sync::RwLock::new((model.into(), model_version.into()))),
            stage: self.stage.clone(),
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
            challenger: None,
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
            challenger: None,
        }
    }

    /// Records a comparison of `challenger` with `model_version` (`Challenger` dimension),
    /// overall or per horizon bucket.
    pub fn record_comparison(
        &self,
        metric: Metric,
        value: f64,
        (model, model_version): (&str, &str),
        challenger: &str,
        horizon_bucket: Option<&str>,
    ) {
        self.emit(metric, value, || Dimensions {
            challenger: Some(challenger.into()),
            ..self.scored_dimensions((model, model_version), horizon_bucket, None)
        });
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
            challenger: None,
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
    fn each_row_of_the_table_sits_at_its_metrics_index() {
        for (index, spec) in METRICS.iter().enumerate() {
            assert_eq!(
                spec.metric as usize, index,
                "{:?} is out of place",
                spec.metric
            );
            assert_eq!(spec.metric.spec(), spec);
        }
        assert_eq!(Metric::ALL.len() + Metric::LOCAL.len(), METRICS.len());
        assert_eq!(
            Metric::LOCAL,
            [
                Metric::QueueLatency,
                Metric::BatchWindows,
                Metric::QueueDepth
            ]
        );
    }

    #[test]
    fn the_rows_agree_with_themselves() {
        for spec in METRICS {
            let metric = spec.metric;
            assert!(
                ["Milliseconds", "Count", "Bytes", "Percent", "None"].contains(&spec.unit),
                "{metric:?}: {} is not a CloudWatch unit this service uses",
                spec.unit
            );
            assert_eq!(
                spec.unit == "Count",
                spec.kind == Kind::Counter,
                "{metric:?}: counts are counters, and counters count"
            );
            let histogram_family =
                spec.kind == Kind::Distribution && matches!(spec.prometheus, Prometheus::Family(_));
            assert_eq!(
                !spec.buckets.is_empty(),
                histogram_family,
                "{metric:?}: buckets belong to the rows with a histogram family, and only to them"
            );
            assert!(
                spec.buckets.windows(2).all(|pair| pair[0] < pair[1]),
                "{metric:?}: buckets must increase"
            );
        }
        assert!(Metric::Mae.has_horizon_buckets() && !Metric::BacktestMae.has_horizon_buckets());
    }

    #[test]
    fn push_sinks_count_api_requests_and_time_forecasts_but_skip_probes() {
        let outcome = |traffic, status| RequestOutcome {
            route: "/any",
            traffic,
            status,
            error_code: None,
            elapsed: std::time::Duration::from_millis(250),
        };
        fn metrics(outcome: RequestOutcome<'_>) -> Vec<Metric> {
            outcome.samples().map(|(metric, _)| metric).collect()
        }
        assert_eq!(
            metrics(outcome(Traffic::Forecast, 503)),
            [
                Metric::Requests,
                Metric::ServerErrors,
                Metric::ForecastLatency
            ]
        );
        assert_eq!(
            metrics(outcome(Traffic::Api, 404)),
            [Metric::Requests, Metric::ClientErrors]
        );
        assert!(metrics(outcome(Traffic::Probe, 503)).is_empty());
        assert_eq!(
            outcome(Traffic::Forecast, 200).samples().last(),
            Some((Metric::ForecastLatency, 250.0))
        );
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
