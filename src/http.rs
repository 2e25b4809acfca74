//! The HTTP adapter (axum): routes, JSON error bodies, request ids and metrics.
//!
//! This is the long-running server (`lstm-forecast serve`, the ECS/Kubernetes variant), and the
//! router the Lambda function hands API Gateway events to. It only converts: HTTP requests to
//! [`Service`] calls, [`ServiceError`]s to status codes and JSON error bodies. Everything between
//! the body and the answer (validation, the engine, drift, backtests, the forecast log, metrics)
//! is the service's.

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use tokio::net::TcpListener;
use tracing::Instrument;

use crate::forecast::{ErrorCode, RequestError};
use crate::infer::InferError;
use crate::metrics::{RequestOutcome, Traffic};
use crate::model::contract::ModelMetadata;
use crate::service::{Service, ServiceError};

/// All routes, with body limit, request ids, logging and metrics.
pub fn router(service: Service) -> Router {
    router_with_auth(service, ApiAuth::default())
}

/// What one client may hold of the server: time to send a request, and a share of the requests
/// in flight. A slow client, by accident or on purpose, would otherwise hold a connection, a task
/// and its buffers for as long as it likes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// To send a request's headers; a slower connection is closed. hyper runs this timer on an
    /// idle keep-alive connection too, so it is also the keep-alive idle time: it must exceed the
    /// idle timeout of a load balancer in front (the ALB's 60 s), or the balancer may send a
    /// request down a connection the server is closing.
    pub header_read_timeout: Duration,
    /// To send a request's body once its headers are in; a slower one gets a 408.
    pub body_read_timeout: Duration,
    /// Requests in flight at most, health checks and `/metrics` aside (orchestrators must still
    /// see a busy server as alive); beyond it a 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Bytes that request bodies over [`LARGE_BODY`] (or of unknown length) may hold at once,
    /// received or promised by their `Content-Length`; a body past it gets a 503 before a byte of
    /// it is read. A caller holding 2 MiB bodies open for the body timeout can then pin this much
    /// memory, not `max_concurrent_requests` times 2 MiB; small requests are not counted against
    /// it, so they keep being answered.
    pub large_bodies_in_flight: usize,
    /// Open connections at most: past it the server stops accepting until one closes (the
    /// kernel's backlog holds the newcomers), so idle or slow connections cannot pile up without
    /// bound.
    pub max_connections: usize,
}

/// The body size from which a request counts against
/// [`ConnectionLimits::large_bodies_in_flight`]. A forecast of one series is a few kilobytes.
pub const LARGE_BODY: usize = 256 * 1024;

impl Default for ConnectionLimits {
    fn default() -> Self {
        ConnectionLimits {
            header_read_timeout: Duration::from_secs(65),
            body_read_timeout: Duration::from_secs(30),
            max_concurrent_requests: 512,
            large_bodies_in_flight: 32 << 20,
            max_connections: 1024,
        }
    }
}

/// Authentication the server does itself, where nothing in front of it does (ECS behind a load
/// balancer, a laptop). API Gateway authenticates the Lambda function's callers.
#[derive(Debug, Clone, Default)]
pub struct ApiAuth {
    /// When set, `POST /v1/observations` needs `Authorization: Bearer <token>`: actuals drive the
    /// accuracy alarm and the rollback, so not every forecast caller may post them.
    pub observations_token: Option<String>,
}

/// [`router`], with `auth` enforced.
pub fn router_with_auth(service: Service, auth: ApiAuth) -> Router {
    router_with(service, auth, ConnectionLimits::default())
}

