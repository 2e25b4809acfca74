//! A Lambda Runtime API test double that also speaks SnapStart's `GET /runtime/restore/next`,
//! which cargo-lambda's emulator does not implement.
//!
//! It drives the real function binary through SnapStart's life, as Lambda does:
//! init → the runtime's `before_snapshot` hooks → `GET /restore/next` (the double holds the
//! answer: this is where Lambda takes the snapshot) → [`RuntimeApiDouble::restore`] releases it →
//! `after_restore` hooks → `GET /invocation/next` for events.
//!
//! It also serves the container credentials endpoint (`AWS_CONTAINER_CREDENTIALS_FULL_URI`), which
//! is how Lambda hands a SnapStart environment its credentials, and counts the fetches: an SDK
//! client that outlives the restore keeps its cached credentials and never asks again.
//!
//! What no double can do is copy a process's memory into two environments. A test gives two
//! processes the same start (the same `SAMPLING_SEED`) to stand for two restores of one snapshot.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use serde_json::{json, Value};
use tokio::sync::{oneshot, watch, Notify};

#[derive(Default)]
struct Shared {
    /// Set once the function asks for `/restore/next`: init and `before_snapshot` are done.
    snapshot_requested: Option<watch::Sender<bool>>,
    /// Set by the test to let `/restore/next` answer.
    restored: Option<watch::Sender<bool>>,
    events: Mutex<VecDeque<(String, Value)>>,
    event_ready: Notify,
    waiting: Mutex<HashMap<String, oneshot::Sender<Result<Value, Value>>>>,
    /// `(path, body)` of every `/init/error` and `/restore/error` report.
    errors: Mutex<Vec<(String, Value)>>,
    credential_fetches: AtomicUsize,
    next_id: AtomicUsize,
}

pub struct RuntimeApiDouble {
    pub port: u16,
    shared: Arc<Shared>,
    server: tokio::task::JoinHandle<()>,
}

impl RuntimeApiDouble {
    pub async fn start() -> Self {
        let shared = Arc::new(Shared {
            snapshot_requested: Some(watch::channel(false).0),
            restored: Some(watch::channel(false).0),
            ..Shared::default()
        });
        let app = axum::Router::new()
            .route("/2018-06-01/runtime/restore/next", get(restore_next))
            .route("/2018-06-01/runtime/invocation/next", get(invocation_next))
            .route(
                "/2018-06-01/runtime/invocation/{id}/response",
                post(invocation_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{id}/error",
                post(invocation_error),
            )
            .route("/2018-06-01/runtime/init/error", post(init_error))
            .route("/2018-06-01/runtime/restore/error", post(restore_error))
            .route("/credentials", get(credentials))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        RuntimeApiDouble {
            port,
            shared,
            server,
        }
    }

    /// `AWS_LAMBDA_RUNTIME_API` for the function.
    pub fn runtime_api(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Environment for a function under this double with SnapStart on: the runtime address, the
    /// initialisation type, and credentials from the container endpoint only.
    pub fn snapstart_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_LAMBDA_INITIALIZATION_TYPE", "snap-start".into()),
            (
                "AWS_CONTAINER_CREDENTIALS_FULL_URI",
                format!("http://127.0.0.1:{}/credentials", self.port),
            ),
        ]
    }

    /// Waits until the function asks for `/restore/next`, the point where Lambda snapshots it.
    pub async fn snapshot_taken(&self, within: Duration) {
        let mut requested = self.shared.snapshot_requested.as_ref().unwrap().subscribe();
        tokio::time::timeout(within, requested.wait_for(|r| *r))
            .await
            .expect("the function never asked for /restore/next")
            .unwrap();
    }

    /// Answers `/restore/next`: the environment is restored. Returns when that was.
    pub fn restore(&self) -> Instant {
        let at = Instant::now();
        self.shared.restored.as_ref().unwrap().send_replace(true);
        at
    }

