//! Forecasts and actuals as JSON Lines objects on S3, partitioned by time so that an evaluation
//! reads what is new, not everything ever written.
//!
//! ```text
//! PREFIX/forecasts/origin=YYYY-MM-DDTHH/<write time>-<unique>.jsonl  ForecastRecords, by the hour of
//!                                                                  their origin (data time)
//! PREFIX/actuals/arrival=YYYY-MM-DDTHH/<write time>-<unique>.jsonl   Observations, by the hour they
//!                                                                  were written (also .csv files
//!                                                                  with id,timestamp,value that
//!                                                                  other systems drop there)
//! PREFIX/settled/origin=YYYY-MM-DDTHH/run-<run>.jsonl                (forecast, target) pairs
//!                                                                  already scored or counted missing
//! PREFIX/actuals-by-hour/hour=YYYY-MM-DDTHH/...                      the actuals read, by their hour
//! PREFIX/state/evaluation.json                                      the evaluation's watermark
//! PREFIX/state/scores.json                                          each version's latest score
//! PREFIX/state/calibration.json                                     recent errors, online interval calibration
//! PREFIX/state/runs/<run>.json, <run>/...                           each run's plan, parts and journal
//! PREFIX/reports/<time>/report.json, chart.svg                      evaluation reports
//! ```
//!
//! A store written in series-hash shards ([`AccuracyStore::with_shards`], [`shard_of`]) holds
//! each shard's data in its own folder inside each data folder
//! (`PREFIX/forecasts/shard=NNNN/origin=.../`, the same for actuals, settled marks and the index
//! by hour) and its watermark in `PREFIX/state/shard=NNNN/evaluation.json`: one evaluation
//! partition reads only its shards, and the bucket's lifecycle rules, by folder, still apply.
//!
//! Why this split (docs/design.md, "Incremental evaluation"): a pair can only be scored once its
//! actual exists, so new actuals drive each run. They are found by arrival, since backfills and
//! replays carry old timestamps; the forecasts they complete are found by data time, in the
//! origin partitions within one forecast span before each actual. The `settled` marks live beside
//! those forecasts, so a replayed or duplicated actual never scores a pair twice.
//!
//! Writes are batched ([`ForecastLog`]): many forecasts become one object per origin hour, so S3
//! cost and latency do not scale with the request rate, and nothing is written on the request
//! path itself.

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
    /// Which calibration the forecast's intervals came from (`online` or `model.json`), when it
    /// was asked for intervals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intervals_calibration: Option<String>,
    /// The intervals served with the forecast: `evaluate` measures their coverage.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<crate::forecast::Interval>,
    /// Made from a window with a value beyond [`OUT_OF_RANGE_SPREADS`] training standard
    /// deviations of its feature's training mean: `evaluate` scores it apart, and it is never
    /// evidence about the model (a unit change upstream, a stuck sensor, or a caller's forged
    /// history would otherwise read as the model failing).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub out_of_range: bool,
    /// Which role the version that made it held: the answer callers got (`live`, the default of
    /// records written before roles), or a forecast in live's shadow.
    #[serde(default)]
    pub role: ForecastRole,
}

/// The role of the version that made a logged forecast.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForecastRole {
    /// The answer callers got.
    #[default]
    Live,
    /// The challenger, in live's shadow.
    Challenger,
    /// The version the last promotion replaced, in live's shadow on probation.
    Previous,
}

/// How far, in training standard deviations of its feature, a window value may lie from the
/// training mean before the forecast made from it is flagged [`ForecastRecord::out_of_range`].
/// ETTh1 (the bundled model's data) stays within 3.2 of them everywhere; a reading in other units
/// lies orders of magnitude beyond.
pub const OUT_OF_RANGE_SPREADS: f64 = 10.0;

