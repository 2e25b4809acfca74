//! The AWS Lambda adapter: one function, routed by the shape of the event.
//!
//! - API Gateway REST (v1) and HTTP API (v2) proxy events go through the very same axum router as
//!   `serve`, so both transports answer identically (client errors are 4xx responses, never Lambda
//!   errors).
//! - EventBridge scheduled events run the jobs in [`jobs`]: `batch-forecast` and `evaluate`.
//! - CloudWatch alarm events (the EventBridge "Alarm State Change" and an alarm's direct Lambda
//!   action) roll the model alias back when an alarm in `ROLLBACK_ALARMS` enters ALARM
//!   ([`rollback`]).
//!
//! The expensive state (model, SDK clients) is built once in [`init`], before the runtime loop,
//! by the same composition root as `serve` ([`crate::service::build`]).

pub mod events;
pub mod jobs;
pub mod rollback;
pub mod snapstart;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::cloudwatch_alarms::{CloudWatchAlarm, CloudWatchAlarmData};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tower::Service as _;

use crate::aws::AwsClients;
use crate::infer::Batching;
use crate::metrics::Metric;
use crate::model::engine::{configure_libtorch, Workload};
use crate::monitor::store::LogDelivery;
use crate::registry::Registry;
use crate::service::build::{
    compose, fetch_and_load, ComposeError, LoadError, LoadReport, MetricsConfig, ServiceConfig,
};
use crate::service::follow::AliasFollower;
use crate::service::{Limits, Service};
use crate::source::s3::S3ModelSource;
use crate::source::ModelUri;
use events::{describe_unknown, shape_of, typed, InvocationError, ScheduledAction, Shape};
pub use rollback::{AlarmStates, RollbackPolicy};

/// Configuration, from the command line and environment (see `lstm-forecast lambda --help`).
#[derive(Debug, Clone)]
pub struct LambdaConfig {
    pub model_uri: ModelUri,
    /// Where versions downloaded from the registry are cached (`/tmp` is Lambda's only disk).
    pub model_cache_dir: PathBuf,
    /// An emulator's endpoint for every AWS client (`--aws-endpoint-url`); `None` in AWS, or to let
    /// the SDK read `AWS_ENDPOINT_URL` and the per-service `AWS_ENDPOINT_URL_S3`,
    /// `AWS_ENDPOINT_URL_CLOUDWATCH` (see [`crate::aws::sdk_config`]).
    pub aws_endpoint_url: Option<String>,
    /// Where batch jobs may read and write (`s3://BUCKET/PREFIX/`); `None` refuses batch jobs.
    pub batch_input_prefix: Option<String>,
    pub batch_output_prefix: Option<String>,
    /// Bytes per uploaded part of a batch shard's output (S3's minimum is 5 MiB).
    pub batch_part_bytes: usize,
    /// Which alarms roll the model back, and when they may.
    pub rollback: RollbackPolicy,
    pub threads: Option<usize>,
    pub limits: Limits,
    /// How often a warm instance re-reads the alias to pick up a promotion or a rollback.
    pub alias_check_interval: Duration,
    pub metrics: MetricsConfig,
    /// `s3://BUCKET/PREFIX` of the forecast log and actuals (the accuracy loop).
    pub forecast_log_uri: Option<String>,
    /// How logged forecasts leave the function (log lines by default: no S3 call per invocation).
    pub forecast_log_delivery: LogDelivery,
    pub backtest_rate: f64,
    /// How long after a forecast's last target time its actuals may still arrive.
    pub evaluation_grace: Duration,
    /// How `evaluate` recalibrates the intervals from the latest scored errors.
    pub recalibration: crate::monitor::evaluate::Recalibration,
    /// Seed of the backtest sampling (`None`: drawn from the OS; a SnapStart restore always draws
    /// a new one).
    pub sampling_seed: Option<u64>,
}

/// Why the function could not start. Lambda reports it as an init error.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error(transparent)]
    Model(#[from] LoadError),
    #[error(transparent)]
    Config(#[from] ComposeError),
    #[error("the model cache {dir} holds {mib} MiB; SnapStart snapshots /tmp and allows at most {limit} MiB: point LSTM_FORECAST_MODEL_CACHE at an emptier directory, use a smaller model, or turn SnapStart off", limit = SNAPSTART_TMP_LIMIT_BYTES >> 20)]
    SnapStartStorage { dir: String, mib: u64 },
}

/// SnapStart's limit on `/tmp` (AWS: "SnapStart ... ephemeral storage up to 512 MB").
pub const SNAPSTART_TMP_LIMIT_BYTES: u64 = 512 << 20;

impl InitError {
    /// The `errorType` Lambda shows for this failure.
    pub fn kind(&self) -> &'static str {
        match self {
            InitError::Model(LoadError::Fetch { .. }) => "ModelFetchFailed",
            InitError::Model(_) => "ModelLoadFailed",
            InitError::Config(_) | InitError::SnapStartStorage { .. } => "InvalidConfiguration",
        }
    }
}

