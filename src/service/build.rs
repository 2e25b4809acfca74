//! The composition root: how `serve`, the Lambda function and the CLI turn their configuration
//! into a running [`Service`] ([`fetch_and_load`], [`compose`]) and keep it current
//! ([`start_background`]). All call the same functions, so they cannot drift apart in which
//! sinks, logs and monitors they wire up.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::follow::AliasFollower;
use super::{Limits, Monitoring, Service};
use crate::aws::AwsClients;
use crate::infer::{Batching, InferenceHandle};
use crate::metrics::{cloudwatch::CloudWatchSink, SinkKind, Telemetry};
use crate::metrics::{Metric, MetricSink, ServerMetrics};
use crate::model::{Model, ModelError};
use crate::monitor::store::{AccuracyStore, ForecastLog, LogDelivery, StoreError};
use crate::source::{ModelSource, ModelUri, SourceError};

/// Why a model could not be put in service at start.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("fetching the model from {source_uri}: {cause}")]
    Fetch {
        source_uri: String,
        cause: SourceError,
    },
    #[error("loading the model from {source_uri}: {cause}")]
    Load {
        source_uri: String,
        cause: ModelError,
    },
    #[error("loading the model from {source_uri} panicked")]
    Panicked { source_uri: String },
}

/// Where the model comes from, and where downloaded versions are cached.
#[derive(Debug, Clone)]
pub struct ModelLocation {
    pub uri: ModelUri,
    pub cache_dir: std::path::PathBuf,
}

/// Where start-up time went; logged as one structured line and published as metrics.
#[derive(Debug, Clone)]
pub struct LoadReport {
    pub source_uri: String,
    pub fetch: Duration,
    pub load: Duration,
    pub warm_up: Duration,
    pub total: Duration,
    /// Whether the files came from the local cache (or need no download at all).
    pub from_cache: bool,
}

/// Fetches, checks, loads and warms up the model at `uri`: the one start-up path of every process.
/// libtorch runs on a blocking thread, never on an async worker.
pub async fn fetch_and_load(
    uri: &ModelUri,
    cache_dir: &Path,
    clients: &AwsClients,
) -> Result<(Model, LoadReport), LoadError> {
    let started = Instant::now();
    let source: Box<dyn ModelSource> = crate::source::open(uri, cache_dir, clients);
    let source_uri = source.describe();
    let fetched = source.fetch().await.map_err(|cause| LoadError::Fetch {
        source_uri: source_uri.clone(),
        cause,
    })?;
    let fetch = started.elapsed();
    let artifacts = fetched.artifacts;
    let loaded = tokio::task::spawn_blocking(move || {
        let started = Instant::now();
        let model = Model::load_unwarmed(&artifacts)?;
        let load = started.elapsed();
        let started = Instant::now();
        model.warm_up()?;
        Ok::<_, ModelError>((model, load, started.elapsed()))
    })
    .await
    .map_err(|_| LoadError::Panicked {
        source_uri: source_uri.clone(),
    })?;
    let (model, load, warm_up) = loaded.map_err(|cause| LoadError::Load {
        source_uri: source_uri.clone(),
        cause,
    })?;
    let report = LoadReport {
        source_uri,
        fetch,
        load,
        warm_up,
        total: started.elapsed(),
        from_cache: fetched.from_cache,
    };
    let metadata = model.metadata();
    tracing::info!(
        model = %metadata.name,
        model_version = %metadata.version,
        source = %report.source_uri,
        from_cache = report.from_cache,
        fetch_ms = ms(report.fetch),
        load_ms = ms(report.load),
        warm_up_ms = ms(report.warm_up),
        total_ms = ms(report.total),
        "model loaded and warmed up"
    );
    Ok((model, report))
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Where metrics go.
#[derive(Debug, Clone)]
pub struct MetricsConfig {
    pub sinks: Vec<SinkKind>,
    pub namespace: String,
    /// Optional `Stage` dimension.
    pub stage: Option<String>,
    /// Where EMF lines are written: stdout for Lambda and containers (the log agent reads it),
    /// stderr for a command whose stdout is its answer.
    pub emf_to_stderr: bool,
}

impl MetricsConfig {
    /// Whether a sink calls AWS (and so needs credentials and a region).
    pub fn uses_aws(&self) -> bool {
        self.sinks.contains(&SinkKind::CloudWatch)
    }
}

/// Everything a long-running service is built from, besides its model.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    pub limits: Limits,
    /// Requests that may wait for an engine thread before callers get `Overloaded`.
    pub max_queue: usize,
    pub batching: Batching,
    pub engine_workers: usize,
    /// Intra-op threads of a low-latency engine thread for lone requests (`None`: none).
    pub low_latency_threads: Option<usize>,
    pub metrics: MetricsConfig,
    /// `s3://BUCKET/PREFIX` of the forecast log and actuals (the accuracy loop).
    pub forecast_log_uri: Option<String>,
    /// How logged forecasts leave the process.
    pub forecast_log_delivery: LogDelivery,
    /// Series-hash shards the forecast log and actuals are written in (1: unsharded).
    pub forecast_log_shards: u32,
    pub backtest_rate: f64,
    /// Seed of the backtest sampling; `None` draws one from the OS.
    pub sampling_seed: Option<u64>,
}

