//! The command line's arguments: shared groups (model, AWS, metrics, accuracy) and each command's.
//!
//! Every setting is an argument with its environment variable, so `--help` lists all of them.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Subcommand, ValueEnum};

use lstm_forecast::metrics::SinkKind;
use lstm_forecast::monitor::store::LogDelivery;
use lstm_forecast::service::build::MetricsConfig;
use lstm_forecast::service::Limits;

/// Where metrics go.
#[derive(Args)]
pub struct MetricsArgs {
    /// Comma-separated push sinks: cloudwatch (PutMetricData API), emf (Embedded Metric Format
    /// lines on stdout) [default: none for serve, emf for lambda]. Prometheus (GET /metrics) is
    /// always on; `prometheus` is accepted and changes nothing.
    #[arg(long, env = "METRICS_SINKS", value_delimiter = ',')]
    pub metrics_sinks: Vec<SinkKind>,

    /// CloudWatch namespace.
    #[arg(long, env = "METRICS_NAMESPACE", default_value = lstm_forecast::metrics::emf::DEFAULT_NAMESPACE)]
    pub metrics_namespace: String,

    /// Value of the optional `Stage` dimension (e.g. prod, staging).
    #[arg(long, env = "STAGE")]
    pub stage: Option<String>,

    /// Seconds between flushes of the CloudWatch/EMF sinks (serve); Lambda flushes per invocation.
    #[arg(long, env = "METRICS_FLUSH_SECONDS", default_value_t = 60)]
    pub metrics_flush_seconds: u64,
}

/// The accuracy loop.
impl MetricsArgs {
    /// The library's configuration: the sinks given, else `default`; EMF on stderr for a command
    /// whose stdout is its answer.
    pub fn config(&self, default: &[SinkKind], emf_to_stderr: bool) -> MetricsConfig {
        MetricsConfig {
            sinks: if self.metrics_sinks.is_empty() {
                default.to_vec()
            } else {
                self.metrics_sinks.clone()
            },
            namespace: self.metrics_namespace.clone(),
            stage: self.stage.clone(),
            emf_to_stderr,
        }
    }
}

#[derive(Args)]
pub struct AccuracyArgs {
    /// s3://BUCKET/PREFIX where forecasts are logged and actuals stored; enables POST /v1/observations.
    #[arg(long, env = "FORECAST_LOG_URI")]
    pub forecast_log: Option<String>,

    /// Share (0-1) of series sent with at least window + horizon history that are also backtested
    /// (forecast from the older part, scored against the newest values -> BacktestMAE).
    #[arg(long, env = "BACKTEST_SAMPLE_RATE", default_value_t = 0.1)]
    pub backtest_rate: f64,

    /// Seed of the backtest sampling, for runs that must sample alike [default: drawn from the
    /// OS]. A SnapStart restore always draws a new one: every environment restored from one
    /// snapshot would otherwise backtest the same series.
    #[arg(long, env = "SAMPLING_SEED")]
    pub sampling_seed: Option<u64>,

    /// How logged forecasts leave the process: `objects` (batched S3 objects, flushed on a
    /// period) or `log-lines` (one JSON line per forecast on stdout, for a log subscription and
    /// Firehose to deliver; nothing on the response path) [default: objects for serve, log-lines
    /// for lambda].
    #[arg(long, env = "FORECAST_LOG_DELIVERY", value_enum)]
    pub forecast_log_delivery: Option<LogDeliveryArg>,