    /// Sends one event and waits for the function's answer: `Ok(response)` or `Err(error)`.
    pub async fn invoke(&self, event: &Value) -> Result<Value, Value> {
        let id = format!(
            "req-{}",
            self.shared.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let (answer, answered) = oneshot::channel();
        self.shared
            .waiting
            .lock()
            .unwrap()
            .insert(id.clone(), answer);
        self.shared
            .events
            .lock()
            .unwrap()
            .push_back((id, event.clone()));
        self.shared.event_ready.notify_one();
        tokio::time::timeout(Duration::from_secs(60), answered)
            .await
            .expect("the function did not answer within 60 s")
            .expect("the double dropped the invocation")
    }

    /// Times the container credentials endpoint was asked.
    pub fn credential_fetches(&self) -> usize {
        self.shared.credential_fetches.load(Ordering::Relaxed)
    }

    /// Every `/init/error` and `/restore/error` report, as `(path, body)`.
    pub fn errors(&self) -> Vec<(String, Value)> {
        self.shared.errors.lock().unwrap().clone()
    }
}

impl Drop for RuntimeApiDouble {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn restore_next(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    shared
        .snapshot_requested
        .as_ref()
        .unwrap()
        .send_replace(true);
    let mut restored = shared.restored.as_ref().unwrap().subscribe();
    let _ = restored.wait_for(|r| *r).await;
    StatusCode::OK
}

async fn invocation_next(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    loop {
        let ready = shared.event_ready.notified();
        if let Some((id, event)) = shared.events.lock().unwrap().pop_front() {
            let deadline_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis()
                + 60_000;
            let mut headers = HeaderMap::new();
            headers.insert("lambda-runtime-aws-request-id", id.parse().unwrap());
            headers.insert(
                "lambda-runtime-deadline-ms",
                deadline_ms.to_string().parse().unwrap(),
            );
            headers.insert(
                "lambda-runtime-invoked-function-arn",
                "arn:aws:lambda:us-east-1:123456789012:function:lstm-forecast:live"
                    .parse()
                    .unwrap(),
            );
            headers.insert(
                "lambda-runtime-trace-id",
                "Root=1-00000000-000000000000000000000000".parse().unwrap(),
            );
            return (headers, axum::Json(event));
        }
        ready.await;
    }
}

async fn answer(shared: &Shared, id: &str, outcome: Result<Value, Value>) -> StatusCode {
    match shared.waiting.lock().unwrap().remove(id) {
        Some(waiting) => {
            let _ = waiting.send(outcome);
            StatusCode::ACCEPTED
        }
        None => StatusCode::NOT_FOUND,
    }
}

fn json_or_text(body: &[u8]) -> Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(body).into()))
}

async fn invocation_response(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> StatusCode {
    answer(&shared, &id, Ok(json_or_text(&body))).await
}

async fn invocation_error(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> StatusCode {
    answer(&shared, &id, Err(json_or_text(&body))).await
}

async fn init_error(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> StatusCode {
    shared
        .errors
        .lock()
        .unwrap()
        .push(("/init/error".into(), json_or_text(&body)));
    StatusCode::ACCEPTED
}

async fn restore_error(State(shared): State<Arc<Shared>>, body: axum::body::Bytes) -> StatusCode {
    shared
        .errors
        .lock()
        .unwrap()
        .push(("/restore/error".into(), json_or_text(&body)));
    StatusCode::ACCEPTED
}

/// Fresh credentials valid for an hour: longer than any test, so a client that kept its cache
/// would never ask again.
async fn credentials(State(shared): State<Arc<Shared>>) -> axum::Json<Value> {
    let n = shared.credential_fetches.fetch_add(1, Ordering::Relaxed);
    let expiration = chrono::Utc::now() + chrono::Duration::hours(1);
    axum::Json(json!({
        "AccessKeyId": format!("ASIATESTING{n:05}"),
        "SecretAccessKey": "testing",
        "Token": format!("token-{n}"),
        "Expiration": expiration.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    }))
}
