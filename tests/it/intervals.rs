//! Prediction intervals: the calibration in model.json, asked for by level over HTTP, Lambda, the
//! CLI and batch shards; bad levels refused with the field named.

use crate::common;

use common::emulators::{event, Function, LambdaEmulator, Moto};
use common::serve::ServeProcess;
use common::shards::{
    batch_env, csv_shard, item_batches, put, text, BUCKET, INPUT_PREFIX, OUTPUT_PREFIX,
};
use common::{repo_path, window, TestServer};
use lstm_forecast::monitor::store::AccuracyStore;
use serde_json::{json, Value};

/// The radii the bundled model.json calibrates, by level.
fn bundled_radii() -> Vec<(f64, Vec<f64>)> {
    let metadata: Value = serde_json::from_slice(
        &std::fs::read(repo_path("model_artifacts/etth1-ot-lstm/model.json")).unwrap(),
    )
    .unwrap();
    calibrated_radii(&metadata)
}

/// The radii a model.json calibrates, by level.
fn calibrated_radii(metadata: &Value) -> Vec<(f64, Vec<f64>)> {
    metadata["calibration"]["levels"]
        .as_array()
        .expect("the bundled model is calibrated")
        .iter()
        .map(|l| (l["level"].as_f64().unwrap(), common::f64s(&l["radius"])))
        .collect()
}

/// Checks a forecast's intervals: the levels asked for, in order, each `value -+ radius`.
fn assert_calibrated_intervals(forecast: &Value, levels: &[f64]) {
    let values = common::f64s(&forecast["values"]);
    let intervals = forecast["intervals"].as_array().expect("intervals");
    assert_eq!(intervals.len(), levels.len(), "{forecast}");
    let radii = bundled_radii();
    for (interval, level) in intervals.iter().zip(levels) {
        assert_eq!(interval["level"].as_f64(), Some(*level));
        let radius = &radii.iter().find(|(l, _)| l == level).unwrap().1;
        let (lower, upper) = (
            common::f64s(&interval["lower"]),
            common::f64s(&interval["upper"]),
        );
        for k in 0..values.len() {
            assert!(
                lower[k] <= values[k] && values[k] <= upper[k],
                "step {k}: {interval}"
            );
            assert!((upper[k] - values[k] - radius[k]).abs() < 1e-9);
            assert!((values[k] - lower[k] - radius[k]).abs() < 1e-9);
        }
    }
}

