//! The API's OpenAPI 3.1 document: derived from the handlers and their types, committed as
//! docs/openapi.json, valid, served at `GET /openapi.json`, and held to by Schemathesis against
//! the live server: every operation of it, and the Open Inference Protocol routes again against
//! the protocol's own document.

use crate::common;

use common::emulators::{tools_bin, Moto};
use common::{bundled_model, repo_path};

const COMMITTED: &str = "docs/openapi.json";

#[test]
fn the_committed_document_is_the_one_the_code_derives() {
    let committed = std::fs::read_to_string(repo_path(COMMITTED)).unwrap();
    assert!(
        committed == lstm_forecast::http::openapi_document(),
        "{COMMITTED} is stale: regenerate it with `make openapi`"
    );
}

#[test]
fn the_document_is_valid_openapi() {
    let (ok, printed) = common::outcome(
        std::process::Command::new(tools_bin("openapi-spec-validator")).arg(repo_path(COMMITTED)),
    );
    assert!(ok, "{printed}");
    let document: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(repo_path(COMMITTED)).unwrap()).unwrap();
    assert_eq!(document["openapi"], "3.1.0");
}

/// Runs Schemathesis on `document` against `base`; returns whether it passed and what it printed.
fn schemathesis(document: &std::path::Path, base: &str, env: &[(&str, String)]) -> (bool, String) {
    let workdir = tempfile::tempdir().unwrap();
    common::outcome(
        std::process::Command::new(tools_bin("schemathesis"))
        .arg("--config-file")
        .arg(repo_path("tests/support/schemathesis.toml"))
        .arg("run")
        .arg(document)
        .args(["--url", base, "--seed", "1", "--max-examples", "25", "--workers", "1"])
        .args([
            "--checks",
            "not_a_server_error,status_code_conformance,content_type_conformance,response_schema_conformance",
        ])
        .args(["--no-color", "--report-dir"])
        .arg(workdir.path())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .current_dir(workdir.path()),
    )
}

/// A line on the terminal even when the test passes: written to stderr directly, past the test
/// harness's capture of `eprintln!`.
fn report(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// "Tested: N" and "N generated" from Schemathesis's summary.
fn operations_and_cases(summary: &str) -> (usize, usize) {
    let number_after = |marker: &str| {
        summary
            .lines()
            .find_map(|l| l.trim().strip_prefix(marker))
            .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    let cases = summary
        .lines()
        .find_map(|l| {
            let mut words = l.split_whitespace();
            let count = words.next()?.parse().ok()?;
            words.next()?.starts_with("generated").then_some(count)
        })
        .unwrap_or(0);
    (number_after("Tested:"), cases)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_server_error_and_no_answer_outside_either_document() {
    // GIVEN `serve` with a forecast log and an observations token, and its document from the
    // server itself
    let moto = Moto::shared();
    moto.create_bucket("schemathesis").await;
    let mut env = moto.env();
    env.push(("FORECAST_LOG_URI", "s3://schemathesis/monitoring".into()));
    env.push(("OBSERVATIONS_TOKEN", "schemathesis-token".into()));
    let server = common::ServeProcess::start(&[], &env).await;
    let served = reqwest::get(server.url("/openapi.json"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(served, lstm_forecast::http::openapi_document());
    let metadata = bundled_model().metadata().clone();
    let tool_env = [
        ("OBSERVATIONS_TOKEN", "schemathesis-token".to_owned()),
        ("OIP_MODEL_NAME", metadata.name.clone()),
        ("OIP_MODEL_VERSION", metadata.version.clone()),
    ];
    let base = server.url("");
    // WHEN Schemathesis runs every operation of our document (seed 1, 25 examples each) ...
    let ours = repo_path(COMMITTED);
    let (ok, summary) = tokio::task::block_in_place(|| schemathesis(&ours, &base, &tool_env));
    let (operations, cases) = operations_and_cases(&summary);
    report(&format!(
        "schemathesis, docs/openapi.json: {operations} operations, {cases} test cases"
    ));
    // THEN it finds no failure
    assert!(ok, "{summary}\n{}", server.log());
    assert_eq!(operations, 16, "{summary}");
    assert!(cases >= 300, "{summary}");
    // AND the same for the protocol's own document (kserve/kserve's rest_predict_v2.yaml), whose
    // paths write their parameters as `${MODEL_NAME}`: OpenAPI's template is the `{...}` inside,
    // so the `$` is dropped before the run
    let protocol = std::fs::read_to_string(repo_path("tests/fixtures/kserve/rest_predict_v2.yaml"))
        .unwrap()
        .replace("${MODEL_NAME}", "{MODEL_NAME}")
        .replace("${MODEL_VERSION}", "{MODEL_VERSION}");
    let copy = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    std::fs::write(copy.path(), protocol).unwrap();
    let (ok, summary) = tokio::task::block_in_place(|| schemathesis(copy.path(), &base, &tool_env));
    let (operations, cases) = operations_and_cases(&summary);
    report(&format!(
        "schemathesis, rest_predict_v2.yaml: {operations} operations, {cases} test cases"
    ));
    assert!(ok, "{summary}\n{}", server.log());
    assert_eq!(operations, 6, "{summary}");
    assert!(cases >= 50, "{summary}");
}