/// The function's state between invocations.
pub struct LambdaApp {
    service: Service,
    /// Where alarm events are checked before they may roll anything back.
    alarms: Option<Arc<dyn AlarmStates>>,
    router: axum::Router,
    /// Set when the model is the registry's `live` alias.
    follower: Option<Arc<AliasFollower>>,
    /// Every AWS client of the function, rebuilt in place after a SnapStart restore.
    clients: AwsClients,
    config: LambdaConfig,
}

/// Fetches, checks, loads and warms up the model, and builds the clients.
pub async fn init(config: LambdaConfig) -> Result<(LambdaApp, LoadReport), InitError> {
    let threads = configure_libtorch(config.threads, Workload::OneAtATime);
    let snap_start = snapstart::is_snap_start();
    let clients = AwsClients::load(config.aws_endpoint_url.as_deref()).await;
    let (model, report) =
        fetch_and_load(&config.model_uri, &config.model_cache_dir, &clients).await?;
    if snap_start {
        let bytes = directory_bytes(&config.model_cache_dir);
        if bytes > SNAPSTART_TMP_LIMIT_BYTES {
            return Err(InitError::SnapStartStorage {
                dir: config.model_cache_dir.display().to_string(),
                mib: bytes >> 20,
            });
        }
    }
    let metadata = model.metadata().clone();
    // Where the load's time went is in fetch_and_load's own line; this one closes init.
    tracing::info!(
        model = %metadata.name,
        model_version = %metadata.version,
        threads,
        snap_start,
        init_ms = ms(report.total),
        "init complete"
    );
    // One invocation at a time per sandbox: one engine thread, using every CPU for its forward.
    let service_config = ServiceConfig {
        limits: config.limits,
        max_queue: 64,
        batching: Batching::default(),
        engine_workers: 1,
        // The one engine thread already uses every CPU.
        express_threads: None,
        metrics: config.metrics.clone(),
        forecast_log_uri: config.forecast_log_uri.clone(),
        forecast_log_delivery: config.forecast_log_delivery,
        backtest_rate: config.backtest_rate,
        sampling_seed: config.sampling_seed,
    };
    let service = compose(model, &service_config, &clients)?.service;
    let follower = match &config.model_uri {
        ModelUri::S3(model) if model.version.is_none() => Some(Arc::new(AliasFollower::new(
            S3ModelSource::new(
                Registry::new(clients.s3().clone(), model.clone()),
                config.model_cache_dir.clone(),
            ),
            service.clone(),
            config.alias_check_interval,
        ))),
        _ => None,
    };
    let telemetry = service.telemetry();
    // A SnapStart init runs when the version is published, not when a user waits: restored
    // environments publish RestoreDuration instead (see [`snapstart`]).
    if !snap_start {
        telemetry.record(Metric::ColdStartDuration, ms(report.total));
    }
    telemetry.record(Metric::ModelLoadDuration, ms(report.load + report.warm_up));
    // Memory once, after init: sampling it on every invocation would cost the answer time.
    telemetry.record_process_memory();
    crate::service::build::flush(&service).await;
    let alarms = rollback::CloudWatchAlarms(clients.cloudwatch().clone());
    Ok((
        LambdaApp::new(service, follower, clients, config).with_alarm_states(Arc::new(alarms)),
        report,
    ))
}

/// Bytes of the files under `dir` (SnapStart snapshots `/tmp`, where the model cache lives).
fn directory_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => directory_bytes(&entry.path()),
            Ok(_) => entry.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => 0,
        })
        .sum()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Lambda already gave the invocation an id: use it as the request id in logs and headers.
async fn lambda_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    let id = request
        .extensions()
        .get::<lambda_runtime::Context>()
        .map(|c| c.request_id.clone());
    if let Some(value) = id.and_then(|id| axum::http::HeaderValue::from_str(&id).ok()) {
        request.headers_mut().insert("x-request-id", value);
    }
    request
}

impl LambdaApp {
    /// The function around a composed service ([`init`] composes one from the configuration).
    pub fn new(
        service: Service,
        follower: Option<Arc<AliasFollower>>,
        clients: AwsClients,
        config: LambdaConfig,
    ) -> Self {
        let router = crate::http::router(service.clone())
            .layer(axum::middleware::map_request(lambda_request_id));
        LambdaApp {
            service,
            alarms: None,
            router,
            follower,
            clients,
            config,
        }
    }

