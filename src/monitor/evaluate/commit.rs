//! Committing a run: conditional writes decide what happened, and every other write of the run
//! is made from their records.
//!
//! A run changes many objects: per shard its settled marks and watermark, then the
//! comparisons, the online calibration, the latest scores and the report. S3 writes them one at
//! a time, so a run written in place and stopped half way (a timeout, an OOM kill, an S3 error)
//! leaves pairs settled but never scored, or scores them a second time on the rerun. Instead
//! (`state/runs/<run>/...` and `state/runs/<run>.json`):
//!
//! 1. The plan (`plan.json`, If-None-Match) fixes the run's number, clock, window and shards.
//!    Every attempt at the run, a retried partition or a second execution, works from it.
//! 2. Each shard computes its part in memory, reading but not writing the shard (the one
//!    exception, the index of the actuals it read, has names of its own: see
//!    `AccuracyStore::index_actuals_by_hour`), and commits it as one journal
//!    (`shard-NNNN.json`, If-None-Match): its settled marks, its next watermark and its sums.
//!    Then it applies the journal ([`apply_shard`]): the marks, the watermark, and last the sums
//!    as `partial-NNNN.json`. A retried shard finds its journal and applies it again, so it
//!    scores nothing twice.
//! 3. The reduce step merges every shard's sums (it fails, naming the shard, while one is
//!    missing), computes the comparisons, calibration, scores and report, and commits them as
//!    the run's journal (If-None-Match), then applies it ([`apply`]): each state file by name,
//!    and `runs.json` last.
//!
//! The next run starts by finishing a committed run that stopped during its apply
//! ([`roll_forward`]); a run planned but never committed is resumed, not replanned.
//!
//! Two attempts can meet only when a run outlives its claim (`state/evaluation.lease`), or a
//! state machine and an operator's `evaluate` resume the same run. Then neither can undo the
//! other: journals are kept (the bucket's lifecycle expires them after a month), so each part of
//! a run number is committed once, ever; and each state file carries the number of the run that
//! wrote it and is replaced only conditionally and only by a later run
//! ([`AccuracyStore::write_state_of_run`]). The slower attempt stops with `RunTaken`, or
//! applies what the faster one committed.
//!
//! Metrics are not part of the store: the reduce step that commits records them after the
//! commit. A crash before they are sent loses that run's metric points; it never sends them
//! twice.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::partial::Partial;
use crate::monitor::calibration::OnlineCalibrations;
use crate::monitor::store::{
    AccuracyStore, EvaluationState, SettledLine, StoreError, VersionScore,
};
use crate::monitor::verdict::Comparisons;

/// Everything the reduce step of one run changes at the store's root, written whole before any
/// of it is applied.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RunJournal {
    pub(super) run: u64,
    /// Each of these replaces its state file whole; `None` leaves the file as it is.
    pub(super) comparisons: Option<Comparisons>,
    pub(super) calibrations: Option<OnlineCalibrations>,
    pub(super) scores: Option<BTreeMap<String, VersionScore>>,
    pub(super) report: ReportFolder,
    /// A journal of the release before shards (one process wrote the watermark and the settled
    /// marks with the rest): applied as it was.
    #[serde(default, skip_serializing)]
    pub(super) state: Option<EvaluationState>,
    #[serde(default, skip_serializing)]
    pub(super) settled: Vec<(DateTime<Utc>, SettledLine)>,
}

/// What one shard's part of a run changes in the shard, and the sums it adds to the run.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct ShardJournal {
    pub(super) run: u64,
    /// The shard's watermark after the run.
    pub(super) state: EvaluationState,
    /// The pairs the part scored or counted missing, per forecast, with its origin.
    pub(super) settled: Vec<(DateTime<Utc>, SettledLine)>,
    pub(super) partial: Partial,
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

/// The runs committed so far, once the last one committed is finished.
pub(super) async fn roll_forward(store: &AccuracyStore) -> Result<u64, StoreError> {
    let done = store.runs_committed().await?;
    let next = done + 1;
    let Some(journal) = store.committed_run::<RunJournal>(next).await? else {
        return Ok(done);
    };
    tracing::warn!(
        run = next,
        "finishing evaluation run {next}: it was committed, then stopped before all its writes were made"
    );
    apply(store, &journal).await?;
    Ok(next)
}

/// Writes everything `journal` holds, by name, then the count of runs. Applying a journal
/// twice, after a partial apply, or after a later run's, ends in the same store.
pub(super) async fn apply(
    store: &AccuracyStore,
    journal: &RunJournal,
) -> Result<String, StoreError> {
    let run = journal.run;
    if let Some(state) = &journal.state {
        let shard = store.shard(0);
        shard.write_settled(&journal.settled, run).await?;
        shard
            .write_state_of_run("evaluation.json", state, run)
            .await?;
    }
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
    store.set_runs_committed(run).await?;
    Ok(uri)
}

/// Writes what a shard's journal holds: its settled marks, its watermark, then its partial
/// result for the reduce step (last: a partial that is there is a shard that is finished).
pub(super) async fn apply_shard(
    root: &AccuracyStore,
    index: u32,
    journal: &ShardJournal,
) -> Result<(), StoreError> {
    let shard = root.shard(index);
    let run = journal.run;
    shard.write_settled(&journal.settled, run).await?;
    shard
        .write_state_of_run("evaluation.json", &journal.state, run)
        .await?;
    root.put_run_part(run, &partial_name(index), &journal.partial)
        .await
}

/// The run part that holds shard `index`'s journal.
pub(super) fn journal_name(index: u32) -> String {
    format!("shard-{}.json", crate::monitor::store::shard_name(index))
}

/// The run part that holds shard `index`'s partial result.
pub(super) fn partial_name(index: u32) -> String {
    format!("partial-{}.json", crate::monitor::store::shard_name(index))
}
