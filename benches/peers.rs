//! `make bench-peers`: this server (batching off and on) against the Python stacks users would
//! deploy instead, on the same model and inputs, with the same load generator, in one run.
//!
//! Needs `PEERS_PYTHON` (a Python with torch, fastapi, uvicorn, onnxruntime) and `ONNX_MODEL`;
//! scripts/bench-peers.sh provides both. Writes the tables to stdout and to BENCHMARKS.md.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const CONCURRENCY: [usize; 3] = [1, 8, 64];
const OURS_DEFAULTS: &str =
    "lstm-forecast, defaults (batching on, engine threads overlap once the queue is deep)";
const OURS_OFF: &str = "lstm-forecast, batching off, no low-latency engine";
const OURS_ON: &str =
    "lstm-forecast, batching on, every engine thread takes any request (--overflow-depth 1)";
const OURS_ONE_ENGINE_OFF: &str = "lstm-forecast, 1 engine thread x all CPUs, batching off";
const OURS_ONE_ENGINE_ON: &str = "lstm-forecast, 1 engine thread x all CPUs, batching on";
const PYTHON_TORCHSCRIPT: &str = "Python FastAPI + TorchScript";
const PYTHON_ONNX: &str = "Python FastAPI + ONNX Runtime";
const WARM_UP: Duration = Duration::from_secs(1);
/// Measured time per server and concurrency, over all rounds.
const MEASURE: Duration = Duration::from_secs(9);
/// Every server runs at once, idle but for the one under load, and the measurements go round
/// them this many times, each round starting one server further on: a minute of CPU steal on a
/// shared VM then lands on every server's round alike, and each figure is the median of its
/// rounds. Measured one after another, two identical layouts differed by up to 30%.
const ROUNDS: u32 = 3;
/// Each round's measured window is cut into this many equal slices and the median slice's rate is
/// the round's throughput: a few seconds of CPU steal on a shared VM then move one slice, not the result.
const SLICES: u32 = 3;

struct Target {
    name: &'static str,
    command: Command,
}

struct Measured {
    throughput: f64,
    p50: Duration,
    p99: Duration,
    errors: usize,
}

struct Report {
    name: &'static str,
    cold_start: Duration,
    rss_mb: f64,
    runs: Vec<(usize, Measured)>,
}

fn repo(relative: &str) -> String {
    format!("{}/{relative}", env!("CARGO_MANIFEST_DIR"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn body() -> String {
    let values: Vec<f64> = (0..168)
        .map(|t| 15.0 + 4.0 * ((t as f64) * std::f64::consts::TAU / 24.0).sin())
        .collect();
    serde_json::json!({"series": [{"id": "s", "values": values}]}).to_string()
}

fn post_once(port: u16, body: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut stream) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = write!(
        stream,
        "POST /v1/forecast HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

#[path = "support/mod.rs"]
mod support;
use support::rss_mb;

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

async fn load(url: &str, concurrency: usize, body: &str, measure: Duration) -> Measured {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(concurrency)
        .build()
        .unwrap();
    let measuring = Arc::new(AtomicBool::new(false));
    let measure_started = Arc::new(std::sync::OnceLock::<Instant>::new());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (client, url, body, measuring, measure_started, stop) = (
            client.clone(),
            url.to_string(),
            body.to_string(),
            measuring.clone(),
            measure_started.clone(),
            stop.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let (mut latencies, mut errors) = (Vec::new(), 0usize);
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                let ok = match client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) => r.status().is_success() && r.bytes().await.is_ok(),
                    Err(_) => false,
                };
                if measuring.load(Ordering::Relaxed) {
                    if ok {
                        let since_start = measure_started.get().map(|t| t.elapsed());
                        latencies.push((started.elapsed(), since_start.unwrap_or_default()));
                    } else {
                        errors += 1;
                    }
                }
            }
            (latencies, errors)
        }));
    }
    tokio::time::sleep(WARM_UP).await;
    let _ = measure_started.set(Instant::now());
    measuring.store(true, Ordering::Relaxed);
    tokio::time::sleep(measure).await;
    measuring.store(false, Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let (mut all, mut errors) = (Vec::new(), 0);
    for task in tasks {
        let (latencies, e) = task.await.unwrap();
        all.extend(latencies);
        errors += e;
    }
    let slice = measure / SLICES;
    let mut per_slice = vec![0usize; SLICES as usize];
    for (_, finished_at) in &all {
        let index = (finished_at.as_secs_f64() / slice.as_secs_f64()) as usize;
        per_slice[index.min(SLICES as usize - 1)] += 1;
    }
    per_slice.sort();
    let mut all: Vec<Duration> = all.into_iter().map(|(latency, _)| latency).collect();
    all.sort();
    Measured {
        throughput: per_slice[per_slice.len() / 2] as f64 / slice.as_secs_f64(),
        p50: percentile(&all, 0.5),
        p99: percentile(&all, 0.99),
        errors,
    }
}

