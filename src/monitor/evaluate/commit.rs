//! Committing a run: one conditional write decides that it happened, and every other write of
//! the run is made from that record.
//!
//! A run changes many objects: the settled marks of each origin hour, the comparisons, the
//! online calibration, the latest scores, the report and the watermark. S3 writes them one at a
//! time, so a run written in place and stopped half way (a timeout, an OOM kill, an S3 error)
//! leaves pairs settled but never scored, or scores them a second time on the rerun. Instead:
//!
//! 1. The run computes everything in memory, reading but not writing the store (the one
//!    exception, the index of the actuals it read, is named after the run and replaced by a
//!    retry of it: see `AccuracyStore::index_actuals_by_hour`).
//! 2. It writes all of it as one journal, `state/runs/<run>.json`, with If-None-Match. That
//!    write is the commit: before it the store holds nothing of the run, after it all of it.
//! 3. It applies the journal: each object written by name from it (rewriting one changes
//!    nothing), the watermark (`evaluation.json`, whose `runs` becomes the run's number) last.
//!
//! The next run starts by finishing a committed run that stopped during step 3
//! ([`roll_forward`]). A crash before the commit leaves the watermark where it was, so the
//! rerun reads the same actuals and scores them once.
//!
//! Two runs can meet only when a run outlives its claim (`state/evaluation.lease`). Then
//! neither can undo the other: journals are kept (the bucket's lifecycle expires them after a
//! month), so a run number is committed once, ever; and each state file carries the number of
//! the run that wrote it and is replaced only conditionally and only by a later run
//! ([`AccuracyStore::write_state_of_run`]). The slower run stops with `RunTaken`, and what it
//! committed is already applied, or is applied by the next run.
//!
//! Metrics are not part of the store: the run that commits records them after the commit. A
//! crash before they are sent loses that run's metric points; it never sends them twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::monitor::calibration::OnlineCalibrations;
use crate::monitor::store::{
    AccuracyStore, EvaluationState, SettledPair, StoreError, VersionScore,
};
use crate::monitor::verdict::Comparisons;

/// Everything one run changes in the store, written whole before any of it is applied.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RunJournal {
    pub(super) run: u64,
    /// The watermark after the run; its `runs` is `run`.
    pub(super) state: EvaluationState,
    /// The pairs the run scored or counted missing, with their forecasts' origins.
    pub(super) settled: Vec<(DateTime<Utc>, SettledPair)>,
    /// Each of these replaces its state file whole; `None` leaves the file as it is.
    pub(super) comparisons: Option<Comparisons>,
    pub(super) calibrations: Option<OnlineCalibrations>,
    pub(super) scores: Option<BTreeMap<String, VersionScore>>,
    pub(super) report: ReportFolder,
}

/// A report folder's files, rendered.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ReportFolder {
    pub(super) generated_at: DateTime<Utc>,
    pub(super) report_json: String,
    /// (file name, SVG)
    pub(super) charts: Vec<(String, String)>,
}

/// Commits `journal` and applies it; returns the report folder's URI.
pub(super) async fn commit_and_apply(
    store: &AccuracyStore,
    journal: &RunJournal,
) -> Result<String, StoreError> {
    store.commit_run(journal.run, journal).await?;
    apply(store, journal).await
}

/// The watermark to start a run from, once the run the last evaluation committed is finished.
pub(super) async fn roll_forward(store: &AccuracyStore) -> Result<EvaluationState, StoreError> {
    let state = store.evaluation_state().await?;
    let next = state.runs + 1;
    let Some(journal) = store.committed_run::<RunJournal>(next).await? else {
        return Ok(state);
    };
    tracing::warn!(
        run = next,
        "finishing evaluation run {next}: it was committed, then stopped before all its writes were made"
    );
    apply(store, &journal).await?;
    Ok(journal.state)
}

/// Writes everything `journal` holds, by name, then the watermark. Applying a journal twice,
/// after a partial apply, or after a later run's, ends in the same store.
async fn apply(store: &AccuracyStore, journal: &RunJournal) -> Result<String, StoreError> {
    let run = journal.run;
    store.write_settled(&journal.settled, run).await?;
    if let Some(comparisons) = &journal.comparisons {
        store
            .write_state_of_run("comparisons.json", comparisons, run)
            .await?;
    }
    if let Some(calibrations) = &journal.calibrations {
        store
            .write_state_of_run("calibration.json", calibrations, run)
            .await?;
    }
    if let Some(scores) = &journal.scores {
        store.write_state_of_run("scores.json", scores, run).await?;
    }
    let report = &journal.report;
    let charts: Vec<(&str, Vec<u8>)> = report
        .charts
        .iter()
        .map(|(name, svg)| (name.as_str(), svg.clone().into_bytes()))
        .collect();
    let uri = store
        .write_report(report.report_json.as_bytes(), &charts, report.generated_at)
        .await?;
    store
        .write_state_of_run("evaluation.json", &journal.state, run)
        .await?;
    Ok(uri)
}
