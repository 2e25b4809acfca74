//! The service reproduces PyTorch's own forecasts of the bundled model on real ETTh1 test windows.
//!
//! `model_artifacts/train/train.py` wrote the fixture by running the exported model.pt in PyTorch
//! on 32 test windows, with preprocessing and its inverse in numpy; any drift in our preprocessing,
//! tensor layout or restore shows up here.

use crate::common;

use common::{bundled_model, bundled_model_on_libtorch, repo_path, TestServer};
use lstm_forecast::model::contract::sha256_hex;
use lstm_forecast::model::ForwardEngine;
use lstm_forecast::source::BUNDLED_MODEL_PT;
use serde_json::Value;

/// Relative tolerance the issue asks for.
const TOLERANCE: f64 = 1e-5;

fn fixture() -> Value {
    let text =
        std::fs::read_to_string(repo_path("tests/fixtures/parity-etth1-ot-lstm.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn assert_close(case: &str, got: &[f64], expected: &[Value]) {
    assert_eq!(got.len(), expected.len(), "{case}: horizon");
    for (step, (g, e)) in got.iter().zip(expected).enumerate() {
        let e = e.as_f64().unwrap();
        let relative = (g - e).abs() / e.abs().max(1e-3);
        assert!(
            relative <= TOLERANCE,
            "{case} step {step}: service {g} vs PyTorch {e} (relative {relative:.2e})"
        );
    }
}

#[test]
fn the_fixture_was_made_with_the_bundled_model() {
    let fixture = fixture();
    assert_eq!(
        fixture["model"]["model_sha256"],
        sha256_hex(BUNDLED_MODEL_PT)
    );
    assert_eq!(fixture["cases"].as_array().unwrap().len(), 32);
}

#[test]
fn in_process_forecasts_match_pytorch_for_32_test_windows_in_one_batch_on_either_engine() {
    let fixture = fixture();
    let cases = fixture["cases"].as_array().unwrap();
    let windows: Vec<Vec<f64>> = cases.iter().map(|c| common::f64s(&c["values"])).collect();
    for model in [bundled_model(), bundled_model_on_libtorch()] {
        let forecasts = model.forecast(&windows).unwrap();
        for (case, forecast) in cases.iter().zip(&forecasts) {
            assert_close(
                &format!(
                    "{} on {}",
                    case["id"].as_str().unwrap(),
                    model.forward_engine().as_str()
                ),
                forecast,
                case["forecast"].as_array().unwrap(),
            );
        }
    }
}

#[test]
fn in_process_forecasts_of_one_window_each_match_pytorch_on_onnx_runtime() {
    let model = bundled_model();
    assert_eq!(model.forward_engine(), ForwardEngine::OnnxRuntime);
    let fixture = fixture();
    for case in fixture["cases"].as_array().unwrap() {
        let window = common::f64s(&case["values"]);
        let forecast = model.forecast(&[window]).unwrap();
        assert_close(
            case["id"].as_str().unwrap(),
            &forecast[0],
            case["forecast"].as_array().unwrap(),
        );
    }
}

#[tokio::test]
async fn http_forecasts_match_pytorch_with_timestamps_after_the_window() {
    let server = TestServer::bundled().await;
    let fixture = fixture();
    let cases = fixture["cases"].as_array().unwrap();
    let series: Vec<Value> = cases
        .iter()
        .map(|c| serde_json::json!({"id": c["id"], "values": c["values"], "last_timestamp": format!("{}Z", c["last_timestamp"].as_str().unwrap().replace(' ', "T"))}))
        .collect();
    let answer: Value = common::post_json(
        &reqwest::Client::new(),
        &server.url("/v1/forecast"),
        &serde_json::json!({"series": series}),
    )
    .await;
    for (case, forecast) in cases.iter().zip(answer["forecasts"].as_array().unwrap()) {
        assert_eq!(forecast["id"], case["id"]);
        let values = common::f64s(&forecast["values"]);
        assert_close(
            case["id"].as_str().unwrap(),
            &values,
            case["forecast"].as_array().unwrap(),
        );
    }
    server.stop().await;
}