/// [`router`], with `auth` and `limits` enforced.
pub fn router_with(service: Service, auth: ApiAuth, limits: ConnectionLimits) -> Router {
    // No DefaultBodyLimit: the handlers read their bodies themselves ([`read_body`]), each with
    // its own limit and the body timeout.
    Router::new()
        .route("/v1/forecast", post(forecast))
        .route(
            "/v1/observations",
            post(observations)
                .layer::<_, std::convert::Infallible>(axum::Extension(std::sync::Arc::new(auth))),
        )
        .route("/v1/model", get(model_metadata))
        .route("/v2", get(oip_server_metadata))
        // The protocol's own OpenAPI document writes the server metadata route with a slash.
        .route("/v2/", get(oip_server_metadata))
        .route("/openapi.json", get(openapi_json))
        .route("/v2/health/live", get(oip_live))
        .route("/v2/health/ready", get(oip_ready))
        .route("/v2/models/{name}", get(oip_model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(oip_version_metadata),
        )
        .route("/v2/models/{name}/ready", get(oip_model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(oip_version_ready),
        )
        .route("/v2/models/{name}/infer", post(oip_infer))
        .route(
            "/v2/models/{name}/versions/{version}/infer",
            post(oip_version_infer),
        )
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::Extension(limits))
        .layer(axum::Extension(BodyBudget(Arc::new(
            tokio::sync::Semaphore::new(limits.large_bodies_in_flight / 1024),
        ))))
        // Inside `observe`, so that a shed request is logged and counted like any other answer.
        .layer(middleware::from_fn_with_state(
            InFlight {
                slots: Arc::new(tokio::sync::Semaphore::new(limits.max_concurrent_requests)),
                max: limits.max_concurrent_requests,
            },
            admit,
        ))
        .layer(middleware::from_fn_with_state(service.clone(), observe))
        .with_state(service)
}

/// The request slots of [`ConnectionLimits::max_concurrent_requests`].
#[derive(Clone)]
struct InFlight {
    slots: Arc<tokio::sync::Semaphore>,
    max: usize,
}

/// Lets a request in if a slot is free, else answers 503 at once: queueing it would only move the
/// wait somewhere the client cannot see. Probes and scrapes always pass.
async fn admit(State(in_flight): State<InFlight>, request: Request, next: Next) -> Response {
    if is_probe(request.uri().path()) {
        return next.run(request).await;
    }
    match in_flight.slots.try_acquire_owned() {
        Ok(_slot) => next.run(request).await,
        Err(_) => {
            // Read a small body before answering: closing a socket with unread data makes the
            // kernel send a reset, which can reach the client before the 503 does.
            let drain = axum::body::to_bytes(request.into_body(), SHED_BODY_DRAINED_BYTES);
            let _ = tokio::time::timeout(SHED_BODY_DRAIN_TIME, drain).await;
            shed(in_flight.max)
        }
    }
}

/// Health checks and the scrape: what orchestrators and Prometheus call, not clients.
fn is_probe(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/metrics" | "/v2/health/live" | "/v2/health/ready"
    )
}

/// How telemetry counts a request on `route` (the matched path, or `unmatched`). The paths are
/// this router's, so the classification is too: the metrics core only follows it.
fn traffic_of(route: &str) -> Traffic {
    match route {
        "/v1/forecast"
        | "/v2/models/{name}/infer"
        | "/v2/models/{name}/versions/{version}/infer" => Traffic::Forecast,
        probe if is_probe(probe) => Traffic::Probe,
        _ => Traffic::Api,
    }
}

/// What a shed request's body may cost before the 503: a forecast of a few series.
const SHED_BODY_DRAINED_BYTES: usize = 64 * 1024;
const SHED_BODY_DRAIN_TIME: Duration = Duration::from_millis(100);

/// The code of the 503 for a request beyond the in-flight limit: the limit working, not a failure
/// (its message is kept, and it logs as a warning).
const SERVER_BUSY: &str = "server_busy";

/// The 503 for a request beyond the in-flight limit.
fn shed(max: usize) -> Response {
    ApiError {
        retry_after_secs: Some(1),
        close_connection: true,
        ..ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            SERVER_BUSY,
            format!("the server is at its limit of {max} requests in flight; retry shortly"),
        )
    }
    .into_response()
}

/// The room left for large request bodies, in KiB (see
/// [`ConnectionLimits::large_bodies_in_flight`]).
#[derive(Clone)]
struct BodyBudget(Arc<tokio::sync::Semaphore>);

/// A large body's share of the budget, held until its request is answered.
type BodyClaim = Option<tokio::sync::OwnedSemaphorePermit>;

impl BodyBudget {
    /// Claims room for a body of `Content-Length` `declared` (its `limit` when unknown), if it is
    /// large; a 503 when the budget is spent.
    fn claim(
        &self,
        declared: Option<usize>,
        limit: usize,
        limits: &ConnectionLimits,
    ) -> Result<BodyClaim, ApiError> {
        let size = declared.unwrap_or(limit).min(limit);
        if declared.is_some() && size < LARGE_BODY {
            return Ok(None);
        }
        let kib = u32::try_from(size.div_ceil(1024)).unwrap_or(u32::MAX);
        match Arc::clone(&self.0).try_acquire_many_owned(kib) {
            Ok(permit) => Ok(Some(permit)),
            Err(_) => Err(ApiError {
                retry_after_secs: Some(1),
                close_connection: true,
                ..ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    SERVER_BUSY,
                    format!(
                        "request bodies over {} KiB are at the server's {} MiB budget in flight; retry shortly, or send fewer series per request",
                        LARGE_BODY / 1024,
                        limits.large_bodies_in_flight >> 20
                    ),
                )
            }),
        }
    }
}

/// A request's `Content-Length`, when it gives a valid one.
fn declared_length(headers: &HeaderMap) -> Option<usize> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// Reads a whole body, at most `limit` bytes, within the body timeout.
async fn read_body(body: Body, limit: usize, limits: &ConnectionLimits) -> Result<Bytes, ApiError> {
    match tokio::time::timeout(limits.body_read_timeout, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(bytes)) => Ok(bytes),
        Ok(Err(e)) => {
            let too_large = std::error::Error::source(&e)
                .is_some_and(|cause| cause.is::<http_body_util::LengthLimitError>());
            Err(if too_large {
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
                    format!("could not read the request body: {e}"),
                )
            })
        }
        Err(_) => Err(ApiError {
            close_connection: true,
            ..ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "request_timeout",
                format!(
                    "the request body did not arrive within {} s of its headers; send it in one go",
                    limits.body_read_timeout.as_secs_f64()
                ),
            )
        }),
    }
}

