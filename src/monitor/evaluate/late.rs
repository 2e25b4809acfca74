//! Forecasts that reach the log after their actuals were read: a flush delayed by an S3 outage, a
//! Firehose retry (up to a day), a backfill. Without this part an earlier run read the actuals
//! while the forecast was not there yet, and a later run, finding the series' actuals past the
//! forecast's targets, would count them missing.
//!
//! - Each run indexes the actuals it reads by their own hour (`actuals-by-hour/`).
//! - Each run also reads the origin hours of forecast objects written since the last run, within
//!   [`LATE_LOOKBACK`] of the series' latest actual, beside the hours the new actuals call for.
//! - A forecast's target that no earlier run settled, that no new actual covers, and that its
//!   series' actuals have passed is looked up in the index: found, it is scored now, once (its
//!   settled mark follows), and the forecast counts as late (`LateForecasts`).

use std::collections::{BTreeMap, BTreeSet, HashSet};

use chrono::{DateTime, Duration, Utc};

use super::windows::{hour_ranges, EvaluationWindow};
use crate::monitor::observations::Observation;
use crate::monitor::store::{
    AccuracyStore, EvaluationState, ForecastRecord, Loaded, SettledPair, StoreError,
};

/// How far before the latest actual, beyond one forecast span, a late forecast's origin may lie:
/// Firehose retries a delivery for up to 24 hours.
pub const LATE_LOOKBACK: Duration = Duration::hours(48);

/// Forecast objects written since the last run, within the lookback.
pub(super) struct WrittenSince {
    /// Their origin hours, as ranges.
    pub(super) hours: Vec<(DateTime<Utc>, DateTime<Utc>)>,
    /// Every forecast object listed, with its write time: the watermark remembers those written
    /// past it.
    pub(super) listed: Vec<crate::objects::Listed>,
}

/// The origin hours of forecast objects written since the last run (after its watermark, and
/// not looked at by it), within the lookback of the series' latest actual.
pub(super) async fn origin_hours_written_since(
    store: &AccuracyStore,
    state: &EvaluationState,
    seen_until: &BTreeMap<String, DateTime<Utc>>,
    window: EvaluationWindow,
) -> Result<WrittenSince, StoreError> {
    let Some(latest) = seen_until.values().max() else {
        return Ok(WrittenSince {
            hours: Vec::new(),
            listed: Vec::new(),
        });
    };
    let listed = store
        .list_forecasts_written(*latest - window.span - LATE_LOOKBACK, *latest)
        .await?;
    let looked_at: HashSet<&str> = state
        .forecasts_seen_since
        .iter()
        .map(String::as_str)
        .collect();
    let hours: BTreeSet<DateTime<Utc>> = listed
        .iter()
        .filter(|l| {
            state
                .actuals_read_until
                .is_none_or(|since| l.last_modified > since)
        })
        .filter(|l| !looked_at.contains(l.key.as_str()))
        .filter_map(|l| origin_hour_of(&l.key))
        .collect();
    Ok(WrittenSince {
        hours: hour_ranges(hours.into_iter()),
        listed,
    })
}

/// The origin hour of a forecast object's key (`.../forecasts/origin=YYYY-MM-DDTHH/...`).
fn origin_hour_of(key: &str) -> Option<DateTime<Utc>> {
    let hour = key.split("/origin=").nth(1)?.get(..13)?;
    chrono::NaiveDateTime::parse_from_str(&format!("{hour}:00:00"), "%Y-%m-%dT%H:%M:%S")
        .ok()
        .map(|t| t.and_utc())
}

/// The actuals earlier runs indexed for the targets of `forecasts` that may have one there: not
/// settled, not among the new actuals, and passed by their series' latest actual.
pub(super) async fn earlier_actuals(
    store: &AccuracyStore,
    forecasts: &[ForecastRecord],
    settled: &[SettledPair],
    new_actuals: &[Observation],
    seen_until: &BTreeMap<String, DateTime<Utc>>,
) -> Result<Loaded<Observation>, StoreError> {
    let settled: HashSet<(&str, DateTime<Utc>)> = settled
        .iter()
        .map(|p| (p.forecast.as_str(), p.timestamp))
        .collect();
    let arrived: HashSet<(&str, DateTime<Utc>)> = new_actuals
        .iter()
        .map(|o| (o.series_id.as_str(), o.timestamp))
        .collect();
    let mut hours = BTreeSet::new();
    for record in forecasts {
        let Some(seen) = seen_until.get(&record.series_id) else {
            continue;
        };
        let id = record.id();
        for at in &record.timestamps {
            let open = !settled.contains(&(id.as_str(), *at))
                && !arrived.contains(&(record.series_id.as_str(), *at));
            if open && at <= seen {
                hours.insert(
                    DateTime::from_timestamp(at.timestamp().div_euclid(3600) * 3600, 0)
                        .unwrap_or_default(),
                );
            }
        }
    }
    if hours.is_empty() {
        return Ok(Loaded::default());
    }
    store
        .read_actuals_by_hour(&hour_ranges(hours.into_iter()))
        .await
}
