//! Dynamic batching, overload protection and a model swap under load, on the real server.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use common::{bundled_model, forecast_body, window};
use lstm_forecast::infer::{Batching, InferenceHandle};
use lstm_forecast::service::{Limits, Service};
use serde_json::{json, Value};

async fn server(batching: Batching, max_queue: usize) -> (String, Service) {
    server_with_engine_threads(batching, max_queue, 1).await
}

async fn server_with_engine_threads(
    batching: Batching,
    max_queue: usize,
    engine_threads: usize,
) -> (String, Service) {
    let (handle, _engine) =
        InferenceHandle::spawn_with(bundled_model(), max_queue, batching, engine_threads);
    let state = Service::unmonitored(handle, Limits::default());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(lstm_forecast::http::serve(
        listener,
        state.clone(),
        std::future::pending(),
    ));
    (base, state)
}

fn metric(text: &str, name: &str) -> f64 {
    common::metric_value(text, name).unwrap_or_else(|| panic!("{name} not in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_share_forward_passes_and_get_the_unbatched_answers() {
    concurrent_requests_share_forward_passes_on(1).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_engine_threads_taking_batches_from_one_queue_give_the_same_answers() {
    concurrent_requests_share_forward_passes_on(2).await;
}

async fn concurrent_requests_share_forward_passes_on(engine_threads: usize) {
    // GIVEN a server that lets a request wait up to 50 ms for company
    let (base, _state) = server_with_engine_threads(
        Batching {
            max_batch_series: 64,
            max_delay: Duration::from_millis(50),
            ..Batching::default()
        },
        64,
        engine_threads,
    )
    .await;
    let client = reqwest::Client::new();
    // WHEN 16 clients send one series each at the same time
    let requests = (0..16).map(|i| {
        let client = client.clone();
        let url = format!("{base}/v1/forecast");
        async move {
            let answer: Value =
                common::post_json(&client, &url, &forecast_body(&[window(i as f64 * 0.3)])).await;
            common::f64s(&answer["forecasts"][0]["values"])
        }
    });
    let batched: Vec<Vec<f64>> = common::spawn_all(requests).await;
    // THEN they shared forward passes ...
    let metrics = common::get_text(&client, &format!("{base}/metrics")).await;
    let passes = metric(&metrics, "lstm_forecast_batch_windows_count");
    let windows = metric(&metrics, "lstm_forecast_batch_windows_sum");
    assert!(
        windows / passes > 1.5,
        "mean windows per pass {windows}/{passes}"
    );
    // ... and each got the answer it gets alone
    let alone = bundled_model();
    for (i, values) in batched.iter().enumerate() {
        let expected = alone.forecast(&[window(i as f64 * 0.3)]).unwrap().remove(0);
        for (got, want) in values.iter().zip(&expected) {
            assert!(
                (got - want).abs() <= 1e-5 * want.abs().max(1.0),
                "request {i}: batched {got} vs alone {want}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_bad_request_batched_with_good_ones_fails_alone() {
    let (base, _state) = server(
        Batching {
            max_batch_series: 64,
            max_delay: Duration::from_millis(50),
            ..Batching::default()
        },
        64,
    )
    .await;
    let client = reqwest::Client::new();
    let mut bad = window(0.0);
    bad[167] = 1e300; // finite JSON, but overflows the network's f32 input
    let bodies: Vec<Value> = (0..6)
        .map(|i| {
            if i == 3 {
                forecast_body(&[bad.clone()])
            } else {
                forecast_body(&[window(i as f64)])
            }
        })
        .collect();
    let statuses = common::spawn_all(bodies.into_iter().map(|body| {
        let client = client.clone();
        let url = format!("{base}/v1/forecast");
        async move {
            client
                .post(url)
                .json(&body)
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    }))
    .await;
    assert_eq!(statuses, vec![200, 200, 200, 400, 200, 200]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn beyond_the_queue_bound_requests_get_429_with_retry_after_and_nothing_else_fails() {
    // One request may wait; each takes a while (256 series), and batching is off.
    let (base, _state) = server(Batching::DISABLED, 1).await;
    let client = reqwest::Client::new();
    let big = forecast_body(&(0..256).map(|i| window(i as f64)).collect::<Vec<_>>());
    let responses = common::spawn_all((0..12).map(|_| {
        let client = client.clone();
        let url = format!("{base}/v1/forecast");
        let body = big.clone();
        async move {
            let r = client.post(url).json(&body).send().await.unwrap();
            (
                r.status().as_u16(),
                r.headers()
                    .get("retry-after")
                    .map(|v| v.to_str().unwrap().to_string()),
            )
        }
    }))
    .await;
    let overloaded: Vec<_> = responses.iter().filter(|(s, _)| *s == 429).collect();
    assert!(!overloaded.is_empty(), "{responses:?}");
    assert!(overloaded
        .iter()
        .all(|(_, retry)| retry.as_deref() == Some("1")));
    assert!(
        responses.iter().all(|(s, _)| *s == 200 || *s == 429),
        "{responses:?}"
    );
    let health = client.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn swapping_the_model_under_load_fails_no_request_and_mixes_no_versions() {
    // Two engine threads, as `serve` runs on two CPUs: batches on both straddle the swaps.
    let (base, state) = server_with_engine_threads(Batching::default(), 256, 2).await;
    // GIVEN 5 new versions whose forecasts differ (without `subtract_last`, each version's z-score
    // mean moves its forecasts), and what each version answers for one fixed series
    let versions: Vec<lstm_forecast::model::ModelArtifacts> = (0..5)
        .map(|swap| {
            let mut artifacts = common::bundled_artifacts();
            let mut metadata: Value = serde_json::from_slice(&artifacts.metadata_json).unwrap();
            metadata["version"] = format!("swap-{swap}").into();
            metadata["preprocessing"] = json!([
                {"kind": "z_score", "mean": [5.0 * swap as f64], "std": [9.0]}
            ]);
            artifacts.metadata_json = serde_json::to_vec(&metadata).unwrap();
            artifacts
        })
        .collect();
    let fixed = window(1.0);
    let mut expected: std::collections::HashMap<String, Vec<f64>> = versions
        .iter()
        .map(|artifacts| {
            let model = lstm_forecast::model::Model::load(artifacts).unwrap();
            let answer = model.forecast(&[fixed.as_slice()]).unwrap().remove(0);
            (model.metadata().version.clone(), answer)
        })
        .collect();
    let original = bundled_model();
    expected.insert(
        original.metadata().version.clone(),
        original.forecast(&[fixed.as_slice()]).unwrap().remove(0),
    );
    let firsts: Vec<f64> = expected.values().map(|values| values[0]).collect();
    for (i, a) in firsts.iter().enumerate() {
        for b in &firsts[i + 1..] {
            assert!(
                (a - b).abs() > 1e-3,
                "two versions forecast alike: {firsts:?}"
            );
        }
    }
    // ... and a background task that swaps them in, one after the other
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let swapper = {
        let (state, done) = (state.clone(), done.clone());
        tokio::task::spawn_blocking(move || {
            for artifacts in &versions {
                let model = lstm_forecast::model::Model::load(artifacts).unwrap();
                state.handle().swap_model(model);
                std::thread::sleep(Duration::from_millis(20));
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
        })
    };
    // WHEN 8 clients keep forecasting until the swaps are over
    let client = reqwest::Client::new();
    let expected = Arc::new(expected);
    let results = common::spawn_all((0..8).map(|c| {
        let (client, done, expected, fixed) =
            (client.clone(), done.clone(), expected.clone(), fixed.clone());
        let url = format!("{base}/v1/forecast");
        async move {
            let mut seen = Vec::new();
            let mut i = 0;
            while !done.load(std::sync::atomic::Ordering::Relaxed) || i < 5 {
                let body = json!({"series": [{"id": "a", "values": window((c * 1000 + i) as f64)}, {"id": "b", "values": fixed}]});
                let r = client.post(&url).json(&body).send().await.unwrap();
                // THEN every request succeeds, whole ...
                assert_eq!(r.status(), 200);
                let answer: Value = r.json().await.unwrap();
                assert_eq!(answer["forecasts"].as_array().unwrap().len(), 2);
                // ... and from the one version it names: the fixed series gets that version's
                // forecast, so a batch run on one model and labelled with another would show
                let version = answer["model"]["version"].as_str().unwrap().to_string();
                let got = common::f64s(&answer["forecasts"][1]["values"]);
                let want = &expected[&version];
                for (g, w) in got.iter().zip(want) {
                    assert!(
                        (g - w).abs() <= 1e-4 * w.abs().max(1.0),
                        "labelled {version}, but forecast {got:?} is not {version}'s {want:?}"
                    );
                }
                seen.push(version);
                i += 1;
            }
            seen
        }
    }))
    .await;
    swapper.await.unwrap();
    let versions: std::collections::BTreeSet<String> = results.into_iter().flatten().collect();
    assert!(
        versions.len() >= 2,
        "answers came from several versions: {versions:?}"
    );
    let ready = client.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_too_big_to_join_a_batch_is_answered_even_when_no_other_request_follows() {
    // GIVEN two engine threads that gather for up to 50 ms, 64 series per pass
    let (base, _state) = server_with_engine_threads(
        Batching {
            max_batch_series: 64,
            max_delay: Duration::from_millis(50),
            ..Batching::default()
        },
        64,
        2,
    )
    .await;
    let client = reqwest::Client::new();
    // WHEN a 60-series request and a 10-series one arrive together (they cannot share a pass),
    // and nothing comes after them
    let bodies = [
        forecast_body(&(0..60).map(|i| window(i as f64)).collect::<Vec<_>>()),
        forecast_body(&(0..10).map(|i| window(i as f64)).collect::<Vec<_>>()),
    ];
    let answered = common::spawn_all(bodies.into_iter().map(|body| {
        let client = client.clone();
        let url = format!("{base}/v1/forecast");
        async move {
            let answer: Value = common::post_json(&client, &url, &body).await;
            answer["forecasts"].as_array().unwrap().len()
        }
    }));
    // THEN both are answered, the second without waiting for a third request to wake the queue
    let counts = tokio::time::timeout(Duration::from_secs(20), answered)
        .await
        .expect("the request left over from a full batch was never answered");
    assert_eq!(counts, vec![60, 10]);
}

/// Series in the forward that holds the first engine thread: long enough (about a second on 2
/// vCPUs) that the requests a test sends meanwhile arrive before it ends, even while the other
/// tests of the binary load both CPUs.
const LONG_FORWARD_SERIES: usize = 4096;

/// Two engine threads with the server's default batching, the first of them held in one forward
/// for about a second (a request larger than a batch runs alone). Returns the handle
/// and that request, which answers with its forward's window count.
async fn two_engine_threads_one_in_a_long_forward(
) -> (InferenceHandle, tokio::task::JoinHandle<usize>) {
    let (handle, _engine) =
        InferenceHandle::spawn_with(bundled_model(), 128, Batching::default(), 2);
    let long = tokio::spawn({
        let handle = handle.clone();
        async move {
            let series = (0..LONG_FORWARD_SERIES)
                .flat_map(|i| lone_series(i as f64 * 0.01))
                .collect();
            handle.forecast(series).await.unwrap().batch_windows
        }
    });
    while handle.forwards_running() == 0 {
        tokio::task::yield_now().await;
    }
    (handle, long)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_arriving_during_a_forward_share_the_next_one_instead_of_running_beside_it() {
    // GIVEN two engine threads that batch only what is queued (the server's defaults), one of
    // them in a long forward
    let (handle, long) = two_engine_threads_one_in_a_long_forward().await;
    // WHEN three lone requests arrive meanwhile, 5 ms apart, while the other engine thread is free
    let mut lone = Vec::new();
    for i in 0..3 {
        lone.push(tokio::spawn({
            let handle = handle.clone();
            async move { handle.forecast(lone_series(i as f64 * 0.3)).await.unwrap() }
        }));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // THEN they wait and share one forward, rather than the first running alone beside it
    for (i, outcome) in lone.into_iter().enumerate() {
        assert_eq!(outcome.await.unwrap().batch_windows, 3, "lone request {i}");
    }
    assert_eq!(long.await.unwrap(), LONG_FORWARD_SERIES);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_forwards_worth_of_waiting_requests_wakes_a_second_engine_thread() {
    // GIVEN two engine threads, one of them in a long forward
    let (handle, long) = two_engine_threads_one_in_a_long_forward().await;
    // WHEN 12 requests arrive meanwhile
    let crowd: Vec<_> = (0..12)
        .map(|i| {
            let handle = handle.clone();
            tokio::spawn(async move { handle.forecast(lone_series(i as f64 * 0.3)).await })
        })
        .collect();
    // THEN the second engine thread answers them all while the first is still busy: had they
    // waited for it, they would end after the long forward. (Judged by what finished first, not by
    // catching both forwards running at one instant, which a poll starved of CPU by the other
    // tests of this binary can miss.)
    for request in crowd {
        request.await.unwrap().unwrap();
    }
    assert!(
        !long.is_finished(),
        "the crowd waited for the long forward: no second engine thread took it"
    );
    assert_eq!(long.await.unwrap(), LONG_FORWARD_SERIES);
    drop(handle);
}

fn lone_series(phase: f64) -> Vec<lstm_forecast::forecast::SeriesInput> {
    vec![lstm_forecast::forecast::SeriesInput {
        id: None,
        values: window(phase),
        last_timestamp: None,
    }]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lone_request_takes_the_low_latency_engine_and_a_crowd_batches_on_the_others() {
    // GIVEN two engine threads and a low-latency engine thread of two intra-op threads
    let (handle, _engine) =
        InferenceHandle::spawn_adaptive(bundled_model(), 128, Batching::default(), 2, Some(2));
    // WHEN requests come one at a time
    let mut alone = Vec::new();
    for i in 0..20 {
        let outcome = handle.forecast(lone_series(i as f64 * 0.3)).await.unwrap();
        // THEN after the first few (the lane opens once a few requests in a row found the engine
        // idle) each goes straight to the low-latency engine, in a forward of its own
        assert_eq!(outcome.low_latency, i >= 3, "request {i}");
        assert_eq!(outcome.batch_windows, 1);
        alone.push(outcome.response.forecasts[0].values.clone());
    }
    // WHEN the same 20 requests, three times over, arrive at once
    let crowd = futures_util::future::join_all((0..60).map(|i| {
        let handle = handle.clone();
        async move {
            handle
                .forecast(lone_series((i % 20) as f64 * 0.3))
                .await
                .unwrap()
        }
    }))
    .await;
    // THEN most ride the batching queue and share forwards, the low-latency engine takes at most
    // the few that found the server idle, and every answer is the one it got alone
    let low_latency = crowd.iter().filter(|o| o.low_latency).count();
    assert!(
        low_latency < 20,
        "{low_latency} of 60 took the low-latency engine"
    );
    assert!(
        crowd.iter().any(|o| o.batch_windows > 1),
        "nothing was batched"
    );
    for (i, outcome) in crowd.iter().enumerate() {
        for (got, want) in outcome.response.forecasts[0]
            .values
            .iter()
            .zip(&alone[i % 20])
        {
            assert!(
                (got - want).abs() <= 1e-4 * want.abs().max(1.0),
                "request {i}: {got} against {want} alone"
            );
        }
    }
}
