//! Forecasts, actuals and a runner shared by the evaluation's unit tests.

use chrono::{DateTime, Duration, Utc};

use super::figures::Evaluation;
use super::scoring::{evaluate, Increment};
use crate::monitor::observations::Observation;
use crate::monitor::store::{ForecastRecord, SettledPair};

/// `hour` hours after 2026-01-01T00:00Z.
pub(super) fn t(hour: i64) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339("2026-01-01T00:00:00Z")
        .unwrap()
        .with_timezone(&Utc)
        + Duration::hours(hour)
}

/// A forecast of `values` for the hours after `origin`, by model `m`.
pub(super) fn record(id: &str, origin: i64, values: &[f64], version: &str) -> ForecastRecord {
    ForecastRecord {
        series_id: id.into(),
        origin: t(origin),
        last_value: 10.0,
        timestamps: (1..=values.len() as i64).map(|k| t(origin + k)).collect(),
        values: values.to_vec(),
        model: "m".into(),
        model_version: version.into(),
        request_id: None,
        created_at: t(origin),
        intervals_calibration: None,
        intervals: Vec::new(),
        out_of_range: false,
        role: Default::default(),
    }
}

pub(super) fn obs(id: &str, hour: i64, value: f64) -> Observation {
    Observation {
        series_id: id.into(),
        timestamp: t(hour),
        value,
    }
}

/// Runs [`evaluate`] with every series' targets up to `due` due.
pub(super) fn run(
    forecasts: &[ForecastRecord],
    actuals: &[Observation],
    settled: &[SettledPair],
    due: Option<DateTime<Utc>>,
) -> (Evaluation, Vec<SettledPair>) {
    let due_until = due
        .map(|due| {
            forecasts
                .iter()
                .map(|f| (f.series_id.clone(), due))
                .collect()
        })
        .unwrap_or_default();
    let (e, settled) = evaluate(&Increment {
        forecasts,
        new_actuals: actuals,
        settled,
        due_until: &due_until,
        earlier_actuals: &[],
        errors_kept: 0,
    });
    (
        e,
        settled
            .into_iter()
            .flat_map(|(_, line)| line.into_pairs())
            .collect(),
    )
}
