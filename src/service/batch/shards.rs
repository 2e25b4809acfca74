//! A Step Functions batch run's shards: each input object streamed ([`super::stream`]) into its
//! own JSON Lines output, with its [`ShardStatus`] beside it for the run's manifest.

use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::config::{BatchConfig, Side};
use super::stream::{forecast_stream, BatchError, StreamOptions, StreamSummary};
use crate::metrics::Metric;
use crate::objects::{ObjectError, ObjectErrorKind, Precondition, S3Objects};
use crate::service::jobs::JobError;
use crate::service::Service;

/// One invocation's shards: their keys in `bucket`, and the run's output prefix (`s3://B/.../RUN/`).
#[derive(Debug)]
pub struct ShardJob {
    pub bucket: String,
    pub keys: Vec<String>,
    pub output: String,
    /// Interval levels around every forecast (none when empty).
    pub intervals: Vec<f64>,
}

/// What a shard left beside its output: `OUTPUT/_status/NAME.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ShardStatus {
    Failed {
        input: String,
        error: ShardError,
    },
    Completed {
        input: String,
        output: String,
        series: u64,
        model_version: String,
    },
}

impl ShardStatus {
    /// The shard's input URI (`s3://BUCKET/KEY`).
    pub fn input(&self) -> &str {
        match self {
            ShardStatus::Failed { input, .. } | ShardStatus::Completed { input, .. } => input,
        }
    }
}

/// Why a shard failed, as its status records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardError {
    /// The error kind ([`JobError::kind`] or a stream's), e.g. `InvalidInput`, `S3`.
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

/// What one invocation did with its shards.
#[derive(Debug, Clone, Serialize)]
pub struct ShardRunSummary {
    pub action: &'static str,
    pub series: u64,
    pub shards: usize,
    pub failed: usize,
    pub results: Vec<ShardStatus>,
}

/// Where a shard's forecasts and its status go: `OUTPUT/NAME.jsonl` and `OUTPUT/_status/NAME.json`,
/// NAME being the input's file name (`part-00000.csv` -> `part-00000.csv.jsonl`): two shards of one
/// run differ in their file names (`a.csv` and `a.jsonl` too), and a re-run of one shard overwrites
/// its own objects and nothing else.
pub(super) fn shard_outputs(output_key: &str, input_key: &str) -> (String, String) {
    let name = file_name(input_key);
    (
        format!("{output_key}{name}.jsonl"),
        format!("{output_key}{STATUS_FOLDER}{name}.json"),
    )
}

/// The last segment of a key: what a shard's outputs are named after.
pub(super) fn file_name(key: &str) -> &str {
    key.rsplit('/').next().unwrap_or(key)
}

pub(super) const STATUS_FOLDER: &str = "_status/";

/// Forecasts each shard of `job` into its own JSON Lines object under the run's output prefix,
/// streaming and uploading as it goes, and records each shard's status next to it.
///
/// A shard that breaks the input contract fails alone: the result names it and the others are
/// written. A shard that fails for a reason a retry may cure (S3, the engine) fails the
/// invocation once every shard was tried ([`JobError::ShardFailed`]), so Step Functions retries
/// the batch; the shards that succeeded are then written again, to the same keys.
pub async fn forecast_shards(
    service: &Service,
    s3: &crate::aws::Shared<aws_sdk_s3::Client>,
    config: &BatchConfig,
    job: ShardJob,
    request_id: &str,
) -> Result<ShardRunSummary, JobError> {
    let (out_bucket, out_key) = config.folder(&job.output, Side::Output)?;
    if job.bucket.is_empty() || job.bucket.contains('/') {
        return Err(JobError::InvalidInput(format!(
            "bucket `{}` is not a bucket name",
            job.bucket
        )));
    }
    service
        .check_intervals(&job.intervals)
        .map_err(|e| JobError::InvalidInput(e.message))?;
    let run = ShardRun {
        service,
        inputs: S3Objects::new(s3.clone(), job.bucket.clone()),
        outputs: S3Objects::new(s3.clone(), out_bucket),
        stream: StreamOptions {
            chunk_series: service.limits().max_series,
            part_bytes: config.part_bytes,
        },
        intervals: &job.intervals,
        request_id,
    };
    let mut summary = ShardRunSummary {
        action: "batch-forecast-shard",
        series: 0,
        shards: job.keys.len(),
        failed: 0,
        results: Vec::with_capacity(job.keys.len()),
    };
    let mut retry = Vec::new();
    for key in &job.keys {
        let (status, transient) = run.shard(config, key, &out_key).await;
        match &status {
            ShardStatus::Completed { series, .. } => summary.series += series,
            ShardStatus::Failed { .. } => summary.failed += 1,
        }
        if transient {
            retry.push(key.clone());
        }
        summary.results.push(status);
    }
    let telemetry = service.telemetry();
    telemetry.record(Metric::BatchSeries, summary.series as f64);
    telemetry.record(Metric::BatchShardFailures, summary.failed as f64);
    if !retry.is_empty() {
        return Err(JobError::ShardFailed(format!(
            "{} of {} shards failed and may succeed on a retry: {}; results: {}",
            retry.len(),
            job.keys.len(),
            retry.join(", "),
            serde_json::to_string(&summary.results).expect("statuses serialise")
        )));
    }
    Ok(summary)
}

