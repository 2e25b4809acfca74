//! Slow and greedy clients against the real `serve` binary: a client that trickles its headers
//! loses its connection, one that stalls its body gets a 408, and requests beyond the in-flight
//! limit get a 503 at once, while health checks still pass. Every answer is in the error format.

use crate::common;

use std::time::Duration;

use common::ServeProcess;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// `serve` with a half-second header timeout, `body_timeout` seconds for a body, and room for
/// `in_flight` requests.
async fn strict_server(body_timeout: f64, in_flight: usize) -> ServeProcess {
    ServeProcess::start(
        &[],
        &[
            ("HEADER_TIMEOUT_SECONDS", "0.5".to_string()),
            ("BODY_TIMEOUT_SECONDS", body_timeout.to_string()),
            ("MAX_CONCURRENT_REQUESTS", in_flight.to_string()),
        ],
    )
    .await
}

async fn connect(server: &ServeProcess) -> TcpStream {
    TcpStream::connect(server.base.trim_start_matches("http://"))
        .await
        .unwrap()
}

/// Everything the server sends until it closes the connection (within `within`, else a failure).
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    let mut answer = Vec::new();
    tokio::time::timeout(within, stream.read_to_end(&mut answer))
        .await
        .expect("the server never closed the connection")
        .unwrap();
    String::from_utf8_lossy(&answer).into_owned()
}

/// The JSON body of a raw HTTP/1.1 answer.
fn json_body(answer: &str) -> Value {
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or_default();
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {answer}"))
}

/// Headers of a forecast request announcing a body of `length` bytes (and the connection's close
/// after the answer, so that the answer can be read to the end).
fn forecast_headers(length: usize) -> String {
    format!(
        "POST /v1/forecast HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n\r\n"
    )
}

