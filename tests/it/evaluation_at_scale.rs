//! Accuracy evaluation at any number of series: the store written in series-hash shards, a run
//! planned once, evaluated in partitions (each a range of shards) and merged by one reduce step.
//! Its figures are what one process publishes for the same data; a partition stopped and retried
//! scores nothing twice; the template's state machine runs it on ministack.

use crate::common;

use common::emulators::{list_keys, s3_at, Ministack, Moto};
use common::fleet::{self, assert_same_figures, published_state, reported_figures, settled_marks};
use lstm_forecast::metrics::Telemetry;
use lstm_forecast::monitor::evaluate::{
    evaluate_partition, plan_run, reduce_run, run_evaluation, EvaluationWindow, Recalibration,
};
use lstm_forecast::monitor::store::{AccuracyStore, StoreError};
use serde_json::json;

/// The window of the bundled model (24 hourly steps) with an hour's grace, as the function
/// works it out.
fn hourly_window() -> EvaluationWindow {
    EvaluationWindow::for_horizon(
        24,
        std::time::Duration::from_secs(3600),
        chrono::Duration::hours(1),
    )
}

async fn bucket(s3: &aws_sdk_s3::Client, name: &str) {
    s3.create_bucket().bucket(name).send().await.unwrap();
}

fn store(s3: &aws_sdk_s3::Client, bucket: &str, prefix: &str, shards: u32) -> AccuracyStore {
    AccuracyStore::new(s3.clone(), &format!("s3://{bucket}/{prefix}"))
        .unwrap()
        .with_shards(shards)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_in_partitions_publishes_what_one_process_publishes_for_the_same_data() {
    // GIVEN 2,000 series written unsharded, and the same series in 8 shards
    let moto = Moto::shared();
    let s3 = s3_at(&moto.endpoint);
    bucket(&s3, "partitioned-equal").await;
    let whole = store(&s3, "partitioned-equal", "whole", 1);
    let sharded = store(&s3, "partitioned-equal", "sharded", 8);
    fleet::write(&whole, 2_000).await;
    fleet::write(&sharded, 2_000).await;
    // (each shard's data in its own folder)
    assert!(
        !list_keys(&s3, "partitioned-equal", "sharded/forecasts/shard=0007/")
            .await
            .is_empty()
    );
    // WHEN one process evaluates the first, and the second is planned in 3 partitions,
    // evaluated partition by partition and reduced
    let one = run_evaluation(
        &whole,
        &Telemetry::disabled(),
        chrono::Utc::now(),
        hourly_window(),
    )
    .await
    .unwrap();
    let plan = plan_run(
        &sharded,
        chrono::Utc::now(),
        hourly_window(),
        &Recalibration::default(),
        3,
    )
    .await
    .unwrap();
    assert_eq!(plan.partitions, vec![0..3, 3..6, 6..8]);
    for partition in &plan.partitions {
        evaluate_partition(&sharded, plan.run, partition.clone())
            .await
            .unwrap();
    }
    let merged = reduce_run(&sharded, &Telemetry::disabled(), plan.run)
        .await
        .unwrap();
    // THEN every pair is scored once, and the reports and the state they leave are the same
    assert_eq!(one.evaluation.pairs, fleet::pairs(2_000));
    assert_eq!(merged.evaluation.pairs, one.evaluation.pairs);
    // Hour 7 of every fiftieth series, forecast by version 1, and by 2 where it is every 200th
    assert_eq!(one.evaluation.missing_actuals, 40 + 10);
    fleet::assert_same_outcome(
        &s3,
        "partitioned-equal",
        ("sharded", &merged.report),
        ("whole", &one.report),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_partition_stopped_after_any_of_its_writes_and_retried_scores_nothing_twice() {
    use common::shards::FaultyS3;
    let moto = Moto::shared();
    let s3 = s3_at(&moto.endpoint);
    let faulty = FaultyS3::in_front_of(&moto.endpoint).await;
    let through_proxy = s3_at(&faulty.endpoint);
    let window = hourly_window();
    let recalibration = Recalibration::default();
    // GIVEN 120 series in 4 shards, evaluated in 2 partitions with nothing interrupted
    bucket(&s3, "retried-reference").await;
    let reference = store(&s3, "retried-reference", "m", 4);
    fleet::write(&reference, 120).await;
    let plan = plan_run(&reference, chrono::Utc::now(), window, &recalibration, 2)
        .await
        .unwrap();
    let first = plan.partitions[0].clone();
    let proxied = store(&through_proxy, "retried-reference", "m", 4);
    faulty.heal();
    evaluate_partition(&proxied, plan.run, first.clone())
        .await
        .unwrap();
    let writes = faulty.forwarded_writes();
    evaluate_partition(&reference, plan.run, plan.partitions[1].clone())
        .await
        .unwrap();
    let expected = reduce_run(&reference, &Telemetry::disabled(), plan.run)
        .await
        .unwrap();
    let expected_report = reported_figures(&s3, &expected.report).await;
    let expected_state = published_state(&s3, "retried-reference", "m").await;
    let expected_marks = settled_marks(&s3, "retried-reference", "m/").await;
    assert_eq!(expected.evaluation.pairs, fleet::pairs(120));
    assert!(writes >= 8, "{writes} writes");
    for stop_after in 0..writes {
        // WHEN the first partition stops after `stop_after` of its writes (a timeout, an OOM
        // kill, S3 refusing), is retried as Step Functions would, and retried once more after
        // it finished
        let name = format!("retried-after-{stop_after}");
        bucket(&s3, &name).await;
        let direct = store(&s3, &name, "m", 4);
        fleet::write(&direct, 120).await;
        let plan = plan_run(&direct, chrono::Utc::now(), window, &recalibration, 2)
            .await
            .unwrap();
        let proxied = store(&through_proxy, &name, "m", 4);
        faulty.stop_writing_after(stop_after);
        let stopped = evaluate_partition(&proxied, plan.run, first.clone()).await;
        assert!(
            stopped.is_err(),
            "stopped after write {stop_after} of {writes}"
        );
        faulty.heal();
        // A reduce before the partition finished publishes nothing and names it.
        let early = reduce_run(&direct, &Telemetry::disabled(), plan.run).await;
        assert!(
            matches!(&early, Err(StoreError::RunPartMissing { what, .. }) if what.contains("shard")),
            "{early:?}"
        );
        let retried = evaluate_partition(&direct, plan.run, first.clone())
            .await
            .unwrap();
        let again = evaluate_partition(&direct, plan.run, first.clone())
            .await
            .unwrap();
        assert_eq!(
            retried, again,
            "a finished partition reports what it scored"
        );
        evaluate_partition(&direct, plan.run, plan.partitions[1].clone())
            .await
            .unwrap();
        let merged = reduce_run(&direct, &Telemetry::disabled(), plan.run)
            .await
            .unwrap();
        // THEN each pair is settled once, and the run publishes what the uninterrupted one did
        assert_eq!(settled_marks(&s3, &name, "m/").await, expected_marks);
        assert_same_figures(
            &reported_figures(&s3, &merged.report).await,
            &expected_report,
            &format!("stopped after write {stop_after}: report"),
        );
        assert_same_figures(
            &published_state(&s3, &name, "m").await,
            &expected_state,
            &format!("stopped after write {stop_after}: state"),
        );
    }
}

#[tokio::test]
async fn forged_partition_and_reduce_events_change_nothing_and_say_why() {
    // GIVEN a store of 40 series in 4 shards with one run planned
    let moto = Moto::shared();
    let s3 = s3_at(&moto.endpoint);
    bucket(&s3, "forged-partitions").await;
    let sharded = store(&s3, "forged-partitions", "m", 4);
    fleet::write(&sharded, 40).await;
    let plan = plan_run(
        &sharded,
        chrono::Utc::now(),
        hourly_window(),
        &Recalibration::default(),
        2,
    )
    .await
    .unwrap();
    let before = list_keys(&s3, "forged-partitions", "m/").await;
    // WHEN partitions name shards the run does not have, or a run never planned, or come from a
    // process set to another number of shards, and a reduce names a run never planned
    let outside = evaluate_partition(&sharded, plan.run, 3..9).await;
    let empty = evaluate_partition(&sharded, plan.run, 2..2).await;
    let unplanned = evaluate_partition(&sharded, plan.run + 5, 0..1).await;
    let reduced = reduce_run(&sharded, &Telemetry::disabled(), plan.run + 5).await;
    let two_shards = store(&s3, "forged-partitions", "m", 2);
    let other_layout = evaluate_partition(&two_shards, plan.run, 0..1).await;
    // THEN each is refused with what is wrong, and the store is as it was
    assert!(
        matches!(outside, Err(StoreError::ShardRange { shards: 4, .. })),
        "{outside:?}"
    );
    assert!(
        matches!(empty, Err(StoreError::ShardRange { .. })),
        "{empty:?}"
    );
    assert!(
        matches!(
            other_layout,
            Err(StoreError::Layout {
                recorded: 4,
                configured: 2,
                ..
            })
        ),
        "{other_layout:?}"
    );
    for refused in [unplanned.map(|_| ()), reduced.map(|_| ())] {
        let message = refused.unwrap_err().to_string();
        assert!(message.contains("has no plan"), "{message}");
    }
    assert_eq!(list_keys(&s3, "forged-partitions", "m/").await, before);
}

#[tokio::test]
async fn a_store_evaluated_with_another_number_of_shards_is_refused_and_misplaced_lines_are_quarantined(
) {
    // GIVEN a store of 40 series written in 4 shards and evaluated once
    let moto = Moto::shared();
    let s3 = s3_at(&moto.endpoint);
    bucket(&s3, "other-shards").await;
    let four = store(&s3, "other-shards", "m", 4);
    fleet::write(&four, 40).await;
    run_evaluation(
        &four,
        &Telemetry::disabled(),
        chrono::Utc::now(),
        hourly_window(),
    )
    .await
    .unwrap();
    // WHEN an evaluation set to 8 shards runs on it
    let eight = store(&s3, "other-shards", "m", 8);
    let refused = run_evaluation(
        &eight,
        &Telemetry::disabled(),
        chrono::Utc::now(),
        hourly_window(),
    )
    .await
    .unwrap_err();
    // THEN it stops before reading, naming both numbers
    assert!(
        matches!(
            refused,
            StoreError::Layout {
                recorded: 4,
                configured: 8,
                ..
            }
        ),
        "{refused}"
    );
    assert!(
        refused.to_string().contains("FORECAST_LOG_SHARDS"),
        "{refused}"
    );
    // AND WHEN a writer set to 2 shards puts its series' actuals in the 4-shard folders
    let two = store(&s3, "other-shards", "m", 2);
    two.append_actuals(&fleet::actuals(40..60)).await.unwrap();
    let run = run_evaluation(
        &four,
        &Telemetry::disabled(),
        chrono::Utc::now(),
        hourly_window(),
    )
    .await
    .unwrap();
    // THEN those of another shard's series are quarantined, loudly, and none is scored there
    assert!(run.evaluation.quarantined_lines > 0);
    assert!(
        run.evaluation.quarantined[0]
            .cause
            .contains("FORECAST_LOG_SHARDS"),
        "{:?}",
        run.evaluation.quarantined[0]
    );
    assert_eq!(run.evaluation.pairs, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_template_state_machine_evaluates_20_000_series_in_16_partitions_as_one_process_does() {
    const SERIES: usize = 20_000;
    // GIVEN 20,000 series written unsharded, and the same in 16 shards, on ministack's S3
    let ministack = Ministack::start_step_functions();
    let s3 = s3_at(&ministack.endpoint);
    bucket(&s3, "fleet").await;
    let whole = store(&s3, "fleet", "whole", 1);
    let sharded = store(&s3, "fleet", "sharded", 16);
    fleet::write(&whole, SERIES).await;
    fleet::write(&sharded, SERIES).await;
    // WHEN `lstm-forecast evaluate` scores the first in one process
    let one = fleet::evaluate_command(&ministack.endpoint, "s3://fleet/whole", 1, &[]);
    // AND the template's state machine, started as its schedule starts it, the second: the
    // real binary as the function, in 16 partitions, 4 at once
    let (_, schedule) = fleet::template_evaluation_state_machine();
    assert_eq!(schedule, json!({"partitions": 16, "max_concurrency": 16}));
    let finished =
        fleet::run_evaluation_state_machine(&ministack.endpoint, "s3://fleet/sharded", 16, 16, 4);
    // THEN the run succeeds, every pair scored once, and it publishes what the process did
    assert_eq!(finished["status"], "SUCCEEDED", "{finished}");
    let output = &finished["output"];
    assert_eq!(output["action"], "evaluate-reduce", "{finished}");
    assert_eq!(output["pairs"], json!(fleet::pairs(SERIES)), "{finished}");
    assert_eq!(one["pairs"], output["pairs"]);
    let partials = list_keys(&s3, "fleet", "sharded/state/runs/0000000001/")
        .await
        .into_iter()
        .filter(|k| k.contains("/partial-"))
        .count();
    assert_eq!(partials, 16);
    let merged_report = output["report"].as_str().unwrap();
    let one_report = one["report"].as_str().unwrap();
    fleet::assert_same_outcome(
        &s3,
        "fleet",
        ("sharded", merged_report),
        ("whole", one_report),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn changing_the_number_of_partitions_between_runs_loses_and_doubles_no_pair() {
    // GIVEN 240 series in 8 shards, and the same unsharded, whose actuals arrive in two halves
    let moto = Moto::shared();
    let s3 = s3_at(&moto.endpoint);
    bucket(&s3, "repartitioned").await;
    let whole = store(&s3, "repartitioned", "whole", 1);
    let sharded = store(&s3, "repartitioned", "sharded", 8);
    for target in [&whole, &sharded] {
        target
            .append_forecasts(&fleet::forecasts(0..240))
            .await
            .unwrap();
        target
            .append_actuals(&fleet::actuals(0..120))
            .await
            .unwrap();
    }
    let (window, recalibration) = (hourly_window(), Recalibration::default());
    let in_partitions = |partitions: u32| {
        let sharded = sharded.clone();
        let recalibration = recalibration.clone();
        async move {
            let plan = plan_run(
                &sharded,
                chrono::Utc::now(),
                window,
                &recalibration,
                partitions,
            )
            .await
            .unwrap();
            assert_eq!(plan.partitions.len(), partitions as usize);
            for partition in &plan.partitions {
                evaluate_partition(&sharded, plan.run, partition.clone())
                    .await
                    .unwrap();
            }
            reduce_run(&sharded, &Telemetry::disabled(), plan.run)
                .await
                .unwrap()
        }
    };
    // WHEN the first half is evaluated in 2 partitions, the second in 5 (and one process
    // evaluates the unsharded store at the same points)
    let first = in_partitions(2).await;
    let one_first = run_evaluation(&whole, &Telemetry::disabled(), chrono::Utc::now(), window)
        .await
        .unwrap();
    for target in [&whole, &sharded] {
        target
            .append_actuals(&fleet::actuals(120..240))
            .await
            .unwrap();
    }
    let second = in_partitions(5).await;
    let one_second = run_evaluation(&whole, &Telemetry::disabled(), chrono::Utc::now(), window)
        .await
        .unwrap();
    // THEN every pair is scored once across the two runs, as one process scored them
    assert_eq!(
        first.evaluation.pairs + second.evaluation.pairs,
        fleet::pairs(240)
    );
    assert_eq!(first.evaluation.pairs, one_first.evaluation.pairs);
    assert_eq!(second.evaluation.pairs, one_second.evaluation.pairs);
    fleet::assert_same_outcome(
        &s3,
        "repartitioned",
        ("sharded", &second.report),
        ("whole", &one_second.report),
    )
    .await;
}
