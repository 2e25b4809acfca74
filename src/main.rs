//! The `lstm-forecast` command line: a thin adapter over the library.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::{Args, Parser, Subcommand, ValueEnum};

use lstm_forecast::forecast::{ForecastResponse, RequestShape};
use lstm_forecast::http::{self, AppState, Limits, Monitoring};
use lstm_forecast::infer::InferenceHandle;
use lstm_forecast::input::{parse_input, InputFormat};
use lstm_forecast::lambda::{self, LambdaConfig};
use lstm_forecast::metrics::ServerMetrics;
use lstm_forecast::metrics::{SinkKind, Telemetry};
use lstm_forecast::model::engine::{
    available_cpus, configure_libtorch, configured_intra_op_threads, default_engine_workers,
    oversubscription_warning, Workload,
};
use lstm_forecast::model::Model;
use lstm_forecast::monitor::store::{AccuracyStore, ForecastLog};
use lstm_forecast::registry::{Registry, RegistryRef, RollbackOutcome};
use lstm_forecast::source::{open_source, DirectorySource, ModelUri};
use lstm_forecast::validate::{run_probe, validate_dir};

/// LSTM time-series forecasts on libtorch.
///
/// Serves a TorchScript LSTM over HTTP, forecasts files from the command line, and checks models
/// before they reach production. Without options everything uses the bundled model: an LSTM trained
/// on the ETTh1 benchmark (oil temperature, hourly, 168 hours in -> 24 hours out).
#[derive(Parser)]
#[command(name = "lstm-forecast", version, propagate_version = true)]
struct Cli {
    /// Log format on stderr: `text` for people, `json` for log pipelines (CloudWatch, Loki, ...).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Serve forecasts over HTTP (the ECS, Kubernetes and local variant).
    ///
    /// Endpoints: POST /v1/forecast, GET /v1/model, GET /healthz, GET /readyz, GET /metrics.
    /// Stops gracefully on SIGTERM or ctrl-c: in-flight requests finish first.
    Serve(ServeArgs),
    /// Forecast the series in a CSV or JSON file and print the answer as JSON, without a server.
    ///
    /// CSV: a header naming the model's features (e.g. `OT`), optional `id` and `date`/`timestamp`
    /// columns; each series uses its last `window` rows. JSON: the body of POST /v1/forecast.
    Forecast(ForecastArgs),
    /// Inspect, check and publish models (local directories and the S3 registry).
    #[command(subcommand)]
    Model(ModelCommand),
    /// Score logged forecasts against actuals and publish the accuracy metrics and a report.
    ///
    /// Joins the forecasts logged under FORECAST_LOG_URI with the actuals stored there
    /// (POST /v1/observations, or JSON Lines / CSV files dropped under PREFIX/actuals/) on
    /// (series id, target time); scores those that became due since the last evaluation; pushes
    /// MAE, RMSE, WAPE, Bias, MASE (overall and per horizon bucket) to the metrics sinks; writes
    /// PREFIX/reports/<time>/report.json and chart.svg.
    Evaluate(EvaluateArgs),
    /// Run as an AWS Lambda function (also started when the binary is invoked as `bootstrap`).
    ///
    /// Answers API Gateway REST/HTTP proxy events (the same routes as `serve`), EventBridge
    /// scheduled events ({"action":"batch-forecast","input":"s3://...","output":"s3://..."}), and
    /// CloudWatch alarm events (rollback of the model alias for alarms in ROLLBACK_ALARMS). Needs the
    /// Lambda environment (AWS_LAMBDA_RUNTIME_API, ...). A failed init exits non-zero with the cause.
    Lambda(LambdaArgs),
}

/// Where metrics go.
#[derive(Args)]
struct MetricsArgs {
    /// Comma-separated metric sinks: prometheus (GET /metrics), cloudwatch (PutMetricData API),
    /// emf (Embedded Metric Format lines on stdout) [default: prometheus for serve, emf for lambda].
    #[arg(long, env = "METRICS_SINKS", value_delimiter = ',')]
    metrics_sinks: Vec<SinkKind>,

