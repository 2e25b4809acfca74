//! The forecast service: the core that every entry point calls.
//!
//! HTTP (`serve`), the Lambda function's API Gateway events, its scheduled and sharded batch jobs,
//! and the CLI's `forecast` all go through [`Service::forecast`]. That one function validates the
//! input against the model in service, runs the engine, and records what the monitoring loop
//! needs: input drift, sampled backtests, forecast-log records and metrics. An adapter therefore
//! cannot forget a part of it: a path of its own would have to repeat every step, and a step
//! left out (the metrics, say) fails no request, so nothing would show it missing.
//!
//! - [`build`]: the one composition root (`serve`, `lambda`, the CLI), and the background tasks
//!   that keep a service current.
//! - [`follow`]: following the registry's `live` alias (hot reload, rollback pick-up).
//! - [`batch`]: batch forecasts from S3 objects and Step Functions shards, with their manifest.
//! - [`jobs`]: how a job fails ([`jobs::JobError`]), and the accuracy evaluation as a job.
//! - [`challenge`]: champion/challenger decisions after each evaluation, and the comparison with
//!   the previous version that a rollback asks for.
//! - [`rollback`]: the alarm-driven rollback decision.
//! - [`shadow`]: a second version forecasting in live's shadow (a challenger, or the previous
//!   version on probation), after the live answer.

pub mod batch;
pub mod build;
pub mod challenge;
pub mod follow;
pub mod jobs;
pub mod rollback;
pub mod shadow;

use std::sync::Arc;

use crate::entropy::Sampler;
use crate::forecast::{
    check_interval_levels, check_levels_calibrated, check_levels_in_quantiles, parse_forecast_body,
    ErrorCode, ForecastResponse, RequestError, RequestShape, SeriesForecast, SeriesInput,
};
use crate::infer::{InferError, InferenceHandle};
use crate::metrics::prometheus::PrometheusSink;
use crate::metrics::{Metric, ServerMetrics, Telemetry};
use crate::model::contract::{Calibration, ModelMetadata};
use crate::model::Model;
use crate::monitor::drift::InputDriftMonitor;
use crate::monitor::observations::{parse_observations, Observation};
use crate::monitor::store::{
    ForecastLog, ForecastRecord, ForecastRole, StoreError, OUT_OF_RANGE_SPREADS,
};

/// Request limits.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most series per forecast request (they run as one batch).
    pub max_series: usize,
    /// Largest accepted observations body: actuals feed the accuracy alarm and are kept for
    /// months, so their writers get less room than forecast callers.
    pub max_observation_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 2 * 1024 * 1024,
            max_series: 256,
            max_observation_bytes: 256 * 1024,
        }
    }
}

/// The monitoring side of the service: where metrics go, where forecasts are logged, how often
/// requests are backtested.
#[derive(Clone)]
pub struct Monitoring {
    pub telemetry: Telemetry,
    /// Set when `FORECAST_LOG_URI` is: forecasts are logged and observations can be stored.
    pub forecast_log: Option<Arc<ForecastLog>>,
    /// Share of backtest-eligible series (history >= window + horizon) that are backtested.
    pub backtest_rate: f64,
    /// Seed of the backtest sampling; `None` draws one from the OS (see [`crate::entropy`]).
    pub sampling_seed: Option<u64>,
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            telemetry: Telemetry::disabled(),
            forecast_log: None,
            backtest_rate: 0.0,
            sampling_seed: None,
        }
    }
}

/// Most observations accepted in one call.
pub const MAX_OBSERVATIONS: usize = 100_000;

