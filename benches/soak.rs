//! `make soak`: the release server at ~80% of its measured capacity for SOAK_SECONDS (default 600).
//!
//! Reports errors (target 0) and whether the server's memory drifts. Open loop: requests are sent
//! at a fixed rate whatever the latency, as real traffic does, so a slowdown shows up as queueing
//! and errors rather than a lower send rate.
//!
//! Memory is judged at idle checkpoints. Under load, the live heap at any instant holds the
//! forwards in flight: a heap profile showed ~34 MB of oneDNN LSTM working memory in one reading
//! and none in the next, and the open-loop queue moves between small and large batches for
//! minutes at a time, so under-load readings wander by ±10% with no leak at all. Once a minute
//! (`checkpoint_every`) the client stops sending, waits until nothing is in flight and the RSS has
//! settled (jemalloc returns freed pages on a one-second decay), and reads what the server
//! retains. A leak is memory retained: the RSS drift (the first checkpoint after the warm-up
//! against the last, target < 5%) and the live heap's least-squares slope over the checkpoints
//! after the first 5 minutes (target < 1 MB per 10 minutes) are computed from those. The
//! under-load readings are reported as well, per second, for what they are.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::{rss_mb, status_mb};

/// Requests in flight at most (the open loop's bound).
const MAX_IN_FLIGHT: u32 = 512;

/// One reading of the server's memory, in MB (descriptors as a count).
#[derive(Clone, Copy, Debug)]
struct Reading {
    /// Seconds since the soak started.
    at: f64,
    rss: f64,
    anon: f64,
    file: f64,
    heap: f64,
    descriptors: f64,
}

impl Reading {
    const CSV_HEADER: &'static str = "seconds,rss_mb,anon_mb,file_mb,heap_mb,descriptors";

