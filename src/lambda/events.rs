//! What arrives at the function: event shapes, the scheduled actions, and the error an invocation
//! reports to Lambda.

use lambda_runtime::Diagnostic;

use crate::service::jobs::JobError;
use serde::Deserialize;
use serde_json::Value;

/// A failed invocation; [`InvocationError::kind`] becomes the Lambda `errorType`.
#[derive(Debug, thiserror::Error)]
pub enum InvocationError {
    /// The event has a known shape but not the fields that shape needs.
    #[error("{0}")]
    InvalidEvent(String),
    /// The event has no shape the function knows.
    #[error("{0}")]
    UnrecognisedEvent(String),
    /// The function itself failed (the router, an answer that would not serialise).
    #[error("{0}")]
    Internal(String),
    /// The job the event asked for failed; the job's own kind names it.
    #[error(transparent)]
    Job(#[from] JobError),
}

impl InvocationError {
    pub fn kind(&self) -> &'static str {
        match self {
            InvocationError::InvalidEvent(_) => "InvalidEvent",
            InvocationError::UnrecognisedEvent(_) => "UnrecognisedEvent",
            InvocationError::Internal(_) => "Internal",
            InvocationError::Job(job) => job.kind(),
        }
    }
}

impl From<InvocationError> for Diagnostic {
    fn from(e: InvocationError) -> Self {
        Diagnostic {
            error_type: e.kind().to_string(),
            error_message: e.to_string(),
        }
    }
}

/// The scheduled jobs, from an EventBridge rule's input.
#[derive(Debug, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ScheduledAction {
    /// Reads series from `input` (CSV or JSON Lines on S3) and writes forecasts to `output`.
    BatchForecast {
        input: String,
        output: String,
        /// Interval levels around every forecast, as in a request's `intervals`.
        #[serde(default)]
        intervals: Vec<f64>,
    },
    /// One shard from a Distributed Map without an ItemBatcher: the `listObjectsV2` item's fields
    /// next to the `bucket` and the run's `output` prefix (added by the map's ItemSelector).
    BatchForecastShard {
        bucket: String,
        output: String,
        #[serde(rename = "Key")]
        key: String,
        #[serde(rename = "Size", default)]
        _size: Option<Value>,
        #[serde(rename = "Etag", default)]
        _etag: Option<Value>,
        #[serde(rename = "LastModified", default)]
        _last_modified: Option<Value>,
        #[serde(rename = "StorageClass", default)]
        _storage_class: Option<Value>,
        #[serde(default)]
        intervals: Vec<f64>,
    },
    /// Writes a run's manifest, once its shards are done: which shards under `input` have an
    /// output under `output`, which failed and which are missing.
    BatchManifest { input: String, output: String },
    /// Scores the logged forecasts against the actuals that arrived (the accuracy loop).
    Evaluate {},
    /// Plans the next evaluation run in at most `partitions` partitions (the evaluation state
    /// machine's first step).
    EvaluatePlan {
        #[serde(default = "one_partition")]
        partitions: u32,
    },
    /// Evaluates shards `first..end` of a planned run (one item of the state machine's map).
    EvaluatePartition { run: u64, first: u32, end: u32 },
    /// Merges a run's partitions and publishes it (the state machine's last step).
    EvaluateReduce { run: u64 },
}

fn one_partition() -> u32 {
    1
}

/// A batch of shards from a Distributed Map's ItemBatcher:
/// `{"Items": [{"Key": ...}, ...], "BatchInput": {"action": "batch-forecast-shard", "bucket", "output"}}`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase", deny_unknown_fields)]
pub struct ShardBatch {
    pub items: Vec<ListedItem>,
    pub batch_input: ShardBatchInput,
}

/// One object as `s3:listObjectsV2` lists it; only the key matters here.
#[derive(Debug, Deserialize)]
pub struct ListedItem {
    #[serde(rename = "Key")]
    pub key: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardBatchInput {
    pub action: ShardAction,
    pub bucket: String,
    pub output: String,
    /// Interval levels around every forecast, as in a request's `intervals`.
    #[serde(default)]
    pub intervals: Vec<f64>,
}

/// The one action a shard batch may carry.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ShardAction {
    BatchForecastShard,
}

/// What kind of event arrived, decided from its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    Http,
    ShardBatch,
    ScheduledAction,
    ScheduledEvent,
    AlarmStateChange,
    AlarmAction,
    Unknown,
}

