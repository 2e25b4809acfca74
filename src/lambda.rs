//! The AWS Lambda adapter: one function, routed by the shape of the event.
//!
//! - API Gateway REST (v1) and HTTP API (v2) proxy events go through the very same axum router as
//!   `serve`, so both transports answer identically (client errors are 4xx responses, never Lambda
//!   errors).
//! - EventBridge scheduled events run batch jobs (`batch-forecast`; `evaluate` is reserved).
//! - CloudWatch alarm events (the EventBridge "Alarm State Change" and an alarm's direct Lambda
//!   action) roll the model alias back when an alarm in `ROLLBACK_ALARMS` enters ALARM.
//!
//! The expensive state (model, SDK clients) is built once in [`init`], before the runtime loop.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_lambda_events::cloudwatch_alarms::{
    CloudWatchAlarm, CloudWatchAlarmData, CloudWatchAlarmStateValue,
};
use aws_lambda_events::eventbridge::EventBridgeEvent;
use chrono::{DateTime, Utc};
use lambda_runtime::{Diagnostic, LambdaEvent};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::sync::Mutex;
use tower::Service;

use crate::forecast::{ForecastResponse, RequestShape};
use crate::http::{AppState, Limits, Monitoring};
use crate::infer::InferenceHandle;
use crate::input::{parse_input, InputFormat};
use crate::metrics::{Metric, ServerMetrics, SinkKind, Telemetry};
use crate::model::{Model, ModelArtifacts, ModelError};
use crate::monitor::store::{AccuracyStore, ForecastLog};
use crate::registry::{Registry, RegistryError, RollbackOutcome, S3ModelSource};
use crate::source::{BundledSource, DirectorySource, ModelSource, ModelUri};

/// Configuration, from the environment (see `lstm-forecast lambda --help`).
#[derive(Debug, Clone)]
pub struct LambdaConfig {
    pub model_uri: ModelUri,
    /// Alarm names whose ALARM state rolls the model back.
    pub rollback_alarms: Vec<String>,
    pub threads: Option<usize>,
    pub limits: Limits,
    /// How often a warm instance re-reads the alias to pick up a promotion or a rollback.
    pub alias_check_interval: Duration,
    pub metrics_namespace: String,
    /// Where metrics go; EMF (log lines, no API call) by default in Lambda.
    pub metrics_sinks: Vec<SinkKind>,
    /// Optional `Stage` dimension.
    pub stage: Option<String>,
    /// `s3://BUCKET/PREFIX` of the forecast log and actuals (the accuracy loop).
    pub forecast_log_uri: Option<String>,
    pub backtest_rate: f64,
    /// How long after a forecast's last target time its actuals may still arrive.
    pub evaluation_grace: Duration,
}

/// Why the function could not start. Lambda reports it as an init error.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("fetching the model from {source_uri}: {cause}")]
    Fetch { source_uri: String, cause: String },
    #[error("loading the model from {source_uri}: {cause}")]
    Load {
        source_uri: String,
        cause: ModelError,
    },
    #[error("FORECAST_LOG_URI: {0}")]
    Config(String),
}

/// Where init time went; logged as one structured line.
#[derive(Debug, Clone)]
pub struct InitTimings {
    pub fetch: Duration,
    pub load: Duration,
    pub warm_up: Duration,
    pub total: Duration,
    pub from_cache: bool,
}

/// The function's state between invocations.
pub struct LambdaApp {
    state: AppState,
    router: axum::Router,
    registry: Option<Registry>,
    s3: aws_sdk_s3::Client,
    config: LambdaConfig,
    /// When the alias was last read; a mutex so concurrent invocations do not all re-read it.
    last_alias_check: Mutex<Instant>,
}

