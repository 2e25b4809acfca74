//! `make bench`, accuracy evaluation at scale: the release binary evaluating fleets of 10,000,
//! 50,000 and 200,000 series (`tests/it/common/fleet.rs`: one 24-step forecast per series, an
//! eighth also by a challenger, their actuals) on moto S3, 625 series per shard, planned in
//! partitions of 20 shards (12,500 series). Each partition runs as its own `lstm-forecast
//! evaluate partition` process, as a Lambda invocation or a Kubernetes Job would, evaluating its
//! shards one after another, and reports its peak RSS; then one `evaluate reduce`. Then the
//! largest fleet on ministack: the template's state machine against one `lstm-forecast evaluate`
//! process over the same series unsharded, whose figures must be equal (the bench fails
//! otherwise). Printed as Markdown tables. `EVALUATION_BENCH_SERIES=10000,50000` changes the sizes.

use std::time::Instant;

use lstm_forecast::monitor::store::AccuracyStore;
use serde_json::Value;

// The benches use part of what the tests share.
#[allow(dead_code)]
#[path = "../tests/it/common/emulators.rs"]
mod emulators;
#[allow(dead_code)]
#[path = "../tests/it/common/fleet.rs"]
mod fleet;

/// Series per shard: what one partition's memory follows, as it evaluates one shard at a time.
const SERIES_PER_SHARD: usize = 625;
/// Shards per partition: a partition's series, and so its time.
const SHARDS_PER_PARTITION: u32 = 20;

struct Measured {
    series: usize,
    partitions: usize,
    pairs_per_partition: usize,
    peak_rss: f64,
    added_per_pair: f64,
    slowest_partition: f64,
    mean_partition: f64,
    reduce: f64,
    total: f64,
}

fn main() {
    let sizes: Vec<usize> = std::env::var("EVALUATION_BENCH_SERIES")
        .map(|s| s.split(',').map(|n| n.trim().parse().unwrap()).collect())
        .unwrap_or_else(|_| vec![10_000, 50_000, 200_000]);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let moto = emulators::Moto::start();
    let s3 = emulators::s3_at(&moto.endpoint);
    let largest = *sizes.iter().max().unwrap();
    let mut rows = Vec::new();
    for &series in &sizes {
        let shards = series.div_ceil(SERIES_PER_SHARD) as u32;
        let bucket = format!("evaluation-bench-{series}");
        let store = runtime.block_on(async {
            s3.create_bucket().bucket(&bucket).send().await.unwrap();
            let store = AccuracyStore::new(s3.clone(), &format!("s3://{bucket}/sharded"))
                .unwrap()
                .with_shards(shards)
                .unwrap();
            fleet::write(&store, series).await;
            store
        });
        drop(store);
        let row = partitioned_run(&moto.endpoint, &bucket, series, shards);
        eprintln!("{series} series: {:.1} s", row.total);
        rows.push(row);
    }
    print_table(&rows);
    state_machine_against_one_process(&runtime, largest);
}

/// Plans a run in one partition per shard, runs each partition as its own process, reduces.
fn partitioned_run(endpoint: &str, bucket: &str, series: usize, shards: u32) -> Measured {
    let store = format!("s3://{bucket}/sharded");
    let started = Instant::now();
    let plan = fleet::evaluate_command(
        endpoint,
        &store,
        shards,
        &[
            "plan",
            "--partitions",
            &shards.div_ceil(SHARDS_PER_PARTITION).to_string(),
        ],
    );
    let run = plan["run"].as_u64().unwrap().to_string();
    let mut partitions = Vec::new();
    for range in plan["partitions"].as_array().unwrap() {
        let (first, end) = (range["start"].to_string(), range["end"].to_string());
        let timed = Instant::now();
        let done = fleet::evaluate_command(
            endpoint,
            &store,
            shards,
            &["partition", "--run", &run, "--first", &first, "--end", &end],
        );
        partitions.push((done, timed.elapsed().as_secs_f64()));
    }
    let reduced_at = Instant::now();
    let reduced = fleet::evaluate_command(endpoint, &store, shards, &["reduce", "--run", &run]);
    let reduce = reduced_at.elapsed().as_secs_f64();
    assert_eq!(reduced["pairs"], fleet::pairs(series), "{reduced}");
    let field = |done: &Value, name: &str| done[name].as_f64().unwrap();
    let peak_rss = partitions
        .iter()
        .map(|(done, _)| field(done, "peak_rss_bytes"))
        .fold(0.0, f64::max);
    let added_per_pair = partitions
        .iter()
        .map(|(done, _)| {
            (field(done, "peak_rss_bytes") - field(done, "rss_before_bytes")) / field(done, "pairs")
        })
        .fold(0.0, f64::max);
    let times: Vec<f64> = partitions.iter().map(|(_, t)| *t).collect();
    Measured {
        series,
        partitions: partitions.len(),
        pairs_per_partition: fleet::pairs(series) / partitions.len(),
        peak_rss,
        added_per_pair,
        slowest_partition: times.iter().copied().fold(0.0, f64::max),
        mean_partition: times.iter().sum::<f64>() / times.len() as f64,
        reduce,
        total: started.elapsed().as_secs_f64(),
    }
}

