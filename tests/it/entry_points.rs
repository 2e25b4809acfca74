//! Every entry point is the same service: the same forecast, sent through HTTP, a Lambda API
//! Gateway event, a Lambda scheduled batch and the command line, records the same metrics.
//!
//! The series are the model's own training windows, so their drift scores are known to be real
//! numbers, and each entry point must report the same score for each window.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::emulators::{event, Moto};
use common::{bundled_model, Collected};
use lstm_forecast::infer::InferenceHandle;
use lstm_forecast::lambda::{LambdaApp, LambdaConfig};
use lstm_forecast::metrics::{Metric, ServerMetrics, Telemetry};
use lstm_forecast::service::batch::BatchConfig;
use lstm_forecast::service::build::{MetricsConfig, ModelLocation, ServiceConfig};
use lstm_forecast::service::jobs::EvaluationConfig;
use lstm_forecast::service::rollback::RollbackPolicy;
use lstm_forecast::service::{Limits, Monitoring, Service};
use lstm_forecast::source::ModelUri;
use serde_json::{json, Value};

const SERIES: usize = 12;
const BUCKET: &str = "entry-points";

/// What one entry point recorded for the forecast.
#[derive(Debug)]
struct Recorded {
    forecasts: f64,
    inference_latency_samples: usize,
    drift: Vec<f64>,
    out_of_range: Vec<f64>,
}

impl Recorded {
    fn from_samples(sink: &Collected) -> Self {
        Recorded {
            forecasts: sink.values(Metric::Forecasts).iter().sum(),
            inference_latency_samples: sink.values(Metric::InferenceLatency).len(),
            drift: sorted(sink.values(Metric::InputDrift)),
            out_of_range: sorted(sink.values(Metric::OutOfRangeFraction)),
        }
    }

    fn from_emf(log: &str) -> Self {
        let emf = common::emf_values(log);
        let values = |name: &str| emf.get(name).cloned().unwrap_or_default();
        Recorded {
            forecasts: values("Forecasts").iter().sum(),
            inference_latency_samples: values("InferenceLatency").len(),
            drift: sorted(values("InputDrift")),
            out_of_range: sorted(values("OutOfRangeFraction")),
        }
    }

    /// Same forecasts, at least one timed forward, and the same drift per window (EMF keeps four
    /// significant digits, hence the tolerance).
    fn assert_same_as(&self, reference: &Recorded, entry_point: &str) {
        assert_eq!(
            self.forecasts, reference.forecasts,
            "{entry_point}: {self:?}"
        );
        assert!(
            self.inference_latency_samples >= 1,
            "{entry_point}: {self:?}"
        );
        for (name, got, want) in [
            ("InputDrift", &self.drift, &reference.drift),
            (
                "OutOfRangeFraction",
                &self.out_of_range,
                &reference.out_of_range,
            ),
        ] {
            assert_eq!(got.len(), want.len(), "{entry_point} {name}: {got:?}");
            for (g, w) in got.iter().zip(want) {
                assert!(
                    (g - w).abs() <= 1e-3 * w.abs().max(1e-3),
                    "{entry_point} {name}: {got:?} vs {want:?}"
                );
            }
        }
    }
}

fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

fn windows() -> Vec<(String, String, Vec<f64>)> {
    common::etth1_training_windows(SERIES, 168, 500)
}

fn request_body() -> Value {
    json!({"series": windows().into_iter().map(|(id, last, values)| {
        json!({"id": id, "last_timestamp": last, "values": values})
    }).collect::<Vec<_>>()})
}

/// Monitoring whose only push sink keeps every sample.
fn collecting_monitoring() -> (Monitoring, Arc<Collected>) {
    let sink = Arc::new(Collected::default());
    let telemetry = Telemetry::new(vec![sink.clone()], "etth1-ot-lstm", "", None);
    let monitoring = Monitoring {
        telemetry,
        ..Monitoring::default()
    };
    (monitoring, sink)
}

fn collecting_service() -> (Service, Arc<Collected>) {
    let (monitoring, sink) = collecting_monitoring();
    let (handle, _engine) = InferenceHandle::spawn(bundled_model(), 64);
    let service = Service::new(handle, ServerMetrics::new(), Limits::default(), monitoring);
    (service, sink)
}