    /// CloudWatch namespace.
    #[arg(long, env = "METRICS_NAMESPACE", default_value = lstm_forecast::metrics::emf::DEFAULT_NAMESPACE)]
    metrics_namespace: String,

    /// Value of the optional `Stage` dimension (e.g. prod, staging).
    #[arg(long, env = "STAGE")]
    stage: Option<String>,

    /// Seconds between flushes of the CloudWatch/EMF sinks (serve); Lambda flushes per invocation.
    #[arg(long, env = "METRICS_FLUSH_SECONDS", default_value_t = 60)]
    metrics_flush_seconds: u64,
}

/// The accuracy loop.
#[derive(Args)]
struct AccuracyArgs {
    /// s3://BUCKET/PREFIX where forecasts are logged and actuals stored; enables POST /v1/observations.
    #[arg(long, env = "FORECAST_LOG_URI")]
    forecast_log: Option<String>,

    /// Share (0-1) of series sent with at least window + horizon history that are also backtested
    /// (forecast from the older part, scored against the newest values -> BacktestMAE).
    #[arg(long, env = "BACKTEST_SAMPLE_RATE", default_value_t = 0.1)]
    backtest_rate: f64,
}

#[derive(Args)]
struct EvaluateArgs {
    /// s3://BUCKET/PREFIX of the forecast log and actuals.
    #[arg(long, env = "FORECAST_LOG_URI")]
    store: String,

    /// Minutes after a forecast's last target time that its actuals may still arrive.
    #[arg(long, env = "EVALUATION_GRACE_MINUTES", default_value_t = 60)]
    grace_minutes: i64,

    #[command(flatten)]
    metrics: MetricsArgs,
}

#[derive(Args)]
struct LambdaArgs {
    #[command(flatten)]
    model: ModelArgs,

    #[command(flatten)]
    metrics: MetricsArgs,

    #[command(flatten)]
    accuracy: AccuracyArgs,

    /// Minutes after a forecast's last target time that its actuals may still arrive.
    #[arg(long, env = "EVALUATION_GRACE_MINUTES", default_value_t = 60)]
    grace_minutes: u64,

    /// Comma-separated alarm names whose ALARM state rolls the model alias back.
    #[arg(
        long,
        env = "ROLLBACK_ALARMS",
        value_delimiter = ',',
        default_value = ""
    )]
    rollback_alarms: Vec<String>,

    /// Seconds between checks of the registry alias by a warm instance (0: every invocation).
    #[arg(long, env = "ALIAS_CHECK_SECONDS", default_value_t = 60)]
    alias_check_seconds: u64,
}

#[derive(Args)]
struct ModelArgs {
    /// Model to use: `bundled`, a model directory, file://DIR, s3://BUCKET/models/NAME (the live
    /// alias, followed by hot reload in `serve`) or s3://BUCKET/models/NAME/VERSION.
    #[arg(long, env = "MODEL_URI", default_value = "bundled")]
    model: String,

    /// libtorch intra-op threads per forward [default: 1 in `serve` and `lambda`, which use more
    /// CPUs by running forwards side by side; the CPUs this process may use (cgroup quotas
    /// included) for one-off commands].
    #[arg(long, env = "THREADS")]
    threads: Option<usize>,
}

#[derive(Args)]
struct ServeArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Address to listen on. Use 0.0.0.0:8080 in a container; port 0 picks a free port.
    #[arg(long, env = "BIND", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,

    /// Largest accepted request body, in bytes.
    #[arg(long, env = "MAX_BODY_BYTES", default_value_t = Limits::default().max_body_bytes)]
    max_body_bytes: usize,

    /// Most series per forecast request (they run as one batch).
    #[arg(long, env = "MAX_SERIES", default_value_t = Limits::default().max_series)]
    max_series: usize,

    /// Requests that may wait for the engine; beyond this the server answers 429 with Retry-After.
    #[arg(long, env = "MAX_QUEUE", default_value_t = 64)]
    max_queue: usize,

    /// Engine threads, each running its own forward passes [default: the CPUs this process may
    /// use]. Keep engine threads x --threads at or below the CPUs.
    #[arg(long, env = "ENGINE_WORKERS")]
    engine_workers: Option<usize>,

    /// Dynamic batching: most series in one forward pass, across concurrent requests (1 disables).
    #[arg(long, env = "MAX_BATCH_SIZE", default_value_t = 64)]
    max_batch_size: usize,

    /// Dynamic batching: how long (ms) a request may wait for others to share its forward pass. 0
    /// batches only what is already queued, adding no latency at low load.
    #[arg(long, env = "MAX_BATCH_DELAY_MS", default_value_t = 0)]
    max_batch_delay_ms: u64,

    /// Seconds between checks of the registry alias when --model is s3://BUCKET/models/NAME; a new
    /// live version is loaded in the background and swapped in (0 disables).
    #[arg(long, env = "RELOAD_INTERVAL_SECONDS", default_value_t = 60)]
    reload_interval_seconds: u64,

    #[command(flatten)]
    metrics: MetricsArgs,

    #[command(flatten)]
    accuracy: AccuracyArgs,
}