/// Fetches, checks, loads and warms up the model, and builds the clients.
pub async fn init(config: LambdaConfig) -> Result<(LambdaApp, InitTimings), InitError> {
    let started = Instant::now();
    let threads = crate::model::engine::configure_libtorch(
        config.threads,
        crate::model::engine::Workload::OneAtATime,
    );
    let sdk_config = crate::aws::sdk_config().await;
    let s3 = crate::aws::s3_client(&sdk_config);
    let (registry, source_uri, fetched) = match &config.model_uri {
        ModelUri::S3(model) => {
            let registry = Registry::new(s3.clone(), model.clone());
            let source = S3ModelSource::new(registry.clone(), crate::registry::default_cache_dir());
            let (artifacts, report) =
                source.fetch_current().await.map_err(|e| InitError::Fetch {
                    source_uri: model.to_string(),
                    cause: e.to_string(),
                })?;
            (
                Some(registry),
                model.to_string(),
                (artifacts, report.from_cache),
            )
        }
        ModelUri::Bundled => (
            None,
            "bundled".into(),
            (fetch_local(&BundledSource).await?, true),
        ),
        ModelUri::Directory(dir) => {
            let source = DirectorySource::new(dir);
            (None, source.describe(), (fetch_local(&source).await?, true))
        }
    };
    let fetch = started.elapsed();
    let (artifacts, from_cache) = fetched;
    let (model, load, warm_up) = tokio::task::spawn_blocking(move || load_timed(&artifacts))
        .await
        .expect("model loading does not panic")
        .map_err(|cause| InitError::Load {
            source_uri: source_uri.clone(),
            cause,
        })?;
    let timings = InitTimings {
        fetch,
        load,
        warm_up,
        total: started.elapsed(),
        from_cache,
    };
    let metadata = model.metadata().clone();
    tracing::info!(
        model = %metadata.name,
        model_version = %metadata.version,
        source = %source_uri,
        threads,
        from_cache,
        fetch_ms = ms(timings.fetch),
        load_ms = ms(timings.load),
        warm_up_ms = ms(timings.warm_up),
        init_ms = ms(timings.total),
        "init complete"
    );
    let (handle, _engine_thread) = InferenceHandle::spawn(model, 64);
    let server_metrics = ServerMetrics::new();
    let (sinks, _) = crate::metrics::build_sinks(
        &config.metrics_sinks,
        &config.metrics_namespace,
        &server_metrics,
        &sdk_config,
    );
    let telemetry = Telemetry::new(
        sinks,
        &metadata.name,
        &metadata.version,
        config.stage.as_deref(),
    );
    let forecast_log = match &config.forecast_log_uri {
        Some(uri) => Some(Arc::new(ForecastLog::new(
            AccuracyStore::new(s3.clone(), uri).map_err(|e| InitError::Config(e.to_string()))?,
        ))),
        None => None,
    };
    let monitoring = Monitoring {
        telemetry: telemetry.clone(),
        forecast_log,
        backtest_rate: config.backtest_rate,
    };
    let state = AppState::with_monitoring(handle, server_metrics, config.limits, monitoring);
    let router =
        crate::http::router(state.clone()).layer(axum::middleware::map_request(lambda_request_id));
    telemetry.record(Metric::ColdStartDuration, ms(timings.total));
    telemetry.record(
        Metric::ModelLoadDuration,
        ms(timings.load + timings.warm_up),
    );
    telemetry.record_process_memory();
    telemetry.flush().await;
    Ok((
        LambdaApp {
            state,
            router,
            registry,
            s3,
            config,
            last_alias_check: Mutex::new(Instant::now()),
        },
        timings,
    ))
}

async fn fetch_local(source: &dyn ModelSource) -> Result<ModelArtifacts, InitError> {
    source.fetch().await.map_err(|e| InitError::Fetch {
        source_uri: source.describe(),
        cause: e.to_string(),
    })
}

