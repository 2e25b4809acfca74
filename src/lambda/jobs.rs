//! The scheduled jobs: batch forecasts from S3 to S3, and accuracy evaluation.
//!
//! Both go through the same core as an API request: a batch forecast is [`Service::forecast`] in
//! chunks, so it records the same `Forecasts`, `InferenceLatency`, `InputDrift` and forecast-log
//! records as the HTTP path.

use std::time::Instant;

use chrono::Utc;
use serde_json::{json, Value};

use super::events::InvocationError;
use crate::input::{parse_input, InputFormat, StreamFormat};
use crate::monitor::evaluate::EvaluationWindow;
use crate::objects::{ObjectError, Precondition, S3Objects};
use crate::service::batch::{BatchError, StreamOptions, StreamSummary};
use crate::service::Service;

/// Refuses a batch `input` or `output` URI outside its configured prefix: a scheduled event must
/// not be able to read the registry or overwrite the model alias.
pub fn confine(uri: &str, prefix: Option<&str>, what: &str) -> Result<(), InvocationError> {
    confine_within(uri, prefix, what, false)
}

/// [`confine`] for a folder, which may also be the allowed prefix itself.
fn confine_folder(uri: &str, prefix: Option<&str>, what: &str) -> Result<(), InvocationError> {
    confine_within(uri, prefix, what, true)
}

fn confine_within(
    uri: &str,
    prefix: Option<&str>,
    what: &str,
    may_be_the_prefix: bool,
) -> Result<(), InvocationError> {
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
    // A bucket name has no `/`; a key with `.`/`..` segments or control characters could mean
    // another object to a store that normalises paths.
    if bucket.contains('/')
        || key
            .split('/')
            .any(|segment| segment == "." || segment == "..")
        || key.chars().any(char::is_control)
    {
        return Err(InvocationError::new(
            "Forbidden",
            format!("{what} `{uri}` has dot segments, control characters or a `/` in its bucket: refused"),
        ));
    }
    let allowed_key = if allowed_key.is_empty() || allowed_key.ends_with('/') {
        allowed_key
    } else {
        format!("{allowed_key}/")
    };
    if bucket != allowed_bucket
        || !key.starts_with(&allowed_key)
        || (key.len() == allowed_key.len() && !may_be_the_prefix)
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
    intervals: &[f64],
    request_id: &str,
) -> Result<Value, InvocationError> {
    let started = Instant::now();
    let bad = |m: String| InvocationError::new("InvalidInput", m);
    service
        .check_intervals(intervals)
        .map_err(|e| bad(e.message))?;
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
        let response = service
            .forecast_with_intervals(chunk.to_vec(), intervals, Some(request_id))
            .await
            .map_err(|e| InvocationError::new("ForecastFailed", e.to_string()))?;
        version.clone_from(&response.model.version);
        crate::service::batch::forecast_lines(&response, &mut lines);
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

/// One run's shards: their keys in `bucket`, and the run's output prefix (`s3://B/.../RUN/`).
#[derive(Debug)]
pub struct ShardJob {
    pub bucket: String,
    pub keys: Vec<String>,
    pub output: String,
    /// Interval levels around every forecast (none when empty).
    pub intervals: Vec<f64>,
}

/// Where a job may read and write, and how it cuts its output.
#[derive(Debug, Clone, Copy)]
pub struct ShardLimits<'a> {
    pub input_prefix: Option<&'a str>,
    pub output_prefix: Option<&'a str>,
    pub stream: StreamOptions,
}

/// Where a shard's forecasts and its status go: `OUTPUT/NAME.jsonl` and `OUTPUT/_status/NAME.json`,
/// NAME being the input's file name (`part-00000.csv` -> `part-00000.csv.jsonl`): two shards of one
/// run differ in their file names (`a.csv` and `a.jsonl` too), and a re-run of one shard overwrites
/// its own objects and nothing else.
fn shard_outputs(output_key: &str, input_key: &str) -> (String, String) {
    let name = file_name(input_key);
    (
        format!("{output_key}{name}.jsonl"),
        format!("{output_key}{STATUS_FOLDER}{name}.json"),
    )
}

/// The last segment of a key: what a shard's outputs are named after.
fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

const STATUS_FOLDER: &str = "_status/";
const MANIFEST_NAME: &str = "_manifest.json";

/// The output prefix as a bucket and a key ending in `/`, confined to `BATCH_OUTPUT_PREFIX`.
fn output_folder(output: &str, allowed: Option<&str>) -> Result<(String, String), InvocationError> {
    if !output.ends_with('/') {
        return Err(InvocationError::new(
            "InvalidInput",
            format!("output `{output}` must be a folder (end with `/`): each shard writes its own object under it"),
        ));
    }
    confine(output, allowed, "output")?;
    Ok(crate::aws::parse_s3_url(output).expect("confine accepted an s3:// URL"))
}

