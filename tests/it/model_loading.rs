//! Loading refuses every broken model with an error that names the problem, and never panics.

use crate::common;

use common::bundled_artifacts;
use lstm_forecast::model::contract::sha256_hex;
use lstm_forecast::model::{ForwardEngine, Model, ModelArtifacts};
use serde_json::Value;

/// The bundled artifacts with `model.json` edited by `edit`.
fn with_metadata(edit: impl FnOnce(&mut Value)) -> ModelArtifacts {
    let mut artifacts = bundled_artifacts();
    let mut metadata: Value = serde_json::from_slice(&artifacts.metadata_json).unwrap();
    edit(&mut metadata);
    artifacts.metadata_json = serde_json::to_vec(&metadata).unwrap();
    artifacts
}

fn load_error(artifacts: &ModelArtifacts) -> String {
    match Model::load(artifacts) {
        Ok(_) => panic!("the model should have been refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn the_bundled_model_loads_and_declares_its_shape() {
    let model = common::bundled_model();
    assert_eq!(model.metadata().input.window, 168);
    assert_eq!(model.metadata().output.horizon, 24);
}

#[test]
fn a_corrupt_model_pt_is_refused_by_libtorch_not_crashed_on() {
    let mut artifacts = bundled_artifacts();
    artifacts.model_pt = b"this is not a TorchScript archive".to_vec();
    let digest = sha256_hex(&artifacts.model_pt);
    let artifacts = ModelArtifacts {
        metadata_json: with_metadata(|m| m["model_sha256"] = digest.into()).metadata_json,
        ..artifacts
    };
    let error = load_error(&artifacts);
    assert!(
        error.contains("libtorch could not load model.pt"),
        "{error}"
    );
}

#[test]
fn a_truncated_model_pt_is_refused() {
    let mut artifacts = bundled_artifacts();
    artifacts.model_pt.truncate(artifacts.model_pt.len() / 2);
    let digest = sha256_hex(&artifacts.model_pt);
    let artifacts = ModelArtifacts {
        metadata_json: with_metadata(|m| m["model_sha256"] = digest.into()).metadata_json,
        ..artifacts
    };
    assert!(load_error(&artifacts).contains("model.pt"));
}

#[test]
fn the_bundled_model_answers_on_onnx_runtime() {
    assert_eq!(
        common::bundled_model().forward_engine(),
        ForwardEngine::OnnxRuntime
    );
}

#[test]
fn a_model_without_model_onnx_answers_everything_on_libtorch() {
    let model = common::bundled_model_on_libtorch();
    assert_eq!(model.forward_engine(), ForwardEngine::Libtorch);
    assert_eq!(model.forecast(&[common::window(0.0)]).unwrap()[0].len(), 24);
}

#[test]
fn a_tampered_model_onnx_is_refused_by_its_checksum() {
    let mut artifacts = bundled_artifacts();
    artifacts.model_onnx.as_mut().unwrap()[100] ^= 0xff;
    let error = load_error(&artifacts);
    assert!(error.contains("model.onnx sha256"), "{error}");
}

#[test]
fn model_onnx_bytes_that_model_json_does_not_vouch_for_are_refused() {
    let error = load_error(&with_metadata(|m| {
        m.as_object_mut().unwrap().remove("onnx_sha256");
    }));
    assert!(
        error.contains("model.onnx sha256") && error.contains("declares nothing"),
        "{error}"
    );
}

#[test]
fn a_declared_model_onnx_that_is_missing_is_refused() {
    let artifacts = ModelArtifacts {
        model_onnx: None,
        ..bundled_artifacts()
    };
    assert!(load_error(&artifacts).contains("model.onnx is missing"));
}

/// A checksum proves which file was published, not that model.onnx is the export of this
/// model.pt: a stale export beside a retrained network (here, another LSTM of the same shapes)
/// must be refused, not serve forecasts with the old weights.
#[test]
fn a_model_onnx_exported_from_another_network_is_refused() {
    let other_network = std::fs::read(common::repo_path(
        "tests/fixtures/broken-traced-lstm/model.pt",
    ))
    .unwrap();
    let digest = sha256_hex(&other_network);
    let artifacts = ModelArtifacts {
        metadata_json: with_metadata(|m| m["model_sha256"] = digest.into()).metadata_json,
        model_pt: other_network,
        ..bundled_artifacts()
    };
    let error = load_error(&artifacts);
    assert!(
        error.contains("model.onnx and model.pt disagree"),
        "{error}"
    );
}

#[test]
fn a_checksum_mismatch_is_refused_before_libtorch_runs() {
    let mut artifacts = bundled_artifacts();
    artifacts.model_pt[100] ^= 0xff;
    let error = load_error(&artifacts);
    assert!(error.contains("sha256"), "{error}");
}

#[test]
fn a_horizon_that_disagrees_with_the_network_is_refused_at_warm_up() {
    // (Without the calibration, whose 24 radii per level the contract would refuse first.)
    let error = load_error(&with_metadata(|m| {
        m["output"]["horizon"] = 12.into();
        m.as_object_mut().unwrap().remove("calibration");
    }));
    assert!(
        error.contains("[1, 24]") || error.contains("expected [1, 12]"),
        "{error}"
    );
}

#[test]
fn a_window_that_disagrees_with_the_network_is_refused_at_warm_up() {
    let error = load_error(&with_metadata(|m| m["input"]["window"] = 100.into()));
    assert!(error.contains("warm-up forecast failed"), "{error}");
}

#[test]
fn a_feature_count_that_disagrees_with_the_network_is_refused_at_warm_up() {
    let error = load_error(&with_metadata(|m| {
        m["input"]["features"] = serde_json::json!(["OT", "HUFL"]);
        m["preprocessing"][0]["mean"] = serde_json::json!([1.0, 1.0]);
        m["preprocessing"][0]["std"] = serde_json::json!([1.0, 1.0]);
        m["training_stats"]["HUFL"] = m["training_stats"]["OT"].clone();
    }));
    assert!(error.contains("warm-up forecast failed"), "{error}");
}

#[test]
fn a_model_from_another_torch_release_is_refused() {
    let error = load_error(&with_metadata(|m| m["torch_version"] = "1.13.1".into()));
    assert!(error.contains("torch_version 1.13.1"), "{error}");
}

#[test]
fn contract_errors_name_the_field() {
    let error = load_error(&with_metadata(|m| {
        m["input"]["frequency"] = "hourly".into()
    }));
    assert!(error.contains("input.frequency"), "{error}");
}