/// Serves until `shutdown` resolves, then stops accepting and lets in-flight requests finish.
pub async fn serve(
    listener: TcpListener,
    service: Service,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(
        listener,
        service,
        ApiAuth::default(),
        ConnectionLimits::default(),
        shutdown,
    )
    .await
}

/// [`serve`], with `auth` and `limits` enforced.
///
/// Its own accept loop over hyper rather than `axum::serve`, which has no header read timeout:
/// without one, a client that sends its headers a byte at a time holds a connection for ever.
pub async fn serve_with(
    listener: TcpListener,
    service: Service,
    auth: ApiAuth,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let router = router_with(service, auth, limits);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout);
    let connections = hyper_util::server::graceful::GracefulShutdown::new();
    let open = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        // A free connection slot first: at the cap, newcomers wait in the kernel's backlog.
        let slot = tokio::select! {
            slot = Arc::clone(&open).acquire_owned() => slot.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                // Out of file descriptors, or a connection reset before it was accepted: the
                // listener is fine. A moment's pause keeps EMFILE from spinning the loop.
                Err(e) => {
                    tracing::warn!("accepting a connection failed: {e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Without TCP_NODELAY a response written in two segments waits for the client's delayed
        // ACK (~40 ms on Linux): Nagle's algorithm would dominate every small forecast.
        let _ = stream.set_nodelay(true);
        let connection = http.serve_connection(
            hyper_util::rt::TokioIo::new(stream),
            hyper_util::service::TowerToHyperService::new(router.clone()),
        );
        let connection = connections.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    // Idle keep-alive connections close now; those with a request in flight close after it.
    connections.shutdown().await;
    Ok(())
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
    check_uncompressed(headers)
}

/// Bodies must be uncompressed.
fn check_uncompressed(headers: &HeaderMap) -> Result<(), ApiError> {
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

#[utoipa::path(
    post, path = "/v1/forecast", tag = "v1",
    request_body(content = crate::forecast::ForecastRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "One forecast per series, in request order", body = crate::forecast::ForecastResponse),
        (status = 400, description = "A request the client must fix; the message names the field", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the body timeout", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 415, description = "Not JSON, or compressed", body = ErrorBody),
        (status = 422, description = "Interval levels the model is not calibrated for", body = ErrorBody),
        (status = 429, description = "The engine queue is full; retry after `Retry-After`", body = ErrorBody),
        (status = 500, description = "The server failed; the message carries the request id", body = ErrorBody),
        (status = 503, description = "Too many requests in flight (`server_busy`), or the engine or store is unavailable", body = ErrorBody),
    )
)]
async fn forecast(
    State(service): State<Service>,
    axum::Extension(limits): axum::Extension<ConnectionLimits>,
    axum::Extension(budget): axum::Extension<BodyBudget>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<crate::forecast::ForecastResponse>, ApiError> {
    check_plain_json(&headers)?;
    let limit = service.limits().max_body_bytes;
    let _claim = budget.claim(declared_length(&headers), limit, &limits)?;
    let body = read_body(body, limit, &limits).await?;
    // `observe` put the request id there (the client's, Lambda's, or a new one).
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    Ok(Json(service.forecast_json(&body, request_id).await?))
}

/// Stores actuals for the accuracy loop (the same store as the forecast log).
#[utoipa::path(
    post, path = "/v1/observations", tag = "v1",
    request_body(content = crate::monitor::observations::ObservationsRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Stored for the next evaluation", body = Stored),
        (status = 400, description = "A request the client must fix; the message names the field", body = ErrorBody),
        (status = 408, description = "The body did not arrive within the body timeout", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 415, description = "Not JSON, or compressed", body = ErrorBody),
        (status = 401, description = "Missing or wrong bearer token (OBSERVATIONS_TOKEN)", body = ErrorBody),
        (status = 501, description = "The server has no store (FORECAST_LOG_URI)", body = ErrorBody),
        (status = 503, description = "Too many requests in flight (`server_busy`), or the engine or store is unavailable", body = ErrorBody),
    ),
    security(("bearer" = []))
)]
async fn observations(
    State(service): State<Service>,
    axum::Extension(auth): axum::Extension<std::sync::Arc<ApiAuth>>,
    axum::Extension(limits): axum::Extension<ConnectionLimits>,
    axum::Extension(budget): axum::Extension<BodyBudget>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Stored>), ApiError> {
    if let Some(token) = &auth.observations_token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        if !constant_time_eq(presented.as_bytes(), token.as_bytes()) {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "posting observations needs `Authorization: Bearer <token>` (the server's OBSERVATIONS_TOKEN)",
            ));
        }
    }
    check_plain_json(&headers)?;
    let limit = service.limits().max_observation_bytes;
    let _claim = budget.claim(declared_length(&headers), limit, &limits)?;
    let body = read_body(body, limit, &limits).await?;
    let (stored, key) = service.store_observations(&body).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Stored {
            stored,
            object: key,
        }),
    ))
}

