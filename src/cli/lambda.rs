//! `lstm-forecast lambda` (and the binary run as `bootstrap`): the AWS Lambda function.

use std::process::ExitCode;
use std::time::Duration;

use lstm_forecast::lambda::{self, LambdaConfig};
use lstm_forecast::metrics::SinkKind;
use lstm_forecast::monitor::evaluate::Recalibration;
use lstm_forecast::service::batch::BatchConfig;
use lstm_forecast::service::build::{ModelLocation, ServiceConfig};
use lstm_forecast::service::jobs::EvaluationConfig;
use lstm_forecast::service::rollback::RollbackPolicy;
use lstm_forecast::source::ModelUri;

use super::args::{LambdaArgs, LogDeliveryArg};
use super::runtime;
use lstm_forecast::monitor::store::LogDelivery;

/// What the Lambda runtime reads from its environment (its client panics on a missing one):
/// outside Lambda, this command stops first with their names.
const LAMBDA_ENVIRONMENT: [&str; 4] = [
    "AWS_LAMBDA_RUNTIME_API",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
];

pub fn run(args: LambdaArgs) -> anyhow::Result<ExitCode> {
    let missing: Vec<&str> = LAMBDA_ENVIRONMENT
        .into_iter()
        .filter(|name| std::env::var_os(name).is_none())
        .collect();
    if !missing.is_empty() {
        anyhow::bail!(
            "not running in AWS Lambda: {} not set (the Lambda service sets them; `cargo lambda watch` or the Runtime API emulator does locally)",
            missing.join(", ")
        );
    }
    lstm_forecast::forecast::check_interval_levels(&args.interval_levels)
        .map_err(|e| anyhow::anyhow!(e.message.replace("`intervals", "`--interval-levels")))?;
    if (args.batch_part_bytes as usize) < lstm_forecast::service::batch::MIN_PART_BYTES {
        tracing::warn!(
            batch_part_bytes = args.batch_part_bytes,
            "BATCH_PART_BYTES is under S3's 5 MiB minimum part: only an emulator set up for smaller parts completes such uploads"
        );
    }
    let challenge = args.decisions.policy()?;
    let service = ServiceConfig {
        forecast_log_uri: args.accuracy.forecast_log,
        forecast_log_shards: args.accuracy.forecast_log_shards,
        forecast_log_delivery: LogDeliveryArg::or(
            args.accuracy.forecast_log_delivery,
            LogDelivery::LogLines,
        ),
        backtest_rate: args.accuracy.backtest_rate,
        sampling_seed: args.accuracy.sampling_seed,
        ..ServiceConfig::one_at_a_time(args.metrics.config(&[SinkKind::Emf], false))
    };
    let config = LambdaConfig {
        model: ModelLocation {
            uri: ModelUri::parse(&args.model.model)?,
            cache_dir: args.model.model_cache_dir,
        },
        aws_endpoint_url: args.model.aws.aws_endpoint_url,
        threads: args.model.threads,
        service,
        batch: BatchConfig {
            input_prefix: args.batch_input_prefix,
            output_prefix: args.batch_output_prefix,
            part_bytes: args.batch_part_bytes as usize,
        },
        evaluation: EvaluationConfig {
            grace: Duration::from_secs(args.grace_minutes * 60),
            recalibration: Recalibration {
                window: args.recalibration_window as usize,
                levels: args.interval_levels,
            },
            challenge: challenge.clone(),
        },
        rollback: RollbackPolicy {
            alarms: args
                .rollback_alarms
                .into_iter()
                .filter(|a| !a.trim().is_empty())
                .collect(),
            wape_threshold: args.rollback_wape_threshold,
            min_pairs: args.rollback_min_pairs,
            cooldown: Duration::from_secs(args.rollback_cooldown_minutes * 60),
            comparison: challenge.rule,
        },
        alias_check_interval: Duration::from_secs(args.alias_check_seconds),
    };
    let runtime = runtime()?;
    let app = match runtime.block_on(lambda::init(config)) {
        Ok((app, _report)) => app,
        Err(e) => {
            tracing::error!(error_type = e.kind(), "init failed: {e}");
            if let Err(report) = runtime.block_on(lambda::report_init_error(&e)) {
                tracing::warn!("could not report the init error to the Runtime API: {report}");
            }
            eprintln!("error: init failed: {e}");
            return Ok(ExitCode::FAILURE);
        }
    };
    runtime
        .block_on(lambda::run(app))
        .map_err(|e| anyhow::anyhow!("lambda runtime: {e}"))?;
    Ok(ExitCode::SUCCESS)
}
