//! Input drift: does a request window look like anything the model was trained on?
//!
//! One window is a week of a series that changes with the seasons. Compared with the training
//! year as a whole (PSI against its deciles), every week looks drifted, the model's own training
//! weeks included: on ETTh1 every training window scored above 0.25, so the alarm never cleared.
//!
//! So the comparison is calibrated on windows, not on the year. `model.json` lists, per feature,
//! the cells of (window mean, min, max) that the training windows occupied, standardised with the
//! training mean and std and quantised to `cell` standard deviations
//! (`model_artifacts/train/drift_calibration.py`). A request window's drift is its distance, in
//! training standard deviations, from the nearest occupied cell: exactly 0 for every training
//! window, and growing as a window's level or range leaves what training contained. A window shifted
//! by two standard deviations lands outside in about a third of cases (the others resemble another
//! season's training weeks), so the alarm averages over an hour of traffic; see the README's table.

use std::collections::HashSet;

use crate::forecast::SeriesInput;
use crate::metrics::{Metric, Telemetry};
use crate::model::contract::{ModelMetadata, WindowCells};

/// The drift checks of one model: per input feature, its calibration (if `model.json` has one)
/// and its training range.
#[derive(Debug, Clone)]
pub struct InputDriftMonitor {
    features: Vec<FeatureDrift>,
    target: usize,
    window: usize,
}

#[derive(Debug, Clone)]
struct FeatureDrift {
    name: String,
    calibrated: Option<WindowDrift>,
    min: f64,
    max: f64,
}

impl InputDriftMonitor {
    pub fn for_model(metadata: &ModelMetadata) -> Self {
        let features = metadata
            .input
            .features
            .iter()
            .map(|name| {
                let stats = &metadata.training_stats[name];
                FeatureDrift {
                    name: name.clone(),
                    calibrated: stats
                        .windows
                        .as_ref()
                        .map(|w| WindowDrift::new(stats.mean, stats.std, w)),
                    min: stats.min,
                    max: stats.max,
                }
            })
            .collect();
        InputDriftMonitor {
            features,
            target: metadata.target_index().expect("checked at load"),
            window: metadata.input.window,
        }
    }

    /// Whether `InputDrift` is published: only calibrated models have a drift worth alarming on.
    pub fn is_calibrated(&self) -> bool {
        self.features.iter().all(|f| f.calibrated.is_some())
    }

    /// The drift of one series' window (row-major, the last `window` rows are used): the largest
    /// of its features' drifts, each also returned by feature. `None` when uncalibrated.
    pub fn drift_of(&self, values: &[f64]) -> Option<(f64, Vec<(&str, f64)>)> {
        if !self.is_calibrated() {
            return None;
        }
        let width = self.features.len();
        let window = &values[values.len().saturating_sub(self.window * width)..];
        let mut column = Vec::with_capacity(self.window);
        let by_feature: Vec<(&str, f64)> = self
            .features
            .iter()
            .enumerate()
            .filter_map(|(index, feature)| {
                column.clear();
                column.extend(window.iter().skip(index).step_by(width));
                Some((
                    feature.name.as_str(),
                    feature.calibrated.as_ref()?.distance(&column),
                ))
            })
            .collect();
        let largest = by_feature.iter().map(|(_, d)| *d).fold(0.0, f64::max);
        Some((largest, by_feature))
    }

    /// Records, per series, `InputDrift` (the largest of its features' drifts; with several
    /// features also each one under a `Feature` dimension) and the target's `OutOfRangeFraction`.
    pub fn record(&self, telemetry: &Telemetry, series: &[SeriesInput]) {
        let width = self.features.len();
        let target = &self.features[self.target];
        for s in series {
            let window = s.window(self.window * width);
            let column: Vec<f64> = window
                .iter()
                .skip(self.target)
                .step_by(width)
                .copied()
                .collect();
            telemetry.record(
                Metric::OutOfRangeFraction,
                out_of_range_fraction(&column, target.min, target.max),
            );
            if let Some((largest, by_feature)) = self.drift_of(window) {
                telemetry.record(Metric::InputDrift, largest);
                if width > 1 {
                    for (feature, drift) in by_feature {
                        telemetry.record_for_feature(Metric::InputDrift, drift, feature);
                    }
                }
            }
        }
    }
}

/// The calibrated drift of one feature's windows.
#[derive(Debug, Clone)]
pub struct WindowDrift {
    mean: f64,
    std: f64,
    cell: f64,
    occupied: HashSet<[i64; 3]>,
    cells: Vec<[i64; 3]>,
}

impl WindowDrift {
    /// From the feature's training mean and std and the cells its training windows occupied.
    pub fn new(mean: f64, std: f64, windows: &WindowCells) -> Self {
        WindowDrift {
            mean,
            std,
            cell: windows.cell,
            occupied: windows.cells.iter().copied().collect(),
            cells: windows.cells.clone(),
        }
    }