/// `POST /v1/observations`: how many values were stored, and where.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Stored {
    stored: usize,
    object: String,
}

/// `GET /healthz`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Health {
    status: &'static str,
}

/// `GET /readyz`: ready, and with which model.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Readiness {
    status: &'static str,
    model: crate::forecast::ModelRef,
}

/// `GET /v2/health/live`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct Liveness {
    live: bool,
}

/// `GET /v2/health/ready`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ServerReadiness {
    ready: bool,
}

/// `GET /v2/models/{name}[/versions/{version}]/ready`.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ModelReadiness<'a> {
    name: &'a str,
    ready: bool,
}

/// `GET /v1/model`: what a client needs to call the model, and its published scores. Not the
/// whole `model.json`: the training statistics and drift calibration describe the training data,
/// and the normalisation constants are internals.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ModelInfo<'a> {
    name: &'a str,
    version: &'a str,
    created_at: &'a str,
    torch_version: &'a str,
    model_sha256: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    onnx_sha256: Option<&'a str>,
    /// The engine that answers the forwards: `onnxruntime` (when the model ships model.onnx and
    /// the runtime library opens) or `libtorch`.
    engine: &'static str,
    input: &'a crate::model::contract::InputSpec,
    output: &'a crate::model::contract::OutputSpec,
    /// The kinds of preprocessing applied, in order (`z_score`, `subtract_last`).
    preprocessing: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    evaluation: Option<&'a serde_json::Value>,
    /// The interval levels a request may ask for (from the calibration or the quantiles).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    interval_levels: Vec<f64>,
}

#[utoipa::path(
    get, path = "/v1/model", tag = "v1",
    responses(
        (status = 200, description = "The model in service", body = ModelInfo),
        (status = 503, description = "Too many requests in flight (`server_busy`), or the engine or store is unavailable", body = ErrorBody),
    )
)]
async fn model_metadata(State(service): State<Service>) -> Response {
    let model = service.model();
    let metadata: &ModelMetadata = model.metadata();
    Json(ModelInfo {
        name: &metadata.name,
        version: &metadata.version,
        created_at: &metadata.created_at,
        torch_version: &metadata.torch_version,
        model_sha256: &metadata.model_sha256,
        onnx_sha256: metadata.onnx_sha256.as_deref(),
        engine: model.forward_engine().as_str(),
        input: &metadata.input,
        output: &metadata.output,
        preprocessing: metadata
            .preprocessing
            .iter()
            .map(|step| match step {
                crate::model::contract::Preprocessing::ZScore { .. } => "z_score",
                crate::model::contract::Preprocessing::SubtractLast => "subtract_last",
            })
            .collect(),
        evaluation: metadata.evaluation.as_ref(),
        interval_levels: metadata.interval_levels(),
    })
    .into_response()
}

// The Open Inference Protocol v2 (see `oip`): the same service, limits and auth as `/v1`, its
// errors as the protocol writes them (`{"error": "..."}`).

/// An error of a `/v2` route: the status and log of an [`ApiError`], the protocol's body.
struct OipError(ApiError);

impl<E: Into<ApiError>> From<E> for OipError {
    fn from(e: E) -> Self {
        OipError(e.into())
    }
}

impl IntoResponse for OipError {
    fn into_response(self) -> Response {
        let mut response = self.0.into_response();
        let (mut parts, _) = response.into_parts();
        let message = parts
            .extensions
            .get::<ErrorLog>()
            .map(|e| e.message.clone())
            .unwrap_or_default();
        parts.headers.remove(header::CONTENT_LENGTH);
        let body = serde_json::to_vec(&OipErrorBody { error: message }).expect("serialises");
        response = Response::from_parts(parts, Body::from(body));
        response
    }
}

fn unknown_model(what: String) -> OipError {
    OipError(ApiError::new(StatusCode::NOT_FOUND, "not_found", what))
}

/// The service that answers for the model `name` (and `version`, when the route names one).
fn oip_target(service: &Service, name: &str, version: Option<&str>) -> Result<Service, OipError> {
    let model = service.model();
    let served = &model.metadata().name;
    if name != served {
        return Err(unknown_model(format!(
            "unknown model `{}`; this server serves `{served}`",
            crate::forecast::excerpt(name)
        )));
    }
    let Some(version) = version else {
        return Ok(service.clone());
    };
    service.for_version(version).ok_or_else(|| {
        unknown_model(format!(
            "model `{served}` has no version `{}` serving requests; it has {:?}",
            crate::forecast::excerpt(version),
            service.versions()
        ))
    })
}

