//! `make soak`: the release server at ~80% of its measured capacity for SOAK_SECONDS (default 600).
//!
//! Reports errors (target 0), RSS drift and the live heap's least-squares slope after the warm-up
//! (a leak is a trend). RSS is sampled every second; the median of the second minute is compared
//! with the median of the last (target < 5%: a trend, not two readings that may straddle an
//! allocator trim). Open loop: requests are sent at a fixed rate whatever the latency, as real
//! traffic does, so a slowdown shows up as queueing and errors rather than a lower send rate.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{rss_mb, status_mb};

fn main() {
    let seconds: u64 = std::env::var("SOAK_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut server = Command::new(env!("CARGO_BIN_EXE_lstm-forecast"))
        .args([
            "serve",
            "--bind",
            &format!("127.0.0.1:{port}"),
            "--max-queue",
            "1024",
        ])
        // SOAK_THREADS (intra-op threads per forward, default 1) and ENGINE_WORKERS (inherited)
        // soak other layouts than the defaults.
        .env(
            "THREADS",
            std::env::var("SOAK_THREADS").unwrap_or_else(|_| "1".into()),
        )
        .env("RUST_LOG", "warn")
        // The live-heap gauge on /metrics is refreshed at each flush.
        .env("METRICS_FLUSH_SECONDS", "5")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/forecast");
    let values: Vec<f64> = (0..168)
        .map(|t| 15.0 + 4.0 * ((t as f64) * std::f64::consts::TAU / 24.0).sin())
        .collect();
    let body = serde_json::json!({"series": [{"id": "soak", "values": values}]}).to_string();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // At most 64 idle connections kept, as a load balancer's pool keeps a bounded set: the
    // default keeps every connection a burst opened for 90 s, and the server's memory follows
    // the open connections (the descriptors column), which hid any trend of its own.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .build()
        .unwrap();
    runtime.block_on(async {
        let started = Instant::now();
        while client
            .get(format!("http://127.0.0.1:{port}/healthz"))
            .send()
            .await
            .is_err()
        {
            assert!(started.elapsed() < Duration::from_secs(60));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    // Capacity: closed loop, 64 clients, 5 s.
    let capacity = runtime.block_on(async {
        let done = Arc::new(AtomicU64::new(0));
        let until = Instant::now() + Duration::from_secs(5);
        let tasks: Vec<_> = (0..64)
            .map(|_| {
                let (client, url, body, done) =
                    (client.clone(), url.clone(), body.clone(), done.clone());
                tokio::spawn(async move {
                    while Instant::now() < until {
                        if let Ok(r) = client
                            .post(&url)
                            .header("content-type", "application/json")
                            .body(body.clone())
                            .send()
                            .await
                        {
                            if r.status().is_success() && r.bytes().await.is_ok() {
                                done.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        done.load(Ordering::Relaxed) as f64 / 5.0
    });
    let rate = (capacity * 0.8).max(1.0);
    println!("capacity {capacity:.0} req/s; soaking at {rate:.0} req/s for {seconds} s");
    let server_pid = server.id();
    let (ok, errors, rss_samples) = runtime.block_on(async {
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        // RSS once a second: a drift is a trend across minutes, not the difference of two
        // readings that may straddle one allocator trim.
        let rss_samples = Arc::new(std::sync::Mutex::new(Vec::<(f64, [f64; 5])>::new()));
        let sampler = {
            let rss_samples = rss_samples.clone();
            let (client, metrics_url) =
                (client.clone(), format!("http://127.0.0.1:{port}/metrics"));
            tokio::spawn(async move {
                let mut every_second = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every_second.tick().await;
                    let heap = live_heap_mb(&client, &metrics_url).await;
                    let sample = (
                        started.elapsed().as_secs_f64(),
                        [
                            rss_mb(server_pid),
                            status_mb(server_pid, "RssAnon:"),
                            status_mb(server_pid, "RssFile:"),
                            heap,
                            open_descriptors(server_pid),
                        ],
                    );
                    rss_samples.lock().unwrap().push(sample);
                }
            })
        };
        while started.elapsed() < Duration::from_secs(seconds) {
            ticker.tick().await;
            let permit = in_flight.clone().acquire_owned().await.unwrap();
            let (client, url, body, ok, errors) = (
                client.clone(),
                url.clone(),
                body.clone(),
                ok.clone(),
                errors.clone(),
            );
            tokio::spawn(async move {
                let good = match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if good {
                    ok.fetch_add(1, Ordering::Relaxed)
                } else {
                    errors.fetch_add(1, Ordering::Relaxed)
                };
                drop(permit);
            });
        }
        let _ = in_flight.acquire_many(512).await;
        sampler.abort();
        let rss_samples = rss_samples.lock().unwrap().clone();
        (
            ok.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            rss_samples,
        )
    });
    // The second minute (the first is warm-up) against the last one; shorter soaks scale down.
    let window = 60.0f64.min(seconds as f64 / 4.0);
    let median_between = |kind: usize, from: f64, to: f64| {
        let mut values: Vec<f64> = rss_samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, sample)| sample[kind])
            .filter(|value| value.is_finite())
            .collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(0.0)
    };
    let early_and_late = |kind: usize| {
        (
            median_between(kind, window, 2.0 * window),
            median_between(kind, seconds as f64 - window, seconds as f64 + 1.0),
        )
    };
    let percent = |(early, late): (f64, f64)| {
        if early > 0.0 {
            (late - early) / early * 100.0
        } else {
            0.0
        }
    };
    let (rss_early, rss_late) = early_and_late(0);
    let drift = percent((rss_early, rss_late));
    let (anon_early, anon_late) = early_and_late(1);
    let (file_early, file_late) = early_and_late(2);
    let (heap_early, heap_late) = early_and_late(3);
    let (fds_early, fds_late) = early_and_late(4);
    let rss_peak = rss_samples.iter().map(|(_, s)| s[0]).fold(0.0, f64::max);
    // A leak is a trend: the least-squares slope of every sample after the warm-up (the first
    // 5 minutes, a quarter of shorter soaks), which one noisy minute at either end cannot fake.
    let warm_up = 300.0f64.min(seconds as f64 / 4.0);
    let slope_per_10_minutes = |kind: usize| {
        let points: Vec<(f64, f64)> = rss_samples
            .iter()
            .filter(|(t, sample)| *t >= warm_up && sample[kind].is_finite())
            .map(|(t, sample)| (*t, sample[kind]))
            .collect();
        least_squares_slope(&points) * 600.0
    };
    let (rss_slope, heap_slope, fds_slope) = (
        slope_per_10_minutes(0),
        slope_per_10_minutes(3),
        slope_per_10_minutes(4),
    );
    let _ = server.kill();
    let _ = server.wait();
    println!();
    println!("| soak | value |");
    println!("|---|---:|");
    println!("| measured capacity (64 clients, closed loop) | {capacity:.0} req/s |");
    println!("| offered rate (80%) | {rate:.0} req/s for {seconds} s |");
    println!("| answered 200 | {ok} |");
    println!("| errors | {errors} (target 0) |");
    println!("| RSS, median of the second {window:.0} s -> of the last {window:.0} s | {rss_early:.1} MB -> {rss_late:.1} MB ({drift:+.2}%, target < 5%) |");
    // Anonymous memory is the heap and stacks, where a leak would show. File-backed memory is
    // libtorch's code mapped back in; the kernel may reclaim it from an idle-looking process.
    println!(
        "| of which anonymous (heap, stacks) | {anon_early:.1} MB -> {anon_late:.1} MB ({:+.2}%) |",
        percent((anon_early, anon_late))
    );
    println!(
        "| of which file-backed (libtorch's code) | {file_early:.1} MB -> {file_late:.1} MB ({:+.2}%) |",
        percent((file_early, file_late))
    );
    println!(
        "| live heap (jemalloc's allocated bytes, from /metrics) | {heap_early:.1} MB -> {heap_late:.1} MB ({:+.2}%) |",
        percent((heap_early, heap_late))
    );
    println!("| RSS, peak of the 1 s samples | {rss_peak:.1} MB |");
    println!(
        "| live heap slope after the first {warm_up:.0} s (least squares) | {heap_slope:+.2} MB per 10 min (target < 1) |"
    );
    println!(
        "| RSS slope after the first {warm_up:.0} s (least squares) | {rss_slope:+.2} MB per 10 min |"
    );
    // Each open connection holds its buffers on the server: a client whose pool keeps growing
    // shows up as heap growth without any leak, so the two are reported side by side.
    println!(
        "| open file descriptors (mostly client connections) | {fds_early:.0} -> {fds_late:.0} ({fds_slope:+.1} per 10 min) |"
    );
}

/// Open file descriptors of process `pid` (NaN when unreadable).
fn open_descriptors(pid: u32) -> f64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(f64::NAN, |dir| dir.count() as f64)
}

/// The slope of the least-squares line through `points` (NaN for fewer than two distinct x).
fn least_squares_slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    let mean_x = points.iter().map(|p| p.0).sum::<f64>() / n;
    let mean_y = points.iter().map(|p| p.1).sum::<f64>() / n;
    let covariance: f64 = points
        .iter()
        .map(|(x, y)| (x - mean_x) * (y - mean_y))
        .sum();
    let variance: f64 = points.iter().map(|(x, _)| (x - mean_x).powi(2)).sum();
    if variance > 0.0 {
        covariance / variance
    } else {
        f64::NAN
    }
}

/// `lstm_forecast_heap_allocated_bytes` from the server's /metrics in MB; NaN if absent.
async fn live_heap_mb(client: &reqwest::Client, url: &str) -> f64 {
    let Ok(response) = client.get(url).send().await else {
        return f64::NAN;
    };
    let Ok(text) = response.text().await else {
        return f64::NAN;
    };
    text.lines()
        .find(|line| line.starts_with("lstm_forecast_heap_allocated_bytes"))
        .and_then(|line| line.rsplit(' ').next())
        .and_then(|value| value.parse::<f64>().ok())
        .map_or(f64::NAN, |bytes| bytes / (1024.0 * 1024.0))
}
