//! The S3 model registry (publish, list, promote, rollback) and hot reload, against moto.

use crate::common;

use std::time::Duration;

use aws_sdk_s3::primitives::ByteStream;
use common::emulators::{cli, Moto};
use common::{bundled_as_version, repo_path};
use lstm_forecast::objects::ObjectErrorKind;
use lstm_forecast::registry::{Registry, RegistryError, RegistryRef, DEFAULT_PROBATION};
use serde_json::Value;

const BUCKET: &str = "registry-test";
const REGISTRY: &str = "s3://registry-test/models/etth1-ot-lstm";

async fn registry(moto: &Moto) -> Registry {
    Registry::new(moto.s3().await, RegistryRef::parse(REGISTRY).unwrap())
}

/// Uploads `model_pt` and `metadata` (its version set to `version`) straight to the registry's
/// bucket, as a writer who goes around `model publish` and its probe would.
async fn upload_around_publish(
    s3: &aws_sdk_s3::Client,
    version: &str,
    model_pt: Vec<u8>,
    mut metadata: Value,
) {
    metadata["version"] = version.into();
    for (file, body) in [
        ("model.pt", model_pt),
        ("model.json", serde_json::to_vec(&metadata).unwrap()),
    ] {
        s3.put_object()
            .bucket(BUCKET)
            .key(format!("models/etth1-ot-lstm/{version}/{file}"))
            .body(ByteStream::from(body))
            .send()
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn publish_promote_and_rollback_keep_a_history_of_live_versions() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET).await;
    let (v1, v2) = (bundled_as_version("1.0.0"), bundled_as_version("1.0.1"));

    let (ok, out) = cli(
        &moto,
        &["model", "publish", v1.path().to_str().unwrap(), REGISTRY],
    );
    assert!(ok && out.contains("published 1.0.0; live"), "{out}");
    // Versions are immutable.
    let (ok, out) = cli(
        &moto,
        &["model", "publish", v1.path().to_str().unwrap(), REGISTRY],
    );
    assert!(!ok && out.contains("1.0.0 is already published"), "{out}");
    // --no-promote uploads without changing what serves.
    let (ok, out) = cli(
        &moto,
        &[
            "model",
            "publish",
            "--no-promote",
            v2.path().to_str().unwrap(),
            REGISTRY,
        ],
    );
    assert!(ok && out.contains("not live"), "{out}");
    let (_, out) = cli(&moto, &["model", "list", REGISTRY]);
    assert!(
        out.contains("1.0.0  (live)") && out.contains("1.0.1"),
        "{out}"
    );

    let (ok, out) = cli(&moto, &["model", "promote", REGISTRY, "1.0.1"]);
    assert!(ok && out.contains("1.0.1 is live (was 1.0.0)"), "{out}");
    let (ok, out) = cli(&moto, &["model", "promote", REGISTRY, "7.7.7"]);
    assert!(
        !ok && out.contains("version 7.7.7 is not in the registry"),
        "{out}"
    );

    let (ok, out) = cli(&moto, &["model", "rollback", REGISTRY]);
    assert!(ok && out.contains("1.0.0 is live (was 1.0.1)"), "{out}");
    let (ok, out) = cli(&moto, &["model", "rollback", REGISTRY]);
    assert!(
        !ok && out.contains("1.0.0 is the only version that was ever live"),
        "{out}"
    );
    assert_eq!(registry(&moto).await.live_version().await.unwrap(), "1.0.0");

    // `model show` reads a registry model like any other.
    let (ok, out) = cli(
        &moto,
        &["model", "show", "--model", &format!("{REGISTRY}/1.0.1")],
    );
    assert!(ok && out.contains("\"version\": \"1.0.1\""), "{out}");
}

#[tokio::test]
async fn publish_refuses_a_model_that_fails_validation_and_uploads_nothing() {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let broken = repo_path("tests/fixtures/broken-traced-lstm");
    let (ok, out) = cli(
        &moto,
        &["model", "publish", broken.to_str().unwrap(), REGISTRY],
    );
    assert!(!ok, "{out}");
    assert!(
        out.contains("is not valid, nothing was uploaded") && out.contains("crashed"),
        "{out}"
    );
    let listed = s3.list_objects_v2().bucket(BUCKET).send().await.unwrap();
    assert_eq!(listed.key_count(), Some(0));
}

#[tokio::test]
async fn a_stale_alias_write_is_refused_instead_of_overwriting_a_concurrent_promotion() {
    let moto = Moto::start();
    moto.create_bucket(BUCKET).await;
    for v in ["1.0.0", "1.0.1"] {
        let dir = bundled_as_version(v);
        let (ok, out) = cli(
            &moto,
            &[
                "model",
                "publish",
                "--no-promote",
                dir.path().to_str().unwrap(),
                REGISTRY,
            ],
        );
        assert!(ok, "{out}");
    }
    let registry = registry(&moto).await;
    registry.promote("1.0.0", DEFAULT_PROBATION).await.unwrap();
    // GIVEN a writer that read the alias ...
    let (alias, stale_etag) = registry.read_alias().await.unwrap().unwrap();
    // ... WHEN someone else promotes in between ...
    registry.promote("1.0.1", DEFAULT_PROBATION).await.unwrap();
    // ... THEN its write, conditioned on what it read, is refused.
    let err = registry
        .write_alias(&alias, stale_etag.as_deref())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Object(e) if e.kind == ObjectErrorKind::Conflict),
        "{err}"
    );
    assert_eq!(registry.live_version().await.unwrap(), "1.0.1");
}