/// `{name}` and, on the versioned routes, `{version}`.
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
struct ModelName {
    /// The model's name (`GET /v1/model`)
    name: String,
}

#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
struct ModelVersion {
    /// The model's name (`GET /v1/model`)
    name: String,
    /// The live version, or a canary challenger's
    version: String,
}

/// The answers of the model metadata routes, for their OpenAPI description.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum MetadataAnswers {
    #[response(
        status = 200,
        description = "Model metadata: inputs and outputs as tensors"
    )]
    Metadata(crate::oip::ModelMetadataV2),
    #[response(status = 404, description = "No such model or version")]
    NotFound(OipErrorBody),
    #[response(status = 503, description = "Too many requests in flight")]
    Busy(OipErrorBody),
}

/// The answers of the model readiness routes, for their OpenAPI description.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum ReadinessAnswers<'a> {
    #[response(status = 200, description = "Ready")]
    Ready(ModelReadiness<'a>),
    #[response(status = 404, description = "No such model or version")]
    NotFound(OipErrorBody),
    #[response(
        status = 503,
        description = "The engine stopped, or too many requests in flight"
    )]
    Stopped(ModelReadiness<'a>),
}

#[utoipa::path(
    get, path = "/v2", tag = "v2",
    responses(
        (status = 200, description = "Server metadata", body = crate::oip::ServerMetadata),
        (status = 503, description = "Too many requests in flight", body = OipErrorBody),
    )
)]
async fn oip_server_metadata() -> Response {
    Json(crate::oip::ServerMetadata::new()).into_response()
}

#[utoipa::path(
    get, path = "/v2/health/live", tag = "v2",
    responses(
        (status = 200, description = "Live", body = Liveness),
        (status = 503, description = "The engine stopped", body = Liveness),
    )
)]
async fn oip_live(State(service): State<Service>) -> Response {
    let live = service.handle().is_alive();
    let status = if live {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(Liveness { live })).into_response()
}

#[utoipa::path(
    get, path = "/v2/health/ready", tag = "v2",
    responses(
        (status = 200, description = "Ready", body = ServerReadiness),
        (status = 503, description = "The engine stopped", body = ServerReadiness),
    )
)]
async fn oip_ready(State(service): State<Service>) -> Response {
    let ready = service.handle().is_alive();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(ServerReadiness { ready })).into_response()
}

#[utoipa::path(
    get,
    path = "/v2/models/{name}",
    tag = "v2",
    params(ModelName),
    responses(MetadataAnswers)
)]
async fn oip_model_metadata(
    state: State<Service>,
    Path(path): Path<ModelName>,
) -> Result<Response, OipError> {
    model_metadata_v2(state, &path.name, None).await
}

#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}",
    tag = "v2",
    params(ModelVersion),
    responses(MetadataAnswers)
)]
async fn oip_version_metadata(
    state: State<Service>,
    Path(path): Path<ModelVersion>,
) -> Result<Response, OipError> {
    model_metadata_v2(state, &path.name, Some(&path.version)).await
}

async fn model_metadata_v2(
    State(service): State<Service>,
    name: &str,
    version: Option<&str>,
) -> Result<Response, OipError> {
    let target = oip_target(&service, name, version)?;
    let model = target.model();
    let versions = match version {
        Some(version) => vec![version.to_owned()],
        None => service.versions(),
    };
    Ok(Json(crate::oip::model_metadata(model.metadata(), versions)).into_response())
}

#[utoipa::path(
    get,
    path = "/v2/models/{name}/ready",
    tag = "v2",
    params(ModelName),
    responses(ReadinessAnswers)
)]
async fn oip_model_ready(
    state: State<Service>,
    Path(path): Path<ModelName>,
) -> Result<Response, OipError> {
    model_ready_v2(state, &path.name, None).await
}

#[utoipa::path(
    get,
    path = "/v2/models/{name}/versions/{version}/ready",
    tag = "v2",
    params(ModelVersion),
    responses(ReadinessAnswers)
)]
async fn oip_version_ready(
    state: State<Service>,
    Path(path): Path<ModelVersion>,
) -> Result<Response, OipError> {
    model_ready_v2(state, &path.name, Some(&path.version)).await
}

async fn model_ready_v2(
    State(service): State<Service>,
    name: &str,
    version: Option<&str>,
) -> Result<Response, OipError> {
    let target = oip_target(&service, name, version)?;
    let ready = target.handle().is_alive();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((status, Json(ModelReadiness { name, ready })).into_response())
}

