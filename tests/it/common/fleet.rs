//! A fleet of series for evaluations at scale (the tests and `benches/evaluation.rs`): one
//! 24-step hourly forecast per series from 2018-01-01T00:00Z by version `1`, every fifth served
//! with an 80% interval, every eighth series also forecast by version `2` in live's shadow, and
//! the 24 actuals that follow, but for hour 7 of every fiftieth series (missing). Values are a
//! deterministic function of (series, hour), so two stores written alike hold the same data.
//! Self-contained: the bench includes this file by path.

use chrono::{DateTime, Duration, Utc};
use lstm_forecast::forecast::Interval;
use std::collections::BTreeSet;

use lstm_forecast::monitor::store::{AccuracyStore, ForecastRecord, ForecastRole, Observation};
use serde_json::{json, Value};

use super::emulators::{list_keys, python_json, read_text, Moto};

/// Series written per batch: the writer's memory stays bounded whatever the fleet's size.
const WRITTEN_AT_ONCE: usize = 5_000;

pub const HORIZON: i64 = 24;

pub fn origin() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2018-01-01T00:00:00Z")
        .unwrap()
        .to_utc()
}

pub fn series_id(s: usize) -> String {
    format!("meter-{s:07}")
}

/// What series `s` measured at hour `h`: a daily wave with a level and noise of its own.
fn actual(s: usize, h: i64) -> f64 {
    let noise = ((s as u64 * 2_654_435_761 + h as u64 * 40_503) % 1000) as f64 / 1000.0;
    20.0 + (s % 17) as f64 + 5.0 * (h as f64 * std::f64::consts::TAU / 24.0).sin() + noise
}

fn forecast(s: usize, version: &str, bias: f64) -> ForecastRecord {
    let values: Vec<f64> = (1..=HORIZON)
        .map(|h| actual(s, h) + bias * (1.0 + h as f64 / 12.0))
        .collect();
    let intervals = if version == "1" && s.is_multiple_of(5) {
        vec![Interval {
            level: 0.8,
            lower: values.iter().map(|v| v - 0.6).collect(),
            upper: values.iter().map(|v| v + 0.6).collect(),
        }]
    } else {
        Vec::new()
    };
    ForecastRecord {
        series_id: series_id(s),
        origin: origin(),
        last_value: actual(s, 0),
        timestamps: (1..=HORIZON)
            .map(|h| origin() + Duration::hours(h))
            .collect(),
        values,
        model: "etth1-ot-lstm".into(),
        model_version: version.into(),
        request_id: None,
        created_at: origin(),
        intervals_calibration: None,
        intervals,
        out_of_range: false,
        role: if version == "1" {
            ForecastRole::Live
        } else {
            ForecastRole::Challenger
        },
    }
}

pub fn forecasts(series: std::ops::Range<usize>) -> Vec<ForecastRecord> {
    series
        .flat_map(|s| {
            let live = forecast(s, "1", 0.3 * ((s % 7) as f64 - 3.0) / 3.0);
            let challenger = s.is_multiple_of(8).then(|| forecast(s, "2", 0.2));
            std::iter::once(live).chain(challenger)
        })
        .collect()
}

pub fn actuals(series: std::ops::Range<usize>) -> Vec<Observation> {
    series
        .flat_map(|s| {
            (1..=HORIZON)
                .filter(move |h| !(s.is_multiple_of(50) && *h == 7))
                .map(move |h| Observation {
                    series_id: series_id(s),
                    timestamp: origin() + Duration::hours(h),
                    value: actual(s, h),
                })
        })
        .collect()
}

/// Pairs a fleet of `series` holds: forecasts of version 1 and 2 with an actual.
pub fn pairs(series: usize) -> usize {
    let actual_hours = |s: usize| if s.is_multiple_of(50) { 23 } else { 24 };
    (0..series)
        .map(|s| actual_hours(s) * if s.is_multiple_of(8) { 2 } else { 1 })
        .sum()
}

