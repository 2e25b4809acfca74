//! Sharded batch runs: shards of ETTh1 series on S3, the events a Distributed Map sends, the
//! template's state machine, and an S3 that fails on demand.

use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::Arc;

use serde_json::{json, Value};

use super::{etth1_training_windows, windows_csv};

pub const BUCKET: &str = "batch-runs";
pub const INPUT_PREFIX: &str = "batch/input/";
pub const OUTPUT_PREFIX: &str = "batch/output/";

/// The function's batch confinement for [`BUCKET`].
pub fn batch_env() -> Vec<(&'static str, String)> {
    vec![
        (
            "BATCH_INPUT_PREFIX",
            format!("s3://{BUCKET}/{INPUT_PREFIX}"),
        ),
        (
            "BATCH_OUTPUT_PREFIX",
            format!("s3://{BUCKET}/{OUTPUT_PREFIX}"),
        ),
    ]
}

/// `count` series of the model's own training data (168 hours each), ids `{tag}-{i}`.
pub fn series(tag: &str, count: usize) -> Vec<(String, String, Vec<f64>)> {
    etth1_training_windows(count, 168, 24)
        .into_iter()
        .enumerate()
        .map(|(i, (_, last, values))| (format!("{tag}-{i}"), last, values))
        .collect()
}

/// A CSV shard (`id,date,OT`, each series' rows together).
pub fn csv_shard(tag: &str, count: usize) -> String {
    windows_csv(&series(tag, count))
}

/// A JSON Lines shard (one series object per line).
pub fn jsonl_shard(tag: &str, count: usize) -> String {
    series(tag, count)
        .into_iter()
        .map(|(id, last, values)| {
            json!({"id": id, "values": values, "last_timestamp": last}).to_string() + "\n"
        })
        .collect()
}

pub async fn put(s3: &aws_sdk_s3::Client, key: &str, body: impl Into<Vec<u8>>) {
    s3.put_object()
        .bucket(BUCKET)
        .key(key)
        .body(body.into().into())
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
}

/// An object's text, `None` when it does not exist.
pub async fn text(s3: &aws_sdk_s3::Client, key: &str) -> Option<String> {
    let object = s3.get_object().bucket(BUCKET).key(key).send().await.ok()?;
    let bytes = object.body.collect().await.unwrap().into_bytes();
    Some(String::from_utf8(bytes.to_vec()).unwrap())
}

/// The objects under `prefix` as `s3:listObjectsV2` hands them to a Distributed Map's items.
pub async fn listed_items(s3: &aws_sdk_s3::Client, prefix: &str) -> Vec<Value> {
    let listed = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(prefix)
        .send()
        .await
        .unwrap();
    listed
        .contents()
        .iter()
        .map(|o| {
            json!({"Key": o.key().unwrap(), "Size": o.size().unwrap_or(0), "Etag": o.e_tag().unwrap_or(""),
                   "LastModified": o.last_modified().map(|t| t.to_string()).unwrap_or_default()})
        })
        .collect()
}

/// The events an ItemBatcher with `MaxItemsPerBatch = per_batch` sends for `items`.
pub fn item_batches(items: &[Value], per_batch: usize, output: &str) -> Vec<Value> {
    items
        .chunks(per_batch)
        .map(|items| {
            json!({"Items": items, "BatchInput": {"action": "batch-forecast-shard", "bucket": BUCKET, "output": output}})
        })
        .collect()
}

/// The forecasts of an output object, by series id, each checked for the model's shape.
pub fn forecast_ids(output: &str) -> Vec<String> {
    output
        .lines()
        .map(|line| {
            let record: Value = serde_json::from_str(line).unwrap();
            assert_eq!(record["values"].as_array().unwrap().len(), 24, "{line}");
            assert_eq!(record["timestamps"].as_array().unwrap().len(), 24, "{line}");
            assert!(record["model"]["version"].is_string(), "{line}");
            record["id"].as_str().unwrap().to_owned()
        })
        .collect()
}