impl ServiceConfig {
    /// One request at a time per process (a Lambda sandbox, a CLI run): one engine thread, which
    /// uses every CPU for its forward, and nothing logged or backtested until the caller says so.
    pub fn one_at_a_time(metrics: MetricsConfig) -> Self {
        ServiceConfig {
            limits: Limits::default(),
            max_queue: 64,
            batching: Batching::default(),
            engine_workers: 1,
            // The one engine thread already uses every CPU.
            low_latency_threads: None,
            metrics,
            forecast_log_uri: None,
            forecast_log_delivery: LogDelivery::LogLines,
            forecast_log_shards: 1,
            backtest_rate: 0.0,
            sampling_seed: None,
        }
    }
}

/// Why the service could not be composed.
#[derive(Debug, thiserror::Error)]
pub enum ComposeError {
    // The cause is in the message and deliberately not a `#[source]`: anyhow's `{:#}` prints the
    // chain too, which would repeat it (the same holds for the causes above).
    #[error("FORECAST_LOG_URI: {0}")]
    ForecastLog(StoreError),
}

/// A composed service and what its owner must keep.
pub struct Composed {
    pub service: Service,
    /// Exits once the last [`Service`] clone is dropped and the queue drained.
    pub engine: std::thread::JoinHandle<()>,
    /// The CloudWatch sink, when configured, so its owner can report datums it could not send.
    pub cloudwatch: Option<Arc<CloudWatchSink>>,
}

/// Builds the engine threads, the metric sinks, the forecast log and the service around `model`.
pub fn compose(
    model: Model,
    config: &ServiceConfig,
    clients: &AwsClients,
) -> Result<Composed, ComposeError> {
    let forecast_log = match &config.forecast_log_uri {
        Some(uri) => Some(Arc::new(ForecastLog::with_delivery(
            AccuracyStore::new(clients.s3().clone(), uri)
                .and_then(|store| store.with_shards(config.forecast_log_shards))
                .map_err(ComposeError::ForecastLog)?,
            config.forecast_log_delivery,
        ))),
        None => None,
    };
    let metadata = model.metadata().clone();
    let (handle, engine) = InferenceHandle::spawn_adaptive(
        model,
        config.max_queue,
        config.batching,
        config.engine_workers.max(1),
        config.low_latency_threads,
    );
    let (sinks, cloudwatch) = build_sinks(&config.metrics, clients);
    let telemetry = Telemetry::new(
        sinks,
        &metadata.name,
        &metadata.version,
        config.metrics.stage.as_deref(),
    );
    let monitoring = Monitoring {
        telemetry,
        forecast_log,
        backtest_rate: config.backtest_rate,
        sampling_seed: config.sampling_seed,
    };
    Ok(Composed {
        service: Service::new(handle, ServerMetrics::new(), config.limits, monitoring),
        engine,
        cloudwatch,
    })
}

