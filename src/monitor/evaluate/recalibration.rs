//! Recalibration: the scored errors feed the online calibration that serves prediction intervals
//! (see [`crate::monitor::calibration`]).

use chrono::{DateTime, Utc};

use crate::monitor::calibration::{OnlineCalibrations, ScoredError};
use crate::monitor::store::AccuracyStore;

/// How the online calibration of intervals follows the scored errors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Recalibration {
    /// Most recent errors kept per model version and horizon step.
    pub window: usize,
    /// Levels the published calibration serves.
    pub levels: Vec<f64>,
}

impl Default for Recalibration {
    /// 120 errors per step and version, the latest by target time whatever their series: for
    /// one series forecast four times a day, 30 days (README, "Prediction intervals").
    fn default() -> Self {
        Recalibration {
            window: 120,
            levels: vec![0.8, 0.95],
        }
    }
}

/// The online calibration with the scored errors added, or `None` when nothing was scored or
/// the calibration could not be read.
///
/// Best effort: a calibration that cannot be read (S3, an unreadable state file) leaves intervals
/// on the calibration in use; the scores, report and watermark still move.
pub(super) async fn recalibrated_best_effort(
    store: &AccuracyStore,
    errors: &[ScoredError],
    recalibration: &Recalibration,
    now: DateTime<Utc>,
) -> Option<OnlineCalibrations> {
    if errors.is_empty() {
        return None;
    }
    match store.online_calibrations().await {
        Ok(mut online) => {
            online.update(errors, recalibration.window, &recalibration.levels, now);
            Some(online)
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not read the online calibration; intervals keep the one in use");
            None
        }
    }
}

/// The versions `online` serves intervals for.
pub(super) fn calibrated_versions(online: &OnlineCalibrations) -> Vec<String> {
    online
        .versions
        .iter()
        .filter(|(_, v)| v.calibration.is_some())
        .map(|(name, _)| name.clone())
        .collect()
}