    /// Series-hash shards the forecast log and actuals are written in: each shard's data under
    /// PREFIX/forecasts/shard=NNNN/ (and actuals/...), so that an evaluation partition reads only
    /// its series (README,
    /// "Evaluation at scale"). Every writer and the evaluation must agree; 1 is the unsharded
    /// layout.
    #[arg(long, env = "FORECAST_LOG_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub forecast_log_shards: u32,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObservationsAuth {
    Token,
    None,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum LogDeliveryArg {
    Objects,
    LogLines,
}

impl LogDeliveryArg {
    pub fn or(choice: Option<Self>, default: LogDelivery) -> LogDelivery {
        match choice {
            Some(LogDeliveryArg::Objects) => LogDelivery::Objects,
            Some(LogDeliveryArg::LogLines) => LogDelivery::LogLines,
            None => default,
        }
    }
}

#[derive(Args)]
pub struct EvaluateArgs {
    /// s3://BUCKET/PREFIX of the forecast log and actuals.
    #[arg(long, env = "FORECAST_LOG_URI")]
    pub store: String,

    /// Series-hash shards the forecast log and actuals are written in: each shard's data under
    /// PREFIX/forecasts/shard=NNNN/ (and actuals/...), so that an evaluation partition reads only
    /// its series (README, "Evaluation at scale"). Every writer and the evaluation must agree; 1
    /// is the unsharded layout.
    #[arg(long, env = "FORECAST_LOG_SHARDS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub forecast_log_shards: u32,

    /// One step of a run fanned out by another scheduler (Kubernetes Jobs, Argo, AWS Batch);
    /// without one, the whole run in this process.
    #[command(subcommand)]
    pub step: Option<EvaluateStep>,

    /// Minutes of data time a series' actuals must run past a target before it counts as missing
    /// (out-of-order actuals within it still score).
    #[arg(long, env = "EVALUATION_GRACE_MINUTES", default_value_t = 60, value_parser = clap::value_parser!(i64).range(0..=10_000_000))]
    pub grace_minutes: i64,

    /// Hours from a forecast's origin to its last target, for the longest-reaching model in the
    /// store (horizon × frequency). Each new actual reads the forecasts made up to this long before
    /// it; a forecast reaching further is only partly scored.
    #[arg(long, env = "EVALUATION_SPAN_HOURS", default_value_t = 168, value_parser = clap::value_parser!(i64).range(1..=1_000_000))]
    pub span_hours: i64,

    /// Most recent scored errors kept per model version and horizon step, from which the
    /// intervals are recalibrated (`state/calibration.json`; served once each step has 30).
    #[arg(long, env = "RECALIBRATION_WINDOW", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub recalibration_window: u64,

    /// Interval levels the online calibration serves, comma-separated, each in (0, 1).
    #[arg(long, env = "INTERVAL_LEVELS", value_delimiter = ',', default_values_t = [0.8, 0.95])]
    pub interval_levels: Vec<f64>,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    #[command(flatten)]
    pub aws: AwsArgs,
}

/// The steps of an evaluation run, as the template's state machine runs them.
#[derive(Subcommand)]
pub enum EvaluateStep {
    /// Plan the next run (or resume the one planned and not finished); prints it, one item per
    /// partition.
    Plan {
        /// Partitions to split the shards into (at most FORECAST_LOG_SHARDS).
        #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
        partitions: u32,
    },
    /// Evaluate shards FIRST..END of a planned run; run again, it scores nothing twice. Prints
    /// the pairs scored and the process's peak memory.
    Partition {
        #[arg(long)]
        run: u64,
        #[arg(long)]
        first: u32,
        #[arg(long)]
        end: u32,
    },
    /// Merge a run's partitions once all are done, publish its metrics and write its report.
    Reduce {
        #[arg(long)]
        run: u64,
    },
}

#[derive(Args)]
pub struct BatchArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// s3://BUCKET/KEY of the series: CSV, JSON or JSON Lines (the `forecast` command's formats).
    #[arg(long, short)]
    pub input: String,

    /// s3://BUCKET/KEY the forecasts are written to, one JSON line per series.
    #[arg(long, short)]
    pub output: String,

    /// Prediction interval levels around every forecast, comma-separated, each in (0, 1).
    #[arg(long, value_delimiter = ',', value_name = "LEVELS")]
    pub intervals: Vec<f64>,

    /// Series per forward pass.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,

    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Args)]
