//! The Lambda function under cargo-lambda's real Lambda Runtime API emulator, with its model pulled
//! from S3 (moto) at cold start, and the alarms it checks before a rollback in CloudWatch
//! (ministack). Events are the committed fixtures in tests/fixtures/events/.

use crate::common;

use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, MetricDatum, StateValue, Statistic};
use aws_sdk_s3::primitives::ByteStream;
use common::emulators::{cli, event, Function, LambdaEmulator, Ministack, Moto};
use common::{bundled_as_version, repo_path};
use serde_json::{json, Value};

const BUCKET: &str = "lstm-forecast-test";
const REGISTRY: &str = "s3://lstm-forecast-test/models/etth1-ot-lstm";

fn function_env(
    moto: &Moto,
    cache: &tempfile::TempDir,
    model_uri: &str,
) -> Vec<(&'static str, String)> {
    let mut env = moto.env();
    env.push(("MODEL_URI", model_uri.into()));
    env.push((
        "LSTM_FORECAST_MODEL_CACHE",
        cache.path().display().to_string(),
    ));
    env.push(("ROLLBACK_ALARMS", "lstm-forecast-accuracy".into()));
    env.push(("BATCH_INPUT_PREFIX", format!("s3://{BUCKET}/batch/")));
    env.push(("BATCH_OUTPUT_PREFIX", format!("s3://{BUCKET}/batch/")));
    env
}

async fn read_alias(s3: &aws_sdk_s3::Client) -> Value {
    let object = s3
        .get_object()
        .bucket(BUCKET)
        .key("models/etth1-ot-lstm/alias/live.json")
        .send()
        .await
        .unwrap();
    serde_json::from_slice(&object.body.collect().await.unwrap().into_bytes()).unwrap()
}

#[tokio::test]
async fn cold_start_from_s3_then_api_gateway_rest_and_http_events_are_answered_by_the_router() {
    // GIVEN the bundled model published to the S3 registry and made live
    let moto = Moto::start();
    moto.create_bucket(BUCKET).await;
    let dir = repo_path("model_artifacts/etth1-ot-lstm");
    let (ok, out) = cli(
        &moto,
        &["model", "publish", dir.to_str().unwrap(), REGISTRY],
    );
    assert!(ok, "{out}");
    // WHEN the function cold-starts under the Runtime API emulator with MODEL_URI on the alias
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start(&emulator, &function_env(&moto, &cache, REGISTRY));

    // THEN a REST (v1) forecast is answered with 24 values after the window's last hour
    let (status, response) = emulator.invoke(&event("apigw-v1-forecast.json")).await;
    assert_eq!(status, 200, "{response}\n{}", function.log());
    assert_eq!(response["statusCode"], 200, "{response}");
    let body = common::proxy_body(&response);
    assert_eq!(body["forecasts"][0]["values"].as_array().unwrap().len(), 24);
    assert_eq!(
        body["forecasts"][0]["timestamps"][0],
        "2018-06-26T20:00:00Z"
    );
    assert_eq!(body["model"]["version"], "1.0.0");

    // AND an HTTP API (v2) event gets the same forecast
    let (_, response) = emulator.invoke(&event("apigw-v2-forecast.json")).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    assert_eq!(
        common::proxy_body(&response)["forecasts"][0]["values"],
        body["forecasts"][0]["values"]
    );

    // AND a client error is a 400 response naming the problem, not a Lambda error
    let (status, response) = emulator.invoke(&event("apigw-v2-bad-request.json")).await;
    assert_eq!(status, 200);
    assert_eq!(response["statusCode"], 400, "{response}");
    assert_eq!(
        common::proxy_body(&response)["error"]["code"],
        "wrong_window_length"
    );

    // AND metadata and health routes work through API Gateway too
    let (_, response) = emulator.invoke(&event("apigw-v1-model.json")).await;
    assert_eq!(common::proxy_body(&response)["input"]["window"], 168);
    let (_, response) = emulator.invoke(&event("apigw-v2-healthz.json")).await;
    assert_eq!(response["statusCode"], 200);

    // AND init logged its timings in one line, and the Lambda request id reached the logs
    let log = function.log();
    assert!(
        log.contains("init complete") && log.contains("fetch_ms") && log.contains("warm_up_ms"),
        "{log}"
    );
    assert!(
        log.contains("from_cache=false") || log.contains("\"from_cache\":false"),
        "{log}"
    );
    assert!(
        log.contains("ColdStartDuration"),
        "EMF cold start metric missing:\n{log}"
    );
    drop(function);

    // AND a second cold start of the same version is served from the /tmp cache
    let function = Function::start(&emulator, &function_env(&moto, &cache, REGISTRY));
    let (_, response) = emulator.invoke(&event("apigw-v2-healthz.json")).await;
    assert_eq!(response["statusCode"], 200);
    let log = function.log();
    assert!(
        log.contains("from_cache=true") || log.contains("\"from_cache\":true"),
        "{log}"
    );
}

