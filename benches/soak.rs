//! `make soak`: the release server at ~80% of its measured capacity for SOAK_SECONDS (default 600).
//! Reports errors (target 0) and RSS drift between the end of the first minute and the end
//! (target < 5%). Open loop: requests are sent at a fixed rate whatever the latency, as real
//! traffic does, so a slowdown shows up as queueing and errors rather than a lower send rate.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "support/mod.rs"]
mod support;
use support::rss_mb;

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
        .env("THREADS", "1")
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
    let client = reqwest::Client::new();
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
    let (ok, errors, rss_first_minute) = runtime.block_on(async {
        let ok = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(AtomicU64::new(0));
        let in_flight = Arc::new(tokio::sync::Semaphore::new(512));
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / rate));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let started = Instant::now();
        let mut rss_first_minute = None;
        while started.elapsed() < Duration::from_secs(seconds) {
            ticker.tick().await;
            if rss_first_minute.is_none()
                && started.elapsed() >= Duration::from_secs(60.min(seconds / 2))
            {
                rss_first_minute = Some(rss_mb(server.id()));
            }
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
        (
            ok.load(Ordering::Relaxed),
            errors.load(Ordering::Relaxed),
            rss_first_minute.unwrap_or(0.0),
        )
    });
    let rss_end = rss_mb(server.id());
    let drift = if rss_first_minute > 0.0 {
        (rss_end - rss_first_minute) / rss_first_minute * 100.0
    } else {
        0.0
    };
    let _ = server.kill();
    let _ = server.wait();
    println!();
    println!("| soak | value |");
    println!("|---|---:|");
    println!("| measured capacity (64 clients, closed loop) | {capacity:.0} req/s |");
    println!("| offered rate (80%) | {rate:.0} req/s for {seconds} s |");
    println!("| answered 200 | {ok} |");
    println!("| errors | {errors} (target 0) |");
    println!("| RSS after the first minute -> at the end | {rss_first_minute:.1} MB -> {rss_end:.1} MB ({drift:+.2}%, target < 5%) |");
}