/// Lists a run's shards and their statuses and writes `OUTPUT/_manifest.json` (last: its presence
/// means the run is over): every shard with its output and series count, the failed ones with
/// their errors, and the missing ones (no status: the shard's invocation never finished).
///
/// A run with failed or missing shards still gets its manifest, then fails the invocation, so the
/// execution fails and its alarm pages someone.
pub async fn write_manifest(
    service: &Service,
    s3: &crate::aws::Shared<aws_sdk_s3::Client>,
    input: &str,
    output: &str,
    limits: ShardLimits<'_>,
) -> Result<Value, InvocationError> {
    use futures_util::stream::{StreamExt, TryStreamExt};
    if !input.ends_with('/') {
        return Err(InvocationError::new(
            "InvalidInput",
            format!("input `{input}` must be the run's input folder (end with `/`)"),
        ));
    }
    confine_folder(input, limits.input_prefix, "input")?;
    let (in_bucket, in_prefix) = crate::aws::parse_s3_url(input).expect("confined above");
    let (out_bucket, out_key) = output_folder(output, limits.output_prefix)?;
    let shards: Vec<String> = S3Objects::new(s3.clone(), in_bucket.clone())
        .list(&in_prefix)
        .await
        .map_err(|e| s3_error("listing", input, e))?
        .into_iter()
        .filter(|key| !key.ends_with('/'))
        .collect();
    let outputs = S3Objects::new(s3.clone(), out_bucket.clone());
    let status_keys = outputs
        .list(&format!("{out_key}{STATUS_FOLDER}"))
        .await
        .map_err(|e| s3_error("listing", output, e))?;
    let statuses: Vec<Value> = futures_util::stream::iter(status_keys)
        .map(|key| {
            let outputs = outputs.clone();
            async move {
                let object = outputs
                    .get(&key)
                    .await
                    .map_err(|e| s3_error("reading", &key, e))?;
                serde_json::from_slice::<Value>(&object.bytes).map_err(|e| {
                    InvocationError::new(
                        "InvalidStatus",
                        format!("s3://{}/{key} is not JSON: {e}", outputs.bucket()),
                    )
                })
            }
        })
        .buffer_unordered(16)
        .try_collect()
        .await?;
    let mut by_input: std::collections::HashMap<String, Value> = statuses
        .into_iter()
        .filter_map(|status| Some((status.get("input")?.as_str()?.to_owned(), status)))
        .collect();
    let (mut completed, mut failed, mut missing, mut series) =
        (Vec::new(), Vec::new(), Vec::new(), 0);
    // Outputs are named after file names: two shards with one name (in two subfolders) would
    // write the same objects, so neither counts.
    let mut by_name: std::collections::HashMap<&str, Vec<&str>> = std::collections::HashMap::new();
    for key in &shards {
        by_name.entry(file_name(key)).or_default().push(key);
    }
    for key in &shards {
        let uri = format!("s3://{in_bucket}/{key}");
        let same_name = &by_name[file_name(key)];
        if same_name.len() > 1 {
            by_input.remove(&uri);
            failed.push(json!({"input": uri, "error": {"type": "InvalidInput",
                "message": format!("{} shards share this file name ({}); outputs are named after file names: rename them", same_name.len(), same_name.join(", "))}}));
            continue;
        }
        match by_input.remove(&uri) {
            Some(status) if status.get("error").is_some() => failed.push(status),
            Some(status) => {
                series += status.get("series").and_then(Value::as_u64).unwrap_or(0);
                completed.push(status);
            }
            None => missing.push(uri),
        }
    }
    let manifest = json!({
        "input": input, "output": output, "written_at": crate::time::format_rfc3339(Utc::now()),
        "shards": shards.len(), "series": series, "failed_shards": failed.len(), "missing_shards": missing.len(),
        "completed": completed, "failed": failed, "missing": missing,
    });
    let manifest_key = format!("{out_key}{MANIFEST_NAME}");
    let manifest_uri = format!("s3://{out_bucket}/{manifest_key}");
    outputs
        .put(
            &manifest_key,
            serde_json::to_vec_pretty(&manifest).expect("serialisable"),
            "application/json",
            Precondition::None,
        )
        .await
        .map_err(|e| s3_error("writing", &manifest_uri, e))?;
    service
        .telemetry()
        .record(crate::metrics::Metric::BatchManifests, 1.0);
    tracing::info!(
        manifest = manifest_uri,
        shards = shards.len(),
        series,
        failed = failed.len(),
        missing = missing.len(),
        "batch manifest written"
    );
    if !failed.is_empty() || !missing.is_empty() {
        let names: Vec<&str> = failed
            .iter()
            .filter_map(|f| f.get("input").and_then(Value::as_str))
            .chain(missing.iter().map(String::as_str))
            .take(10)
            .collect();
        return Err(InvocationError::new(
            "BatchIncomplete",
            format!(
                "{} of {} shards failed and {} are missing (see {manifest_uri}): {}",
                failed.len(),
                shards.len(),
                missing.len(),
                names.join(", ")
            ),
        ));
    }
    Ok(
        json!({"action": "batch-manifest", "manifest": manifest_uri, "shards": shards.len(), "series": series}),
    )
}

