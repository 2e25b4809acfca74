//! `make bench`, the protocols table: what the Open Inference Protocol v2 costs against `/v1` on
//! the same server and engine (issue 34's target: OIP p50 at 1 and 64 series <= 1.05x `/v1`),
//! with JSON tensors and with the binary tensor extension reported apart.
//!
//! One in-process HTTP server (`http::serve`) with the bundled model; one client sends the same
//! windows, back to back, through each of the three encodings. Blocks of the three alternate, so
//! machine noise hits all of them alike.

use std::time::Instant;

use lstm_forecast::http;
use lstm_forecast::infer::InferenceHandle;
use lstm_forecast::metrics::ServerMetrics;
use lstm_forecast::model::engine::{configure_libtorch, Workload};
use lstm_forecast::model::Model;
use lstm_forecast::service::{Limits, Monitoring, Service};
use lstm_forecast::source::bundled_artifacts;

const THREADS: usize = 1;
const BLOCKS: usize = 8;
const REQUESTS_PER_BLOCK: [usize; 2] = [150, 25];
const SERIES: [usize; 2] = [1, 64];

/// How a request carries its windows.
#[derive(Clone, Copy)]
enum Encoding {
    V1,
    OipJson,
    OipBinary,
}

struct Request {
    url: String,
    body: Vec<u8>,
    header_length: Option<usize>,
}

fn windows(series: usize, window: usize) -> Vec<Vec<f64>> {
    (0..series)
        .map(|s| {
            (0..window)
                .map(|t| 15.0 + 4.0 * ((t + 3 * s) as f64 * std::f64::consts::TAU / 24.0).sin())
                .collect()
        })
        .collect()
}

fn request(base: &str, model: &str, encoding: Encoding, windows: &[Vec<f64>]) -> Request {
    let ids: Vec<String> = (0..windows.len()).map(|i| format!("meter-{i}")).collect();
    let shape = serde_json::json!([windows.len(), windows[0].len(), 1]);
    match encoding {
        Encoding::V1 => {
            let series: Vec<serde_json::Value> = windows
                .iter()
                .zip(&ids)
                .map(|(w, id)| serde_json::json!({"id": id, "values": w}))
                .collect();
            Request {
                url: format!("{base}/v1/forecast"),
                body: serde_json::to_vec(&serde_json::json!({ "series": series })).unwrap(),
                header_length: None,
            }
        }
        Encoding::OipJson => Request {
            url: format!("{base}/v2/models/{model}/infer"),
            body: serde_json::to_vec(&serde_json::json!({"inputs": [
                {"name": "window", "datatype": "FP64", "shape": shape, "data": windows.concat()},
                {"name": "series_id", "datatype": "BYTES", "shape": [ids.len()], "data": ids}
            ]}))
            .unwrap(),
            header_length: None,
        },
        Encoding::OipBinary => {
            let values: Vec<u8> = windows
                .concat()
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect();
            let id_bytes: Vec<u8> = ids
                .iter()
                .flat_map(|id| {
                    let mut element = (id.len() as u32).to_le_bytes().to_vec();
                    element.extend_from_slice(id.as_bytes());
                    element
                })
                .collect();
            let header = serde_json::to_vec(&serde_json::json!({
                "inputs": [
                    {"name": "window", "datatype": "FP64", "shape": shape,
                     "parameters": {"binary_data_size": values.len()}},
                    {"name": "series_id", "datatype": "BYTES", "shape": [ids.len()],
                     "parameters": {"binary_data_size": id_bytes.len()}}
                ],
                "outputs": [{"name": "forecast", "parameters": {"binary_data": true}}]
            }))
            .unwrap();
            let header_length = header.len();
            Request {
                url: format!("{base}/v2/models/{model}/infer"),
                body: [header, values, id_bytes].concat(),
                header_length: Some(header_length),
            }
        }
    }
}

async fn time_block(client: &reqwest::Client, request: &Request, count: usize) -> Vec<f64> {
    let mut samples = Vec::with_capacity(count);
    for _ in 0..count {
        let mut call = client.post(&request.url).body(request.body.clone());
        call = match request.header_length {
            Some(length) => call
                .header("content-type", "application/octet-stream")
                .header("inference-header-content-length", length),
            None => call.header("content-type", "application/json"),
        };
        let started = Instant::now();
        let response = call.send().await.unwrap();
        assert!(response.status().is_success(), "{}", response.status());
        response.bytes().await.unwrap();
        samples.push(started.elapsed().as_secs_f64());
    }
    samples
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

async fn measure() -> Vec<(usize, [f64; 3])> {
    let model = Model::load(&bundled_artifacts()).unwrap();
    let (name, window) = (model.metadata().name.clone(), model.metadata().input.window);
    let (handle, _engine) = InferenceHandle::spawn(model, 64);
    let service = Service::new(
        handle,
        ServerMetrics::new(),
        Limits::default(),
        Monitoring::default(),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(http::serve(listener, service, std::future::pending()));
    let client = reqwest::Client::new();
    let encodings = [Encoding::V1, Encoding::OipJson, Encoding::OipBinary];
    let mut rows = Vec::new();
    for (series, per_block) in SERIES.into_iter().zip(REQUESTS_PER_BLOCK) {
        let windows = windows(series, window);
        let requests: Vec<Request> = encodings
            .iter()
            .map(|&e| request(&base, &name, e, &windows))
            .collect();
        for request in &requests {
            time_block(&client, request, 20).await;
        }
        let mut samples = [Vec::new(), Vec::new(), Vec::new()];
        for block in 0..BLOCKS {
            // Rotate which encoding goes first, so none always follows the same one.
            for k in 0..3 {
                let which = (block + k) % 3;
                samples[which].extend(time_block(&client, &requests[which], per_block).await);
            }
        }
        rows.push((series, samples.map(|mut s| median(&mut s))));
    }
    rows
}

fn main() {
    configure_libtorch(Some(THREADS), Workload::OneAtATime);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let rows = runtime.block_on(measure());
    println!();
    println!("## The Open Inference Protocol v2 against /v1 (bundled model, one client back to back, {THREADS} libtorch thread)");
    println!();
    println!("| series per request | /v1 p50 | /v2 JSON tensors p50 | ratio | /v2 binary tensors p50 | ratio | target |");
    println!("|---:|---:|---:|---:|---:|---:|---|");
    for (series, [v1, json, binary]) in rows {
        println!(
            "| {series} | {:.3} ms | {:.3} ms | {:.3}x | {:.3} ms | {:.3}x | <= 1.05x |",
            v1 * 1e3,
            json * 1e3,
            json / v1,
            binary * 1e3,
            binary / v1
        );
    }
    println!();
    println!(
        "{BLOCKS} alternating blocks per encoding: {} requests each at 1 series, {} at 64.",
        BLOCKS * REQUESTS_PER_BLOCK[0],
        BLOCKS * REQUESTS_PER_BLOCK[1]
    );
}
