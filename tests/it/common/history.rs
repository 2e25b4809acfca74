//! A forecast log with a history, written by the store's own code: for the tests and the
//! benchmark that check an evaluation's cost follows what arrived, not what came before.

use chrono::{DateTime, Duration, Utc};
use futures_util::{StreamExt, TryStreamExt};
use lstm_forecast::monitor::store::{AccuracyStore, ForecastRecord, Observation, StoreError};

/// Forecast steps (hourly) of each logged forecast.
pub const HORIZON: i64 = 24;

/// The start of every history: data time, as a replay of ETTh1's years would have it.
pub fn history_start() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2016-07-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
}

/// The value of series `series` at `t`: any deterministic signal will do.
fn signal(series: usize, t: DateTime<Utc>) -> f64 {
    let hour = t.timestamp() / 3600;
    10.0 + series as f64 + (hour % 24) as f64 * 0.5
}

/// The forecast of series `series` made at `origin`: the signal plus one.
pub fn forecast(series: usize, origin: DateTime<Utc>) -> ForecastRecord {
    let timestamps: Vec<DateTime<Utc>> =
        (1..=HORIZON).map(|h| origin + Duration::hours(h)).collect();
    ForecastRecord {
        series_id: format!("s{series}"),
        origin,
        last_value: signal(series, origin),
        values: timestamps
            .iter()
            .map(|t| signal(series, *t) + 1.0)
            .collect(),
        timestamps,
        model: "m".into(),
        model_version: "1".into(),
        request_id: None,
        created_at: Utc::now(),
        intervals_calibration: None,
        intervals: Vec::new(),
        out_of_range: false,
        role: Default::default(),
    }
}

/// The actuals of `series` series at `t`.
pub fn actuals(series: usize, t: DateTime<Utc>) -> Vec<Observation> {
    (0..series)
        .map(|s| Observation {
            series_id: format!("s{s}"),
            timestamp: t,
            value: signal(s, t),
        })
        .collect()
}

/// When the actuals of a stretch of hours arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    /// All just now.
    Now,
    /// One hour's actuals an hour, the last hour's just now: a history as it builds up in
    /// production (arrival partitions of the wall-clock hours they came in).
    Hourly,
}

/// Logs `hours` hours of forecasts from `start`, `per_hour` series an hour, each hour's forecasts
/// in one object (as one flush of `serve` writes them) and each hour's actuals in one object (as
/// one POST /v1/observations writes them). Writes run 16 at a time.
pub async fn write_hours(
    store: &AccuracyStore,
    start: DateTime<Utc>,
    hours: i64,
    per_hour: usize,
    arrival: Arrival,
) -> Result<(), StoreError> {
    let now = Utc::now();
    futures_util::stream::iter(0..hours)
        .map(|h| async move {
            let origin = start + Duration::hours(h);
            let forecasts: Vec<ForecastRecord> =
                (0..per_hour).map(|s| forecast(s, origin)).collect();
            store.append_forecasts(&forecasts).await?;
            // The hour's actual arrives once the hour is over.
            let arrived = match arrival {
                Arrival::Now => now,
                Arrival::Hourly => now - Duration::hours(hours - 1 - h),
            };
            store
                .append_actuals_arrived(&actuals(per_hour, origin + Duration::hours(1)), arrived)
                .await?;
            Ok::<(), StoreError>(())
        })
        .buffer_unordered(16)
        .try_collect()
        .await
}
