//! Forecasts and actuals as JSON Lines objects on S3, partitioned by date.
//!
//! ```text
//! PREFIX/forecasts/date=YYYY-MM-DD/HHMMSS-<unique>.jsonl   one ForecastRecord per line
//! PREFIX/actuals/date=YYYY-MM-DD/HHMMSS-<unique>.jsonl     one Observation per line (also any
//!                                                          .jsonl or .csv with id,timestamp,value
//!                                                          dropped there by other systems)
//! PREFIX/state/evaluation.json                             where the last evaluation stopped
//! PREFIX/reports/<time>/report.json, chart.svg             evaluation reports
//! ```
//!
//! Writes are batched ([`ForecastLog`]): many forecasts become one object, so S3 cost and latency do
//! not scale with the request rate, and nothing is written on the request path itself.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

pub use super::observations::Observation;
use crate::objects::{ObjectError, Precondition, S3Objects};

/// One logged forecast: enough to score it once the actuals arrive.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ForecastRecord {
    pub series_id: String,
    /// The last observed timestamp of the input (the forecast's origin).
    pub origin: DateTime<Utc>,
    /// The last observed target value: the repeat-last-value forecast that MASE compares with.
    pub last_value: f64,
    pub timestamps: Vec<DateTime<Utc>>,
    pub values: Vec<f64>,
    pub model: String,
    pub model_version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    pub created_at: DateTime<Utc>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URI `{0}` (expected s3://BUCKET/PREFIX)")]
    Uri(String),
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("s3://{bucket}/{key} line {line}: {cause}")]
    Parse {
        bucket: String,
        key: String,
        line: usize,
        cause: String,
    },
}

/// What a load read, and the lines it could not.
#[derive(Debug)]
pub struct Loaded<T> {
    pub items: Vec<T>,
    pub quarantined: Vec<Quarantined>,
}

impl<T> Default for Loaded<T> {
    fn default() -> Self {
        Loaded {
            items: Vec::new(),
            quarantined: Vec::new(),
        }
    }
}

impl<T> Loaded<T> {
    fn quarantine(&mut self, key: &str, line: usize, cause: String) {
        tracing::warn!(key, line, "quarantined an unreadable line: {cause}");
        self.quarantined.push(Quarantined {
            key: key.to_string(),
            line,
            cause,
        });
    }
}

/// A version's accuracy in the evaluation that last scored it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionScore {
    pub wape: f64,
    /// Scored (forecast, actual) pairs behind `wape`.
    pub pairs: usize,
    pub evaluated_at: DateTime<Utc>,
}

/// A line that could not be read: skipped, counted and reported, never fatal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Quarantined {
    pub key: String,
    pub line: usize,
    pub cause: String,
}

/// A forecast-log line: a record as the store writes it, or wrapped as the log-line delivery
/// writes it (`{"forecast_record": {...}}`, what Firehose delivers from the function's log).
fn parse_record_line(line: &[u8]) -> Result<ForecastRecord, serde_json::Error> {
    let mut value: serde_json::Value = serde_json::from_slice(line)?;
    if let Some(inner) = value.get_mut(LOG_LINE_KEY) {
        value = inner.take();
    }
    serde_json::from_value(value)
}

/// A forecast record as a log line.
#[derive(Serialize)]
struct LogLine<'a> {
    forecast_record: &'a ForecastRecord,
}

/// One `id,timestamp,value` row of an actuals CSV file.
fn csv_observation(row: Result<csv::StringRecord, csv::Error>) -> Result<Observation, String> {
    let row = row.map_err(|e| e.to_string())?;
    let field = |n: usize| row.get(n).unwrap_or("");
    let timestamp = crate::time::parse_timestamp_lenient(field(1))
        .ok_or_else(|| format!("bad timestamp `{}`", field(1)))?;
    let value: f64 = field(2)
        .parse()
        .map_err(|_| format!("bad value `{}`", field(2)))?;
    Ok(Observation {
        series_id: field(0).to_string(),
        timestamp,
        value,
    })
}

