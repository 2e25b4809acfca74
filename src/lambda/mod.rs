//! The AWS Lambda adapter: one function, routed by the shape of the event.
//!
//! - API Gateway REST (v1) and HTTP API (v2) proxy events go through the very same axum router as
//!   `serve`, so both transports answer identically (client errors are 4xx responses, never Lambda
//!   errors).
//! - EventBridge scheduled events and Step Functions items run the service's jobs
//!   ([`crate::service::batch`], [`crate::service::jobs::evaluate`]).
//! - CloudWatch alarm events (the EventBridge "Alarm State Change" and an alarm's direct Lambda
//!   action) go to the service's rollback decision ([`crate::service::rollback`]).
//!
//! This module only converts: events into the service's typed jobs, their answers into JSON and
//! their errors into [`InvocationError`]s whose `kind` is the Lambda `errorType`.
//!
//! The expensive state (model, SDK clients) is built once in [`init`], before the runtime loop,
//! by the same composition root as `serve` ([`crate::service::build`]).

pub mod events;
pub mod snapstart;

use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::cloudwatch_alarms::{
    CloudWatchAlarm, CloudWatchAlarmData, CloudWatchAlarmStateValue,
};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use lambda_runtime::LambdaEvent;
use serde_json::Value;
use tower::Service as _;

use crate::aws::AwsClients;
use crate::metrics::Metric;
use crate::model::engine::{configure_libtorch, Workload};
use crate::service::batch::{self, BatchConfig, ShardJob};
use crate::service::build::{
    compose, fetch_and_load, ComposeError, LoadError, LoadReport, ModelLocation, ServiceConfig,
};
use crate::service::follow::{follower_for, AliasFollower};
use crate::service::jobs::{self as service_jobs, EvaluationConfig};
use crate::service::rollback::{self, AlarmChange, AlarmStates, CloudWatchAlarms, RollbackPolicy};
use crate::service::Service;
use events::{describe_unknown, shape_of, typed, InvocationError, ScheduledAction, Shape};

