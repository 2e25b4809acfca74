//! `make bench`, the shadow table: what a challenger forecasting in live's shadow costs the live
//! answers (issue 32's targets: p50 at 1 client <= 1.05x, throughput at 64 clients >= 0.9x, peak
//! RSS <= 1.5x).
//!
//! One in-process HTTP server (`http::serve`) with the forecast log on (the shadow needs one; its
//! records stay buffered, no S3 is called), the bundled model live, and the same model as the
//! shadow on every series. Blocks with and without the shadow alternate so machine noise hits
//! both. Peak RSS is measured in child processes (this binary again), one per configuration.

use std::sync::Arc;
use std::time::{Duration, Instant};

use lstm_forecast::http;
use lstm_forecast::infer::InferenceHandle;
use lstm_forecast::metrics::ServerMetrics;
use lstm_forecast::model::engine::{configure_libtorch, Workload};
use lstm_forecast::model::Model;
use lstm_forecast::monitor::store::{AccuracyStore, ForecastLog, ForecastRole};
use lstm_forecast::service::shadow::Shadow;
use lstm_forecast::service::{Limits, Monitoring, Service};
use lstm_forecast::source::bundled_artifacts;

const THREADS: usize = 1;
const BLOCKS: usize = 6;
const REQUESTS_PER_BLOCK: usize = 300;
const CLIENTS: usize = 64;
const LOAD_SECONDS: u64 = 8;
/// Time between a paced client's requests: traffic with gaps, where the shadow works.
const PACE: Duration = Duration::from_millis(10);
const PACED_REQUESTS: usize = 200;

