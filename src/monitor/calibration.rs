//! Online recalibration of prediction intervals from the forecasts the accuracy loop scores.
//!
//! The calibration in `model.json` was measured once, on the validation split; when the data moves,
//! its intervals cover too much or too little. Each evaluation adds the absolute errors it scored,
//! per model version and horizon step, to a rolling window of the most recent ones, and publishes
//! the split-conformal radii of that window (`state/calibration.json`). `serve` and the Lambda
//! function read it on their reload poll and serve it in place of `model.json`'s while it holds
//! enough errors for their version.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::calibrate::from_errors;
use crate::model::contract::Calibration;

/// Errors per step a version needs before its online calibration is published (more for a level
/// whose conformal rank needs more: `level / (1 - level)`, 19 for 0.95).
pub const MIN_ONLINE_ERRORS: usize = 30;

/// Errors needed for `level`'s conformal rank `ceil((n + 1) level)` to fall within `n`.
pub fn errors_needed(level: f64) -> usize {
    ((level / (1.0 - level)).ceil() as usize).max(MIN_ONLINE_ERRORS)
}

/// One scored (forecast, actual) pair's absolute error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoredError {
    pub model_version: String,
    /// 0-based horizon step.
    pub step: usize,
    /// The target's timestamp: the window keeps the most recent targets.
    pub at: DateTime<Utc>,
    pub error: f64,
    /// A hash of the forecast that erred (its series, origin and version): among errors of one
    /// target time (every series' forecast of the same hour), the window keeps those of the
    /// highest ranks. An order of its own, not of reading, so that a run split by series keeps
    /// the same errors as a whole one; a hash, not the error, so that the kept ones are not the
    /// largest.
    #[serde(default)]
    pub rank: u64,
}

impl ScoredError {
    /// The window's order: target time, then rank, then the error itself.
    pub fn order(&self, other: &ScoredError) -> std::cmp::Ordering {
        (self.at, self.rank)
            .cmp(&(other.at, other.rank))
            .then(self.error.total_cmp(&other.error))
    }

    fn kept(&self) -> KeptError {
        KeptError {
            at: self.at,
            error: self.error,
            rank: self.rank,
        }
    }
}

/// An error in a version's window: `[time, error, rank]` (`[time, error]` as files written
/// before ranks read, rank 0).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredError", into = "StoredError")]
pub struct KeptError {
    pub at: DateTime<Utc>,
    pub error: f64,
    pub rank: u64,
}

impl KeptError {
    fn order(&self, other: &KeptError) -> std::cmp::Ordering {
        (self.at, self.rank)
            .cmp(&(other.at, other.rank))
            .then(self.error.total_cmp(&other.error))
    }
}

#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum StoredError {
    Ranked(DateTime<Utc>, f64, u64),
    Unranked(DateTime<Utc>, f64),
}

impl From<StoredError> for KeptError {
    fn from(stored: StoredError) -> Self {
        match stored {
            StoredError::Ranked(at, error, rank) => KeptError { at, error, rank },
            StoredError::Unranked(at, error) => KeptError { at, error, rank: 0 },
        }
    }
}

impl From<KeptError> for StoredError {
    fn from(kept: KeptError) -> Self {
        StoredError::Ranked(kept.at, kept.error, kept.rank)
    }
}

/// The rolling windows and the calibrations they give (`state/calibration.json`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct OnlineCalibrations {
    pub updated_at: Option<DateTime<Utc>>,
    /// Errors kept per version and step.
    pub window: usize,
    pub versions: BTreeMap<String, VersionErrors>,
}

/// One version's recent errors, per horizon step, oldest first, and their calibration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VersionErrors {
    pub steps: Vec<Vec<KeptError>>,
    /// Absent until every step holds [`MIN_ONLINE_ERRORS`] errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