/// Loads without and then with the warm-up, so init can report both.
fn load_timed(artifacts: &ModelArtifacts) -> Result<(Model, Duration, Duration), ModelError> {
    let started = Instant::now();
    let model = Model::load_unwarmed(artifacts)?;
    let load = started.elapsed();
    let started = Instant::now();
    model.warm_up()?;
    Ok((model, load, started.elapsed()))
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

/// A failed invocation; `kind` becomes the Lambda `errorType`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct InvocationError {
    pub kind: &'static str,
    pub message: String,
}

impl InvocationError {
    fn new(kind: &'static str, message: impl Into<String>) -> Self {
        InvocationError {
            kind,
            message: message.into(),
        }
    }
}

impl From<InvocationError> for Diagnostic {
    fn from(e: InvocationError) -> Self {
        Diagnostic {
            error_type: e.kind.to_string(),
            error_message: e.message,
        }
    }
}

/// The scheduled jobs, from an EventBridge rule's input.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
enum ScheduledAction {
    /// Reads series from `input` (CSV or JSON Lines on S3) and writes forecasts to `output`.
    BatchForecast { input: String, output: String },
    /// Accuracy evaluation; arrives with the monitoring work.
    Evaluate {},
}

/// What kind of event arrived, decided from its shape.
enum Shape {
    Http,
    ScheduledAction,
    ScheduledEvent,
    AlarmStateChange,
    AlarmAction,
    Unknown,
}

fn shape_of(event: &Value) -> Shape {
    let has = |key: &str| event.get(key).is_some();
    let text = |key: &str| event.get(key).and_then(Value::as_str);
    if has("requestContext") && (has("httpMethod") || has("routeKey")) {
        Shape::Http
    } else if text("source") == Some("aws.cloudwatch")
        && text("detail-type") == Some("CloudWatch Alarm State Change")
    {
        Shape::AlarmStateChange
    } else if text("source") == Some("aws.cloudwatch") && has("alarmData") {
        Shape::AlarmAction
    } else if text("source") == Some("aws.events") && text("detail-type") == Some("Scheduled Event")
    {
        Shape::ScheduledEvent
    } else if has("action") {
        // An EventBridge rule with a constant input replaces the event with that input entirely.
        Shape::ScheduledAction
    } else {
        Shape::Unknown
    }
}

fn describe_unknown(event: &Value) -> String {
    match event {
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).take(12).collect();
            format!(
                "unrecognised event with keys {keys:?}; expected an API Gateway proxy event, an EventBridge scheduled event or {{\"action\": ...}}, or a CloudWatch alarm event"
            )
        }
        other => format!(
            "unrecognised event: {} instead of a JSON object",
            crate::forecast::kind_of(other)
        ),
    }
}

fn typed<T: serde::de::DeserializeOwned>(event: Value, what: &str) -> Result<T, InvocationError> {
    serde_json::from_value(event)
        .map_err(|e| InvocationError::new("InvalidEvent", format!("malformed {what}: {e}")))
}