impl ForecastRecord {
    /// What tells this forecast from every other: its series, origin, version and the instant it
    /// was made. Settled pairs name their forecast by it.
    pub fn id(&self) -> String {
        format!(
            "{}|{}|{}|{}",
            self.series_id,
            self.origin
                .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
            self.model_version,
            self.created_at
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("invalid store URI `{0}` (expected s3://BUCKET/PREFIX)")]
    Uri(String),
    #[error("FORECAST_LOG_SHARDS={0}: the store is written in 1 to {MAX_SHARDS} shards")]
    Shards(u32),
    /// The store was written in another number of shards than this process is set to use.
    #[error("s3://{bucket}/{key} says the store is written in {recorded} shards, but FORECAST_LOG_SHARDS is {configured}: evaluating it so would miss or double-read pairs (see the README, \"Evaluation at scale\", to change the number of shards)")]
    Layout {
        bucket: String,
        key: String,
        recorded: u32,
        configured: u32,
    },
    /// A partition asked for shards the run does not have (a forged or stale event).
    #[error("shards {first}..{end} are not a partition of this run: it has shards 0..{shards}")]
    ShardRange { first: u32, end: u32, shards: u32 },
    /// A run part that the reduce step needs is not there.
    #[error("evaluation run {run} has no {what} (s3://{bucket}/{key}): {hint}")]
    RunPartMissing {
        bucket: String,
        key: String,
        run: u64,
        what: String,
        hint: &'static str,
    },
    #[error(transparent)]
    Object(#[from] ObjectError),
    #[error("s3://{bucket}/{key} line {line}: {cause}")]
    Parse {
        bucket: String,
        key: String,
        line: usize,
        cause: String,
    },
    /// Another evaluation holds the store: this one changed nothing.
    #[error("another evaluation ({owner}, since {since}) holds s3://{bucket}/{key} until {until}; this run changed nothing (retry after it ends)")]
    Busy {
        bucket: String,
        key: String,
        owner: String,
        since: DateTime<Utc>,
        until: DateTime<Utc>,
    },
    /// Another evaluation committed the same run, or wrote a state file of a later run, first
    /// (a claim lapsed under a slow run): this one stopped before writing over it.
    #[error("another evaluation committed or applied run {run} or a later one first (s3://{bucket}/{key}); this run stopped there, and the next one finishes what was committed")]
    RunTaken {
        bucket: String,
        key: String,
        run: u64,
    },
}

/// A claim on the evaluation (`state/evaluation.lease`): one evaluation at a time writes the
/// store's state, so a scheduled run and an operator's `evaluate` never interleave their writes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Lease {
    pub owner: String,
    pub since: DateTime<Utc>,
    /// After this the claim lapses (the run died), and the next run may take it.
    pub until: DateTime<Utc>,
}

/// How long an evaluation's claim lasts: longer than any run (the function's timeout is 5
/// minutes), short enough that a run that died holds up the next hourly one by little.
pub const LEASE_HOLD: std::time::Duration = std::time::Duration::from_secs(15 * 60);

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
    pub(crate) fn quarantine(&mut self, key: &str, line: usize, cause: String) {
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
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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

/// Parses each non-blank line of `bytes` into `loaded`, quarantining the lines that fail.
fn json_lines_into<T, E: std::fmt::Display>(
    loaded: &mut Loaded<T>,
    key: &str,
    bytes: &[u8],
    parse: impl Fn(&[u8]) -> Result<T, E>,
) {
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse(line) {
            Ok(item) => loaded.items.push(item),
            Err(e) => loaded.quarantine(key, i + 1, e.to_string()),
        }
    }
}

/// A forecast record as a log line.
#[derive(Serialize)]
struct LogLine<'a> {
    forecast_record: &'a ForecastRecord,
    /// The record's shard (a sharded store): Firehose's dynamic partitioning has no hash
    /// function, so the line says where it goes.
    #[serde(skip_serializing_if = "Option::is_none")]
    shard: Option<String>,
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

/// A (forecast, target time) pair that an evaluation has dealt with: scored against `value`, or
/// counted missing (`value` is `None`). Kept beside the forecast's own partition.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SettledPair {
    /// [`ForecastRecord::id`] of the forecast.
    pub forecast: String,
    pub series_id: String,
    pub timestamp: DateTime<Utc>,
    pub value: Option<f64>,
}

/// Settled marks as they are written: one line per forecast with the pairs one run settled
/// (`"settled": [[target time, value or null], ...]`), a sixth of the bytes of a line per pair.
/// Lines of one pair each (`timestamp`, `value`), as earlier releases wrote them, read as well.
#[derive(Debug, Serialize, Deserialize)]
pub struct SettledLine {
    forecast: String,
    series_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    settled: Vec<(DateTime<Utc>, Option<f64>)>,
    #[serde(default, skip_serializing)]
    timestamp: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing)]
    value: Option<f64>,
}

impl SettledLine {
    /// A line for the pairs of `forecast` (its [`ForecastRecord::id`]) one run settles.
    pub fn new(forecast: String, series_id: String) -> Self {
        SettledLine {
            forecast,
            series_id,
            settled: Vec::new(),
            timestamp: None,
            value: None,
        }
    }

    /// The pair of the forecast's target at `timestamp`: scored against `value`, or missing.
    pub fn push(&mut self, timestamp: DateTime<Utc>, value: Option<f64>) {
        self.settled.push((timestamp, value));
    }

    /// The [`ForecastRecord::id`] of the forecast whose pairs these are.
    pub fn forecast(&self) -> &str {
        &self.forecast
    }

    /// The pairs the line holds.
    pub fn len(&self) -> usize {
        self.settled.len() + usize::from(self.timestamp.is_some())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The pairs the line holds.
    pub fn into_pairs(self) -> Vec<SettledPair> {
        let SettledLine {
            forecast,
            series_id,
            settled,
            timestamp,
            value,
        } = self;
        let one = timestamp.map(|t| (t, value));
        settled
            .into_iter()
            .chain(one)
            .map(|(timestamp, value)| SettledPair {
                forecast: forecast.clone(),
                series_id: series_id.clone(),
                timestamp,
                value,
            })
            .collect()
    }
}

/// Where the evaluation stopped (`state/evaluation.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct EvaluationState {
    /// Actual objects last modified at or before this were read by an earlier run.
    #[serde(default)]
    pub actuals_read_until: Option<DateTime<Utc>>,
    /// Actual objects modified after `actuals_read_until` that were read already (the watermark
    /// trails the clock by a settle time, so objects still being written are never skipped).
    #[serde(default)]
    pub read_since: Vec<String>,
    /// Per series, the latest actual timestamp read: targets that far back (less the grace) are
    /// due, and a due target without an actual is missing.
    #[serde(default)]
    pub actuals_seen_until: BTreeMap<String, DateTime<Utc>>,
    /// Forecast objects modified after `actuals_read_until` that a run already looked at for
    /// late forecasts (as `read_since` for actuals).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub forecasts_seen_since: Vec<String>,
    /// Runs committed so far: the next run is `runs + 1`, its journal `state/runs/<run>.json`.
    #[serde(default)]
    pub runs: u64,
}

