//! Monitoring against the emulators (CloudWatch on ministack, S3 on moto): every metric pushed to
//! CloudWatch is read back and checked; the accuracy loop (forecast log, observations, evaluation)
//! is replayed on ETTh1; the real `serve` exposes its memory gauges.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use common::emulators::{Ministack, Moto};
use common::{bundled_model, window, TestServer};
use lstm_forecast::metrics::cloudwatch::CloudWatchSink;
use lstm_forecast::metrics::{Metric, MetricSink, ServerMetrics, Telemetry};
use lstm_forecast::monitor::store::{AccuracyStore, ForecastLog};
use lstm_forecast::service::{Limits, Monitoring};
use serde_json::{json, Value};

const NAMESPACE: &str = "LstmForecastTest";

fn cloudwatch_sink(endpoint: &str, max_pending: usize) -> Arc<CloudWatchSink> {
    let config = aws_sdk_cloudwatch::Config::builder()
        .behavior_version(aws_sdk_cloudwatch::config::BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(aws_sdk_cloudwatch::config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_cloudwatch::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .timeout_config(
            aws_sdk_cloudwatch::config::timeout::TimeoutConfig::builder()
                .operation_timeout(Duration::from_secs(5))
                .connect_timeout(Duration::from_secs(1))
                .build(),
        )
        .build();
    Arc::new(CloudWatchSink::new(
        aws_sdk_cloudwatch::Client::from_conf(config),
        NAMESPACE,
        max_pending,
    ))
}

async fn statistics(
    cloudwatch: &Ministack,
    metric: &str,
    dimensions: &[(&str, &str)],
) -> Option<aws_sdk_cloudwatch::types::Datapoint> {
    let client = cloudwatch.cloudwatch().await;
    let now = aws_sdk_cloudwatch::primitives::DateTime::from(std::time::SystemTime::now());
    let start = aws_sdk_cloudwatch::primitives::DateTime::from_secs(now.secs() - 3600);
    let end = aws_sdk_cloudwatch::primitives::DateTime::from_secs(now.secs() + 3600);
    let out = client
        .get_metric_statistics()
        .namespace(NAMESPACE)
        .metric_name(metric)
        .set_dimensions(Some(
            dimensions
                .iter()
                .map(|(k, v)| Dimension::builder().name(*k).value(*v).build())
                .collect(),
        ))
        .start_time(start)
        .end_time(end)
        .period(7200)
        .statistics(Statistic::Sum)
        .statistics(Statistic::SampleCount)
        .statistics(Statistic::Minimum)
        .statistics(Statistic::Maximum)
        .statistics(Statistic::Average)
        .send()
        .await
        .unwrap();
    out.datapoints().first().cloned()
}

async fn server_with(
    sinks: Vec<Arc<dyn MetricSink>>,
    forecast_log: Option<Arc<ForecastLog>>,
    backtest_rate: f64,
) -> (TestServer, Telemetry) {
    let model = bundled_model();
    let telemetry = Telemetry::new(
        sinks,
        "etth1-ot-lstm",
        &model.metadata().version,
        Some("test"),
    );
    let monitoring = Monitoring {
        telemetry: telemetry.clone(),
        forecast_log,
        backtest_rate,
        sampling_seed: None,
    };
    (
        TestServer::start_with(
            model,
            Limits::default(),
            64,
            ServerMetrics::new(),
            monitoring,
        )
        .await,
        telemetry,
    )
}

#[tokio::test]
async fn every_request_metric_reaches_cloudwatch_with_the_right_values() {
    // Its own ministack: it counts every datum under the dimensions that the replay test uses too.
    let cloudwatch = Ministack::start();
    let sink = cloudwatch_sink(&cloudwatch.endpoint, 10_000);
    let (server, telemetry) = server_with(vec![sink.clone()], None, 1.0).await;
    let client = reqwest::Client::new();
    // GIVEN 5 forecast requests of 3 series (one with a long enough history to be backtested) ...
    let long: Vec<f64> = (0..192).map(|t| 15.0 + ((t as f64) / 4.0).sin()).collect();
    for _ in 0..5 {
        let body =
            json!({"series": [{"values": window(0.0)}, {"values": window(1.0)}, {"values": long}]});
        let r = client
            .post(server.url("/v1/forecast"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    // ... and 2 bad requests
    for _ in 0..2 {
        client
            .post(server.url("/v1/forecast"))
            .json(&json!({"series": []}))
            .send()
            .await
            .unwrap();
    }
    // WHEN the sink flushes
    telemetry.flush().await;
    assert_eq!(sink.failures(), 0);
    assert_eq!(
        sink.calls(),
        1,
        "one PutMetricData call per flush, whatever the request count"
    );
    // THEN CloudWatch holds exactly what happened
    let version = server.service.model().metadata().version.clone();
    let dims = [
        ("Model", "etth1-ot-lstm"),
        ("ModelVersion", version.as_str()),
        ("Stage", "test"),
    ];
    let forecasts = statistics(&cloudwatch, "Forecasts", &dims)
        .await
        .expect("Forecasts datapoint");
    assert_eq!(forecasts.sum(), Some(15.0));
    let requests = statistics(&cloudwatch, "Requests", &dims).await.unwrap();
    assert_eq!(requests.sum(), Some(7.0));
    assert_eq!(
        statistics(&cloudwatch, "ClientErrors", &dims)
            .await
            .unwrap()
            .sum(),
        Some(2.0)
    );
    assert!(statistics(&cloudwatch, "ServerErrors", &dims)
        .await
        .is_none());
    let latency = statistics(&cloudwatch, "ForecastLatency", &dims)
        .await
        .unwrap();
    assert_eq!(latency.sample_count(), Some(7.0));
    assert!(
        latency.minimum().unwrap() > 0.0
            && latency.maximum().unwrap() >= latency.minimum().unwrap()
    );
    let inference = statistics(&cloudwatch, "InferenceLatency", &dims)
        .await
        .unwrap();
    assert_eq!(inference.sample_count(), Some(5.0));
    let drift = statistics(&cloudwatch, "InputDrift", &dims).await.unwrap();
    assert_eq!(
        drift.sample_count(),
        Some(15.0),
        "one drift sample per series"
    );
    assert!(drift.minimum().unwrap() >= 0.0);
    let out_of_range = statistics(&cloudwatch, "OutOfRangeFraction", &dims)
        .await
        .unwrap();
    assert_eq!(
        out_of_range.maximum(),
        Some(0.0),
        "these windows are inside the training range"
    );
    let backtest = statistics(&cloudwatch, "BacktestMAE", &dims).await.unwrap();
    assert_eq!(
        backtest.sample_count(),
        Some(5.0),
        "the long series, backtested at rate 1"
    );
    assert!(backtest.minimum().unwrap() > 0.0);
    server.stop().await;
}

#[tokio::test]
async fn cloudwatch_being_unreachable_never_fails_a_forecast_and_drops_are_counted() {
    // GIVEN a CloudWatch endpoint nobody listens on and a buffer of 5 datums
    let dead = format!("http://127.0.0.1:{}", common::emulators::free_port());
    let sink = cloudwatch_sink(&dead, 5);
    let (server, telemetry) = server_with(vec![sink.clone()], None, 0.0).await;
    let client = reqwest::Client::new();
    for i in 0..10 {
        let r = client
            .post(server.url("/v1/forecast"))
            .json(&common::forecast_body(&[window(i as f64)]))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "forecasts do not depend on CloudWatch");
    }
    // WHEN flushes fail
    telemetry.flush().await;
    telemetry.flush().await;
    // THEN the failure is counted, at most 5 datums wait, the rest are counted as dropped
    assert!(sink.failures() >= 1);
    assert!(sink.pending() <= 5);
    assert!(
        sink.dropped() > 0,
        "overflow is counted (as MetricsDropped once CloudWatch answers)"
    );
    let r = client
        .post(server.url("/v1/forecast"))
        .json(&common::forecast_body(&[window(0.0)]))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    server.stop().await;
}

#[tokio::test]
async fn dropped_metrics_are_reported_once_cloudwatch_answers_again() {
    let cloudwatch = Ministack::shared();
    let sink = cloudwatch_sink(&cloudwatch.endpoint, 2);
    let telemetry = Telemetry::new(vec![sink.clone()], "m", "1", None);
    for metric in [
        lstm_forecast::metrics::Metric::Forecasts,
        lstm_forecast::metrics::Metric::Requests,
        lstm_forecast::metrics::Metric::ClientErrors,
    ] {
        telemetry.record(metric, 1.0);
    }
    // 3 metrics x 2 dimension sets = 6 datums into a buffer of 2: 4 are dropped before sending,
    // and reported by the next flush.
    telemetry.flush().await;
    telemetry.flush().await;
    let dropped = statistics(
        cloudwatch,
        "MetricsDropped",
        &[("Model", "m"), ("ModelVersion", "1")],
    )
    .await
    .expect("MetricsDropped");
    assert_eq!(dropped.sum(), Some(4.0));
}

#[tokio::test]
async fn an_etth1_replay_evaluates_to_the_same_mae_as_an_offline_computation() {
    let moto = Moto::shared();
    let s3 = moto.create_bucket("accuracy").await;
    let store = AccuracyStore::new(s3, "s3://accuracy/monitoring").unwrap();
    let log = Arc::new(ForecastLog::new(store.clone()));
    let cloudwatch = Ministack::shared();
    let sink = cloudwatch_sink(&cloudwatch.endpoint, 10_000);
    let (server, telemetry) = server_with(vec![sink.clone()], Some(log.clone()), 0.0).await;
    let client = reqwest::Client::new();

    // ETTh1 test rows: forecast from 12 consecutive hourly origins.
    let rows = common::replay::etth1_ot();
    let first_origin = 12_000;
    let mut offline_abs_error = 0.0;
    let mut offline_count = 0usize;
    let mut offline_by_bucket: std::collections::BTreeMap<&str, (f64, usize)> = Default::default();
    for origin in first_origin..first_origin + 12 {
        let history: Vec<f64> = rows[origin - 168..origin].iter().map(|r| r.1).collect();
        let body = json!({"series": [{"id": "etth1-ot", "values": history, "last_timestamp": rows[origin - 1].0}]});
        let answer: Value = common::post_json(&client, &server.url("/v1/forecast"), &body).await;
        for (k, value) in answer["forecasts"][0]["values"]
            .as_array()
            .unwrap()
            .iter()
            .enumerate()
        {
            let error = (value.as_f64().unwrap() - rows[origin + k].1).abs();
            offline_abs_error += error;
            offline_count += 1;
            let bucket = match k + 1 {
                1..=6 => "1-6",
                7..=12 => "7-12",
                _ => "13-24",
            };
            let entry = offline_by_bucket.entry(bucket).or_default();
            entry.0 += error;
            entry.1 += 1;
        }
    }
    log.flush().await;
    assert_eq!(log.written(), 12);

    // The actuals arrive through the API (all but the very last hour, which stays missing).
    let actual_rows = &rows[first_origin..first_origin + 12 + 23 - 1];
    let observations = json!({"series": [{
        "id": "etth1-ot",
        "timestamps": actual_rows.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
        "values": actual_rows.iter().map(|r| r.1).collect::<Vec<_>>(),
    }]});
    let stored = client
        .post(server.url("/v1/observations"))
        .json(&observations)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 202);
    // The last hour's error is not in the evaluation: take it out of the offline sum.
    let last_origin = first_origin + 11;
    let answer_last: Value = common::post_json(&client, &server.url("/v1/forecast"), &json!({"series": [{"values": rows[last_origin - 168..last_origin].iter().map(|r| r.1).collect::<Vec<_>>()}]})).await;
    let last_error = (answer_last["forecasts"][0]["values"][23].as_f64().unwrap()
        - rows[last_origin + 23].1)
        .abs();
    offline_abs_error -= last_error;
    offline_count -= 1;
    let bucket = offline_by_bucket.get_mut("13-24").unwrap();
    bucket.0 -= last_error;
    bucket.1 -= 1;

    // WHEN evaluated
    let run = lstm_forecast::monitor::evaluate::run_evaluation(
        &store,
        &telemetry,
        chrono::Utc::now(),
        hourly_window(),
    )
    .await
    .unwrap();
    telemetry.flush().await;

    // THEN the MAE is the offline one, the last forecast waits for its last hour (no actual is
    // due there yet), and the metrics are in CloudWatch
    let evaluation = &run.evaluation;
    assert_eq!(evaluation.forecasts_scored, 12);
    assert_eq!(evaluation.missing_actuals, 0);
    assert_eq!(evaluation.forecasts_pending, 1);
    assert_eq!(evaluation.pairs, offline_count);
    let version = server.service.model().metadata().version.clone();
    let scores = &evaluation.by_version[&version];
    let offline_mae = offline_abs_error / offline_count as f64;
    assert!(
        (scores.overall.mae - offline_mae).abs() < 1e-9,
        "{} vs {offline_mae}",
        scores.overall.mae
    );
    for (bucket, (sum, n)) in &offline_by_bucket {
        assert!(
            (scores.horizon_buckets[*bucket].mae - sum / *n as f64).abs() < 1e-9,
            "bucket {bucket}"
        );
    }
    let dims = [
        ("Model", "etth1-ot-lstm"),
        ("ModelVersion", version.as_str()),
        ("Stage", "test"),
    ];
    // A query matches the exact dimension set: the overall MAE under these three, each horizon
    // bucket's under these and its `HorizonBucket`.
    let mae = statistics(cloudwatch, "MAE", &dims)
        .await
        .expect("MAE in CloudWatch");
    assert_eq!(mae.sample_count(), Some(1.0), "{mae:?}");
    assert!(
        (mae.sum().unwrap() - scores.overall.mae).abs() < scores.overall.mae * 1e-3,
        "CloudWatch keeps 4 significant digits: {mae:?} vs {}",
        scores.overall.mae
    );
    for (bucket, bucket_scores) in &scores.horizon_buckets {
        let bucket_dims = [
            dims[0],
            dims[1],
            dims[2],
            ("HorizonBucket", bucket.as_str()),
        ];
        let mae = statistics(cloudwatch, "MAE", &bucket_dims)
            .await
            .unwrap_or_else(|| panic!("MAE of bucket {bucket}"));
        assert_eq!(mae.sample_count(), Some(1.0), "{bucket}: {mae:?}");
        assert!(
            (mae.sum().unwrap() - bucket_scores.mae).abs() < bucket_scores.mae * 1e-3,
            "{bucket}: {mae:?} vs {}",
            bucket_scores.mae
        );
        assert!(statistics(cloudwatch, "WAPE", &bucket_dims).await.is_some());
    }
    for metric in ["RMSE", "Bias", "MASE"] {
        assert!(
            statistics(cloudwatch, metric, &dims).await.is_some(),
            "{metric}"
        );
    }
    assert!(run.report.starts_with("s3://accuracy/monitoring/reports/"));

    // AND the report and its chart are in S3; a second run scores nothing twice
    let again = lstm_forecast::monitor::evaluate::run_evaluation(
        &store,
        &telemetry,
        chrono::Utc::now(),
        hourly_window(),
    )
    .await
    .unwrap();
    assert_eq!(again.evaluation.forecasts_scored, 0);
    server.stop().await;
}

#[tokio::test]
async fn observations_without_a_store_are_a_clear_501() {
    let server = TestServer::bundled().await;
    let r = reqwest::Client::new()
        .post(server.url("/v1/observations"))
        .json(&json!({"series": [{"id": "a", "timestamps": ["2018-01-01T00:00:00Z"], "values": [1.0]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 501);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_configured");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("FORECAST_LOG_URI"));
    server.stop().await;
}

/// The evaluation window of an hourly model with a 24-hour horizon, and an hour's grace.
fn hourly_window() -> lstm_forecast::monitor::evaluate::EvaluationWindow {
    lstm_forecast::monitor::evaluate::EvaluationWindow::for_horizon(
        24,
        Duration::from_secs(3600),
        chrono::Duration::hours(1),
    )
}

/// The key of an object that another system drops into the store's actuals this hour.
fn dropped_actuals_key(name: &str) -> String {
    format!(
        "monitoring/actuals/arrival={}/{name}",
        lstm_forecast::monitor::store::hour_partition(chrono::Utc::now())
    )
}

/// One evaluation run now, with an hour's grace, publishing nowhere.
async fn evaluate_now(
    store: &AccuracyStore,
) -> Result<
    lstm_forecast::monitor::evaluate::EvaluationRun,
    lstm_forecast::monitor::store::StoreError,
> {
    lstm_forecast::monitor::evaluate::run_evaluation(
        store,
        &Telemetry::disabled(),
        chrono::Utc::now(),
        hourly_window(),
    )
    .await
}

/// A logged forecast of model `m` version `1` from 2018-01-01T00:00Z (last value 10), one value
/// per following hour.
fn hourly_record(series: &str, values: &[f64]) -> lstm_forecast::monitor::store::ForecastRecord {
    let origin = chrono::DateTime::parse_from_rfc3339("2018-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    lstm_forecast::monitor::store::ForecastRecord {
        series_id: series.into(),
        origin,
        last_value: 10.0,
        timestamps: (1..=values.len() as i64)
            .map(|h| origin + chrono::Duration::hours(h))
            .collect(),
        values: values.to_vec(),
        model: "m".into(),
        model_version: "1".into(),
        request_id: None,
        created_at: chrono::Utc::now(),
        intervals_calibration: None,
        intervals: Vec::new(),
        out_of_range: false,
        role: Default::default(),
    }
}

#[tokio::test]
async fn actuals_dropped_as_csv_files_in_the_arrival_partition_are_joined_too() {
    // GIVEN a logged forecast and its actuals delivered by another system as a CSV file
    let (store, s3) = fresh_store("dropped").await;
    let record = hourly_record("plant-7", &[11.0, 12.0, 13.0]);
    store.append_forecasts(&[record]).await.unwrap();
    // (hour 3 never comes; hour 5 does, so hour 3 is due, an hour's grace later)
    let csv = "id,timestamp,value\nplant-7,2018-01-01 01:00:00,12\nplant-7,2018-01-01T02:00:00Z,12\nplant-7,2018-01-01T05:00:00Z,15\n";
    s3.put_object()
        .bucket("dropped")
        .key(dropped_actuals_key("from-scada-2018-01-01.csv"))
        .body(aws_sdk_s3::primitives::ByteStream::from(
            csv.as_bytes().to_vec(),
        ))
        .send()
        .await
        .unwrap();
    // WHEN evaluated
    let run = evaluate_now(&store).await.unwrap();
    // THEN both CSV rows matched (errors -1 and 0), and the third hour is counted as missing
    assert_eq!(run.evaluation.pairs, 2);
    assert_eq!(run.evaluation.missing_actuals, 1);
    assert!((run.evaluation.by_version["1"].overall.mae - 0.5).abs() < 1e-12);
}

#[tokio::test]
async fn serve_reads_its_resident_set_and_live_heap_when_metrics_is_scraped() {
    // GIVEN the real server binary, whose metrics flush period (a minute by default) has not come
    let server = common::ServeProcess::start(&[], &[]).await;
    let client = reqwest::Client::new();
    // WHEN /metrics is scraped
    let text = common::get_text(&client, &server.url("/metrics")).await;
    let rss = common::metric_value(&text, "lstm_forecast_memory_rss_bytes").expect("RSS gauge");
    let heap =
        common::metric_value(&text, "lstm_forecast_heap_allocated_bytes").expect("heap gauge");
    // THEN both are plausible: libtorch's operator tables alone are tens of MB of live heap
    // (so jemalloc sees libtorch's allocations), and the resident set holds the heap
    assert!(heap > 10e6, "live heap {heap} bytes");
    assert!(rss > heap, "RSS {rss} bytes below the live heap {heap}");
    // AND so is the standard process CPU counter: loading libtorch alone takes CPU time
    let cpu = common::metric_value(&text, "process_cpu_seconds_total").expect("process CPU");
    assert!(cpu > 0.0, "{cpu}");
}

#[tokio::test]
async fn serve_publishes_its_cpu_share_at_each_metrics_flush() {
    // GIVEN the real server binary flushing its process metrics every second
    let server =
        common::ServeProcess::start(&[], &[("METRICS_FLUSH_SECONDS", "1".to_string())]).await;
    let client = reqwest::Client::new();
    // WHEN /metrics is scraped after a flush
    let share = common::eventually(Duration::from_secs(60), "CPU share on /metrics", || {
        let (client, url) = (client.clone(), server.url("/metrics"));
        async move {
            let text = common::get_text(&client, &url).await;
            common::metric_sum(&text, "lstm_forecast_cpu_utilization_percent")
        }
    })
    .await;
    // THEN it is a share of the CPUs the process may use
    assert!((0.0..=100.0).contains(&share), "{share}");
}

#[tokio::test]
async fn serve_gives_back_libtorchs_startup_pages_after_it_starts_listening_not_during_the_load() {
    // GIVEN the real server binary, logging its memory housekeeping
    let server = common::ServeProcess::start(
        &[],
        &[(
            "RUST_LOG",
            "info,lstm_forecast::model::footprint=debug".to_string(),
        )],
    )
    .await;
    // WHEN it starts and runs for a moment
    server
        .wait_for_log("released libtorch", Duration::from_secs(60))
        .await;
    let log = server.log();
    let events = [
        "model loaded and warmed up",
        "listening on",
        "released libtorch",
    ];
    let order: Vec<&str> = log
        .lines()
        .flat_map(|line| events.into_iter().filter(move |e| line.contains(e)))
        .collect();
    let released_mib = log
        .lines()
        .find(|line| line.contains("released libtorch"))
        .and_then(|line| line.split("mib=").nth(1))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|mib| mib.parse::<u64>().ok())
        .unwrap_or(0);
    // THEN the code libtorch ran once before `main` leaves the resident set, and only once the
    // server listens: unmapping it during the load slowed the warm-up and the cold start
    assert_eq!(order, events);
    assert!(
        released_mib >= 20,
        "released only {released_mib} MiB of libtorch mappings"
    );
}

#[tokio::test]
async fn unreadable_lines_are_quarantined_and_reported_and_the_first_actual_wins() {
    // GIVEN a forecast log with a good record and a torn line, and actuals that disagree with
    // each other, plus a CSV row that is not a number
    let (store, s3) = fresh_store("quarantine").await;
    let record = hourly_record("plant-9", &[11.0]);
    let good = serde_json::to_string(&record).unwrap();
    let (first, later) = (
        dropped_actuals_key("a-first.jsonl"),
        dropped_actuals_key("b-later.csv"),
    );
    for (key, body) in [
        (
            "monitoring/forecasts/origin=2018-01-01T00/torn.jsonl",
            format!("{good}\n{{\"series_id\": \"plant-9\", \"orig\n"),
        ),
        (
            first.as_str(),
            r#"{"series_id":"plant-9","timestamp":"2018-01-01T01:00:00Z","value":12.0}"#
                .to_string(),
        ),
        (
            later.as_str(),
            "id,timestamp,value\nplant-9,2018-01-01T01:00:00Z,99\nplant-9,2018-01-01T02:00:00Z,n/a\n"
                .to_string(),
        ),
    ] {
        s3.put_object()
            .bucket("quarantine")
            .key(key)
            .body(aws_sdk_s3::primitives::ByteStream::from(body.into_bytes()))
            .send()
            .await
            .unwrap();
    }
    // WHEN evaluated
    let run = evaluate_now(&store)
        .await
        .expect("bad lines never fail an evaluation");
    let e = &run.evaluation;
    // THEN the good record is scored against the first actual (12, not the later 99) ...
    assert_eq!(e.pairs, 1);
    assert!((e.by_version["1"].overall.mae - 1.0).abs() < 1e-12);
    assert_eq!((e.duplicate_actuals, e.conflicting_actuals), (1, 1));
    // ... and both unreadable lines are reported with their object and line
    assert_eq!(e.quarantined_lines, 2, "{:?}", e.quarantined);
    let places: Vec<(&str, usize)> = e
        .quarantined
        .iter()
        .map(|q| (q.key.as_str(), q.line))
        .collect();
    assert!(places.contains(&("monitoring/forecasts/origin=2018-01-01T00/torn.jsonl", 2)));
    assert!(places.contains(&(later.as_str(), 3)));
}

/// A forecast log whose store, at `uri`, is on an endpoint where nothing listens.
fn forecast_log_on_a_dead_s3(uri: &str) -> Arc<ForecastLog> {
    let dead = format!("http://127.0.0.1:{}", common::emulators::free_port());
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::Config::builder()
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .endpoint_url(&dead)
            .region(aws_sdk_s3::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_s3::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .force_path_style(true)
            .build(),
    );
    Arc::new(ForecastLog::new(AccuracyStore::new(s3, uri).unwrap()))
}

#[tokio::test]
async fn forecast_log_writes_that_fail_are_counted_as_forecast_log_failures() {
    // GIVEN a service whose forecast log points at an S3 that does not answer
    let log = forecast_log_on_a_dead_s3("s3://nowhere/monitoring");
    let sink = Arc::new(common::Collected::default());
    let (server, _) = server_with(vec![sink.clone()], Some(log), 0.0).await;
    // WHEN two logged forecasts are flushed
    let body = json!({"series": [
        {"id": "a", "values": window(0.0), "last_timestamp": "2018-01-01T00:00:00Z"},
        {"id": "b", "values": window(1.0), "last_timestamp": "2018-01-01T00:00:00Z"}]});
    let answer =
        common::post_json(&reqwest::Client::new(), &server.url("/v1/forecast"), &body).await;
    assert_eq!(answer["forecasts"].as_array().unwrap().len(), 2);
    lstm_forecast::service::build::flush(&server.service).await;
    // THEN the forecast was answered, and the two records the flush could not write are counted
    assert_eq!(sink.values(Metric::ForecastLogFailures), vec![2.0]);
    server.stop().await;
}

#[tokio::test]
async fn a_5xx_answer_names_no_bucket_or_key_only_the_request_id() {
    // GIVEN observations whose store (bucket `secret-bucket`) does not answer
    let log = forecast_log_on_a_dead_s3("s3://secret-bucket/monitoring");
    let (server, _) = server_with(Vec::new(), Some(log), 0.0).await;
    // WHEN actuals are posted
    let response = reqwest::Client::new()
        .post(server.url("/v1/observations"))
        .header("x-request-id", "req-5xx-1")
        .json(&json!({"series": [{"id": "a", "timestamps": ["2018-01-01T01:00:00Z"], "values": [1.0]}]}))
        .send()
        .await
        .unwrap();
    // THEN the answer is a 503 in the usual error format, with the request id and no internals
    assert_eq!(response.status(), 503);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert_eq!(body["error"]["request_id"], "req-5xx-1", "{body}");
    let text = body.to_string();
    assert!(
        !text.contains("secret-bucket") && !text.contains("127.0.0.1"),
        "{text}"
    );
    server.stop().await;
}

/// A store at `s3://BUCKET/monitoring` in a bucket of its own on the shared moto, and an S3
/// client for writing there as other systems do.
async fn fresh_store(bucket: &str) -> (AccuracyStore, aws_sdk_s3::Client) {
    let s3 = Moto::shared().create_bucket(bucket).await;
    let store = AccuracyStore::new(s3.clone(), &format!("s3://{bucket}/monitoring")).unwrap();
    (store, s3)
}

#[tokio::test]
async fn an_evaluation_reads_what_arrived_since_the_last_one_not_the_history() {
    use common::history::{history_start, write_hours, Arrival};
    let mut reads = Vec::new();
    for (bucket, history_hours) in [("history-short", 30), ("history-long", 300)] {
        // GIVEN a history of hourly forecasts and actuals that came in hour by hour, evaluated
        let (store, _) = fresh_store(bucket).await;
        write_hours(&store, history_start(), history_hours, 1, Arrival::Hourly)
            .await
            .unwrap();
        let history = evaluate_now(&store).await.unwrap().evaluation;
        assert!(history.pairs > 0 && history.missing_actuals == 0);
        // WHEN 10 more hours of forecasts and actuals arrive and are evaluated
        let increment_start = history_start() + chrono::Duration::hours(history_hours);
        write_hours(&store, increment_start, 10, 1, Arrival::Now)
            .await
            .unwrap();
        let increment = evaluate_now(&store).await.unwrap().evaluation;
        // THEN only the new actuals and the forecasts of the span before them were read
        assert_eq!(increment.actuals_read, 10);
        assert!(increment.pairs > 0);
        reads.push((increment.objects_read, increment.pairs));
    }
    // AND ten times the history cost the same reads and scored the same pairs
    assert_eq!(
        reads[0], reads[1],
        "(objects read, pairs) after 30 and 300 hours"
    );
}

#[tokio::test]
async fn a_replay_of_past_data_is_scored_once_however_often_its_actuals_are_sent() {
    use common::history::{actuals, forecast, history_start};
    // GIVEN forecasts replayed over 2016 data, logged long after their origins
    let (store, _) = fresh_store("replay").await;
    let origin = history_start();
    store
        .append_forecasts(&[forecast(0, origin), forecast(1, origin)])
        .await
        .unwrap();
    // WHEN their first 12 hours of actuals are sent, and evaluated
    for h in 1..=12 {
        store
            .append_actuals(&actuals(2, origin + chrono::Duration::hours(h)))
            .await
            .unwrap();
    }
    let first = evaluate_now(&store).await.unwrap().evaluation;
    // THEN 12 pairs of each series are scored; the other targets wait
    assert_eq!((first.pairs, first.forecasts_pending), (24, 2));
    // AND sending the same actuals again scores nothing twice: they are duplicates
    let resent: Vec<_> = (1..=12)
        .flat_map(|h| actuals(2, origin + chrono::Duration::hours(h)))
        .collect();
    store.append_actuals(&resent).await.unwrap();
    let again = evaluate_now(&store).await.unwrap().evaluation;
    assert_eq!((again.pairs, again.duplicate_actuals), (0, 24));
    // AND with no new actuals, a run reads no forecast at all
    let idle = evaluate_now(&store).await.unwrap().evaluation;
    assert_eq!((idle.objects_read, idle.pairs), (0, 0));
}

#[tokio::test]
async fn a_far_future_actual_is_refused_by_name_and_nothing_is_stored() {
    // GIVEN a server logging to a store
    let moto = Moto::shared();
    let s3 = moto.create_bucket("future-actuals").await;
    let store = AccuracyStore::new(s3.clone(), "s3://future-actuals/monitoring").unwrap();
    let log = Arc::new(ForecastLog::new(store));
    let (server, _) = server_with(Vec::new(), Some(log), 0.0).await;
    let client = reqwest::Client::new();
    // WHEN a caller sends a real actual beside one stamped in year 9999 (which, stored, would
    // count every target of the series as missing from then on)
    let body = json!({"series": [{"id": "a",
        "timestamps": ["2018-01-01T00:00:00Z", "9999-01-01T00:00:00Z"], "values": [1.0, 2.0]}]});
    let refused = client
        .post(server.url("/v1/observations"))
        .json(&body)
        .send()
        .await
        .unwrap();
    // THEN the request is a 400 naming the field, and the store holds no actual at all
    assert_eq!(refused.status(), 400);
    let error: Value = refused.json().await.unwrap();
    assert_eq!(error["error"]["code"], "invalid_timestamp", "{error}");
    let message = error["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("series[0].timestamps[1]") && message.contains("future"),
        "{message}"
    );
    let listed = s3
        .list_objects_v2()
        .bucket("future-actuals")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.key_count(), Some(0), "{listed:?}");
    // AND an actual from within the last hour is still taken
    let now = lstm_forecast::time::format_rfc3339(chrono::Utc::now());
    let fresh = json!({"series": [{"id": "a", "timestamps": [now], "values": [1.0]}]});
    let taken = client
        .post(server.url("/v1/observations"))
        .json(&fresh)
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 202);
    server.stop().await;
}

#[tokio::test]
async fn a_history_scaled_by_a_million_is_scored_apart_and_never_bends_the_rollback_evidence() {
    // GIVEN a server logging forecasts, and the real ETTh1 history of one series
    let moto = Moto::shared();
    let s3 = moto.create_bucket("poisoned").await;
    let store = AccuracyStore::new(s3, "s3://poisoned/monitoring").unwrap();
    let log = Arc::new(ForecastLog::new(store.clone()));
    let (server, telemetry) = server_with(Vec::new(), Some(log.clone()), 0.0).await;
    let client = reqwest::Client::new();
    let rows = common::replay::etth1_ot();
    let origin = 12_000;
    let history: Vec<f64> = rows[origin - 168..origin].iter().map(|r| r.1).collect();
    let last = &rows[origin - 1].0;
    // WHEN a caller who may only forecast sends it honestly under one id, and scaled by 1e6
    // under another (a forged history; or an upstream feed that switched units)
    let scaled: Vec<f64> = history.iter().map(|v| v * 1e6).collect();
    let body = json!({"series": [
        {"id": "honest", "values": history, "last_timestamp": last},
        {"id": "forged", "values": scaled, "last_timestamp": last}]});
    common::post_json(&client, &server.url("/v1/forecast"), &body).await;
    log.flush().await;
    // ... and the real actuals of both arrive
    let actuals = &rows[origin..origin + 24];
    let series = |id: &str| {
        json!({"id": id, "timestamps": actuals.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
               "values": actuals.iter().map(|r| r.1).collect::<Vec<_>>()})
    };
    let stored = client
        .post(server.url("/v1/observations"))
        .json(&json!({"series": [series("honest"), series("forged")]}))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 202);
    let run = lstm_forecast::monitor::evaluate::run_evaluation(
        &store,
        &telemetry,
        chrono::Utc::now() + chrono::Duration::minutes(10),
        hourly_window(),
    )
    .await
    .unwrap();
    // THEN the version's scores (the accuracy metrics, the rollback's evidence) hold only the
    // honest forecast, and the forged one is reported apart with its nonsense
    let version = bundled_model().metadata().version.clone();
    let evaluation = &run.evaluation;
    assert_eq!(
        evaluation.by_version[&version].overall.count, 24,
        "{evaluation:?}"
    );
    assert!(evaluation.by_version[&version].overall.wape < 0.2);
    assert_eq!(evaluation.out_of_range[&version].overall.count, 24);
    assert!(evaluation.out_of_range[&version].overall.wape > 1e3);
    let latest = store.latest_scores().await.unwrap();
    assert_eq!(latest[&version].pairs, 24, "{latest:?}");
    assert!(latest[&version].wape < 0.2, "{latest:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_second_evaluation_at_the_same_time_changes_nothing_and_nothing_is_lost() {
    use common::history::{history_start, write_hours, Arrival};
    // GIVEN 20 hours of forecasts and actuals of 3 series, not yet evaluated
    let (store, _) = fresh_store("concurrent-evaluations").await;
    write_hours(&store, history_start(), 20, 3, Arrival::Now)
        .await
        .unwrap();
    // WHEN an evaluation holds the store (an operator's `evaluate`, still running) and the
    // scheduled one starts
    let now = chrono::Utc::now();
    let held = store
        .claim_evaluation(now, std::time::Duration::from_secs(600))
        .await
        .unwrap();
    let refused = evaluate_now(&store).await.unwrap_err();
    // THEN the second one stops with a clear error, before writing anything
    assert!(
        matches!(
            refused,
            lstm_forecast::monitor::store::StoreError::Busy { .. }
        ),
        "{refused}"
    );
    assert!(refused.to_string().contains("changed nothing"), "{refused}");
    assert_eq!(
        store.evaluation_state().await.unwrap(),
        Default::default(),
        "the watermark did not move"
    );
    // AND once the first ends, a run scores every pair once, and runs racing each other after
    // it score nothing twice
    store.release_evaluation(&held).await.unwrap();
    let first = evaluate_now(&store).await.unwrap().evaluation;
    let (reference, _) = fresh_store("concurrent-evaluations-reference").await;
    write_hours(&reference, history_start(), 20, 3, Arrival::Now)
        .await
        .unwrap();
    let alone = evaluate_now(&reference).await.unwrap().evaluation;
    assert_eq!(
        (first.pairs, first.missing_actuals),
        (alone.pairs, alone.missing_actuals),
        "the same as an evaluation that never met another"
    );
    assert!(first.pairs > 0);
    let (a, b) = tokio::join!(evaluate_now(&store), evaluate_now(&store));
    let rescored: usize = [a, b]
        .into_iter()
        .map(|run| match run {
            Ok(run) => run.evaluation.pairs,
            Err(lstm_forecast::monitor::store::StoreError::Busy { .. }) => 0,
            Err(e) => panic!("{e}"),
        })
        .sum();
    assert_eq!(rescored, 0);
    // AND a claim whose run died lapses: the next run takes it over
    let dead = store
        .claim_evaluation(chrono::Utc::now(), std::time::Duration::from_millis(1))
        .await
        .unwrap();
    assert!(dead.until < chrono::Utc::now());
    assert!(evaluate_now(&store).await.is_ok());
    // AND should two runs still meet (a claim that lapsed under a run slower than its hold),
    // a run number is committed once, and no state file goes back to an earlier run's
    let runs = store.evaluation_state().await.unwrap().runs;
    let taken = runs + 100; // far ahead: this store's own next runs never read it
    let journal = json!({"run": taken});
    store.commit_run(taken, &journal).await.unwrap();
    let second = store.commit_run(taken, &journal).await.unwrap_err();
    assert!(
        matches!(
            second,
            lstm_forecast::monitor::store::StoreError::RunTaken { .. }
        ),
        "{second}"
    );
    let state = store.evaluation_state().await.unwrap();
    let stale = lstm_forecast::monitor::store::EvaluationState {
        runs: runs - 1,
        ..Default::default()
    };
    let wrote = store
        .write_state_of_run("evaluation.json", &stale, runs - 1)
        .await
        .unwrap();
    assert!(!wrote, "an earlier run's state written over a later one's");
    assert_eq!(store.evaluation_state().await.unwrap(), state);
}

/// 8 hours of forecasts of 2 series by the live version "1" and its challenger "2" (in
/// live's shadow, one unit further off), and their actuals: every kind of state a run writes.
async fn seed_two_versions(store: &AccuracyStore) {
    use common::history::{forecast, history_start, write_hours, Arrival};
    write_hours(store, history_start(), 8, 2, Arrival::Now)
        .await
        .unwrap();
    let challenger: Vec<_> = (0..8)
        .flat_map(|h| (0..2).map(move |s| (s, h)))
        .map(|(s, h)| {
            let mut record = forecast(s, history_start() + chrono::Duration::hours(h));
            record.model_version = "2".into();
            record.role = lstm_forecast::monitor::store::ForecastRole::Challenger;
            record.values.iter_mut().for_each(|v| *v += 1.0);
            record
        })
        .collect();
    store.append_forecasts(&challenger).await.unwrap();
}

/// What the evaluations of a store have left in it, as a rollback, a promotion and a reader of
/// reports see it: every settled mark, the latest scores, the comparisons, the recalibrated
/// errors and the watermark's reach (times of writing left out), and the pairs that all reports
/// together scored and counted missing.
async fn durable_outcome(s3: &aws_sdk_s3::Client, bucket: &str) -> Value {
    let keys = common::emulators::list_keys(s3, bucket, "monitoring/").await;
    let mut settled = Vec::new();
    let (mut reported_pairs, mut reported_missing) = (0, 0);
    let mut state = serde_json::Map::new();
    for key in &keys {
        let body = common::emulators::read_text(s3, bucket, key).await;
        if key.contains("/settled/") {
            // A forecast's id ends with when it was logged, which differs from store to store.
            settled.extend(body.lines().map(|line| {
                let mut mark: Value = serde_json::from_str(line).unwrap();
                let id = mark["forecast"].as_str().unwrap();
                mark["forecast"] = id.rsplit_once('|').unwrap().0.into();
                mark.to_string()
            }));
        } else if key.ends_with("/report.json") {
            let report: Value = serde_json::from_str(&body).unwrap();
            reported_pairs += report["evaluation"]["pairs"].as_u64().unwrap();
            reported_missing += report["evaluation"]["missing_actuals"].as_u64().unwrap();
        } else if let Some(name) = key.strip_prefix("monitoring/state/") {
            // The journals are kept, one per committed run, and counted (a stopped run's next
            // one may commit a second, with nothing in it).
            if name != "evaluation.lease" && name != "runs.json" && !name.starts_with("runs/") {
                state.insert(
                    name.to_owned(),
                    without_times(serde_json::from_str(&body).unwrap()),
                );
            }
        }
    }
    settled.sort();
    let distinct = settled
        .iter()
        .collect::<std::collections::BTreeSet<_>>()
        .len();
    assert_eq!(distinct, settled.len(), "a pair settled twice");
    if let Some(watermark) = state.get_mut("evaluation.json") {
        watermark
            .as_object_mut()
            .unwrap()
            .retain(|k, _| k == "actuals_seen_until");
    }
    json!({"settled": settled, "reported_pairs": reported_pairs,
           "reported_missing": reported_missing, "state": state})
}

/// `value` without the times at which it was written (`*_at` fields).
fn without_times(value: Value) -> Value {
    match value {
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .filter(|(k, _)| !k.ends_with("_at"))
                .map(|(k, v)| (k, without_times(v)))
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(without_times).collect()),
        other => other,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_evaluation_stopped_after_any_of_its_writes_scores_no_pair_twice_and_loses_none() {
    use common::shards::FaultyS3;
    let moto = Moto::shared();
    let faulty = FaultyS3::in_front_of(&moto.endpoint).await;
    let through_proxy = common::emulators::s3_at(&faulty.endpoint);
    let evaluate_at = |store: AccuracyStore, now: chrono::DateTime<chrono::Utc>| async move {
        lstm_forecast::monitor::evaluate::run_evaluation(
            &store,
            &Telemetry::disabled(),
            now,
            hourly_window(),
        )
        .await
    };
    // GIVEN the outcome of an evaluation that nothing interrupted, and the writes it made
    let (reference, s3) = fresh_store("stopped-reference").await;
    seed_two_versions(&reference).await;
    faulty.heal();
    let proxied =
        AccuracyStore::new(through_proxy.clone(), "s3://stopped-reference/monitoring").unwrap();
    let alone = evaluate_at(proxied, chrono::Utc::now()).await.unwrap();
    let writes = faulty.forwarded_writes();
    let expected = durable_outcome(&s3, "stopped-reference").await;
    assert!(alone.evaluation.pairs > 0 && !alone.evaluation.compared.is_empty());
    assert!(
        expected["state"]["calibration.json"].is_object(),
        "{expected}"
    );
    assert!(writes > 20, "{writes} writes");
    for stop_after in 0..writes {
        // WHEN an evaluation of the same store stops after `stop_after` of its writes (a
        // timeout, an OOM kill, S3 refusing), and the next one runs once its claim has lapsed
        let bucket = format!("stopped-after-{stop_after}");
        let (store, s3) = fresh_store(&bucket).await;
        seed_two_versions(&store).await;
        let proxied =
            AccuracyStore::new(through_proxy.clone(), &format!("s3://{bucket}/monitoring"))
                .unwrap();
        faulty.stop_writing_after(stop_after);
        let now = chrono::Utc::now();
        let stopped = evaluate_at(proxied.clone(), now).await;
        // (The last write releases the claim, which a run only warns about when it fails.)
        assert_eq!(
            stopped.is_err(),
            stop_after < writes - 1,
            "stopping after write {stop_after} of {writes}"
        );
        faulty.heal();
        let lapsed =
            now + chrono::Duration::from_std(lstm_forecast::monitor::store::LEASE_HOLD).unwrap();
        evaluate_at(proxied, lapsed + chrono::Duration::minutes(1))
            .await
            .unwrap_or_else(|e| panic!("the run after one stopped after write {stop_after}: {e}"));
        // THEN the store holds what the uninterrupted evaluation left: each pair settled once,
        // scored once across the reports, and the same scores, comparisons and calibration
        let outcome = durable_outcome(&s3, &bucket).await;
        for part in ["reported_pairs", "reported_missing", "settled", "state"] {
            assert!(
                outcome[part] == expected[part],
                "stopped after write {stop_after} of {writes}, {part}: {} instead of {}",
                outcome[part],
                expected[part]
            );
        }
    }
}

#[tokio::test]
async fn a_forecast_logged_after_its_actuals_were_read_is_scored_once_and_counted_late() {
    use common::history::{actuals, forecast, history_start};
    let (store, _) = fresh_store("late-forecasts").await;
    let origin = history_start();
    let hour = |h: i64| origin + chrono::Duration::hours(h);
    // GIVEN series s0 and s1 forecast from hour 0; s0's forecast reaches the log in time, s1's
    // is held up (a flush delayed by an S3 outage, a Firehose retry)
    store
        .append_forecasts(&[forecast(0, origin)])
        .await
        .unwrap();
    // WHEN the first 12 hours of actuals of both arrive and are evaluated
    for h in 1..=12 {
        store.append_actuals(&actuals(2, hour(h))).await.unwrap();
    }
    let first = evaluate_now(&store).await.unwrap().evaluation;
    assert_eq!((first.pairs, first.late_forecasts), (12, 0));
    // AND two hours later s1's forecast is flushed, and the next 12 hours' actuals arrive
    let held_up = forecast(1, origin);
    store
        .append_forecasts(std::slice::from_ref(&held_up))
        .await
        .unwrap();
    for h in 13..=24 {
        store.append_actuals(&actuals(2, hour(h))).await.unwrap();
    }
    let second = evaluate_now(&store).await.unwrap().evaluation;
    // THEN s1's forecast is scored on all 24 targets (12 from actuals an earlier run read), none
    // counted missing, and it is counted late; s0's scores its last 12
    assert_eq!(second.missing_actuals, 0, "{second:?}");
    assert_eq!(second.pairs, 24 + 12);
    assert_eq!(second.late_forecasts, 1);
    // AND nothing is scored twice afterwards, even when the late forecast is flushed again
    store.append_forecasts(&[held_up]).await.unwrap();
    let third = evaluate_now(&store).await.unwrap().evaluation;
    assert_eq!((third.pairs, third.late_forecasts), (0, 0));
    // AND a forecast that arrives with no new actuals at all (another request's forecast of s0
    // from hour 0, delivered a day late) is found by its write time and scored on its own
    store
        .append_forecasts(&[forecast(0, origin)])
        .await
        .unwrap();
    let fourth = evaluate_now(&store).await.unwrap().evaluation;
    assert_eq!(
        (fourth.actuals_read, fourth.pairs, fourth.late_forecasts),
        (0, 24, 1)
    );
}