impl LambdaApp {
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Handles one invocation.
    pub async fn handle(&self, event: LambdaEvent<Value>) -> Result<Value, InvocationError> {
        let (payload, context) = event.into_parts();
        let model_version = self.state.handle().model().metadata().version.clone();
        let span = tracing::info_span!("invocation", request_id = %context.request_id, model_version = %model_version);
        use tracing::Instrument;
        async move {
            self.pick_up_alias_changes().await;
            let result = self.dispatch(payload, context).await;
            // Lambda may freeze the sandbox right after the answer: ship metrics and logs now.
            if let Some(log) = self.state.forecast_log() {
                log.flush().await;
            }
            self.state.telemetry().flush().await;
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
        {
            match shape_of(&payload) {
                Shape::Http => {
                    let request: lambda_http::request::LambdaRequest =
                        typed(payload, "API Gateway proxy event")?;
                    let mut adapter = lambda_http::Adapter::from(self.router.clone());
                    let response = adapter
                        .call(LambdaEvent::new(request, context))
                        .await
                        .map_err(|e| {
                            InvocationError::new("Internal", format!("router failed: {e}"))
                        })?;
                    serde_json::to_value(response)
                        .map_err(|e| InvocationError::new("Internal", e.to_string()))
                }
                Shape::ScheduledAction => {
                    self.run_action(typed(payload, "scheduled action")?).await
                }
                Shape::ScheduledEvent => {
                    let event: EventBridgeEvent<Value> =
                        typed(payload, "EventBridge scheduled event")?;
                    if event.detail.get("action").is_none() {
                        return Err(InvocationError::new(
                            "InvalidEvent",
                            "scheduled event without an action: give the rule an input such as {\"action\":\"batch-forecast\",\"input\":\"s3://...\",\"output\":\"s3://...\"}",
                        ));
                    }
                    self.run_action(typed(event.detail, "scheduled event detail")?)
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
    }

    async fn run_action(&self, action: ScheduledAction) -> Result<Value, InvocationError> {
        match action {
            ScheduledAction::BatchForecast { input, output } => {
                self.batch_forecast(&input, &output).await
            }
            ScheduledAction::Evaluate {} => {
                let Some(log) = self.state.forecast_log() else {
                    return Err(InvocationError::new(
                        "NotConfigured",
                        "accuracy evaluation is not configured: set FORECAST_LOG_URI=s3://BUCKET/PREFIX (where forecasts and actuals are stored)",
                    ));
                };
                let grace = chrono::Duration::from_std(self.config.evaluation_grace)
                    .unwrap_or_else(|_| chrono::Duration::hours(1));
                let run = crate::monitor::evaluate::run_evaluation(
                    log.store(),
                    self.state.telemetry(),
                    Utc::now(),
                    grace,
                )
                .await
                .map_err(|e| InvocationError::new("EvaluationFailed", e.to_string()))?;
                Ok(
                    json!({"action": "evaluate", "report": run.report, "forecasts_scored": run.evaluation.forecasts_scored,
                          "pairs": run.evaluation.pairs, "missing_actuals": run.evaluation.missing_actuals,
                          "scores": run.evaluation.by_version}),
                )
            }
        }
    }

    async fn batch_forecast(&self, input: &str, output: &str) -> Result<Value, InvocationError> {
        let started = Instant::now();
        let bad = |m: String| InvocationError::new("InvalidInput", m);
        let (in_bucket, in_key) = crate::aws::parse_s3_url(input)
            .ok_or_else(|| bad(format!("input `{input}` is not an s3:// URL")))?;
        let (out_bucket, out_key) = crate::aws::parse_s3_url(output)
            .ok_or_else(|| bad(format!("output `{output}` is not an s3:// URL")))?;
        let object = self
            .s3
            .get_object()
            .bucket(&in_bucket)
            .key(&in_key)
            .send()
            .await
            .map_err(|e| {
                InvocationError::new(
                    "S3",
                    format!(
                        "reading {input}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    ),
                )
            })?;
        let content = object
            .body
            .collect()
            .await
            .map_err(|e| InvocationError::new("S3", format!("reading {input}: {e}")))?
            .into_bytes();
        let format = match InputFormat::detect(&in_key, &content) {
            InputFormat::Json if !in_key.ends_with(".json") => InputFormat::JsonLines,
            other => other,
        };
        let model = self.state.handle().model();
        let shape = RequestShape::new(model.metadata(), 1_000_000);
        let series =
            parse_input(format, &content, &shape).map_err(|e| bad(format!("{input}: {e}")))?;
        let mut lines = Vec::with_capacity(series.len() * 600);
        let mut version = model.metadata().version.clone();
        for chunk in series.chunks(self.config.limits.max_series.max(1)) {
            let outcome = self
                .state
                .handle()
                .forecast(chunk.to_vec())
                .await
                .map_err(|e| InvocationError::new("ForecastFailed", e.to_string()))?;
            let ForecastResponse { model, forecasts } = outcome.response;
            version = model.version.clone();
            for forecast in forecasts {
                let line = json!({"id": forecast.id, "values": forecast.values, "timestamps": forecast.timestamps, "model": {"name": model.name, "version": model.version}});
                serde_json::to_writer(&mut lines, &line).expect("serialisable");
                lines.push(b'\n');
            }
        }
        self.s3
            .put_object()
            .bucket(&out_bucket)
            .key(&out_key)
            .content_type("application/x-ndjson")
            .body(lines.into())
            .send()
            .await
            .map_err(|e| {
                InvocationError::new(
                    "S3",
                    format!(
                        "writing {output}: {}",
                        aws_sdk_s3::error::DisplayErrorContext(&e)
                    ),
                )
            })?;
        tracing::info!(
            series = series.len(),
            input,
            output,
            elapsed_ms = ms(started.elapsed()),
            "batch forecast written"
        );
        Ok(
            json!({"action": "batch-forecast", "series": series.len(), "input": input, "output": output, "model_version": version}),
        )
    }

    async fn on_alarm(
        &self,
        alarm: &str,
        state: Option<(CloudWatchAlarmStateValue, DateTime<Utc>)>,
    ) -> Result<Value, InvocationError> {
        let Some((value, changed_at)) = state else {
            return Err(InvocationError::new(
                "InvalidEvent",
                format!("alarm event for {alarm} carries no state"),
            ));
        };
        if value != CloudWatchAlarmStateValue::Alarm {
            return Ok(
                json!({"action": "none", "reason": format!("alarm {alarm} is {value:?}, not ALARM")}),
            );
        }
        if !self.config.rollback_alarms.iter().any(|a| a == alarm) {
            return Ok(
                json!({"action": "none", "reason": format!("alarm {alarm} is not in ROLLBACK_ALARMS {:?}", self.config.rollback_alarms)}),
            );
        }
        let registry = match &self.registry {
            Some(r) if r.model.version.is_none() => r,
            _ => {
                return Err(InvocationError::new(
                    "NotConfigured",
                    format!("alarm {alarm} asks for a rollback, but MODEL_URI is not an S3 alias (s3://BUCKET/models/NAME)"),
                ))
            }
        };
        let trigger = format!("alarm:{alarm}@{}", changed_at.to_rfc3339());
        let outcome = registry.rollback(&trigger).await.map_err(|e| match e {
            RegistryError::NoPreviousVersion { .. } => {
                InvocationError::new("RollbackImpossible", e.to_string())
            }
            other => InvocationError::new("Registry", other.to_string()),
        })?;
        let (action, from, to) = match outcome {
            RollbackOutcome::RolledBack { from, to } => {
                tracing::warn!(alarm, from = %from, to = %to, "model rolled back");
                self.state.telemetry().record(Metric::ModelRollbacks, 1.0);
                ("rollback", from, to)
            }
            RollbackOutcome::AlreadyApplied { from, to } => {
                tracing::info!(alarm, from = %from, to = %to, "rollback for this alarm state change was already applied");
                ("none", from, to)
            }
        };
        let reloaded = self.reload_if_changed(&to).await;
        Ok(json!({"action": action, "alarm": alarm, "from": from, "to": to, "serving": reloaded}))
    }

    /// Re-reads the alias at most every `alias_check_interval`; never fails the invocation.
    async fn pick_up_alias_changes(&self) {
        let Some(registry) = self.registry.as_ref().filter(|r| r.model.version.is_none()) else {
            return;
        };
        let Ok(mut last) = self.last_alias_check.try_lock() else {
            return;
        };
        if last.elapsed() < self.config.alias_check_interval {
            return;
        }
        *last = Instant::now();
        match registry.live_version().await {
            Ok(version) => {
                self.reload_if_changed(&version).await;
            }
            Err(e) => {
                tracing::warn!("could not read the model alias (serving the current model): {e}")
            }
        }
    }

    /// Loads `version` and swaps it in unless it is already serving. Returns the version serving
    /// afterwards; on failure the old model keeps serving.
    async fn reload_if_changed(&self, version: &str) -> String {
        let current = self.state.handle().model().metadata().version.clone();
        if current == version {
            return current;
        }
        let Some(registry) = &self.registry else {
            return current;
        };
        match crate::reload::reload(registry, version, self.state.handle()).await {
            Ok(()) => {
                self.state.model_changed();
                self.state.telemetry().record(Metric::ModelReloads, 1.0);
                version.to_string()
            }
            Err(e) => {
                tracing::error!(version, "model reload failed; still serving {current}: {e}");
                self.state
                    .telemetry()
                    .record(Metric::ModelReloadFailures, 1.0);
                current
            }
        }
    }
}

/// Runs the Lambda runtime loop until the process is stopped.
pub async fn run(app: LambdaApp) -> Result<(), lambda_runtime::Error> {
    let app = Arc::new(app);
    lambda_runtime::run(lambda_runtime::service_fn(
        move |event: LambdaEvent<Value>| {
            let app = Arc::clone(&app);
            async move { app.handle(event).await }
        },
    ))
    .await
}

/// Tells the Lambda Runtime API that init failed, so the platform reports an init error with our
/// message instead of a bare exit status. Best effort: the caller exits non-zero either way.
pub fn report_init_error(error_type: &str, message: &str) {
    use std::io::{Read, Write};
    let Ok(api) = std::env::var("AWS_LAMBDA_RUNTIME_API") else {
        return;
    };
    let api = api.trim_start_matches("http://").trim_end_matches('/');
    let (host, base) = api
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((api, String::new()));
    let body = json!({"errorType": error_type, "errorMessage": message}).to_string();
    let Ok(mut stream) = std::net::TcpStream::connect(host) else {
        return;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = write!(
        stream,
        "POST {base}/2018-06-01/runtime/init/error HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\nLambda-Runtime-Function-Error-Type: {error_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_routed_by_shape() {
        let v1 = json!({"httpMethod": "POST", "path": "/v1/forecast", "requestContext": {}});
        let v2 = json!({"version": "2.0", "routeKey": "POST /v1/forecast", "requestContext": {}});
        let scheduled =
            json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        let custom = json!({"action": "evaluate"});
        let change =
            json!({"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change"});
        let direct = json!({"source": "aws.cloudwatch", "alarmData": {}});
        assert!(matches!(shape_of(&v1), Shape::Http));
        assert!(matches!(shape_of(&v2), Shape::Http));
        assert!(matches!(shape_of(&scheduled), Shape::ScheduledEvent));
        assert!(matches!(shape_of(&custom), Shape::ScheduledAction));
        assert!(matches!(shape_of(&change), Shape::AlarmStateChange));
        assert!(matches!(shape_of(&direct), Shape::AlarmAction));
        assert!(matches!(shape_of(&json!({"hello": 1})), Shape::Unknown));
    }

    #[test]
    fn an_unknown_event_is_described_by_its_keys() {
        let text = describe_unknown(&json!({"Records": [], "foo": 1}));
        assert!(
            text.contains("\"Records\"") && text.contains("\"foo\""),
            "{text}"
        );
        assert!(describe_unknown(&json!([1])).contains("array"));
    }

    #[test]
    fn scheduled_actions_are_strict() {
        let ok: ScheduledAction = serde_json::from_value(json!({"action": "batch-forecast", "input": "s3://b/i.csv", "output": "s3://b/o.jsonl"})).unwrap();
        assert!(matches!(ok, ScheduledAction::BatchForecast { .. }));
        assert!(serde_json::from_value::<ScheduledAction>(json!({"action": "retrain"})).is_err());
        assert!(serde_json::from_value::<ScheduledAction>(
            json!({"action": "batch-forecast", "input": "x"})
        )
        .is_err());
    }
}
