//! The HTTP adapter (axum): routes, JSON error bodies, request ids and metrics.
//!
//! This is the long-running server (`lstm-forecast serve`, the ECS/Kubernetes variant). It only
//! converts: bytes to [`SeriesInput`], core errors to status codes. All model logic is in the core.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::forecast::{
    parse_forecast_request, parse_observations, ForecastResponse, RequestError, RequestShape,
    SeriesInput,
};
use crate::infer::{InferError, InferenceHandle};
use crate::metrics::{Metric, ServerMetrics, Telemetry};
use crate::model::contract::ModelMetadata;
use crate::monitor::store::{ForecastLog, ForecastRecord};

/// Request limits, from the CLI.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Most series per forecast request (they run as one batch).
    pub max_series: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_body_bytes: 2 * 1024 * 1024,
            max_series: 256,
        }
    }
}

/// Shared by every handler; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    inner: Arc<Inner>,
}

struct Inner {
    handle: InferenceHandle,
    metrics: ServerMetrics,
    limits: Limits,
    monitoring: Monitoring,
    /// Counts backtest-eligible series, for deterministic sampling at `backtest_rate`.
    backtest_counter: AtomicU64,
}

/// The monitoring side of the server: where metrics go, where forecasts are logged, how often
/// requests are backtested.
#[derive(Clone)]
pub struct Monitoring {
    pub telemetry: Telemetry,
    /// Set when `FORECAST_LOG_URI` is: forecasts are logged and `/v1/observations` stores actuals.
    pub forecast_log: Option<Arc<ForecastLog>>,
    /// Share of backtest-eligible series (history >= window + horizon) that are backtested.
    pub backtest_rate: f64,
}

impl Default for Monitoring {
    fn default() -> Self {
        Monitoring {
            telemetry: Telemetry::disabled(),
            forecast_log: None,
            backtest_rate: 0.0,
        }
    }
}

impl AppState {
    pub fn new(handle: InferenceHandle, metrics: ServerMetrics, limits: Limits) -> Self {
        Self::with_monitoring(handle, metrics, limits, Monitoring::default())
    }

    pub fn with_monitoring(
        handle: InferenceHandle,
        metrics: ServerMetrics,
        limits: Limits,
        monitoring: Monitoring,
    ) -> Self {
        let model = handle.model();
        metrics.set_model(model.metadata());
        monitoring
            .telemetry
            .set_model(&model.metadata().name, &model.metadata().version);
        AppState {
            inner: Arc::new(Inner {
                handle,
                metrics,
                limits,
                monitoring,
                backtest_counter: AtomicU64::new(0),
            }),
        }
    }

    pub fn telemetry(&self) -> &Telemetry {
        &self.inner.monitoring.telemetry
    }

    pub fn forecast_log(&self) -> Option<&Arc<ForecastLog>> {
        self.inner.monitoring.forecast_log.as_ref()
    }

    /// The model in service changed: label later metrics with it.
    pub fn model_changed(&self) {
        let model = self.inner.handle.model();
        self.inner.metrics.set_model(model.metadata());
        self.telemetry()
            .set_model(&model.metadata().name, &model.metadata().version);
    }

    /// Whether the next backtest-eligible series is sampled (deterministic: every 1/rate-th).
    fn sample_backtest(&self) -> bool {
        let rate = self.inner.monitoring.backtest_rate;
        if rate <= 0.0 {
            return false;
        }
        let n = self.inner.backtest_counter.fetch_add(1, Ordering::Relaxed) as f64;
        ((n + 1.0) * rate).floor() > (n * rate).floor()
    }

    pub fn handle(&self) -> &InferenceHandle {
        &self.inner.handle
    }

    pub fn metrics(&self) -> &ServerMetrics {
        &self.inner.metrics
    }
}

/// All routes, with body limit, request ids, logging and metrics.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/v1/forecast", post(forecast))
        .route("/v1/observations", post(observations))
        .route("/v1/model", get(model_metadata))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(state.inner.limits.max_body_bytes))
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    // Without TCP_NODELAY a response written in two segments waits for the client's delayed ACK
    // (~40 ms on Linux): Nagle's algorithm would dominate every small forecast.
    let listener = listener.tap_io(|tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await
}

/// Resolves on ctrl-c or SIGTERM (what ECS, Kubernetes and systemd send).
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received; finishing in-flight requests");
}