pub struct LambdaArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    #[command(flatten)]
    pub accuracy: AccuracyArgs,

    /// Minutes of data time a series' actuals must run past a target before it counts as missing
    /// (out-of-order actuals within it still score).
    #[arg(long, env = "EVALUATION_GRACE_MINUTES", default_value_t = 60)]
    pub grace_minutes: u64,

    /// Most recent scored errors kept per model version and horizon step by the `evaluate`
    /// action, from which intervals are recalibrated (served once each step has 30).
    #[arg(long, env = "RECALIBRATION_WINDOW", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub recalibration_window: u64,

    /// Interval levels the online calibration serves, comma-separated, each in (0, 1).
    #[arg(long, env = "INTERVAL_LEVELS", value_delimiter = ',', default_values_t = [0.8, 0.95])]
    pub interval_levels: Vec<f64>,

    /// Comma-separated alarm names whose ALARM state rolls the model alias back.
    #[arg(
        long,
        env = "ROLLBACK_ALARMS",
        value_delimiter = ',',
        default_value = ""
    )]
    pub rollback_alarms: Vec<String>,

    /// A rollback alarm acts only if the live version's own WAPE (from the evaluation that last
    /// scored it) is above this: the accuracy alarm's threshold.
    #[arg(long, env = "ROLLBACK_WAPE_THRESHOLD", default_value_t = 0.1)]
    pub rollback_wape_threshold: f64,

    /// ... and only on at least this many scored (forecast, actual) pairs of the live version.
    #[arg(long, env = "ROLLBACK_MIN_PAIRS", default_value_t = 240)]
    pub rollback_min_pairs: usize,

    /// No rollback within this many minutes after the alias last moved (promotion or rollback).
    #[arg(long, env = "ROLLBACK_COOLDOWN_MINUTES", default_value_t = 360)]
    pub rollback_cooldown_minutes: u64,

    #[command(flatten)]
    pub decisions: DecisionArgs,

    /// Batch jobs read only objects under this `s3://BUCKET/PREFIX/`; an event naming any other
    /// input is refused. Unset: no batch job runs.
    #[arg(long, env = "BATCH_INPUT_PREFIX", value_name = "S3_URI")]
    pub batch_input_prefix: Option<String>,

    /// Batch jobs write only under this `s3://BUCKET/PREFIX/` (never the model registry or the
    /// monitoring store); an event naming any other output is refused. Unset: no batch job runs.
    #[arg(long, env = "BATCH_OUTPUT_PREFIX", value_name = "S3_URI")]
    pub batch_output_prefix: Option<String>,

    /// Bytes per part of a batch shard's multipart upload: a shard's memory is about three parts,
    /// whatever its size. S3 refuses parts under 5 MiB (5242880), except the last.
    #[arg(long, env = "BATCH_PART_BYTES", default_value_t = 8 << 20, value_parser = clap::value_parser!(u64).range(1..=lstm_forecast::service::batch::MAX_PART_BYTES as u64))]
    pub batch_part_bytes: u64,

    /// Seconds between checks of the registry alias by a warm instance (0: every invocation).
    #[arg(long, env = "ALIAS_CHECK_SECONDS", default_value_t = 60)]
    pub alias_check_seconds: u64,
}

#[derive(Args)]
pub struct ModelArgs {
    /// Model to use: `bundled`, a model directory, file://DIR, s3://BUCKET/models/NAME (the live
    /// alias, followed by hot reload in `serve`) or s3://BUCKET/models/NAME/VERSION.
    #[arg(long, env = "MODEL_URI", default_value = "bundled")]
    pub model: String,

    /// libtorch intra-op threads per forward [default: 1 in `serve` and `lambda`, which use more
    /// CPUs by running forwards side by side; the CPUs this process may use (cgroup quotas
    /// included) for one-off commands].
    #[arg(long, env = "THREADS")]
    pub threads: Option<usize>,

