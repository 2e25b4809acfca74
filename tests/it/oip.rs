//! The Open Inference Protocol v2 (`/v2`), as clients written elsewhere meet it: the real
//! `tritonclient.http` from PyPI forecasts through it and gets `/v1`'s answers to the bit; bad
//! requests get the protocol's `{"error": "..."}` with `/v1`'s statuses and field-naming messages.

use crate::common;

use common::{bundled_model, forecast_body, window, TestServer};
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_forecasts_through_the_protocol_exactly_as_v1_answers() {
    // GIVEN `serve` with the bundled model
    let server = TestServer::bundled().await;
    let address = server.url("").trim_start_matches("http://").to_owned();
    // WHEN tritonclient checks the server and the model, reads its metadata and forecasts 1 and
    // 64 series, with binary and with JSON tensors, from FP64 and FP32 inputs
    let report = tokio::task::spawn_blocking(move || {
        common::python_json(&["tests/support/oip_client.py", &address])
    })
    .await
    .unwrap();
    // THEN every check passes, and every forecast equals /v1's to the last bit
    let metadata = bundled_model().metadata().clone();
    assert_eq!(
        (&report["live"], &report["ready"], &report["model_ready"]),
        (&json!(true), &json!(true), &json!(true)),
        "{report}"
    );
    assert!(report["server"]["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));
    assert_eq!(report["metadata"]["name"], metadata.name.as_str());
    assert_eq!(
        report["metadata"]["inputs"][0],
        json!({"name": "window", "datatype": "FP64",
               "shape": [-1, metadata.input.window, metadata.input.features.len()]})
    );
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8);
    for case in cases {
        let count = case["series"].as_u64().unwrap();
        assert_eq!(case["bit_equal"], true, "{case}");
        assert_eq!(
            case["shape"],
            json!([count, metadata.output.horizon]),
            "{case}"
        );
        assert_eq!(
            case["id"],
            format!("case-{count}"),
            "the request id is echoed: {case}"
        );
    }
    assert_eq!(report["unknown_model"]["status"], "404", "{report}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tritonclient_forecasts_through_api_gateway_and_the_lambda_function_as_through_serve() {
    use common::emulators::{Function, LambdaEmulator, Moto};
    // GIVEN the function, cold-started on the bundled model under the Lambda Runtime API
    // emulator, behind API Gateway's HTTP API (payload 2.0 proxy events)
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    let mut env = Moto::shared().env();
    env.push(("MODEL_URI", "bundled".into()));
    env.push((
        "LSTM_FORECAST_MODEL_CACHE",
        cache.path().display().to_string(),
    ));
    let function = Function::start(&emulator, &env);
    let api = common::api_gateway::HttpApiBridge::start(emulator.port).await;
    // WHEN tritonclient runs the same checks and forecasts as against `serve`
    let address = api.address.clone();
    let report = tokio::task::spawn_blocking(move || {
        common::python_json(&["tests/support/oip_client.py", &address])
    })
    .await
    .unwrap();
    // THEN they pass the same way: every forecast equals the function's /v1 answer to the bit
    assert_eq!(report["live"], true, "{report}\n{}", function.log());
    assert_eq!(report["model_ready"], true, "{report}");
    let cases = report["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 8, "{report}");
    for case in cases {
        assert_eq!(case["bit_equal"], true, "{case}");
    }
    assert_eq!(report["unknown_model"]["status"], "404", "{report}");
}

/// `POST /v2/models/NAME/infer` with a JSON body.
async fn infer(server: &TestServer, path: &str, body: &Value) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// An infer request of `windows` (one feature) as JSON tensors.
fn infer_body(windows: &[Vec<f64>], outputs: Value) -> Value {
    let rows = windows[0].len();
    json!({
        "id": "r-1",
        "inputs": [
            {"name": "window", "datatype": "FP64", "shape": [windows.len(), rows, 1],
             "data": windows.concat()},
            {"name": "series_id", "datatype": "BYTES", "shape": [windows.len()],
             "data": (0..windows.len()).map(|i| format!("s{i}")).collect::<Vec<_>>()}
        ],
        "outputs": outputs
    })
}

#[tokio::test]
async fn interval_outputs_are_v1_intervals_and_a_named_version_is_served() {
    let server = TestServer::bundled().await;
    let metadata = bundled_model().metadata().clone();
    let windows = [window(0.0), window(1.0)];
    let v1 = common::post_json(
        &reqwest::Client::new(),
        &server.url("/v1/forecast"),
        &json!({"intervals": [0.8], "series": forecast_body(&windows)["series"]}),
    )
    .await;
    let path = format!(
        "/v2/models/{}/versions/{}/infer",
        metadata.name, metadata.version
    );
    let outputs = json!([{"name": "forecast"}, {"name": "lower_80"}, {"name": "upper_80"}]);
    let (status, answer) = infer(&server, &path, &infer_body(&windows, outputs)).await;
    assert_eq!(status, 200, "{answer}");
    assert_eq!(answer["id"], "r-1");
    assert_eq!(answer["model_version"], metadata.version.as_str());
    let flat = |pick: &dyn Fn(&Value) -> Value| -> Value {
        Value::Array(
            v1["forecasts"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|f| pick(f).as_array().unwrap().clone())
                .collect(),
        )
    };
    assert_eq!(answer["outputs"][0]["data"], flat(&|f| f["values"].clone()));
    assert_eq!(
        answer["outputs"][1]["data"],
        flat(&|f| f["intervals"][0]["lower"].clone())
    );
    assert_eq!(
        answer["outputs"][2]["data"],
        flat(&|f| f["intervals"][0]["upper"].clone())
    );
    // AND the metadata names the interval outputs of every level the model serves
    let described: Value = reqwest::get(server.url(&format!("/v2/models/{}", metadata.name)))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let names: Vec<&str> = described["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap())
        .collect();
    assert!(
        names.contains(&"lower_80") && names.contains(&"upper_95"),
        "{names:?}"
    );
    server.stop().await;
}

/// The model of a directory, loaded.
fn model_in(dir: &std::path::Path) -> lstm_forecast::model::Model {
    let artifacts = lstm_forecast::source::DirectorySource::new(dir.to_path_buf())
        .read()
        .unwrap();
    lstm_forecast::model::Model::load(&artifacts).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_challenger_in_canary_or_in_shadow_is_addressed_by_its_version() {
    use lstm_forecast::infer::InferenceHandle;
    use lstm_forecast::monitor::store::ForecastRole;
    use lstm_forecast::service::shadow::Shadow;
    // GIVEN live, a canary challenger 2.0.0 on half the series, and 3.0.0 in live's shadow
    let server = TestServer::bundled().await;
    let name = bundled_model().metadata().name.clone();
    let canary = common::challenge::weakened_bundled("2.0.0", 0.7);
    let shadowed = common::challenge::weakened_bundled("3.0.0", 0.5);
    let (canary_handle, _engine) = InferenceHandle::spawn(model_in(canary.path()), 64);
    server.service.set_canary(Some((canary_handle, 0.5)));
    server.service.set_shadow(Some(Shadow::start(
        model_in(shadowed.path()),
        ForecastRole::Challenger,
        0.5,
    )));
    // THEN the model's metadata lists all three, and each answers when named
    let described: Value = reqwest::get(server.url(&format!("/v2/models/{name}")))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        described["versions"],
        json!(["1.0.0", "2.0.0", "3.0.0"]),
        "{described}"
    );
    let body = infer_body(&[window(0.0)], json!([{"name": "forecast"}]));
    let mut forecasts = Vec::new();
    for version in ["1.0.0", "2.0.0", "3.0.0"] {
        let path = format!("/v2/models/{name}/versions/{version}/infer");
        let (status, answer) = infer(&server, &path, &body).await;
        assert_eq!(status, 200, "{version}: {answer}");
        assert_eq!(answer["model_version"], version, "{answer}");
        forecasts.push(answer["outputs"][0]["data"].clone());
    }
    assert!(
        forecasts[0] != forecasts[1] && forecasts[1] != forecasts[2],
        "three different networks answered"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_quantile_network_answers_its_interval_outputs_as_v1_does() {
    let server = TestServer::start(
        common::fixture_model("quantile-lstm"),
        lstm_forecast::service::Limits::default(),
        64,
    )
    .await;
    let windows = [window(0.0), window(2.0)];
    let v1 = common::post_json(
        &reqwest::Client::new(),
        &server.url("/v1/forecast"),
        &json!({"intervals": [0.8], "series": forecast_body(&windows)["series"]}),
    )
    .await;
    let outputs = json!([{"name": "lower_80"}, {"name": "forecast"}, {"name": "upper_80"}]);
    let (status, answer) = infer(
        &server,
        "/v2/models/quantile-lstm/infer",
        &infer_body(&windows, outputs),
    )
    .await;
    assert_eq!(status, 200, "{answer}");
    let column = |f: &dyn Fn(&Value) -> &Value| -> Vec<Value> {
        v1["forecasts"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|s| f(s).as_array().unwrap().clone())
            .collect()
    };
    assert_eq!(
        answer["outputs"][0]["data"],
        json!(column(&|s| &s["intervals"][0]["lower"]))
    );
    assert_eq!(
        answer["outputs"][1]["data"],
        json!(column(&|s| &s["values"]))
    );
    assert_eq!(
        answer["outputs"][2]["data"],
        json!(column(&|s| &s["intervals"][0]["upper"]))
    );
    server.stop().await;
}

#[tokio::test]
async fn bad_infer_requests_get_the_protocols_error_naming_the_problem() {
    let server = TestServer::bundled().await;
    let name = bundled_model().metadata().name.clone();
    let infer_path = format!("/v2/models/{name}/infer");
    let good = infer_body(&[window(0.0)], json!([{"name": "forecast"}]));
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut body = good.clone();
        edit(&mut body);
        body
    };
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "no inputs",
            json!({"id": "x"}),
            400,
            "missing field `inputs`",
        ),
        (
            "an unknown input",
            with(&|b| b["inputs"][1]["name"] = "colour".into()),
            400,
            "unknown input `colour`",
        ),
        (
            "a wrong datatype",
            with(&|b| b["inputs"][0]["datatype"] = "INT8".into()),
            400,
            "send FP64 or FP32",
        ),
        (
            "a short window",
            with(&|b| b["inputs"][0]["shape"] = json!([1, 100, 1])),
            400,
            "has 100 rows per series",
        ),
        (
            "data that does not fill the shape",
            with(&|b| b["inputs"][0]["shape"] = json!([2, 168, 1])),
            400,
            "its shape [2, 168, 1] needs 336",
        ),
        (
            "an unknown output",
            with(&|b| b["outputs"] = json!([{"name": "mean"}])),
            400,
            "unknown output `mean`",
        ),
        (
            "an uncalibrated level",
            with(&|b| b["outputs"] = json!([{"name": "lower_50"}])),
            422,
            "0.5",
        ),
        (
            "a repeated series id",
            with(&|b| {
                b["inputs"][0]["shape"] = json!([2, 168, 1]);
                b["inputs"][0]["data"] = json!([window(0.0), window(1.0)].concat());
                b["inputs"][1]["shape"] = json!([2]);
                b["inputs"][1]["data"] = json!(["a", "a"]);
            }),
            400,
            "repeats series[0].id",
        ),
        (
            "a bad timestamp",
            with(&|b| {
                b["inputs"].as_array_mut().unwrap().push(
            json!({"name": "last_timestamp", "datatype": "BYTES", "shape": [1], "data": ["yesterday"]}))
            }),
            400,
            "input `last_timestamp`[0] `yesterday` is not an RFC 3339 timestamp",
        ),
    ];
    for (what, body, status, mentions) in cases {
        let (got, answer) = infer(&server, &infer_path, &body).await;
        assert_eq!(got, status, "{what}: {answer}");
        let message = answer["error"]
            .as_str()
            .unwrap_or_else(|| panic!("{what}: {answer}"));
        assert!(message.contains(mentions), "{what}: {message}");
    }
    // AND the server metadata answers at `/v2/` too, as the protocol's own document writes it
    // (a Schemathesis finding)
    for path in ["/v2", "/v2/"] {
        let metadata: Value = reqwest::get(server.url(path))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(metadata["name"], "lstm-forecast", "{path}: {metadata}");
    }
    // AND an unknown model or version is a 404 in the protocol's shape
    for path in [
        "/v2/models/other/infer".to_owned(),
        format!("/v2/models/{name}/versions/0.0.0-missing/infer"),
    ] {
        let (status, answer) = infer(&server, &path, &good).await;
        assert_eq!(status, 404, "{path}: {answer}");
        assert!(answer["error"].is_string(), "{answer}");
    }
    // AND a binary input whose float is not finite is named by its place
    let mut bytes = window(0.0)
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect::<Vec<u8>>();
    bytes[8 * 5..8 * 6].copy_from_slice(&f64::NAN.to_le_bytes());
    let header = json!({"inputs": [{"name": "window", "datatype": "FP64", "shape": [1, 168, 1],
                                     "parameters": {"binary_data_size": bytes.len()}}]})
    .to_string();
    let response = reqwest::Client::new()
        .post(server.url(&infer_path))
        .header("inference-header-content-length", header.len())
        .body([header.as_bytes(), &bytes].concat())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let answer: Value = response.json().await.unwrap();
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("`window`[0][5][0] is not a finite number"),
        "{answer}"
    );
    server.stop().await;
}