/// The configured push sinks. Prometheus needs none: every [`Service`] writes into its own
/// registry, which `GET /metrics` renders, whatever is configured here.
pub fn build_sinks(
    config: &MetricsConfig,
    clients: &AwsClients,
) -> (Vec<Arc<dyn MetricSink>>, Option<Arc<CloudWatchSink>>) {
    let mut sinks: Vec<Arc<dyn MetricSink>> = Vec::new();
    let mut cloudwatch = None;
    for kind in &config.sinks {
        match kind {
            SinkKind::Prometheus => {}
            SinkKind::Emf => {
                let out: Box<dyn std::io::Write + Send> = if config.emf_to_stderr {
                    Box::new(std::io::stderr())
                } else {
                    Box::new(std::io::stdout())
                };
                sinks.push(Arc::new(crate::metrics::emf::EmfSink::new(
                    &config.namespace,
                    out,
                )))
            }
            SinkKind::CloudWatch => {
                let sink = Arc::new(CloudWatchSink::new(
                    clients.cloudwatch().clone(),
                    &config.namespace,
                    crate::metrics::cloudwatch::DEFAULT_MAX_PENDING_DATUMS,
                ));
                cloudwatch = Some(sink.clone());
                sinks.push(sink);
            }
        }
    }
    (sinks, cloudwatch)
}

/// Samples the process's memory and ships what a service buffers (metrics of the push sinks, the
/// forecast log): every `period`, and once more when `shutdown` resolves.
pub async fn flush_periodically(
    service: Service,
    period: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await;
    loop {
        let stop = tokio::select! {
            _ = &mut shutdown => true,
            _ = ticker.tick() => false,
        };
        service.telemetry().record_process_memory();
        service.record_cpu_share();
        flush(&service).await;
        if stop {
            return;
        }
    }
}

/// One flush: the forecast log, then metrics (so the log's own failures are counted in the same
/// flush).
pub async fn flush(service: &Service) {
    let telemetry = service.telemetry();
    if let Some(log) = service.forecast_log() {
        let unwritten = log.flush().await;
        if unwritten > 0 {
            telemetry.record(Metric::ForecastLogFailures, unwritten as f64);
        }
    }
    telemetry.flush().await;
}

/// What keeps a long-running service current, and how often.
pub struct BackgroundConfig {
    /// Follows the registry's alias (see [`super::follow::follower_for`]); `None`: the model is
    /// pinned.
    pub follower: Option<Arc<AliasFollower>>,
    /// How often the alias and the online interval calibration are re-read; `None`: never.
    pub poll_interval: Option<Duration>,
    /// How often metrics and the forecast log are shipped (and once more at stop).
    pub flush_period: Duration,
}

/// The tasks running beside a service: the alias follower, the calibration follower and the
/// periodic flush. [`Background::stop`] ends them, the flush last, so nothing buffered is lost.
pub struct Background {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Starts the background tasks of `service` on the current runtime.
pub fn start_background(service: &Service, config: BackgroundConfig) -> Background {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stopped.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let mut tasks = vec![tokio::spawn(flush_periodically(
        service.clone(),
        config.flush_period,
        stopped(),
    ))];
    if let Some(poll) = config.poll_interval {
        if let Some(follower) = config.follower {
            tasks.push(tokio::spawn(follower.run(stopped())));
        }
        // Intervals follow the calibration `evaluate` publishes, on the same poll as the model.
        if service.forecast_log().is_some() {
            tasks.push(tokio::spawn(super::follow::follow_calibration(
                service.clone(),
                poll,
                stopped(),
            )));
        }
    }
    Background { stop, tasks }
}

impl Background {
    /// Stops every task and waits for it: the flush ships what is buffered one last time.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
    }
}