    /// How far (in training standard deviations) the window's (mean, min, max) lies from every
    /// training window's; 0 inside. Empty windows have no drift.
    pub fn distance(&self, values: &[f64]) -> f64 {
        if values.is_empty() {
            return 0.0;
        }
        let (mut sum, mut lo, mut hi) = (0.0, f64::INFINITY, f64::NEG_INFINITY);
        for &v in values {
            sum += v;
            lo = lo.min(v);
            hi = hi.max(v);
        }
        let point = [sum / values.len() as f64, lo, hi].map(|v| (v - self.mean) / self.std);
        let cell = point.map(|p| (p / self.cell).floor() as i64);
        if self.occupied.contains(&cell) {
            return 0.0;
        }
        // Chebyshev distance from the point to the nearest occupied cell (a box of side `cell`).
        self.cells
            .iter()
            .map(|c| {
                (0..3)
                    .map(|d| {
                        let low = c[d] as f64 * self.cell;
                        (low - point[d]).max(point[d] - (low + self.cell)).max(0.0)
                    })
                    .fold(0.0, f64::max)
            })
            .fold(f64::INFINITY, f64::min)
    }
}

/// Share of `values` outside the training range `[min, max]`.
pub fn out_of_range_fraction(values: &[f64], min: f64, max: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().filter(|&&v| v < min || v > max).count() as f64 / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::contract::ModelMetadata;

    /// Training windows of a standardised series occupied one cell: mean, min and max in [0, 1).
    fn one_cell() -> WindowDrift {
        WindowDrift::new(
            10.0,
            2.0,
            &WindowCells {
                cell: 1.0,
                cells: vec![[0, 0, 0]],
            },
        )
    }

    #[test]
    fn a_window_like_a_training_window_has_no_drift() {
        // Standardised: 0.25, 0.5, 0.75 -> mean 0.5, min 0.25, max 0.75, all in cell 0.
        assert_eq!(one_cell().distance(&[10.5, 11.0, 11.5]), 0.0);
    }

    #[test]
    fn drift_is_the_distance_in_training_stds_beyond_the_nearest_training_window() {
        // Shifted up by 3 std (6 units): mean 3.5, min 3.25, max 3.75; the cell ends at 1.0.
        let drift = one_cell().distance(&[16.5, 17.0, 17.5]);
        assert!((drift - 2.75).abs() < 1e-12, "{drift}");
        // Below: min -0.5 is half a std under the cell.
        let drift = one_cell().distance(&[9.0, 11.0, 11.0]);
        assert!((drift - 0.5).abs() < 1e-12, "{drift}");
    }

    /// A two-feature model: `a` calibrated on windows in cell 0 of (mean, min, max) around 0 with
    /// std 1, `b` around 100 with std 10.
    fn two_features() -> ModelMetadata {
        let stats = |mean: f64, std: f64| {
            serde_json::json!({"mean": mean, "std": std, "min": mean - std, "max": mean + std,
                               "quantile_edges": [mean - std, mean + std],
                               "windows": {"cell": 1.0, "cells": [[0, 0, 0]]}})
        };
        let doc = serde_json::json!({
            "format_version": 1, "name": "two", "version": "1", "created_at": "2026-11-30T00:00:00Z",
            "torch_version": "2.13.0", "model_sha256": "0".repeat(64),
            "input": {"window": 2, "features": ["a", "b"], "target": "b", "frequency": "1h"},
            "output": {"horizon": 1},
            "preprocessing": [],
            "training_stats": {"a": stats(0.0, 1.0), "b": stats(100.0, 10.0)}
        });
        ModelMetadata::from_json(doc.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn a_multi_feature_window_drifts_as_much_as_its_most_drifted_feature() {
        let monitor = InputDriftMonitor::for_model(&two_features());
        // Rows (a, b): `a` stays in its training cell, `b` moves 3 std (30) above it.
        let (largest, by_feature) = monitor.drift_of(&[0.5, 135.0, 0.5, 135.0]).unwrap();
        assert_eq!(by_feature[0], ("a", 0.0));
        assert_eq!(by_feature[1].0, "b");
        assert!((by_feature[1].1 - 2.5).abs() < 1e-12, "{by_feature:?}");
        assert_eq!(largest, by_feature[1].1);
    }

    #[test]
    fn a_model_without_calibration_reports_no_drift() {
        let mut metadata = two_features();
        metadata.training_stats.get_mut("a").unwrap().windows = None;
        assert!(InputDriftMonitor::for_model(&metadata)
            .drift_of(&[0.0; 4])
            .is_none());
    }

    #[test]
    fn values_beyond_the_training_range_are_counted() {
        assert_eq!(
            out_of_range_fraction(&[-5.0, 0.5, 10.0, 1.0], 0.0, 2.0),
            0.5
        );
    }
}