/// The accuracy store on S3.
#[derive(Clone)]
pub struct AccuracyStore {
    objects: S3Objects,
    bucket: String,
    /// Key prefix, empty or ending with '/'.
    prefix: String,
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique_name(now: DateTime<Utc>) -> String {
    format!(
        "{}-{:x}-{:x}.jsonl",
        now.format("%H%M%S%.3f"),
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

impl AccuracyStore {
    pub fn new(client: aws_sdk_s3::Client, uri: &str) -> Result<Self, StoreError> {
        let (bucket, prefix) =
            crate::aws::parse_s3_url(uri).ok_or_else(|| StoreError::Uri(uri.to_string()))?;
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix
        } else {
            format!("{prefix}/")
        };
        Ok(AccuracyStore {
            objects: S3Objects::new(client, bucket.clone()),
            bucket,
            prefix,
        })
    }

    pub fn uri(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn put(&self, key: &str, body: Vec<u8>, content_type: &str) -> Result<(), StoreError> {
        Ok(self
            .objects
            .put(key, body, content_type, Precondition::None)
            .await?)
    }

    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.objects.get_if_exists(key).await?.map(|o| o.bytes))
    }

    async fn list(&self, folder: &str) -> Result<Vec<String>, StoreError> {
        Ok(self
            .objects
            .list(&format!("{}{folder}/", self.prefix))
            .await?)
    }

    async fn append<T: Serialize>(
        &self,
        folder: &str,
        items: &[T],
        now: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        if items.is_empty() {
            return Ok(None);
        }
        let mut body = Vec::new();
        for item in items {
            serde_json::to_writer(&mut body, item).expect("records serialise");
            body.push(b'\n');
        }
        let key = format!(
            "{}{folder}/date={}/{}",
            self.prefix,
            now.format("%Y-%m-%d"),
            unique_name(now)
        );
        self.put(&key, body, "application/x-ndjson").await?;
        Ok(Some(key))
    }

    pub async fn append_forecasts(
        &self,
        records: &[ForecastRecord],
    ) -> Result<Option<String>, StoreError> {
        self.append("forecasts", records, Utc::now()).await
    }

    pub async fn append_actuals(
        &self,
        observations: &[Observation],
    ) -> Result<Option<String>, StoreError> {
        self.append("actuals", observations, Utc::now()).await
    }

    /// Every forecast record under `forecasts/`. A line that is not a record is quarantined
    /// (skipped, and reported with its key and line), never fatal: one bad line must not stop
    /// every later evaluation.
    pub async fn load_forecasts(&self) -> Result<Loaded<ForecastRecord>, StoreError> {
        let mut loaded = Loaded::default();
        for key in self.list("forecasts").await? {
            let Some(bytes) = self.get(&key).await? else {
                continue;
            };
            for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                match parse_record_line(line) {
                    Ok(record) => loaded.items.push(record),
                    Err(e) => loaded.quarantine(&key, i + 1, e.to_string()),
                }
            }
        }
        Ok(loaded)
    }

    /// Every observation under `actuals/`: our JSON Lines, and CSV files (`id,timestamp,value`),
    /// in the order they arrived (keys sort by time). Unreadable lines are quarantined.
    pub async fn load_actuals(&self) -> Result<Loaded<Observation>, StoreError> {
        let mut loaded = Loaded::default();
        for key in self.list("actuals").await? {
            let Some(bytes) = self.get(&key).await? else {
                continue;
            };
            if key.ends_with(".csv") {
                let mut reader = csv::ReaderBuilder::new()
                    .trim(csv::Trim::All)
                    .from_reader(bytes.as_slice());
                for (i, row) in reader.records().enumerate() {
                    match csv_observation(row) {
                        Ok(observation) => loaded.items.push(observation),
                        Err(cause) => loaded.quarantine(&key, i + 2, cause),
                    }
                }
            } else {
                for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice(line) {
                        Ok(observation) => loaded.items.push(observation),
                        Err(e) => loaded.quarantine(&key, i + 1, e.to_string()),
                    }
                }
            }
        }
        Ok(loaded)
    }

    /// Where the last evaluation stopped: forecasts due at or before it were scored.
    pub async fn evaluated_until(&self) -> Result<Option<DateTime<Utc>>, StoreError> {
        let key = format!("{}state/evaluation.json", self.prefix);
        let Some(bytes) = self.get(&key).await? else {
            return Ok(None);
        };
        #[derive(Deserialize)]
        struct State {
            evaluated_until: DateTime<Utc>,
        }
        let state: State = serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse {
            bucket: self.bucket.clone(),
            key,
            line: 1,
            cause: e.to_string(),
        })?;
        Ok(Some(state.evaluated_until))
    }

    pub async fn set_evaluated_until(&self, until: DateTime<Utc>) -> Result<(), StoreError> {
        let key = format!("{}state/evaluation.json", self.prefix);
        let body = serde_json::to_vec_pretty(
            &serde_json::json!({"evaluated_until": until, "updated_at": Utc::now()}),
        )
        .expect("serialises");
        self.put(&key, body, "application/json").await
    }

    /// The latest scores of each model version (`state/scores.json`): what a rollback checks
    /// before it acts, so that it only ever rolls back a version for that version's own errors.
    pub async fn latest_scores(&self) -> Result<BTreeMap<String, VersionScore>, StoreError> {
        let key = format!("{}state/scores.json", self.prefix);
        let Some(bytes) = self.get(&key).await? else {
            return Ok(BTreeMap::new());
        };
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse {
            bucket: self.bucket.clone(),
            key,
            line: 1,
            cause: e.to_string(),
        })
    }

    /// Replaces the scores of the versions in `scored`, keeping the others' last ones.
    pub async fn update_latest_scores(
        &self,
        scored: BTreeMap<String, VersionScore>,
    ) -> Result<(), StoreError> {
        if scored.is_empty() {
            return Ok(());
        }
        let mut all = self.latest_scores().await?;
        all.extend(scored);
        let key = format!("{}state/scores.json", self.prefix);
        let body = serde_json::to_vec_pretty(&all).expect("serialises");
        self.put(&key, body, "application/json").await
    }

    /// Writes a report folder; returns its URI.
    pub async fn write_report(
        &self,
        report_json: &[u8],
        chart_svg: &[u8],
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let folder = format!("{}reports/{}", self.prefix, now.format("%Y%m%dT%H%M%SZ"));
        self.put(
            &format!("{folder}/report.json"),
            report_json.to_vec(),
            "application/json",
        )
        .await?;
        self.put(
            &format!("{folder}/chart.svg"),
            chart_svg.to_vec(),
            "image/svg+xml",
        )
        .await?;
        Ok(format!("s3://{}/{folder}/", self.bucket))
    }
}