/// Why one shard failed, and whether a retry may cure it.
struct ShardFailure {
    kind: &'static str,
    message: String,
    transient: bool,
}

impl ShardFailure {
    /// A missing object or a denied access stays so on a retry; anything else may pass.
    fn object(what: &str, uri: &str, e: ObjectError) -> Self {
        let transient = !matches!(
            e.kind,
            ObjectErrorKind::Missing | ObjectErrorKind::AccessDenied
        );
        ShardFailure {
            kind: "S3",
            message: format!("{what} {uri}: {e}"),
            transient,
        }
    }

    fn of_stream(input: &str, e: BatchError) -> Self {
        ShardFailure {
            kind: match e {
                BatchError::Input(_) | BatchError::LineTooLong { .. } => "InvalidInput",
                BatchError::Read { .. } => "S3",
                _ => "ForecastFailed",
            },
            message: format!("{input}: {e}"),
            transient: e.is_transient(),
        }
    }
}

/// How every shard of one invocation is run.
struct ShardRun<'a> {
    service: &'a Service,
    inputs: S3Objects,
    outputs: S3Objects,
    stream: StreamOptions,
    intervals: &'a [f64],
    request_id: &'a str,
}

impl ShardRun<'_> {
    /// Runs one shard and records its status; returns the status and whether a retry may cure
    /// its failure (a status that could not be recorded counts as one).
    async fn shard(&self, config: &BatchConfig, key: &str, out_key: &str) -> (ShardStatus, bool) {
        let input = format!("s3://{}/{key}", self.inputs.bucket());
        let (output_key, status_key) = shard_outputs(out_key, key);
        let outcome = match config.confine(&input, Side::Input) {
            Ok(()) => self.stream_shard(key, &output_key).await,
            Err(refused) => Err(ShardFailure {
                kind: refused.kind(),
                message: refused.to_string(),
                transient: false,
            }),
        };
        let mut transient = false;
        let status = match outcome {
            Ok(summary) => ShardStatus::Completed {
                input: input.clone(),
                output: format!("s3://{}/{output_key}", self.outputs.bucket()),
                series: summary.series as u64,
                model_version: summary.model_version,
            },
            Err(failure) => {
                transient = failure.transient;
                tracing::warn!(input, error = failure.message, "batch shard failed");
                ShardStatus::Failed {
                    input: input.clone(),
                    error: ShardError {
                        kind: failure.kind.to_string(),
                        message: failure.message,
                    },
                }
            }
        };
        // A refused key never gets a status: it names no shard of this run.
        let refused =
            matches!(&status, ShardStatus::Failed { error, .. } if error.kind == "Forbidden");
        if !refused {
            let body = serde_json::to_vec(&status).expect("a status serialises");
            if let Err(e) = self
                .outputs
                .put(&status_key, body, "application/json", Precondition::None)
                .await
            {
                transient = true;
                tracing::warn!(input, error = %e, "could not record the shard's status");
            }
        }
        (status, transient)
    }

    /// Streams the shard at `key` into a multipart upload at `output_key`.
    async fn stream_shard(
        &self,
        key: &str,
        output_key: &str,
    ) -> Result<StreamSummary, ShardFailure> {
        let started = Instant::now();
        let input = format!("s3://{}/{key}", self.inputs.bucket());
        let output = format!("s3://{}/{output_key}", self.outputs.bucket());
        let format = crate::input::StreamFormat::from_name(key).ok_or_else(|| ShardFailure {
            kind: "InvalidInput",
            message: format!("{input}: a shard must be named *.csv, *.jsonl or *.ndjson"),
            transient: false,
        })?;
        let reader = self
            .inputs
            .open(key)
            .await
            .map_err(|e| ShardFailure::object("reading", &input, e))?;
        let mut upload = self
            .outputs
            .start_upload(output_key, "application/x-ndjson")
            .await
            .map_err(|e| ShardFailure::object("writing", &output, e))?;
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
        let streamed = forecast_stream(
            self.service,
            reader,
            format,
            self.stream,
            self.intervals,
            parts,
            self.request_id,
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
                Err(e) => ShardFailure::object("completing", &output, e),
            },
            // The upload's own error explains a closed output.
            (_, Err(e)) => ShardFailure::object("writing", &output, e),
            (Err(e), Ok(())) => ShardFailure::of_stream(&input, e),
        };
        if let Err(e) = upload.abort().await {
            tracing::warn!(output, error = %e, "could not abort the multipart upload; a bucket lifecycle rule must clean it up");
        }
        Err(failure)
    }
}