    /// Where versions downloaded from the S3 registry are cached, keyed by version and checked by
    /// checksum on reuse (in Lambda, `/tmp` is the only writable place).
    #[arg(long, env = "LSTM_FORECAST_MODEL_CACHE", value_name = "DIR",
          default_value_os_t = lstm_forecast::source::s3::default_cache_dir())]
    pub model_cache_dir: PathBuf,

    #[command(flatten)]
    pub aws: AwsArgs,
}

/// How AWS is reached. Credentials and region come the standard way (environment, profile, web
/// identity, the ECS or EC2 role).
#[derive(Args, Clone)]
pub struct AwsArgs {
    /// Send every AWS call (S3, CloudWatch) to this endpoint instead of AWS: an emulator such as
    /// moto or MinIO (S3 then uses path-style addressing). Overrides the endpoint variables, which
    /// the AWS SDK reads itself when this is not given: AWS_ENDPOINT_URL for every service,
    /// AWS_ENDPOINT_URL_S3 and AWS_ENDPOINT_URL_CLOUDWATCH for one (these win over the first).
    #[arg(long, value_name = "URL")]
    pub aws_endpoint_url: Option<String>,
}

#[derive(Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Address to listen on. Use 0.0.0.0:8080 in a container; port 0 picks a free port.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8080")]
    pub bind: SocketAddr,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    pub max_body_bytes: usize,

    /// Most series per forecast request (they run as one batch).
    #[arg(long, env = "MAX_SERIES", default_value_t = Limits::default().max_series)]
    pub max_series: usize,

    /// POST /v1/observations needs `Authorization: Bearer <this token>`: actuals drive the accuracy
    /// alarm and the rollback. With a forecast log, serve refuses to start without one unless
    /// --observations-auth none says so. Pass it from a secret, never on the command line.
    #[arg(long, env = "OBSERVATIONS_TOKEN", hide_env_values = true)]
    pub observations_token: Option<String>,

    /// A file holding the observations token (a Docker Swarm or Kubernetes secret), instead of
    /// --observations-token. Surrounding whitespace is ignored.
    #[arg(
        long,
        env = "OBSERVATIONS_TOKEN_FILE",
        value_name = "PATH",
        conflicts_with = "observations_token"
    )]
    pub observations_token_file: Option<PathBuf>,

    /// Who may POST /v1/observations when a forecast log is set: `token` (the holders of
    /// --observations-token; serve refuses to start without one) or `none` (anyone: only where
    /// something in front of the server authenticates its callers).
    #[arg(long, env = "OBSERVATIONS_AUTH", value_enum, default_value_t = ObservationsAuth::Token)]
    pub observations_auth: ObservationsAuth,

    /// Largest accepted POST /v1/observations body, in bytes.
    #[arg(long, env = "MAX_OBSERVATION_BYTES", default_value_t = Limits::default().max_observation_bytes)]
    pub max_observation_bytes: usize,

    /// Seconds a client has to send a request's headers, and so how long an idle keep-alive
    /// connection stays open; a slower connection is closed. Keep it above the idle timeout of a
    /// load balancer in front (the ALB's is 60 s), or it may reuse a connection just closed.
    #[arg(long, env = "HEADER_TIMEOUT_SECONDS", default_value_t = 65.0, value_parser = positive_seconds)]
    pub header_timeout_seconds: f64,

    /// Seconds a client has to send a request's body once its headers are in; a slower one gets
    /// a 408.
    #[arg(long, env = "BODY_TIMEOUT_SECONDS", default_value_t = 30.0, value_parser = positive_seconds)]
    pub body_timeout_seconds: f64,

    /// Requests in flight at most (health checks and /metrics aside); beyond this the server
    /// answers 503 with Retry-After at once.
    #[arg(long, env = "MAX_CONCURRENT_REQUESTS", default_value_t = 512)]
    pub max_concurrent_requests: usize,

    /// MiB that request bodies over 256 KiB (or of unknown length) may hold at once; a large body
    /// past it gets 503 before it is read. Bounds what slow or stalled uploads can pin in memory;
    /// small requests are not counted against it.
    #[arg(long, env = "LARGE_BODY_BUDGET_MIB", default_value_t = 32)]
    pub large_body_budget_mib: u64,

    /// Open connections at most; past it the server accepts no more until one closes (they wait
    /// in the kernel's backlog), so idle and slow connections cannot pile up without bound.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Requests that may wait for the engine; beyond this the server answers 429 with Retry-After.
    #[arg(long, env = "MAX_QUEUE", default_value_t = 64)]
    pub max_queue: usize,

    /// Engine threads, each running its own forward passes [default: the CPUs this process may
    /// use]. The first takes every request; the others join in while --overflow-depth requests
    /// wait.
    /// Keep engine threads x --threads at or below the CPUs.
    #[arg(long, env = "ENGINE_WORKERS")]
    pub engine_workers: Option<usize>,

    /// A low-latency engine thread: a request that arrives while nothing else is queued or
    /// running is forecast on every CPU instead of one (lower latency at low load; under load the
    /// engine threads above take over). Only with --threads 1, the server's default, and only
    /// when libtorch runs the forwards: an ONNX Runtime forward uses one CPU wherever it runs.
    #[arg(long, env = "LOW_LATENCY_ENGINE", default_value_t = true, action = clap::ArgAction::Set)]
    pub low_latency_engine: bool,

    /// Requests waiting before the engine threads after the first join in; below it one engine
    /// thread runs every forward, batching what arrived during the last (1: every engine thread
    /// takes any request).
    #[arg(long, env = "OVERFLOW_DEPTH", default_value_t = lstm_forecast::infer::Batching::DEFAULT_OVERFLOW_DEPTH)]
    pub overflow_depth: usize,

    /// Dynamic batching: most series in one forward pass, across concurrent requests (1 disables).
    #[arg(long, env = "MAX_BATCH_SIZE", default_value_t = 64)]
    pub max_batch_size: usize,

    /// Dynamic batching: how long (ms) a request may wait for others to share its forward pass. 0
    /// batches only what is already queued, adding no latency at low load.
    #[arg(long, env = "MAX_BATCH_DELAY_MS", default_value_t = 0)]
    pub max_batch_delay_ms: u64,

    /// Seconds between checks of the registry alias when --model is s3://BUCKET/models/NAME; a new
    /// live version is loaded in the background and swapped in (0 disables).
    #[arg(long, env = "RELOAD_INTERVAL_SECONDS", default_value_t = 60)]
    pub reload_interval_seconds: u64,

    #[command(flatten)]
    pub metrics: MetricsArgs,

    #[command(flatten)]
    pub accuracy: AccuracyArgs,
}

