//! The HTTP API, served for real on 127.0.0.1:0 with the bundled TorchScript model.

use crate::common;

use common::{forecast_body, window, TestServer};
use serde_json::{json, Value};

#[tokio::test]
async fn a_forecast_returns_horizon_values_and_hourly_timestamps() {
    let server = TestServer::bundled().await;
    let client = reqwest::Client::new();
    // GIVEN one series of 168 hourly values ending 2018-02-20 23:00 UTC
    let body = json!({"series": [{"id": "t1", "values": window(0.0), "last_timestamp": "2018-02-20T23:00:00Z"}]});
    // WHEN it is posted
    let response = client
        .post(server.url("/v1/forecast"))
        .json(&body)
        .send()
        .await
        .unwrap();
    // THEN 24 finite values come back, stamped from the next hour on
    assert_eq!(response.status(), 200);
    assert!(response.headers().contains_key("x-request-id"));
    let answer: Value = response.json().await.unwrap();
    assert_eq!(answer["model"]["name"], "etth1-ot-lstm");
    let forecast = &answer["forecasts"][0];
    assert_eq!(forecast["id"], "t1");
    let values = forecast["values"].as_array().unwrap();
    assert_eq!(values.len(), 24);
    assert!(values.iter().all(|v| v.as_f64().unwrap().is_finite()));
    let stamps = forecast["timestamps"].as_array().unwrap();
    assert_eq!(stamps.len(), 24);
    assert_eq!(stamps[0], "2018-02-21T00:00:00Z");
    assert_eq!(stamps[23], "2018-02-21T23:00:00Z");
    server.stop().await;
}

#[tokio::test]
async fn many_series_in_one_call_match_their_single_forecasts() {
    let server = TestServer::bundled().await;
    let client = reqwest::Client::new();
    let windows: Vec<Vec<f64>> = (0..16).map(|i| window(i as f64 * 0.4)).collect();
    let batched: Value = common::post_json(
        &client,
        &server.url("/v1/forecast"),
        &forecast_body(&windows),
    )
    .await;
    assert_eq!(batched["forecasts"].as_array().unwrap().len(), 16);
    assert!(
        batched["forecasts"][0].get("timestamps").is_none(),
        "no last_timestamp, no timestamps"
    );
    for (i, w) in windows.iter().enumerate().step_by(5) {
        let single: Value = common::post_json(
            &client,
            &server.url("/v1/forecast"),
            &forecast_body(std::slice::from_ref(w)),
        )
        .await;
        let a = batched["forecasts"][i]["values"].as_array().unwrap();
        let b = single["forecasts"][0]["values"].as_array().unwrap();
        for (x, y) in a.iter().zip(b) {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-5 * y.abs().max(1.0),
                "series {i}: batched {x} vs single {y}"
            );
        }
    }
    server.stop().await;
}