#[tokio::test]
async fn serve_follows_the_alias_and_keeps_the_old_model_when_a_new_one_fails_to_load() {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    common::publish_bundled_as(&moto, "1.0.0", REGISTRY);
    let cache = tempfile::tempdir().unwrap();
    let mut env = moto.env();
    env.push((
        "LSTM_FORECAST_MODEL_CACHE",
        cache.path().to_str().unwrap().to_string(),
    ));
    let server = common::ServeProcess::start(
        &["--model", REGISTRY, "--reload-interval-seconds", "1"],
        &env,
    )
    .await;
    let base = server.base.clone();
    let client = reqwest::Client::new();
    let version = || async {
        match client.get(format!("{base}/v1/model")).send().await {
            Ok(r) => r
                .json::<Value>()
                .await
                .ok()
                .map(|m| m["version"].as_str().unwrap_or("").to_string()),
            Err(_) => None,
        }
    };
    let wait_for = |expected: &'static str| async move {
        common::eventually(
            Duration::from_secs(30),
            &format!("serve reports version {expected}"),
            || async { (version().await.as_deref() == Some(expected)).then_some(()) },
        )
        .await
    };
    wait_for("1.0.0").await;

    // A good new version is picked up without a restart.
    common::publish_bundled_as(&moto, "1.0.1", REGISTRY);
    wait_for("1.0.1").await;

    // A version that cannot load (uploaded around `publish`, which would have refused it) is
    // promoted: the server keeps serving 1.0.1 and counts the failure.
    let garbage = b"not TorchScript".to_vec();
    let mut metadata: Value =
        serde_json::from_slice(lstm_forecast::source::BUNDLED_MODEL_JSON).unwrap();
    metadata["model_sha256"] = lstm_forecast::model::contract::sha256_hex(&garbage).into();
    upload_around_publish(&s3, "1.0.2", garbage, metadata).await;
    registry(&moto)
        .await
        .promote("1.0.2", DEFAULT_PROBATION)
        .await
        .unwrap();
    let metrics = common::eventually(
        Duration::from_secs(30),
        "the failed reload is counted",
        || async {
            let metrics = common::get_text(&client, &format!("{base}/metrics")).await;
            let failures =
                common::metric_value(&metrics, "lstm_forecast_model_reload_failures_total")?;
            (failures >= 1.0).then_some(metrics)
        },
    )
    .await;
    assert_eq!(
        common::metric_value(&metrics, "lstm_forecast_model_reloads_total"),
        Some(1.0),
        "{metrics}"
    );
    assert_eq!(version().await.as_deref(), Some("1.0.1"));

    // A version that loads but crashes libtorch at batch 64 (traced at a fixed batch), made live
    // by a writer who skipped `model promote`'s probe: the server probes it in a child process,
    // refuses it, and stays up for the batch that would have killed it.
    let broken = repo_path("tests/fixtures/broken-traced-lstm");
    let mut metadata: Value =
        serde_json::from_slice(&std::fs::read(broken.join("model.json")).unwrap()).unwrap();
    metadata["version"] = "1.0.3".into();
    upload_around_publish(
        &s3,
        "1.0.3",
        std::fs::read(broken.join("model.pt")).unwrap(),
        metadata,
    )
    .await;
    registry(&moto)
        .await
        .promote("1.0.3", DEFAULT_PROBATION)
        .await
        .unwrap();
    server
        .wait_for_log("version 1.0.3 failed its probe", Duration::from_secs(60))
        .await;
    let windows: Vec<Vec<f64>> = (0..64).map(|i| common::window(i as f64)).collect();
    let batch = client
        .post(format!("{base}/v1/forecast"))
        .json(&common::forecast_body(&windows))
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 200);
    assert_eq!(version().await.as_deref(), Some("1.0.1"));
    // S3 goes away entirely: alias checks fail, and the server keeps serving what it has.
    drop(moto);
    server
        .wait_for_log("could not read the model alias", Duration::from_secs(30))
        .await;
    assert_eq!(version().await.as_deref(), Some("1.0.1"));
    let forecast = client
        .post(format!("{base}/v1/forecast"))
        .json(&common::forecast_body(&[common::window(0.0)]))
        .send()
        .await
        .unwrap();
    assert_eq!(forecast.status(), 200);
}