#[tokio::test]
async fn a_client_that_trickles_its_headers_is_disconnected() {
    let server = strict_server(0.5, 8).await;
    // GIVEN a client that sends half a request line and then nothing
    let mut stream = connect(&server).await;
    stream.write_all(b"POST /v1/forecast HT").await.unwrap();
    // THEN the server closes the connection (after the 0.5 s header timeout, long before 10 s)
    read_until_closed(&mut stream, Duration::from_secs(10)).await;
    // AND a well-behaved client is served meanwhile
    let health = reqwest::get(server.url("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_client_that_stalls_its_body_gets_a_408_in_the_error_format() {
    let server = strict_server(0.5, 8).await;
    // GIVEN a request that announces 100 bytes of body and sends 10
    let mut stream = connect(&server).await;
    stream
        .write_all(format!("{}{{\"series\":", forecast_headers(100)).as_bytes())
        .await
        .unwrap();
    // THEN it is answered 408 with a JSON error that says what happened
    let answer = read_until_closed(&mut stream, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let error = &json_body(&answer)["error"];
    assert_eq!(error["code"], "request_timeout", "{answer}");
    assert!(
        error["message"].as_str().unwrap().contains("0.5 s"),
        "{answer}"
    );
}

#[tokio::test]
async fn requests_beyond_the_in_flight_limit_get_a_503_at_once_and_probes_still_pass() {
    // GIVEN a server with room for one request in flight, held for 3 s by a client stalling its
    // body
    let server = strict_server(3.0, 1).await;
    // (A fresh connection per request: the server closes idle ones after its 0.5 s header timeout,
    // and a pooled one could be closed under the client's feet.)
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    // WHEN another forecast arrives while the slot is held. (The holder and a forecast sent at
    // the same moment race for the slot; if the holder loses, it is itself shed, and a new one
    // takes its place.)
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (mut holder, shed) = 'hold: loop {
        let mut holder = connect(&server).await;
        holder
            .write_all(format!("{}{{", forecast_headers(100)).as_bytes())
            .await
            .unwrap();
        loop {
            assert!(
                std::time::Instant::now() < deadline,
                "no request was shed while a slot was held\n{}",
                server.log()
            );
            let answer = client
                .post(server.url("/v1/forecast"))
                .json(&serde_json::json!({"series": [{"values": [1.0]}]}))
                .send()
                .await
                .unwrap();
            if answer.status() == 503 {
                break 'hold (holder, answer);
            }
            let mut first_byte = [0u8; 1];
            let holder_answered =
                tokio::time::timeout(Duration::from_millis(20), holder.peek(&mut first_byte))
                    .await
                    .is_ok_and(|read| read.is_ok_and(|n| n > 0));
            if holder_answered {
                continue 'hold;
            }
        }
    };
    // THEN it is refused with Retry-After and the error format, naming the limit
    assert_eq!(shed.headers()["retry-after"], "1");
    let body: Value = shed.json().await.unwrap();
    assert_eq!(body["error"]["code"], "server_busy");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("limit of 1 requests"));
    // AND the orchestrator's probes and the scrape still pass
    for probe in ["/healthz", "/readyz", "/metrics"] {
        let r = client.get(server.url(probe)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{probe}");
    }
    // AND once the holder is answered (408), the slot is free again
    let answer = read_until_closed(&mut holder, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    let served = client
        .post(server.url("/v1/forecast"))
        .json(&serde_json::json!({"series": [{"values": common::etth1_training_windows(1, 168, 1)[0].2}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_stalled_2_mib_bodies_pin_little_memory_and_normal_requests_are_answered() {
    // GIVEN `serve` with its defaults (2 MiB bodies, 512 requests in flight, a 30 s body timeout,
    // 32 MiB for large bodies in flight) and the Kubernetes manifest's memory limit
    let server = ServeProcess::start(&[], &[]).await;
    let limit_mib = 512.0;
    // WHEN 200 connections each announce a 2 MiB body, send all of it but the last byte, and stall
    let length = 2 * 1024 * 1024;
    let body = std::sync::Arc::new(vec![b' '; length - 1]);
    let stalled = common::spawn_all((0..200).map(|_| {
        let body = std::sync::Arc::clone(&body);
        let address = server.base.trim_start_matches("http://").to_string();
        async move {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream
                .write_all(forecast_headers(length).as_bytes())
                .await
                .unwrap();
            // A refused connection stops reading: the write then fails or waits, either is fine.
            let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&body)).await;
            let mut answer = vec![0; 4096];
            let read = tokio::time::timeout(Duration::from_secs(2), stream.read(&mut answer)).await;
            let refused =
                matches!(read, Ok(Ok(n)) if String::from_utf8_lossy(&answer[..n]).contains("503"));
            (stream, refused)
        }
    }))
    .await;
    // AND normal clients forecast meanwhile
    let client = reqwest::Client::new();
    for i in 0..20 {
        let answer = common::post_json(
            &client,
            &server.url("/v1/forecast"),
            &common::forecast_body(&[common::window(i as f64)]),
        )
        .await;
        assert!(answer["forecasts"][0]["values"].is_array(), "{answer}");
    }
    // THEN most large bodies were refused at once, the memory stayed far under the limit, and
    // the normal requests were answered
    let refused = stalled.iter().filter(|(_, refused)| *refused).count();
    assert!(refused >= 150, "{refused} of 200 refused");
    let peak = server.peak_rss_mib();
    assert!(peak < limit_mib / 2.0, "peak RSS {peak:.0} MiB");
    drop(stalled);
}

#[tokio::test]
async fn past_the_connection_cap_a_newcomer_waits_until_a_connection_closes() {
    // GIVEN `serve` with room for 3 connections, all 3 taken by idle clients
    let server = ServeProcess::start(
        &[],
        &[
            ("MAX_CONNECTIONS", "3".to_string()),
            ("HEADER_TIMEOUT_SECONDS", "60".to_string()),
        ],
    )
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(connect(&server).await);
    }
    // WHEN a fourth client asks for /healthz, THEN it is not served while the three stay open
    let mut waiting = connect(&server).await;
    waiting
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 1];
    let early = tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut first)).await;
    assert!(early.is_err(), "answered past the cap: {early:?}");
    // AND once one of them leaves, it is answered
    drop(idle.pop());
    let answer = read_until_closed(&mut waiting, Duration::from_secs(10)).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}