/// How forecast records leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogDelivery {
    /// Batched in memory and written to the store as one object per flush (`serve`: a
    /// long-running process flushes on a period).
    Objects,
    /// One JSON line per record on stdout, `{"forecast_record": {...}}` (Lambda). Nothing is
    /// written to S3 on the response path; the template's log subscription and Firehose stream
    /// deliver the lines under `PREFIX/forecasts/` in objects whose number follows Firehose's
    /// buffer, not the request rate.
    LogLines,
}

/// The key a forecast record is wrapped in on a log line.
pub const LOG_LINE_KEY: &str = "forecast_record";

/// Batches forecast records in memory and writes them as one object per flush, or writes them as
/// log lines (see [`LogDelivery`]).
pub struct ForecastLog {
    store: AccuracyStore,
    delivery: LogDelivery,
    buffer: Mutex<Vec<ForecastRecord>>,
    /// Records written, and records lost to S3 errors (counted, logged).
    written: AtomicU64,
    failed: AtomicU64,
}

/// Records kept in memory at most; beyond this the oldest unwritten are dropped (and counted).
pub const MAX_BUFFERED_RECORDS: usize = 100_000;

impl ForecastLog {
    pub fn new(store: AccuracyStore) -> Self {
        Self::with_delivery(store, LogDelivery::Objects)
    }

    pub fn with_delivery(store: AccuracyStore, delivery: LogDelivery) -> Self {
        ForecastLog {
            store,
            delivery,
            buffer: Mutex::new(Vec::new()),
            written: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    pub fn store(&self) -> &AccuracyStore {
        &self.store
    }

    pub fn push(&self, records: impl IntoIterator<Item = ForecastRecord>) {
        if self.delivery == LogDelivery::LogLines {
            // One write of all lines, under stdout's lock, so lines never interleave with others.
            let mut lines = Vec::new();
            let mut count = 0;
            for record in records {
                serde_json::to_writer(
                    &mut lines,
                    &LogLine {
                        forecast_record: &record,
                    },
                )
                .expect("records serialise");
                lines.push(b'\n');
                count += 1;
            }
            if count > 0 {
                use std::io::Write;
                let mut stdout = std::io::stdout().lock();
                if stdout
                    .write_all(&lines)
                    .and_then(|()| stdout.flush())
                    .is_ok()
                {
                    self.written.fetch_add(count, Ordering::Relaxed);
                } else {
                    self.failed.fetch_add(count, Ordering::Relaxed);
                }
            }
            return;
        }
        let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
        buffer.extend(records);
        let overflow = buffer.len().saturating_sub(MAX_BUFFERED_RECORDS);
        if overflow > 0 {
            buffer.drain(..overflow);
            self.failed.fetch_add(overflow as u64, Ordering::Relaxed);
        }
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Writes what is buffered as one object. On failure the records go back to the buffer (up
    /// to its bound). Returns the records this flush could not write.
    pub async fn flush(&self) -> u64 {
        let records = std::mem::take(&mut *self.buffer.lock().unwrap_or_else(|p| p.into_inner()));
        if records.is_empty() {
            return 0;
        }
        match self.store.append_forecasts(&records).await {
            Ok(_) => {
                self.written
                    .fetch_add(records.len() as u64, Ordering::Relaxed);
                0
            }
            Err(e) => {
                let unwritten = records.len() as u64;
                tracing::warn!(
                    records = unwritten,
                    "forecast log write failed; will retry: {e}"
                );
                let mut buffer = self.buffer.lock().unwrap_or_else(|p| p.into_inner());
                let newer = std::mem::replace(&mut *buffer, records);
                buffer.extend(newer);
                unwritten
            }
        }
    }
}