#[tokio::test]
async fn scheduled_batch_forecasts_read_csv_or_json_lines_and_write_json_lines() {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    // Two series in one CSV, told apart by id; ETTh1's last 200 rows each.
    let text = std::fs::read_to_string(repo_path("model_artifacts/data/ETTh1.csv")).unwrap();
    let rows: Vec<&str> = text.lines().skip(1).collect();
    let mut csv = String::from("id,date,OT\n");
    let mut jsonl = String::new();
    for id in ["a", "b"] {
        let tail = &rows[rows.len() - 200..];
        let mut values = Vec::new();
        for row in tail {
            let cells: Vec<&str> = row.split(',').collect();
            csv.push_str(&format!("{id},{},{}\n", cells[0], cells[7]));
            values.push(cells[7].parse::<f64>().unwrap());
        }
        jsonl.push_str(&json!({"id": id, "values": &values[values.len() - 168..]}).to_string());
        jsonl.push('\n');
    }
    for (key, body) in [("batch/input.csv", csv), ("batch/input.jsonl", jsonl)] {
        s3.put_object()
            .bucket(BUCKET)
            .key(key)
            .body(ByteStream::from(body.into_bytes()))
            .send()
            .await
            .unwrap();
    }
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start(&emulator, &function_env(&moto, &cache, "bundled"));

    for (fixture, output_key) in [
        ("scheduled-batch-forecast.json", "batch/output.jsonl"),
        ("scheduled-event.json", "batch/output-2.jsonl"),
    ] {
        let (status, response) = emulator.invoke(&event(fixture)).await;
        assert_eq!(status, 200, "{fixture}: {response}\n{}", function.log());
        assert_eq!(response["series"], 2, "{fixture}: {response}");
        let object = s3
            .get_object()
            .bucket(BUCKET)
            .key(output_key)
            .send()
            .await
            .unwrap();
        let written =
            String::from_utf8(object.body.collect().await.unwrap().into_bytes().to_vec()).unwrap();
        let lines: Vec<Value> = written
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0]["id"], "a");
        assert_eq!(lines[1]["values"].as_array().unwrap().len(), 24);
        assert_eq!(lines[0]["model"]["name"], "etth1-ot-lstm");
    }
}

#[tokio::test]
async fn evaluate_and_unknown_events_are_clear_errors() {
    let moto = Moto::start();
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start(&emulator, &function_env(&moto, &cache, "bundled"));
    let (_, response) = emulator.invoke(&event("scheduled-evaluate.json")).await;
    assert_eq!(
        response["errorType"],
        "NotConfigured",
        "{response}\n{}",
        function.log()
    );
    assert!(response["errorMessage"]
        .as_str()
        .unwrap()
        .contains("not configured"));
    let (_, response) = emulator
        .invoke(&json!({"Records": [{"eventSource": "aws:sqs"}]}))
        .await;
    assert_eq!(response["errorType"], "UnrecognisedEvent", "{response}");
    assert!(response["errorMessage"]
        .as_str()
        .unwrap()
        .contains("Records"));
    let (_, response) = emulator.invoke(&json!({"action": "retrain"})).await;
    assert_eq!(response["errorType"], "InvalidEvent", "{response}");
}

const ACCURACY_ALARM: &str = "lstm-forecast-accuracy";

/// Brings the accuracy alarm in CloudWatch (ministack) into `state` the way CloudWatch would: by
/// publishing WAPE on its side of the threshold, which ministack evaluates on PutMetricData. Returns
/// when the alarm entered that state, as CloudWatch reports it.
///
/// ministack folds every datum of the alarm's window (3 hourly periods, whatever the dimensions)
/// into one Average, so the batch published here (0.9 or 0.0, each seen 10 times as often as every
/// WAPE already in the window) outweighs what earlier calls published.
async fn set_accuracy_alarm(
    ministack: &Ministack,
    state: StateValue,
) -> chrono::DateTime<chrono::Utc> {
    let cloudwatch = ministack.cloudwatch().await;
    let dimensions = vec![
        Dimension::builder()
            .name("Model")
            .value("etth1-ot-lstm")
            .build(),
        Dimension::builder().name("Stage").value("prod").build(),
    ];
    cloudwatch
        .put_metric_alarm()
        .alarm_name(ACCURACY_ALARM)
        .namespace("LstmForecast")
        .metric_name("WAPE")
        .set_dimensions(Some(dimensions.clone()))
        .statistic(Statistic::Average)
        .period(3600)
        .evaluation_periods(3)
        .datapoints_to_alarm(2)
        .threshold(0.1)
        .comparison_operator(aws_sdk_cloudwatch::types::ComparisonOperator::GreaterThanThreshold)
        .send()
        .await
        .unwrap();
    let now = std::time::SystemTime::now();
    let in_window = cloudwatch
        .get_metric_statistics()
        .namespace("LstmForecast")
        .metric_name("WAPE")
        .set_dimensions(Some(dimensions.clone()))
        .start_time(aws_sdk_cloudwatch::primitives::DateTime::from(
            now - Duration::from_secs(3 * 3600),
        ))
        .end_time(aws_sdk_cloudwatch::primitives::DateTime::from(
            now + Duration::from_secs(60),
        ))
        .period(4 * 3600)
        .statistics(Statistic::SampleCount)
        .send()
        .await
        .unwrap()
        .datapoints()
        .iter()
        .filter_map(|d| d.sample_count())
        .sum::<f64>();
    // ministack stamps state changes in whole seconds (CloudWatch in milliseconds, and its
    // periods keep transitions far apart). Two transitions within one second would carry the same
    // time, which is the rollback's idempotency key, so the next one waits for the next second.
    let last_change = cloudwatch
        .describe_alarms()
        .alarm_names(ACCURACY_ALARM)
        .send()
        .await
        .unwrap()
        .metric_alarms()
        .first()
        .and_then(|a| a.state_updated_timestamp().map(|t| t.secs()));
    if let Some(last_change) = last_change {
        common::eventually(
            Duration::from_secs(3),
            "a new second for the next transition",
            || async move {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs() as i64;
                (now > last_change).then_some(())
            },
        )
        .await;
    }
    let wape = if state == StateValue::Alarm { 0.9 } else { 0.0 };
    cloudwatch
        .put_metric_data()
        .namespace("LstmForecast")
        .metric_data(
            MetricDatum::builder()
                .metric_name("WAPE")
                .set_dimensions(Some(dimensions))
                .values(wape)
                .counts(10.0 * (in_window + 1.0))
                .build(),
        )
        .send()
        .await
        .unwrap();
    let at = common::eventually(
        Duration::from_secs(10),
        &format!("the accuracy alarm in {state:?}"),
        || {
            let cloudwatch = cloudwatch.clone();
            let state = state.clone();
            async move {
                let described = cloudwatch
                    .describe_alarms()
                    .alarm_names(ACCURACY_ALARM)
                    .send()
                    .await
                    .unwrap();
                let alarm = described.metric_alarms().first()?;
                (alarm.state_value() == Some(&state))
                    .then(|| alarm.state_updated_timestamp().copied())
                    .flatten()
            }
        },
    )
    .await;
    chrono::DateTime::from_timestamp(at.secs(), at.subsec_nanos()).unwrap()
}