/// Bodies must be JSON, and uncompressed: a gzip body would otherwise fail as "not valid JSON",
/// which sends its sender looking in the wrong place.
fn check_plain_json(headers: &HeaderMap) -> Result<(), ApiError> {
    if let Some(content_type) = headers.get(header::CONTENT_TYPE) {
        let is_json = content_type
            .to_str()
            .map(|v| v.to_ascii_lowercase().contains("json"))
            .unwrap_or(false);
        if !is_json {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "Content-Type {:?} is not JSON; send `Content-Type: application/json`",
                    content_type
                ),
            ));
        }
    }
    if let Some(encoding) = headers.get(header::CONTENT_ENCODING) {
        let is_identity = encoding
            .to_str()
            .is_ok_and(|v| v.trim().eq_ignore_ascii_case("identity"));
        if !is_identity {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!(
                    "Content-Encoding {:?} is not supported; send the body uncompressed",
                    encoding
                ),
            ));
        }
    }
    Ok(())
}

async fn forecast(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ForecastResponse>, ApiError> {
    check_plain_json(&headers)?;
    let body =
        body.map_err(|rejection| ApiError::body(rejection, state.inner.limits.max_body_bytes))?;
    let model = state.inner.handle.model();
    let metadata = model.metadata();
    let shape = RequestShape::new(metadata, state.inner.limits.max_series);
    let series = parse_forecast_request(&body, &shape)?;
    let count = series.len() as u64;
    let telemetry = state.telemetry();
    record_drift(telemetry, metadata, &series);
    let rows_needed =
        (metadata.input.window + metadata.output.horizon) * metadata.input.features.len();
    let backtest: Vec<usize> = series
        .iter()
        .enumerate()
        .filter(|(_, s)| s.values.len() >= rows_needed && state.sample_backtest())
        .map(|(i, _)| i)
        .collect();
    let log_inputs: Vec<(String, chrono::DateTime<chrono::Utc>, f64)> = match state.forecast_log() {
        Some(_) => {
            let target = metadata.target_index().expect("checked at load");
            let features = metadata.input.features.len();
            series
                .iter()
                .filter_map(|s| {
                    Some((
                        s.id.clone()?,
                        s.last_timestamp?,
                        s.values[s.values.len() - features + target],
                    ))
                })
                .collect()
        }
        None => Vec::new(),
    };
    drop(model);
    state
        .inner
        .metrics
        .queue_depth
        .set(state.inner.handle.queue_depth() as i64);
    let outcome = state
        .inner
        .handle
        .forecast_with_backtest(series, backtest)
        .await?;
    let metrics = &state.inner.metrics;
    metrics.batch_windows.observe(outcome.batch_windows as f64);
    metrics
        .inference_duration
        .observe(outcome.inference.as_secs_f64());
    metrics.queue_duration.observe(outcome.queued.as_secs_f64());
    metrics.forecasts.inc_by(count);
    telemetry.record(
        Metric::InferenceLatency,
        outcome.inference.as_secs_f64() * 1e3,
    );
    telemetry.record(Metric::Forecasts, count as f64);
    for mae in &outcome.backtest_mae {
        telemetry.record(Metric::BacktestMae, *mae);
    }
    if let Some(log) = state.forecast_log() {
        let request_id = headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let now = chrono::Utc::now();
        let response = &outcome.response;
        let by_id: std::collections::HashMap<&str, &crate::forecast::SeriesForecast> = response
            .forecasts
            .iter()
            .filter_map(|f| Some((f.id.as_deref()?, f)))
            .collect();
        log.push(
            log_inputs
                .into_iter()
                .filter_map(|(id, origin, last_value)| {
                    let forecast = by_id.get(id.as_str())?;
                    let timestamps = forecast
                        .timestamps
                        .as_ref()?
                        .iter()
                        .filter_map(|t| crate::forecast::parse_rfc3339(t))
                        .collect();
                    Some(ForecastRecord {
                        series_id: id,
                        origin,
                        last_value,
                        timestamps,
                        values: forecast.values.clone(),
                        model: response.model.name.clone(),
                        model_version: response.model.version.clone(),
                        request_id: request_id.clone(),
                        created_at: now,
                    })
                }),
        );
    }
    Ok(Json(outcome.response))
}

/// Input drift of each series' window against the training statistics of the target feature.
pub fn record_drift(telemetry: &Telemetry, metadata: &ModelMetadata, series: &[SeriesInput]) {
    let features = metadata.input.features.len();
    let target = metadata.target_index().expect("checked at load");
    let stats = &metadata.training_stats[&metadata.input.target];
    let window_len = metadata.input.window * features;
    for s in series {
        let values: Vec<f64> = s
            .window(window_len)
            .iter()
            .skip(target)
            .step_by(features)
            .copied()
            .collect();
        telemetry.record(
            Metric::InputDrift,
            crate::monitor::drift::psi(&values, &stats.quantile_edges),
        );
        telemetry.record(
            Metric::OutOfRangeFraction,
            crate::monitor::drift::out_of_range_fraction(&values, stats.min, stats.max),
        );
    }
}

/// Most observations accepted in one request.
const MAX_OBSERVATIONS: usize = 100_000;

/// Stores actuals for the accuracy loop (the same store as the forecast log).
async fn observations(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<serde_json::Value>), ApiError> {
    check_plain_json(&headers)?;
    let body =
        body.map_err(|rejection| ApiError::body(rejection, state.inner.limits.max_body_bytes))?;
    let Some(log) = state.forecast_log() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_configured",
            "observations need a store: start the server with FORECAST_LOG_URI=s3://BUCKET/PREFIX",
        ));
    };
    let observations = parse_observations(&body, MAX_OBSERVATIONS)?;
    let key = log
        .store()
        .append_actuals(&observations)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("could not store the observations: {e}"),
            )
        })?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"stored": observations.len(), "object": key})),
    ))
}

