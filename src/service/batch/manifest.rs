//! A batch run's manifest: `OUTPUT/_manifest.json`, written last, so its presence means the run
//! is over. It lists every shard with its output and series count, the failed ones with their
//! errors, and the missing ones (no status: the shard's invocation never finished).

use std::collections::HashMap;

use chrono::Utc;
use serde::{Deserialize, Serialize};

use super::config::{BatchConfig, Side};
use super::shards::{file_name, ShardError, ShardStatus, STATUS_FOLDER};
use crate::aws::Shared;
use crate::metrics::Metric;
use crate::objects::{Precondition, S3Objects};
use crate::service::jobs::JobError;
use crate::service::Service;

const MANIFEST_NAME: &str = "_manifest.json";

/// Statuses read at once while a manifest is assembled.
const PARALLEL_STATUS_READS: usize = 16;

/// What a finished run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub input: String,
    pub output: String,
    pub written_at: String,
    /// Input objects under the run's input folder.
    pub shards: usize,
    /// Series forecast by the completed shards.
    pub series: u64,
    pub failed_shards: usize,
    pub missing_shards: usize,
    pub completed: Vec<ShardStatus>,
    pub failed: Vec<ShardStatus>,
    /// Input URIs without a status.
    pub missing: Vec<String>,
}

/// What the invocation that wrote a complete manifest answers.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestWritten {
    pub action: &'static str,
    pub manifest: String,
    pub shards: usize,
    pub series: u64,
}

impl Manifest {
    /// Sorts each input shard by its status: completed, failed or missing. Two shards with one
    /// file name (in two subfolders) would write the same objects, so neither counts.
    fn assemble(
        (input, output): (&str, &str),
        in_bucket: &str,
        shards: &[String],
        statuses: Vec<ShardStatus>,
    ) -> Manifest {
        let mut by_input: HashMap<String, ShardStatus> = statuses
            .into_iter()
            .map(|status| (status.input().to_owned(), status))
            .collect();
        let mut by_name: HashMap<&str, Vec<&str>> = HashMap::new();
        for key in shards {
            by_name.entry(file_name(key)).or_default().push(key);
        }
        let (mut completed, mut failed, mut missing, mut series) =
            (Vec::new(), Vec::new(), Vec::new(), 0);
        for key in shards {
            let uri = format!("s3://{in_bucket}/{key}");
            let same_name = &by_name[file_name(key)];
            let status = by_input.remove(&uri);
            if same_name.len() > 1 {
                failed.push(ShardStatus::Failed {
                    input: uri,
                    error: ShardError {
                        kind: "InvalidInput".into(),
                        message: format!("{} shards share this file name ({}); outputs are named after file names: rename them", same_name.len(), same_name.join(", ")),
                    },
                });
                continue;
            }
            match status {
                Some(status @ ShardStatus::Failed { .. }) => failed.push(status),
                Some(status @ ShardStatus::Completed { series: n, .. }) => {
                    series += n;
                    completed.push(status);
                }
                None => missing.push(uri),
            }
        }
        Manifest {
            input: input.to_string(),
            output: output.to_string(),
            written_at: crate::time::format_rfc3339(Utc::now()),
            shards: shards.len(),
            series,
            failed_shards: failed.len(),
            missing_shards: missing.len(),
            completed,
            failed,
            missing,
        }
    }

    /// Why the run is incomplete, naming its first failed or missing shards; `None` when every
    /// shard completed.
    fn incomplete(&self, manifest_uri: &str) -> Option<JobError> {
        if self.failed.is_empty() && self.missing.is_empty() {
            return None;
        }
        let names: Vec<&str> = self
            .failed
            .iter()
            .map(ShardStatus::input)
            .chain(self.missing.iter().map(String::as_str))
            .take(10)
            .collect();
        Some(JobError::BatchIncomplete(format!(
            "{} of {} shards failed and {} are missing (see {manifest_uri}): {}",
            self.failed.len(),
            self.shards,
            self.missing.len(),
            names.join(", ")
        )))
    }
}

/// Lists a run's shards and their statuses and writes `OUTPUT/_manifest.json`.
///
/// A run with failed or missing shards still gets its manifest, then fails the job
/// ([`JobError::BatchIncomplete`]), so the execution fails and its alarm pages someone.
pub async fn write_manifest(
    service: &Service,
    s3: &Shared<aws_sdk_s3::Client>,
    config: &BatchConfig,
    (input, output): (&str, &str),
) -> Result<ManifestWritten, JobError> {
    if !input.ends_with('/') {
        return Err(JobError::InvalidInput(format!(
            "input `{input}` must be the run's input folder (end with `/`)"
        )));
    }
    config.confine_folder(input, Side::Input)?;
    let (in_bucket, in_prefix) = crate::aws::parse_s3_url(input).expect("confined above");
    let (out_bucket, out_key) = config.folder(output, Side::Output)?;
    let shards: Vec<String> = S3Objects::new(s3.clone(), in_bucket.clone())
        .list(&in_prefix)
        .await
        .map_err(|e| JobError::object("listing", input, e))?
        .into_iter()
        .filter(|key| !key.ends_with('/'))
        .collect();
    let outputs = S3Objects::new(s3.clone(), out_bucket.clone());
    let statuses = read_statuses(&outputs, &out_key, output).await?;
    let manifest = Manifest::assemble((input, output), &in_bucket, &shards, statuses);
    let manifest_key = format!("{out_key}{MANIFEST_NAME}");
    let manifest_uri = format!("s3://{out_bucket}/{manifest_key}");
    outputs
        .put(
            &manifest_key,
            serde_json::to_vec_pretty(&manifest).expect("a manifest serialises"),
            "application/json",
            Precondition::None,
        )
        .await
        .map_err(|e| JobError::object("writing", &manifest_uri, e))?;
    service.telemetry().record(Metric::BatchManifests, 1.0);
    tracing::info!(
        manifest = manifest_uri,
        shards = manifest.shards,
        series = manifest.series,
        failed = manifest.failed.len(),
        missing = manifest.missing.len(),
        "batch manifest written"
    );
    if let Some(incomplete) = manifest.incomplete(&manifest_uri) {
        return Err(incomplete);
    }
    Ok(ManifestWritten {
        action: "batch-manifest",
        manifest: manifest_uri,
        shards: manifest.shards,
        series: manifest.series,
    })
}

/// Every status under `OUTPUT/_status/`, read in parallel.
async fn read_statuses(
    outputs: &S3Objects,
    out_key: &str,
    output: &str,
) -> Result<Vec<ShardStatus>, JobError> {
    use futures_util::stream::{StreamExt, TryStreamExt};
    let status_keys = outputs
        .list(&format!("{out_key}{STATUS_FOLDER}"))
        .await
        .map_err(|e| JobError::object("listing", output, e))?;
    futures_util::stream::iter(status_keys)
        .map(|key| async move {
            let uri = format!("s3://{}/{key}", outputs.bucket());
            let object = outputs
                .get(&key)
                .await
                .map_err(|e| JobError::object("reading", &uri, e))?;
            serde_json::from_slice::<ShardStatus>(&object.bytes).map_err(|e| {
                JobError::InvalidStatus {
                    uri,
                    cause: e.to_string(),
                }
            })
        })
        .buffer_unordered(PARALLEL_STATUS_READS)
        .try_collect()
        .await
}