/// The largest fleet again on ministack: written sharded and unsharded, the template's state
/// machine evaluating the first (the real binary as the function, 16 partitions, 4 at once) and
/// one `lstm-forecast evaluate` process the second; asserts they publish the same figures.
fn state_machine_against_one_process(runtime: &tokio::runtime::Runtime, series: usize) {
    let ministack = emulators::Ministack::start_step_functions();
    let s3 = emulators::s3_at(&ministack.endpoint);
    let shards = series.div_ceil(SERIES_PER_SHARD) as u32;
    runtime.block_on(async {
        s3.create_bucket().bucket("fleet").send().await.unwrap();
        for (prefix, shards) in [("whole", 1), ("sharded", shards)] {
            let store = AccuracyStore::new(s3.clone(), &format!("s3://fleet/{prefix}"))
                .unwrap()
                .with_shards(shards)
                .unwrap();
            fleet::write(&store, series).await;
        }
    });
    let started = Instant::now();
    let one = fleet::evaluate_command(&ministack.endpoint, "s3://fleet/whole", 1, &[]);
    let one_seconds = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let finished = fleet::run_evaluation_state_machine(
        &ministack.endpoint,
        "s3://fleet/sharded",
        shards,
        16,
        4,
    );
    let machine_seconds = started.elapsed().as_secs_f64();
    assert_eq!(finished["status"], "SUCCEEDED", "{finished}");
    let merged = &finished["output"];
    assert_eq!(merged["pairs"], fleet::pairs(series), "{finished}");
    let (merged_report, one_report) = (
        merged["report"].as_str().unwrap(),
        one["report"].as_str().unwrap(),
    );
    runtime.block_on(fleet::assert_same_outcome(
        &s3,
        "fleet",
        ("sharded", merged_report),
        ("whole", one_report),
    ));
    println!(
        "\nOn ministack, {series} series: the template's state machine ({shards} shards, 16 \
         partitions, 4 at once, the function a local process) {machine_seconds:.1} s; one \
         `lstm-forecast evaluate` process over the same series unsharded {one_seconds:.1} s, peak \
         RSS {:.0} MB. The report, scores, comparisons and recalibrated intervals are equal \
         (counts exactly, sums within 1e-12).",
        one["peak_rss_bytes"].as_f64().unwrap() / 1e6
    );
}

fn print_table(rows: &[Measured]) {
    println!("\n### Evaluation at scale (release, moto S3, {SERIES_PER_SHARD} series per shard, {SHARDS_PER_PARTITION} shards per partition, one process each)\n");
    println!("| series | partitions | pairs per partition | peak RSS per worker | RSS added per pair | slowest partition | mean partition | reduce | total |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in rows {
        println!(
            "| {} | {} | {} | {:.0} MB | {:.0} B | {:.1} s | {:.1} s | {:.1} s | {:.1} s |",
            r.series,
            r.partitions,
            r.pairs_per_partition,
            r.peak_rss / 1e6,
            r.added_per_pair,
            r.slowest_partition,
            r.mean_partition,
            r.reduce,
            r.total
        );
    }
    let peaks: Vec<f64> = rows.iter().map(|r| r.peak_rss).collect();
    let spread =
        peaks.iter().copied().fold(0.0, f64::max) / peaks.iter().copied().fold(f64::MAX, f64::min);
    println!("\nPeak RSS per worker, largest over smallest across sizes: {spread:.2}x (target: within 1.2x).");
}

/// A path in the repository (what the shared emulator helpers expect of their crate).
fn repo_path(relative: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}