impl OnlineCalibrations {
    /// Adds `errors`, keeps the latest `window` per version and step, and recomputes the radii of
    /// every version that got new errors at `levels`.
    pub fn update(
        &mut self,
        errors: &[ScoredError],
        window: usize,
        levels: &[f64],
        now: DateTime<Utc>,
    ) {
        let window = window.max(1);
        self.window = window;
        let mut touched = std::collections::BTreeSet::new();
        for e in errors.iter().filter(|e| e.error.is_finite()) {
            let version = self.versions.entry(e.model_version.clone()).or_default();
            if version.steps.len() <= e.step {
                version.steps.resize(e.step + 1, Vec::new());
            }
            version.steps[e.step].push(e.kept());
            touched.insert(e.model_version.clone());
        }
        for name in touched {
            let version = self.versions.get_mut(&name).expect("touched above");
            for step in &mut version.steps {
                step.sort_by(KeptError::order);
                let excess = step.len().saturating_sub(window);
                step.drain(..excess);
            }
            version.calibration = version.calibrate(levels, window, now);
        }
        self.updated_at = Some(now);
    }

    /// The calibration published for `version`, if any.
    pub fn for_version(&self, version: &str) -> Option<&Calibration> {
        self.versions.get(version)?.calibration.as_ref()
    }
}

impl VersionErrors {
    fn calibrate(&self, levels: &[f64], window: usize, now: DateTime<Utc>) -> Option<Calibration> {
        let fewest = self.steps.iter().map(Vec::len).min()?;
        // Only levels whose rank the window can hold: a smaller sample cannot promise the level.
        let levels: Vec<f64> = levels
            .iter()
            .copied()
            .filter(|&level| fewest >= errors_needed(level))
            .collect();
        if levels.is_empty() {
            return None;
        }
        let errors_by_step = self
            .steps
            .iter()
            .map(|step| step.iter().map(|kept| kept.error).collect())
            .collect();
        let data = format!(
            "online: the latest {fewest} scored errors per horizon step (window {window}), as of {}",
            crate::time::format_rfc3339(now)
        );
        Some(from_errors(errors_by_step, &levels, data, fewest))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(version: &str, steps: usize, count: usize, scale: f64) -> Vec<ScoredError> {
        let start = DateTime::parse_from_rfc3339("2018-01-01T00:00:00Z")
            .unwrap()
            .to_utc();
        (0..count)
            .flat_map(|i| {
                (0..steps).map(move |step| ScoredError {
                    model_version: version.into(),
                    step,
                    at: start + chrono::Duration::hours(i as i64),
                    error: scale * (i % 10) as f64,
                    rank: 0,
                })
            })
            .collect()
    }

    #[test]
    fn nothing_is_published_before_every_step_has_enough_errors() {
        let mut online = OnlineCalibrations::default();
        online.update(
            &errors("1", 2, MIN_ONLINE_ERRORS - 1, 1.0),
            120,
            &[0.8],
            Utc::now(),
        );
        assert!(online.for_version("1").is_none());
        online.update(&errors("1", 2, 1, 1.0), 120, &[0.8], Utc::now());
        let calibration = online.for_version("1").expect("published");
        assert_eq!(calibration.forecasts, MIN_ONLINE_ERRORS);
        calibration.check(2, "online").unwrap();
    }

    #[test]
    fn the_window_keeps_the_latest_errors_and_follows_their_size() {
        let mut online = OnlineCalibrations::default();
        online.update(&errors("1", 1, 100, 1.0), 40, &[0.8, 0.95], Utc::now());
        let small = online.for_version("1").unwrap().levels[0].radius[0];
        // Errors ten times larger arrive later: the window forgets the small ones.
        let later: Vec<ScoredError> = errors("1", 1, 100, 10.0)
            .into_iter()
            .map(|e| ScoredError {
                at: e.at + chrono::Duration::days(30),
                ..e
            })
            .collect();
        online.update(&later, 40, &[0.8, 0.95], Utc::now());
        let version = &online.versions["1"];
        assert_eq!(version.steps[0].len(), 40);
        let large = online.for_version("1").unwrap().levels[0].radius[0];
        assert!((large - 10.0 * small).abs() < 1e-9, "{small} -> {large}");
        // Another version's errors never mix in.
        assert!(online.for_version("2").is_none());
    }
}