/// An alarm fixture (`alarm-state-change.json` or `alarm-action.json`) claiming the accuracy
/// alarm entered ALARM at `at`.
fn alarm_event(fixture: &str, at: chrono::DateTime<chrono::Utc>) -> Value {
    let mut event = event(fixture);
    let stamp = at.format("%Y-%m-%dT%H:%M:%S%.3f+0000").to_string();
    let state = if event.get("detail").is_some() {
        &mut event["detail"]["state"]
    } else {
        &mut event["alarmData"]["state"]
    };
    state["timestamp"] = stamp.into();
    event
}

/// Records `scores` as the versions' latest, as `evaluate` writes them.
async fn write_scores(s3: &aws_sdk_s3::Client, scores: Value) {
    s3.put_object()
        .bucket(BUCKET)
        .key("monitoring/state/scores.json")
        .body(ByteStream::from(scores.to_string().into_bytes()))
        .send()
        .await
        .unwrap();
}

/// The function answered an alarm with no action, for a reason that says `why`.
fn assert_refused(response: &Value, why: &str, log: &str) {
    assert_eq!(response["action"], "none", "{response}\n{log}");
    assert!(
        response["reason"].as_str().unwrap_or("").contains(why),
        "{response}"
    );
}

/// What the function needs to roll back: the store that holds the versions' scores, and (so the
/// tests can alarm right after publishing) no cooldown.
fn rollback_env(
    moto: &Moto,
    ministack: &Ministack,
    cache: &tempfile::TempDir,
    min_pairs: usize,
    cooldown_minutes: u64,
) -> Vec<(&'static str, String)> {
    let mut env = function_env(moto, cache, REGISTRY);
    // S3 stays on moto (AWS_ENDPOINT_URL); the alarms it checks are on ministack.
    env.push(ministack.env_for_cloudwatch());
    env.push(("FORECAST_LOG_URI", format!("s3://{BUCKET}/monitoring")));
    env.push(("ROLLBACK_MIN_PAIRS", min_pairs.to_string()));
    env.push(("ROLLBACK_COOLDOWN_MINUTES", cooldown_minutes.to_string()));
    env
}

/// The accuracy loop, run for real: one forecast of the version serving now (24 steps, logged),
/// actuals 100 degrees away from it, and the scheduled evaluation. Returns that version.
async fn score_the_serving_version_badly(
    emulator: &LambdaEmulator,
    function: &Function,
    s3: &aws_sdk_s3::Client,
) -> String {
    let forecast_event = event("apigw-v2-forecast.json");
    // A version in live's shadow (the previous one on probation) forecasts the series too.
    let alias = read_alias(s3).await;
    let logged =
        1 + usize::from(alias.get("previous").is_some() || alias.get("challenger").is_some());
    let logged_before = function.log().len();
    let (_, response) = emulator.invoke(&forecast_event).await;
    common::emulators::deliver_forecast_log(
        function,
        logged_before,
        logged,
        s3,
        BUCKET,
        "monitoring",
    )
    .await;
    let forecast = common::proxy_body(&response);
    let version = forecast["model"]["version"].as_str().unwrap().to_string();
    let mut observe = forecast_event.clone();
    observe["rawPath"] = "/v1/observations".into();
    observe["routeKey"] = "POST /v1/observations".into();
    observe["requestContext"]["http"]["path"] = "/v1/observations".into();
    let values: Vec<f64> = common::f64s(&forecast["forecasts"][0]["values"])
        .iter()
        .map(|v| v + 100.0)
        .collect();
    observe["body"] = json!({"series": [{"id": "etth1-ot",
        "timestamps": forecast["forecasts"][0]["timestamps"], "values": values}]})
    .to_string()
    .into();
    let (_, response) = emulator.invoke(&observe).await;
    assert_eq!(response["statusCode"], 202, "{response}");
    let (status, response) = emulator.invoke(&event("scheduled-evaluate.json")).await;
    assert_eq!(status, 200, "{response}");
    assert_eq!(
        response["scores"][&version]["overall"]["count"], 24,
        "{response}"
    );
    version
}

