//! A run's plan: its number, clock, window, recalibration and how its shards are split among
//! partitions, fixed once (`state/runs/<run>/plan.json`) so that every partition and every
//! attempt works on the same run.

use std::ops::Range;

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

use super::commit::roll_forward;
use super::recalibration::Recalibration;
use super::windows::EvaluationWindow;
use crate::monitor::store::{AccuracyStore, StoreError};

/// One run's plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvaluationPlan {
    pub run: u64,
    /// The run's clock: actual objects written up to `now - settle` are read.
    pub now: DateTime<Utc>,
    pub shards: u32,
    pub window: PlannedWindow,
    pub recalibration: Recalibration,
    /// Each partition's shards, `[first, end)`: together every shard once.
    pub partitions: Vec<Range<u32>>,
}

/// [`EvaluationWindow`] in seconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PlannedWindow {
    pub span_seconds: i64,
    pub grace_seconds: i64,
    pub settle_seconds: i64,
}

impl From<EvaluationWindow> for PlannedWindow {
    fn from(window: EvaluationWindow) -> Self {
        PlannedWindow {
            span_seconds: window.span.num_seconds(),
            grace_seconds: window.grace.num_seconds(),
            settle_seconds: window.settle.num_seconds(),
        }
    }
}

impl From<PlannedWindow> for EvaluationWindow {
    fn from(window: PlannedWindow) -> Self {
        EvaluationWindow {
            span: Duration::seconds(window.span_seconds),
            grace: Duration::seconds(window.grace_seconds),
            settle: Duration::seconds(window.settle_seconds),
        }
    }
}

/// The run part that holds the plan.
pub(super) const PLAN: &str = "plan.json";

/// The plan of the next run: the one planned and not yet committed (a run that failed or is
/// under way is resumed, never planned twice), or a new one at `now`, its shards split into
/// `partitions` contiguous ranges. Finishes the last committed run first.
pub async fn plan_run(
    store: &AccuracyStore,
    now: DateTime<Utc>,
    window: EvaluationWindow,
    recalibration: &Recalibration,
    partitions: u32,
) -> Result<EvaluationPlan, StoreError> {
    store.check_layout().await?;
    let run = roll_forward(store).await? + 1;
    if let Some(planned) = store.run_part::<EvaluationPlan>(run, PLAN).await? {
        tracing::info!(
            run,
            "resuming evaluation run {run}, planned at {}",
            planned.now
        );
        return Ok(planned);
    }
    let plan = EvaluationPlan {
        run,
        now,
        shards: store.shards(),
        window: window.into(),
        recalibration: recalibration.clone(),
        partitions: split(store.shards(), partitions),
    };
    // Another attempt may have planned the run first: then every attempt works on its plan.
    store.commit_run_part(run, PLAN, plan).await
}

/// `shards` split into at most `partitions` contiguous ranges of sizes differing by one at most.
pub fn split(shards: u32, partitions: u32) -> Vec<Range<u32>> {
    let partitions = partitions.clamp(1, shards.max(1));
    let (size, larger) = (shards / partitions, shards % partitions);
    let mut first = 0;
    (0..partitions)
        .map(|p| {
            let end = first + size + u32::from(p < larger);
            let range = first..end;
            first = end;
            range
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partitions_cover_every_shard_once_in_near_equal_ranges() {
        assert_eq!(split(16, 4), vec![0..4, 4..8, 8..12, 12..16]);
        assert_eq!(split(10, 4), vec![0..3, 3..6, 6..8, 8..10]);
        // More partitions than shards: one shard each; none: one partition.
        assert_eq!(split(3, 8), vec![0..1, 1..2, 2..3]);
        assert_eq!(split(5, 0), vec![0..5]);
        assert_eq!(split(1, 1), vec![0..1]);
    }
}
