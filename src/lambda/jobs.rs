//! The scheduled jobs: batch forecasts from S3 to S3, and accuracy evaluation.
//!
//! Both go through the same core as an API request: a batch forecast is [`Service::forecast`] in
//! chunks, so it records the same `Forecasts`, `InferenceLatency`, `InputDrift` and forecast-log
//! records as the HTTP path.

use std::time::Instant;

use chrono::Utc;
use serde_json::{json, Value};

use super::events::InvocationError;
use crate::forecast::ForecastResponse;
use crate::input::{parse_input, InputFormat};
use crate::monitor::evaluate::EvaluationWindow;
use crate::objects::{ObjectError, Precondition, S3Objects};
use crate::service::Service;

/// Refuses a batch `input` or `output` URI outside its configured prefix: a scheduled event must
/// not be able to read the registry or overwrite the model alias.
pub fn confine(uri: &str, prefix: Option<&str>, what: &str) -> Result<(), InvocationError> {
    let variable = format!("BATCH_{}_PREFIX", what.to_ascii_uppercase());
    let Some(prefix) = prefix else {
        return Err(InvocationError::new(
            "NotConfigured",
            format!("batch jobs are off: set {variable}=s3://BUCKET/PREFIX/ to allow them"),
        ));
    };
    // Compare bucket and key apart, and the key as a whole path segment prefix: s3://b/batch/out
    // must not admit s3://b/batch/outside.
    let (Some((bucket, key)), Some((allowed_bucket, allowed_key))) = (
        crate::aws::parse_s3_url(uri),
        crate::aws::parse_s3_url(prefix),
    ) else {
        return Err(InvocationError::new(
            "InvalidInput",
            format!("{what} `{uri}` is not an s3:// URL under {variable} ({prefix})"),
        ));
    };
    let allowed_key = if allowed_key.is_empty() || allowed_key.ends_with('/') {
        allowed_key
    } else {
        format!("{allowed_key}/")
    };
    if bucket != allowed_bucket || !key.starts_with(&allowed_key) || key.len() == allowed_key.len()
    {
        return Err(InvocationError::new(
            "Forbidden",
            format!("{what} `{uri}` is outside {variable} ({prefix}): refused"),
        ));
    }
    Ok(())
}

fn s3_error(what: &str, uri: &str, e: ObjectError) -> InvocationError {
    InvocationError::new("S3", format!("{what} {uri}: {e}"))
}

/// Reads series from `input` (CSV or JSON Lines), forecasts them in chunks of the service's
/// `max_series`, and writes one JSON Lines object to `output`.
pub async fn batch_forecast(
    service: &Service,
    s3: &aws_sdk_s3::Client,
    input: &str,
    output: &str,
    request_id: &str,
) -> Result<Value, InvocationError> {
    let started = Instant::now();
    let bad = |m: String| InvocationError::new("InvalidInput", m);
    let (in_bucket, in_key) = crate::aws::parse_s3_url(input)
        .ok_or_else(|| bad(format!("input `{input}` is not an s3:// URL")))?;
    let (out_bucket, out_key) = crate::aws::parse_s3_url(output)
        .ok_or_else(|| bad(format!("output `{output}` is not an s3:// URL")))?;
    let content = S3Objects::new(s3.clone(), in_bucket)
        .get(&in_key)
        .await
        .map_err(|e| s3_error("reading", input, e))?
        .bytes;
    let format = match InputFormat::detect(&in_key, &content) {
        InputFormat::Json if !in_key.ends_with(".json") => InputFormat::JsonLines,
        other => other,
    };
    let shape = service.request_shape(1_000_000);
    let series = parse_input(format, &content, &shape).map_err(|e| bad(format!("{input}: {e}")))?;
    let mut lines = Vec::new();
    let mut version = service.model().metadata().version.clone();
    for chunk in series.chunks(service.limits().max_series.max(1)) {
        let ForecastResponse { model, forecasts } = service
            .forecast(chunk.to_vec(), Some(request_id))
            .await
            .map_err(|e| InvocationError::new("ForecastFailed", e.to_string()))?;
        version = model.version.clone();
        for forecast in forecasts {
            let line = json!({"id": forecast.id, "values": forecast.values, "timestamps": forecast.timestamps, "model": {"name": model.name, "version": model.version}});
            serde_json::to_writer(&mut lines, &line).expect("serialisable");
            lines.push(b'\n');
        }
    }
    S3Objects::new(s3.clone(), out_bucket)
        .put(&out_key, lines, "application/x-ndjson", Precondition::None)
        .await
        .map_err(|e| s3_error("writing", output, e))?;
    service
        .telemetry()
        .record(crate::metrics::Metric::BatchSeries, series.len() as f64);
    tracing::info!(
        series = series.len(),
        input,
        output,
        elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
        "batch forecast written"
    );
    Ok(
        json!({"action": "batch-forecast", "series": series.len(), "input": input, "output": output, "model_version": version}),
    )
}

/// Scores the forecasts that the newly arrived actuals complete, publishes the scores and writes a
/// report.
pub async fn evaluate(
    service: &Service,
    grace: std::time::Duration,
) -> Result<Value, InvocationError> {
    let Some(log) = service.forecast_log() else {
        return Err(InvocationError::new(
            "NotConfigured",
            "accuracy evaluation is not configured: set FORECAST_LOG_URI=s3://BUCKET/PREFIX (where forecasts and actuals are stored)",
        ));
    };
    let grace = chrono::Duration::from_std(grace).unwrap_or_else(|_| chrono::Duration::hours(1));
    // The live model's reach: forecasts of older versions with a longer horizon are found up to it.
    let model = service.model();
    let metadata = model.metadata();
    let window =
        EvaluationWindow::for_horizon(metadata.output.horizon, metadata.frequency(), grace);
    let run = crate::monitor::evaluate::run_evaluation(
        log.store(),
        service.telemetry(),
        Utc::now(),
        window,
    )
    .await
    .map_err(|e| InvocationError::new("EvaluationFailed", e.to_string()))?;
    Ok(
        json!({"action": "evaluate", "report": run.report, "forecasts_scored": run.evaluation.forecasts_scored,
              "pairs": run.evaluation.pairs, "missing_actuals": run.evaluation.missing_actuals,
              "scores": run.evaluation.by_version}),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_uris_are_confined_to_their_prefix() {
        let out = Some("s3://b/batch/output/");
        assert!(confine("s3://b/batch/output/run-1/f.jsonl", out, "output").is_ok());
        for outside in [
            "s3://b/models/m/alias/live.json",
            "s3://b/batch/outputs.jsonl",
            "s3://b/batch/output/",
            "s3://other/batch/output/f.jsonl",
            "https://b/batch/output/f.jsonl",
        ] {
            assert!(confine(outside, out, "output").is_err(), "{outside}");
        }
        // A prefix given without its trailing slash still means a folder.
        assert!(confine(
            "s3://b/batch/outputx",
            Some("s3://b/batch/output"),
            "output"
        )
        .is_err());
        let off = confine("s3://b/batch/output/f", None, "output").unwrap_err();
        assert!(
            off.message.contains("BATCH_OUTPUT_PREFIX"),
            "{}",
            off.message
        );
    }
}