#[derive(Args)]
pub struct ProbeArgs {
    /// What to GET (plain HTTP).
    #[arg(default_value = "http://127.0.0.1:8080/readyz")]
    pub url: String,

    /// Seconds to connect and to wait for the answer.
    #[arg(long, default_value_t = 2.0, value_parser = positive_seconds)]
    pub timeout_seconds: f64,
}

#[derive(Args)]
pub struct ForecastArgs {
    #[command(flatten)]
    pub model: ModelArgs,

    /// Input file (CSV or JSON); `-` reads standard input.
    #[arg(long, short)]
    pub input: PathBuf,

    /// Input format [default: from the file extension, else the content].
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,

    /// Most series read from the input.
    #[arg(long, default_value_t = 100_000)]
    pub max_series: usize,

    /// Series per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,

    /// Prediction intervals around every forecast, at these levels (comma-separated, each in
    /// (0, 1), and calibrated in the model's model.json), e.g. `--intervals 0.8,0.95`.
    #[arg(long, value_delimiter = ',', value_name = "LEVELS")]
    pub intervals: Vec<f64>,

    /// Push sinks for the forecast metrics (Forecasts, InferenceLatency, InputDrift, ...), as in
    /// `serve`; EMF lines go to stderr here, since stdout is the answer.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum FormatArg {
    Csv,
    Json,
    /// One series object per line.
    Jsonl,
}