/// The OpenAPI 3.1 document of every route above, derived from the handlers and the types they
/// read and write (`GET /openapi.json`; committed as `openapi.json`).
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "lstm-forecast",
        description = "LSTM time-series forecasts: the forecast API (/v1), the Open Inference Protocol v2 (/v2) and the probes.",
        license(name = "Apache-2.0")
    ),
    paths(
        forecast, observations, model_metadata, healthz, readyz, metrics, openapi_json,
        oip_server_metadata, oip_live, oip_ready, oip_model_metadata, oip_version_metadata,
        oip_model_ready, oip_version_ready, oip_infer, oip_version_infer
    ),
    // The schemas that only `IntoResponses` answers name (those are not collected by themselves).
    components(schemas(crate::oip::ModelMetadataV2, crate::oip::TensorMetadata, ModelReadiness)),
    modifiers(&BearerToken),
    tags(
        (name = "v1", description = "The forecast API"),
        (name = "v2", description = "The Open Inference Protocol v2 (REST), with the binary tensor data extension"),
        (name = "probes", description = "Health checks and the Prometheus scrape")
    )
)]
struct ApiDoc;

/// The observations token as a security scheme.
struct BearerToken;

impl utoipa::Modify for BearerToken {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, as `GET /openapi.json` serves it.
pub fn openapi_document() -> String {
    use utoipa::OpenApi;
    let mut text = ApiDoc::openapi().to_pretty_json().expect("serialises");
    text.push('\n');
    text
}

#[utoipa::path(
    get, path = "/openapi.json", tag = "probes",
    responses((status = 200, description = "This document", content_type = "application/json", body = Object))
)]
async fn openapi_json() -> Response {
    static DOCUMENT: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let text = DOCUMENT.get_or_init(openapi_document).clone();
    ([(header::CONTENT_TYPE, "application/json")], text).into_response()
}

/// The failures both infer routes answer with, for their OpenAPI description (the handlers
/// answer through [`OipError`]).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
enum InferFailures {
    #[response(
        status = 400,
        description = "A request the client must fix; the message names the tensor or field"
    )]
    BadRequest(OipErrorBody),
    #[response(status = 404, description = "No such model or version")]
    NotFound(OipErrorBody),
    #[response(
        status = 408,
        description = "The body did not arrive within the body timeout"
    )]
    Timeout(OipErrorBody),
    #[response(status = 413, description = "The body is larger than the limit")]
    TooLarge(OipErrorBody),
    #[response(status = 415, description = "A compressed body")]
    Compressed(OipErrorBody),
    #[response(
        status = 422,
        description = "Interval levels the model is not calibrated for"
    )]
    Uncalibrated(OipErrorBody),
    #[response(
        status = 429,
        description = "The engine queue is full; retry after `Retry-After`"
    )]
    Overloaded(OipErrorBody),
    #[response(
        status = 500,
        description = "The server failed; the message carries the request id"
    )]
    Failed(OipErrorBody),
    #[response(
        status = 503,
        description = "Too many requests in flight, or the engine is unavailable"
    )]
    Busy(OipErrorBody),
}

/// The binary tensor extension's header: where the JSON header of a body ends.
const HEADER_LENGTH: &str = "inference-header-content-length";