/// The template's batch state machine: its definition (with `${...}` substitutions) and the
/// nightly schedule's input.
pub fn template_state_machine() -> (Value, Value) {
    let found = super::python_json(&[
        "tests/infra/cfn.py",
        "state-machine",
        "infra/template.yaml",
        "BatchStateMachine",
    ]);
    let substitutions = found["substitutions"].as_object().unwrap();
    assert_eq!(
        substitutions["FunctionArn"],
        json!({"resource": "ForecastFunction.Alias"}),
        "the state machine invokes the `live` alias"
    );
    assert_eq!(
        substitutions["Bucket"],
        json!({"resource": "ArtifactsBucket"})
    );
    (
        found["definition"].clone(),
        found["schedules"]["Nightly"].clone(),
    )
}

/// The definition with its substitutions made, as CloudFormation would.
pub fn substitute(definition: &Value, function: &str, bucket: &str) -> Value {
    let text = definition
        .to_string()
        .replace("${FunctionArn}", function)
        .replace("${Bucket}", bucket);
    assert!(!text.contains("${"), "unsubstituted: {text}");
    serde_json::from_str(&text).unwrap()
}

/// The definition as ministack 1.5.33 can run it, and the only differences (it has no ItemBatcher
/// and no `*Path` forms of the map's limits):
/// - the ItemBatcher is replaced by an ItemSelector that puts the BatchInput's fields next to the
///   item's `Key`: the function's un-batched shard shape;
/// - `MaxConcurrencyPath` and `ToleratedFailurePercentagePath` become their values in `input`.
pub fn for_ministack(definition: &Value, input: &Value) -> Value {
    let mut definition = definition.clone();
    let map = definition["States"]["ForecastShards"]
        .as_object_mut()
        .unwrap();
    let batcher = map
        .remove("ItemBatcher")
        .expect("the template batches items");
    let mut selector = batcher["BatchInput"].clone();
    selector["Key.$"] = json!("$$.Map.Item.Value.Key");
    map.insert("ItemSelector".into(), selector);
    for (path_field, field) in [
        ("MaxConcurrencyPath", "MaxConcurrency"),
        (
            "ToleratedFailurePercentagePath",
            "ToleratedFailurePercentage",
        ),
    ] {
        let path = map.remove(path_field).unwrap();
        let key = path.as_str().unwrap().strip_prefix("$.").unwrap();
        map.insert(field.into(), input[key].clone());
    }
    definition
}

/// An S3 endpoint in front of another that can be told
/// - to fail every `UploadPart` from some part number on, as S3 does when it is in trouble:
///   `500 InternalError`, which the SDK retries and then gives up on;
/// - to stop writing after some number of writes (PUT, POST, DELETE), as a process that dies
///   there would: each later write is refused with `403 AccessDenied`, which the SDK does not
///   retry, so the caller stops at the first one.
pub struct FaultyS3 {
    pub endpoint: String,
    failing_from_part: Arc<AtomicU32>,
    refused: Arc<AtomicUsize>,
    forwarded_parts: Arc<AtomicUsize>,
    writes_allowed: Arc<AtomicUsize>,
    forwarded_writes: Arc<AtomicUsize>,
}

#[derive(Clone)]
struct Faults {
    target: String,
    client: reqwest::Client,
    failing_from_part: Arc<AtomicU32>,
    refused: Arc<AtomicUsize>,
    forwarded_parts: Arc<AtomicUsize>,
    writes_allowed: Arc<AtomicUsize>,
    forwarded_writes: Arc<AtomicUsize>,
}

