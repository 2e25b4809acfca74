//! One shard's part of a run: the actuals that arrived in the shard since its watermark, the
//! forecasts they complete, the pairs scored and settled, committed as the shard's journal (see
//! `commit`). A shard holds whole series, so its part needs nothing from any other shard.

use std::ops::Range;

use super::commit::{apply_shard, journal_name, partial_name, ShardJournal};
use super::increment::{
    advanced_watermark, read_arrivals, read_origin_hours, Arrivals, OriginReads,
};
use super::late;
use super::partial::{Partial, MAX_QUARANTINED_LISTED};
use super::plan::{EvaluationPlan, PLAN};
use super::scoring::{evaluate_part, Increment};
use super::windows::{self, DueTargets, EvaluationWindow};
use crate::monitor::store::{shard_name, shard_of, AccuracyStore, Loaded, StoreError};

/// Evaluates shards `shards` of run `run` (one partition), one shard at a time, so that memory
/// follows the largest shard, not the partition. Returns the pairs they scored.
pub async fn evaluate_partition(
    store: &AccuracyStore,
    run: u64,
    shards: Range<u32>,
) -> Result<usize, StoreError> {
    let plan: EvaluationPlan = store
        .required_run_part(
            run,
            PLAN,
            "plan".into(),
            "partitions evaluate a planned run (evaluate-plan)",
        )
        .await?;
    if store.shards() != plan.shards {
        // Another number of shards would read other folders than the plan's.
        return Err(store.layout_mismatch(plan.shards));
    }
    if shards.is_empty() || shards.end > plan.shards {
        return Err(StoreError::ShardRange {
            first: shards.start,
            end: shards.end,
            shards: plan.shards,
        });
    }
    let mut pairs = 0;
    for index in shards {
        pairs += evaluate_shard(store, &plan, index).await?;
    }
    Ok(pairs)
}

/// Shard `index`'s part of the run: computed and committed once, applied as often as asked.
async fn evaluate_shard(
    root: &AccuracyStore,
    plan: &EvaluationPlan,
    index: u32,
) -> Result<usize, StoreError> {
    let run = plan.run;
    if let Some(done) = root.run_part::<Partial>(run, &partial_name(index)).await? {
        // A retried partition: this shard is finished, and scores nothing again.
        return Ok(done.counts.pairs);
    }
    let journal = match root
        .run_part::<ShardJournal>(run, &journal_name(index))
        .await?
    {
        Some(committed) => committed,
        // Another attempt may commit the shard first: then this one applies what it committed.
        None => {
            let journal = score_shard(root, plan, index).await?;
            root.commit_run_part(run, &journal_name(index), journal)
                .await?
        }
    };
    apply_shard(root, index, &journal).await?;
    Ok(journal.partial.counts.pairs)
}

/// Reads the shard's increment, scores it, and works out its journal; writes nothing but the
/// index of the actuals it read.
async fn score_shard(
    root: &AccuracyStore,
    plan: &EvaluationPlan,
    index: u32,
) -> Result<ShardJournal, StoreError> {
    let shard = root.shard(index);
    let window = EvaluationWindow::from(plan.window);
    let state = shard.evaluation_state().await?;
    let mut arrivals = read_arrivals(&shard, &state, plan.now, window.settle).await?;
    if plan.shards > 1 {
        keep_own_series(&mut arrivals.actuals, index, plan.shards, |o| &o.series_id);
    }
    // Where a forecast that comes late finds these actuals; written before the commit (see
    // `index_actuals_by_hour`), and before the join, so that its bytes are gone by then.
    shard
        .index_actuals_by_hour(&arrivals.actuals.items, plan.now)
        .await?;
    let due = DueTargets::after(
        &state.actuals_seen_until,
        &arrivals.actuals.items,
        window.grace,
    );
    let mut hours = due.origin_hours(&arrivals.actuals.items, window.span);
    let written = late::origin_hours_written_since(&shard, &state, &due.seen_until, window).await?;
    hours.extend(written.hours.iter().copied());
    let mut origins = read_origin_hours(&shard, &windows::merge_ranges(hours)).await?;
    if plan.shards > 1 {
        keep_own_series(&mut origins.forecasts, index, plan.shards, |f| &f.series_id);
    }
    let earlier = late::earlier_actuals(
        &shard,
        &origins.forecasts.items,
        &origins.settled.items,
        &arrivals.actuals.items,
        &due.seen_until,
    )
    .await?;
    let (mut partial, settled) = evaluate_part(&Increment {
        forecasts: &origins.forecasts.items,
        new_actuals: &arrivals.actuals.items,
        settled: &origins.settled.items,
        due_until: &due.due_until,
        earlier_actuals: &earlier.items,
        errors_kept: plan.recalibration.window,
    });
    partial.keep_latest_errors(plan.recalibration.window);
    add_what_was_read(&mut partial, &mut arrivals, &mut origins);
    Ok(ShardJournal {
        run: plan.run,
        state: advanced_watermark(&arrivals, due.seen_until, &written.listed, plan.run),
        settled,
        partial,
    })
}

/// Quarantines what a shard holds of other shards' series: a writer set to another number of
/// shards put it there, and scoring it here would split a series' pairs between two shards.
fn keep_own_series<T>(
    loaded: &mut Loaded<T>,
    index: u32,
    shards: u32,
    series: impl Fn(&T) -> &str,
) {
    let (own, other): (Vec<T>, Vec<T>) = std::mem::take(&mut loaded.items)
        .into_iter()
        .partition(|item| shard_of(series(item), shards) == index);
    loaded.items = own;
    for item in &other {
        let id = series(item);
        let cause = format!(
            "series `{}` belongs in shard {} of {shards}, not {index}: its writer is set to another number of shards (FORECAST_LOG_SHARDS)",
            crate::forecast::excerpt(id),
            shard_of(id, shards)
        );
        loaded.quarantine(&format!("shard={}", shard_name(index)), 0, cause);
    }
}

/// What scoring cannot know: the arrival window, the objects read, and the unreadable lines
/// met (in actuals, then forecasts, then settled marks), which the reads give up.
fn add_what_was_read(partial: &mut Partial, arrivals: &mut Arrivals, origins: &mut OriginReads) {
    partial.actuals_after = arrivals.after;
    partial.read_from_start = arrivals.after.is_none();
    partial.actuals_until = Some(arrivals.until);
    partial.counts.objects_read =
        arrivals.keys.len() + origins.forecast_keys.len() + origins.settled_keys.len();
    let quarantined: Vec<_> = std::mem::take(&mut arrivals.actuals.quarantined)
        .into_iter()
        .chain(std::mem::take(&mut origins.forecasts.quarantined))
        .chain(std::mem::take(&mut origins.settled.quarantined))
        .collect();
    partial.counts.quarantined_lines = quarantined.len();
    partial.quarantined = quarantined;
    partial.quarantined.truncate(MAX_QUARANTINED_LISTED);
}