/// Why a forecast or an observation upload was not answered.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// The caller's input is wrong: the message names the field.
    #[error(transparent)]
    Request(#[from] RequestError),
    /// The engine refused or failed (overloaded, stopped, a bad model output).
    #[error(transparent)]
    Infer(#[from] InferError),
    /// Observations need `FORECAST_LOG_URI`.
    #[error("observations need a store: start with FORECAST_LOG_URI=s3://BUCKET/PREFIX")]
    NoStore,
    /// The observation store could not be written.
    #[error("could not store the observations: {0}")]
    Store(StoreError),
}

/// What every entry point shares; cheap to clone.
#[derive(Clone)]
pub struct Service {
    inner: Arc<Inner>,
    /// Answers every series with its own version: a request that named live's version gets no
    /// canary's answers.
    alone: bool,
}

struct Inner {
    handle: InferenceHandle,
    /// The process's CPU share since the last sample.
    cpu: crate::metrics::process::CpuShare,
    /// The drift checks of the model in service, rebuilt when it changes.
    drift: std::sync::RwLock<Arc<InputDriftMonitor>>,
    prometheus: ServerMetrics,
    limits: Limits,
    monitoring: Monitoring,
    /// Draws which backtest-eligible series are backtested, at `backtest_rate`.
    backtest_sampler: Sampler,
    /// The interval calibration `evaluate` published for a model version from its recent errors
    /// (see [`crate::monitor::calibration`]), and when it was last looked for.
    online_calibration: std::sync::RwLock<Option<(String, Arc<Calibration>)>>,
    calibration_checked: std::sync::Mutex<Option<std::time::Instant>>,
    /// The version forecasting in live's shadow, if any (see [`shadow`]).
    shadow: std::sync::RwLock<Option<Arc<shadow::Shadow>>>,
    /// A canary challenger answering its share of series, if any.
    canary: std::sync::RwLock<Option<Arc<Canary>>>,
    /// The role of this service's version in the registry: what its logged forecasts say.
    role: ForecastRole,
}

/// A challenger in canary mode: a service of its own (its model, drift checks, intervals and
/// metrics under its version) that answers the series whose id hashes under `fraction`.
struct Canary {
    service: Service,
    fraction: f64,
}

impl Canary {
    fn selects(&self, series: &SeriesInput) -> bool {
        series
            .id
            .as_deref()
            .is_some_and(|id| crate::registry::roles::serves_series(id, self.fraction))
    }
}

impl Service {
    /// `prometheus` is the registry `GET /metrics` renders. The service adds the sink that writes
    /// into it to `monitoring.telemetry`: a pull sink costs nothing until scraped, so `/metrics`
    /// always works, whatever push sinks are configured.
    pub fn new(
        handle: InferenceHandle,
        prometheus: ServerMetrics,
        limits: Limits,
        mut monitoring: Monitoring,
    ) -> Self {
        monitoring.telemetry = monitoring
            .telemetry
            .with_sink(Arc::new(PrometheusSink::new(&prometheus)));
        let service = Self::assemble(handle, prometheus, limits, monitoring, ForecastRole::Live);
        service.model_changed();
        service
    }

    /// The service of `handle`'s version in `role`, its telemetry already wired.
    fn assemble(
        handle: InferenceHandle,
        prometheus: ServerMetrics,
        limits: Limits,
        monitoring: Monitoring,
        role: ForecastRole,
    ) -> Self {
        let drift = InputDriftMonitor::for_model(handle.model().metadata());
        Service {
            alone: false,
            inner: Arc::new(Inner {
                drift: std::sync::RwLock::new(Arc::new(drift)),
                cpu: crate::metrics::process::CpuShare::new(crate::model::engine::available_cpus()),
                handle,
                prometheus,
                limits,
                backtest_sampler: Sampler::new(
                    monitoring
                        .sampling_seed
                        .unwrap_or_else(crate::entropy::random_u64),
                ),
                monitoring,
                online_calibration: std::sync::RwLock::new(None),
                calibration_checked: std::sync::Mutex::new(None),
                shadow: std::sync::RwLock::new(None),
                canary: std::sync::RwLock::new(None),
                role,
            }),
        }
    }

    /// A service without monitoring, for tools and tests that do not care.
    pub fn unmonitored(handle: InferenceHandle, limits: Limits) -> Self {
        Self::new(handle, ServerMetrics::new(), limits, Monitoring::default())
    }

    pub fn handle(&self) -> &InferenceHandle {
        &self.inner.handle
    }

    /// The model in service now (a reload may swap it at any time).
    pub fn model(&self) -> Arc<Model> {
        self.inner.handle.model()
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.monitoring.telemetry
    }

    pub fn prometheus(&self) -> &ServerMetrics {
        &self.inner.prometheus
    }

    pub fn forecast_log(&self) -> Option<&Arc<ForecastLog>> {
        self.inner.monitoring.forecast_log.as_ref()
    }

    /// The model in service changed: label later metrics with it, and check drift against its
    /// training windows.
    pub fn model_changed(&self) {
        let model = self.inner.handle.model();
        let metadata = model.metadata();
        self.inner.prometheus.set_model(metadata);
        self.telemetry()
            .set_model(&metadata.name, &metadata.version);
        let drift = InputDriftMonitor::for_model(metadata);
        if !drift.is_calibrated() {
            tracing::warn!(
                model = %metadata.name,
                model_version = %metadata.version,
                "model.json has no drift calibration (training_stats.*.windows): InputDrift is not published; add one with model_artifacts/train/drift_calibration.py"
            );
        }
        *self.inner.drift.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(drift);
    }

    /// Records `CPUUtilization`: the process's share of the CPUs it may use since the last call
    /// (a flush period in `serve`, an invocation and the wait before it in Lambda).
    pub fn record_cpu_share(&self) {
        if let Some(percent) = self.inner.cpu.sample() {
            self.telemetry().record(Metric::CpuUtilization, percent);
        }
    }

    fn drift(&self) -> Arc<InputDriftMonitor> {
        Arc::clone(&self.inner.drift.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// What a request may look like for the model in service, with at most `max_series` series.
    pub fn request_shape(&self, max_series: usize) -> RequestShape {
        RequestShape::new(self.model().metadata(), max_series)
    }

    /// Parses and validates a `POST /v1/forecast` body, then forecasts it.
    pub async fn forecast_json(
        &self,
        body: &[u8],
        request_id: Option<&str>,
    ) -> Result<ForecastResponse, ServiceError> {
        let shape = self.request_shape(self.inner.limits.max_series);
        let request = parse_forecast_body(body, &shape)?;
        self.forecast_with_intervals(request.series, &request.intervals, request_id)
            .await
    }

    /// The interval levels `levels` checked against what the model in service is calibrated for.
    pub fn check_intervals(&self, levels: &[f64]) -> Result<(), RequestError> {
        // Every plain forecast passes here: it must cost nothing.
        if levels.is_empty() {
            return Ok(());
        }
        check_interval_levels(levels)?;
        let model = self.model();
        let metadata = model.metadata();
        if metadata.output.quantiles.is_some() {
            return check_levels_in_quantiles(&metadata.output, levels);
        }
        // The online calibration may serve levels model.json has not.
        if self.online_calibration(&metadata.version, levels).is_some() {
            return Ok(());
        }
        check_levels_calibrated(metadata.calibration.as_ref(), levels)
    }

    /// The online calibration of `version`, if it serves every level in `levels`.
    fn online_calibration(&self, version: &str, levels: &[f64]) -> Option<Arc<Calibration>> {
        let online = self
            .inner
            .online_calibration
            .read()
            .unwrap_or_else(|p| p.into_inner());
        let (online_version, calibration) = online.as_ref()?;
        (online_version == version && levels.iter().all(|l| calibration.radius(*l).is_some()))
            .then(|| Arc::clone(calibration))
    }

    /// [`Service::forecast`] with prediction intervals at `levels` around every forecast (none
    /// when empty). A level the model is not calibrated for is refused before any work.
    pub async fn forecast_with_intervals(
        &self,
        series: Vec<SeriesInput>,
        levels: &[f64],
        request_id: Option<&str>,
    ) -> Result<ForecastResponse, ServiceError> {
        self.check_intervals(levels)?;
        self.forecast_inner(series, levels, request_id).await
    }

    /// The calibration to serve `levels` for `version` with, and its source (`online` or
    /// `model.json`).
    fn calibration_for(
        &self,
        version: &str,
        levels: &[f64],
    ) -> Result<(Arc<Calibration>, &'static str), RequestError> {
        if let Some(calibration) = self.online_calibration(version, levels) {
            return Ok((calibration, "online"));
        }
        let model = self.model();
        match &model.metadata().calibration {
            Some(calibration) if model.metadata().version == version => {
                Ok((Arc::new(calibration.clone()), "model.json"))
            }
            _ => Err(RequestError {
                code: ErrorCode::UnsupportedInterval,
                message: format!("model version {version} has no calibrated intervals now; retry"),
            }),
        }
    }

    /// Reads the online calibration `evaluate` published for the model in service, if
    /// `interval` has passed since the last look (always when never looked). Without a store,
    /// or without one for this version, intervals come from model.json. A failed read keeps the
    /// calibration in use and is logged.
    pub async fn refresh_calibration_if_due(&self, interval: std::time::Duration) {
        {
            let mut checked = self
                .inner
                .calibration_checked
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if checked.is_some_and(|at| at.elapsed() < interval) {
                return;
            }
            *checked = Some(std::time::Instant::now());
        }
        self.refresh_calibration().await;
    }

    /// Reads the online calibration now (see [`Service::refresh_calibration_if_due`]).
    pub async fn refresh_calibration(&self) {
        let Some(log) = self.forecast_log() else {
            return;
        };
        let (version, horizon) = {
            let model = self.model();
            let metadata = model.metadata();
            (metadata.version.clone(), metadata.output.horizon)
        };
        match log.store().online_calibrations().await {
            Ok(online) => {
                let found = online
                    .for_version(&version)
                    .filter(|c| c.check(horizon, "online").is_ok())
                    .cloned()
                    .map(|c| (version.clone(), Arc::new(c)));
                let mut current = self
                    .inner
                    .online_calibration
                    .write()
                    .unwrap_or_else(|p| p.into_inner());
                if found.as_ref().map(|(_, c)| &c.data) != current.as_ref().map(|(_, c)| &c.data) {
                    tracing::info!(
                        model_version = %version,
                        calibration = found.as_ref().map_or("model.json", |(_, c)| c.data.as_str()),
                        "interval calibration changed"
                    );
                }
                *current = found;
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not read the online interval calibration; keeping the one in use")
            }
        }
    }

    /// Forecasts series already parsed against [`Service::request_shape`] (files, batch shards),
    /// as one batch, and records drift, backtests, the forecast log and metrics.
    pub async fn forecast(
        &self,
        series: Vec<SeriesInput>,
        request_id: Option<&str>,
    ) -> Result<ForecastResponse, ServiceError> {
        self.forecast_inner(series, &[], request_id).await
    }

    async fn forecast_inner(
        &self,
        series: Vec<SeriesInput>,
        levels: &[f64],
        request_id: Option<&str>,
    ) -> Result<ForecastResponse, ServiceError> {
        let canary = self.canary_for(&series, levels);
        // Live in its own shadow only forecasts what a canary answered.
        let shadowed = self
            .shadow_inputs(&series)
            .filter(|(shadow, _)| shadow.role != ForecastRole::Live || canary.is_some());
        let response = match canary {
            Some(canary) => {
                self.forecast_with_canary(&canary, series, levels, request_id)
                    .await?
            }
            None => self.forecast_alone(series, levels, request_id).await?,
        };
        if let Some((shadow, series)) = shadowed {
            self.run_shadow(shadow, series, request_id);
        }
        Ok(response)
    }

    /// Forecasts with this service's own version: drift, backtests, the engine, intervals, the
    /// forecast log and metrics.
    async fn forecast_alone(
        &self,
        series: Vec<SeriesInput>,
        levels: &[f64],
        request_id: Option<&str>,
    ) -> Result<ForecastResponse, ServiceError> {
        let model = self.model();
        let metadata = model.metadata();
        let telemetry = self.telemetry();
        self.drift().record(telemetry, &series);
        let backtest = self.sample_backtests(metadata, &series);
        let log_inputs = match self.forecast_log() {
            Some(_) => LogInput::collect(metadata, &series),
            None => Vec::new(),
        };
        drop(model);
        let count = series.len();
        telemetry.record(Metric::QueueDepth, self.inner.handle.queue_depth() as f64);
        let outcome = self
            .inner
            .handle
            .forecast_with_backtest(series, backtest)
            .await?;
        telemetry.record(Metric::BatchWindows, outcome.batch_windows as f64);
        telemetry.record(Metric::QueueLatency, outcome.queued.as_secs_f64() * 1e3);
        telemetry.record(
            Metric::InferenceLatency,
            outcome.inference.as_secs_f64() * 1e3,
        );
        telemetry.record(Metric::Forecasts, count as f64);
        for mae in &outcome.backtest_mae {
            telemetry.record(Metric::BacktestMae, *mae);
        }
        let mut response = outcome.response;
        if !levels.is_empty() {
            let model = self.model();
            let quantile_network = model.metadata().version == response.model.version
                && model.metadata().output.quantiles.is_some();
            if quantile_network {
                check_levels_in_quantiles(&model.metadata().output, levels)?;
                response.attach_quantile_intervals(&model.metadata().output, levels);
            } else {
                // The calibration of the version that answered (a reload may have happened
                // since the levels were checked): its online one while that serves every level
                // asked for, else its model.json one.
                let (calibration, source) =
                    self.calibration_for(&response.model.version, levels)?;
                check_levels_calibrated(Some(&calibration), levels)?;
                response.attach_intervals(&calibration, source, levels);
            }
        }
        if let Some(log) = self.forecast_log() {
            log.push(LogInput::records(
                log_inputs,
                &response,
                request_id,
                self.inner.role,
            ));
        }
        Ok(response)
    }

    /// Parses a `POST /v1/observations` body and appends the actuals to the store.
    /// Returns how many were stored and the object they went to.
    pub async fn store_observations(&self, body: &[u8]) -> Result<(usize, String), ServiceError> {
        let log = self.forecast_log().ok_or(ServiceError::NoStore)?;
        let observations: Vec<Observation> =
            parse_observations(body, MAX_OBSERVATIONS, chrono::Utc::now())?;
        let key = log
            .store()
            .append_actuals(&observations)
            .await
            .map_err(ServiceError::Store)?;
        Ok((observations.len(), key.unwrap_or_default()))
    }

    /// Indices of the series to backtest: those with enough history, sampled at `backtest_rate`.
    fn sample_backtests(&self, metadata: &ModelMetadata, series: &[SeriesInput]) -> Vec<usize> {
        let rows_needed =
            (metadata.input.window + metadata.output.horizon) * metadata.input.features.len();
        series
            .iter()
            .enumerate()
            .filter(|(_, s)| s.values.len() >= rows_needed && self.sample_backtest())
            .map(|(i, _)| i)
            .collect()
    }

    /// Whether the next backtest-eligible series is sampled.
    fn sample_backtest(&self) -> bool {
        self.inner
            .backtest_sampler
            .sample(self.inner.monitoring.backtest_rate)
    }

    /// Starts the backtest sampling again from `seed` (after a SnapStart restore, whose memory
    /// image every restored environment shares).
    pub fn reseed_sampling(&self, seed: u64) {
        self.inner.backtest_sampler.reseed(seed);
    }
}

// A canary challenger's part of the service.
impl Service {
    /// Puts a canary challenger beside live, answering the series whose id hashes under
    /// `fraction` (or none): a service of its own on `handle`, sharing this one's limits, forecast
    /// log and metric sinks, recording under its own version.
    pub fn set_canary(&self, challenger: Option<(InferenceHandle, f64)>) {
        let canary = challenger.map(|(handle, fraction)| {
            Arc::new(Canary {
                service: self.beside(handle, ForecastRole::Challenger),
                fraction,
            })
        });
        *self.inner.canary.write().unwrap_or_else(|p| p.into_inner()) = canary;
    }

    /// The service that answers for `version`: live's alone (no canary answers for it), the
    /// canary challenger's alone, or the version in live's shadow, on its own
    /// idle-priority engine (best effort: under load it answers slowly, or 429 past its small
    /// queue); `None` for any other version.
    pub fn for_version(&self, version: &str) -> Option<Service> {
        if self.model().metadata().version == version {
            return Some(Service {
                inner: Arc::clone(&self.inner),
                alone: true,
            });
        }
        if let Some(canary) = self
            .current_canary()
            .filter(|canary| canary.service.model().metadata().version == version)
        {
            return Some(canary.service.clone());
        }
        let shadow = self
            .current_shadow()
            .filter(|shadow| shadow.version() == version)?;
        Some(self.beside(shadow.handle().clone(), shadow.role))
    }

    /// The versions a request may name: live's, then a canary challenger's and the version in
    /// live's shadow.
    pub fn versions(&self) -> Vec<String> {
        let mut versions = vec![self.model().metadata().version.clone()];
        versions.extend(self.canary().map(|(version, _)| version));
        versions.extend(self.shadow().map(|(version, _, _)| version));
        versions
    }

    /// The canary challenger's version and share of series, if one serves.
    pub fn canary(&self) -> Option<(String, f64)> {
        self.current_canary()
            .map(|c| (c.service.model().metadata().version.clone(), c.fraction))
    }

    fn current_canary(&self) -> Option<Arc<Canary>> {
        self.inner
            .canary
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The canary, when it answers some of `series` and can serve the intervals asked for (else
    /// live answers them all, and its shadow still forecasts the canary's share).
    fn canary_for(&self, series: &[SeriesInput], levels: &[f64]) -> Option<Arc<Canary>> {
        if self.alone {
            return None;
        }
        let canary = self.current_canary()?;
        (series.iter().any(|s| canary.selects(s)) && canary.service.check_intervals(levels).is_ok())
            .then_some(canary)
    }

    /// A service for another version beside this one (`role` in the registry): the same limits,
    /// forecast log, metric sinks and Prometheus registry, its own model, drift checks, interval
    /// calibration and metric labels.
    fn beside(&self, handle: InferenceHandle, role: ForecastRole) -> Service {
        let model = handle.model();
        let monitoring = Monitoring {
            telemetry: self
                .telemetry()
                .for_model(&model.metadata().name, &model.metadata().version),
            // Its own draws: the two versions' backtests are sampled independently.
            sampling_seed: None,
            ..self.inner.monitoring.clone()
        };
        drop(model);
        Self::assemble(
            handle,
            self.inner.prometheus.clone(),
            self.inner.limits,
            monitoring,
            role,
        )
    }

    /// One request answered by two versions: the canary's share of series by the canary, the
    /// rest by live, in parallel; the answers back in the request's order, each naming the version
    /// that made it when both answered.
    async fn forecast_with_canary(
        &self,
        canary: &Canary,
        series: Vec<SeriesInput>,
        levels: &[f64],
        request_id: Option<&str>,
    ) -> Result<ForecastResponse, ServiceError> {
        let picked: Vec<bool> = series.iter().map(|s| canary.selects(s)).collect();
        let (canary_series, live_series): (Vec<_>, Vec<_>) = series
            .into_iter()
            .zip(&picked)
            .partition(|(_, &by_canary)| by_canary);
        let unzip = |part: Vec<(SeriesInput, &bool)>| -> Vec<SeriesInput> {
            part.into_iter().map(|(s, _)| s).collect()
        };
        let (canary_series, live_series) = (unzip(canary_series), unzip(live_series));
        let live_part = async {
            if live_series.is_empty() {
                return Ok(None);
            }
            self.forecast_alone(live_series, levels, request_id)
                .await
                .map(Some)
        };
        let canary_part = canary
            .service
            .forecast_alone(canary_series, levels, request_id);
        let (live, challenger) = tokio::join!(live_part, canary_part);
        let challenger = challenger?;
        let Some(live) = live? else {
            return Ok(challenger);
        };
        let canary_version = challenger.model.version.clone();
        let mut by_canary = challenger.forecasts.into_iter();
        let ForecastResponse {
            model,
            forecasts: live_forecasts,
            calibration,
        } = live;
        let mut by_live = live_forecasts.into_iter();
        let forecasts = picked
            .iter()
            .filter_map(|&by_canary_now| {
                let (mut forecast, version) = if by_canary_now {
                    (by_canary.next()?, &canary_version)
                } else {
                    (by_live.next()?, &model.version)
                };
                forecast.model_version = Some(version.clone());
                Some(forecast)
            })
            .collect();
        Ok(ForecastResponse {
            model,
            forecasts,
            calibration,
        })
    }
}

// The shadow's part of the service (see [`shadow`]).
impl Service {
    /// Puts `shadow` beside live (or none); the one it replaces stops once its queue drains.
    pub fn set_shadow(&self, shadow: Option<shadow::Shadow>) {
        *self.inner.shadow.write().unwrap_or_else(|p| p.into_inner()) = shadow.map(Arc::new);
    }

    /// The version in live's shadow now, with its role and share of series.
    pub fn shadow(&self) -> Option<(String, ForecastRole, f64)> {
        self.current_shadow()
            .map(|s| (s.version(), s.role, s.fraction))
    }

    fn current_shadow(&self) -> Option<Arc<shadow::Shadow>> {
        self.inner
            .shadow
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The shadow and the series of `series` it forecasts, when forecasts are logged and it
    /// selects any: cloned before live's forecast takes them.
    fn shadow_inputs(
        &self,
        series: &[SeriesInput],
    ) -> Option<(Arc<shadow::Shadow>, Vec<SeriesInput>)> {
        self.forecast_log()?;
        let shadow = self.current_shadow()?;
        let selected: Vec<SeriesInput> = series
            .iter()
            .filter(|s| shadow.selects(s))
            .cloned()
            .collect();
        (!selected.is_empty()).then_some((shadow, selected))
    }

    /// Forecasts `series` with the shadow on a task of its own, after live has answered and once
    /// live's engine is quiet, and logs the forecasts; skipped and counted otherwise (see
    /// [`shadow`]).
    fn run_shadow(
        &self,
        shadow: Arc<shadow::Shadow>,
        series: Vec<SeriesInput>,
        request_id: Option<&str>,
    ) {
        let count = series.len() as f64;
        let service = self.clone();
        let request_id = request_id.map(str::to_owned);
        tokio::spawn(async move {
            let model = shadow.model();
            let inputs = LogInput::collect(model.metadata(), &series);
            drop(model);
            let live = service.inner.handle.clone();
            match shadow.forecast_when_quiet(&live, series).await {
                Ok(None) => service.telemetry().record(Metric::ShadowSkipped, count),
                Ok(Some(outcome)) => {
                    if let Some(log) = service.forecast_log() {
                        log.push(LogInput::records(
                            inputs,
                            &outcome.response,
                            request_id.as_deref(),
                            shadow.role,
                        ));
                    }
                }
                Err(InferError::Overloaded { .. }) => {
                    service.telemetry().record(Metric::ShadowSkipped, count);
                }
                Err(e) => {
                    service.telemetry().record(Metric::ShadowSkipped, count);
                    tracing::warn!(
                        shadow_version = %shadow.version(),
                        "shadow forecast failed (live answered): {e}"
                    );
                }
            }
        });
    }
}

/// Whether a value of the model's window (the last `window` rows of `values`) lies beyond
/// [`OUT_OF_RANGE_SPREADS`] training standard deviations of its feature's training mean.
fn window_out_of_range(metadata: &ModelMetadata, values: &[f64]) -> bool {
    let features = &metadata.input.features;
    let rows = metadata.input.window * features.len();
    let window = &values[values.len().saturating_sub(rows)..];
    window
        .chunks(features.len())
        .flat_map(|row| row.iter().zip(features))
        .any(|(value, feature)| {
            metadata
                .training_stats
                .get(feature)
                .is_some_and(|stats| (value - stats.mean).abs() > OUT_OF_RANGE_SPREADS * stats.std)
        })
}

/// What the forecast log keeps of an input: only series with an id and a last timestamp can be
/// joined with their actuals later.
struct LogInput {
    id: String,
    origin: chrono::DateTime<chrono::Utc>,
    /// The last observed target value (MASE's naive forecast).
    last_value: f64,
    /// A window value lies beyond [`OUT_OF_RANGE_SPREADS`] training spreads.
    out_of_range: bool,
}

impl LogInput {
    fn collect(metadata: &ModelMetadata, series: &[SeriesInput]) -> Vec<LogInput> {
        let target = metadata.target_index().expect("checked at load");
        let features = metadata.input.features.len();
        series
            .iter()
            .filter_map(|s| {
                Some(LogInput {
                    id: s.id.clone()?,
                    origin: s.last_timestamp?,
                    last_value: s.values[s.values.len() - features + target],
                    out_of_range: window_out_of_range(metadata, &s.values),
                })
            })
            .collect()
    }

    fn records(
        inputs: Vec<LogInput>,
        response: &ForecastResponse,
        request_id: Option<&str>,
        role: ForecastRole,
    ) -> Vec<ForecastRecord> {
        let now = chrono::Utc::now();
        let by_id: std::collections::HashMap<&str, &SeriesForecast> = response
            .forecasts
            .iter()
            .filter_map(|f| Some((f.id.as_deref()?, f)))
            .collect();
        inputs
            .into_iter()
            .filter_map(|input| {
                let forecast = by_id.get(input.id.as_str())?;
                let timestamps = forecast
                    .timestamps
                    .as_ref()?
                    .iter()
                    .filter_map(|t| crate::time::parse_rfc3339(t))
                    .collect();
                Some(ForecastRecord {
                    series_id: input.id,
                    origin: input.origin,
                    last_value: input.last_value,
                    timestamps,
                    values: forecast.values.clone(),
                    model: response.model.name.clone(),
                    model_version: response.model.version.clone(),
                    request_id: request_id.map(str::to_owned),
                    created_at: now,
                    intervals_calibration: response.calibration.as_ref().map(|c| c.source.clone()),
                    intervals: forecast.intervals.clone(),
                    out_of_range: input.out_of_range,
                    role,
                })
            })
            .collect()
    }
}
