//! Signed models: only the publisher's key puts a model into service. Models are signed by the
//! OpenSSF `model_signing` CLI from the locked tools environment, and the service must agree with
//! that CLI's own `verify` on what holds and what does not.

use crate::common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::emulators::{cli, tools_bin, Moto};
use serde_json::Value;

/// A fresh EC P-256 key pair in `dir`: `(private key PEM, public key PEM)`.
fn key_pair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    let (private, public) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.pub")),
    );
    let script = format!(
        "from cryptography.hazmat.primitives.asymmetric import ec\n\
         from cryptography.hazmat.primitives import serialization as s\n\
         k = ec.generate_private_key(ec.SECP256R1())\n\
         open({private:?}, 'wb').write(k.private_bytes(s.Encoding.PEM, s.PrivateFormat.PKCS8, s.NoEncryption()))\n\
         open({public:?}, 'wb').write(k.public_key().public_bytes(s.Encoding.PEM, s.PublicFormat.SubjectPublicKeyInfo))\n"
    );
    let status = Command::new(tools_bin("python"))
        .args(["-c", &script])
        .status()
        .unwrap();
    assert!(status.success());
    (private, public)
}

/// `model_signing sign key` over `dir`, writing `dir/model.sig`.
fn sign(dir: &Path, private: &Path) {
    let (ok, printed) = common::outcome(
        Command::new(tools_bin("model_signing"))
            .args(["sign", "key", "--private_key"])
            .arg(private)
            .arg("--signature")
            .arg(dir.join("model.sig"))
            .arg(dir),
    );
    assert!(ok, "{printed}");
}

/// Whether `model_signing verify key` accepts `dir` with `public`.
fn reference_accepts(dir: &Path, public: &Path) -> bool {
    Command::new(tools_bin("model_signing"))
        .args(["verify", "key", "--signature"])
        .arg(dir.join("model.sig"))
        .arg("--public_key")
        .arg(public)
        .arg(dir)
        .output()
        .unwrap()
        .status
        .success()
}

/// `lstm-forecast forecast --model DIR` on ETTh1 with `MODEL_VERIFY_KEY`: success, and stderr.
fn forecast_with_key(dir: &Path, key: &Path) -> (bool, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
        .args(["forecast", "--model"])
        .arg(dir)
        .arg("--input")
        .arg(common::repo_path("model_artifacts/data/ETTh1.csv"))
        .env("MODEL_VERIFY_KEY", key)
        .env("THREADS", "1")
        .output()
        .unwrap();
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A copy of `dir`'s model files in a new directory.
fn copy_model(from: &Path) -> tempfile::TempDir {
    let copy = tempfile::tempdir().unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), copy.path().join(entry.file_name())).unwrap();
    }
    copy
}

#[test]
fn only_what_the_publishers_key_signed_loads_and_the_reference_cli_agrees() {
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = key_pair(keys.path(), "publisher");
    let (_, foreign) = key_pair(keys.path(), "someone-else");
    // GIVEN the bundled model signed by the publisher with `model_signing`
    let signed = common::bundled_as_version("1.0.0");
    sign(signed.path(), &private);
    // THEN it is served, and the reference CLI verifies it too
    let (ok, log) = forecast_with_key(signed.path(), &public);
    assert!(ok, "{log}");
    assert!(reference_accepts(signed.path(), &public));

    // WHEN its model.json's preprocessing is edited after signing (the z-score std raised by half)
    let tampered = copy_model(signed.path());
    let path = tampered.path().join("model.json");
    let mut metadata: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let std = metadata["training_stats"]["OT"]["std"].as_f64().unwrap();
    metadata["training_stats"]["OT"]["std"] = (std * 1.5).into();
    std::fs::write(&path, serde_json::to_vec_pretty(&metadata).unwrap()).unwrap();
    // THEN it is refused, naming the file, and the reference refuses it as well
    let (ok, log) = forecast_with_key(tampered.path(), &public);
    assert!(
        !ok && log.contains("model.json is not the file that was signed"),
        "{log}"
    );
    assert!(!reference_accepts(tampered.path(), &public));

    // WHEN another key is configured, THEN the publisher's signature is refused, by key
    let (ok, log) = forecast_with_key(signed.path(), &foreign);
    assert!(
        !ok && log.contains("not signed by the key in MODEL_VERIFY_KEY"),
        "{log}"
    );
    assert!(!reference_accepts(signed.path(), &foreign));

    // WHEN the signature is missing, THEN the model is refused, and so is the built-in one
    let unsigned = copy_model(signed.path());
    std::fs::remove_file(unsigned.path().join("model.sig")).unwrap();
    let (ok, log) = forecast_with_key(unsigned.path(), &public);
    assert!(!ok && log.contains("model.sig is missing"), "{log}");
}

#[tokio::test]
async fn serve_keeps_the_signed_version_when_an_unsigned_writer_promotes_another() {
    // GIVEN a publisher's key, 1.0.0 signed and published, and `serve` requiring that key
    let keys = tempfile::tempdir().unwrap();
    let (private, public) = key_pair(keys.path(), "publisher");
    let moto = Moto::start();
    let s3 = moto.create_bucket("signed").await;
    let registry = "s3://signed/models/etth1-ot-lstm";
    let v1 = common::bundled_as_version("1.0.0");
    sign(v1.path(), &private);
    let (ok, out) = cli(
        &moto,
        &["model", "publish", v1.path().to_str().unwrap(), registry],
    );
    assert!(ok, "{out}");
    let cache = tempfile::tempdir().unwrap();
    let mut env = moto.env();
    env.push((
        "LSTM_FORECAST_MODEL_CACHE",
        cache.path().display().to_string(),
    ));
    env.push(("MODEL_VERIFY_KEY", public.display().to_string()));
    let server = common::ServeProcess::start(
        &["--model", registry, "--reload-interval-seconds", "1"],
        &env,
    )
    .await;
    let client = reqwest::Client::new();
    let model: Value =
        serde_json::from_str(&common::get_text(&client, &server.url("/v1/model")).await).unwrap();
    assert_eq!(model["version"], "1.0.0");
    // WHEN a writer without the key uploads 1.0.1 (unsigned) and points the alias at it
    let v2 = common::bundled_as_version("1.0.1");
    for file in ["model.pt", "model.onnx", "model.json"] {
        s3.put_object()
            .bucket("signed")
            .key(format!("models/etth1-ot-lstm/1.0.1/{file}"))
            .body(std::fs::read(v2.path().join(file)).unwrap().into())
            .send()
            .await
            .unwrap();
    }
    lstm_forecast::registry::Registry::new(
        s3.clone(),
        lstm_forecast::registry::RegistryRef::parse(registry).unwrap(),
    )
    .promote("1.0.1", lstm_forecast::registry::DEFAULT_PROBATION)
    .await
    .unwrap();
    // THEN the server refuses it by name, counts it, and keeps serving 1.0.0
    server
        .wait_for_log(
            "version 1.0.1: model.sig is missing",
            Duration::from_secs(30),
        )
        .await;
    let metrics = common::get_text(&client, &server.url("/metrics")).await;
    assert!(
        common::metric_sum(&metrics, "lstm_forecast_model_verification_failures_total")
            .is_some_and(|n| n >= 1.0),
        "{metrics}"
    );
    let model: Value =
        serde_json::from_str(&common::get_text(&client, &server.url("/v1/model")).await).unwrap();
    assert_eq!(model["version"], "1.0.0");
}