/// Writes the fleet's forecasts, then its actuals, into `store`.
pub async fn write(store: &AccuracyStore, series: usize) {
    for first in (0..series).step_by(WRITTEN_AT_ONCE) {
        let batch = first..(first + WRITTEN_AT_ONCE).min(series);
        store.append_forecasts(&forecasts(batch)).await.unwrap();
    }
    for first in (0..series).step_by(WRITTEN_AT_ONCE) {
        let batch = first..(first + WRITTEN_AT_ONCE).min(series);
        store.append_actuals(&actuals(batch)).await.unwrap();
    }
}

/// The figures a report publishes: its evaluation, without what differs between layouts and
/// clocks (objects read, the arrival window, the quarantined lines' keys).
pub async fn reported_figures(s3: &aws_sdk_s3::Client, report_uri: &str) -> Value {
    let (bucket, folder) = report_uri
        .strip_prefix("s3://")
        .unwrap()
        .split_once('/')
        .unwrap();
    let report: Value =
        serde_json::from_str(&read_text(s3, bucket, &format!("{folder}report.json")).await)
            .unwrap();
    let mut evaluation = report["evaluation"].clone();
    for skipped in [
        "objects_read",
        "actuals_after",
        "actuals_until",
        "quarantined",
    ] {
        evaluation.as_object_mut().unwrap().remove(skipped);
    }
    json!({"evaluation": evaluation, "horizon_buckets": report["horizon_buckets"]})
}

/// The state a run leaves for the rollback, the champion/challenger decision and the intervals:
/// the latest scores, the comparisons and the recalibrated errors and radii (times of writing
/// left out).
pub async fn published_state(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Value {
    let mut state = serde_json::Map::new();
    for name in ["scores.json", "comparisons.json", "calibration.json"] {
        let body = read_text(s3, bucket, &format!("{prefix}/state/{name}")).await;
        state.insert(
            name.into(),
            without_times(serde_json::from_str(&body).unwrap()),
        );
    }
    Value::Object(state)
}

fn without_times(value: Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .filter(|(k, _)| !k.ends_with("_at") && k != "data")
                .map(|(k, v)| (k, without_times(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_times).collect()),
        other => other,
    }
}

/// Asserts `a` and `b` hold the same figures: integers equal, other numbers within 1e-12
/// relative, everything else equal.
pub fn assert_same_figures(a: &Value, b: &Value, at: &str) {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            let keys =
                |m: &serde_json::Map<String, Value>| m.keys().cloned().collect::<BTreeSet<_>>();
            assert_eq!(keys(x), keys(y), "{at}: other fields");
            for (k, v) in x {
                assert_same_figures(v, &y[k], &format!("{at}.{k}"));
            }
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: other lengths");
            for (i, (v, w)) in x.iter().zip(y).enumerate() {
                assert_same_figures(v, w, &format!("{at}[{i}]"));
            }
        }
        (Value::Number(x), Value::Number(y)) if x.is_f64() || y.is_f64() => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                x == y || (x - y).abs() <= 1e-12 * x.abs().max(y.abs()),
                "{at}: {x} vs {y}"
            );
        }
        _ => assert_eq!(a, b, "{at}"),
    }
}

/// Every settled mark under `prefix`, as text; asserts none is there twice.
pub async fn settled_marks(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str) -> Vec<String> {
    let mut marks = Vec::new();
    for key in list_keys(s3, bucket, prefix).await {
        if key.contains("/settled/") {
            marks.extend(read_text(s3, bucket, &key).await.lines().map(str::to_owned));
        }
    }
    marks.sort();
    let distinct = marks.iter().collect::<BTreeSet<_>>().len();
    assert_eq!(distinct, marks.len(), "a pair settled twice under {prefix}");
    marks
}

/// The template's evaluation state machine: its definition (with `${FunctionArn}`) and the
/// hourly schedule's input.
pub fn template_evaluation_state_machine() -> (Value, Value) {
    let found = python_json(&[
        "tests/infra/cfn.py",
        "state-machine",
        "infra/template.yaml",
        "EvaluationStateMachine",
    ]);
    assert_eq!(
        found["substitutions"]["FunctionArn"],
        json!({"resource": "ForecastFunction.Alias"}),
        "the state machine invokes the `live` alias"
    );
    (
        found["definition"].clone(),
        found["schedules"]["Hourly"].clone(),
    )
}