#[tokio::test]
async fn promote_probes_a_version_that_skipped_publish_and_refuses_one_that_crashes_libtorch() {
    // GIVEN 1.0.0 live, and a version uploaded straight to S3 (around `publish`, which would
    // have refused it): TorchScript traced at a fixed batch, which crashes libtorch at batch 64
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    common::publish_bundled_as(&moto, "1.0.0", REGISTRY);
    let broken = repo_path("tests/fixtures/broken-traced-lstm");
    let metadata: Value =
        serde_json::from_slice(&std::fs::read(broken.join("model.json")).unwrap()).unwrap();
    let model_pt = std::fs::read(broken.join("model.pt")).unwrap();
    upload_around_publish(&s3, "6.6.6", model_pt, metadata).await;
    // WHEN an operator promotes it
    let (ok, out) = cli(&moto, &["model", "promote", REGISTRY, "6.6.6"]);
    // THEN the probe's child process crashes, not the command, and the alias is unchanged
    assert!(!ok, "{out}");
    assert!(
        out.contains("version 6.6.6 failed its probe")
            && out.contains("the alias is unchanged")
            && out.contains("libtorch cannot run this model safely"),
        "{out}"
    );
    let (alias, _) = registry(&moto).await.read_alias().await.unwrap().unwrap();
    assert_eq!(alias.version, "1.0.0");
    // AND a sound version still promotes after its probe
    let v2 = bundled_as_version("1.0.1");
    let (ok, out) = cli(
        &moto,
        &[
            "model",
            "publish",
            "--no-promote",
            v2.path().to_str().unwrap(),
            REGISTRY,
        ],
    );
    assert!(ok, "{out}");
    let (ok, out) = cli(&moto, &["model", "promote", REGISTRY, "1.0.1"]);
    assert!(ok && out.contains("1.0.1 is live (was 1.0.0)"), "{out}");
}

#[tokio::test]
async fn a_challenge_is_set_shown_and_withdrawn_from_the_command_line() {
    // GIVEN 1.0.0 live and 1.0.1 published beside it
    let moto = Moto::start();
    moto.create_bucket(BUCKET).await;
    common::publish_bundled_as(&moto, "1.0.0", REGISTRY);
    let beside = bundled_as_version("1.0.1");
    let (ok, out) = cli(
        &moto,
        &[
            "model",
            "publish",
            "--no-promote",
            beside.path().to_str().unwrap(),
            REGISTRY,
        ],
    );
    assert!(ok, "{out}");
    // WHEN bad challenges are asked for, THEN each is refused by name and nothing changes
    for (args, why) in [
        (vec!["1.0.0"], "1.0.0 is live already"),
        (vec!["1.0.1", "--fraction", "1.5"], "not a share of series"),
        (vec!["1.0.1", "--mode", "loud"], "not a challenge mode"),
        (vec!["9.9.9"], "9.9.9 is not in the registry"),
    ] {
        let (ok, out) = cli(
            &moto,
            &[&["model", "challenge", REGISTRY][..], &args].concat(),
        );
        assert!(!ok && out.contains(why), "{args:?}: {out}");
    }
    let (_, status) = cli(&moto, &["model", "status", REGISTRY, "--json"]);
    assert!(!status.contains("\"challenger\""), "{status}");
    // WHEN 1.0.1 challenges as a canary on 30% of series
    let (ok, out) = cli(
        &moto,
        &[
            "model",
            "challenge",
            REGISTRY,
            "1.0.1",
            "--mode",
            "canary",
            "--fraction",
            "0.3",
        ],
    );
    assert!(
        ok && out.contains("1.0.1 challenges 1.0.0 (canary, 30% of series)"),
        "{out}"
    );
    // THEN status and list show the roles, and the decision history has the challenge
    let (ok, out) = cli(&moto, &["model", "status", REGISTRY, "--json"]);
    assert!(ok, "{out}");
    // The document, before whatever the process logged after it.
    let alias: Value = serde_json::Deserializer::from_str(&out[out.find('{').unwrap()..])
        .into_iter()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(alias["challenger"]["version"], "1.0.1");
    assert_eq!(alias["challenger"]["mode"], "canary");
    assert_eq!(
        alias["decisions"].as_array().unwrap().last().unwrap()["action"],
        "challenge"
    );
    let (_, out) = cli(&moto, &["model", "list", REGISTRY]);
    assert!(
        out.contains("1.0.1  (challenger, canary on 30% of series"),
        "{out}"
    );
    // WHEN it is withdrawn, THEN the role is gone and the history says so; twice is an error
    let (ok, out) = cli(&moto, &["model", "withdraw", REGISTRY]);
    assert!(ok && out.contains("1.0.1 withdrawn"), "{out}");
    let (_, out) = cli(&moto, &["model", "status", REGISTRY]);
    assert!(
        out.contains("withdraw 1.0.1 vs 1.0.0") && !out.contains("challenger,"),
        "{out}"
    );
    let (ok, out) = cli(&moto, &["model", "withdraw", REGISTRY]);
    assert!(!ok && out.contains("no challenger"), "{out}");
}
