//! The `lstm-forecast` binary, run as a user would.

use crate::common;

use std::process::Command;

use common::repo_path;
use lstm_forecast::model::contract::sha256_hex;
use serde_json::Value;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
}

fn run(args: &[&str]) -> (bool, String, String) {
    let output = bin().args(args).env("THREADS", "1").output().unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn validate_accepts_the_bundled_model_at_every_probe_batch_size() {
    let dir = repo_path("model_artifacts/etth1-ot-lstm");
    let (ok, stdout, _) = run(&["model", "validate", dir.to_str().unwrap()]);
    assert!(ok, "{stdout}");
    for check in [
        "contract",
        "checksum",
        "load",
        "batch 1",
        "batch 2",
        "batch 64",
        "batch 256",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.contains("ok") && l.contains(check)),
            "{check} missing:\n{stdout}"
        );
    }
    assert!(stdout.trim_end().ends_with("valid"));
}

#[test]
fn validate_reports_a_model_that_crashes_libtorch_without_crashing_itself() {
    // GIVEN an LSTM traced with a fixed batch of 1: for any larger batch libtorch reads past its
    // state, and whether that crashes at 2 series or only at 64 depends on what lies there
    // (with jemalloc, usually 64)
    let dir = repo_path("tests/fixtures/broken-traced-lstm");
    // WHEN it is validated
    let output = bin()
        .args(["model", "validate", "--json", dir.to_str().unwrap()])
        .env("THREADS", "1")
        .output()
        .unwrap();
    // THEN the command itself exits normally with status 1 and a report naming the crash
    assert_eq!(output.status.code(), Some(1), "validate must exit, not die");
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["valid"], false);
    let failed = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["ok"] == false)
        .unwrap();
    let detail = failed["detail"].as_str().unwrap();
    let at_a_batch_above_one = ["batch 2", "batch 64"]
        .iter()
        .any(|batch| failed["name"] == *batch || detail.contains(&format!("during `{batch}`")));
    assert!(at_a_batch_above_one, "{failed}");
    // (in ~29 runs of 30 a SIGSEGV, otherwise garbage that the batch checks catch)
    assert!(
        detail.contains("crashed with SIG")
            || detail.contains("non-finite")
            || detail.contains("differs inside the batch"),
        "{detail}"
    );
    // AND batch 1 (what a warm-up alone would try) passed, which is why the probe is needed
    assert!(report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["name"] == "batch 1" && c["ok"] == true));
}

#[test]
fn validate_rejects_a_corrupt_model_pt_and_a_bad_checksum() {
    let dir = tempfile::tempdir().unwrap();
    let bundled = repo_path("model_artifacts/etth1-ot-lstm");
    let garbage = b"PK\x03\x04 not really a zip".to_vec();
    let mut metadata: Value =
        serde_json::from_slice(&std::fs::read(bundled.join("model.json")).unwrap()).unwrap();
    metadata["model_sha256"] = sha256_hex(&garbage).into();
    std::fs::write(dir.path().join("model.pt"), &garbage).unwrap();
    std::fs::copy(bundled.join("model.onnx"), dir.path().join("model.onnx")).unwrap();
    std::fs::write(
        dir.path().join("model.json"),
        serde_json::to_vec(&metadata).unwrap(),
    )
    .unwrap();
    let (ok, stdout, _) = run(&["model", "validate", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stdout.contains("FAIL load") && stdout.contains("libtorch could not load model.pt"),
        "{stdout}"
    );

    std::fs::copy(bundled.join("model.pt"), dir.path().join("model.pt")).unwrap();
    let (ok, stdout, _) = run(&["model", "validate", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(stdout.contains("FAIL checksum"), "{stdout}");
}

#[test]
fn validate_names_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, stdout, _) = run(&["model", "validate", dir.path().to_str().unwrap()]);
    assert!(!ok);
    assert!(stdout.contains("model.json"), "{stdout}");
}

#[test]
fn forecast_reads_the_etth1_csv_and_forecasts_the_24_hours_after_it() {
    let csv = repo_path("model_artifacts/data/ETTh1.csv");
    let (ok, stdout, stderr) = run(&["forecast", "--input", csv.to_str().unwrap()]);
    assert!(ok, "{stderr}");
    let answer: Value = serde_json::from_str(&stdout).unwrap();
    let forecast = &answer["forecasts"][0];
    assert_eq!(forecast["values"].as_array().unwrap().len(), 24);
    // The file ends at 2018-06-26 19:00.
    assert_eq!(forecast["timestamps"][0], "2018-06-26T20:00:00Z");
    assert!(
        stderr.contains("model loaded"),
        "logs should say what was loaded: {stderr}"
    );
}

#[test]
fn without_onnx_runtime_forwards_run_on_libtorch_with_a_warning_and_the_same_forecast() {
    let csv = repo_path("model_artifacts/data/ETTh1.csv");
    let forecast = |library: Option<&str>| {
        let mut command = bin();
        command
            .args(["forecast", "--input", csv.to_str().unwrap()])
            .env("THREADS", "1");
        if let Some(library) = library {
            command.env("ORT_DYLIB_PATH", library);
        }
        let output = command.output().unwrap();
        let log = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{log}");
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
        (common::f64s(&answer["forecasts"][0]["values"]), log)
    };
    let (on_onnx_runtime, log) = forecast(None);
    assert!(!log.contains("ONNX Runtime cannot be opened"), "{log}");
    let (on_libtorch, log) = forecast(Some("/nonexistent/libonnxruntime.so"));
    assert!(
        log.contains("ONNX Runtime cannot be opened")
            && log.contains("/nonexistent/libonnxruntime.so")
            && log.contains("forwards run on libtorch"),
        "{log}"
    );
    for (onnx, torch) in on_onnx_runtime.iter().zip(&on_libtorch) {
        assert!((onnx - torch).abs() < 1e-3, "{onnx} vs {torch}");
    }
}

#[test]
fn forecast_explains_a_bad_input_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("short.csv");
    std::fs::write(&path, "date,OT\n2018-01-01 00:00:00,3.5\n").unwrap();
    let (ok, _, stderr) = run(&["forecast", "--input", path.to_str().unwrap()]);
    assert!(!ok);
    assert!(
        stderr.contains("has 1 rows; the model needs at least 168"),
        "{stderr}"
    );
}