/// Configuration, from the command line and environment (see `lstm-forecast lambda --help`).
#[derive(Debug, Clone)]
pub struct LambdaConfig {
    /// The model, and where versions downloaded from the registry are cached (`/tmp` is
    /// Lambda's only disk).
    pub model: ModelLocation,
    /// An emulator's endpoint for every AWS client (`--aws-endpoint-url`); `None` in AWS, or to let
    /// the SDK read `AWS_ENDPOINT_URL` and the per-service `AWS_ENDPOINT_URL_S3`,
    /// `AWS_ENDPOINT_URL_CLOUDWATCH` (see [`crate::aws::sdk_config`]).
    pub aws_endpoint_url: Option<String>,
    pub threads: Option<usize>,
    /// The service, as `serve` would build it (see [`ServiceConfig::one_at_a_time`]).
    pub service: ServiceConfig,
    /// Where batch jobs may read and write.
    pub batch: BatchConfig,
    pub evaluation: EvaluationConfig,
    /// Which alarms roll the model back, and when they may.
    pub rollback: RollbackPolicy,
    /// How often a warm instance re-reads the alias to pick up a promotion or a rollback.
    pub alias_check_interval: Duration,
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
        fetch_and_load(&config.model.uri, &config.model.cache_dir, &clients).await?;
    if snap_start {
        let bytes = directory_bytes(&config.model.cache_dir);
        if bytes > SNAPSTART_TMP_LIMIT_BYTES {
            return Err(InitError::SnapStartStorage {
                dir: config.model.cache_dir.display().to_string(),
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
    let service = compose(model, &config.service, &clients)?.service;
    let follower = follower_for(
        &config.model.uri,
        &clients,
        &config.model.cache_dir,
        &service,
        config.alias_check_interval,
    );
    // The live model is loaded; what the alias names for its shadow (a challenger, the previous
    // version on probation) is loaded now too, into a SnapStart snapshot as well.
    if let Some(follower) = &follower {
        follower.check_now().await;
    }
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
    let alarms = CloudWatchAlarms(clients.cloudwatch().clone());
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
        let request_id = context.request_id.clone();
        match shape_of(&payload) {
            Shape::Http => self.http(payload, context).await,
            Shape::ShardBatch => {
                let batch: events::ShardBatch = typed(payload, "Distributed Map item batch")?;
                let events::ShardBatchInput {
                    action: events::ShardAction::BatchForecastShard,
                    bucket,
                    output,
                    intervals,
                } = batch.batch_input;
                let keys = batch.items.into_iter().map(|item| item.key).collect();
                let job = ShardJob {
                    bucket,
                    keys,
                    output,
                    intervals,
                };
                self.forecast_shards(job, &request_id).await
            }
            Shape::ScheduledAction => {
                self.run_action(typed(payload, "scheduled action")?, &request_id)
                    .await
            }
            Shape::ScheduledEvent => {
                let event: EventBridgeEvent<Value> = typed(payload, "EventBridge scheduled event")?;
                if event.detail.get("action").is_none() {
                    return Err(InvocationError::InvalidEvent(
                        "scheduled event without an action: give the rule an input such as {\"action\":\"batch-forecast\",\"input\":\"s3://...\",\"output\":\"s3://...\"}".into(),
                    ));
                }
                self.run_action(typed(event.detail, "scheduled event detail")?, &request_id)
                    .await
            }
            Shape::AlarmStateChange => {
                let event: EventBridgeEvent<CloudWatchAlarmData> =
                    typed(payload, "CloudWatch Alarm State Change event")?;
                self.on_alarm(event.detail).await
            }
            Shape::AlarmAction => {
                let alarm: CloudWatchAlarm = typed(payload, "CloudWatch alarm action payload")?;
                self.on_alarm(alarm.alarm_data).await
            }
            Shape::Unknown => Err(InvocationError::UnrecognisedEvent(describe_unknown(
                &payload,
            ))),
        }
    }

    /// An API Gateway event through the same router as `serve`.
    async fn http(
        &self,
        mut payload: Value,
        context: lambda_runtime::Context,
    ) -> Result<Value, InvocationError> {
        // API Gateway REST puts the stage in the path (`/prod/v1/forecast`) unless told not to; the
        // routes are stage-free, exactly as `serve` exposes them. Without a stage, lambda_http
        // keeps the event's path as it is.
        if let Some(context) = payload
            .get_mut("requestContext")
            .and_then(Value::as_object_mut)
        {
            context.remove("stage");
        }
        let request: lambda_http::request::LambdaRequest =
            typed(payload, "API Gateway proxy event")?;
        let mut adapter = lambda_http::Adapter::from(self.router.clone());
        let response = adapter
            .call(LambdaEvent::new(request, context))
            .await
            .map_err(|e| InvocationError::Internal(format!("router failed: {e}")))?;
        answer(response)
    }

    async fn run_action(
        &self,
        action: ScheduledAction,
        request_id: &str,
    ) -> Result<Value, InvocationError> {
        let (service, batch) = (&self.service, &self.config.batch);
        match action {
            ScheduledAction::BatchForecast {
                input,
                output,
                intervals,
            } => {
                let s3 = self.clients.s3().current();
                let io = (input.as_str(), output.as_str());
                answer(
                    batch::batch_forecast(service, &s3, batch, io, &intervals, request_id).await?,
                )
            }
            ScheduledAction::BatchForecastShard {
                bucket,
                output,
                key,
                intervals,
                ..
            } => {
                let job = ShardJob {
                    bucket,
                    keys: vec![key],
                    output,
                    intervals,
                };
                self.forecast_shards(job, request_id).await
            }
            ScheduledAction::BatchManifest { input, output } => {
                let io = (input.as_str(), output.as_str());
                answer(batch::write_manifest(service, self.clients.s3(), batch, io).await?)
            }
            ScheduledAction::Evaluate {} => answer(
                service_jobs::evaluate(service, self.follower.as_deref(), &self.config.evaluation)
                    .await?,
            ),
            ScheduledAction::EvaluatePlan { partitions } => answer(
                service_jobs::plan_evaluation(service, &self.config.evaluation, partitions).await?,
            ),
            ScheduledAction::EvaluatePartition { run, first, end } => {
                answer(service_jobs::evaluate_partition(service, run, first, end).await?)
            }
            ScheduledAction::EvaluateReduce { run } => {
                let follower = self.follower.as_deref();
                let config = &self.config.evaluation;
                answer(service_jobs::reduce_evaluation(service, follower, config, run).await?)
            }
        }
    }

    async fn forecast_shards(
        &self,
        job: ShardJob,
        request_id: &str,
    ) -> Result<Value, InvocationError> {
        let s3 = self.clients.s3();
        answer(
            batch::forecast_shards(&self.service, s3, &self.config.batch, job, request_id).await?,
        )
    }

    async fn on_alarm(&self, alarm: CloudWatchAlarmData) -> Result<Value, InvocationError> {
        let Some(state) = alarm.state else {
            return Err(InvocationError::InvalidEvent(format!(
                "alarm event for {} carries no state",
                alarm.alarm_name
            )));
        };
        let change = AlarmChange {
            alarm: alarm.alarm_name,
            state: state_name(&state.value),
            changed_at: state.timestamp,
        };
        let decision = rollback::on_alarm(
            &self.service,
            self.follower.as_deref(),
            self.alarms.as_ref(),
            &self.config.rollback,
            &change,
        )
        .await?;
        answer(decision)
    }
}

/// The state as CloudWatch spells it (`ALARM`, `OK`, `INSUFFICIENT_DATA`).
fn state_name(value: &CloudWatchAlarmStateValue) -> String {
    match serde_json::to_value(value) {
        Ok(Value::String(name)) => name,
        _ => format!("{value:?}"),
    }
}

/// A job's typed answer as the invocation's JSON result.
fn answer(result: impl serde::Serialize) -> Result<Value, InvocationError> {
    serde_json::to_value(result).map_err(|e| InvocationError::Internal(e.to_string()))
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