/// The definition as ministack 1.5.33 runs it: its map has no `MaxConcurrencyPath`, so the
/// schedule's `max_concurrency` is written in; nothing else changes.
pub fn evaluation_for_ministack(definition: &Value, input: &Value, function: &str) -> Value {
    let mut definition: Value =
        serde_json::from_str(&definition.to_string().replace("${FunctionArn}", function)).unwrap();
    let map = definition["States"]["EvaluatePartitions"]
        .as_object_mut()
        .unwrap();
    let path = map.remove("MaxConcurrencyPath").unwrap();
    assert_eq!(path, "$.max_concurrency");
    map.insert("MaxConcurrency".into(), input["max_concurrency"].clone());
    definition
}

/// Runs the template's evaluation state machine on the ministack at `endpoint`, as its schedule
/// starts it but with `partitions` and `max_concurrency`: the real binary as the function, set to
/// the store `store_uri` in `shards` shards. The execution's outcome (tests/support/step_functions.py).
pub fn run_evaluation_state_machine(
    endpoint: &str,
    store_uri: &str,
    shards: u32,
    partitions: u32,
    max_concurrency: u32,
) -> Value {
    let (definition, _) = template_evaluation_state_machine();
    let input = json!({"partitions": partitions, "max_concurrency": max_concurrency});
    let definition = evaluation_for_ministack(&definition, &input, "lstm-forecast");
    let dir = tempfile::tempdir().unwrap();
    let definition_file = dir.path().join("evaluation.asl.json");
    std::fs::write(&definition_file, definition.to_string()).unwrap();
    let mut args: Vec<String> = [
        "tests/support/step_functions.py",
        "--endpoint",
        endpoint,
        "--function-name",
        "lstm-forecast",
        "--binary",
        env!("CARGO_BIN_EXE_lstm-forecast"),
        "--state-machine-name",
        "lstm-forecast-evaluation",
        "--definition",
        definition_file.to_str().unwrap(),
        "--execution-name",
        &format!("hourly-{}", std::process::id()),
        "--input",
        &input.to_string(),
        "--timeout-seconds",
        "1800",
    ]
    .map(str::to_owned)
    .to_vec();
    let mut env = Moto::env_at(endpoint);
    env.extend([
        ("FORECAST_LOG_URI", store_uri.to_owned()),
        ("FORECAST_LOG_SHARDS", shards.to_string()),
        ("METRICS_SINKS", "prometheus".to_owned()),
        ("THREADS", "1".to_owned()),
    ]);
    for (name, value) in env {
        args.extend(["--env".to_owned(), format!("{name}={value}")]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    python_json(&args)
}

/// `lstm-forecast evaluate` (the binary under test) against `store_uri` on the emulator at
/// `endpoint`, with `step` (none: the whole run in one process); its JSON answer.
pub fn evaluate_command(endpoint: &str, store_uri: &str, shards: u32, step: &[&str]) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
        .args(["evaluate", "--store", store_uri, "--span-hours", "24"])
        .args(step)
        .env("FORECAST_LOG_SHARDS", shards.to_string())
        .env("METRICS_SINKS", "prometheus")
        .envs(Moto::env_at(endpoint))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{step:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

/// Asserts that the run reported at `report`, over the store at `bucket/prefix`, published what
/// the one at `expected_report` over `bucket/expected_prefix` did: the report's figures, the
/// state it left, and as many settled marks (none twice).
pub async fn assert_same_outcome(
    s3: &aws_sdk_s3::Client,
    bucket: &str,
    (prefix, report): (&str, &str),
    (expected_prefix, expected_report): (&str, &str),
) {
    assert_same_figures(
        &reported_figures(s3, report).await,
        &reported_figures(s3, expected_report).await,
        "report",
    );
    assert_same_figures(
        &published_state(s3, bucket, prefix).await,
        &published_state(s3, bucket, expected_prefix).await,
        "state",
    );
    assert_eq!(
        settled_marks(s3, bucket, &format!("{prefix}/")).await.len(),
        settled_marks(s3, bucket, &format!("{expected_prefix}/"))
            .await
            .len()
    );
}