impl FaultyS3 {
    pub async fn in_front_of(target: &str) -> Self {
        let faults = Faults {
            target: target.trim_end_matches('/').to_owned(),
            client: reqwest::Client::new(),
            failing_from_part: Arc::new(AtomicU32::new(u32::MAX)),
            refused: Arc::default(),
            forwarded_parts: Arc::default(),
            writes_allowed: Arc::new(AtomicUsize::new(usize::MAX)),
            forwarded_writes: Arc::default(),
        };
        let app = axum::Router::new()
            .fallback(forward)
            .with_state(faults.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FaultyS3 {
            endpoint: format!("http://127.0.0.1:{port}"),
            failing_from_part: faults.failing_from_part,
            refused: faults.refused,
            forwarded_parts: faults.forwarded_parts,
            writes_allowed: faults.writes_allowed,
            forwarded_writes: faults.forwarded_writes,
        }
    }

    /// From now on, passes `writes` more writes on and refuses every later one.
    pub fn stop_writing_after(&self, writes: usize) {
        self.forwarded_writes.store(0, Ordering::SeqCst);
        self.writes_allowed.store(writes, Ordering::SeqCst);
    }

    /// Writes passed on since the last [`Self::stop_writing_after`] or [`Self::heal`].
    pub fn forwarded_writes(&self) -> usize {
        self.forwarded_writes.load(Ordering::SeqCst)
    }

    /// From now on, every UploadPart with this part number or a higher one fails.
    pub fn fail_parts_from(&self, part: u32) {
        self.failing_from_part.store(part, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.failing_from_part.store(u32::MAX, Ordering::SeqCst);
        self.writes_allowed.store(usize::MAX, Ordering::SeqCst);
        self.forwarded_writes.store(0, Ordering::SeqCst);
    }

    /// UploadPart requests refused so far.
    pub fn refused(&self) -> usize {
        self.refused.load(Ordering::SeqCst)
    }

    /// UploadPart requests passed on so far.
    pub fn forwarded_parts(&self) -> usize {
        self.forwarded_parts.load(Ordering::SeqCst)
    }
}

async fn forward(
    axum::extract::State(faults): axum::extract::State<Faults>,
    request: axum::extract::Request,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let (parts, body) = request.into_parts();
    let query = parts.uri.query().unwrap_or("");
    let part_number = query
        .split('&')
        .find_map(|pair| pair.strip_prefix("partNumber="))
        .and_then(|n| n.parse::<u32>().ok());
    if matches!(parts.method.as_str(), "PUT" | "POST" | "DELETE") {
        let allowed = faults.writes_allowed.load(Ordering::SeqCst);
        let ordinal = faults.forwarded_writes.fetch_add(1, Ordering::SeqCst);
        if ordinal >= allowed {
            faults.forwarded_writes.fetch_sub(1, Ordering::SeqCst);
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>AccessDenied</Code><Message>injected by the test: the writer stopped here</Message></Error>";
            return (
                axum::http::StatusCode::FORBIDDEN,
                [("content-type", "application/xml")],
                xml,
            )
                .into_response();
        }
    }
    if let Some(number) = part_number {
        if number >= faults.failing_from_part.load(Ordering::SeqCst) {
            faults.refused.fetch_add(1, Ordering::SeqCst);
            let xml = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>InternalError</Code><Message>injected by the test</Message></Error>";
            return (
                axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                [("content-type", "application/xml")],
                xml,
            )
                .into_response();
        }
        faults.forwarded_parts.fetch_add(1, Ordering::SeqCst);
    }
    let body = axum::body::to_bytes(body, usize::MAX).await.unwrap();
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut forwarded = faults
        .client
        .request(
            reqwest::Method::from_bytes(parts.method.as_str().as_bytes()).unwrap(),
            format!("{}{path}", faults.target),
        )
        .body(body);
    for (name, value) in &parts.headers {
        if name != "host" {
            forwarded = forwarded.header(name.as_str(), value.as_bytes());
        }
    }
    let answer = forwarded.send().await.unwrap();
    let mut response = axum::response::Response::builder().status(answer.status().as_u16());
    for (name, value) in answer.headers() {
        if name != "transfer-encoding" && name != "content-length" {
            response = response.header(name.as_str(), value.as_bytes());
        }
    }
    response
        .body(axum::body::Body::from(answer.bytes().await.unwrap()))
        .unwrap()
}