    fn csv(&self) -> String {
        format!(
            "{:.1},{:.2},{:.2},{:.2},{:.2},{}",
            self.at, self.rss, self.anon, self.file, self.heap, self.descriptors
        )
    }
}

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
    let metrics_url = format!("http://127.0.0.1:{port}/metrics");
    let started = Instant::now();
    let read = {
        let (client, metrics_url) = (client.clone(), metrics_url.clone());
        move || {
            let (client, metrics_url) = (client.clone(), metrics_url.clone());
            async move {
                Reading {
                    heap: live_heap_mb(&client, &metrics_url).await,
                    at: started.elapsed().as_secs_f64(),
                    rss: rss_mb(server_pid),
                    anon: status_mb(server_pid, "RssAnon:"),
                    file: status_mb(server_pid, "RssFile:"),
                    descriptors: open_descriptors(server_pid),
                }
            }
        }
    };
    // Checkpoints once a minute (a tenth of shorter soaks); the first 5 minutes (a quarter of
    // shorter soaks) are warm-up: connection pools, oneDNN's kernels for each batch size and
    // jemalloc's caches fill there.
    let checkpoint_every = 60.0f64.min(seconds as f64 / 10.0);
    let warm_up = 300.0f64.min(seconds as f64 / 4.0);
    let (ok, errors, under_load, checkpoints, paused) = runtime.block_on(async {
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT as usize));
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        // Once a second while the load runs; the checkpoints' pauses are left out.
        let pausing = Arc::new(AtomicBool::new(false));
        let under_load = Arc::new(std::sync::Mutex::new(Vec::<Reading>::new()));
        let sampler = {
            let (under_load, pausing, read) = (under_load.clone(), pausing.clone(), read.clone());
            tokio::spawn(async move {
                let mut every_second = tokio::time::interval(Duration::from_secs(1));
                loop {
                    every_second.tick().await;
                    let reading = read().await;
                    if !pausing.load(Ordering::Relaxed) {
                        under_load.lock().unwrap().push(reading);
                    }
                }
            })
        };
        let mut checkpoints = Vec::new();
        let mut paused = Duration::ZERO;
        let mut next_checkpoint = checkpoint_every;
        while started.elapsed() < Duration::from_secs(seconds) {
            if started.elapsed().as_secs_f64() >= next_checkpoint {
                let pause = Instant::now();
                pausing.store(true, Ordering::Relaxed);
                let drained = in_flight.acquire_many(MAX_IN_FLIGHT).await.unwrap();
                checkpoints.push(idle_reading(&read).await);
                drop(drained);
                pausing.store(false, Ordering::Relaxed);
                // Without a reset the ticker would fire every tick the pause skipped at once.
                ticker.reset();
                paused += pause.elapsed();
                next_checkpoint += checkpoint_every;
                continue;
            }
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
        // The last checkpoint: the run's end, once everything sent is answered.
        pausing.store(true, Ordering::Relaxed);
        let _drained = in_flight.acquire_many(MAX_IN_FLIGHT).await.unwrap();
        checkpoints.push(idle_reading(&read).await);
        sampler.abort();
        let under_load = under_load.lock().unwrap().clone();
        (
            ok.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            under_load,
            checkpoints,
            paused,
        )
    });
    let _ = server.kill();
    let _ = server.wait();
    write_csv("target/soak/under-load.csv", &under_load);
    write_csv("target/soak/checkpoints.csv", &checkpoints);

    // NaN in (a missing reading), NaN out: a verdict must not pass on nothing.
    let percent = |early: f64, late: f64| {
        if early.is_nan() {
            f64::NAN
        } else if early > 0.0 {
            (late - early) / early * 100.0
        } else {
            0.0
        }
    };
    // A leak is a trend: the least-squares slope (MB per 10 minutes) of every reading after the
    // warm-up, which one noisy reading at either end cannot fake.
    let slope_after_warm_up = |readings: &[Reading], field: fn(&Reading) -> f64| {
        let points: Vec<(f64, f64)> = readings
            .iter()
            .filter(|r| r.at >= warm_up && field(r).is_finite())
            .map(|r| (r.at, field(r)))
            .collect();
        least_squares_slope(&points) * 600.0
    };
    let settled: Vec<Reading> = checkpoints
        .iter()
        .filter(|r| r.at >= warm_up)
        .copied()
        .collect();
    let (first, last) = (settled.first(), settled.last());
    let change = |(early, late): (f64, f64)| {
        format!("{early:.1} -> {late:.1} ({:+.2}%)", percent(early, late))
    };
    // (first, last); NaN without checkpoints after the warm-up, and then the verdict fails.
    let idle =
        |field: fn(&Reading) -> f64| (first.map_or(f64::NAN, field), last.map_or(f64::NAN, field));
    let rss_drift = {
        let (early, late) = idle(|r| r.rss);
        percent(early, late)
    };
    let heap_slope = slope_after_warm_up(&checkpoints, |r| r.heap);
    let rss_slope = slope_after_warm_up(&checkpoints, |r| r.rss);
    let descriptors_slope = slope_after_warm_up(&checkpoints, |r| r.descriptors);
    // Under load: the median of the second minute (the first is warm-up) against the last one.
    let window = 60.0f64.min(seconds as f64 / 4.0);
    let median_between = |field: fn(&Reading) -> f64, from: f64, to: f64| {
        let mut values: Vec<f64> = under_load
            .iter()
            .filter(|r| r.at >= from && r.at < to)
            .map(field)
            .filter(|value| value.is_finite())
            .collect();
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let end = seconds as f64 + 1.0;
    let under_load_medians = |field: fn(&Reading) -> f64| {
        (
            median_between(field, window, 2.0 * window),
            median_between(field, end - 1.0 - window, end),
        )
    };
    let rss_peak = under_load.iter().map(|r| r.rss).fold(0.0, f64::max);

    println!();
    println!("| soak | value |");
    println!("|---|---:|");
    println!("| measured capacity (64 clients, closed loop) | {capacity:.0} req/s |");
    println!(
        "| offered rate (80%) | {rate:.0} req/s for {seconds} s, paused {:.1}% of it for {} checkpoints |",
        100.0 * paused.as_secs_f64() / seconds as f64,
        checkpoints.len()
    );
    println!("| answered 200 | {ok} |");
    println!("| errors | {errors} (target 0) |");
    println!("| **idle checkpoints** (every {checkpoint_every:.0} s; the first after {warm_up:.0} s -> the last) | |");
    println!(
        "| RSS at idle, MB | {} (target < 5%) |",
        change(idle(|r| r.rss))
    );
    println!(
        "| of which anonymous (heap, stacks), MB | {} |",
        change(idle(|r| r.anon))
    );
    // File-backed memory is libtorch's code mapped back in; the kernel may reclaim it.
    println!(
        "| of which file-backed (libtorch's code), MB | {} |",
        change(idle(|r| r.file))
    );
    println!(
        "| live heap at idle (jemalloc's allocated bytes, from /metrics), MB | {} |",
        change(idle(|r| r.heap))
    );
    println!(
        "| live heap slope at idle after {warm_up:.0} s (least squares over {} checkpoints) | {heap_slope:+.2} MB per 10 min (target < 1) |",
        settled.len()
    );
    println!("| RSS slope at idle after {warm_up:.0} s | {rss_slope:+.2} MB per 10 min |");
    // Each open connection holds ~18 KB of buffers on the server.
    println!(
        "| open file descriptors at idle (mostly client connections) | {} ({descriptors_slope:+.1} per 10 min) |",
        change(idle(|r| r.descriptors))
    );
    println!("| **under load** (1 s readings; median of the second {window:.0} s -> of the last {window:.0} s) | |");
    println!(
        "| RSS under load, MB | {} |",
        change(under_load_medians(|r| r.rss))
    );
    println!(
        "| live heap under load (includes the forwards in flight), MB | {} |",
        change(under_load_medians(|r| r.heap))
    );
    println!("| RSS, peak of the 1 s readings | {rss_peak:.1} MB |");
    println!(
        "| live heap slope under load after {warm_up:.0} s | {:+.2} MB per 10 min |",
        slope_after_warm_up(&under_load, |r| r.heap)
    );
    println!();
    println!("Readings: target/soak/under-load.csv, target/soak/checkpoints.csv");
    let within = errors == 0 && rss_drift.abs() < 5.0 && heap_slope < 1.0;
    println!(
        "{}",
        if within {
            "Within target: 0 errors, RSS at idle within 5%, idle heap slope under 1 MB per 10 min."
        } else {
            "NOT within target (see the rows marked target)."
        }
    );
}

/// The server's memory once it is idle: the caller has drained every request, and the readings
/// are repeated until the RSS and the heap hold still for a second (jemalloc purges freed pages on
/// a one-second decay) or 15 s have passed.
async fn idle_reading<F, Fut>(read: &F) -> Reading
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Reading>,
{
    const POLL: Duration = Duration::from_millis(200);
    const STILL_FOR: u32 = 5;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut previous = read().await;
    let mut still = 0;
    while still < STILL_FOR && Instant::now() < deadline {
        tokio::time::sleep(POLL).await;
        let reading = read().await;
        let holds = (reading.rss - previous.rss).abs() < 0.25
            && (reading.heap - previous.heap).abs() < 0.25;
        still = if holds { still + 1 } else { 0 };
        previous = reading;
    }
    previous
}

fn write_csv(path: &str, readings: &[Reading]) {
    let text: String = std::iter::once(Reading::CSV_HEADER.to_string())
        .chain(readings.iter().map(Reading::csv))
        .map(|line| line + "\n")
        .collect();
    let path = std::path::Path::new(path);
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|()| std::fs::write(path, text));
    if let Err(error) = written {
        eprintln!("could not write {}: {error}", path.display());
    }
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
