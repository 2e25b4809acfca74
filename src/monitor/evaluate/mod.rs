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
#[cfg(test)]
mod fixtures;
mod increment;
mod late;
mod recalibration;
mod report;
mod scoring;
mod windows;

pub use self::charted::{Band, ChartSeries};
pub use self::comparing::VersionPair;
pub use self::recalibration::Recalibration;
pub use self::report::MAX_QUARANTINED_LISTED;
pub use self::scoring::{
    evaluate, ComparedVersions, Evaluation, Increment, IntervalScores, VersionScores,
};
pub use self::windows::EvaluationWindow;

use chrono::{DateTime, Utc};
use serde::Serialize;

use self::commit::{commit_and_apply, roll_forward, RunJournal};
use self::increment::{
    advanced_watermark, read_arrivals, read_origin_hours, Arrivals, OriginReads,
};
use self::recalibration::{calibrated_versions, recalibrated_best_effort};
use self::report::{log_summary, merged_comparisons, merged_latest_scores, render_report};
use self::windows::DueTargets;
use crate::metrics::Telemetry;
use crate::monitor::store::{AccuracyStore, StoreError, LEASE_HOLD};

/// The result of a full run against the store.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationRun {
    #[serde(flatten)]
    pub evaluation: Evaluation,
    pub report: String,
}

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
/// writes the report and moves the watermark (see the module doc).
pub async fn run_evaluation_with(
    store: &AccuracyStore,
    telemetry: &Telemetry,
    now: DateTime<Utc>,
    window: EvaluationWindow,
    recalibration: &Recalibration,
) -> Result<EvaluationRun, StoreError> {
    // One evaluation at a time: a second one stops here, having written nothing.
    let lease = store.claim_evaluation(now, LEASE_HOLD).await?;
    let run = run_claimed(store, telemetry, now, window, recalibration).await;
    if let Err(e) = store.release_evaluation(&lease).await {
        tracing::warn!("could not release the evaluation's claim (it lapses by itself): {e}");
    }
    run
}

/// [`run_evaluation_with`] once the claim is held.
async fn run_claimed(
    store: &AccuracyStore,
    telemetry: &Telemetry,
    now: DateTime<Utc>,
    window: EvaluationWindow,
    recalibration: &Recalibration,
) -> Result<EvaluationRun, StoreError> {
    let state = roll_forward(store).await?;
    let mut arrivals = read_arrivals(store, &state, now, window.settle).await?;
    let due = DueTargets::after(
        &state.actuals_seen_until,
        &arrivals.actuals.items,
        window.grace,
    );
    let mut hours = due.origin_hours(&arrivals.actuals.items, window.span);
    let written = late::origin_hours_written_since(store, &state, &due.seen_until, window).await?;
    hours.extend(written.hours.iter().copied());
    let mut origins = read_origin_hours(store, &windows::merge_ranges(hours)).await?;
    let earlier = late::earlier_actuals(
        store,
        &origins.forecasts.items,
        &origins.settled.items,
        &arrivals.actuals.items,
        &due.seen_until,
    )
    .await?;

    let (mut evaluation, settled) = evaluate(&Increment {
        forecasts: &origins.forecasts.items,
        new_actuals: &arrivals.actuals.items,
        settled: &origins.settled.items,
        due_until: &due.due_until,
        earlier_actuals: &earlier.items,
    });
    add_what_was_read(&mut evaluation, &mut arrivals, &mut origins);

    let run = state.runs + 1;
    // Where a forecast that comes late finds these actuals; written before the commit (see
    // `index_actuals_by_hour`).
    store
        .index_actuals_by_hour(&arrivals.actuals.items, now)
        .await?;
    let comparisons = merged_comparisons(store, &mut evaluation, now).await?;
    let calibrations =
        recalibrated_best_effort(store, &evaluation.scored_errors, recalibration, now).await;
    evaluation.recalibrated = calibrations
        .as_ref()
        .map(calibrated_versions)
        .unwrap_or_default();
    let journal = RunJournal {
        run,
        state: advanced_watermark(&arrivals, due.seen_until, &written.listed, run),
        settled,
        comparisons,
        calibrations,
        scores: merged_latest_scores(store, &evaluation, now).await?,
        report: render_report(store, &evaluation, &origins.forecasts.items, now),
    };
    let report = commit_and_apply(store, &journal).await?;
    // After the commit: a crash before these are sent loses them, never sends them twice.
    evaluation.record(telemetry);
    log_summary(&evaluation, &report);
    Ok(EvaluationRun { evaluation, report })
}

/// What [`evaluate`] cannot know: the arrival window, the objects read, and the unreadable lines
/// met (in actuals, then forecasts, then settled marks), which the reads give up.
fn add_what_was_read(
    evaluation: &mut Evaluation,
    arrivals: &mut Arrivals,
    origins: &mut OriginReads,
) {
    evaluation.actuals_after = arrivals.after;
    evaluation.actuals_until = arrivals.until;
    evaluation.objects_read =
        arrivals.keys.len() + origins.forecast_keys.len() + origins.settled_keys.len();
    let quarantined = std::mem::take(&mut arrivals.actuals.quarantined)
        .into_iter()
        .chain(std::mem::take(&mut origins.forecasts.quarantined))
        .chain(std::mem::take(&mut origins.settled.quarantined))
        .collect();
    evaluation.set_quarantined(quarantined);
}
