//! `lstm-forecast evaluate`: one accuracy evaluation, from a scheduler other than Lambda's: the
//! whole run in this process, or one of its steps (plan, partition, reduce) for a scheduler
//! that fans it out.

use lstm_forecast::aws::AwsClients;
use lstm_forecast::metrics::process::{peak_resident_set_bytes, resident_set_bytes};
use lstm_forecast::metrics::{SinkKind, Telemetry};
use lstm_forecast::monitor::evaluate::{
    evaluate_partition, plan_run, reduce_run, run_evaluation_with, EvaluationWindow, Recalibration,
};
use lstm_forecast::monitor::store::AccuracyStore;
use lstm_forecast::service::build::build_sinks;
use serde_json::json;

use super::args::{EvaluateArgs, EvaluateStep};
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
        let window = EvaluationWindow {
            span: chrono::Duration::hours(args.span_hours),
            grace: chrono::Duration::minutes(args.grace_minutes),
            settle: EvaluationWindow::SETTLE,
        };
        let recalibration = Recalibration {
            window: args.recalibration_window as usize,
            levels: args.interval_levels,
        };
        let now = chrono::Utc::now();
        let answer = match args.step {
            None => {
                let run =
                    run_evaluation_with(&store, &telemetry, now, window, &recalibration).await?;
                let mut answer = serde_json::to_value(&run)?;
                answer["peak_rss_bytes"] = json!(peak_resident_set_bytes());
                answer
            }
            Some(EvaluateStep::Plan { partitions }) => serde_json::to_value(
                plan_run(&store, now, window, &recalibration, partitions).await?,
            )?,
            Some(EvaluateStep::Partition { run, first, end }) => {
                let rss_before_bytes = resident_set_bytes();
                let pairs = evaluate_partition(&store, run, first..end).await?;
                json!({"run": run, "first": first, "end": end, "pairs": pairs,
                       "rss_before_bytes": rss_before_bytes,
                       "peak_rss_bytes": peak_resident_set_bytes()})
            }
            Some(EvaluateStep::Reduce { run }) => {
                serde_json::to_value(reduce_run(&store, &telemetry, run).await?)?
            }
        };
        telemetry.flush().await;
        if let Some(sink) = cloudwatch {
            if sink.pending() > 0 {
                tracing::warn!(
                    pending = sink.pending(),
                    "some accuracy metrics could not be sent to CloudWatch"
                );
            }
        }
        println!("{}", serde_json::to_string_pretty(&answer)?);
        anyhow::Ok(())
    })
}