/// How champion/challenger decisions are taken (the scheduled evaluation, and a rollback when a
/// previous version is shadowed).
#[derive(Args, Debug, Clone)]
pub struct DecisionArgs {
    /// Promote (or reject) a challenger when the evidence says so. `false`: decisions are
    /// recorded in the alias history and counted in `ModelDecisions`, never acted on.
    #[arg(long, env = "AUTO_PROMOTE", default_value_t = true, action = clap::ArgAction::Set)]
    pub auto_promote: bool,

    /// Significance level of the Diebold-Mariano tests behind every decision.
    #[arg(long, env = "DECISION_ALPHA", default_value_t = 0.05)]
    pub decision_alpha: f64,

    /// No decision before two versions were compared at this many forecast origins.
    #[arg(long, env = "DECISION_MIN_ORIGINS", default_value_t = 56)]
    pub decision_min_origins: usize,

    /// A challenger with no significant difference after this many origins is rejected.
    #[arg(long, env = "DECISION_MAX_ORIGINS", default_value_t = 360)]
    pub decision_max_origins: usize,

    /// Hours a version replaced by an automatic promotion stays shadowed as `previous`.
    #[arg(long, env = "PROBATION_HOURS", default_value_t = 168)]
    pub probation_hours: u64,
}

impl DecisionArgs {
    pub fn policy(&self) -> anyhow::Result<lstm_forecast::service::challenge::ChallengePolicy> {
        anyhow::ensure!(
            self.decision_alpha > 0.0 && self.decision_alpha < 1.0,
            "DECISION_ALPHA {} is not in (0, 1)",
            self.decision_alpha
        );
        anyhow::ensure!(
            self.decision_min_origins >= 3
                && self.decision_min_origins <= self.decision_max_origins,
            "DECISION_MIN_ORIGINS must be at least 3 and at most DECISION_MAX_ORIGINS"
        );
        Ok(lstm_forecast::service::challenge::ChallengePolicy {
            rule: lstm_forecast::monitor::verdict::DecisionRule {
                alpha: self.decision_alpha,
                min_origins: self.decision_min_origins,
                max_origins: self.decision_max_origins,
                ..Default::default()
            },
            auto_promote: self.auto_promote,
            probation: std::time::Duration::from_secs(self.probation_hours * 3600),
        })
    }
}

