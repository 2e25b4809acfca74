//! `lstm-forecast forecast`: a file's series through the service core, printed as JSON.

use std::io::Write;

use anyhow::{bail, Context};

use lstm_forecast::forecast::ForecastResponse;
use lstm_forecast::input::{parse_input, InputFormat};
use lstm_forecast::model::engine::Workload;
use lstm_forecast::service::build::Composed;

use super::args::{ForecastArgs, FormatArg};
use super::{aws_clients, compose_one_off, load_model, runtime};

pub fn forecast(args: ForecastArgs) -> anyhow::Result<()> {
    if args.batch_size == 0 {
        bail!("--batch-size must be at least 1");
    }
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
    let runtime = runtime()?;
    let metrics = args.metrics.config(&[], true);
    let clients = runtime.block_on(aws_clients(&args.model.aws, metrics.uses_aws()));
    let Composed {
        service, engine, ..
    } = compose_one_off(model, args.batch_size, metrics, &clients)?;
    service
        .check_intervals(&args.intervals)
        .map_err(|e| anyhow::anyhow!(e.message.replace("`intervals", "`--intervals")))?;
    let series = parse_input(format, &content, &service.request_shape(args.max_series))
        .with_context(|| format!("reading {}", args.input.display()))?;
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
    let mut response: Option<ForecastResponse> = None;
    for chunk in series.chunks(args.batch_size) {
        let answer = runtime.block_on(service.forecast_with_intervals(
            chunk.to_vec(),
            &args.intervals,
            None,
        ))?;
        match &mut response {
            Some(all) => all.forecasts.extend(answer.forecasts),
            None => response = Some(answer),
        }
        progress.inc(chunk.len() as u64);
    }
    progress.finish_and_clear();
    let response = response
        .unwrap_or_else(|| ForecastResponse::new(service.model().metadata(), &[], Vec::new()));
    runtime.block_on(service.telemetry().flush());
    drop(service);
    let _ = engine.join();
    let mut stdout = std::io::stdout().lock();
    serde_json::to_writer_pretty(&mut stdout, &response)?;
    writeln!(stdout)?;
    Ok(())
}