    /// Verifies alarm events with `alarms` (CloudWatch in AWS); without, no alarm may act.
    pub fn with_alarm_states(mut self, alarms: Arc<dyn AlarmStates>) -> Self {
        self.alarms = Some(alarms);
        self
    }

    pub fn service(&self) -> &Service {
        &self.service
    }

    /// Handles one invocation.
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, InvocationError> {
        let (payload, context) = event.into_parts();
        let model_version = self.service.model().metadata().version.clone();
        let span = tracing::info_span!("invocation", request_id = %context.request_id, model_version = %model_version);
        use tracing::Instrument;
        async move {
            if let Some(follower) = &self.follower {
                follower.check_if_due().await;
            }
            self.service
                .refresh_calibration_if_due(self.config.alias_check_interval)
                .await;
            let result = self.dispatch(payload, context).await;
            self.service.record_cpu_share();
            // Lambda may freeze the sandbox right after the answer: ship metrics and logs now.
            crate::service::build::flush(&self.service).await;
            result
        }
        .instrument(span)
        .await
    }

    async fn dispatch(
        &self,
        payload: Value,
        context: lambda_runtime::Context,
    ) -> Result<Value, InvocationError> {
        match shape_of(&payload) {
            Shape::Http => {
                let request: lambda_http::request::LambdaRequest =
                    typed(payload, "API Gateway proxy event")?;
                let mut adapter = lambda_http::Adapter::from(self.router.clone());
                let response = adapter
                    .call(LambdaEvent::new(request, context))
                    .await
                    .map_err(|e| InvocationError::new("Internal", format!("router failed: {e}")))?;
                serde_json::to_value(response)
                    .map_err(|e| InvocationError::new("Internal", e.to_string()))
            }
            Shape::ShardBatch => {
                let batch: events::ShardBatch = typed(payload, "Distributed Map item batch")?;
                let events::ShardBatchInput {
                    action: events::ShardAction::BatchForecastShard,
                    bucket,
                    output,
                    intervals,
                } = batch.batch_input;
                let keys = batch.items.into_iter().map(|item| item.key).collect();
                let job = jobs::ShardJob {
                    bucket,
                    keys,
                    output,
                    intervals,
                };
                self.forecast_shards(job, &context.request_id).await
            }
            Shape::ScheduledAction => {
                self.run_action(typed(payload, "scheduled action")?, &context.request_id)
                    .await
            }
            Shape::ScheduledEvent => {
                let event: EventBridgeEvent<Value> = typed(payload, "EventBridge scheduled event")?;
                if event.detail.get("action").is_none() {
                    return Err(InvocationError::new(
                        "InvalidEvent",
                        "scheduled event without an action: give the rule an input such as {\"action\":\"batch-forecast\",\"input\":\"s3://...\",\"output\":\"s3://...\"}",
                    ));
                }
                self.run_action(
                    typed(event.detail, "scheduled event detail")?,
                    &context.request_id,
                )
                .await
            }
            Shape::AlarmStateChange => {
                let event: EventBridgeEvent<CloudWatchAlarmData> =
                    typed(payload, "CloudWatch Alarm State Change event")?;
                let state = event
                    .detail
                    .state
                    .as_ref()
                    .map(|s| (s.value.clone(), s.timestamp));
                self.on_alarm(&event.detail.alarm_name, state).await
            }
            Shape::AlarmAction => {
                let alarm: CloudWatchAlarm = typed(payload, "CloudWatch alarm action payload")?;
                let state = alarm
                    .alarm_data
                    .state
                    .as_ref()
                    .map(|s| (s.value.clone(), s.timestamp));
                self.on_alarm(&alarm.alarm_data.alarm_name, state).await
            }
            Shape::Unknown => Err(InvocationError::new(
                "UnrecognisedEvent",
                describe_unknown(&payload),
            )),
        }
    }

