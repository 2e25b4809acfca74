//! `lstm-forecast batch`: the scheduled batch forecast, run from the command line.

use anyhow::Context;

use lstm_forecast::model::engine::Workload;
use lstm_forecast::service::batch::{batch_forecast, BatchConfig};
use lstm_forecast::service::build::Composed;

use super::args::BatchArgs;
use super::{aws_clients, compose_one_off, load_model, runtime};

pub fn batch(args: BatchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let (Some(input_bucket), Some(output_bucket)) =
        (bucket_of(&args.input), bucket_of(&args.output))
    else {
        anyhow::bail!(
            "--input `{}` and --output `{}` must both be s3://BUCKET/KEY URIs (for a local file: lstm-forecast forecast)",
            args.input,
            args.output
        );
    };
    let model = load_model(&args.model, Workload::OneAtATime)?;
    let runtime = runtime()?;
    let clients = runtime.block_on(aws_clients(&args.model.aws, true));
    let Composed {
        service, engine, ..
    } = compose_one_off(
        model,
        args.batch_size,
        args.metrics.config(&[], true),
        &clients,
    )?;
    // Whoever runs the command may read and write where their credentials let them: the job is
    // confined to the buckets it names, as a scheduled event is to its configured prefixes.
    let batch = BatchConfig {
        input_prefix: Some(input_bucket),
        output_prefix: Some(output_bucket),
        ..BatchConfig::default()
    };
    let request_id = format!("cli-{}", std::process::id());
    let written = runtime.block_on(async {
        let s3 = clients.s3().current();
        let io = (args.input.as_str(), args.output.as_str());
        let written = batch_forecast(&service, &s3, &batch, io, &args.intervals, &request_id).await;
        service.telemetry().flush().await;
        written
    });
    drop(service);
    let _ = engine.join();
    let written = written.with_context(|| format!("batch forecast of {}", args.input))?;
    println!("{}", serde_json::to_string_pretty(&written)?);
    Ok(())
}

/// `s3://BUCKET/` of an `s3://BUCKET/KEY` URI.
fn bucket_of(uri: &str) -> Option<String> {
    let rest = uri.strip_prefix("s3://")?;
    let bucket = rest.split('/').next().filter(|b| !b.is_empty())?;
    Some(format!("s3://{bucket}/"))
}