fn lambda_app(service: Service, s3: aws_sdk_s3::Client) -> LambdaApp {
    let metrics = MetricsConfig {
        sinks: Vec::new(),
        namespace: "EntryPoints".into(),
        stage: None,
        emf_to_stderr: false,
    };
    let config = LambdaConfig {
        model: ModelLocation {
            uri: ModelUri::Bundled,
            cache_dir: std::env::temp_dir(),
        },
        aws_endpoint_url: None,
        threads: Some(1),
        service: ServiceConfig::one_at_a_time(metrics),
        batch: BatchConfig {
            input_prefix: Some(format!("s3://{BUCKET}/")),
            output_prefix: Some(format!("s3://{BUCKET}/")),
            part_bytes: 8 << 20,
        },
        evaluation: EvaluationConfig {
            grace: Duration::from_secs(3600),
            recalibration: Default::default(),
            challenge: Default::default(),
        },
        rollback: RollbackPolicy {
            alarms: Vec::new(),
            wape_threshold: 0.1,
            min_pairs: 240,
            cooldown: Duration::from_secs(0),
            comparison: Default::default(),
        },
        alias_check_interval: Duration::from_secs(60),
    };
    LambdaApp::new(
        service,
        None,
        lstm_forecast::aws::AwsClients::offline().with_s3(s3),
        config,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_lambda_events_the_scheduled_batch_and_the_cli_record_the_same_forecast_metrics() {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;

    // GIVEN the same 12 training windows, WHEN they are forecast over HTTP ...
    let (monitoring, over_http) = collecting_monitoring();
    let server = common::TestServer::start_with(
        bundled_model(),
        Limits::default(),
        64,
        ServerMetrics::new(),
        monitoring,
    )
    .await;
    let answer = common::post_json(
        &reqwest::Client::new(),
        &server.url("/v1/forecast"),
        &request_body(),
    )
    .await;
    assert_eq!(answer["forecasts"].as_array().unwrap().len(), SERIES);
    let reference = Recorded::from_samples(&over_http);
    assert_eq!(reference.forecasts, SERIES as f64, "{reference:?}");
    assert_eq!(reference.drift.len(), SERIES, "{reference:?}");

    // ... as an API Gateway event to the Lambda function ...
    let (service, over_api_gateway) = collecting_service();
    let app = lambda_app(service, s3.clone());
    let mut api_event = event("apigw-v2-forecast.json");
    api_event["body"] = request_body().to_string().into();
    let response = app
        .handle(lambda_runtime::LambdaEvent::new(
            api_event,
            lambda_runtime::Context::default(),
        ))
        .await
        .unwrap();
    assert_eq!(response["statusCode"], 200, "{response}");
    Recorded::from_samples(&over_api_gateway).assert_same_as(&reference, "API Gateway event");

    // ... as the scheduled batch job ...
    s3.put_object()
        .bucket(BUCKET)
        .key("in.csv")
        .body(ByteStream::from(
            common::windows_csv(&windows()).into_bytes(),
        ))
        .send()
        .await
        .unwrap();
    let (service, in_batch) = collecting_service();
    let app = lambda_app(service, s3.clone());
    let response = app
        .handle(lambda_runtime::LambdaEvent::new(
            json!({"action": "batch-forecast", "input": format!("s3://{BUCKET}/in.csv"),
                   "output": format!("s3://{BUCKET}/out.jsonl")}),
            lambda_runtime::Context::default(),
        ))
        .await
        .unwrap();
    assert_eq!(response["series"], SERIES, "{response}");
    Recorded::from_samples(&in_batch).assert_same_as(&reference, "scheduled batch");

    // ... and with the command line (its EMF goes to stderr, since stdout is the answer)
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.csv");
    std::fs::write(&input, common::windows_csv(&windows())).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
        .args([
            "forecast",
            "--input",
            input.to_str().unwrap(),
            "--metrics-sinks",
            "emf",
        ])
        .env("THREADS", "1")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(answer["forecasts"].as_array().unwrap().len(), SERIES);
    // THEN every entry point recorded what HTTP did
    Recorded::from_emf(&stderr).assert_same_as(&reference, "command line");
    server.stop().await;
}