#[tokio::test]
async fn an_accuracy_alarm_rolls_the_alias_back_once_and_the_function_serves_the_previous_version()
{
    // GIVEN versions 1.0.0 then 1.0.1 published and promoted
    let moto = Moto::start();
    // Its own ministack: every test here evaluates the same alarm on the same metric.
    let ministack = Ministack::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let v1 = bundled_as_version("1.0.0");
    let v2 = bundled_as_version("1.0.1");
    for dir in [&v1, &v2] {
        let (ok, out) = cli(
            &moto,
            &["model", "publish", dir.path().to_str().unwrap(), REGISTRY],
        );
        assert!(ok, "{out}");
    }
    assert_eq!(read_alias(&s3).await["version"], "1.0.1");
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start(&emulator, &rollback_env(&moto, &ministack, &cache, 24, 0));
    let alarm = alarm_event(
        "alarm-state-change.json",
        set_accuracy_alarm(&ministack, StateValue::Alarm).await,
    );

    // WHEN the accuracy alarm arrives before 1.0.1 has a score of its own, THEN nothing moves
    let (_, response) = emulator.invoke(&alarm).await;
    assert_refused(&response, "no scored forecasts", &function.log());
    assert_eq!(read_alias(&s3).await["version"], "1.0.1");

    // WHEN 1.0.1's own forecasts score badly and the alarm's state change reaches the function
    assert_eq!(
        score_the_serving_version_badly(&emulator, &function, &s3).await,
        "1.0.1"
    );
    let (status, response) = emulator.invoke(&alarm).await;
    assert_eq!(status, 200, "{response}\n{}", function.log());
    // THEN the alias points at 1.0.0 and the running function reloaded it
    assert_eq!(response["action"], "rollback", "{response}");
    assert_eq!(response["from"], "1.0.1");
    assert_eq!(response["to"], "1.0.0");
    assert_eq!(response["serving"], "1.0.0");
    assert_eq!(read_alias(&s3).await["version"], "1.0.0");
    let (_, forecast) = emulator.invoke(&event("apigw-v2-forecast.json")).await;
    assert_eq!(common::proxy_body(&forecast)["model"]["version"], "1.0.0");
    assert!(
        function
            .log_once_it_holds("ModelRollbacks")
            .contains("ModelRollbacks"),
        "EMF rollback metric missing"
    );

    // AND the same event delivered again does nothing more: 1.0.0 has no bad scores of its own
    // (the alarm's data is 1.0.1's forecasts, still being scored)
    let (_, response) = emulator.invoke(&alarm).await;
    assert_eq!(response["action"], "none", "{response}");
    let alias = read_alias(&s3).await;
    assert_eq!(alias["version"], "1.0.0");
    assert_eq!(alias["history"], json!(["1.0.0"]));

    // AND once 1.0.0 scores badly too (as a later evaluation records it), a later alarm (the
    // direct alarm-action payload) has nowhere to roll back to: a clear error, alias unchanged
    write_scores(
        &s3,
        json!({"1.0.0": {"wape": 0.9, "pairs": 48, "evaluated_at": chrono::Utc::now()},
               "1.0.1": {"wape": 0.9, "pairs": 24, "evaluated_at": chrono::Utc::now()}}),
    )
    .await;
    set_accuracy_alarm(&ministack, StateValue::Ok).await;
    let alarm_action = alarm_event(
        "alarm-action.json",
        set_accuracy_alarm(&ministack, StateValue::Alarm).await,
    );
    let (_, response) = emulator.invoke(&alarm_action).await;
    assert_eq!(response["errorType"], "RollbackImpossible", "{response}");
    assert!(response["errorMessage"]
        .as_str()
        .unwrap()
        .contains("1.0.0 is the only version"));
    assert_eq!(read_alias(&s3).await["version"], "1.0.0");

    // AND alarms that are not rollback alarms, or not in ALARM, are ignored
    let mut other = alarm.clone();
    other["detail"]["alarmName"] = "some-other-alarm".into();
    let (_, response) = emulator.invoke(&other).await;
    assert_eq!(response["action"], "none");
}

#[tokio::test]
async fn forged_or_stale_alarm_events_change_nothing_and_a_genuine_one_rolls_back() {
    // GIVEN 1.0.0 then 1.0.1 live, and 1.0.1 scored badly: a genuine alarm would roll it back
    let moto = Moto::start();
    // Its own ministack: every test here evaluates the same alarm on the same metric.
    let ministack = Ministack::start();
    let s3 = moto.create_bucket(BUCKET).await;
    common::publish_bundled_as(&moto, "1.0.0", REGISTRY);
    common::publish_bundled_as(&moto, "1.0.1", REGISTRY);
    write_scores(
        &s3,
        json!({"1.0.1": {"wape": 0.9, "pairs": 480, "evaluated_at": chrono::Utc::now()}}),
    )
    .await;
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start(&emulator, &rollback_env(&moto, &ministack, &cache, 24, 0));
    let forged = |at: chrono::DateTime<chrono::Utc>| alarm_event("alarm-state-change.json", at);
    // WHEN someone who may invoke the function sends alarm events CloudWatch never raised:
    // for an alarm that does not exist, ...
    let (_, response) = emulator.invoke(&forged(chrono::Utc::now())).await;
    assert_refused(&response, "no alarm", &function.log());
    // ... for an alarm that is OK, ...
    let ok_since = set_accuracy_alarm(&ministack, StateValue::Ok).await;
    let (_, response) = emulator.invoke(&forged(ok_since)).await;
    assert_refused(&response, "another state than ALARM", &function.log());
    // ... and, once it is in ALARM, a series of events with made-up times
    let alarm_since = set_accuracy_alarm(&ministack, StateValue::Alarm).await;
    for hours in 1..=3 {
        let (_, response) = emulator
            .invoke(&forged(alarm_since - chrono::Duration::hours(hours)))
            .await;
        assert_refused(&response, "not at", &function.log());
    }
    // THEN the alias never moved
    let alias = read_alias(&s3).await;
    assert_eq!(alias["version"], "1.0.1");
    assert_eq!(alias["history"], json!(["1.0.0", "1.0.1"]));
    // AND the genuine event, carrying CloudWatch's own time, rolls back once
    let (_, response) = emulator.invoke(&forged(alarm_since)).await;
    assert_eq!(
        response["action"],
        "rollback",
        "{response}\n{}",
        function.log()
    );
    assert_eq!(read_alias(&s3).await["version"], "1.0.0");
}

#[tokio::test]
async fn a_batch_event_cannot_read_or_overwrite_anything_outside_the_batch_prefixes() {
    // GIVEN a live model, and batch input where batch jobs may read
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    common::publish_bundled_as(&moto, "1.0.0", REGISTRY);
    let alias_before = read_alias(&s3).await;
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start(&emulator, &function_env(&moto, &cache, REGISTRY));
    // WHEN events ask to write the forecasts over the model alias, or to read the model itself
    for (input, output) in [
        (
            format!("s3://{BUCKET}/batch/input.csv"),
            format!("s3://{BUCKET}/models/etth1-ot-lstm/alias/live.json"),
        ),
        (
            format!("s3://{BUCKET}/models/etth1-ot-lstm/1.0.0/model.json"),
            format!("s3://{BUCKET}/batch/stolen.jsonl"),
        ),
    ] {
        let (_, response) = emulator
            .invoke(&json!({"action": "batch-forecast", "input": input, "output": output}))
            .await;
        // THEN each is refused by name, before any S3 call
        assert_eq!(
            response["errorType"],
            "Forbidden",
            "{response}\n{}",
            function.log()
        );
        assert!(
            response["errorMessage"]
                .as_str()
                .unwrap()
                .contains("outside BATCH_"),
            "{response}"
        );
    }
    // AND the alias is exactly what it was, and nothing was written under batch/
    assert_eq!(read_alias(&s3).await, alias_before);
    let listed = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("batch/")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count(), Some(0));
}

