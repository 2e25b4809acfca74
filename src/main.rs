//! The `lstm-forecast` command line: parses, then hands each command to its module in `cli/`.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

use cli::args::{
    BatchArgs, EvaluateArgs, ForecastArgs, LambdaArgs, ModelCommand, ProbeArgs, ServeArgs,
};

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

    /// The model publisher's public key (EC P-256, PEM text or a file holding it). When set, every
    /// model this process loads must carry a `model.sig` (OpenSSF model-signing, `model_signing
    /// sign key`) made with the matching private key over every file it loads: a missing, foreign
    /// or mismatched signature refuses the model, by name, before libtorch sees a byte of it.
    #[arg(long, env = "MODEL_VERIFY_KEY", global = true, hide_env_values = true)]
    model_verify_key: Option<String>,

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
    /// Endpoints: POST /v1/forecast, POST /v1/observations, GET /v1/model, the Open Inference
    /// Protocol v2 under /v2 (tritonclient, KServe), GET /openapi.json, GET /healthz, GET /readyz,
    /// GET /metrics.
    /// Stops gracefully on SIGTERM or ctrl-c: in-flight requests finish first.
    Serve(ServeArgs),
    /// Forecast the series in a CSV or JSON file and print the answer as JSON, without a server.
    ///
    /// CSV: a header naming the model's features (e.g. `OT`), optional `id` and `date`/`timestamp`
    /// columns; each series uses its last `window` rows. JSON: the body of POST /v1/forecast.
    Forecast(ForecastArgs),
    /// Forecast the series in an S3 object into another, as the scheduled `batch-forecast` does.
    ///
    /// The same job as the Lambda function's: the input is read whole, forecast in batches of
    /// --batch-size series, and written as JSON Lines (id, values, timestamps, model). Needs AWS
    /// credentials, or --aws-endpoint-url for an emulator.
    Batch(BatchArgs),
    /// Inspect, check and publish models (local directories and the S3 registry).
    #[command(subcommand)]
    Model(ModelCommand),
    /// Score logged forecasts against actuals and publish the accuracy metrics and a report.
    ///
    /// Reads the actuals that arrived under FORECAST_LOG_URI since the last evaluation
    /// (POST /v1/observations, or JSON Lines / CSV files dropped under PREFIX/actuals/arrival=HOUR/),
    /// joins them with the forecasts logged there on (series id, target time), each pair once;
    /// pushes
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
    /// GET a URL and exit 0 on a 2xx answer: a container health check for an image without curl.
    ///
    /// Default: http://127.0.0.1:8080/readyz, ready once the model is loaded and the engine runs
    /// (Docker Swarm and Compose `healthcheck: test: ["CMD", "lstm-forecast", "probe"]`).
    Probe(ProbeArgs),
    /// Print the OpenAPI 3.1 document of the HTTP API (/v1, the Open Inference Protocol v2 under
    /// /v2, and the probes) on stdout: what `GET /openapi.json` serves, for client generators,
    /// API gateways and API testers, without a running server.
    Openapi,
}

fn main() -> ExitCode {
    let onednn_warning = lstm_forecast::model::footprint::limit_onednn_kernel_cache();
    // Lambda's provided.al2023 runtime executes `bootstrap` with no arguments.
    let invoked_as_bootstrap = std::env::args_os()
        .next()
        .map(|arg0| {
            PathBuf::from(arg0)
                .file_name()
                .is_some_and(|n| n == "bootstrap")
        })
        .unwrap_or(false);
    // With arguments it is a command as any other: the probe child a follower starts is this
    // same executable, `bootstrap model probe DIR` in Lambda.
    let cli = if invoked_as_bootstrap && std::env::args_os().len() == 1 {
        Cli::parse_from(["lstm-forecast", "lambda"])
    } else {
        Cli::parse()
    };
    let log_format = cli.log_format;
    init_tracing(log_format);
    if let Some(warning) = onednn_warning {
        tracing::warn!("{warning}");
    }
    let outcome =
        require_signed_models(cli.model_verify_key.as_deref()).and_then(|()| run(cli.command));
    match outcome {
        Ok(code) => code,
        Err(e) => {
            // Once, in the form its reader expects: a structured event for a log pipeline, a
            // plain line for a person (the text log would only repeat it with a timestamp).
            match log_format {
                LogFormat::Json => tracing::error!("{e:#}"),
                LogFormat::Text => eprintln!("error: {e:#}"),
            }
            ExitCode::FAILURE
        }
    }
}

/// With a verification key, every model load in this process verifies its signature (and the
/// probe child a command starts inherits the key through the environment).
fn require_signed_models(key: Option<&str>) -> anyhow::Result<()> {
    let Some(key) = key.map(str::trim).filter(|k| !k.is_empty()) else {
        return Ok(());
    };
    let pem = if key.starts_with("-----BEGIN") {
        key.to_string()
    } else {
        std::fs::read_to_string(key).map_err(|e| {
            anyhow::anyhow!(
                "MODEL_VERIFY_KEY `{key}` is neither a PEM key nor a readable file: {e}"
            )
        })?
    };
    let verifier = lstm_forecast::model::signature::ModelVerifier::from_pem(&pem)?;
    lstm_forecast::model::signature::require_signatures(verifier);
    Ok(())
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

fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(args) => cli::serve::serve(args)?,
        Command::Forecast(args) => cli::forecast::forecast(args)?,
        Command::Model(command) => return cli::model::run(command),
        Command::Evaluate(args) => cli::evaluate::evaluate(args)?,
        Command::Batch(args) => cli::batch::batch(args)?,
        Command::Lambda(args) => return cli::lambda::run(args),
        Command::Probe(args) => cli::probe::probe(args)?,
        Command::Openapi => print!("{}", lstm_forecast::http::openapi_document()),
    }
    Ok(ExitCode::SUCCESS)
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