pub fn shape_of(event: &Value) -> Shape {
    let has = |key: &str| event.get(key).is_some();
    let text = |key: &str| event.get(key).and_then(Value::as_str);
    if has("requestContext") && (has("httpMethod") || has("routeKey")) {
        Shape::Http
    } else if text("source") == Some("aws.cloudwatch")
        && text("detail-type") == Some("CloudWatch Alarm State Change")
    {
        Shape::AlarmStateChange
    } else if text("source") == Some("aws.cloudwatch") && has("alarmData") {
        Shape::AlarmAction
    } else if text("source") == Some("aws.events") && text("detail-type") == Some("Scheduled Event")
    {
        Shape::ScheduledEvent
    } else if has("Items") && has("BatchInput") {
        Shape::ShardBatch
    } else if has("action") {
        // An EventBridge rule with a constant input replaces the event with that input entirely.
        Shape::ScheduledAction
    } else {
        Shape::Unknown
    }
}

pub fn describe_unknown(event: &Value) -> String {
    match event {
        Value::Object(map) => {
            let keys: Vec<&str> = map.keys().map(String::as_str).take(12).collect();
            format!(
                "unrecognised event with keys {keys:?}; expected an API Gateway proxy event, an EventBridge scheduled event or {{\"action\": ...}}, or a CloudWatch alarm event"
            )
        }
        other => format!(
            "unrecognised event: {} instead of a JSON object",
            crate::forecast::kind_of(other)
        ),
    }
}

/// Deserialises an event into its typed form; a mismatch is the caller's error, named.
pub fn typed<T: serde::de::DeserializeOwned>(
    event: Value,
    what: &str,
) -> Result<T, InvocationError> {
    serde_json::from_value(event)
        .map_err(|e| InvocationError::InvalidEvent(format!("malformed {what}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_routed_by_shape() {
        let v1 = json!({"httpMethod": "POST", "path": "/v1/forecast", "requestContext": {}});
        let v2 = json!({"version": "2.0", "routeKey": "POST /v1/forecast", "requestContext": {}});
        let scheduled =
            json!({"source": "aws.events", "detail-type": "Scheduled Event", "detail": {}});
        let custom = json!({"action": "evaluate"});
        let change =
            json!({"source": "aws.cloudwatch", "detail-type": "CloudWatch Alarm State Change"});
        let direct = json!({"source": "aws.cloudwatch", "alarmData": {}});
        assert_eq!(shape_of(&v1), Shape::Http);
        assert_eq!(shape_of(&v2), Shape::Http);
        assert_eq!(shape_of(&scheduled), Shape::ScheduledEvent);
        assert_eq!(shape_of(&custom), Shape::ScheduledAction);
        assert_eq!(shape_of(&change), Shape::AlarmStateChange);
        assert_eq!(shape_of(&direct), Shape::AlarmAction);
        let shards = json!({"Items": [{"Key": "batch/input/a.csv"}], "BatchInput": {}});
        assert_eq!(shape_of(&shards), Shape::ShardBatch);
        assert_eq!(shape_of(&json!({"hello": 1})), Shape::Unknown);
    }

    #[test]
    fn an_unknown_event_is_described_by_its_keys() {
        let text = describe_unknown(&json!({"Records": [], "foo": 1}));
        assert!(
            text.contains("\"Records\"") && text.contains("\"foo\""),
            "{text}"
        );
        assert!(describe_unknown(&json!([1])).contains("array"));
    }

    #[test]
    fn scheduled_actions_are_strict() {
        let ok: ScheduledAction = serde_json::from_value(json!({"action": "batch-forecast", "input": "s3://b/i.csv", "output": "s3://b/o.jsonl"})).unwrap();
        assert!(matches!(ok, ScheduledAction::BatchForecast { .. }));
        assert!(serde_json::from_value::<ScheduledAction>(json!({"action": "retrain"})).is_err());
        assert!(serde_json::from_value::<ScheduledAction>(
            json!({"action": "batch-forecast", "input": "x"})
        )
        .is_err());
    }

    #[test]
    fn a_shard_comes_batched_or_as_one_listed_item_with_the_run_beside_it() {
        let batch: ShardBatch = serde_json::from_value(json!({
            "Items": [{"Key": "batch/input/r/a.csv", "Size": 1, "Etag": "\"e\"", "LastModified": "2026-12-01T00:00:00Z"}],
            "BatchInput": {"action": "batch-forecast-shard", "bucket": "b", "output": "s3://b/batch/output/r/"}}))
        .unwrap();
        assert_eq!(batch.items[0].key, "batch/input/r/a.csv");
        let flat = json!({"action": "batch-forecast-shard", "bucket": "b", "output": "s3://b/batch/output/r/",
                          "Key": "batch/input/r/a.csv", "Size": 1, "Etag": "e", "LastModified": 1764547200, "StorageClass": "STANDARD"});
        assert!(matches!(
            serde_json::from_value::<ScheduledAction>(flat).unwrap(),
            ScheduledAction::BatchForecastShard { key, .. } if key == "batch/input/r/a.csv"
        ));
        let forged = json!({"Items": [], "BatchInput": {"action": "batch-forecast-shard", "bucket": "b", "output": "o", "input": "x"}});
        assert!(serde_json::from_value::<ShardBatch>(forged).is_err());
    }
}