async fn post(server: &TestServer, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url("/v1/forecast"))
        .json(body)
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn a_request_gets_calibrated_intervals_at_the_levels_it_asks_for() {
    let server = TestServer::bundled().await;
    let series = json!([{"id": "a", "values": window(0.0)}, {"id": "b", "values": window(1.5)}]);
    let (status, answer) = post(
        &server,
        &json!({"series": series, "intervals": [0.95, 0.8]}),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    for forecast in answer["forecasts"].as_array().unwrap() {
        assert_calibrated_intervals(forecast, &[0.95, 0.8]);
    }
    assert_eq!(answer["calibration"]["source"], "model.json");
    assert_eq!(answer["calibration"]["forecasts"], 2857);
    // A client can see which levels it may ask for.
    let model: Value = reqwest::get(server.url("/v1/model"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(model["interval_levels"], json!([0.8, 0.95]));
    // A level within 1e-9 of a calibrated one is served, logged and scored as that one.
    let (_, near) = post(
        &server,
        &json!({"series": series, "intervals": [0.8000000001]}),
    )
    .await;
    assert_eq!(near["forecasts"][0]["intervals"][0]["level"], json!(0.8));
    // Without `intervals`, the answer is exactly as before.
    let (_, plain) = post(&server, &json!({"series": series})).await;
    assert!(plain.get("calibration").is_none());
    assert!(plain["forecasts"][0].get("intervals").is_none());
    assert_eq!(
        plain["forecasts"][0]["values"],
        answer["forecasts"][0]["values"]
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_levels_are_400s_that_name_the_field_and_uncalibrated_ones_422s() {
    let server = TestServer::bundled().await;
    let series = json!([{"values": window(0.0)}]);
    for (intervals, needle) in [
        (json!([0.8, 95]), "`intervals[1]` is 95"),
        (json!([0.8, "0.95"]), "`intervals[1]` must be a number"),
        (json!([0.8, 0.8]), "`intervals[1]` repeats 0.8"),
        (json!([0.0]), "`intervals[0]` is 0"),
        (json!(0.8), "`intervals` must be an array"),
        (
            json!([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]),
            "at most 8",
        ),
    ] {
        let (status, answer) =
            post(&server, &json!({"series": series, "intervals": intervals})).await;
        assert_eq!(status, 400, "{intervals}: {answer}");
        assert_eq!(answer["error"]["code"], "invalid_interval");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(message.contains(needle), "{intervals}: {message}");
    }
    let (status, answer) = post(&server, &json!({"series": series, "intervals": [0.8, 0.5]})).await;
    assert_eq!(status, 422, "{answer}");
    assert_eq!(answer["error"]["code"], "unsupported_interval");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("`intervals[1]` (0.5)") && message.contains("[0.8, 0.95]"),
        "{message}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_lambda_api_event_gets_the_same_intervals() {
    let emulator = LambdaEmulator::start();
    let _function = Function::start(&emulator, &[]);
    let mut request = event("apigw-v2-forecast.json");
    let mut body: Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    body["intervals"] = json!([0.8]);
    request["body"] = json!(body.to_string());
    let (_, response) = emulator.invoke(&request).await;
    assert_eq!(response["statusCode"], 200, "{response}");
    let answer: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_calibrated_intervals(&answer["forecasts"][0], &[0.8]);
    body["intervals"] = json!([0.5]);
    request["body"] = json!(body.to_string());
    let (_, response) = emulator.invoke(&request).await;
    assert_eq!(response["statusCode"], 422, "{response}");
}

#[test]
fn the_cli_forecasts_with_intervals_and_names_a_bad_level() {
    let csv = repo_path("model_artifacts/data/ETTh1.csv");
    let run = |levels: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
            .args([
                "forecast",
                "--input",
                csv.to_str().unwrap(),
                "--intervals",
                levels,
            ])
            .env("THREADS", "1")
            .output()
            .unwrap()
    };
    let output = run("0.8,0.95");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_calibrated_intervals(&answer["forecasts"][0], &[0.8, 0.95]);
    let refused = run("0.8,1.5");
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("`--intervals[1]` is 1.5"), "{stderr}");
}

#[test]
fn the_bundled_calibration_is_what_model_calibrate_measures_on_the_validation_split() {
    // Recalibrating a copy of the bundled model reproduces its model.json: the committed radii
    // are measured, not typed in. Exactly, but for the radii's last digits: they were measured on
    // libtorch, and the forwards now run on ONNX Runtime, whose forecasts differ by ~3e-7.
    let dir = tempfile::tempdir().unwrap();
    let source = repo_path("model_artifacts/etth1-ot-lstm");
    for file in ["model.pt", "model.onnx", "model.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
        .args(["model", "calibrate", dir.path().to_str().unwrap(), "--data"])
        .arg(repo_path("model_artifacts/data/ETTh1.csv"))
        .args(["--targets", "8640..11520", "--check", "11520..14400"])
        .env("THREADS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let read = |path: std::path::PathBuf| -> Value {
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    };
    let (mut measured, mut committed) = (
        read(dir.path().join("model.json")),
        read(source.join("model.json")),
    );
    let (measured_radii, committed_radii) =
        (calibrated_radii(&measured), calibrated_radii(&committed));
    measured["calibration"]["levels"].take();
    committed["calibration"]["levels"].take();
    assert_eq!(measured, committed, "model.json outside the radii");
    assert_eq!(measured_radii.len(), committed_radii.len());
    for ((level, measured), (committed_level, committed)) in
        measured_radii.iter().zip(&committed_radii)
    {
        assert_eq!(level, committed_level);
        assert_eq!(measured.len(), committed.len());
        for (m, c) in measured.iter().zip(committed) {
            assert!((m - c).abs() <= 1e-6 * c.abs(), "level {level}: {m} vs {c}");
        }
    }
    // Static calibration over-covers the test split (its errors are smaller than validation's):
    // the reason for online recalibration.
    let test_80: f64 = stdout
        .lines()
        .skip_while(|l| !l.starts_with("rows [11520, 14400)"))
        .find(|l| l.starts_with("| 0.8 |"))
        .and_then(|l| l.split('|').nth(2))
        .map(|c| c.trim().parse().unwrap())
        .expect("coverage on the test split");
    assert!((0.85..0.95).contains(&test_80), "{stdout}");
}

#[test]
fn malformed_calibrations_are_refused_by_model_validate_with_the_field_named() {
    let source = repo_path("model_artifacts/etth1-ot-lstm");
    let good: Value =
        serde_json::from_slice(&std::fs::read(source.join("model.json")).unwrap()).unwrap();
    let mut short = good["calibration"]["levels"][0]["radius"].clone();
    short.as_array_mut().unwrap().truncate(23);
    // (where, what it becomes, what the refusal names)
    let cases = [
        (
            "/calibration/levels/0/radius",
            short,
            "calibration.levels[0].radius",
        ),
        (
            "/calibration/levels/1/radius/3",
            json!(-1.0),
            "calibration.levels[1].radius[3]",
        ),
        (
            "/calibration/levels/1/level",
            json!(1.0),
            "calibration.levels[1].level",
        ),
        (
            "/calibration/levels/1/radius/0",
            json!(0.1),
            "the bands would cross",
        ),
        (
            "/calibration/method",
            json!("bootstrap"),
            "calibration.method",
        ),
    ];
    for (pointer, broken, needle) in cases {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(source.join("model.pt"), dir.path().join("model.pt")).unwrap();
        let mut metadata = good.clone();
        *metadata.pointer_mut(pointer).unwrap() = broken;
        std::fs::write(dir.path().join("model.json"), metadata.to_string()).unwrap();
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
            .args(["model", "validate", dir.path().to_str().unwrap()])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(!output.status.success(), "{needle}: accepted\n{stdout}");
        assert!(stdout.contains(needle), "{needle}: {stdout}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn batch_shards_carry_the_intervals_their_batch_asks_for() {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let key = format!("{INPUT_PREFIX}run-i/a.csv");
    put(&s3, &key, csv_shard("i", 5)).await;
    let emulator = LambdaEmulator::start();
    let mut env = moto.env();
    env.extend(batch_env());
    let _function = Function::start(&emulator, &env);
    let output = format!("s3://{BUCKET}/{OUTPUT_PREFIX}run-i/");
    let mut batch = item_batches(&[json!({"Key": key})], 1, &output).remove(0);
    batch["BatchInput"]["intervals"] = json!([0.8, 0.95]);
    let (status, result) = emulator.invoke(&batch).await;
    assert_eq!((status, &result["series"]), (200, &json!(5)), "{result}");
    let body = text(&s3, &format!("{OUTPUT_PREFIX}run-i/a.csv.jsonl"))
        .await
        .unwrap();
    for line in body.lines() {
        assert_calibrated_intervals(&serde_json::from_str(line).unwrap(), &[0.8, 0.95]);
    }
    batch["BatchInput"]["intervals"] = json!([0.5]);
    let (_, refused) = emulator.invoke(&batch).await;
    assert_eq!(refused["errorType"], "InvalidInput", "{refused}");
    assert!(
        refused["errorMessage"]
            .as_str()
            .unwrap()
            .contains("[0.8, 0.95]"),
        "{refused}"
    );
}

/// A replay of ETTh1's whole test period (119 days, 476 forecasts, ~45 s): four forecasts a day
/// with intervals, the actuals posted daily, an evaluation a day, the calibration re-read after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replay_of_the_test_period_keeps_interval_coverage_within_3_points_of_nominal() {
    use common::replay::{replay_etth1, Replay, LEVELS};
    let moto = Moto::start();
    let s3 = moto.create_bucket("replay").await;
    let report = replay_etth1(s3, "replay", Replay::bundled(119, 120)).await;
    assert!(report.evaluations_with_interval_scores >= 118, "{report:?}");
    let from = report
        .online_from_day
        .expect("the online calibration took over");
    assert!(from <= 10, "online only from day {from}");
    for (level, nominal) in LEVELS.iter().enumerate() {
        let (served, without) = (
            report.served.coverage(level),
            report.static_all.coverage(level),
        );
        let summary = format!(
            "level {nominal}: served {served:.3} (width {:.2}), model.json alone {without:.3} (width {:.2})",
            report.served.mean_width(level),
            report.static_all.mean_width(level)
        );
        assert!((served - nominal).abs() <= 0.03, "{summary}");
        // Without recalibration the bands are too wide: the test period's errors are smaller
        // than validation's. The replay would pass without the loop otherwise.
        assert!((without - nominal).abs() > 0.03, "{summary}");
        assert!(
            report.served.mean_width(level) < report.static_all.mean_width(level),
            "{summary}"
        );
    }
}

/// The same replay with the forecast log flushed after each day's evaluation, as `serve`'s
/// periodic flush delivers it: every forecast reaches the store after its first actuals were
/// read. They are joined late, and the intervals still recalibrate.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forecasts_flushed_after_their_actuals_still_recalibrate_the_intervals() {
    use common::replay::{replay_etth1, Replay};
    let moto = Moto::start();
    let s3 = moto.create_bucket("late-replay").await;
    let replay = Replay {
        flush_after_evaluation: true,
        ..Replay::bundled(30, 120)
    };
    let report = replay_etth1(s3, "late-replay", replay).await;
    // Day d's forecasts are scored on day d + 1, against day d's actuals too: all of them late.
    assert!(report.late_forecasts >= 4 * 28, "{report:?}");
    assert!(report.evaluations_with_interval_scores >= 28, "{report:?}");
    let from = report
        .online_from_day
        .expect("the online calibration took over");
    assert!(from <= 12, "online only from day {from}");
}

/// `serve` re-reads the calibration `evaluate` publishes on its reload poll.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn serve_switches_to_the_published_online_calibration_on_its_reload_poll() {
    let moto = Moto::start();
    let s3 = moto.create_bucket("online").await;
    let store = AccuracyStore::new(s3, "s3://online/monitoring").unwrap();
    let mut env = moto.env();
    env.push(("FORECAST_LOG_URI", "s3://online/monitoring".into()));
    env.push(("OBSERVATIONS_TOKEN", "online-writer".into()));
    let server = ServeProcess::start(&["--reload-interval-seconds", "1"], &env).await;
    let client = reqwest::Client::new();
    let body = json!({"series": [{"values": window(0.0)}], "intervals": [0.8]});
    let first: Value =
        common::post_json(&client, &format!("{}/v1/forecast", server.base), &body).await;
    assert_eq!(first["calibration"]["source"], "model.json");

    let published = publish_online_calibration(&store, "1.0.0").await;
    let answer = common::eventually(
        std::time::Duration::from_secs(20),
        "the online calibration is served",
        || {
            let (client, body, url) = (
                client.clone(),
                body.clone(),
                format!("{}/v1/forecast", server.base),
            );
            async move {
                let answer: Value = common::post_json(&client, &url, &body).await;
                (answer["calibration"]["source"] == "online").then_some(answer)
            }
        },
    )
    .await;
    let forecast = &answer["forecasts"][0];
    let (values, upper) = (
        common::f64s(&forecast["values"]),
        common::f64s(&forecast["intervals"][0]["upper"]),
    );
    for k in 0..24 {
        assert!((upper[k] - values[k] - published[k]).abs() < 1e-9);
    }
    assert_eq!(answer["calibration"]["forecasts"], 40);
}

/// The Lambda function reads it on its alias check (every ALIAS_CHECK_SECONDS).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_lambda_function_serves_the_online_calibration_after_its_check() {
    let moto = Moto::start();
    let s3 = moto.create_bucket("online").await;
    let store = AccuracyStore::new(s3, "s3://online/monitoring").unwrap();
    publish_online_calibration(&store, "1.0.0").await;
    let emulator = LambdaEmulator::start();
    let mut env = moto.env();
    env.push(("FORECAST_LOG_URI", "s3://online/monitoring".into()));
    env.push(("ALIAS_CHECK_SECONDS", "0".into()));
    let _function = Function::start(&emulator, &env);
    let mut request = event("apigw-v2-forecast.json");
    let mut body: Value = serde_json::from_str(request["body"].as_str().unwrap()).unwrap();
    body["intervals"] = json!([0.95]);
    request["body"] = json!(body.to_string());
    let (_, response) = emulator.invoke(&request).await;
    let answer: Value = serde_json::from_str(response["body"].as_str().unwrap()).unwrap();
    assert_eq!(answer["calibration"]["source"], "online", "{answer}");
}

/// Publishes, as `evaluate` would, an online calibration for `version` from 40 errors per step
/// (step k's errors: 0.1 * k * 1..=40); returns the 0.8 radii.
async fn publish_online_calibration(store: &AccuracyStore, version: &str) -> Vec<f64> {
    use lstm_forecast::monitor::calibration::{OnlineCalibrations, ScoredError};
    let start = chrono::Utc::now() - chrono::Duration::days(10);
    let errors: Vec<ScoredError> = (1..=40)
        .flat_map(|i| {
            (0..24).map(move |step| ScoredError {
                model_version: version.into(),
                step,
                at: start + chrono::Duration::hours(i),
                error: 0.1 * (step + 1) as f64 * i as f64,
                rank: 0,
            })
        })
        .collect();
    let mut online = OnlineCalibrations::default();
    online.update(&errors, 120, &[0.8, 0.95], chrono::Utc::now());
    store.set_online_calibrations(&online).await.unwrap();
    online
        .for_version(version)
        .unwrap()
        .radius(0.8)
        .unwrap()
        .to_vec()
}

/// The coverage alarm, as the template defines it, on ministack's CloudWatch: quiet while the
/// intervals cover what they claim, firing when they are overconfident.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_coverage_alarm_stays_ok_for_calibrated_intervals_and_fires_for_overconfident_ones() {
    use aws_sdk_cloudwatch::types::StateValue;
    use common::replay::{replay_etth1, Replay};
    use lstm_forecast::metrics::cloudwatch::{CloudWatchSink, DEFAULT_MAX_PENDING_DATUMS};
    let alarm = common::template::alarm_properties("IntervalCoverageAlarm");
    assert_eq!(alarm["MetricName"], "IntervalCoverage");
    assert!(alarm["Dimensions"]
        .as_array()
        .unwrap()
        .contains(&json!({"Name": "Level", "Value": "0.8"})));
    let stage = alarm["Dimensions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["Name"] == "Stage")
        .map(|d| d["Value"].as_str().unwrap().to_owned());
    // Radii as calibrated, then a quarter of them: intervals that claim 80% and cover far less.
    for (shrink, expected) in [(1.0, StateValue::Ok), (0.25, StateValue::Alarm)] {
        let ministack = common::emulators::Ministack::start();
        let cloudwatch = ministack.cloudwatch().await;
        common::template::put_alarm(&cloudwatch, &alarm, |_| None).await;
        let sink = std::sync::Arc::new(CloudWatchSink::new(
            cloudwatch.clone(),
            alarm["Namespace"].as_str().unwrap(),
            DEFAULT_MAX_PENDING_DATUMS,
        ));
        let telemetry =
            lstm_forecast::metrics::Telemetry::new(vec![sink], "", "", stage.as_deref());
        let moto = Moto::start();
        let s3 = moto.create_bucket("coverage").await;
        let replay = Replay {
            telemetry: telemetry.clone(),
            model: bundled_with_radii_times(shrink),
            ..Replay::bundled(3, 120)
        };
        let report = replay_etth1(s3, "coverage", replay).await;
        assert!(report.evaluations_with_interval_scores >= 2, "{report:?}");
        telemetry.flush().await;
        let name = alarm["AlarmName"].as_str().unwrap();
        let client = &cloudwatch;
        common::eventually(
            std::time::Duration::from_secs(10),
            "the coverage alarm's state",
            || {
                let expected = expected.clone();
                async move {
                    let state = client
                        .describe_alarms()
                        .alarm_names(name)
                        .send()
                        .await
                        .unwrap();
                    (state.metric_alarms()[0].state_value() == Some(&expected)).then_some(())
                }
            },
        )
        .await;
    }
}

/// The bundled model with its calibrated radii multiplied by `factor`.
fn bundled_with_radii_times(factor: f64) -> lstm_forecast::model::Model {
    let source = repo_path("model_artifacts/etth1-ot-lstm");
    let mut metadata: Value =
        serde_json::from_slice(&std::fs::read(source.join("model.json")).unwrap()).unwrap();
    for level in metadata["calibration"]["levels"].as_array_mut().unwrap() {
        let radius: Vec<Value> = common::f64s(&level["radius"])
            .into_iter()
            .map(|r| json!(r * factor))
            .collect();
        level["radius"] = Value::Array(radius);
    }
    lstm_forecast::model::Model::load(&lstm_forecast::model::ModelArtifacts {
        metadata_json: serde_json::to_vec(&metadata).unwrap(),
        model_pt: std::fs::read(source.join("model.pt")).unwrap(),
        model_onnx: std::fs::read(source.join("model.onnx")).ok(),
        signature: None,
    })
    .unwrap()
}

/// A network that returns quantiles takes its intervals from them (0.8 from 0.1 and 0.9), sorted
/// at each step, so that even a network whose quantile heads cross gives bands that do not.
#[tokio::test]
async fn a_quantile_network_serves_intervals_from_its_quantiles_and_they_never_cross() {
    for fixture in ["quantile-lstm", "quantile-lstm-crossing"] {
        let server = TestServer::start(
            common::fixture_model(fixture),
            lstm_forecast::service::Limits::default(),
            64,
        )
        .await;
        let series = json!([{"values": window(0.0)}, {"values": window(2.0)}]);
        let (status, answer) = post(&server, &json!({"series": series, "intervals": [0.8]})).await;
        assert_eq!(status, 200, "{fixture}: {answer}");
        assert_eq!(answer["calibration"]["source"], "quantiles");
        assert_eq!(
            answer["forecasts"][0]["intervals"][0]["level"],
            json!(0.8),
            "the bounded level"
        );
        for forecast in answer["forecasts"].as_array().unwrap() {
            let values = common::f64s(&forecast["values"]);
            let interval = &forecast["intervals"][0];
            let (lower, upper) = (
                common::f64s(&interval["lower"]),
                common::f64s(&interval["upper"]),
            );
            for k in 0..24 {
                assert!(
                    lower[k] <= values[k] && values[k] <= upper[k],
                    "{fixture} step {k}: {forecast}"
                );
            }
        }
        let (status, answer) = post(&server, &json!({"series": series, "intervals": [0.5]})).await;
        assert_eq!(status, 422, "{answer}");
        let message = answer["error"]["message"].as_str().unwrap();
        assert!(
            message.contains("0.25 and 0.75") && message.contains("[0.1, 0.5, 0.9]"),
            "{message}"
        );
        server.stop().await;
    }
}

#[test]
fn model_validate_refuses_crossing_quantiles_and_malformed_quantile_contracts() {
    let validate = |dir: &std::path::Path| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
            .args(["model", "validate", dir.to_str().unwrap()])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    let (ok, report) = validate(&repo_path("tests/fixtures/quantile-lstm"));
    assert!(ok, "{report}");
    let (ok, report) = validate(&repo_path("tests/fixtures/quantile-lstm-crossing"));
    assert!(
        !ok && report.contains("quantiles [0.1, 0.5, 0.9] cross"),
        "{report}"
    );
    assert!(
        !report.contains("libtorch cannot run"),
        "failed checks are not a crash: {report}"
    );

    let source = repo_path("tests/fixtures/quantile-lstm");
    let good: Value =
        serde_json::from_slice(&std::fs::read(source.join("model.json")).unwrap()).unwrap();
    let bundled: Value = serde_json::from_slice(
        &std::fs::read(repo_path("model_artifacts/etth1-ot-lstm/model.json")).unwrap(),
    )
    .unwrap();
    for (pointer, broken, needle) in [
        (
            "/output/quantiles",
            json!([0.9, 0.5, 0.1]),
            "output.quantiles[1]",
        ),
        ("/output/quantiles", json!([0.1, 0.9]), "must include 0.5"),
        (
            "/output/quantiles",
            json!([0.5, 1.2]),
            "output.quantiles[1]",
        ),
        (
            "/calibration",
            bundled["calibration"].clone(),
            "remove one of the two",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::copy(source.join("model.pt"), dir.path().join("model.pt")).unwrap();
        let mut metadata = good.clone();
        match metadata.pointer_mut(pointer) {
            Some(slot) => *slot = broken,
            None => metadata["calibration"] = broken,
        }
        std::fs::write(dir.path().join("model.json"), metadata.to_string()).unwrap();
        let (ok, report) = validate(dir.path());
        assert!(!ok && report.contains(needle), "{needle}: {report}");
    }
}
