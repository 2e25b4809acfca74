//! Shared test helpers: a real server on 127.0.0.1:0 with the real bundled model.

use std::path::PathBuf;

use lstm_forecast::http;
use lstm_forecast::infer::InferenceHandle;
use lstm_forecast::metrics::ServerMetrics;
use lstm_forecast::model::{Model, ModelArtifacts};
use lstm_forecast::service::{Limits, Monitoring, Service};
use tokio::sync::oneshot;

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// SNS topics and SQS queues on an emulator, set up and read with boto3
/// (tests/notifications/sns_sqs.py): `subscribe ENDPOINT TOPIC` or `receive ENDPOINT QUEUE_URL`.
pub fn sns_sqs(args: &[&str]) -> serde_json::Value {
    python_json(&[&["tests/notifications/sns_sqs.py"], args].concat())
}

/// The notifications in the SQS queue at `queue_url` (on the emulator at `endpoint`), once at
/// least one has arrived (within 10 s, else a failure naming `what`).
pub async fn notifications_arriving(
    endpoint: &str,
    queue_url: &str,
    what: &str,
) -> serde_json::Value {
    eventually(std::time::Duration::from_secs(10), what, || async {
        let received = sns_sqs(&["receive", endpoint, queue_url]);
        (!received.as_array().unwrap().is_empty()).then_some(received)
    })
    .await
}

/// The JSON body of an API Gateway proxy response.
pub fn proxy_body(response: &serde_json::Value) -> serde_json::Value {
    serde_json::from_str(
        response["body"]
            .as_str()
            .expect("a proxy response has a body"),
    )
    .unwrap()
}

/// Runs every future as its own task, at once, and collects their outputs in order.
pub async fn spawn_all<F, T>(futures: impl Iterator<Item = F>) -> Vec<T>
where
    F: std::future::Future<Output = T> + Send + 'static,
    T: Send + 'static,
{
    let handles: Vec<_> = futures.map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for handle in handles {
        out.push(handle.await.unwrap());
    }
    out
}

pub fn bundled_artifacts() -> ModelArtifacts {
    lstm_forecast::source::bundled_artifacts()
}

/// A model of `tests/fixtures/` (the quantile networks, a broken export, ...), loaded.
pub fn fixture_model(name: &str) -> Model {
    let artifacts =
        lstm_forecast::source::DirectorySource::new(repo_path(&format!("tests/fixtures/{name}")))
            .read()
            .unwrap();
    Model::load(&artifacts).unwrap()
}

pub fn bundled_model() -> Model {
    lstm_forecast::model::engine::configure_libtorch(
        Some(1),
        lstm_forecast::model::engine::Workload::OneAtATime,
    );
    Model::load(&bundled_artifacts()).expect("the bundled model loads")
}

/// The bundled model as published without `model.onnx`: every forward on libtorch.
pub fn bundled_model_on_libtorch() -> Model {
    let mut artifacts = bundled_artifacts();
    let mut metadata: serde_json::Value = serde_json::from_slice(&artifacts.metadata_json).unwrap();
    metadata.as_object_mut().unwrap().remove("onnx_sha256");
    artifacts.metadata_json = serde_json::to_vec(&metadata).unwrap();
    artifacts.model_onnx = None;
    let model = Model::load(&artifacts).expect("the bundled model loads without model.onnx");
    assert_eq!(
        model.forward_engine(),
        lstm_forecast::model::ForwardEngine::Libtorch
    );
    model
}