#[tokio::test]
async fn a_fresh_promotion_is_not_rolled_back_for_its_predecessors_errors() {
    // GIVEN 1.0.0 live and scored badly ...
    let moto = Moto::start();
    // Its own ministack: every test here evaluates the same alarm on the same metric.
    let ministack = Ministack::start();
    let s3 = moto.create_bucket(BUCKET).await;
    common::publish_bundled_as(&moto, "1.0.0", REGISTRY);
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start(&emulator, &rollback_env(&moto, &ministack, &cache, 24, 360));
    assert_eq!(
        score_the_serving_version_badly(&emulator, &function, &s3).await,
        "1.0.0"
    );
    // ... WHEN 1.0.1 is promoted to fix it, and the alarm (still fed by 1.0.0's forecasts) fires
    common::publish_bundled_as(&moto, "1.0.1", REGISTRY);
    let alarm = alarm_event(
        "alarm-state-change.json",
        set_accuracy_alarm(&ministack, StateValue::Alarm).await,
    );
    let (_, response) = emulator.invoke(&alarm).await;
    // THEN the fix stays live: the alias moved within the cooldown
    assert_refused(&response, "cooldown", &function.log());
    drop(function);
    // AND with no cooldown at all, 1.0.1 still stays: it has no scores of its own
    let function = Function::start(&emulator, &rollback_env(&moto, &ministack, &cache, 24, 0));
    let (_, response) = emulator.invoke(&alarm).await;
    assert_refused(&response, "1.0.1 has no scored forecasts", &function.log());
    assert_eq!(read_alias(&s3).await["version"], "1.0.1");
    drop(function);
    // AND once 1.0.1 has a bad score of its own, on fewer pairs than the policy asks for (24 of
    // 240), it still stays ...
    write_scores(
        &s3,
        json!({"1.0.1": {"wape": 0.9, "pairs": 24, "evaluated_at": chrono::Utc::now()}}),
    )
    .await;
    let function = Function::start(&emulator, &rollback_env(&moto, &ministack, &cache, 240, 0));
    let (_, response) = emulator.invoke(&alarm).await;
    assert_refused(&response, "fewer than the 240", &function.log());
    assert_eq!(read_alias(&s3).await["version"], "1.0.1");
}

fn init_failure(moto_env: Vec<(&'static str, String)>, model_uri: &str) -> String {
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let mut env = moto_env;
    env.push(("MODEL_URI", model_uri.into()));
    env.push((
        "LSTM_FORECAST_MODEL_CACHE",
        cache.path().display().to_string(),
    ));
    let function = Function::start(&emulator, &env);
    let (ok, log) = function.wait_exit(Duration::from_secs(60));
    assert!(!ok, "init should have failed:\n{log}");
    assert!(log.contains("init failed"), "{log}");
    log
}

#[tokio::test]
async fn every_cold_start_fault_is_an_init_error_naming_the_object_and_the_cause() {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let put = |key: &'static str, body: Vec<u8>| {
        let s3 = s3.clone();
        async move {
            s3.put_object()
                .bucket(BUCKET)
                .key(key)
                .body(ByteStream::from(body))
                .send()
                .await
                .unwrap();
        }
    };

    // Nothing published yet: the alias is missing.
    let log = init_failure(moto.env(), REGISTRY);
    assert!(
        log.contains("s3://lstm-forecast-test/models/etth1-ot-lstm/alias/live.json does not exist"),
        "{log}"
    );

    // The bucket does not exist.
    let log = init_failure(moto.env(), "s3://no-such-bucket/models/etth1-ot-lstm/1.0.0");
    assert!(
        log.contains("s3://no-such-bucket/models/etth1-ot-lstm/1.0.0/model.json"),
        "{log}"
    );

    // The alias names a version that was never uploaded.
    put(
        "models/etth1-ot-lstm/alias/live.json",
        json!({"version": "9.9.9", "history": ["9.9.9"], "updated_at": "2026-11-27T00:00:00Z"})
            .to_string()
            .into_bytes(),
    )
    .await;
    let log = init_failure(moto.env(), REGISTRY);
    assert!(
        log.contains("version 9.9.9 is not in the registry"),
        "{log}"
    );
    assert!(
        log.contains("models/etth1-ot-lstm/9.9.9/model.json"),
        "{log}"
    );

    // model.pt does not match the declared sha256.
    let metadata = std::fs::read(repo_path("model_artifacts/etth1-ot-lstm/model.json")).unwrap();
    let model_pt = std::fs::read(repo_path("model_artifacts/etth1-ot-lstm/model.pt")).unwrap();
    let model_onnx = std::fs::read(repo_path("model_artifacts/etth1-ot-lstm/model.onnx")).unwrap();
    put("models/etth1-ot-lstm/1.0.0/model.json", metadata.clone()).await;
    put("models/etth1-ot-lstm/1.0.0/model.onnx", model_onnx.clone()).await;
    let mut tampered = model_pt.clone();
    tampered[1000] ^= 0x55;
    put("models/etth1-ot-lstm/1.0.0/model.pt", tampered).await;
    let log = init_failure(moto.env(), &format!("{REGISTRY}/1.0.0"));
    assert!(
        log.contains("sha256") && log.contains("models/etth1-ot-lstm/1.0.0/model.json"),
        "{log}"
    );

    // model.pt is not TorchScript at all (with a matching checksum).
    let garbage = b"definitely not a TorchScript zip archive".to_vec();
    let mut doc: Value = serde_json::from_slice(&metadata).unwrap();
    doc["model_sha256"] = lstm_forecast::model::contract::sha256_hex(&garbage).into();
    put(
        "models/etth1-ot-lstm/1.0.0/model.json",
        serde_json::to_vec(&doc).unwrap(),
    )
    .await;
    put("models/etth1-ot-lstm/1.0.0/model.pt", garbage).await;
    let log = init_failure(moto.env(), &format!("{REGISTRY}/1.0.0"));
    assert!(log.contains("libtorch could not load model.pt"), "{log}");
    assert!(
        log.contains("s3://lstm-forecast-test/models/etth1-ot-lstm/1.0.0"),
        "{log}"
    );

    // A writer replaced model.onnx: refused by the checksum model.json declares, then missing.
    put("models/etth1-ot-lstm/1.0.0/model.json", metadata.clone()).await;
    put("models/etth1-ot-lstm/1.0.0/model.pt", model_pt.clone()).await;
    let mut tampered = model_onnx.clone();
    tampered[1000] ^= 0x55;
    put("models/etth1-ot-lstm/1.0.0/model.onnx", tampered).await;
    let log = init_failure(moto.env(), &format!("{REGISTRY}/1.0.0"));
    assert!(log.contains("model.onnx sha256"), "{log}");
    s3.delete_object()
        .bucket(BUCKET)
        .key("models/etth1-ot-lstm/1.0.0/model.onnx")
        .send()
        .await
        .unwrap();
    let log = init_failure(moto.env(), &format!("{REGISTRY}/1.0.0"));
    assert!(
        log.contains("models/etth1-ot-lstm/1.0.0/model.onnx does not exist"),
        "{log}"
    );

    // S3 cannot be reached at all.
    let mut unreachable = moto.env();
    unreachable[0].1 = format!("http://127.0.0.1:{}", common::emulators::free_port());
    let log = init_failure(unreachable, REGISTRY);
    assert!(log.contains("S3 is unreachable"), "{log}");
    assert!(log.contains("alias/live.json"), "{log}");
}