    async fn run_action(
        &self,
        action: ScheduledAction,
        request_id: &str,
    ) -> Result<Value, InvocationError> {
        match action {
            ScheduledAction::BatchForecast {
                input,
                output,
                intervals,
            } => {
                jobs::confine(&input, self.config.batch_input_prefix.as_deref(), "input")?;
                jobs::confine(
                    &output,
                    self.config.batch_output_prefix.as_deref(),
                    "output",
                )?;
                let s3 = self.clients.s3().current();
                jobs::batch_forecast(&self.service, &s3, &input, &output, &intervals, request_id)
                    .await
            }
            ScheduledAction::BatchForecastShard {
                bucket,
                output,
                key,
                intervals,
                ..
            } => {
                let job = jobs::ShardJob {
                    bucket,
                    keys: vec![key],
                    output,
                    intervals,
                };
                self.forecast_shards(job, request_id).await
            }
            ScheduledAction::BatchManifest { input, output } => {
                jobs::write_manifest(
                    &self.service,
                    self.clients.s3(),
                    &input,
                    &output,
                    self.shard_limits(),
                )
                .await
            }
            ScheduledAction::Evaluate {} => {
                jobs::evaluate(
                    &self.service,
                    self.config.evaluation_grace,
                    &self.config.recalibration,
                )
                .await
            }
        }
    }

    async fn forecast_shards(
        &self,
        job: jobs::ShardJob,
        request_id: &str,
    ) -> Result<Value, InvocationError> {
        jobs::forecast_shards(
            &self.service,
            self.clients.s3(),
            job,
            self.shard_limits(),
            request_id,
        )
        .await
    }

    fn shard_limits(&self) -> jobs::ShardLimits<'_> {
        jobs::ShardLimits {
            input_prefix: self.config.batch_input_prefix.as_deref(),
            output_prefix: self.config.batch_output_prefix.as_deref(),
            stream: crate::service::batch::StreamOptions {
                chunk_series: self.service.limits().max_series,
                part_bytes: self.config.batch_part_bytes,
            },
        }
    }

    async fn on_alarm(
        &self,
        alarm: &str,
        state: Option<(
            aws_lambda_events::cloudwatch_alarms::CloudWatchAlarmStateValue,
            chrono::DateTime<chrono::Utc>,
        )>,
    ) -> Result<Value, InvocationError> {
        rollback::on_alarm(
            &self.service,
            self.follower.as_deref(),
            self.alarms.as_ref(),
            &self.config.rollback,
            alarm,
            state,
        )
        .await
    }
}

/// Runs the Lambda runtime loop until the process is stopped. Under SnapStart the runtime first
/// runs the snapshot hooks ([`snapstart`]) and waits for the restore.
pub async fn run(app: LambdaApp) -> Result<(), lambda_runtime::Error> {
    let app = Arc::new(app);
    let hooks = snapstart::resources(&app.service, &app.clients, app.follower.clone());
    let handler = lambda_runtime::service_fn(move |event: LambdaEvent<Value>| {
        let app = Arc::clone(&app);
        async move { app.handle(event).await }
    });
    let runtime = hooks.into_iter().fold(
        lambda_runtime::Runtime::new(handler).layer(lambda_runtime::layers::TracingLayer::new()),
        |runtime, hook| runtime.register_snapstart_resource(hook),
    );
    runtime.run().await
}

/// Why the init error could not be reported (the caller exits non-zero either way).
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("AWS_LAMBDA_RUNTIME_API is not set: not running under Lambda")]
    NotInLambda,
    #[error("AWS_LAMBDA_RUNTIME_API `{0}` is not a valid address")]
    InvalidEndpoint(String),
    #[error("the Runtime API refused the report: {0}")]
    Rejected(String),
}

/// Tells the Lambda Runtime API that init failed, so the platform reports an init error with our
/// message instead of a bare exit status.
pub async fn report_init_error(error: &InitError) -> Result<(), ReportError> {
    use lambda_runtime_api_client::{build_request, PooledClient};
    let api = std::env::var("AWS_LAMBDA_RUNTIME_API").map_err(|_| ReportError::NotInLambda)?;
    let endpoint: axum::http::Uri = api
        .parse()
        .map_err(|_| ReportError::InvalidEndpoint(api.clone()))?;
    let client = PooledClient::builder().with_endpoint(endpoint).build();
    let diagnostic = lambda_runtime::Diagnostic {
        error_type: error.kind().to_string(),
        error_message: error.to_string(),
    };
    let body = serde_json::to_vec(&diagnostic).expect("a diagnostic serialises");
    let request = build_request()
        .method(axum::http::Method::POST)
        .uri("/2018-06-01/runtime/init/error")
        .header("lambda-runtime-function-error-type", error.kind())
        .header("content-type", "application/json")
        .body(lambda_runtime_api_client::body::Body::from(body))
        .map_err(|e| ReportError::Rejected(e.to_string()))?;
    let response = client
        .call(request)
        .await
        .map_err(|e| ReportError::Rejected(e.to_string()))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(ReportError::Rejected(format!(
            "status {}",
            response.status()
        )))
    }
}