#[derive(Args)]
struct ForecastArgs {
    #[command(flatten)]
    model: ModelArgs,

    /// Input file (CSV or JSON); `-` reads standard input.
    #[arg(long, short)]
    input: PathBuf,

    /// Input format [default: from the file extension, else the content].
    #[arg(long, value_enum)]
    format: Option<FormatArg>,

    /// Most series read from the input.
    #[arg(long, default_value_t = 100_000)]
    max_series: usize,

    /// Series per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Csv,
    Json,
    /// One series object per line.
    Jsonl,
}

#[derive(Subcommand)]
enum ModelCommand {
    /// Check a model directory before serving it: contract, checksum, and forecasts at batch sizes
    /// 1, 2 and 64 (finite, right shape, same alone as inside a batch).
    ///
    /// The libtorch checks run in a child process, so a model that crashes libtorch (e.g. an LSTM
    /// traced with a fixed batch size) is reported as invalid instead of crashing this command.
    /// Exits 0 when valid, 1 when not.
    Validate {
        /// Model directory holding model.json and model.pt.
        dir: PathBuf,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
        /// Give up on the probe after this many seconds.
        #[arg(long, default_value_t = 120)]
        timeout_secs: u64,
    },
    /// Print a model's metadata (model.json) after loading and checking it.
    Show {
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Validate a model directory, upload it to the S3 registry as a new version, and make it live.
    ///
    /// Uploads NAME/VERSION/model.pt then model.json (VERSION from model.json; versions are
    /// immutable), then points the `live` alias at it unless --no-promote.
    Publish {
        /// Model directory holding model.json and model.pt.
        dir: PathBuf,
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
        /// Upload without making the version live.
        #[arg(long)]
        no_promote: bool,
    },
    /// List a registry's published versions and which one is live.
    List {
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
    },
    /// Make a published version live (the previous one stays in the alias history).
    Promote {
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
        /// The published version to make live.
        #[arg(value_name = "VERSION")]
        target_version: String,
    },
    /// Move the live alias back to the version that was live before the current one.
    Rollback {
        /// Registry: s3://BUCKET/models/NAME.
        registry: String,
    },
    /// Internal: the child process of `model validate`. Prints one JSON line per check.
    #[command(hide = true)]
    Probe { dir: PathBuf },
}

fn main() -> std::process::ExitCode {
    lstm_forecast::model::footprint::limit_onednn_kernel_cache();
    // Lambda's provided.al2023 runtime executes `bootstrap` with no arguments.
    let invoked_as_bootstrap = std::env::args_os()
        .next()
        .map(|arg0| {
            PathBuf::from(arg0)
                .file_name()
                .is_some_and(|n| n == "bootstrap")
        })
        .unwrap_or(false);
    let cli = if invoked_as_bootstrap {
        Cli::parse_from(["lstm-forecast", "lambda"])
    } else {
        Cli::parse()
    };
    let log_format = cli.log_format;
    init_tracing(log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            // Once, in the form its reader expects: a structured event for a log pipeline, a
            // plain line for a person (the text log would only repeat it with a timestamp).
            match log_format {
                LogFormat::Json => tracing::error!("{e:#}"),
                LogFormat::Text => eprintln!("error: {e:#}"),
            }
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_tracing(format: LogFormat) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("RUST_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

fn run(command: Command) -> anyhow::Result<std::process::ExitCode> {
    match command {
        Command::Serve(args) => serve(args)?,
        Command::Forecast(args) => forecast(args)?,
        Command::Model(ModelCommand::Validate {
            dir,
            json,
            timeout_secs,
        }) => return validate(dir, json, timeout_secs),
        Command::Model(ModelCommand::Show { model }) => {
            let model = load_model(&model, Workload::OneAtATime)?;
            println!("{}", serde_json::to_string_pretty(model.metadata())?);
        }
        Command::Model(ModelCommand::Publish {
            dir,
            registry,
            no_promote,
        }) => return publish(dir, &registry, !no_promote),
        Command::Model(ModelCommand::List { registry }) => {
            let registry = open_registry(&registry)?;
            runtime()?.block_on(async {
                let live = registry.read_alias().await?.map(|(alias, _)| alias);
                for version in registry.list_versions().await? {
                    let marker = if live.as_ref().is_some_and(|a| a.version == version) {
                        "  (live)"
                    } else {
                        ""
                    };
                    println!("{version}{marker}");
                }
                if let Some(alias) = live {
                    println!("live history: {}", alias.history.join(" -> "));
                }
                anyhow::Ok(())
            })?;
        }
        Command::Model(ModelCommand::Promote {
            registry,
            target_version: version,
        }) => {
            let registry = open_registry(&registry)?;
            let previous = runtime()?.block_on(registry.promote(&version))?;
            match previous {
                Some(p) if p == version => println!("{version} is already live"),
                Some(p) => println!("{version} is live (was {p})"),
                None => println!("{version} is live"),
            }
        }
        Command::Model(ModelCommand::Rollback { registry }) => {
            let registry = open_registry(&registry)?;
            let trigger = format!("cli@{}", chrono::Utc::now().to_rfc3339());
            match runtime()?.block_on(registry.rollback(&trigger))? {
                RollbackOutcome::RolledBack { from, to }
                | RollbackOutcome::AlreadyApplied { from, to } => {
                    println!("rolled back: {to} is live (was {from})")
                }
            }
        }
        Command::Lambda(args) => return run_lambda(args),
        Command::Evaluate(args) => evaluate(args)?,
        Command::Model(ModelCommand::Probe { dir }) => {
            configure_libtorch(None, Workload::OneAtATime);
            let artifacts = DirectorySource::new(&dir).read()?;
            let ok = run_probe(&artifacts, &mut std::io::stdout().lock());
            return Ok(if ok {
                std::process::ExitCode::SUCCESS
            } else {
                std::process::ExitCode::FAILURE
            });
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Fetches, checks, loads and warms up a model, logging where the time went.
fn load_model(args: &ModelArgs, workload: Workload) -> anyhow::Result<Model> {
    let started = Instant::now();
    let threads = configure_libtorch(args.threads, workload);
    let uri = ModelUri::parse(&args.model)?;
    let runtime = runtime()?;
    let source = runtime.block_on(open_source(&uri));
    let artifacts = runtime
        .block_on(source.fetch())
        .with_context(|| format!("fetching the model from {}", source.describe()))?;
    let fetched = started.elapsed();
    let model = Model::load_unwarmed(&artifacts)
        .with_context(|| format!("loading the model from {}", source.describe()))?;
    let loaded = started.elapsed();
    model
        .warm_up()
        .with_context(|| format!("warming up the model from {}", source.describe()))?;
    let metadata = model.metadata();
    tracing::info!(
        model = %metadata.name,
        model_version = %metadata.version,
        source = %source.describe(),
        threads,
        fetch_ms = fetched.as_secs_f64() * 1e3,
        load_ms = (loaded - fetched).as_secs_f64() * 1e3,
        total_ms = started.elapsed().as_secs_f64() * 1e3,
        "model loaded and warmed up"
    );
    Ok(model)
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let model = load_model(&args.model, Workload::Serving)?;
    let limits = Limits {
        max_body_bytes: args.max_body_bytes,
        max_series: args.max_series,
    };
    let batching = lstm_forecast::infer::Batching {
        max_batch_series: args.max_batch_size.max(1),
        max_delay: Duration::from_millis(args.max_batch_delay_ms),
    };
    let cpus = available_cpus();
    let engine_workers = args
        .engine_workers
        .unwrap_or_else(|| default_engine_workers(cpus))
        .max(1);
    let intra_op_threads = configured_intra_op_threads().max(1);
    if let Some(warning) = oversubscription_warning(engine_workers, intra_op_threads, cpus) {
        tracing::warn!("{warning}");
    }
    tracing::info!(
        engine_workers,
        intra_op_threads,
        max_batch_size = batching.max_batch_series,
        "starting the engine threads"
    );
    let (handle, engine_thread) =
        InferenceHandle::spawn_with(model, args.max_queue, batching, engine_workers);
    let follow_alias = match ModelUri::parse(&args.model.model)? {
        ModelUri::S3(model) if model.version.is_none() && args.reload_interval_seconds > 0 => {
            Some(model)
        }
        _ => None,
    };
    let server_metrics = ServerMetrics::new();
    let runtime = runtime()?;
    runtime.block_on(async move {
        let kinds = if args.metrics.metrics_sinks.is_empty() {
            vec![SinkKind::Prometheus]
        } else {
            args.metrics.metrics_sinks.clone()
        };
        let uses_aws = kinds.contains(&SinkKind::CloudWatch)
            || args.accuracy.forecast_log.is_some()
            || follow_alias.is_some();
        let sdk_config = if uses_aws {
            lstm_forecast::aws::sdk_config().await
        } else {
            lstm_forecast::aws::offline_config()
        };
        let (sinks, _) = lstm_forecast::metrics::build_sinks(
            &kinds,
            &args.metrics.metrics_namespace,
            &server_metrics,
            &sdk_config,
        );
        let model = handle.model();
        let telemetry = Telemetry::new(
            sinks,
            &model.metadata().name,
            &model.metadata().version,
            args.metrics.stage.as_deref(),
        );
        drop(model);
        let forecast_log = match &args.accuracy.forecast_log {
            Some(uri) => Some(std::sync::Arc::new(ForecastLog::new(AccuracyStore::new(
                lstm_forecast::aws::s3_client(&sdk_config),
                uri,
            )?))),
            None => None,
        };
        let monitoring = Monitoring {
            telemetry: telemetry.clone(),
            forecast_log: forecast_log.clone(),
            backtest_rate: args.accuracy.backtest_rate,
        };
        let state = AppState::with_monitoring(handle, server_metrics, limits, monitoring);
        let (stop_background, background_stopped) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = background_stopped.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        if let Some(model) = follow_alias {
            let registry = Registry::new(lstm_forecast::aws::s3_client(&sdk_config), model);
            tokio::spawn(lstm_forecast::reload::watch_alias(
                registry,
                state.clone(),
                Duration::from_secs(args.reload_interval_seconds),
                stopped(),
            ));
        }
        // Push sinks and the forecast log ship on a period and once more at shutdown.
        let flush_period = Duration::from_secs(args.metrics.metrics_flush_seconds.max(1));
        let background = tokio::spawn({
            let telemetry = telemetry.clone();
            let forecast_log = forecast_log.clone();
            let shutdown = stopped();
            async move {
                tokio::pin!(shutdown);
                let mut ticker = tokio::time::interval(flush_period);
                ticker.tick().await;
                loop {
                    let stop = tokio::select! {
                        _ = &mut shutdown => true,
                        _ = ticker.tick() => false,
                    };
                    telemetry.record_process_memory();
                    if let Some(log) = &forecast_log {
                        log.flush().await;
                    }
                    telemetry.flush().await;
                    if stop {
                        break;
                    }
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("binding {}", args.bind))?;
        let address = listener.local_addr()?;
        let model = state.handle().model();
        tracing::info!(
            model = %model.metadata().name,
            model_version = %model.metadata().version,
            "listening on http://{address}  (try: curl -s http://{address}/v1/model)"
        );
        drop(model);
        lstm_forecast::model::footprint::release_libtorch_startup_pages_in_background();
        let served = http::serve(listener, state, http::shutdown_signal())
            .await
            .context("serving HTTP");
        let _ = stop_background.send(true);
        let _ = background.await;
        tracing::info!("metrics and forecast log flushed");
        served
    })?;
    // The state (and so the last job sender) is gone: the engine threads drain the queue and exit.
    let _ = engine_thread.join();
    tracing::info!("stopped");
    Ok(())
}

fn forecast(args: ForecastArgs) -> anyhow::Result<()> {
    let content = if args.input.as_os_str() == "-" {
        let mut buffer = Vec::new();
        std::io::Read::read_to_end(&mut std::io::stdin(), &mut buffer)
            .context("reading standard input")?;
        buffer
    } else {
        std::fs::read(&args.input).with_context(|| format!("reading {}", args.input.display()))?
    };
    let format = match args.format {
        Some(FormatArg::Csv) => InputFormat::Csv,
        Some(FormatArg::Json) => InputFormat::Json,
        Some(FormatArg::Jsonl) => InputFormat::JsonLines,
        None => InputFormat::detect(&args.input.to_string_lossy(), &content),
    };
    let model = load_model(&args.model, Workload::OneAtATime)?;
    let shape = RequestShape::new(model.metadata(), args.max_series);
    let series = parse_input(format, &content, &shape)
        .with_context(|| format!("reading {}", args.input.display()))?;
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
    // A file of many series takes minutes; one forward pass does not need a bar. indicatif draws
    // nothing when stderr is not a terminal, so piped and CI runs stay clean.
    let progress = if series.len() > args.batch_size {
        indicatif::ProgressBar::new(series.len() as u64).with_style(
            indicatif::ProgressStyle::with_template(
                "forecasting {bar:30} {pos}/{len} series, {eta} left",
            )
            .expect("a valid template"),
        )
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut outputs = Vec::with_capacity(series.len());
    for chunk in series.chunks(args.batch_size) {
        let windows: Vec<&[f64]> = chunk.iter().map(|s| s.values.as_slice()).collect();
        outputs.extend(model.forecast(&windows)?);
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let response = ForecastResponse::new(model.metadata(), &series, outputs);
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &response)?;
    writeln!(stdout)?;
    Ok(())
}

fn validate(dir: PathBuf, json: bool, timeout_secs: u64) -> anyhow::Result<std::process::ExitCode> {
    let exe = std::env::current_exe().context("locating this executable for the probe process")?;
    let report = validate_dir(&exe, &dir, Duration::from_secs(timeout_secs));
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{}: {}",
            dir.display(),
            report.model.as_deref().unwrap_or("(unreadable)")
        );
        for check in &report.checks {
            println!(
                "  {} {:<9} {}",
                if check.ok { "ok  " } else { "FAIL" },
                check.name,
                check.detail
            );
        }
        println!("{}", if report.valid { "valid" } else { "INVALID" });
    }
    Ok(if report.valid {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}

fn open_registry(uri: &str) -> anyhow::Result<Registry> {
    let model = RegistryRef::parse(uri)?;
    if model.version.is_some() {
        bail!("`{uri}` names a version; registry commands take s3://BUCKET/models/NAME");
    }
    let config = runtime()?.block_on(lstm_forecast::aws::sdk_config());
    Ok(Registry::new(lstm_forecast::aws::s3_client(&config), model))
}

fn publish(dir: PathBuf, registry: &str, promote: bool) -> anyhow::Result<std::process::ExitCode> {
    let registry = open_registry(registry)?;
    eprintln!("validating {} ...", dir.display());
    let exe = std::env::current_exe().context("locating this executable for the probe process")?;
    let report = validate_dir(&exe, &dir, Duration::from_secs(120));
    if !report.valid {
        let failed: Vec<String> = report
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: {}", c.name, c.detail))
            .collect();
        bail!(
            "{} is not valid, nothing was uploaded: {}",
            dir.display(),
            failed.join("; ")
        );
    }
    let artifacts = DirectorySource::new(&dir).read()?;
    let total = (artifacts.model_pt.len() + artifacts.metadata_json.len()) as u64;
    let bar = indicatif::ProgressBar::new(total).with_style(
        indicatif::ProgressStyle::with_template("uploading {bar:30} {bytes}/{total_bytes} {msg}")
            .expect("valid template"),
    );
    let runtime = runtime()?;
    let version = runtime.block_on(registry.publish(&artifacts, &|done| bar.set_position(done)))?;
    bar.finish_with_message(format!("{}/{version}", registry.model.root_uri()));
    if promote {
        let previous = runtime.block_on(registry.promote(&version))?;
        match previous {
            Some(p) => println!("published {version}; live (was {p})"),
            None => println!("published {version}; live"),
        }
    } else {
        println!("published {version} (not live; `lstm-forecast model promote` makes it live)");
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn run_lambda(args: LambdaArgs) -> anyhow::Result<std::process::ExitCode> {
    // API Gateway REST puts the stage in the path (`/prod/v1/forecast`); the routes are stage-free,
    // exactly as `serve` exposes them. Set before any thread exists, so the write cannot race.
    if std::env::var_os("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH").is_none() {
        std::env::set_var("AWS_LAMBDA_HTTP_IGNORE_STAGE_IN_PATH", "true");
    }
    let config = LambdaConfig {
        model_uri: ModelUri::parse(&args.model.model)?,
        rollback_alarms: args
            .rollback_alarms
            .into_iter()
            .filter(|a| !a.trim().is_empty())
            .collect(),
        threads: args.model.threads,
        limits: Limits::default(),
        alias_check_interval: Duration::from_secs(args.alias_check_seconds),
        metrics_namespace: args.metrics.metrics_namespace,
        metrics_sinks: if args.metrics.metrics_sinks.is_empty() {
            vec![SinkKind::Emf]
        } else {
            args.metrics.metrics_sinks
        },
        stage: args.metrics.stage,
        forecast_log_uri: args.accuracy.forecast_log,
        backtest_rate: args.accuracy.backtest_rate,
        evaluation_grace: Duration::from_secs(args.grace_minutes * 60),
    };
    let runtime = runtime()?;
    let app = match runtime.block_on(lambda::init(config)) {
        Ok((app, _timings)) => app,
        Err(e) => {
            let kind = match e {
                lambda::InitError::Fetch { .. } => "ModelFetchFailed",
                lambda::InitError::Load { .. } => "ModelLoadFailed",
                lambda::InitError::Config(_) => "InvalidConfiguration",
            };
            tracing::error!(error_type = kind, "init failed: {e}");
            lambda::report_init_error(kind, &e.to_string());
            eprintln!("error: init failed: {e}");
            return Ok(std::process::ExitCode::FAILURE);
        }
    };
    runtime
        .block_on(lambda::run(app))
        .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))?;
    Ok(std::process::ExitCode::SUCCESS)
}

fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    let runtime = runtime()?;
    runtime.block_on(async move {
        let sdk_config = lstm_forecast::aws::sdk_config().await;
        let store = AccuracyStore::new(lstm_forecast::aws::s3_client(&sdk_config), &args.store)?;
        let kinds = if args.metrics.metrics_sinks.is_empty() {
            vec![SinkKind::CloudWatch]
        } else {
            args.metrics.metrics_sinks.clone()
        };
        let server_metrics = ServerMetrics::new();
        let (sinks, cloudwatch) = lstm_forecast::metrics::build_sinks(
            &kinds,
            &args.metrics.metrics_namespace,
            &server_metrics,
            &sdk_config,
        );
        let telemetry = Telemetry::new(sinks, "", "", args.metrics.stage.as_deref());
        let run = lstm_forecast::monitor::evaluate::run_evaluation(
            &store,
            &telemetry,
            chrono::Utc::now(),
            chrono::Duration::minutes(args.grace_minutes),
        )
        .await?;
        telemetry.flush().await;
        if let Some(sink) = cloudwatch {
            if sink.pending() > 0 {
                tracing::warn!(
                    pending = sink.pending(),
                    "some accuracy metrics could not be sent to CloudWatch"
                );
            }
        }
        println!("{}", serde_json::to_string_pretty(&run)?);
        anyhow::Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
