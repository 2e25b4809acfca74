//! Reading a run's increment from the store, and moving the watermark past it.
//!
//! The increment is the actual objects written since the watermark, then the forecasts and
//! settled marks in the origin-hour partitions that those actuals can complete or make due.

use std::collections::{BTreeMap, HashSet};

use chrono::{DateTime, Duration, Utc};

use crate::monitor::observations::Observation;
use crate::monitor::store::{
    AccuracyStore, EvaluationState, ForecastRecord, Loaded, SettledPair, StoreError,
};
use crate::objects::Listed;

/// The actual objects that arrived since the last run, and the values they hold.
pub(super) struct Arrivals {
    /// Objects written in `(after, until]` are read as new.
    pub(super) after: Option<DateTime<Utc>>,
    pub(super) until: DateTime<Utc>,
    /// Every actual object listed from `after` on, including those written past `until`.
    pub(super) listed: Vec<Listed>,
    /// The objects read as new, in the order they were written.
    pub(super) keys: Vec<String>,
    pub(super) actuals: Loaded<Observation>,
}

/// Reads the actual objects written after the watermark and not read already. The new
/// watermark trails `now` by `settle`, so that an object S3 stamped earlier but lists late is
/// still read by the next run.
pub(super) async fn read_arrivals(
    store: &AccuracyStore,
    state: &EvaluationState,
    now: DateTime<Utc>,
    settle: Duration,
) -> Result<Arrivals, StoreError> {
    let after = state.actuals_read_until;
    let until = after.map_or(now - settle, |a| a.max(now - settle));
    let listed = store.list_actuals(after).await?;
    let read_before: HashSet<&str> = state.read_since.iter().map(String::as_str).collect();
    let mut arrived: Vec<&Listed> = listed
        .iter()
        .filter(|l| after.is_none_or(|a| l.last_modified > a))
        .filter(|l| !read_before.contains(l.key.as_str()))
        .collect();
    arrived.sort_by(|a, b| (a.last_modified, &a.key).cmp(&(b.last_modified, &b.key)));
    let keys: Vec<String> = arrived.iter().map(|l| l.key.clone()).collect();
    let actuals = store.read_actuals(&keys).await?;
    Ok(Arrivals {
        after,
        until,
        listed,
        keys,
        actuals,
    })
}

/// The forecasts and settled marks of some origin hours, and the objects they came from.
pub(super) struct OriginReads {
    pub(super) forecast_keys: Vec<String>,
    pub(super) forecasts: Loaded<ForecastRecord>,
    pub(super) settled_keys: Vec<String>,
    pub(super) settled: Loaded<SettledPair>,
}

/// Reads the forecasts and settled marks of the origin hours in `hours` (ranges of whole hours,
/// first and last).
pub(super) async fn read_origin_hours(
    store: &AccuracyStore,
    hours: &[(DateTime<Utc>, DateTime<Utc>)],
) -> Result<OriginReads, StoreError> {
    let (forecast_keys, settled_keys) = tokio::try_join!(
        store.list_origin_hours("forecasts", hours),
        store.list_origin_hours("settled", hours),
    )?;
    let (forecasts, settled) = tokio::try_join!(
        store.read_forecasts(&forecast_keys),
        store.read_settled(&settled_keys),
    )?;
    Ok(OriginReads {
        forecast_keys,
        forecasts,
        settled_keys,
        settled,
    })
}

/// The watermark after run `run`: the arrivals' `until`, the objects listed past it (they were
/// read already) and each series' latest actual timestamp.
pub(super) fn advanced_watermark(
    arrivals: &Arrivals,
    seen_until: BTreeMap<String, DateTime<Utc>>,
    forecasts_listed: &[Listed],
    run: u64,
) -> EvaluationState {
    EvaluationState {
        actuals_read_until: Some(arrivals.until),
        read_since: arrivals
            .listed
            .iter()
            .filter(|l| l.last_modified > arrivals.until)
            .map(|l| l.key.clone())
            .collect(),
        actuals_seen_until: seen_until,
        forecasts_seen_since: forecasts_listed
            .iter()
            .filter(|l| l.last_modified > arrivals.until)
            .map(|l| l.key.clone())
            .collect(),
        runs: run,
    }
}