#[utoipa::path(
    post, path = "/v2/models/{name}/infer", tag = "v2",
    params(ModelName, ("Inference-Header-Content-Length" = Option<usize>, Header, description = "With the binary tensor extension: the length of the JSON header at the start of the body")),
    request_body(description = "JSON; or, with the binary tensor extension, the JSON header then the inputs' bytes", content(
        (crate::oip::RawRequest = "application/json"),
        (Vec<u8> = "application/octet-stream")
    )),
    responses(
        (status = 200, description = "The outputs asked for: JSON; or, when outputs were asked for as binary, the JSON header (Inference-Header-Content-Length bytes) then the outputs' bytes", content(
            (crate::oip::ResponseHeader = "application/json"),
            (Vec<u8> = "application/octet-stream")
        )),
        InferFailures,
    )
)]
async fn oip_infer(
    state: State<Service>,
    limits: axum::Extension<ConnectionLimits>,
    budget: axum::Extension<BodyBudget>,
    Path(path): Path<ModelName>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OipError> {
    let address = (path.name.as_str(), None);
    infer_v2(state, limits, budget, address, headers, body).await
}

#[utoipa::path(
    post, path = "/v2/models/{name}/versions/{version}/infer", tag = "v2",
    params(ModelVersion, ("Inference-Header-Content-Length" = Option<usize>, Header, description = "With the binary tensor extension: the length of the JSON header at the start of the body")),
    request_body(description = "JSON; or, with the binary tensor extension, the JSON header then the inputs' bytes", content(
        (crate::oip::RawRequest = "application/json"),
        (Vec<u8> = "application/octet-stream")
    )),
    responses(
        (status = 200, description = "The outputs asked for: JSON; or, when outputs were asked for as binary, the JSON header (Inference-Header-Content-Length bytes) then the outputs' bytes", content(
            (crate::oip::ResponseHeader = "application/json"),
            (Vec<u8> = "application/octet-stream")
        )),
        InferFailures,
    )
)]
async fn oip_version_infer(
    state: State<Service>,
    limits: axum::Extension<ConnectionLimits>,
    budget: axum::Extension<BodyBudget>,
    Path(path): Path<ModelVersion>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OipError> {
    let address = (path.name.as_str(), Some(path.version.as_str()));
    infer_v2(state, limits, budget, address, headers, body).await
}

/// Infer on the model `name` (and `version`, when the route names one).
async fn infer_v2(
    State(service): State<Service>,
    axum::Extension(limits): axum::Extension<ConnectionLimits>,
    axum::Extension(budget): axum::Extension<BodyBudget>,
    (name, version): (&str, Option<&str>),
    headers: HeaderMap,
    body: Body,
) -> Result<Response, OipError> {
    let target = oip_target(&service, name, version)?;
    check_uncompressed(&headers)?;
    let header_length = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        ErrorCode::InvalidRequest.as_str(),
                        "Inference-Header-Content-Length must be a whole number of bytes",
                    )
                })?,
        ),
    };
    let limit = service.limits().max_body_bytes;
    let _claim = budget.claim(declared_length(&headers), limit, &limits)?;
    let body = read_body(body, limit, &limits).await?;
    let request_id = headers.get("x-request-id").and_then(|v| v.to_str().ok());
    let shape = target.request_shape(target.limits().max_series);
    let request = crate::oip::parse_infer(&body, header_length, &shape)?;
    let response = target
        .forecast_with_intervals(request.series.clone(), &request.levels, request_id)
        .await?;
    let answer = crate::oip::infer_answer(&request, &response);
    if answer.binary.is_empty() {
        return Ok((
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            answer.header,
        )
            .into_response());
    }
    let header_length = answer.header.len();
    let mut bytes = answer.header;
    bytes.extend_from_slice(&answer.binary);
    Ok((
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            ),
            (
                header::HeaderName::from_static(HEADER_LENGTH),
                HeaderValue::from(header_length),
            ),
        ],
        bytes,
    )
        .into_response())
}

/// Alive while the engine threads are: a process whose engine died answers HTTP but can never
/// forecast again, and only a restart helps.
#[utoipa::path(
    get, path = "/healthz", tag = "probes",
    responses(
        (status = 200, description = "The engine threads are alive", body = Health),
        (status = 503, description = "The engine stopped: restart the process", body = ErrorBody),
    )
)]
async fn healthz(State(service): State<Service>) -> Response {
    if service.handle().is_alive() {
        Json(Health { status: "ok" }).into_response()
    } else {
        engine_stopped().into_response()
    }
}

fn engine_stopped() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the inference engine has stopped",
    )
}

/// Ready when the engine threads are alive: the model was loaded and warmed up before the listener
/// opened, so there is no "loading" state to report.
#[utoipa::path(
    get, path = "/readyz", tag = "probes",
    responses(
        (status = 200, description = "Ready to forecast, with this model", body = Readiness),
        (status = 503, description = "The engine stopped", body = ErrorBody),
    )
)]
async fn readyz(State(service): State<Service>) -> Response {
    let handle = service.handle();
    if handle.is_alive() {
        let model = handle.model();
        let metadata = model.metadata();
        Json(Readiness {
            status: "ready",
            model: crate::forecast::ModelRef {
                name: metadata.name.clone(),
                version: metadata.version.clone(),
            },
        })
        .into_response()
    } else {
        engine_stopped().into_response()
    }
}

#[utoipa::path(
    get, path = "/metrics", tag = "probes",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String))
)]
async fn metrics(State(service): State<Service>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        service.prometheus().render(),
    )
        .into_response()
}

async fn not_found(method: Method, uri: Uri) -> Response {
    in_protocol_of(
        &uri,
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!(
                "no route for {method} {}; available: POST /v1/forecast, POST /v1/observations, GET /v1/model, GET /healthz, GET /readyz, GET /metrics, and the Open Inference Protocol v2 under /v2 (GET /v2, GET /v2/health/live|ready, GET /v2/models/NAME[/versions/VERSION][/ready], POST /v2/models/NAME[/versions/VERSION]/infer)",
                uri.path()
            ),
        ),
    )
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    in_protocol_of(
        &uri,
        ApiError::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("{method} is not allowed on {}", uri.path()),
        ),
    )
}

/// `error` as the protocol of `uri`'s path writes errors: OIP's under `/v2`, ours elsewhere.
fn in_protocol_of(uri: &Uri, error: ApiError) -> Response {
    if uri.path() == "/v2" || uri.path().starts_with("/v2/") {
        OipError(error).into_response()
    } else {
        error.into_response()
    }
}