/// A running server; dropping it without `stop` leaves the task to die with the runtime.
pub struct TestServer {
    pub base: String,
    pub service: Service,
    shutdown: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl TestServer {
    pub async fn start(model: Model, limits: Limits, max_queue: usize) -> Self {
        Self::start_with(
            model,
            limits,
            max_queue,
            ServerMetrics::new(),
            Default::default(),
        )
        .await
    }

    pub async fn start_with(
        model: Model,
        limits: Limits,
        max_queue: usize,
        metrics: ServerMetrics,
        monitoring: Monitoring,
    ) -> Self {
        let (handle, _engine_thread) = InferenceHandle::spawn(model, max_queue);
        let service = Service::new(handle, metrics, limits, monitoring);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (shutdown, stop) = oneshot::channel::<()>();
        let task = tokio::spawn(http::serve(listener, service.clone(), async {
            let _ = stop.await;
        }));
        TestServer {
            base,
            service,
            shutdown: Some(shutdown),
            task,
        }
    }

    pub async fn bundled() -> Self {
        Self::start(bundled_model(), Limits::default(), 64).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        self.task.await.unwrap().unwrap();
    }
}

/// `n` ETTh1-like windows of 168 hourly values (a daily cycle around 15 degrees).
pub fn window(phase: f64) -> Vec<f64> {
    (0..168)
        .map(|t| 15.0 + 4.0 * ((t as f64) * std::f64::consts::TAU / 24.0 + phase).sin())
        .collect()
}

pub fn forecast_body(windows: &[Vec<f64>]) -> serde_json::Value {
    serde_json::json!({
        "series": windows.iter().enumerate().map(|(i, w)| serde_json::json!({"id": format!("s{i}"), "values": w})).collect::<Vec<_>>()
    })
}
pub mod api_gateway;
pub mod challenge;
pub mod emulators;
pub use emulators::python_json;
pub mod fleet;
pub mod history;
pub mod observe;
pub mod replay;
pub mod runtime_api;
pub mod serve;
pub mod shards;
pub mod template;

// Each test binary uses some of these; the others are not dead code.
#[allow(unused_imports)]
pub use emulators::outcome;
#[allow(unused_imports)]
pub use observe::{emf_values, Collected};
pub use serve::{metric_sum, metric_value, ServeProcess};

/// POSTs a JSON body and returns the JSON answer, whatever its status.
pub async fn post_json(
    client: &reqwest::Client,
    url: &str,
    body: &serde_json::Value,
) -> serde_json::Value {
    client
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// GETs a URL's body as text (a `/metrics` scrape).
pub async fn get_text(client: &reqwest::Client, url: &str) -> String {
    client.get(url).send().await.unwrap().text().await.unwrap()
}

/// A JSON array of numbers (a forecast's `values`) as f64s.
pub fn f64s(values: &serde_json::Value) -> Vec<f64> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// A copy of the bundled model directory under another version number.
pub fn bundled_as_version(version: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = repo_path("model_artifacts/etth1-ot-lstm");
    for file in ["model.pt", "model.onnx"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    let mut metadata: serde_json::Value =
        serde_json::from_slice(&std::fs::read(source.join("model.json")).unwrap()).unwrap();
    metadata["version"] = version.into();
    std::fs::write(
        dir.path().join("model.json"),
        serde_json::to_vec_pretty(&metadata).unwrap(),
    )
    .unwrap();
    dir
}

/// Polls `check` every 20 ms until it returns `Some`, for at most `within`; panics naming `what`.
/// The way to wait for a condition another process or task brings about, instead of a sleep.
pub async fn eventually<T, F, Fut>(within: std::time::Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what}: not within {within:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `count` windows of the bundled model's own training data (ETTh1 OT, rows before 8,640), each
/// `window` hours long, `stride` hours apart: `(id, last timestamp, values)`.
pub fn etth1_training_windows(
    count: usize,
    window: usize,
    stride: usize,
) -> Vec<(String, String, Vec<f64>)> {
    let rows = replay::etth1_ot();
    (0..count)
        .map(|i| {
            let end = window + i * stride;
            assert!(end <= 8640, "only training rows");
            let slice = &rows[end - window..end];
            (
                format!("series-{i}"),
                slice.last().unwrap().0.clone(),
                slice.iter().map(|(_, v)| *v).collect(),
            )
        })
        .collect()
}

/// The same windows as a CSV file with `id,date,OT` rows, each series' rows together.
pub fn windows_csv(windows: &[(String, String, Vec<f64>)]) -> String {
    let mut csv = String::from("id,date,OT\n");
    for (id, last, values) in windows {
        let last = chrono::DateTime::parse_from_rfc3339(last).unwrap();
        for (k, value) in values.iter().enumerate() {
            let at = last - chrono::Duration::hours((values.len() - 1 - k) as i64);
            csv.push_str(&format!(
                "{id},{},{value}\n",
                at.format("%Y-%m-%d %H:%M:%S")
            ));
        }
    }
    csv
}

/// A copy of the bundled model as `version`, published (and made live) to `registry` with the CLI.
pub fn publish_bundled_as(moto: &emulators::Moto, version: &str, registry: &str) {
    let dir = bundled_as_version(version);
    let (ok, out) = emulators::cli(
        moto,
        &["model", "publish", dir.path().to_str().unwrap(), registry],
    );
    assert!(ok, "publishing {version}: {out}");
}