/// Forecasts each shard of `job` into its own JSON Lines object under the run's output prefix,
/// streaming (see [`crate::service::batch`]) and uploading as it goes, and records each shard's
/// status next to it for the manifest.
///
/// A shard that breaks the input contract fails alone: the result names it and the others are
/// written. A shard that fails for a reason a retry may cure (S3, the engine) fails the
/// invocation once every shard was tried, so Step Functions retries the batch; the shards that
/// succeeded are then written again, to the same keys.
pub async fn forecast_shards(
    service: &Service,
    s3: &crate::aws::Shared<aws_sdk_s3::Client>,
    job: ShardJob,
    limits: ShardLimits<'_>,
    request_id: &str,
) -> Result<Value, InvocationError> {
    let (out_bucket, out_key) = output_folder(&job.output, limits.output_prefix)?;
    if job.bucket.is_empty() || job.bucket.contains('/') {
        return Err(InvocationError::new(
            "InvalidInput",
            format!("bucket `{}` is not a bucket name", job.bucket),
        ));
    }
    service
        .check_intervals(&job.intervals)
        .map_err(|e| InvocationError::new("InvalidInput", e.message))?;
    let outputs = S3Objects::new(s3.clone(), out_bucket);
    let inputs = S3Objects::new(s3.clone(), job.bucket.clone());
    let mut results = Vec::with_capacity(job.keys.len());
    let (mut series, mut failed, mut transient) = (0, 0, Vec::new());
    for key in &job.keys {
        let input = format!("s3://{}/{key}", job.bucket);
        let (output_key, status_key) = shard_outputs(&out_key, key);
        let outcome = match confine(&input, limits.input_prefix, "input") {
            Ok(()) => {
                let how = ShardRun {
                    stream: limits.stream,
                    intervals: &job.intervals,
                    request_id,
                };
                forecast_shard(service, (&inputs, key), (&outputs, &output_key), &how).await
            }
            Err(refused) => Err(ShardFailure {
                kind: refused.kind,
                message: refused.message,
                transient: false,
            }),
        };
        let output = format!("s3://{}/{output_key}", outputs.bucket());
        let status = match &outcome {
            Ok(summary) => {
                series += summary.series;
                json!({"input": input, "output": output, "series": summary.series, "model_version": summary.model_version})
            }
            Err(failure) => {
                failed += 1;
                if failure.transient {
                    transient.push(key.clone());
                }
                tracing::warn!(input, error = failure.message, "batch shard failed");
                json!({"input": input, "error": {"type": failure.kind, "message": failure.message}})
            }
        };
        // A refused key never gets a status: it names no shard of this run.
        if outcome.as_ref().err().is_none_or(|f| f.kind != "Forbidden") {
            let body = serde_json::to_vec(&status).expect("a status serialises");
            if let Err(e) = outputs
                .put(&status_key, body, "application/json", Precondition::None)
                .await
            {
                transient.push(key.clone());
                tracing::warn!(input, error = %e, "could not record the shard's status");
            }
        }
        results.push(status);
    }
    let telemetry = service.telemetry();
    telemetry.record(crate::metrics::Metric::BatchSeries, series as f64);
    telemetry.record(crate::metrics::Metric::BatchShardFailures, failed as f64);
    if !transient.is_empty() {
        return Err(InvocationError::new(
            "ShardFailed",
            format!(
                "{} of {} shards failed and may succeed on a retry: {}; results: {}",
                transient.len(),
                job.keys.len(),
                transient.join(", "),
                Value::Array(results)
            ),
        ));
    }
    Ok(
        json!({"action": "batch-forecast-shard", "series": series, "shards": job.keys.len(), "failed": failed, "results": results}),
    )
}