async fn model_metadata(State(state): State<AppState>) -> Json<ModelMetadata> {
    Json(state.inner.handle.model().metadata().clone())
}

async fn healthz() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

/// Ready when the engine threads are alive: the model was loaded and warmed up before the listener
/// opened, so there is no "loading" state to report.
async fn readyz(State(state): State<AppState>) -> Response {
    let handle = &state.inner.handle;
    if handle.is_alive() {
        let model = handle.model();
        let metadata = model.metadata();
        Json(json!({"status": "ready", "model": {"name": metadata.name, "version": metadata.version}}))
            .into_response()
    } else {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the inference engine has stopped",
        )
        .into_response()
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        state.inner.metrics.render(),
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!(
            "no route for {method} {}; available: POST /v1/forecast, POST /v1/observations, GET /v1/model, GET /healthz, GET /readyz, GET /metrics",
            uri.path()
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}

/// Assigns a request id, logs and times every request, and counts errors by code.
async fn observe(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let request_id = request
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(new_request_id);
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let model_version = state.inner.handle.model().metadata().version.clone();
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %request.method(),
        route = %route,
        model_version = %model_version,
    );
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        request.headers_mut().insert("x-request-id", value);
    }
    let started = Instant::now();
    let mut response = next.run(request).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    let metrics = &state.inner.metrics;
    metrics
        .request_duration
        .with_label_values(&[route.as_str()])
        .observe(elapsed.as_secs_f64());
    if route.starts_with("/v1/") || route == "unmatched" {
        let telemetry = state.telemetry();
        telemetry.record(Metric::Requests, 1.0);
        if status.is_client_error() {
            telemetry.record(Metric::ClientErrors, 1.0);
        } else if status.is_server_error() {
            telemetry.record(Metric::ServerErrors, 1.0);
        }
        if route == "/v1/forecast" {
            telemetry.record(Metric::ForecastLatency, elapsed.as_secs_f64() * 1e3);
        }
    }
    metrics
        .requests
        .with_label_values(&[route.as_str(), status.as_str()])
        .inc();
    let _entered = span.enter();
    if let Some(error) = response.extensions().get::<ErrorLog>() {
        metrics.errors.with_label_values(&[error.code]).inc();
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), code = error.code, message = %error.message, latency_ms = elapsed.as_secs_f64() * 1e3, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), code = error.code, message = %error.message, latency_ms = elapsed.as_secs_f64() * 1e3, "request rejected");
        }
    } else if route.starts_with("/v1/") {
        tracing::info!(
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1e3,
            "request served"
        );
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Unique enough for correlating logs: wall-clock nanoseconds, pid and a counter.
fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{nanos:016x}-{:05x}-{:06x}",
        std::process::id() & 0xfffff,
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffffff
    )
}

/// An error answer: `{"error":{"code":...,"message":...}}` with a fitting status.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

/// Left on error responses so the middleware can count and log them.
#[derive(Clone)]
struct ErrorLog {
    code: &'static str,
    message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            retry_after_secs: None,
        }
    }

    fn body(rejection: BytesRejection, limit: usize) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "request body exceeds the {limit}-byte limit; send fewer series per request"
                ),
            )
        } else {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_body",
                format!("could not read the request body: {}", rejection.body_text()),
            )
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, e.code.as_str(), e.message)
    }
}

impl From<InferError> for ApiError {
    fn from(e: InferError) -> Self {
        match &e {
            InferError::Overloaded { .. } => ApiError {
                retry_after_secs: Some(1),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "overloaded", e.to_string())
            },
            InferError::Stopped => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
            InferError::Panicked => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
            }
            InferError::Forecast(f) if f.is_client_error() => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", f.to_string())
            }
            InferError::Forecast(f) => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "inference_failed",
                f.to_string(),
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({"error": {"code": self.code, "message": self.message}}));
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response.extensions_mut().insert(ErrorLog {
            code: self.code,
            message: self.message,
        });
        response
    }
}
