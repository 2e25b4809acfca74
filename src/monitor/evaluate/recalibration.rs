//! Recalibration: the scored errors feed the online calibration that serves prediction intervals
//! (see [`crate::monitor::calibration`]).

use chrono::{DateTime, Utc};

use crate::monitor::calibration::{OnlineCalibrations, ScoredError};
use crate::monitor::store::{AccuracyStore, StoreError};

/// How the online calibration of intervals follows the scored errors.
#[derive(Debug, Clone, PartialEq)]
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

/// [`recalibrate`] when there are errors to add; returns the versions the calibration now serves
/// intervals for, or none when nothing was scored or the recalibration failed.
///
/// Best effort: a recalibration that fails (S3, an unreadable state file) leaves intervals on
/// the calibration in use; the scores, report and watermark still move.
pub(super) async fn recalibrate_best_effort(
    store: &AccuracyStore,
    errors: &[ScoredError],
    recalibration: &Recalibration,
    now: DateTime<Utc>,
) -> Vec<String> {
    if errors.is_empty() {
        return Vec::new();
    }
    match recalibrate(store, errors, recalibration, now).await {
        Ok(recalibrated) => recalibrated,
        Err(e) => {
            tracing::warn!(error = %e, "could not recalibrate the intervals; they keep their calibration");
            Vec::new()
        }
    }
}

/// Adds the scored errors to the online calibration's windows and publishes it; returns the
/// versions it now serves intervals for.
async fn recalibrate(
    store: &AccuracyStore,
    errors: &[ScoredError],
    recalibration: &Recalibration,
    now: DateTime<Utc>,
) -> Result<Vec<String>, StoreError> {
    let mut online: OnlineCalibrations = store.online_calibrations().await?;
    online.update(errors, recalibration.window, &recalibration.levels, now);
    store.set_online_calibrations(&online).await?;
    Ok(online
        .versions
        .iter()
        .filter(|(_, v)| v.calibration.is_some())
        .map(|(name, _)| name.clone())
        .collect())
}
