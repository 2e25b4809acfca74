//! The reduce step: every shard's sums merged once, and what the run publishes worked out from
//! them, committed and applied (see `commit`).

use super::commit::{apply, commit_and_apply, partial_name, RunJournal};
use super::figures::EvaluationRun;
use super::partial::Partial;
use super::plan::{EvaluationPlan, PLAN};
use super::recalibration::{calibrated_versions, recalibrated_best_effort};
use super::report::{log_summary, merged_comparisons, merged_latest_scores, render_report};
use crate::metrics::Telemetry;
use crate::monitor::store::{AccuracyStore, StoreError};

/// Partials read at once: S3's latency hidden, memory bounded by a handful of shards' sums.
const PARTIALS_AT_ONCE: usize = 16;

/// Merges the partial results of run `run`'s shards, publishes the metrics, and commits the
/// comparisons, calibration, scores and report. Fails, naming it, while a shard is unfinished.
pub async fn reduce_run(
    store: &AccuracyStore,
    telemetry: &Telemetry,
    run: u64,
) -> Result<EvaluationRun, StoreError> {
    let plan: EvaluationPlan = store
        .required_run_part(
            run,
            PLAN,
            "plan".into(),
            "a run is planned (evaluate-plan) before it is reduced",
        )
        .await?;
    let merged = merge_partials(store, &plan).await?;
    let now = plan.now;
    let mut evaluation = merged.finish();
    if let Some(committed) = store.committed_run::<RunJournal>(run).await? {
        // A retried reduce step: the run is committed; finish applying it, publish nothing again.
        let report = apply(store, &committed).await?;
        return Ok(EvaluationRun {
            run,
            evaluation,
            report,
        });
    }
    let comparisons = merged_comparisons(store, &mut evaluation, now).await?;
    let calibrations =
        recalibrated_best_effort(store, &evaluation.scored_errors, &plan.recalibration, now).await;
    evaluation.recalibrated = calibrations
        .as_ref()
        .map(calibrated_versions)
        .unwrap_or_default();
    let journal = RunJournal {
        run,
        comparisons,
        calibrations,
        scores: merged_latest_scores(store, &evaluation, now).await?,
        report: render_report(store, &evaluation, now),
        state: None,
        settled: Vec::new(),
    };
    let report = commit_and_apply(store, &journal).await?;
    // After the commit: a crash before these are sent loses them, never sends them twice.
    evaluation.record(telemetry);
    log_summary(&evaluation, &report);
    Ok(EvaluationRun {
        run,
        evaluation,
        report,
    })
}

/// Every shard's partial result, merged in shard order.
async fn merge_partials(
    store: &AccuracyStore,
    plan: &EvaluationPlan,
) -> Result<Partial, StoreError> {
    use futures_util::{StreamExt, TryStreamExt};
    let mut merged = Partial::default();
    let mut partials = futures_util::stream::iter(0..plan.shards)
        .map(|index| async move {
            store
                .required_run_part::<Partial>(
                    plan.run,
                    &partial_name(index),
                    format!("result from shard {index}"),
                    "its partition has not finished (it failed, or is still running); rerun it with the same run and shards, or start the evaluation again, which resumes this run",
                )
                .await
        })
        .buffered(PARTIALS_AT_ONCE);
    while let Some(partial) = partials.try_next().await? {
        merged.merge(partial);
    }
    Ok(merged)
}
