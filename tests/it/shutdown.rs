//! SIGTERM under load: in-flight requests finish, metrics are flushed, the process exits 0.

use crate::common;

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatch::types::{Dimension, Statistic};
use common::emulators::Ministack;
use common::ServeProcess;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sigterm_under_load_drains_requests_flushes_metrics_and_exits_zero() {
    let ministack = Ministack::start();
    // The periodic flush is an hour away: only the shutdown flush can get the counts to CloudWatch.
    let mut env = ministack.env();
    env.extend([
        ("METRICS_SINKS", "cloudwatch".to_string()),
        ("METRICS_NAMESPACE", "ShutdownTest".to_string()),
        ("METRICS_FLUSH_SECONDS", "3600".to_string()),
    ]);
    let server = ServeProcess::start(&[], &env).await;
    let base = server.base.clone();
    // GIVEN 8 clients hammering the server
    let stop = Arc::new(AtomicBool::new(false));
    let answered_so_far = Arc::new(AtomicU32::new(0));
    let clients: Vec<_> = (0..8)
        .map(|c| {
            let (client, url, stop, answered_so_far) = (
                reqwest::Client::new(),
                format!("{base}/v1/forecast"),
                stop.clone(),
                answered_so_far.clone(),
            );
            tokio::spawn(async move {
                let (mut ok, mut unsent, mut other) = (0u32, 0u32, Vec::new());
                while !stop.load(Ordering::Relaxed) {
                    let body =
                        common::forecast_body(&[common::window(c as f64), common::window(1.0)]);
                    match client.post(&url).json(&body).send().await {
                        Ok(r) if r.status() == 200 => {
                            ok += 1;
                            answered_so_far.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => other.push(format!("status {}", r.status())),
                        // Once shutdown begins the listener is closed and idle keep-alive
                        // connections are closed: a request racing that never reached a handler.
                        // Whether it did is checked below, on the server's own count.
                        Err(_) => {
                            unsent += 1;
                            tokio::time::sleep(Duration::from_millis(10)).await;
                        }
                    }
                }
                (ok, unsent, other)
            })
        })
        .collect();
    // ... until every client is well into its loop (100 answers between them) ...
    common::eventually(Duration::from_secs(60), "100 answers under load", || {
        let answered = answered_so_far.load(Ordering::Relaxed);
        async move { (answered >= 100).then_some(()) }
    })
    .await;
    // WHEN the server gets SIGTERM in the middle of it
    server.terminate();
    let (exited_zero, log) = server.wait(Duration::from_secs(30)).await;
    stop.store(true, Ordering::Relaxed);
    let mut answered = 0;
    for client in clients {
        let (ok, _unsent, other) = client.await.unwrap();
        // THEN no request got an error answer ...
        assert!(other.is_empty(), "requests answered with errors: {other:?}");
        answered += ok;
    }
    assert!(exited_zero, "{log}");
    assert!(answered > 0);
    // ... AND the server computed exactly the forecasts the clients received (none was computed and
    // then lost mid-flight), and its shutdown flush delivered that count to CloudWatch
    let cloudwatch = ministack.cloudwatch().await;
    let now = aws_sdk_cloudwatch::primitives::DateTime::from(std::time::SystemTime::now());
    let stats = cloudwatch
        .get_metric_statistics()
        .namespace("ShutdownTest")
        .metric_name("Forecasts")
        .dimensions(
            Dimension::builder()
                .name("Model")
                .value("etth1-ot-lstm")
                .build(),
        )
        .start_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
            now.secs() - 600,
        ))
        .end_time(aws_sdk_cloudwatch::primitives::DateTime::from_secs(
            now.secs() + 600,
        ))
        .period(1200)
        .statistics(Statistic::Sum)
        .send()
        .await
        .unwrap();
    // The `Model`-only dimension set (a query matches the exact set, not the one with the version).
    let sum: f64 = stats.datapoints().iter().filter_map(|d| d.sum()).sum();
    assert_eq!(
        sum,
        (answered * 2) as f64,
        "answered {answered} requests of 2 series"
    );
}