#[derive(Subcommand)]
pub enum ModelCommand {
    /// Check a model directory before serving it: contract, checksum, and forecasts at batch sizes
    /// 1, 2 and 64 (finite, right shape, same alone as inside a batch).
    ///
    /// The libtorch checks run in a child process, so a model that crashes libtorch (e.g. an LSTM
    /// traced with a fixed batch size) is reported as invalid instead of crashing this command.
    /// Exits 0 when valid, 1 when not.
    Validate {
        /// Model directory holding model.json and model.pt (and model.onnx, if model.json declares it).
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Give up on the probe after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Calibrate a model's prediction intervals and write them into its model.json.
    ///
    /// Split conformal: the model (through the engine that serves it) forecasts from every origin
    /// whose targets lie in --targets, rows it did not train on; at each level and horizon step the
    /// interval's half-width is the conformal quantile of the absolute errors. Requests then ask
    /// for `"intervals": [0.8, 0.95]`. --check measures the result on other rows (e.g. the test
    /// split) and prints coverage and width per level.
    Calibrate {
        /// Model directory holding model.json and model.pt (and model.onnx, if declared); model.json
        /// is rewritten.
        dir: PathBuf,
        /// CSV with a header naming the model's features (e.g. ETTh1.csv).
        #[arg(long)]
        data: PathBuf,
        /// Rows whose values are the calibration targets, START..END (0-based data rows, END
        /// excluded). For the bundled model: ETTh1's validation split.
        #[arg(long, default_value = "8640..11520", value_parser = parse_row_range)]
        targets: std::ops::Range<usize>,
        /// Levels to calibrate, comma-separated, each in (0, 1).
        #[arg(long, value_delimiter = ',', default_values_t = [0.8, 0.95])]
        levels: Vec<f64>,
        /// Rows to measure the calibration on afterwards, START..END (e.g. 11520..14400).
        #[arg(long, value_parser = parse_row_range)]
        check: Option<std::ops::Range<usize>>,
    },
    /// Print a model's metadata (model.json) after loading and checking it.
    Show {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Validate a model directory, upload it to the S3 registry as a new version, and make it live.
    ///
    /// Uploads NAME/VERSION/model.pt (and model.onnx) then model.json (VERSION from model.json; versions are
    /// immutable), then points the `live` alias at it unless --no-promote.
    Publish {
        /// Model directory holding model.json and model.pt (and model.onnx, if model.json declares it).
        dir: PathBuf,
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
        /// Upload without making the version live.
        #[arg(long)]
        no_promote: bool,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// List a registry's published versions and which one is live.
    List {
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Make a published version live by hand. The version it replaces stays in the alias
    /// history and is shadowed as `previous` for the probation, so a rollback can ask whether it
    /// would have done better.
    Promote {
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
        /// The published version to make live.
        #[arg(value_name = "VERSION")]
        target_version: String,
        /// Hours the replaced version stays shadowed as `previous`.
        #[arg(long, default_value_t = 168)]
        probation_hours: u64,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Put a published version to the test beside live: the scheduled evaluation compares both
    /// on the same actuals and promotes or rejects it (see the README, "Champion and challenger").
    Challenge {
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
        /// The published version to test.
        #[arg(value_name = "VERSION")]
        target_version: String,
        /// `shadow`: it forecasts its series after live has answered, callers never see it.
        /// `canary`: it answers its series, and live forecasts them in its shadow.
        #[arg(long, default_value = "shadow")]
        mode: lstm_forecast::registry::roles::ChallengeMode,
        /// Share of series (by a hash of the series id, the same series every time), in (0, 1].
        #[arg(long, default_value_t = 0.25, value_parser = parse_fraction)]
        fraction: f64,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// End the challenge without a decision.
    Withdraw {
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Print every role (live, challenger, previous) and the decisions taken, with their evidence.
    Status {
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
        /// Print the alias document as JSON.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Move the live alias back to the version that was live before the current one.
    Rollback {
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
        #[command(flatten)]
        aws: AwsArgs,
    },
    /// Internal: the child process of `model validate`. Prints one JSON line per check.
    #[command(hide = true)]
    Probe { dir: PathBuf },
}

/// `START..END` rows, END excluded and after START.
fn parse_row_range(text: &str) -> Result<std::ops::Range<usize>, String> {
    let (start, end) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}` is not START..END (e.g. 8640..11520)"))?;
    let (start, end): (usize, usize) = (
        start
            .parse()
            .map_err(|_| format!("`{start}` is not a row number"))?,
        end.parse()
            .map_err(|_| format!("`{end}` is not a row number"))?,
    );
    if end <= start {
        return Err(format!("`{text}`: END must be after START"));
    }
    Ok(start..end)
}

/// A share of series: in (0, 1].
fn parse_fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(fraction) if fraction > 0.0 && fraction <= 1.0 => Ok(fraction),
        _ => Err(format!("`{text}` is not a share of series in (0, 1]")),
    }
}

/// A duration in seconds: finite and above zero (a zero timeout would refuse every request).
fn positive_seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(seconds) if seconds.is_finite() && seconds > 0.0 && seconds < 1e9 => Ok(seconds),
        _ => Err(format!("`{text}` is not a number of seconds above 0")),
    }
}