/// Why one shard failed, as its status records it.
struct ShardFailure {
    kind: &'static str,
    message: String,
    transient: bool,
}

impl ShardFailure {
    /// A missing object or a denied access stays so on a retry; anything else may pass.
    fn s3(what: &str, uri: &str, e: ObjectError) -> Self {
        let transient = !matches!(
            e.kind,
            crate::objects::ObjectErrorKind::Missing
                | crate::objects::ObjectErrorKind::AccessDenied
        );
        ShardFailure {
            kind: "S3",
            message: format!("{what} {uri}: {e}"),
            transient,
        }
    }
}

/// How every shard of one invocation is run.
struct ShardRun<'a> {
    stream: StreamOptions,
    intervals: &'a [f64],
    request_id: &'a str,
}

/// Streams the shard at `(inputs, key)` into a multipart upload at `(outputs, output_key)`.
async fn forecast_shard(
    service: &Service,
    (inputs, key): (&S3Objects, &str),
    (outputs, output_key): (&S3Objects, &str),
    how: &ShardRun<'_>,
) -> Result<StreamSummary, ShardFailure> {
    let ShardRun {
        stream: options,
        intervals,
        request_id,
    } = *how;
    let started = Instant::now();
    let input = format!("s3://{}/{key}", inputs.bucket());
    let output = format!("s3://{}/{output_key}", outputs.bucket());
    let format = StreamFormat::from_name(key).ok_or_else(|| ShardFailure {
        kind: "InvalidInput",
        message: format!("{input}: a shard must be named *.csv, *.jsonl or *.ndjson"),
        transient: false,
    })?;
    let reader = inputs
        .open(key)
        .await
        .map_err(|e| ShardFailure::s3("reading", &input, e))?;
    let mut upload = outputs
        .start_upload(output_key, "application/x-ndjson")
        .await
        .map_err(|e| ShardFailure::s3("writing", &output, e))?;
    // The uploader runs beside the stream, so a part goes up while the next is forecast; the
    // channel holds one part, which bounds the memory to ~3 parts.
    let (parts, mut ready) = tokio::sync::mpsc::channel::<Vec<u8>>(1);
    let uploader = tokio::spawn(async move {
        while let Some(part) = ready.recv().await {
            if let Err(e) = upload.upload_part(part).await {
                return (upload, Err(e));
            }
        }
        (upload, Ok(()))
    });
    let streamed = crate::service::batch::forecast_stream(
        service, reader, format, options, intervals, parts, request_id,
    )
    .await;
    let (upload, uploaded) = uploader
        .await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()));
    let failure = match (streamed, uploaded) {
        (Ok(summary), Ok(())) => match upload.complete().await {
            Ok(()) => {
                tracing::info!(
                    input,
                    output,
                    series = summary.series,
                    parts = summary.parts,
                    bytes = summary.bytes,
                    elapsed_ms = started.elapsed().as_secs_f64() * 1e3,
                    "batch shard written"
                );
                return Ok(summary);
            }
            // A failed completion leaves the parts behind: aborted below.
            Err(e) => ShardFailure::s3("completing", &output, e),
        },
        // The upload's own error explains a closed output.
        (_, Err(e)) => ShardFailure::s3("writing", &output, e),
        (Err(e), Ok(())) => ShardFailure {
            kind: match e {
                BatchError::Input(_) | BatchError::LineTooLong { .. } => "InvalidInput",
                BatchError::Read { .. } => "S3",
                _ => "ForecastFailed",
            },
            message: format!("{input}: {e}"),
            transient: e.is_transient(),
        },
    };
    if let Err(e) = upload.abort().await {
        tracing::warn!(output, error = %e, "could not abort the multipart upload; a bucket lifecycle rule must clean it up");
    }
    Err(failure)
}

/// Scores the forecasts that the newly arrived actuals complete, publishes the scores and writes a
/// report.
pub async fn evaluate(
    service: &Service,
    grace: std::time::Duration,
    recalibration: &crate::monitor::evaluate::Recalibration,
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
    let run = crate::monitor::evaluate::run_evaluation_with(
        log.store(),
        service.telemetry(),
        Utc::now(),
        window,
        recalibration,
    )
    .await
    .map_err(|e| InvocationError::new("EvaluationFailed", e.to_string()))?;
    Ok(
        json!({"action": "evaluate", "report": run.report, "forecasts_scored": run.evaluation.forecasts_scored,
              "pairs": run.evaluation.pairs, "missing_actuals": run.evaluation.missing_actuals,
              "scores": run.evaluation.by_version, "intervals": run.evaluation.intervals,
              "recalibrated": run.evaluation.recalibrated}),
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
