//! A fleet of series for evaluations at scale (the tests and `benches/evaluation.rs`): one
//! 24-step hourly forecast per series from 2018-01-01T00:00Z by version `1`, every fifth served
//! with an 80% interval, every eighth series also forecast by version `2` in live's shadow, and
//! the 24 actuals that follow, but for hour 7 of every fiftieth series (missing). Values are a
//! deterministic function of (series, hour), so two stores written alike hold the same data.
//! Self-contained: the bench includes this file by path.

use chrono::{DateTime, Duration, Utc};
use lstm_forecast::forecast::Interval;
use lstm_forecast::monitor::store::{AccuracyStore, ForecastRecord, ForecastRole, Observation};

/// Series written per batch: the writer's memory stays bounded whatever the fleet's size.
const WRITTEN_AT_ONCE: usize = 5_000;

pub const HORIZON: i64 = 24;

pub fn origin() -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2018-01-01T00:00:00Z")
        .unwrap()
        .to_utc()
}

pub fn series_id(s: usize) -> String {
    format!("meter-{s:07}")
}

/// What series `s` measured at hour `h`: a daily wave with a level and noise of its own.
fn actual(s: usize, h: i64) -> f64 {
    let noise = ((s as u64 * 2_654_435_761 + h as u64 * 40_503) % 1000) as f64 / 1000.0;
    20.0 + (s % 17) as f64 + 5.0 * (h as f64 * std::f64::consts::TAU / 24.0).sin() + noise
}

fn forecast(s: usize, version: &str, bias: f64) -> ForecastRecord {
    let values: Vec<f64> = (1..=HORIZON)
        .map(|h| actual(s, h) + bias * (1.0 + h as f64 / 12.0))
        .collect();
    let intervals = if version == "1" && s % 5 == 0 {
        vec![Interval {
            level: 0.8,
            lower: values.iter().map(|v| v - 0.6).collect(),
            upper: values.iter().map(|v| v + 0.6).collect(),
        }]
    } else {
        Vec::new()
    };
    ForecastRecord {
        series_id: series_id(s),
        origin: origin(),
        last_value: actual(s, 0),
        timestamps: (1..=HORIZON)
            .map(|h| origin() + Duration::hours(h))
            .collect(),
        values,
        model: "etth1-ot-lstm".into(),
        model_version: version.into(),
        request_id: None,
        created_at: origin(),
        intervals_calibration: None,
        intervals,
        out_of_range: false,
        role: if version == "1" {
            ForecastRole::Live
        } else {
            ForecastRole::Challenger
        },
    }
}

pub fn forecasts(series: std::ops::Range<usize>) -> Vec<ForecastRecord> {
    series
        .flat_map(|s| {
            let live = forecast(s, "1", 0.3 * ((s % 7) as f64 - 3.0) / 3.0);
            let challenger = (s % 8 == 0).then(|| forecast(s, "2", 0.2));
            std::iter::once(live).chain(challenger)
        })
        .collect()
}

pub fn actuals(series: std::ops::Range<usize>) -> Vec<Observation> {
    series
        .flat_map(|s| {
            (1..=HORIZON)
                .filter(move |h| !(s % 50 == 0 && *h == 7))
                .map(move |h| Observation {
                    series_id: series_id(s),
                    timestamp: origin() + Duration::hours(h),
                    value: actual(s, h),
                })
        })
        .collect()
}

/// Pairs a fleet of `series` holds: forecasts of version 1 and 2 with an actual.
pub fn pairs(series: usize) -> usize {
    let actual_hours = |s: usize| if s % 50 == 0 { 23 } else { 24 };
    (0..series)
        .map(|s| actual_hours(s) * if s % 8 == 0 { 2 } else { 1 })
        .sum()
}

/// Writes the fleet's forecasts, then its actuals, into `store`.
pub async fn write(store: &AccuracyStore, series: usize) {
    for first in (0..series).step_by(WRITTEN_AT_ONCE) {
        let batch = first..(first + WRITTEN_AT_ONCE).min(series);
        store.append_forecasts(&forecasts(batch)).await.unwrap();
    }
    for first in (0..series).step_by(WRITTEN_AT_ONCE) {
        let batch = first..(first + WRITTEN_AT_ONCE).min(series);
        store.append_actuals(&actuals(batch)).await.unwrap();
    }
}
