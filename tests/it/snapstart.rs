//! SnapStart: the real function under a Runtime API test double that implements
//! `/runtime/restore/next` (tests/common/runtime_api.rs), with `AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`.
//! The model comes from the S3 registry on moto, credentials from the double's container
//! credentials endpoint, as Lambda gives them to a SnapStart environment.

use crate::common;

use std::time::Duration;

use common::emulators::{event, Function, Moto};
use common::runtime_api::RuntimeApiDouble;
use serde_json::{json, Value};

const BUCKET: &str = "lstm-forecast-snapstart";
const REGISTRY: &str = "s3://lstm-forecast-snapstart/models/etth1-ot-lstm";

/// The environment of a SnapStart function under `double`, its model at `model_uri`, with S3 on
/// `moto` but no static keys: credentials come from the double only.
fn snapstart_env(
    double: &RuntimeApiDouble,
    moto: &Moto,
    cache: &tempfile::TempDir,
    model_uri: &str,
) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = moto
        .env()
        .into_iter()
        .map(|(k, v)| match k {
            "AWS_ACCESS_KEY_ID" | "AWS_SECRET_ACCESS_KEY" => (k, String::new()),
            _ => (k, v),
        })
        .collect();
    env.push(("AWS_SESSION_TOKEN", String::new()));
    env.extend(double.snapstart_env());
    env.push(("MODEL_URI", model_uri.into()));
    env.push((
        "LSTM_FORECAST_MODEL_CACHE",
        cache.path().display().to_string(),
    ));
    env.push(("LOG_FORMAT", "json".into()));
    env
}

