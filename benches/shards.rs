//! `make bench`, batch shards: the release function under cargo-lambda's Runtime API emulator
//! forecasting a 500-series and a 10,000-series CSV shard from moto S3 into a multipart upload,
//! against the in-process batched forward over the same windows. Printed as Markdown tables.
//!
//! What the issue asks of it: series per second through the function >= 90% of the in-process
//! batched forward, and the function's peak RSS on 10,000 series within 1.3x of 500 series.

use std::time::{Duration, Instant};

use lstm_forecast::model::engine::{configure_libtorch, Workload};
use lstm_forecast::model::Model;
use lstm_forecast::source::bundled_artifacts;
use serde_json::json;

// The benches use part of what the tests share.
#[allow(dead_code)]
#[path = "../tests/it/common/emulators.rs"]
mod emulators;
#[path = "support/mod.rs"]
mod support;

const WINDOW: usize = 168;
/// Series per forward pass: the service's default `max_series`, which the shard path uses.
const CHUNK: usize = 256;
const SIZES: [usize; 2] = [500, 10_000];

fn main() {
    // The function runs with THREADS=1 (one vCPU, as a 1,769 MB Lambda has); so does the baseline.
    configure_libtorch(Some(1), Workload::OneAtATime);
    let history = etth1_ot();
    let windows: Vec<Vec<f64>> = (0..SIZES[1])
        .map(|i| {
            let end = WINDOW + i % (history.len() - WINDOW);
            history[end - WINDOW..end].to_vec()
        })
        .collect();
    let in_process = in_process_series_per_second(&windows);
    let shards = function_runs(&windows);

    println!();
    println!("## Batch shards: the function (THREADS=1) from moto S3 to a multipart upload");
    println!();
    println!("| shard | series/s, best of 2 | vs in-process batched forward | peak RSS after init | peak RSS after the shard | parts |");
    println!("|---|---:|---:|---:|---:|---:|");
    for run in &shards {
        println!(
            "| {} series CSV ({:.1} MB) | {:.0} | {:.0}% | {:.1} MB | {:.1} MB | {} |",
            run.series,
            run.input_mb,
            run.series_per_second,
            100.0 * run.series_per_second / in_process,
            run.peak_after_init_mb,
            run.peak_after_shard_mb,
            run.parts,
        );
    }
    println!(
        "| in-process `Model::forecast`, chunks of {CHUNK}, same windows | {in_process:.0} | 100% | | | |"
    );
    let (small, large) = (&shards[0], &shards[1]);
    println!();
    println!(
        "Peak RSS, 10,000 / 500 series: {:.2}x (target <= 1.3x). Throughput of the 10,000-series shard: {:.0}% of in-process (target >= 90%).",
        large.peak_after_shard_mb / small.peak_after_shard_mb,
        100.0 * large.series_per_second / in_process
    );
}

/// The bundled model's own data: ETTh1's OT column.
fn etth1_ot() -> Vec<f64> {
    std::fs::read_to_string(repo_path("model_artifacts/data/ETTh1.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|line| line.rsplit(',').next().unwrap().parse().unwrap())
        .collect()
}

fn in_process_series_per_second(windows: &[Vec<f64>]) -> f64 {
    let model = Model::load(&bundled_artifacts()).unwrap();
    model.forecast(&windows[..CHUNK]).unwrap();
    (0..3)
        .map(|_| {
            let started = Instant::now();
            for chunk in windows.chunks(CHUNK) {
                model.forecast(chunk).unwrap();
            }
            windows.len() as f64 / started.elapsed().as_secs_f64()
        })
        .fold(0.0, f64::max)
}

struct ShardRun {
    series: usize,
    input_mb: f64,
    series_per_second: f64,
    peak_after_init_mb: f64,
    peak_after_shard_mb: f64,
    parts: u64,
}

fn function_runs(windows: &[Vec<f64>]) -> Vec<ShardRun> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let moto = emulators::Moto::start();
        let s3 = moto.create_bucket("bench").await;
        let mut runs = Vec::new();
        for size in SIZES {
            let csv = shard_csv(&windows[..size]);
            let input_mb = csv.len() as f64 / 1e6;
            let key = format!("batch/input/bench/{size}.csv");
            s3.put_object()
                .bucket("bench")
                .key(&key)
                .body(csv.into_bytes().into())
                .send()
                .await
                .unwrap();
            // A fresh environment per size, so each peak is that shard's own.
            let emulator = emulators::LambdaEmulator::start();
            let mut env = moto.env();
            env.extend([
                ("BATCH_INPUT_PREFIX", "s3://bench/batch/input/".to_string()),
                ("BATCH_OUTPUT_PREFIX", "s3://bench/batch/output/".to_string()),
                ("RUST_LOG", "warn".to_string()),
            ]);
            let function = emulators::Function::start(&emulator, &env);
            let (status, answer) = emulator.invoke(&emulators::event("apigw-v2-forecast.json")).await;
            assert_eq!((status, &answer["statusCode"]), (200, &json!(200)), "{answer}");
            let peak_after_init_mb = support::peak_rss_mb(function.pid());
            let event = json!({"Items": [{"Key": key}],
                               "BatchInput": {"action": "batch-forecast-shard", "bucket": "bench", "output": "s3://bench/batch/output/bench/"}});
            let mut best = Duration::MAX;
            for _ in 0..2 {
                let started = Instant::now();
                let (status, answer) = emulator.invoke(&event).await;
                best = best.min(started.elapsed());
                assert_eq!(status, 200);
                assert_eq!(answer["series"], size, "{answer}");
            }
            let peak_after_shard_mb = support::peak_rss_mb(function.pid());
            let output = s3
                .head_object()
                .bucket("bench")
                .key(format!("batch/output/bench/{size}.csv.jsonl"))
                .send()
                .await
                .unwrap();
            let parts = output
                .e_tag()
                .and_then(|etag| etag.trim_matches('"').rsplit_once('-'))
                .and_then(|(_, parts)| parts.parse().ok())
                .unwrap_or(1);
            runs.push(ShardRun {
                series: size,
                input_mb,
                series_per_second: size as f64 / best.as_secs_f64(),
                peak_after_init_mb,
                peak_after_shard_mb,
                parts,
            });
            drop(function);
        }
        runs
    })
}

/// Used by the emulators module for its fixtures.
fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// `id,date,OT` rows, each series' 168 hours together.
fn shard_csv(windows: &[Vec<f64>]) -> String {
    let start = chrono::DateTime::parse_from_rfc3339("2017-01-01T00:00:00Z").unwrap();
    let mut csv = String::from("id,date,OT\n");
    for (i, window) in windows.iter().enumerate() {
        for (hour, value) in window.iter().enumerate() {
            let at = start + chrono::Duration::hours(hour as i64);
            csv.push_str(&format!(
                "s{i},{},{value}\n",
                at.format("%Y-%m-%d %H:%M:%S")
            ));
        }
    }
    csv
}
