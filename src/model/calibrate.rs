//! Split-conformal calibration of prediction intervals, measured with the served model itself.
//!
//! The model forecasts from every origin whose targets lie in a held-out range of rows (the
//! validation split: data it did not train on); the absolute errors at each horizon step, ranked,
//! give each level's radius. The engine that serves the model is the one measured, so the
//! intervals fit exactly the forecasts they will be put around.

use std::ops::Range;

use super::contract::{CalibratedLevel, Calibration};
use super::{ForecastError, Model};

/// Forecasts per forward pass while calibrating.
const CHUNK: usize = 256;

/// A table of rows, row-major `[rows][features]` in the model's feature order.
pub struct Rows<'a> {
    pub values: &'a [f64],
    pub features: usize,
}

/// One forecast with the actuals it was for.
#[derive(Debug, Clone, PartialEq)]
pub struct Scored {
    pub forecast: Vec<f64>,
    pub actual: Vec<f64>,
}

/// Why a calibration could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("rows {start}..{end} leave no forecast origin: targets need {horizon} rows after a {window}-row window, within {rows} rows")]
    NoOrigins {
        start: usize,
        end: usize,
        horizon: usize,
        window: usize,
        rows: usize,
    },
    #[error(transparent)]
    Forecast(#[from] ForecastError),
}

/// Every forecast whose targets lie in `targets` (rows), with its actuals, in time order.
pub fn backtest(
    model: &Model,
    rows: &Rows<'_>,
    targets: Range<usize>,
) -> Result<Vec<Scored>, CalibrateError> {
    let metadata = model.metadata();
    let (window, horizon) = (metadata.input.window, metadata.output.horizon);
    let total = rows.values.len() / rows.features;
    let target = metadata.target_index().expect("checked at load");
    let first = targets.start.max(window);
    let end = targets.end.min(total);
    if first + horizon > end {
        return Err(CalibrateError::NoOrigins {
            start: targets.start,
            end: targets.end,
            horizon,
            window,
            rows: total,
        });
    }
    let origins: Vec<usize> = (first..=end - horizon).collect();
    let mut scored = Vec::with_capacity(origins.len());
    for chunk in origins.chunks(CHUNK) {
        let windows: Vec<&[f64]> = chunk
            .iter()
            .map(|&t| &rows.values[(t - window) * rows.features..t * rows.features])
            .collect();
        let forecasts = model.forecast(&windows)?;
        for (&t, forecast) in chunk.iter().zip(forecasts) {
            let actual = (t..t + horizon)
                .map(|row| rows.values[row * rows.features + target])
                .collect();
            scored.push(Scored { forecast, actual });
        }
    }
    Ok(scored)
}

/// The split-conformal calibration of `scored` forecasts at `levels` (ascending after sorting).
pub fn split_conformal(scored: &[Scored], levels: &[f64], data: String) -> Calibration {
    let horizon = scored.first().map_or(0, |s| s.forecast.len());
    let errors_by_step = (0..horizon)
        .map(|k| {
            scored
                .iter()
                .map(|s| (s.forecast[k] - s.actual[k]).abs())
                .collect()
        })
        .collect();
    from_errors(errors_by_step, levels, data, scored.len())
}

/// The split-conformal calibration of absolute errors per horizon step, resting on `forecasts`.
pub fn from_errors(
    errors_by_step: Vec<Vec<f64>>,
    levels: &[f64],
    data: String,
    forecasts: usize,
) -> Calibration {
    let sorted: Vec<Vec<f64>> = errors_by_step
        .into_iter()
        .map(|mut errors| {
            errors.sort_by(f64::total_cmp);
            errors
        })
        .collect();
    let mut levels = levels.to_vec();
    levels.sort_by(f64::total_cmp);
    levels.dedup();
    Calibration {
        method: "split_conformal".into(),
        data,
        forecasts,
        levels: levels
            .into_iter()
            .map(|level| CalibratedLevel {
                level,
                radius: sorted
                    .iter()
                    .map(|errors| conformal_quantile(errors, level))
                    .collect(),
            })
            .collect(),
    }
}

/// The `ceil((n + 1) * level)`-th smallest of `sorted` (the largest when that rank passes `n`):
/// with exchangeable errors, a new error falls at or below it with probability >= `level`.
pub fn conformal_quantile(sorted: &[f64], level: f64) -> f64 {
    let n = sorted.len();
    let rank = ((n + 1) as f64 * level).ceil() as usize;
    sorted[rank.clamp(1, n) - 1]
}

/// How `calibration`'s intervals did on `scored` forecasts: per level, the share of actuals inside
/// and the mean width.
pub fn coverage(calibration: &Calibration, scored: &[Scored]) -> Vec<(f64, f64, f64)> {
    calibration
        .levels
        .iter()
        .map(|level| {
            let (mut inside, mut points) = (0usize, 0usize);
            for Scored { forecast, actual } in scored {
                for ((f, a), r) in forecast.iter().zip(actual).zip(&level.radius) {
                    inside += usize::from((f - a).abs() <= *r);
                    points += 1;
                }
            }
            let width = 2.0 * level.radius.iter().sum::<f64>() / level.radius.len().max(1) as f64;
            (level.level, inside as f64 / points.max(1) as f64, width)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conformal_rank_is_n_plus_one_times_the_level_rounded_up() {
        let sorted: Vec<f64> = (1..=9).map(f64::from).collect();
        // n = 9: rank ceil(10 * 0.8) = 8.
        assert_eq!(conformal_quantile(&sorted, 0.8), 8.0);
        assert_eq!(conformal_quantile(&sorted, 0.5), 5.0);
        // ceil(10 * 0.95) = 10 > n: the largest error.
        assert_eq!(conformal_quantile(&sorted, 0.95), 9.0);
    }

    #[test]
    fn radii_are_per_step_and_widen_with_the_level() {
        let scored: Vec<Scored> = (0..100)
            .map(|i| Scored {
                forecast: vec![0.0, 0.0],
                actual: vec![f64::from(i) / 100.0, f64::from(i) / 10.0],
            })
            .collect();
        let calibration = split_conformal(&scored, &[0.95, 0.8], "test".into());
        assert_eq!(calibration.level_values(), vec![0.8, 0.95]);
        assert_eq!(calibration.forecasts, 100);
        let (r80, r95) = (&calibration.levels[0].radius, &calibration.levels[1].radius);
        assert!(
            (r80[0] - 0.8).abs() < 1e-12 && (r80[1] - 8.0).abs() < 1e-12,
            "{r80:?}"
        );
        assert!(r95[0] > r80[0] && r95[1] > r80[1]);
        calibration.check(2, "calibration").unwrap();
        let covered = coverage(&calibration, &scored);
        assert!((covered[0].1 - 0.81).abs() < 1e-12, "{covered:?}");
    }
}