/// The runs committed so far (`state/runs.json`).
#[derive(Debug, Serialize, Deserialize)]
struct RunsCommitted {
    runs: u64,
}

/// How the store is written (`state/layout.json`): recorded by the first evaluation.
#[derive(Debug, Serialize, Deserialize)]
struct StoreLayout {
    shards: u32,
}

/// The user metadata that names the evaluation run that wrote a state file.
const RUN_METADATA: &str = "evaluation-run";

/// The partition name of an hour: `YYYY-MM-DDTHH`. Sorts as time does.
pub fn hour_partition(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H").to_string()
}

/// Parallel reads and writes per evaluation: enough to hide S3's latency, few enough to stay far
/// from its per-prefix request limits and the process's sockets.
pub const MAX_CONCURRENT_OBJECT_CALLS: usize = 16;

/// The accuracy store on S3.
#[derive(Clone)]
pub struct AccuracyStore {
    objects: S3Objects,
    bucket: String,
    /// Key prefix, empty or ending with '/'.
    prefix: String,
    /// One shard's folder inside each data folder (`shard=NNNN/`), or "" for the whole store.
    shard: String,
    /// Series-hash shards the data is written in (1: no `shard=` folders, the original layout).
    shards: u32,
}

/// The most shards a store may be written in: the shard's name has four digits.
pub const MAX_SHARDS: u32 = 10_000;

/// The shard of a series among `shards`: FNV-1a (64 bit) of its id's UTF-8 bytes, modulo
/// `shards`. Simple enough for any producer of actuals to compute (README, "Evaluation at
/// scale"); stable across processes and releases, unlike the standard library's hasher.
pub fn shard_of(series_id: &str, shards: u32) -> u32 {
    (fnv1a(series_id.as_bytes()) % u64::from(shards.max(1))) as u32
}