fn main() {
    configure_libtorch(Some(THREADS), Workload::OneAtATime);
    if let Ok(which) = std::env::var("SHADOW_BENCH_CHILD") {
        return peak_rss_child(which == "with");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let (single, paced, load) = runtime.block_on(measure());
    let (without_rss, with_rss) = (peak_rss_of("without"), peak_rss_of("with"));
    println!();
    println!("## A challenger in live's shadow (bundled model as both, every series shadowed, {THREADS} libtorch thread)");
    println!();
    println!("| what | without shadow | with shadow | ratio | target |");
    println!("|---|---:|---:|---:|---|");
    println!(
        "| HTTP p50, 1 client back to back, 1 series ({BLOCKS} alternating blocks of {REQUESTS_PER_BLOCK}) | {:.3} ms | {:.3} ms | {:.3}x | <= 1.05x |",
        single.without * 1e3,
        single.with * 1e3,
        single.with / single.without
    );
    println!(
        "| HTTP p50, 1 client, {} ms between requests ({PACED_REQUESTS} each) | {:.3} ms | {:.3} ms | {:.3}x | |",
        PACE.as_millis(),
        paced.without * 1e3,
        paced.with * 1e3,
        paced.with / paced.without
    );
    println!(
        "| throughput, {CLIENTS} clients, 1 series each ({LOAD_SECONDS} s) | {:.0}/s | {:.0}/s | {:.3}x | >= 0.9x |",
        load.without,
        load.with,
        load.with / load.without
    );
    println!(
        "| peak RSS (VmHWM) after 200 single + 20 batch-64 forecasts, in-process service | {without_rss:.1} MB | {with_rss:.1} MB | {:.3}x | <= 1.5x |",
        with_rss / without_rss
    );
    println!();
    println!(
        "Share of the live forecasts the shadow also forecast (the rest skipped, `ShadowSkipped`): 1 client back to back {:.0}%, paced {:.0}%, {CLIENTS} clients {:.0}%. The shadow waits for {} ms without live work before it starts a forward.",
        single.shadowed * 100.0,
        paced.shadowed * 100.0,
        load.shadowed_share * 100.0,
        lstm_forecast::service::shadow::SHADOW_QUIET.as_millis()
    );
}

/// A service with the forecast log on, its records kept in memory.
fn service() -> (Service, Arc<ForecastLog>) {
    let clients = lstm_forecast::aws::AwsClients::offline();
    let store = AccuracyStore::new(clients.s3().clone(), "s3://bench/monitoring").unwrap();
    let log = Arc::new(ForecastLog::new(store));
    let (handle, _engine) = InferenceHandle::spawn(Model::load(&bundled_artifacts()).unwrap(), 64);
    let monitoring = Monitoring {
        forecast_log: Some(log.clone()),
        ..Monitoring::default()
    };
    let limits = Limits::default();
    (
        Service::new(handle, ServerMetrics::new(), limits, monitoring),
        log,
    )
}

fn shadow() -> Shadow {
    Shadow::start(
        Model::load(&bundled_artifacts()).unwrap(),
        ForecastRole::Challenger,
        1.0,
    )
}

fn body(id: usize, windows: usize) -> String {
    let series: Vec<serde_json::Value> = (0..windows)
        .map(|k| {
            serde_json::json!({"id": format!("series-{id}-{k}"),
                "values": (0..168).map(|i| 10.0 + ((i + id) as f64 / 7.0).sin()).collect::<Vec<f64>>(),
                "last_timestamp": "2026-01-01T00:00:00Z"})
        })
        .collect();
    serde_json::json!({ "series": series }).to_string()
}

/// p50 latencies without and with the shadow, and the share of forecasts the shadow made.
struct Latency {
    without: f64,
    with: f64,
    shadowed: f64,
}

struct Load {
    without: f64,
    with: f64,
    shadowed_share: f64,
}

async fn measure() -> (Latency, Latency, Load) {
    let (service, log) = service();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1/forecast", listener.local_addr().unwrap());
    tokio::spawn(http::serve(
        listener,
        service.clone(),
        std::future::pending(),
    ));
    let client = reqwest::Client::new();
    // Warm both paths.
    service.set_shadow(Some(shadow()));
    post_many(&client, &url, 50, Duration::ZERO).await;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    let mut shadow_records = 0;
    for block in 0..BLOCKS * 2 {
        let shadowed = block % 2 == 1;
        service.set_shadow(shadowed.then(shadow));
        let before = log.buffered();
        let samples = post_many(&client, &url, REQUESTS_PER_BLOCK, Duration::ZERO).await;
        if shadowed {
            // What the shadow did in this block, once its last forecast had its chance.
            tokio::time::sleep(lstm_forecast::service::shadow::SHADOW_PATIENCE).await;
            shadow_records += log.buffered() - before - REQUESTS_PER_BLOCK;
        }
        if shadowed { &mut with } else { &mut without }.extend(samples);
    }
    let single = Latency {
        without: median(&mut without),
        with: median(&mut with),
        shadowed: shadow_records as f64 / (BLOCKS * REQUESTS_PER_BLOCK) as f64,
    };

    service.set_shadow(None);
    let mut paced_without = post_many(&client, &url, PACED_REQUESTS, PACE).await;
    service.set_shadow(Some(shadow()));
    let before = log.buffered();
    let mut paced_with = post_many(&client, &url, PACED_REQUESTS, PACE).await;
    tokio::time::sleep(lstm_forecast::service::shadow::SHADOW_PATIENCE).await;
    let paced = Latency {
        without: median(&mut paced_without),
        with: median(&mut paced_with),
        shadowed: (log.buffered() - before - PACED_REQUESTS) as f64 / PACED_REQUESTS as f64,
    };

    service.set_shadow(None);
    let rate_without = throughput(&client, &url).await;
    service.set_shadow(Some(shadow()));
    let before = log.buffered();
    let rate_with = throughput(&client, &url).await;
    let logged = (log.buffered() - before) as f64;
    let live = rate_with * LOAD_SECONDS as f64;
    let load = Load {
        without: rate_without,
        with: rate_with,
        shadowed_share: ((logged - live) / live).clamp(0.0, 1.0),
    };
    (single, paced, load)
}

/// `count` requests from one client, `pause` apart; their latencies in seconds.
async fn post_many(client: &reqwest::Client, url: &str, count: usize, pause: Duration) -> Vec<f64> {
    let mut samples = Vec::with_capacity(count);
    for i in 0..count {
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        let body = body(i % 97, 1);
        let started = Instant::now();
        let response = client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        response.bytes().await.unwrap();
        samples.push(started.elapsed().as_secs_f64());
    }
    samples
}

/// Forecasts answered per second by `CLIENTS` clients posting back to back.
async fn throughput(client: &reqwest::Client, url: &str) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(LOAD_SECONDS);
    let tasks: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let (client, url) = (client.clone(), url.to_string());
            tokio::spawn(async move {
                let mut answered = 0usize;
                while Instant::now() < deadline {
                    let response = client
                        .post(&url)
                        .header("content-type", "application/json")
                        .body(body(c, 1))
                        .send()
                        .await
                        .unwrap();
                    if response.status() == 200 {
                        answered += 1;
                    }
                    response.bytes().await.unwrap();
                }
                answered
            })
        })
        .collect();
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap();
    }
    answered as f64 / LOAD_SECONDS as f64
}

fn median(samples: &mut [f64]) -> f64 {
    samples.sort_by(f64::total_cmp);
    samples[samples.len() / 2]
}

/// Runs this binary as a child that forecasts with or without a shadow, and reads its peak RSS.
fn peak_rss_of(which: &str) -> f64 {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SHADOW_BENCH_CHILD", which)
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap()
}

/// The child: 200 single-series and 20 batch-64 forecasts through the service, then its VmHWM.
fn peak_rss_child(with_shadow: bool) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let (service, log) = service();
        if with_shadow {
            service.set_shadow(Some(shadow()));
        }
        let shape = service.request_shape(256);
        let parse = |text: String| {
            lstm_forecast::forecast::parse_forecast_body(text.as_bytes(), &shape)
                .unwrap()
                .series
        };
        let mut expected = 0;
        for (count, windows) in [(200, 1), (20, 64)] {
            for i in 0..count {
                service
                    .forecast(parse(body(i, windows)), None)
                    .await
                    .unwrap();
                expected += windows * (1 + usize::from(with_shadow));
                // The shadow's forecast done before the next, as spaced traffic does.
                let deadline = Instant::now() + Duration::from_secs(10);
                while with_shadow && log.buffered() < expected {
                    assert!(
                        Instant::now() < deadline,
                        "the shadow forecast never arrived"
                    );
                    tokio::task::yield_now().await;
                }
            }
        }
    });
    println!("{}", support::peak_rss_mb(std::process::id()));
}

#[path = "support/mod.rs"]
mod support;