#[tokio::test]
async fn model_health_and_readiness_endpoints_describe_the_service() {
    let server = TestServer::bundled().await;
    let client = reqwest::Client::new();
    let model: Value = client
        .get(server.url("/v1/model"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(model["input"]["window"], 168);
    assert_eq!(model["output"]["horizon"], 24);
    assert_eq!(model["preprocessing"][0], "z_score");
    // A documented projection, not the whole model.json: no training data statistics
    assert!(model.get("training_stats").is_none(), "{model}");
    assert!(model.get("training").is_none(), "{model}");
    assert_eq!(model["name"], "etth1-ot-lstm");
    let health = client.get(server.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready: Value = client
        .get(server.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["model"]["version"], model["version"]);
    server.stop().await;
}

#[tokio::test]
async fn metrics_count_forecasts_errors_and_latency_in_prometheus_text() {
    let server = TestServer::bundled().await;
    let client = reqwest::Client::new();
    let windows: Vec<Vec<f64>> = (0..3).map(|i| window(i as f64)).collect();
    client
        .post(server.url("/v1/forecast"))
        .json(&forecast_body(&windows))
        .send()
        .await
        .unwrap();
    client
        .post(server.url("/v1/forecast"))
        .json(&json!({"series": []}))
        .send()
        .await
        .unwrap();
    let response = client.get(server.url("/metrics")).send().await.unwrap();
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/plain"));
    let text = response.text().await.unwrap();
    assert!(text.contains("lstm_forecast_forecasts_total 3"), "{text}");
    assert!(
        text.contains(r#"lstm_forecast_errors_total{kind="empty_request"} 1"#),
        "{text}"
    );
    assert!(
        text.contains(r#"lstm_forecast_request_duration_seconds_count{route="/v1/forecast"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"lstm_forecast_model_info{name="etth1-ot-lstm""#),
        "{text}"
    );
    assert!(
        text.contains("lstm_forecast_inference_duration_seconds_bucket"),
        "{text}"
    );
    server.stop().await;
}

#[tokio::test]
async fn observations_get_less_room_than_forecasts() {
    let server = TestServer::bundled().await;
    let client = reqwest::Client::new();
    // GIVEN ~300 KiB bodies: 200 series to forecast, and 12,000 actuals
    let forecast = forecast_body(&(0..200).map(|i| window(i as f64)).collect::<Vec<_>>());
    let stamps: Vec<String> = (0..12_000)
        .map(|h| format!("2018-01-{:02}T{:02}:00:00Z", 1 + h / 24 % 28, h % 24))
        .collect();
    let observations = json!({"series": [{"id": "a", "timestamps": stamps,
        "values": vec![1.5; 12_000]}]});
    assert!(forecast.to_string().len() > 256 * 1024);
    assert!(observations.to_string().len() > 256 * 1024);
    // WHEN both are posted, THEN the forecast is answered ...
    let r = client
        .post(server.url("/v1/forecast"))
        .json(&forecast)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // ... and the actuals are refused for their size, before anything reads them
    let r = client
        .post(server.url("/v1/observations"))
        .json(&observations)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["error"]["code"], "body_too_large", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("262144"),
        "{body}"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_client_request_id_is_echoed_back() {
    let server = TestServer::bundled().await;
    let response = reqwest::Client::new()
        .get(server.url("/healthz"))
        .header("x-request-id", "abc-123")
        .send()
        .await
        .unwrap();
    assert_eq!(response.headers()["x-request-id"], "abc-123");
    server.stop().await;
}

#[tokio::test]
async fn unknown_routes_and_methods_get_json_errors() {
    let server = TestServer::bundled().await;
    let client = reqwest::Client::new();
    let response = client.get(server.url("/v3/forecast")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("POST /v1/forecast"));
    // Under /v2, errors take the Open Inference Protocol's shape: {"error": "..."}
    let response = client.get(server.url("/v2/forecast")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]
        .as_str()
        .unwrap()
        .contains("POST /v2/models/NAME[/versions/VERSION]/infer"));
    let response = client.get(server.url("/v1/forecast")).send().await.unwrap();
    assert_eq!(response.status(), 405);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "method_not_allowed");
    server.stop().await;
}

#[tokio::test]
async fn shutdown_waits_for_in_flight_requests() {
    use lstm_forecast::model::engine::{Engine, EngineError};
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Signals when a forward starts, then takes 300 ms: a request certainly in flight.
    struct Slow {
        started: Arc<AtomicBool>,
    }
    impl Engine for Slow {
        fn forward(
            &self,
            _input: &[f32],
            batch: usize,
            _window: usize,
            _features: usize,
        ) -> Result<Vec<f32>, EngineError> {
            self.started.store(true, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(300));
            Ok(vec![0.0; batch * 24])
        }
    }
    let started = Arc::new(AtomicBool::new(false));
    let metadata = common::bundled_model().metadata().clone();
    let model = lstm_forecast::model::Model::with_engine(
        metadata,
        Box::new(Slow {
            started: started.clone(),
        }),
    );
    let server = TestServer::start(model, Default::default(), 64).await;
    let client = reqwest::Client::new();
    let in_flight = tokio::spawn({
        let url = server.url("/v1/forecast");
        let body = forecast_body(&[window(0.0)]);
        async move { client.post(url).json(&body).send().await.unwrap().status() }
    });
    // GIVEN a request inside the forward pass
    while !started.load(Ordering::SeqCst) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    // WHEN the server is asked to stop, THEN it still answers that request
    server.stop().await;
    assert_eq!(in_flight.await.unwrap(), 200);
}

#[tokio::test]
async fn with_an_observations_token_only_its_holders_may_post_actuals() {
    // GIVEN the real server with a token for observations, from the environment or from a file
    // (a Docker Swarm or Kubernetes secret)
    let secret = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(secret.path(), "s3cret-writer\n").unwrap();
    for env in [
        ("OBSERVATIONS_TOKEN", "s3cret-writer".to_string()),
        (
            "OBSERVATIONS_TOKEN_FILE",
            secret.path().display().to_string(),
        ),
    ] {
        let server = common::ServeProcess::start(&[], &[env]).await;
        only_the_token_holder_may_post_actuals(&server).await;
    }
    // AND the token never shows in --help
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
        .args(["serve", "--help"])
        .env("OBSERVATIONS_TOKEN", "s3cret-writer")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("OBSERVATIONS_TOKEN") && !help.contains("s3cret-writer"));
}

#[tokio::test]
async fn with_a_forecast_log_and_no_token_serve_refuses_to_start_unless_told_to_open_it() {
    // GIVEN a forecast log and no observations token
    let moto = common::emulators::Moto::shared();
    moto.create_bucket("open-actuals").await;
    let mut env = moto.env();
    env.push(("FORECAST_LOG_URI", "s3://open-actuals/monitoring".into()));
    // WHEN serve starts
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .output()
        .unwrap();
    // THEN it exits before listening, naming the missing token and the way out
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success(), "{stderr}");
    assert!(
        stderr.contains("OBSERVATIONS_TOKEN") && stderr.contains("--observations-auth none"),
        "{stderr}"
    );
    // AND `--observations-auth none` opens it on purpose, with a warning
    let open = common::ServeProcess::start(&["--observations-auth", "none"], &env).await;
    open.wait_for_log(
        "accepts anyone's actuals",
        std::time::Duration::from_secs(10),
    )
    .await;
    let stored = reqwest::Client::new()
        .post(open.url("/v1/observations"))
        .json(&json!({"series": [{"id": "a", "timestamps": ["2018-01-01T00:00:00Z"], "values": [1.0]}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), 202);
}

/// Actuals without the token, or with another, are refused; with it they reach the service; and
/// forecasts need none.
async fn only_the_token_holder_may_post_actuals(server: &common::ServeProcess) {
    let client = reqwest::Client::new();
    let body =
        json!({"series": [{"id": "a", "timestamps": ["2018-01-01T01:00:00Z"], "values": [1.0]}]});
    for authorization in [None, Some("Bearer guess"), Some("s3cret-writer")] {
        let mut request = client.post(server.url("/v1/observations")).json(&body);
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 401, "{authorization:?}");
        let answer: Value = response.json().await.unwrap();
        assert_eq!(answer["error"]["code"], "unauthorized", "{answer}");
    }
    // (no store here: 501, not 401)
    let response = client
        .post(server.url("/v1/observations"))
        .header("authorization", "Bearer s3cret-writer")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 501);
    let response = client
        .post(server.url("/v1/forecast"))
        .json(&forecast_body(&[window(0.0)]))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn probe_passes_on_a_ready_server_and_names_what_failed_otherwise() {
    let probe = |url: String| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
            .args(["probe", &url, "--timeout-seconds", "2"])
            .output()
            .unwrap();
        (
            output.status.success(),
            String::from_utf8_lossy(&output.stdout).into_owned()
                + &String::from_utf8_lossy(&output.stderr),
        )
    };
    // GIVEN the real server: its readiness passes, an unknown path does not
    let server = common::ServeProcess::start(&[], &[]).await;
    let (ok, out) = probe(server.url("/readyz"));
    assert!(ok, "{out}");
    let (ok, out) = probe(server.url("/nowhere"));
    assert!(!ok && out.contains("answered 404"), "{out}");
    // AND a port where nothing listens fails with the address it tried
    let closed = format!("127.0.0.1:{}", common::emulators::free_port());
    let (ok, out) = probe(format!("http://{closed}/readyz"));
    assert!(!ok && out.contains(&closed), "{out}");
}