/// Assigns a request id, logs and times every request, and counts errors by code.
async fn observe(State(service): State<Service>, mut request: Request, next: Next) -> Response {
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
    let model_version = service.model().metadata().version.clone();
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
    let error = response.extensions().get::<ErrorLog>();
    let traffic = traffic_of(&route);
    service.telemetry().record_request(&RequestOutcome {
        route: &route,
        traffic,
        status: status.as_u16(),
        error_code: error.map(|e| e.code),
        elapsed,
    });
    // A failure on our side can name buckets, keys and internals: the client gets a generic
    // message and the request id; the details go to the log line below. (501 "not configured" and
    // 503 "server_busy" are not failures but documented answers, and keep their messages.)
    let public_error = match error {
        Some(e)
            if status.is_server_error()
                && status != StatusCode::NOT_IMPLEMENTED
                && e.code != SERVER_BUSY =>
        {
            Some(e.code)
        }
        _ => None,
    };
    let error = error.cloned();
    let _entered = span.enter();
    if let Some(error) = error {
        // A shed request is the limit working, not a failure: one warning line, not an error.
        if error.code == SERVER_BUSY {
            tracing::warn!(status = status.as_u16(), code = error.code, message = %error.message, latency_ms = elapsed.as_secs_f64() * 1e3, "request shed");
        } else if status.is_server_error() {
            tracing::error!(status = status.as_u16(), code = error.code, message = %error.message, latency_ms = elapsed.as_secs_f64() * 1e3, "request failed");
        } else {
            tracing::info!(status = status.as_u16(), code = error.code, message = %error.message, latency_ms = elapsed.as_secs_f64() * 1e3, "request rejected");
        }
    } else if traffic != Traffic::Probe {
        tracing::info!(
            status = status.as_u16(),
            latency_ms = elapsed.as_secs_f64() * 1e3,
            "request served"
        );
    }
    if let Some(code) = public_error {
        let (mut parts, _) = response.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        let message = format!("the server could not answer this request; its log has the details under request id {request_id}");
        let body = if route.starts_with("/v2") {
            serde_json::to_vec(&OipErrorBody { error: message })
        } else {
            serde_json::to_vec(&ErrorBody {
                error: ErrorDetail {
                    code,
                    message: &message,
                    request_id: Some(&request_id),
                },
            })
        }
        .expect("serialises");
        response = Response::from_parts(parts, axum::body::Body::from(body));
    }
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

/// Equal without an early exit, so the time taken tells nothing about how much of a token matched.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Unique enough for correlating logs: wall-clock nanoseconds, the environment's id and a counter.
fn new_request_id() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    format!(
        "{nanos:016x}-{:05x}-{:06x}",
        crate::entropy::id() & 0xfffff,
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
    /// Ask the client to reconnect (`Connection: close`): the request's body was never read, so
    /// the connection cannot carry another request.
    close_connection: bool,
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
            close_connection: false,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<RequestError> for ApiError {
    fn from(e: RequestError) -> Self {
        // A well-formed request for intervals this model cannot give is not malformed.
        let status = match e.code {
            ErrorCode::UnsupportedInterval => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::BAD_REQUEST,
        };
        ApiError::new(status, e.code.as_str(), e.message)
    }
}

impl From<ServiceError> for ApiError {
    fn from(e: ServiceError) -> Self {
        match e {
            ServiceError::Request(e) => e.into(),
            ServiceError::Infer(e) => e.into(),
            ServiceError::NoStore => ApiError::new(
                StatusCode::NOT_IMPLEMENTED,
                "not_configured",
                "observations need a store: start the server with FORECAST_LOG_URI=s3://BUCKET/PREFIX",
            ),
            ServiceError::Store(e) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                format!("could not store the observations: {e}"),
            ),
        }
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

/// The body of every `/v1` (and probe) error.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct ErrorDetail<'a> {
    /// Machine-readable: `invalid_json`, `wrong_window_length`, `server_busy`, ...
    code: &'a str,
    /// Names the field or series at fault, or what to do.
    message: &'a str,
    /// On failures of the server's own: the id its log line carries.
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

/// The body of every `/v2` error, as the Open Inference Protocol writes it.
#[derive(serde::Serialize, utoipa::ToSchema)]
struct OipErrorBody {
    error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(ErrorBody {
            error: ErrorDetail {
                code: self.code,
                message: &self.message,
                request_id: None,
            },
        });
        let mut response = (self.status, body).into_response();
        if let Some(secs) = self.retry_after_secs {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        if self.close_connection {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response.extensions_mut().insert(ErrorLog {
            code: self.code,
            message: self.message,
        });
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn telemetry_counts_the_api_times_forecasts_and_skips_probes() {
        assert_eq!(traffic_of("/v1/forecast"), Traffic::Forecast);
        for route in ["/v1/observations", "/v1/model", "unmatched"] {
            assert_eq!(traffic_of(route), Traffic::Api, "{route}");
        }
        for route in ["/healthz", "/readyz", "/metrics"] {
            assert_eq!(traffic_of(route), Traffic::Probe, "{route}");
        }
    }
}