/// Each figure's median over the rounds; errors are summed.
fn median_of_rounds(rounds: Vec<Measured>) -> Measured {
    fn median<T: Copy + PartialOrd>(mut values: Vec<T>) -> T {
        values.sort_by(|a, b| a.partial_cmp(b).unwrap());
        values[values.len() / 2]
    }
    Measured {
        throughput: median(rounds.iter().map(|m| m.throughput).collect()),
        p50: median(rounds.iter().map(|m| m.p50).collect()),
        p99: median(rounds.iter().map(|m| m.p99).collect()),
        errors: rounds.iter().map(|m| m.errors).sum(),
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        std::thread::sleep(Duration::from_millis(300));
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn main() {
    // Intra-op threads for every engine; 1 by default so that each stack gets the same compute.
    let threads = std::env::var("PEERS_THREADS").unwrap_or_else(|_| "1".into());
    let threads = threads.as_str();
    let python = std::env::var("PEERS_PYTHON").expect("PEERS_PYTHON: run `make bench-peers`");
    let onnx = std::env::var("ONNX_MODEL").expect("ONNX_MODEL: run `make bench-peers`");
    let ours = env!("CARGO_BIN_EXE_lstm-forecast");
    let body = body();
    let mut targets = Vec::new();
    // The server's defaults (one engine thread per CPU, each forward on `threads` intra-op
    // threads), and the one-engine-thread layout in which every CPU works inside each forward:
    // the second shows what batching alone buys, the first what a deployment gets.
    let cpus = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .to_string();
    // (name, max batch size, engine threads, intra-op threads, low-latency engine, overflow
    // depth); `None` keeps the server's default, so the first row is exactly what `serve` does
    // unconfigured. The third is the engine threads as they were before overflow threads.
    for (name, batch, engine_workers, intra_op, low_latency, overflow_depth) in [
        (OURS_DEFAULTS, None, None, None, None, None),
        (
            OURS_OFF,
            Some("1"),
            None,
            Some(threads),
            Some("false"),
            None,
        ),
        (
            OURS_ON,
            Some("64"),
            None,
            Some(threads),
            Some("false"),
            Some("1"),
        ),
        (
            OURS_ONE_ENGINE_OFF,
            Some("1"),
            Some("1"),
            Some(cpus.as_str()),
            None,
            None,
        ),
        (
            OURS_ONE_ENGINE_ON,
            Some("64"),
            Some("1"),
            Some(cpus.as_str()),
            None,
            None,
        ),
    ] {
        let mut command = Command::new(ours);
        command
            .args(["serve", "--max-queue", "1024"])
            .env_remove("THREADS")
            .env("RUST_LOG", "warn");
        if let Some(batch) = batch {
            command.args(["--max-batch-size", batch]);
        }
        if let Some(intra_op) = intra_op {
            command.env("THREADS", intra_op);
        }
        if let Some(workers) = engine_workers {
            command.args(["--engine-workers", workers]);
        }
        if let Some(low_latency) = low_latency {
            command.args(["--low-latency-engine", low_latency]);
        }
        if let Some(depth) = overflow_depth {
            command.args(["--overflow-depth", depth]);
        }
        targets.push(Target { name, command });
    }
    for (name, module) in [
        (PYTHON_TORCHSCRIPT, "server_torchscript:app"),
        (PYTHON_ONNX, "server_onnx:app"),
    ] {
        let mut command = Command::new(&python);
        command
            .args([
                "-m",
                "uvicorn",
                module,
                "--log-level",
                "warning",
                "--host",
                "127.0.0.1",
            ])
            .current_dir(repo("bench/peers"))
            .env("THREADS", threads)
            .env("ONNX_MODEL", &onnx)
            .env("OMP_NUM_THREADS", threads);
        targets.push(Target { name, command });
    }
    // PEERS_ONLY=<part of a name> runs a subset (profiling, quick checks); the record in
    // BENCHMARKS.md is only rewritten by a full run, where all rows share one machine state.
    let only = std::env::var("PEERS_ONLY").ok();
    if let Some(only) = &only {
        targets.retain(|t| t.name.contains(only.as_str()));
    }
    // PEERS_CLIENTS=8 (or 1,64) measures only those concurrencies, in a subset run only.
    let concurrencies: Vec<usize> = match (&only, std::env::var("PEERS_CLIENTS")) {
        (Some(_), Ok(list)) => list
            .split(',')
            .map(|n| {
                n.trim()
                    .parse()
                    .expect("PEERS_CLIENTS: numbers separated by commas")
            })
            .collect(),
        _ => CONCURRENCY.to_vec(),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    struct Serving {
        name: &'static str,
        url: String,
        cold_start: Duration,
        server: Running,
    }
    // Started one at a time (the others idle), so each cold start has the machine to itself.
    let mut serving: Vec<Serving> = Vec::new();
    for mut target in targets {
        let port = free_port();
        let is_ours = target.command.get_program() == ours;
        if is_ours {
            target
                .command
                .args(["--bind", &format!("127.0.0.1:{port}")]);
        } else {
            target.command.args(["--port", &port.to_string()]);
        }
        target.command.stdout(Stdio::null()).stderr(Stdio::piped());
        let started = Instant::now();
        let mut child = target.command.spawn().expect("start the server");
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || for _ in BufReader::new(stderr).lines() {});
        let server = Running(child);
        while !post_once(port, &body) {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{} never answered",
                target.name
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        serving.push(Serving {
            name: target.name,
            url: format!("http://127.0.0.1:{port}/v1/forecast"),
            cold_start: started.elapsed(),
            server,
        });
    }
    let per_round = MEASURE / ROUNDS;
    if let Some(first) = serving.first() {
        // The machine may still be busy with what ran before (the ONNX export, a build): a
        // discarded pass lets it settle.
        runtime.block_on(load(&first.url, 8, &body, per_round));
    }
    // measured[server][concurrency] holds one Measured per round.
    let mut measured: Vec<Vec<Vec<Measured>>> = serving
        .iter()
        .map(|_| concurrencies.iter().map(|_| Vec::new()).collect())
        .collect();
    for round in 0..ROUNDS as usize {
        for (c, &concurrency) in concurrencies.iter().enumerate() {
            for k in 0..serving.len() {
                let i = (k + round) % serving.len();
                let m = runtime.block_on(load(&serving[i].url, concurrency, &body, per_round));
                eprintln!(
                    "round {}: {} @ {concurrency}: {:.0} req/s",
                    round + 1,
                    serving[i].name,
                    m.throughput
                );
                measured[i][c].push(m);
            }
        }
    }
    let mut reports = Vec::new();
    for (s, rounds) in serving.into_iter().zip(measured) {
        reports.push(Report {
            name: s.name,
            cold_start: s.cold_start,
            rss_mb: rss_mb(s.server.0.id()),
            runs: concurrencies
                .iter()
                .copied()
                .zip(rounds.into_iter().map(median_of_rounds))
                .collect(),
        });
    }

    let mut out = String::new();
    out.push_str("## Benchmarks against the peers\n\n");
    out.push_str(&format!(
        "`make bench-peers`, one run, {}. Same model (the bundled ETTh1 LSTM), same request (one series of 168 values), \
         same load generator (closed loop: N clients, each sending its next request when the previous is answered; \
         every server started first and left idle while another is measured; {ROUNDS} rounds over all of them, each a {}s warm-up and {}s measured, \
         throughput being the median of {SLICES} equal slices of it and latency over all of it; each figure is the median of the rounds), {threads} intra-op thread(s) per forward for every engine (torch, libtorch, ONNX Runtime; \
         `PEERS_THREADS`) except in the rows that say otherwise, one process each. The Python servers are uvicorn with one worker; \
         their endpoints are plain `def`, so FastAPI runs forwards side by side on its thread pool, as this server's default \
         does on its engine threads (one per CPU here: {cpus}).\n\n",
        chrono::Utc::now().format("%Y-%m-%d %H:%M UTC"),
        WARM_UP.as_secs(),
        per_round.as_secs()
    ));
    out.push_str("| server | clients | throughput (req/s) | p50 | p99 | errors |\n|---|---:|---:|---:|---:|---:|\n");
    for r in &reports {
        for (c, m) in &r.runs {
            out.push_str(&format!(
                "| {} | {c} | {:.0} | {:.2} ms | {:.2} ms | {} |\n",
                r.name,
                m.throughput,
                m.p50.as_secs_f64() * 1e3,
                m.p99.as_secs_f64() * 1e3,
                m.errors
            ));
        }
    }
    out.push_str(
        "\n| server | cold start (exec -> first answer) | RSS after the runs |\n|---|---:|---:|\n",
    );
    for r in &reports {
        out.push_str(&format!(
            "| {} | {:.0} ms | {:.0} MB |\n",
            r.name,
            r.cold_start.as_secs_f64() * 1e3,
            r.rss_mb
        ));
    }
    if only.is_none() {
        out.push_str(&defaults_against_the_rest(&reports));
    }
    let at64 = |name: &str| {
        reports
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.runs.iter().find(|(c, _)| *c == 64))
            .map(|(_, m)| m.throughput)
            .unwrap_or(0.0)
    };
    let (off, on, one_off, one_on, ts, onnx_rps) = (
        at64(OURS_OFF),
        at64(OURS_ON),
        at64(OURS_ONE_ENGINE_OFF),
        at64(OURS_ONE_ENGINE_ON),
        at64(PYTHON_TORCHSCRIPT),
        at64(PYTHON_ONNX),
    );
    if only.is_none() {
        let ratio = |a: f64, b: f64| a / b.max(1e-9);
        out.push_str(&format!(
            "\nAt 64 clients, the server's defaults: batching on / off = {:.2}x (target >= 3x); on / Python TorchScript = {:.2}x (target >= 5x); \
             on / Python ONNX Runtime = {:.2}x (target > 1x).\n\
             With one engine thread using every CPU in each forward: batching on / off = {:.2}x; on / Python TorchScript = {:.2}x.\n",
            ratio(on, off),
            ratio(on, ts),
            ratio(on, onnx_rps),
            ratio(one_on, one_off),
            ratio(one_on, ts),
        ));
    }
    out.push_str(&std::fs::read_to_string(repo("bench/peers/ANALYSIS.md")).unwrap_or_default());
    println!("{out}");
    if only.is_none() {
        let path = repo("BENCHMARKS.md");
        let previous = std::fs::read_to_string(&path).unwrap_or_default();
        std::fs::write(&path, replace_peers_section(&previous, &out)).expect("write BENCHMARKS.md");
    }
}

/// Issue 20's targets, per concurrency: the defaults against the best of this server's other
/// configurations (throughput and p50, target >= 95%), and against each Python peer's p50
/// (target >= 1.5x faster).
fn defaults_against_the_rest(reports: &[Report]) -> String {
    let run = |name: &str, clients: usize| {
        reports
            .iter()
            .find(|r| r.name == name)
            .and_then(|r| r.runs.iter().find(|(c, _)| *c == clients))
            .map(|(_, m)| (m.throughput, m.p50.as_secs_f64() * 1e3))
    };
    let mut out = String::from(
        "\n| clients | defaults req/s / best req/s of ours | best p50 of ours / defaults p50 | Python TorchScript p50 / defaults p50 | Python ONNX Runtime p50 / defaults p50 |\n|---:|---:|---:|---:|---:|\n",
    );
    for clients in CONCURRENCY {
        let Some((rps, p50)) = run(OURS_DEFAULTS, clients) else {
            continue;
        };
        let ours: Vec<(f64, f64)> = [
            OURS_DEFAULTS,
            OURS_OFF,
            OURS_ON,
            OURS_ONE_ENGINE_OFF,
            OURS_ONE_ENGINE_ON,
        ]
        .iter()
        .filter_map(|name| run(name, clients))
        .collect();
        let best_rps = ours.iter().map(|(r, _)| *r).fold(0.0, f64::max);
        let best_p50 = ours.iter().map(|(_, p)| *p).fold(f64::INFINITY, f64::min);
        let python = |name| run(name, clients).map_or(f64::NAN, |(_, p)| p / p50);
        out.push_str(&format!(
            "| {clients} | {:.0}% | {:.0}% (defaults {:.2} ms, best {:.2} ms) | {:.2}x | {:.2}x |\n",
            rps / best_rps * 100.0,
            best_p50 / p50 * 100.0,
            p50,
            best_p50,
            python(PYTHON_TORCHSCRIPT),
            python(PYTHON_ONNX),
        ));
    }
    out.push_str("\nTargets (issue 20): the defaults >= 95% of the best of this server's configurations in throughput and p50 at every concurrency; >= 1.5x ahead of both Python peers on p50.\n");
    out
}

const PEERS_BEGIN: &str = "<!-- make bench-peers writes from here -->";
const PEERS_END: &str = "<!-- make bench-peers writes up to here -->";

/// BENCHMARKS.md with this run in place of the previous one; the other sections (make bench,
/// soak runs, history) stay as they are.
fn replace_peers_section(previous: &str, run: &str) -> String {
    let section = format!("{PEERS_BEGIN}\n{run}\n{PEERS_END}");
    match (previous.find(PEERS_BEGIN), previous.find(PEERS_END)) {
        (Some(begin), Some(end)) if begin < end => format!(
            "{}{section}{}",
            &previous[..begin],
            &previous[end + PEERS_END.len()..]
        ),
        _ => format!("{previous}\n{section}\n"),
    }
}
