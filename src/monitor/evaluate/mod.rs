//! Evaluation: join logged forecasts with actuals on (series id, target timestamp) and score them.
//!
//! Each run is driven by the actuals that arrived since the last one (see `store` for the
//! layout). A (forecast, target) pair is scored when its actual arrives, and counted missing once
//! actuals of its series have arrived for timestamps more than the grace beyond it. Either way it
//! is marked settled beside its forecast, so it is dealt with exactly once, whatever replays,
//! duplicates or retried runs follow. Duplicate and conflicting actuals are counted: the first
//! value wins.
//!
//! A run ([`run_evaluation_with`]) first claims the store (`state/evaluation.lease`, a
//! conditional write): a second evaluation at the same time stops before writing anything. Then:
//!
//! 1. finishes the previous run if it was committed but not fully written (`commit`);
//! 2. reads the actual objects written since the watermark;
//! 3. works out which targets they make due, and so which origin hours hold the forecasts they
//!    can complete or make missing; reads those forecasts and their settled marks;
//! 4. pairs and scores ([`evaluate`], no I/O);
//! 5. works out, in memory, the settled marks, the comparisons, the recalibrated intervals, the
//!    latest scores, the report and the new watermark, and commits them as one journal object;
//! 6. writes each of them from the journal, and records the metrics.
//!
//! A run that stops at any point scores no pair twice and loses none (`commit`).
//!
//! The cost follows what arrived, not the history.
//!
//! # Layout
//!
//! - `scoring`: pairing forecasts with actuals, the scores, the settled marks ([`evaluate`]).
//! - `windows`: how far a run looks: the due targets and the origin hours to read.
//! - `increment`: reading the new actuals and the forecasts they concern; the watermark.
//! - `recalibration`: the scored errors feed the online calibration of intervals.
//! - `report`: the metrics, the report folder, the comparisons and the latest scores.
//! - `commit`: the run's journal, the one write that commits it, and its application.
//! - `charted`: which series the chart draws; `chart`: the report's SVG chart.
//! - `late`: forecasts that reach the log after their actuals were read.
//! - `comparing`: versions compared on the same targets, for champion/challenger decisions;
//!   `compared_chart`: the report's chart of their cumulative loss differential.

mod chart;
mod charted;
mod commit;
mod compared_chart;
mod comparing;
mod figures;
#[cfg(test)]
mod fixtures;
mod increment;
mod late;
mod partial;
mod plan;
mod recalibration;
mod reduce;
mod report;
mod scoring;
mod shard;
mod windows;

pub use self::charted::{Band, ChartSeries};
pub use self::comparing::VersionPair;
pub use self::figures::{
    ComparedVersions, Evaluation, EvaluationRun, IntervalScores, VersionScores,
};
pub use self::partial::Partial;
pub use self::partial::MAX_QUARANTINED_LISTED;
pub use self::plan::{plan_run, split, EvaluationPlan, PlannedWindow};
pub use self::recalibration::Recalibration;
pub use self::reduce::reduce_run;
pub use self::scoring::{evaluate, evaluate_part, Increment};
pub use self::shard::evaluate_partition;
pub use self::windows::EvaluationWindow;

use chrono::{DateTime, Utc};

use crate::metrics::Telemetry;
use crate::monitor::store::{AccuracyStore, StoreError, LEASE_HOLD};

/// [`run_evaluation_with`] with the default [`Recalibration`].
pub async fn run_evaluation(
    store: &AccuracyStore,
    telemetry: &Telemetry,
    now: DateTime<Utc>,
    window: EvaluationWindow,
) -> Result<EvaluationRun, StoreError> {
    run_evaluation_with(store, telemetry, now, window, &Recalibration::default()).await
}

/// Reads the actuals that arrived since the last run and the forecasts they can complete, scores
/// the pairs, marks them settled, records the accuracy metrics, recalibrates the intervals,
/// writes the report and moves the watermark (see the module doc): in one process, every shard
/// in turn, through the same plan, partition and reduce steps as a fanned-out run.
pub async fn run_evaluation_with(
    store: &AccuracyStore,
    telemetry: &Telemetry,
    now: DateTime<Utc>,
    window: EvaluationWindow,
    recalibration: &Recalibration,
) -> Result<EvaluationRun, StoreError> {
    // One evaluation at a time: a second one stops here, having written nothing.
    let lease = store.claim_evaluation(now, LEASE_HOLD).await?;
    let run = async {
        let plan = plan_run(store, now, window, recalibration, 1).await?;
        for partition in &plan.partitions {
            evaluate_partition(store, plan.run, partition.clone()).await?;
        }
        reduce_run(store, telemetry, plan.run).await
    }
    .await;
    if let Err(e) = store.release_evaluation(&lease).await {
        tracing::warn!("could not release the evaluation's claim (it lapses by itself): {e}");
    }
    run
}
