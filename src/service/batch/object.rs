//! The scheduled `batch-forecast`: one object of series in, one JSON Lines object out.

use std::time::Instant;

use serde::Serialize;

use super::config::{BatchConfig, Side};
use crate::input::{parse_input, InputFormat};
use crate::metrics::Metric;
use crate::objects::{Precondition, S3Objects};
use crate::service::jobs::JobError;
use crate::service::Service;

/// What a batch forecast wrote.
#[derive(Debug, Clone, Serialize)]
pub struct BatchForecastSummary {
    pub action: &'static str,
    pub series: usize,
    pub input: String,
    pub output: String,
    pub model_version: String,
}

/// Reads series from `input` (CSV or JSON Lines), forecasts them in chunks of the service's
/// `max_series`, and writes one JSON Lines object to `output`.
pub async fn batch_forecast(
    service: &Service,
    s3: &aws_sdk_s3::Client,
    config: &BatchConfig,
    (input, output): (&str, &str),
    intervals: &[f64],
    request_id: &str,
) -> Result<BatchForecastSummary, JobError> {
    config.confine(input, Side::Input)?;
    config.confine(output, Side::Output)?;
    let started = Instant::now();
    service
        .check_intervals(intervals)
        .map_err(|e| JobError::InvalidInput(e.message))?;
    let (in_bucket, in_key) = crate::aws::parse_s3_url(input)
        .ok_or_else(|| JobError::InvalidInput(format!("input `{input}` is not an s3:// URL")))?;
    let (out_bucket, out_key) = crate::aws::parse_s3_url(output)
        .ok_or_else(|| JobError::InvalidInput(format!("output `{output}` is not an s3:// URL")))?;
    let content = S3Objects::new(s3.clone(), in_bucket)
        .get(&in_key)
        .await
        .map_err(|e| JobError::object("reading", input, e))?
        .bytes;
    let format = match InputFormat::detect(&in_key, &content) {
        InputFormat::Json if !in_key.ends_with(".json") => InputFormat::JsonLines,
        other => other,
    };
    let shape = service.request_shape(1_000_000);
    let series = parse_input(format, &content, &shape)
        .map_err(|e| JobError::InvalidInput(format!("{input}: {e}")))?;
    let mut lines = Vec::new();
    let mut model_version = service.model().metadata().version.clone();
    for chunk in series.chunks(service.limits().max_series.max(1)) {
        let response = service
            .forecast_with_intervals(chunk.to_vec(), intervals, Some(request_id))
            .await
            .map_err(|e| JobError::ForecastFailed(e.to_string()))?;
        model_version.clone_from(&response.model.version);
        super::stream::forecast_lines(&response, &mut lines);
    }
    S3Objects::new(s3.clone(), out_bucket)
        .put(&out_key, lines, "application/x-ndjson", Precondition::None)
        .await
        .map_err(|e| JobError::object("writing", output, e))?;
    service
        .telemetry()
        .record(Metric::BatchSeries, series.len() as f64);
    tracing::info!(
        series = series.len(),
        input,
        output,
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "batch forecast written"
    );
    Ok(BatchForecastSummary {
        action: "batch-forecast",
        series: series.len(),
        input: input.to_string(),
        output: output.to_string(),
        model_version,
    })
}