#[test]
fn a_bad_model_uri_is_an_error_that_names_it() {
    let (ok, _, stderr) = run(&["model", "show", "--model", "/nonexistent/model"]);
    assert!(!ok);
    assert!(stderr.contains("/nonexistent/model/model.json"), "{stderr}");
}

#[test]
fn help_explains_the_commands_and_endpoints() {
    let (ok, stdout, _) = run(&["serve", "--help"]);
    assert!(ok);
    for needle in [
        "POST /v1/forecast",
        "SIGTERM",
        "--bind",
        "MODEL_URI",
        "--max-queue",
    ] {
        assert!(
            stdout.contains(needle),
            "serve --help lacks {needle}:\n{stdout}"
        );
    }
}

#[tokio::test]
async fn serve_answers_then_exits_cleanly_on_sigterm() {
    let server = common::ServeProcess::start(&[], &[]).await;
    let response = reqwest::Client::new()
        .post(server.url("/v1/forecast"))
        .json(&common::forecast_body(&[common::window(0.0)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    server.terminate();
    let (exited_zero, log) = server.wait(std::time::Duration::from_secs(30)).await;
    assert!(exited_zero, "{log}");
    assert!(log.contains("shutdown signal received"), "{log}");
    assert!(log.contains("stopped"), "{log}");
    assert!(
        log.contains("model_version"),
        "logs carry the model version: {log}"
    );
}

#[tokio::test]
async fn batch_runs_the_scheduled_batch_job_from_the_command_line() {
    use common::emulators::{cli, Moto};
    use common::shards::{csv_shard, forecast_ids, put, text, BUCKET};
    // GIVEN three series in a CSV object on S3
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    put(&s3, "in/series.csv", csv_shard("cli", 3)).await;
    let input = format!("s3://{BUCKET}/in/series.csv");
    let output = format!("s3://{BUCKET}/out/forecasts.jsonl");
    // WHEN `lstm-forecast batch` forecasts them into another object
    let (ok, log) = cli(&moto, &["batch", "--input", &input, "--output", &output]);
    // THEN the answer is the job's summary, and the object holds one forecast per series
    assert!(ok, "{log}");
    assert!(log.contains("\"action\": \"batch-forecast\""), "{log}");
    assert!(log.contains("\"series\": 3"), "{log}");
    let written = text(&s3, "out/forecasts.jsonl").await.expect("the output");
    assert_eq!(forecast_ids(&written).len(), 3, "{written}");
    // AND an input that is not an s3:// URI is refused by name, and nothing is written
    let (ok, log) = cli(
        &moto,
        &["batch", "--input", "/etc/passwd", "--output", &output],
    );
    assert!(!ok, "{log}");
    assert!(log.contains("/etc/passwd"), "{log}");
}

#[test]
fn named_bootstrap_the_binary_is_the_lambda_entry_without_arguments_and_a_command_with_them() {
    // GIVEN the binary under Lambda's entry name (the probe a follower starts in Lambda is this
    // same file, `bootstrap model probe DIR`)
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap");
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_lstm-forecast"), &bootstrap).unwrap();
    // WHEN it is given a command, THEN it runs that command
    let model = repo_path("model_artifacts/etth1-ot-lstm");
    let output = Command::new(&bootstrap)
        .args(["model", "validate", model.to_str().unwrap()])
        .env("THREADS", "1")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.trim_end().ends_with("valid"), "{stdout}");
    // AND without arguments, outside Lambda, it is the Lambda entry failing cleanly
    let output = Command::new(&bootstrap).output().unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("AWS_LAMBDA_RUNTIME_API"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}
