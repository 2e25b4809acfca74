//! `lstm-forecast evaluate`: one accuracy evaluation, from a scheduler other than Lambda's.

use lstm_forecast::aws::AwsClients;
use lstm_forecast::metrics::{SinkKind, Telemetry};
use lstm_forecast::monitor::evaluate::{EvaluationWindow, Recalibration};
use lstm_forecast::monitor::store::AccuracyStore;
use lstm_forecast::service::build::build_sinks;

use super::args::EvaluateArgs;
use super::runtime;

pub fn evaluate(args: EvaluateArgs) -> anyhow::Result<()> {
    lstm_forecast::forecast::check_interval_levels(&args.interval_levels)
        .map_err(|e| anyhow::anyhow!(e.message.replace("`intervals", "`--interval-levels")))?;
    runtime()?.block_on(async move {
        let clients = AwsClients::load(args.aws.aws_endpoint_url.as_deref()).await;
        let store = AccuracyStore::new(clients.s3().clone(), &args.store)?
            .with_shards(args.forecast_log_shards)?;
        let config = args.metrics.config(&[SinkKind::CloudWatch], false);
        let (sinks, cloudwatch) = build_sinks(&config, &clients);
        // Scores carry each forecast's own model and version, not a current one.
        let telemetry = Telemetry::new(sinks, "", "", config.stage.as_deref());
        let run = lstm_forecast::monitor::evaluate::run_evaluation_with(
            &store,
            &telemetry,
            chrono::Utc::now(),
            EvaluationWindow {
                span: chrono::Duration::hours(args.span_hours),
                grace: chrono::Duration::minutes(args.grace_minutes),
                settle: EvaluationWindow::SETTLE,
            },
            &Recalibration {
                window: args.recalibration_window as usize,
                levels: args.interval_levels,
            },
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