#[tokio::test]
async fn the_accuracy_loop_runs_through_lambda_forecast_observe_then_evaluate() {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let mut env = function_env(&moto, &cache, "bundled");
    env.push(("FORECAST_LOG_URI", format!("s3://{BUCKET}/monitoring")));
    let function = Function::start(&emulator, &env);

    // A forecast through API Gateway is logged (the fixture has an id and a last timestamp), as a
    // log line: the invocation itself writes nothing to S3 ...
    let forecast_event = event("apigw-v2-forecast.json");
    let (_, response) = emulator.invoke(&forecast_event).await;
    let forecast = common::proxy_body(&response);
    let written = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix("monitoring/forecasts/")
        .send()
        .await
        .unwrap();
    assert_eq!(
        written.key_count(),
        Some(0),
        "an S3 write on the response path"
    );
    // ... and the log subscription and Firehose deliver it
    common::emulators::deliver_forecast_log(&function, 0, 1, &s3, BUCKET, "monitoring").await;
    let values = forecast["forecasts"][0]["values"]
        .as_array()
        .unwrap()
        .clone();
    let stamps = forecast["forecasts"][0]["timestamps"]
        .as_array()
        .unwrap()
        .clone();
    // ... the actuals arrive through API Gateway too (here: the forecast plus one, so MAE is 1) ...
    let mut observe = forecast_event.clone();
    observe["rawPath"] = "/v1/observations".into();
    observe["routeKey"] = "POST /v1/observations".into();
    observe["requestContext"]["http"]["path"] = "/v1/observations".into();
    observe["body"] = json!({"series": [{"id": "etth1-ot", "timestamps": stamps,
        "values": values.iter().map(|v| v.as_f64().unwrap() + 1.0).collect::<Vec<_>>()}]})
    .to_string()
    .into();
    let (_, response) = emulator.invoke(&observe).await;
    assert_eq!(response["statusCode"], 202, "{response}");
    // ... and the scheduled evaluation scores it.
    let (status, response) = emulator.invoke(&event("scheduled-evaluate.json")).await;
    assert_eq!(status, 200, "{response}\n{}", function.log());
    assert_eq!(response["pairs"], 24, "{response}");
    let scores = &response["scores"]["1.0.0"]["overall"];
    assert!(
        (scores["mae"].as_f64().unwrap() - 1.0).abs() < 1e-9,
        "{response}"
    );
    assert!(
        (scores["bias"].as_f64().unwrap() + 1.0).abs() < 1e-9,
        "{response}"
    );
    let report = response["report"].as_str().unwrap();
    let key = report.strip_prefix(&format!("s3://{BUCKET}/")).unwrap();
    let chart = s3
        .get_object()
        .bucket(BUCKET)
        .key(format!("{key}chart.svg"))
        .send()
        .await
        .unwrap();
    let svg = String::from_utf8(chart.body.collect().await.unwrap().into_bytes().to_vec()).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("etth1-ot"));

    // Every EMF line the function wrote is a valid document within the limits.
    let log = function.log_once_it_holds("\"MAE\"");
    let emf: Vec<Value> = log
        .lines()
        .filter(|l| l.contains("\"_aws\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!emf.is_empty());
    for doc in &emf {
        let directive = &doc["_aws"]["CloudWatchMetrics"][0];
        assert_eq!(directive["Namespace"], "LstmForecast");
        assert!(directive["Metrics"].as_array().unwrap().len() <= 100);
        for metric in directive["Metrics"].as_array().unwrap() {
            assert!(doc.get(metric["Name"].as_str().unwrap()).is_some(), "{doc}");
        }
    }
    let names: Vec<&str> = emf
        .iter()
        .flat_map(|d| {
            d["_aws"]["CloudWatchMetrics"][0]["Metrics"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| m["Name"].as_str().unwrap())
        })
        .collect();
    for expected in [
        "ColdStartDuration",
        "ForecastLatency",
        "InputDrift",
        "MAE",
        "WAPE",
    ] {
        assert!(
            names.contains(&expected),
            "{expected} missing from EMF: {names:?}"
        );
    }
}

#[tokio::test]
async fn a_scheduled_batch_of_n_series_publishes_forecasts_latency_and_drift_in_emf() {
    // GIVEN 40 series of the model's own training data in one CSV on S3
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let windows = common::etth1_training_windows(40, 168, 24);
    s3.put_object()
        .bucket(BUCKET)
        .key("batch/forty.csv")
        .body(ByteStream::from(common::windows_csv(&windows).into_bytes()))
        .send()
        .await
        .unwrap();
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start(&emulator, &function_env(&moto, &cache, "bundled"));
    // WHEN the nightly schedule runs the batch forecast
    let (status, response) = emulator
        .invoke(&json!({"action": "batch-forecast",
                        "input": format!("s3://{BUCKET}/batch/forty.csv"),
                        "output": format!("s3://{BUCKET}/batch/forty.jsonl")}))
        .await;
    assert_eq!(status, 200, "{response}\n{}", function.log());
    assert_eq!(response["series"], 40, "{response}");
    // THEN its EMF output counts all 40 forecasts, times the forward passes, and scores the
    // drift of every one of the 40 windows, as an API request would
    let emf = common::emf_values(&function.log_once_it_holds("\"InputDrift\""));
    // Each EMF document carries the metric once, under two dimension sets, so one sum is the total.
    let forecasts: f64 = emf.get("Forecasts").map(|v| v.iter().sum()).unwrap_or(0.0);
    assert_eq!(forecasts, 40.0, "EMF: {emf:?}");
    assert!(
        emf.get("InferenceLatency").is_some_and(|v| !v.is_empty()),
        "EMF: {emf:?}"
    );
    assert_eq!(
        emf.get("InputDrift").map(Vec::len),
        Some(40),
        "EMF: {emf:?}"
    );
}

/// The function's environment for champion/challenger decisions (with one look, at `look`
/// origins, when given), with metrics to ministack's CloudWatch where the template's alarms watch
/// them.
fn decisions_env(
    moto: &Moto,
    ministack: &Ministack,
    cache: &tempfile::TempDir,
    look: Option<usize>,
) -> Vec<(&'static str, String)> {
    let mut env = rollback_env(moto, ministack, cache, 24, 0);
    if let Some(look) = look {
        env.push(("DECISION_MIN_ORIGINS", look.to_string()));
        env.push(("DECISION_MAX_ORIGINS", look.to_string()));
    }
    env.push(("METRICS_SINKS", "cloudwatch".into()));
    env.push(("STAGE", "prod".into()));
    env.push(("ALIAS_CHECK_SECONDS", "0".into()));
    env
}

/// One day of ETTh1's test period through the function: forecasts from `origins` origins spread
/// over the day (live answers, and what serves in its shadow forecasts too: two records each),
/// the day's actuals posted, and the scheduled evaluation. Returns the evaluation's answer.
async fn one_day_of_traffic(
    emulator: &LambdaEmulator,
    function: &Function,
    s3: &aws_sdk_s3::Client,
    day: usize,
    origins: usize,
) -> Value {
    let rows = common::replay::etth1_ot();
    let day_start = common::replay::TEST_START + 24 * day;
    let mut forecast = event("apigw-v2-forecast.json");
    for origin in (0..origins).map(|k| day_start + k * 24 / origins) {
        forecast["body"] = json!({"series": [{"id": "etth1-ot",
            "values": rows[origin - 168..origin].iter().map(|r| r.1).collect::<Vec<_>>(),
            "last_timestamp": rows[origin - 1].0}]})
        .to_string()
        .into();
        let logged_before = function.log().len();
        let (status, response) = emulator.invoke(&forecast).await;
        assert_eq!(status, 200, "{response}");
        common::emulators::deliver_forecast_log(
            function,
            logged_before,
            2,
            s3,
            BUCKET,
            "monitoring",
        )
        .await;
    }
    let origin = day_start;
    let mut observe = forecast.clone();
    observe["rawPath"] = "/v1/observations".into();
    observe["routeKey"] = "POST /v1/observations".into();
    observe["requestContext"]["http"]["path"] = "/v1/observations".into();
    let actuals = &rows[origin..origin + 24];
    observe["body"] = json!({"series": [{"id": "etth1-ot",
        "timestamps": actuals.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        "values": actuals.iter().map(|r| r.1).collect::<Vec<_>>()}]})
    .to_string()
    .into();
    let (_, response) = emulator.invoke(&observe).await;
    assert_eq!(response["statusCode"], 202, "{response}");
    let (status, response) = emulator.invoke(&event("scheduled-evaluate.json")).await;
    assert_eq!(status, 200, "{response}");
    response
}

#[tokio::test]
async fn a_challenger_earns_promotion_end_to_end_and_one_notification_says_so() {
    // GIVEN a weaker version live (the bundled network with its linear part scaled by 0.7) and the
    // bundled model published beside it, challenging in live's shadow on every series
    let moto = Moto::start();
    let ministack = Ministack::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let weak = common::challenge::weakened_bundled("0.9.0", 0.7);
    let bundled = repo_path("model_artifacts/etth1-ot-lstm");
    for args in [
        vec!["model", "publish", weak.path().to_str().unwrap(), REGISTRY],
        vec![
            "model",
            "publish",
            "--no-promote",
            bundled.to_str().unwrap(),
            REGISTRY,
        ],
        vec!["model", "challenge", REGISTRY, "1.0.0", "--fraction", "1"],
    ] {
        let (ok, out) = cli(&moto, &args);
        assert!(ok, "{out}");
    }
    // AND the template's decisions alarm, notifying a topic with a subscribed queue
    let cloudwatch = ministack.cloudwatch().await;
    let alerts = common::sns_sqs(&["subscribe", &ministack.endpoint, "lstm-forecast-alerts"]);
    let (topic, queue) = (
        alerts["topic_arn"].as_str().unwrap().to_string(),
        alerts["queue_url"].as_str().unwrap().to_string(),
    );
    let alarm = common::template::alarm_properties("ModelDecisionsAlarm");
    common::template::put_alarm(&cloudwatch, &alarm, |_| Some(topic.clone())).await;
    let days = 14;
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start(&emulator, &decisions_env(&moto, &ministack, &cache, None));

    // WHEN the function forecasts four times a day for two weeks (live and its shadow), the
    // actuals arrive, and the scheduled evaluation runs after each day
    let mut decision = Value::Null;
    for day in 0..days {
        let answer = one_day_of_traffic(&emulator, &function, &s3, day, 4).await;
        assert!(
            answer["compared"][0]["pairs_added"].as_u64() > Some(0),
            "{answer}"
        );
        if day + 1 < days {
            assert!(answer.get("decision").is_none(), "day {day}: {answer}");
        } else {
            decision = answer["decision"].clone();
        }
    }
    // THEN the last day's evaluation promoted the challenger, with its evidence ...
    assert_eq!(decision["action"], "promote", "{decision}");
    assert_eq!(decision["acted"], true);
    assert_eq!(decision["evidence"]["origins"], 4 * days, "the first look");
    assert!(
        decision["evidence"]["ratio"].as_f64().unwrap() < 1.0,
        "{decision}"
    );
    // ... the alias moved, with the replaced version on probation and the decision in its history
    let alias = read_alias(&s3).await;
    assert_eq!(alias["version"], "1.0.0", "{alias}");
    assert_eq!(alias["previous"]["version"], "0.9.0");
    assert!(alias.get("challenger").is_none(), "{alias}");
    assert_eq!(
        alias["decisions"].as_array().unwrap().last().unwrap()["action"],
        "promote"
    );
    // ... the function serves it, with the replaced version in its shadow
    let (_, answer) = emulator.invoke(&event("apigw-v2-forecast.json")).await;
    assert_eq!(common::proxy_body(&answer)["model"]["version"], "1.0.0");
    // ... AND exactly one notification arrived, from the decisions alarm
    let notifications =
        common::notifications_arriving(&ministack.endpoint, &queue, "the decision's notification")
            .await;
    assert_eq!(
        notifications.as_array().unwrap().len(),
        1,
        "{notifications}"
    );
    let message = &notifications[0]["message"];
    assert_eq!(message["AlarmName"], alarm["AlarmName"], "{message}");
    assert_eq!(message["NewStateValue"], "ALARM", "{message}");
}

#[tokio::test]
async fn when_every_version_is_wrong_the_alarm_rolls_nothing_back_and_the_model_stays() {
    // GIVEN 1.0.0 then 1.0.1 promoted (the same weights), 1.0.0 shadowed on probation
    let moto = Moto::start();
    let ministack = Ministack::start();
    let s3 = moto.create_bucket(BUCKET).await;
    for version in ["1.0.0", "1.0.1"] {
        common::publish_bundled_as(&moto, version, REGISTRY);
    }
    assert_eq!(read_alias(&s3).await["previous"]["version"], "1.0.0");
    let days = 4;
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start(
        &emulator,
        &decisions_env(&moto, &ministack, &cache, Some(days)),
    );
    // WHEN four days of live and shadow forecasts are scored on ETTh1 (the two versions compared
    // at four origins), then one more against actuals 100 degrees away from both (a sensor that
    // changed units, a world that changed)
    for day in 0..days {
        let answer = one_day_of_traffic(&emulator, &function, &s3, day, 1).await;
        assert!(answer.get("decision").is_none(), "{answer}");
    }
    let scores = score_the_serving_version_badly(&emulator, &function, &s3).await;
    assert_eq!(scores, "1.0.1");
    // AND a caller forecasts the real series from its history scaled by a million (logged by
    // both versions, flagged out of range)
    let mut poisoned = event("apigw-v2-forecast.json");
    let mut body: Value = serde_json::from_str(poisoned["body"].as_str().unwrap()).unwrap();
    let scaled: Vec<f64> = common::f64s(&body["series"][0]["values"])
        .iter()
        .map(|v| v * 1e6)
        .collect();
    body["series"][0]["values"] = json!(scaled);
    body["series"][0]["last_timestamp"] = "2018-07-01T00:00:00Z".into();
    poisoned["body"] = body.to_string().into();
    let logged_before = function.log().len();
    let (status, answer) = emulator.invoke(&poisoned).await;
    assert_eq!(status, 200, "{answer}");
    common::emulators::deliver_forecast_log(&function, logged_before, 2, &s3, BUCKET, "monitoring")
        .await;
    assert!(function.log()[logged_before..].contains("\"out_of_range\":true"));
    // AND the accuracy alarm, genuinely in ALARM, reaches the function
    let alarm = alarm_event(
        "alarm-state-change.json",
        set_accuracy_alarm(&ministack, StateValue::Alarm).await,
    );
    let (status, response) = emulator.invoke(&alarm).await;
    // THEN nothing rolls back: 1.0.0 would have done no better on the same actuals
    assert_eq!(status, 200, "{response}");
    assert_refused(&response, "no worse than 1.0.0", &function.log());
    let alias = read_alias(&s3).await;
    assert_eq!(alias["version"], "1.0.1");
    let last = alias["decisions"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    assert_eq!(last["action"], "keep", "{alias}");
    assert_eq!(last["against"], "1.0.0");
    assert!(last["evidence"]["origins"].as_u64().unwrap() >= days as u64);
    // AND the same alarm delivered again records nothing more
    let (_, again) = emulator.invoke(&alarm).await;
    assert_eq!(again["action"], "none");
    assert_eq!(read_alias(&s3).await["decisions"], alias["decisions"]);
}