/// FNV-1a, 64 bit: a hash that is the same in every process and release.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// A shard's name in keys and log lines: four digits.
pub fn shard_name(index: u32) -> String {
    format!("{index:04}")
}

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique_name(now: DateTime<Utc>) -> String {
    format!(
        "{}-{:x}-{:x}.jsonl",
        now.format("%Y%m%dT%H%M%S%.3f"),
        crate::entropy::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

fn json_lines<T: Serialize>(items: &[T]) -> Vec<u8> {
    let mut body = Vec::new();
    for item in items {
        serde_json::to_writer(&mut body, item).expect("records serialise");
        body.push(b'\n');
    }
    body
}

/// Runs `call` on every item, at most [`MAX_CONCURRENT_OBJECT_CALLS`] at once, keeping the order.
async fn bounded<I, T, F, Fut>(items: I, call: F) -> Result<Vec<T>, StoreError>
where
    I: IntoIterator,
    F: FnMut(I::Item) -> Fut,
    Fut: std::future::Future<Output = Result<T, StoreError>>,
{
    use futures_util::{StreamExt, TryStreamExt};
    futures_util::stream::iter(items)
        .map(call)
        .buffered(MAX_CONCURRENT_OBJECT_CALLS)
        .try_collect()
        .await
}

impl AccuracyStore {
    pub fn new(
        client: impl Into<crate::aws::Shared<aws_sdk_s3::Client>>,
        uri: &str,
    ) -> Result<Self, StoreError> {
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
            shard: String::new(),
            shards: 1,
        })
    }

    /// The same store written in `shards` series-hash shards: each under `shard=NNNN/`, with the
    /// original layout inside (see the module doc).
    pub fn with_shards(mut self, shards: u32) -> Result<Self, StoreError> {
        if !(1..=MAX_SHARDS).contains(&shards) {
            return Err(StoreError::Shards(shards));
        }
        self.shards = shards;
        Ok(self)
    }

    /// The number of series-hash shards the data is written in.
    pub fn shards(&self) -> u32 {
        self.shards
    }

    /// Shard `index`: its own forecasts, actuals, settled marks and index by hour (each data
    /// folder's `shard=NNNN/`) and watermark (`state/shard=NNNN/evaluation.json`); the store
    /// itself when it is not sharded. Run journals and shared state are the store's.
    pub fn shard(&self, index: u32) -> AccuracyStore {
        let shard = if self.shards > 1 {
            format!("shard={}/", shard_name(index))
        } else {
            String::new()
        };
        AccuracyStore {
            objects: self.objects.clone(),
            bucket: self.bucket.clone(),
            prefix: self.prefix.clone(),
            shard,
            shards: 1,
        }
    }

    /// Groups `items` by the shard of their series.
    fn by_shard<'a, T>(
        &self,
        items: &'a [T],
        series: impl Fn(&T) -> &str,
    ) -> BTreeMap<u32, Vec<&'a T>> {
        let mut groups: BTreeMap<u32, Vec<&T>> = BTreeMap::new();
        for item in items {
            groups
                .entry(shard_of(series(item), self.shards))
                .or_default()
                .push(item);
        }
        groups
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

    /// `PREFIX/folder/partition=hour/`
    fn partition(&self, folder: &str, name: &str, hour: DateTime<Utc>) -> String {
        format!(
            "{}{folder}/{}{name}={}/",
            self.prefix,
            self.shard,
            hour_partition(hour)
        )
    }

    /// A `StartAfter` that lists from `hour`'s partition on: every key in it sorts after this.
    fn start_of_partition(&self, folder: &str, name: &str, hour: DateTime<Utc>) -> String {
        let partition = self.partition(folder, name, hour);
        partition.trim_end_matches('/').to_string()
    }

    /// Writes `items` grouped by hour, one object per hour, in parallel; returns the keys.
    async fn append_by_hour<T: Serialize>(
        &self,
        folder: &str,
        name: &str,
        items: impl IntoIterator<Item = (DateTime<Utc>, T)>,
        object_name: &str,
    ) -> Result<Vec<String>, StoreError> {
        let mut by_hour: BTreeMap<String, Vec<T>> = BTreeMap::new();
        for (hour, item) in items {
            by_hour
                .entry(self.partition(folder, name, hour))
                .or_default()
                .push(item);
        }
        let objects: Vec<(String, Vec<u8>)> = by_hour
            .into_iter()
            .map(|(partition, group)| (format!("{partition}{object_name}"), json_lines(&group)))
            .collect();
        bounded(objects, |(key, body)| async move {
            self.put(&key, body, "application/x-ndjson").await?;
            Ok(key)
        })
        .await
    }

    /// Writes forecast records under their origin hours: one object per hour in the batch (live
    /// traffic has one or two).
    pub async fn append_forecasts(
        &self,
        records: &[ForecastRecord],
    ) -> Result<Vec<String>, StoreError> {
        let name = unique_name(Utc::now());
        let mut keys = Vec::new();
        for (index, group) in self.by_shard(records, |r| &r.series_id) {
            let by_origin = group.into_iter().map(|r| (r.origin, r));
            let shard = self.shard(index);
            keys.extend(
                shard
                    .append_by_hour("forecasts", "origin", by_origin, &name)
                    .await?,
            );
        }
        Ok(keys)
    }

    /// Writes observations as one object under the current hour.
    pub async fn append_actuals(
        &self,
        observations: &[Observation],
    ) -> Result<Option<String>, StoreError> {
        self.append_actuals_arrived(observations, Utc::now()).await
    }

    /// Writes observations as one object under the hour they arrived: importing a history from
    /// another store keeps its arrival hours, so the next evaluation does not list it as new
    /// (it still reads it once, when no watermark exists yet).
    pub async fn append_actuals_arrived(
        &self,
        observations: &[Observation],
        arrived: DateTime<Utc>,
    ) -> Result<Option<String>, StoreError> {
        let name = unique_name(arrived);
        let mut last = None;
        for (index, group) in self.by_shard(observations, |o| &o.series_id) {
            let by_arrival = group.into_iter().map(|o| (arrived, o));
            let shard = self.shard(index);
            last = shard
                .append_by_hour("actuals", "arrival", by_arrival, &name)
                .await?
                .pop()
                .or(last);
        }
        Ok(last)
    }

    /// Records which pairs run `run` scored or counted missing, beside their forecasts'
    /// partitions: one object per origin hour, named after the run, so writing them again (a
    /// committed run rolled forward) replaces them.
    pub async fn write_settled(
        &self,
        settled: &[(DateTime<Utc>, SettledLine)],
        run: u64,
    ) -> Result<(), StoreError> {
        self.append_by_hour(
            "settled",
            "origin",
            settled.iter().map(|(o, line)| (*o, line)),
            &format!("run-{run:010}.jsonl"),
        )
        .await?;
        Ok(())
    }

    /// Actual objects under `actuals/` in the arrival partitions from the hour before `since`
    /// on (all of them without `since`). The hour's slack covers writers whose clocks run behind
    /// S3's.
    pub async fn list_actuals(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<crate::objects::Listed>, StoreError> {
        let folder = format!("{}actuals/{}", self.prefix, self.shard);
        let start_after = since
            .map(|t| self.start_of_partition("actuals", "arrival", t - chrono::Duration::hours(1)));
        Ok(self
            .objects
            .list_range(&folder, start_after.as_deref(), None)
            .await?)
    }

    /// Indexes actuals an evaluation read by their own (data) hour, under
    /// `PREFIX/actuals-by-hour/hour=HOUR/`: a forecast that reaches the log after its actuals
    /// were read finds them there (see `evaluate`'s late forecasts). Written before the run
    /// commits, under names of its own: a run that stops or loses the commit adds a copy of real
    /// actuals (the first value of a (series, time) wins) and overwrites nobody's.
    pub async fn index_actuals_by_hour(
        &self,
        observations: &[Observation],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.append_by_hour(
            "actuals-by-hour",
            "hour",
            observations.iter().map(|o| (o.timestamp, o)),
            &unique_name(now),
        )
        .await?;
        Ok(())
    }

    /// The actuals indexed for the data hours in `hours` (ranges of whole hours, first and last).
    pub async fn read_actuals_by_hour(
        &self,
        hours: &[(DateTime<Utc>, DateTime<Utc>)],
    ) -> Result<Loaded<Observation>, StoreError> {
        let keys = self
            .list_hour_ranges("actuals-by-hour", "hour", hours)
            .await?;
        self.read_actuals(&keys).await
    }

    /// Forecast objects in the origin partitions `[first, last]` with their write times: where
    /// a run looks for forecasts written since the last one (late to their actuals).
    pub async fn list_forecasts_written(
        &self,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    ) -> Result<Vec<crate::objects::Listed>, StoreError> {
        self.list_hours("forecasts", "origin", first, last).await
    }

    /// The objects of `folder`'s `name=HOUR` partitions from `first` to `last` (whole hours), in
    /// key order: one listing, however many partitions the range spans.
    async fn list_hours(
        &self,
        folder: &str,
        name: &str,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    ) -> Result<Vec<crate::objects::Listed>, StoreError> {
        let start_after = self.start_of_partition(folder, name, first);
        let stop_at = self.partition(folder, name, last + chrono::Duration::hours(1));
        Ok(self
            .objects
            .list_range(
                &format!("{}{folder}/{}", self.prefix, self.shard),
                Some(&start_after),
                Some(&stop_at),
            )
            .await?)
    }

    /// The keys of [`AccuracyStore::list_hours`] over several ranges, listed in parallel.
    async fn list_hour_ranges(
        &self,
        folder: &str,
        name: &str,
        ranges: &[(DateTime<Utc>, DateTime<Utc>)],
    ) -> Result<Vec<String>, StoreError> {
        let listed = bounded(ranges.iter().copied(), |(first, last)| {
            self.list_hours(folder, name, first, last)
        })
        .await?;
        Ok(listed.into_iter().flatten().map(|l| l.key).collect())
    }

    /// Keys in the `folder` partitions (`forecasts` or `settled`) of the origin hours in
    /// `[first, last]`, each range given by its first and last hour.
    pub async fn list_origin_hours(
        &self,
        folder: &str,
        ranges: &[(DateTime<Utc>, DateTime<Utc>)],
    ) -> Result<Vec<String>, StoreError> {
        self.list_hour_ranges(folder, "origin", ranges).await
    }

    /// Reads `keys` in parallel (bounded), in key order; objects gone since the listing are
    /// skipped.
    /// Reads the objects in `keys` (the missing skipped), a few at once, handing each to `parse`
    /// in the order given as soon as it is read: the bytes of a whole increment are never held
    /// at once, only those of the objects in flight.
    async fn read_each(
        &self,
        keys: &[String],
        mut parse: impl FnMut(&str, &[u8]),
    ) -> Result<(), StoreError> {
        use futures_util::{StreamExt, TryStreamExt};
        let mut objects = futures_util::stream::iter(keys)
            .map(|key| async move { Ok::<_, StoreError>(self.get(key).await?.map(|b| (key, b))) })
            .buffered(MAX_CONCURRENT_OBJECT_CALLS);
        while let Some(object) = objects.try_next().await? {
            if let Some((key, bytes)) = object {
                parse(key, &bytes);
            }
        }
        Ok(())
    }

    /// The forecast records in `keys`. A line that is not a record is quarantined (skipped, and
    /// reported with its key and line), never fatal: one bad line must not stop every later
    /// evaluation.
    pub async fn read_forecasts(
        &self,
        keys: &[String],
    ) -> Result<Loaded<ForecastRecord>, StoreError> {
        let mut loaded = Loaded::default();
        self.read_each(keys, |key, bytes| {
            json_lines_into(&mut loaded, key, bytes, parse_record_line);
        })
        .await?;
        Ok(loaded)
    }

    /// The settled pairs in `keys`.
    pub async fn read_settled(&self, keys: &[String]) -> Result<Loaded<SettledPair>, StoreError> {
        let mut lines = Loaded::default();
        self.read_each(keys, |key, bytes| {
            json_lines_into(&mut lines, key, bytes, |line| {
                serde_json::from_slice::<SettledLine>(line)
            });
        })
        .await?;
        Ok(Loaded {
            items: lines
                .items
                .into_iter()
                .flat_map(SettledLine::into_pairs)
                .collect(),
            quarantined: lines.quarantined,
        })
    }

    /// The observations in `keys`, in the order given: our JSON Lines, and CSV files
    /// (`id,timestamp,value`). Unreadable lines are quarantined.
    pub async fn read_actuals(&self, keys: &[String]) -> Result<Loaded<Observation>, StoreError> {
        let mut loaded = Loaded::default();
        self.read_each(keys, |key, bytes| {
            if key.ends_with(".csv") {
                let mut reader = csv::ReaderBuilder::new()
                    .trim(csv::Trim::All)
                    .from_reader(bytes);
                for (i, row) in reader.records().enumerate() {
                    match csv_observation(row) {
                        Ok(observation) => loaded.items.push(observation),
                        Err(cause) => loaded.quarantine(key, i + 2, cause),
                    }
                }
            } else {
                json_lines_into(&mut loaded, key, bytes, |line| serde_json::from_slice(line));
            }
        })
        .await?;
        Ok(loaded)
    }

    /// A JSON object under `PREFIX/state/`; the default before the first write.
    async fn read_state<T: serde::de::DeserializeOwned + Default>(
        &self,
        name: &str,
    ) -> Result<T, StoreError> {
        let key = self.state_key(name);
        let Some(bytes) = self.get(&key).await? else {
            return Ok(T::default());
        };
        serde_json::from_slice(&bytes).map_err(|e| StoreError::Parse {
            bucket: self.bucket.clone(),
            key,
            line: 1,
            cause: e.to_string(),
        })
    }

    /// Writes `PREFIX/state/{name}` as evaluation run `run` leaves it, unless a later run wrote
    /// it already: the writing run's number travels in the object's metadata, and the write is
    /// conditional on the object read (If-Match, or If-None-Match when there was none). A run
    /// that stalled past its claim therefore never puts back an older state over a newer one;
    /// it gets [`StoreError::RunTaken`] instead. Returns whether it wrote.
    pub async fn write_state_of_run<T: Serialize>(
        &self,
        name: &str,
        value: &T,
        run: u64,
    ) -> Result<bool, StoreError> {
        let key = self.state_key(name);
        let current = self.objects.get_if_exists(&key).await?;
        let written_by = current
            .as_ref()
            .and_then(|o| o.metadata.get(RUN_METADATA))
            .and_then(|r| r.parse::<u64>().ok())
            .unwrap_or(0);
        if written_by >= run {
            return Ok(false);
        }
        let precondition = match current.as_ref().map(|o| o.etag.as_deref()) {
            None => Precondition::Absent,
            Some(Some(etag)) => Precondition::Matches(etag),
            Some(None) => Precondition::None,
        };
        let body = serde_json::to_vec_pretty(value).expect("serialises");
        self.put_for_run(&key, body, precondition, run).await?;
        Ok(true)
    }

    /// A conditional write of run `run`'s, the run's number in the object's metadata; a lost
    /// condition is [`StoreError::RunTaken`].
    async fn put_for_run(
        &self,
        key: &str,
        body: Vec<u8>,
        precondition: Precondition<'_>,
        run: u64,
    ) -> Result<(), StoreError> {
        let metadata = [(RUN_METADATA, run.to_string())];
        match self
            .objects
            .put_with_metadata(key, body, "application/json", precondition, &metadata)
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if e.kind == crate::objects::ObjectErrorKind::Conflict => {
                Err(StoreError::RunTaken {
                    bucket: self.bucket.clone(),
                    key: key.to_owned(),
                    run,
                })
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn write_state<T: Serialize>(&self, name: &str, value: &T) -> Result<(), StoreError> {
        let key = self.state_key(name);
        let body = serde_json::to_vec_pretty(value).expect("serialises");
        self.put(&key, body, "application/json").await
    }

    /// `PREFIX/state/NAME`, or the shard's own `PREFIX/state/shard=NNNN/NAME`.
    fn state_key(&self, name: &str) -> String {
        format!("{}state/{}{name}", self.prefix, self.shard)
    }

    fn lease_key(&self) -> String {
        format!("{}state/evaluation.lease", self.prefix)
    }

    /// Claims the evaluation for `hold`, with a conditional write: created if absent, taken over
    /// (If-Match) if the last claim lapsed. Another live claim, or a claim won by a concurrent
    /// run between the read and the write, is [`StoreError::Busy`], before anything is written.
    pub async fn claim_evaluation(
        &self,
        now: DateTime<Utc>,
        hold: std::time::Duration,
    ) -> Result<Lease, StoreError> {
        let key = self.lease_key();
        let lease = Lease {
            owner: format!("{}-{:x}", std::process::id(), crate::entropy::id()),
            since: now,
            until: now + chrono::Duration::from_std(hold).unwrap_or(chrono::Duration::minutes(15)),
        };
        let body = serde_json::to_vec(&lease).expect("serialises");
        let current = self.objects.get_if_exists(&key).await?;
        let precondition = match &current {
            None => Precondition::Absent,
            Some(object) => {
                if let Ok(held) = serde_json::from_slice::<Lease>(&object.bytes) {
                    if held.until > now {
                        return Err(self.busy(key, held));
                    }
                }
                match object.etag.as_deref() {
                    Some(etag) => Precondition::Matches(etag),
                    None => Precondition::None,
                }
            }
        };
        match self
            .objects
            .put(&key, body, "application/json", precondition)
            .await
        {
            Ok(()) => Ok(lease),
            Err(e) if e.kind == crate::objects::ObjectErrorKind::Conflict => {
                // A concurrent run won the claim between the read and the write.
                let winner = self
                    .objects
                    .get_if_exists(&key)
                    .await?
                    .and_then(|o| serde_json::from_slice::<Lease>(&o.bytes).ok())
                    .unwrap_or_else(|| lease.clone());
                Err(self.busy(key, winner))
            }
            Err(e) => Err(e.into()),
        }
    }

    fn busy(&self, key: String, held: Lease) -> StoreError {
        StoreError::Busy {
            bucket: self.bucket.clone(),
            key,
            owner: held.owner,
            since: held.since,
            until: held.until,
        }
    }

    /// Ends `lease` (it lapses now), if it is still this run's: a run that outlived its claim
    /// leaves the next one's alone.
    pub async fn release_evaluation(&self, lease: &Lease) -> Result<(), StoreError> {
        let key = self.lease_key();
        let Some(object) = self.objects.get_if_exists(&key).await? else {
            return Ok(());
        };
        let held: Option<Lease> = serde_json::from_slice(&object.bytes).ok();
        if held.as_ref().map(|h| &h.owner) != Some(&lease.owner) {
            return Ok(());
        }
        let lapsed = Lease {
            until: lease.since,
            ..lease.clone()
        };
        let precondition = match object.etag.as_deref() {
            Some(etag) => Precondition::Matches(etag),
            None => Precondition::None,
        };
        self.objects
            .put(
                &key,
                serde_json::to_vec(&lapsed).expect("serialises"),
                "application/json",
                precondition,
            )
            .await?;
        Ok(())
    }

    /// Where the last evaluation stopped; the default state before the first.
    pub async fn evaluation_state(&self) -> Result<EvaluationState, StoreError> {
        self.read_state("evaluation.json").await
    }

    /// The rolling windows of scored errors and the interval calibrations they give
    /// (`state/calibration.json`, see [`super::calibration`]).
    pub async fn online_calibrations(
        &self,
    ) -> Result<super::calibration::OnlineCalibrations, StoreError> {
        self.read_state("calibration.json").await
    }

    pub async fn set_online_calibrations(
        &self,
        online: &super::calibration::OnlineCalibrations,
    ) -> Result<(), StoreError> {
        self.write_state("calibration.json", online).await
    }

    /// Every pair of versions compared on the same actuals so far (`state/comparisons.json`):
    /// what champion/challenger decisions read.
    pub async fn comparisons(&self) -> Result<crate::monitor::verdict::Comparisons, StoreError> {
        self.read_state("comparisons.json").await
    }

    /// The latest scores of each model version (`state/scores.json`): what a rollback checks
    /// before it acts, so that it only ever rolls back a version for that version's own errors.
    pub async fn latest_scores(&self) -> Result<BTreeMap<String, VersionScore>, StoreError> {
        self.read_state("scores.json").await
    }

    fn run_key(&self, run: u64) -> String {
        format!("{}state/runs/{run:010}.json", self.prefix)
    }

    /// A part of run `run` (its plan, a shard's journal, a shard's partial result), beside the
    /// run's journal so that the same lifecycle rule expires it.
    fn run_part_key(&self, run: u64, part: &str) -> String {
        format!("{}state/runs/{run:010}/{part}", self.prefix)
    }

    /// Writes a part of run `run` unless one is there (If-None-Match), and returns the part the
    /// store holds after: `value`, or what another attempt wrote first, which every attempt
    /// then works from.
    pub async fn commit_run_part<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        run: u64,
        part: &str,
        value: T,
    ) -> Result<T, StoreError> {
        self.written_first(self.run_part_key(run, part), value, run)
            .await
    }

    /// Writes a part of run `run` whatever is there (a part derived from a committed one).
    pub async fn put_run_part<T: Serialize>(
        &self,
        run: u64,
        part: &str,
        value: &T,
    ) -> Result<(), StoreError> {
        let key = self.run_part_key(run, part);
        self.put_json_for_run(&key, value, Precondition::None, run)
            .await
    }

    /// `value` as JSON at `key`, under `precondition`, marked as written by run `run`.
    async fn put_json_for_run<T: Serialize>(
        &self,
        key: &str,
        value: &T,
        precondition: Precondition<'_>,
        run: u64,
    ) -> Result<(), StoreError> {
        let body = serde_json::to_vec(value).expect("serialises");
        self.put_for_run(key, body, precondition, run).await
    }

    /// Writes `value` at `key` unless an object is there (If-None-Match), and returns what is
    /// there after: `value`, or what another writer put first.
    async fn written_first<T: Serialize + serde::de::DeserializeOwned>(
        &self,
        key: String,
        value: T,
        run: u64,
    ) -> Result<T, StoreError> {
        match self
            .put_json_for_run(&key, &value, Precondition::Absent, run)
            .await
        {
            Ok(()) => Ok(value),
            Err(taken @ StoreError::RunTaken { .. }) => match self.read_json(key).await? {
                Some(first) => Ok(first),
                None => Err(taken),
            },
            Err(e) => Err(e),
        }
    }

    /// A part of run `run`, if it was written.
    pub async fn run_part<T: serde::de::DeserializeOwned>(
        &self,
        run: u64,
        part: &str,
    ) -> Result<Option<T>, StoreError> {
        self.read_json(self.run_part_key(run, part)).await
    }

    /// [`Self::run_part`], or [`StoreError::RunPartMissing`] naming it and what to do.
    pub async fn required_run_part<T: serde::de::DeserializeOwned>(
        &self,
        run: u64,
        part: &str,
        what: String,
        hint: &'static str,
    ) -> Result<T, StoreError> {
        let key = self.run_part_key(run, part);
        self.read_json(key.clone())
            .await?
            .ok_or_else(|| StoreError::RunPartMissing {
                bucket: self.bucket.clone(),
                key,
                run,
                what,
                hint,
            })
    }

    async fn read_json<T: serde::de::DeserializeOwned>(
        &self,
        key: String,
    ) -> Result<Option<T>, StoreError> {
        let Some(bytes) = self.get(&key).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StoreError::Parse {
                bucket: self.bucket.clone(),
                key,
                line: 1,
                cause: e.to_string(),
            })
    }

    /// The runs committed so far (`state/runs.json`). A store that earlier releases evaluated
    /// has none: its count is the watermark's, recorded here before any run is planned, since a
    /// shard's watermark moves before its run is committed.
    pub async fn runs_committed(&self) -> Result<u64, StoreError> {
        let key = self.state_key("runs.json");
        if let Some(committed) = self.read_json::<RunsCommitted>(key.clone()).await? {
            return Ok(committed.runs);
        }
        let runs = self.shard(0).evaluation_state().await?.runs;
        Ok(self
            .written_first(key, RunsCommitted { runs }, runs)
            .await?
            .runs)
    }

    /// Records run `run` as committed, unless a later run was recorded first.
    pub async fn set_runs_committed(&self, run: u64) -> Result<(), StoreError> {
        self.write_state_of_run("runs.json", &RunsCommitted { runs: run }, run)
            .await?;
        Ok(())
    }

    /// [`StoreError::Layout`]: the store (or a run's plan) says `recorded` shards, this process
    /// is set to another number.
    pub fn layout_mismatch(&self, recorded: u32) -> StoreError {
        StoreError::Layout {
            bucket: self.bucket.clone(),
            key: self.state_key("layout.json"),
            recorded,
            configured: self.shards,
        }
    }

    /// Checks that the store is written in as many shards as this process is set to use, and
    /// records the number on first use (`state/layout.json`).
    pub async fn check_layout(&self) -> Result<(), StoreError> {
        let key = self.state_key("layout.json");
        let configured = self.shards;
        let recorded = match self.read_json::<StoreLayout>(key.clone()).await? {
            Some(layout) => layout.shards,
            None => {
                let layout = StoreLayout { shards: configured };
                self.written_first(key, layout, 0).await?.shards
            }
        };
        if recorded != configured {
            return Err(self.layout_mismatch(recorded));
        }
        Ok(())
    }

    /// Commits evaluation run `run`: writes its journal if no journal of that run exists
    /// (If-None-Match). Journals are kept (the bucket's lifecycle expires them), so a run number
    /// is committed once, ever. Another evaluation that committed the run first is
    /// [`StoreError::RunTaken`], and this one has changed nothing.
    pub async fn commit_run<T: Serialize>(&self, run: u64, journal: &T) -> Result<(), StoreError> {
        self.put_json_for_run(&self.run_key(run), journal, Precondition::Absent, run)
            .await
    }

    /// The journal of run `run`, if it was committed and not yet finished.
    pub async fn committed_run<T: serde::de::DeserializeOwned>(
        &self,
        run: u64,
    ) -> Result<Option<T>, StoreError> {
        self.read_json(self.run_key(run)).await
    }

    /// Writes a report folder: `report.json` and each named SVG chart; returns its URI.
    pub async fn write_report(
        &self,
        report_json: &[u8],
        charts: &[(&str, Vec<u8>)],
        now: DateTime<Utc>,
    ) -> Result<String, StoreError> {
        let folder = format!("{}reports/{}", self.prefix, now.format("%Y%m%dT%H%M%SZ"));
        self.put(
            &format!("{folder}/report.json"),
            report_json.to_vec(),
            "application/json",
        )
        .await?;
        for (name, svg) in charts {
            self.put(&format!("{folder}/{name}"), svg.clone(), "image/svg+xml")
                .await?;
        }
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
            let records: Vec<ForecastRecord> = records.into_iter().collect();
            let wrapped: Vec<LogLine> = records.iter().map(|r| self.log_line(r)).collect();
            let (lines, count) = (json_lines(&wrapped), records.len() as u64);
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

    /// `record` as a log line, with its shard when the store is sharded.
    fn log_line<'a>(&self, forecast_record: &'a ForecastRecord) -> LogLine<'a> {
        let shards = self.store.shards();
        LogLine {
            forecast_record,
            shard: (shards > 1).then(|| shard_name(shard_of(&forecast_record.series_id, shards))),
        }
    }

    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    pub fn failed(&self) -> u64 {
        self.failed.load(Ordering::Relaxed)
    }

    /// Records waiting for the next flush.
    pub fn buffered(&self) -> usize {
        self.buffer.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Writes what is buffered, one object per origin hour. On failure the records go back to the buffer (up
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

#[cfg(test)]
mod tests {
    use super::*;

    fn client() -> aws_sdk_s3::Client {
        let config = aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    fn record(series: &str, origin: DateTime<Utc>) -> ForecastRecord {
        ForecastRecord {
            series_id: series.into(),
            origin,
            last_value: 1.0,
            timestamps: vec![],
            values: vec![],
            model: "m".into(),
            model_version: "1".into(),
            request_id: None,
            created_at: origin,
            intervals_calibration: None,
            intervals: Vec::new(),
            out_of_range: false,
            role: ForecastRole::Live,
        }
    }

    #[test]
    fn a_log_line_names_the_shard_whose_folder_the_store_writes_its_series_in() {
        // GIVEN a store in 16 shards, delivering forecasts as log lines (Firehose partitions them)
        let store = AccuracyStore::new(client(), "s3://b/monitoring")
            .unwrap()
            .with_shards(16)
            .unwrap();
        let log = ForecastLog::with_delivery(store.clone(), LogDelivery::LogLines);
        let origin = DateTime::parse_from_rfc3339("2018-01-01T05:00:00Z")
            .unwrap()
            .to_utc();
        for series in ["meter-0000001", "meter-0000002", "a/b c", "ünïcode"] {
            let record = record(series, origin);
            // WHEN it becomes a line
            let line = serde_json::to_value(log.log_line(&record)).unwrap();
            // THEN the line's shard is the folder the store itself writes the series in, as
            // the template's Firehose prefix spells it
            let folder = store
                .shard(shard_of(series, 16))
                .partition("forecasts", "origin", origin);
            let shard = line["shard"].as_str().unwrap();
            assert_eq!(
                folder,
                format!(
                    "monitoring/forecasts/shard={shard}/origin={}/",
                    &line[LOG_LINE_KEY]["origin"].as_str().unwrap()[..13]
                )
            );
        }
        // AND an unsharded store's lines carry no shard
        let plain = ForecastLog::with_delivery(
            AccuracyStore::new(client(), "s3://b/monitoring").unwrap(),
            LogDelivery::LogLines,
        );
        let record = record("s", origin);
        assert!(serde_json::to_value(plain.log_line(&record))
            .unwrap()
            .get("shard")
            .is_none());
    }

    #[test]
    fn shards_are_fnv_1a_of_the_id_modulo_their_number() {
        // FNV-1a 64 of "a" is 0xaf63dc4c8601ec8c (the published test vector)
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(
            shard_of("a", 1000),
            (0xaf63_dc4c_8601_ec8c_u64 % 1000) as u32
        );
        assert_eq!(shard_of("anything", 1), 0);
    }
}
