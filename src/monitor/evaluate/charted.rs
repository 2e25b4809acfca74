//! Which series the report's chart draws, and what of it: the series with the most scored
//! forecasts, its new actuals, its forecast trajectories and their narrowest intervals. Picked
//! while scoring, drawn by [`super::chart`].

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::monitor::observations::Observation;
use crate::monitor::store::ForecastRecord;

/// The series drawn in the report chart: actuals and the scored forecast trajectories.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChartSeries {
    pub series_id: String,
    pub actuals: Vec<(DateTime<Utc>, f64)>,
    pub forecasts: Vec<Vec<(DateTime<Utc>, f64)>>,
    /// The narrowest interval served with each charted forecast.
    pub bands: Vec<Band>,
}

/// One forecast's interval in the chart.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Band {
    pub level: f64,
    /// `(t, lower, upper)` per step.
    pub points: Vec<(DateTime<Utc>, f64, f64)>,
}

/// Forecasts drawn per chart, the latest scored.
const CHARTED_FORECASTS: usize = 12;

impl ChartSeries {
    /// The series with the most scored forecasts (ties: the first id), from its scored forecasts
    /// and the new actuals.
    pub(super) fn busiest(
        scored_per_series: &HashMap<&str, Vec<&ForecastRecord>>,
        new_actuals: &[Observation],
    ) -> Option<(usize, ChartSeries)> {
        scored_per_series
            .iter()
            .max_by(|a, b| a.1.len().cmp(&b.1.len()).then(b.0.cmp(a.0)))
            .map(|(id, records)| (records.len(), ChartSeries::of(id, records, new_actuals)))
    }

    /// One series' new actuals, and the latest of its scored forecasts with their narrowest
    /// intervals.
    fn of(id: &str, records: &[&ForecastRecord], new_actuals: &[Observation]) -> ChartSeries {
        let mut actuals: Vec<(DateTime<Utc>, f64)> = new_actuals
            .iter()
            .filter(|o| o.series_id == id)
            .map(|o| (o.timestamp, o.value))
            .collect();
        actuals.sort_by_key(|(t, _)| *t);
        actuals.dedup_by_key(|(t, _)| *t);
        let forecasts = records
            .iter()
            .rev()
            .take(CHARTED_FORECASTS)
            .map(|r| {
                r.timestamps
                    .iter()
                    .copied()
                    .zip(r.values.iter().copied())
                    .collect()
            })
            .collect();
        let bands = records
            .iter()
            .rev()
            .take(CHARTED_FORECASTS)
            .filter_map(|&record| narrowest_band(record))
            .collect();
        ChartSeries {
            series_id: id.to_string(),
            actuals,
            forecasts,
            bands,
        }
    }
}

/// The narrowest interval served with a forecast, if it was served any.
fn narrowest_band(record: &ForecastRecord) -> Option<Band> {
    let narrowest = record
        .intervals
        .iter()
        .min_by(|a, b| a.level.total_cmp(&b.level))?;
    let points = record
        .timestamps
        .iter()
        .zip(narrowest.lower.iter().zip(&narrowest.upper))
        .map(|(t, (lo, hi))| (*t, *lo, *hi))
        .collect();
    Some(Band {
        level: narrowest.level,
        points,
    })
}