/// The `(hook, phase)` of every `snapstart hook` line, in the order they were logged.
fn hooks_in_order(log: &str) -> Vec<(String, String)> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == "snapstart hook")
        .map(|line| {
            (
                line["hook"].as_str().unwrap_or_default().to_string(),
                line["phase"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn logged_field(log: &str, message: &str, field: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["message"] == message && line.get(field).is_some())
        .map(|line| line[field].as_str().unwrap_or_default().to_string())
        .collect()
}

fn forecast_event(body: &Value) -> Value {
    let mut event = event("apigw-v2-forecast.json");
    event["body"] = Value::String(body.to_string());
    event
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restore_runs_the_hooks_in_order_rebuilds_the_clients_and_serves_a_model_promoted_during_the_snapshot(
) {
    // GIVEN version 1.0.0 live in the registry, and the function initialised for a snapshot
    let moto = Moto::start();
    moto.create_bucket(BUCKET).await;
    common::publish_bundled_as(&moto, "1.0.0", REGISTRY);
    let double = RuntimeApiDouble::start().await;
    let cache = tempfile::tempdir().unwrap();
    let function = Function::start_at(
        &double.runtime_api(),
        &snapstart_env(&double, &moto, &cache, REGISTRY),
    );
    double.snapshot_taken(Duration::from_secs(60)).await;
    let fetches_before_snapshot = double.credential_fetches();
    assert!(
        fetches_before_snapshot >= 1,
        "init read the model from S3 with the endpoint's credentials\n{}",
        function.log()
    );
    // The log reaches the test through a pipe, which may lag the snapshot signal.
    let at_snapshot = function.log_once_it_holds("before_snapshot");
    assert_eq!(
        hooks_in_order(&at_snapshot),
        [("flush".to_string(), "before_snapshot".to_string())],
        "before the snapshot only the flush runs"
    );
    assert!(
        !common::emf_values(&at_snapshot).contains_key("ColdStartDuration"),
        "a SnapStart init is not a cold start anyone waited for"
    );

    // WHEN 1.0.1 is promoted while the snapshot waits, and then an environment is restored
    common::publish_bundled_as(&moto, "1.0.1", REGISTRY);
    double.restore();
    let answer = double
        .invoke(&event("apigw-v2-forecast.json"))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", function.log()));

    // THEN the first request is answered by 1.0.1
    assert_eq!(answer["statusCode"], 200, "{answer}");
    assert_eq!(common::proxy_body(&answer)["model"]["version"], "1.0.1");
    // AND the restore hooks ran after the snapshot's flush, foundations first: the clients are
    // rebuilt before the alias is read with them, and the report comes last
    let log = function.log_once_it_holds("\"RestoreDuration\"");
    let order: Vec<(String, String)> = [
        ("flush", "before_snapshot"),
        ("flush", "after_restore"),
        ("aws-clients", "after_restore"),
        ("identity", "after_restore"),
        ("model-alias", "after_restore"),
        ("report", "after_restore"),
    ]
    .iter()
    .map(|(h, p)| (h.to_string(), p.to_string()))
    .collect();
    assert_eq!(hooks_in_order(&log), order, "{log}");
    // AND the rebuilt S3 client asked for credentials again (a kept client would use the cached
    // ones, valid for an hour) and read the alias with them
    assert!(
        double.credential_fetches() > fetches_before_snapshot,
        "no credentials fetched after restore"
    );
    assert!(log.contains("model reloaded"), "{log}");
    // AND the restored environment reports RestoreDuration, never ColdStartDuration
    let emf = common::emf_values(&log);
    assert!(
        emf.get("RestoreDuration").is_some_and(|v| v[0] > 0.0),
        "{emf:?}"
    );
    assert!(!emf.contains_key("ColdStartDuration"), "{emf:?}");
    assert!(double.errors().is_empty(), "{:?}", double.errors());
}

/// 64 series of training data, each long enough (window + horizon) to be backtested.
fn backtestable_request() -> Value {
    let windows = common::etth1_training_windows(64, 192, 24);
    json!({"series": windows.iter().map(|(id, _, values)| json!({"id": id, "values": values})).collect::<Vec<_>>()})
}

/// One environment with `SAMPLING_SEED=7`, SnapStart on or off: the sorted BacktestMAE values
/// its first request produced, and the environment ids it logged at restore.
async fn backtests_of_one_environment(moto: &Moto, snap_start: bool) -> (Vec<f64>, Vec<String>) {
    let double = RuntimeApiDouble::start().await;
    let cache = tempfile::tempdir().unwrap();
    let mut env = snapstart_env(&double, moto, &cache, "bundled");
    if !snap_start {
        env.retain(|(k, _)| *k != "AWS_LAMBDA_INITIALIZATION_TYPE");
    }
    env.push(("SAMPLING_SEED", "7".into()));
    env.push(("BACKTEST_SAMPLE_RATE", "0.5".into()));
    let function = Function::start_at(&double.runtime_api(), &env);
    if snap_start {
        double.snapshot_taken(Duration::from_secs(60)).await;
        double.restore();
    }
    let answer = double
        .invoke(&forecast_event(&backtestable_request()))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", function.log()));
    assert_eq!(answer["statusCode"], 200, "{answer}");
    let log = function.log_once_it_holds("\"BacktestMAE\"");
    let mut maes = common::emf_values(&log)
        .remove("BacktestMAE")
        .unwrap_or_default();
    maes.sort_by(f64::total_cmp);
    maes.dedup();
    (maes, logged_field(&log, "snapstart hook", "environment_id"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_restores_of_one_snapshot_backtest_different_series_and_take_different_ids() {
    // GIVEN two environments that start alike, as two restores of one snapshot do: one seed
    let moto = Moto::shared();
    // Control: without SnapStart the seed decides, so the same seed samples the same series
    let (plain_a, _) = backtests_of_one_environment(moto, false).await;
    let (plain_b, _) = backtests_of_one_environment(moto, false).await;
    assert!(!plain_a.is_empty());
    assert_eq!(plain_a, plain_b, "one seed, one sample");

    // WHEN each is restored and sent the same 64 backtestable series
    let (restored_a, ids_a) = backtests_of_one_environment(moto, true).await;
    let (restored_b, ids_b) = backtests_of_one_environment(moto, true).await;

    // THEN they backtest different series (about half each), and take different ids
    assert!(!restored_a.is_empty() && !restored_b.is_empty());
    assert_ne!(
        restored_a, restored_b,
        "the restore drew a new sampling seed"
    );
    assert_eq!(ids_a.len(), 1);
    assert_eq!(ids_b.len(), 1);
    assert_ne!(ids_a, ids_b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapstart_init_whose_model_cache_exceeds_the_tmp_limit_is_an_init_error() {
    // GIVEN a model cache already holding more than SnapStart's 512 MiB of /tmp (a sparse file)
    let moto = Moto::shared();
    let double = RuntimeApiDouble::start().await;
    let cache = tempfile::tempdir().unwrap();
    let filler = std::fs::File::create(cache.path().join("old-version.pt")).unwrap();
    filler.set_len(600 << 20).unwrap();
    // WHEN the function initialises for a snapshot
    let function = Function::start_at(
        &double.runtime_api(),
        &snapstart_env(&double, moto, &cache, "bundled"),
    );
    let (ok, log) = function.wait_exit(Duration::from_secs(60));
    // THEN it fails init, naming the limit and the way out, and reports it to the Runtime API
    assert!(!ok, "{log}");
    assert!(
        log.contains("512 MiB") && log.contains("SnapStart"),
        "{log}"
    );
    let errors = double.errors();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert_eq!(errors[0].0, "/init/error");
    assert_eq!(errors[0].1["errorType"], "InvalidConfiguration");
}
