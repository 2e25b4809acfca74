//! The model contract: `model.json`, read strictly and checked before any tensor is built.
//!
//! A model is a directory (or an S3 prefix) holding `model.pt` (TorchScript) and `model.json`.
//! Everything the service needs to feed the network exactly as training did lives here, so a model
//! can be swapped without touching the service.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The only `format_version` this build understands.
pub const FORMAT_VERSION: u32 = 1;

/// Parsed `model.json`. Unknown fields are rejected: a typo in a contract must not silently become
/// a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelMetadata {
    pub format_version: u32,
    pub name: String,
    pub version: String,
    /// RFC 3339.
    pub created_at: String,
    /// The PyTorch version that exported `model.pt`; must match the linked libtorch's major.minor.
    pub torch_version: String,
    /// Hex sha256 of `model.pt`, checked on every load.
    pub model_sha256: String,
    /// Hex sha256 of `model.onnx`, the same network for ONNX Runtime, which then answers lone
    /// windows (`super::onnx`). Absent: the model has no `model.onnx`, and a stray file of that
    /// name is never read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub onnx_sha256: Option<String>,
    pub input: InputSpec,
    pub output: OutputSpec,
    /// Applied in order to each window before the forward pass, inverted in reverse on the output.
    pub preprocessing: Vec<Preprocessing>,
    /// Per-feature statistics of the training data (drift detection compares requests with these).
    pub training_stats: BTreeMap<String, FeatureStats>,
    /// Free-form scores on the held-out split; shown by `GET /v1/model`, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evaluation: Option<serde_json::Value>,
    /// Free-form training details (architecture, seed, ...); shown, not interpreted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub training: Option<serde_json::Value>,
    /// Prediction intervals: how far around each forecast step the truth fell, at each level, on
    /// data the model did not train on (`lstm-forecast model calibrate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub calibration: Option<Calibration>,
}

/// Split-conformal calibration: at each level, the interval around horizon step `k` is the
/// forecast +- `radius[k]`, the smallest absolute error that at least that share of the
/// calibration forecasts' errors at step `k` did not exceed (with the conformal `(n + 1)` rank).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Calibration {
    /// `split_conformal`, the only method this build serves.
    pub method: String,
    /// What the errors were measured on (data and rows), for people.
    pub data: String,
    /// How many forecasts (each with every horizon step) the radii rest on.
    pub forecasts: usize,
    /// Ascending levels.
    pub levels: Vec<CalibratedLevel>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CalibratedLevel {
    /// Share of the truth the interval should cover, in (0, 1).
    pub level: f64,
    /// Half-width per horizon step, in the target's units.
    pub radius: Vec<f64>,
}

/// How close a requested level must be to a calibrated one to be served by it.
pub const LEVEL_TOLERANCE: f64 = 1e-9;

impl Calibration {
    /// The calibrated level within [`LEVEL_TOLERANCE`] of `level`, if any.
    pub fn level(&self, level: f64) -> Option<&CalibratedLevel> {
        self.levels
            .iter()
            .find(|l| (l.level - level).abs() <= LEVEL_TOLERANCE)
    }

    /// The radii calibrated for `level`, if it is one of the calibrated levels.
    pub fn radius(&self, level: f64) -> Option<&[f64]> {
        self.level(level).map(|l| l.radius.as_slice())
    }

    /// The calibrated levels, ascending.
    pub fn level_values(&self) -> Vec<f64> {
        self.levels.iter().map(|l| l.level).collect()
    }

    /// Checks a calibration for a model with `horizon` steps; `field` prefixes the error's field.
    pub fn check(&self, horizon: usize, field: &str) -> Result<(), ContractError> {
        if self.method != "split_conformal" {
            return Err(field_error(
                format!("{field}.method"),
                format!("`{}` is not served (only `split_conformal`)", self.method),
            ));
        }
        if self.forecasts == 0 {
            return Err(field_error(
                format!("{field}.forecasts"),
                "must be at least 1: a calibration rests on scored forecasts",
            ));
        }
        if self.levels.is_empty() {
            return Err(field_error(format!("{field}.levels"), "must not be empty"));
        }
        for (i, level) in self.levels.iter().enumerate() {
            let at = format!("{field}.levels[{i}]");
            if !(level.level > 0.0 && level.level < 1.0) {
                return Err(field_error(
                    format!("{at}.level"),
                    format!("{} is not in (0, 1)", level.level),
                ));
            }
            if level.radius.len() != horizon {
                return Err(field_error(
                    format!("{at}.radius"),
                    format!(
                        "has {} values for output.horizon {horizon}",
                        level.radius.len()
                    ),
                ));
            }
            if let Some(k) = level.radius.iter().position(|r| !r.is_finite() || *r < 0.0) {
                return Err(field_error(
                    format!("{at}.radius[{k}]"),
                    format!("{} must be finite and >= 0", level.radius[k]),
                ));
            }
            if let Some(previous) = i.checked_sub(1).map(|p| &self.levels[p]) {
                if level.level <= previous.level {
                    return Err(field_error(
                        format!("{at}.level"),
                        "levels must be strictly ascending",
                    ));
                }
                // A higher level whose interval is narrower would make the bands cross.
                if let Some(k) = (0..horizon).find(|&k| level.radius[k] < previous.radius[k]) {
                    return Err(field_error(
                        format!("{at}.radius[{k}]"),
                        format!(
                            "{} is narrower than level {}'s {}: the bands would cross",
                            level.radius[k], previous.level, previous.radius[k]
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InputSpec {
    /// Number of time steps the network reads.
    pub window: usize,
    /// Feature names in the column order the network expects.
    pub features: Vec<String>,
    /// The feature being forecast; one of `features`.
    pub target: String,
    /// Sampling period, e.g. `1h`, `15min`, `1d`; used to stamp forecast steps.
    pub frequency: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OutputSpec {
    /// Number of future steps of the target the network returns.
    pub horizon: usize,
    /// For networks that forecast quantiles: the quantile levels, ascending, 0.5 among them (the
    /// point forecast). The network then returns `[batch, horizon, quantiles.len()]`, and
    /// intervals come from pairs of quantiles (0.8 from 0.1 and 0.9).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quantiles: Option<Vec<f64>>,
}

/// Most quantiles a network may return.
pub const MAX_QUANTILES: usize = 99;

impl OutputSpec {
    /// Outputs per series: `horizon`, or `horizon x quantiles`.
    pub fn values_per_series(&self) -> usize {
        self.horizon * self.quantiles.as_ref().map_or(1, Vec::len)
    }

    /// Index of the quantile at `level`, if the network returns it.
    pub fn quantile_index(&self, level: f64) -> Option<usize> {
        self.quantiles
            .as_ref()?
            .iter()
            .position(|q| (q - level).abs() <= LEVEL_TOLERANCE)
    }

    fn check_quantiles(&self) -> Result<(), ContractError> {
        let Some(quantiles) = &self.quantiles else {
            return Ok(());
        };
        if quantiles.is_empty() || quantiles.len() > MAX_QUANTILES {
            return Err(field_error(
                "output.quantiles",
                format!("needs 1 to {MAX_QUANTILES} levels, has {}", quantiles.len()),
            ));
        }
        for (i, q) in quantiles.iter().enumerate() {
            if !(*q > 0.0 && *q < 1.0) {
                return Err(field_error(
                    format!("output.quantiles[{i}]"),
                    format!("{q} is not in (0, 1)"),
                ));
            }
            if i > 0 && *q <= quantiles[i - 1] {
                return Err(field_error(
                    format!("output.quantiles[{i}]"),
                    "quantiles must be strictly ascending",
                ));
            }
        }
        if self.quantile_index(0.5).is_none() {
            return Err(field_error(
                "output.quantiles",
                "must include 0.5: the median is the point forecast",
            ));
        }
        Ok(())
    }
}

/// One preprocessing step. The service implements exactly these; an unknown `kind` fails the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Preprocessing {
    /// `(x - mean) / std` per feature, with training statistics.
    ZScore { mean: Vec<f64>, std: Vec<f64> },
    /// Subtract each feature's last value in the window; the target's is added back to the output.
    SubtractLast,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureStats {
    pub mean: f64,
    pub std: f64,
    pub min: f64,
    pub max: f64,
    /// Ascending quantile edges (e.g. deciles) of the training values.
    pub quantile_edges: Vec<f64>,
    /// The (mean, min, max) cells the training windows occupied: the calibration of `InputDrift`
    /// (see `monitor::drift`). Without it a model publishes no `InputDrift`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub windows: Option<WindowCells>,
}

/// Which cells of (window mean, min, max), standardised with the feature's training mean and std
/// and quantised to `cell` standard deviations, the training windows occupied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowCells {
    /// Side of a cell, in training standard deviations.
    pub cell: f64,
    /// `[mean, min, max]` cell indices (`floor(standardised value / cell)`).
    pub cells: Vec<[i64; 3]>,
}

/// Why a contract was refused. Each message names the field at fault.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ContractError {
    #[error("model.json is not valid: {0}")]
    Parse(String),
    #[error(
        "model.json format_version {found} is not supported (this build reads {FORMAT_VERSION})"
    )]
    FormatVersion { found: u32 },
    #[error("model.json field `{field}` is invalid: {reason}")]
    Field { field: String, reason: String },
    #[error("{file} sha256 is {actual}, but model.json declares {declared}")]
    Checksum {
        file: &'static str,
        declared: String,
        actual: String,
    },
    #[error("model.json declares onnx_sha256, but model.onnx is missing")]
    OnnxMissing,
    #[error("model.json declares version {declared} but is filed under {filed_under}")]
    FiledUnderOtherVersion {
        declared: String,
        filed_under: String,
    },
}

fn field_error(field: impl Into<String>, reason: impl Into<String>) -> ContractError {
    ContractError::Field {
        field: field.into(),
        reason: reason.into(),
    }
}

impl ModelMetadata {
    /// The interval levels this model serves by itself: from pairs of its quantiles, or its
    /// `model.json` calibration (an online calibration may serve others).
    pub fn interval_levels(&self) -> Vec<f64> {
        match (&self.output.quantiles, &self.calibration) {
            (Some(quantiles), _) => quantiles
                .iter()
                .filter(|&&q| q < 0.5)
                .map(|q| 1.0 - 2.0 * q)
                .filter(|level| self.output.quantile_index((1.0 + level) / 2.0).is_some())
                .collect(),
            (None, Some(calibration)) => calibration.level_values(),
            (None, None) => Vec::new(),
        }
    }

    /// Parses and checks a `model.json` document.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ContractError> {
        let metadata: ModelMetadata =
            serde_json::from_slice(bytes).map_err(|e| ContractError::Parse(e.to_string()))?;
        metadata.check()?;
        Ok(metadata)
    }

    /// Checks internal consistency; shapes the engine will be asked for follow from these.
    pub fn check(&self) -> Result<(), ContractError> {
        self.check_identity()?;
        self.check_input()?;
        self.check_preprocessing()?;
        self.check_training_stats()?;
        self.output.check_quantiles()?;
        if let Some(calibration) = &self.calibration {
            if self.output.quantiles.is_some() {
                return Err(field_error(
                    "calibration",
                    "a network that returns output.quantiles takes its intervals from them; remove one of the two",
                ));
            }
            calibration.check(self.output.horizon, "calibration")?;
        }
        Ok(())
    }

    /// Format version, name, version, creation time and checksums.
    fn check_identity(&self) -> Result<(), ContractError> {
        if self.format_version != FORMAT_VERSION {
            return Err(ContractError::FormatVersion {
                found: self.format_version,
            });
        }
        if self.name.trim().is_empty() {
            return Err(field_error("name", "must not be empty"));
        }
        if !is_safe_identifier(&self.name) {
            return Err(field_error(
                "name",
                "may only contain letters, digits, '.', '_' and '-'",
            ));
        }
        if !is_safe_identifier(&self.version) {
            return Err(field_error(
                "version",
                "must be non-empty and only contain letters, digits, '.', '_' and '-'",
            ));
        }
        if chrono::DateTime::parse_from_rfc3339(&self.created_at).is_err() {
            return Err(field_error("created_at", "must be an RFC 3339 timestamp"));
        }
        if !is_sha256_hex(&self.model_sha256) {
            return Err(field_error("model_sha256", "must be 64 hex characters"));
        }
        if self
            .onnx_sha256
            .as_deref()
            .is_some_and(|h| !is_sha256_hex(h))
        {
            return Err(field_error("onnx_sha256", "must be 64 hex characters"));
        }
        Ok(())
    }

    /// The window, horizon, features, target and frequency.
    fn check_input(&self) -> Result<(), ContractError> {
        if self.input.window == 0 {
            return Err(field_error("input.window", "must be at least 1"));
        }
        if self.output.horizon == 0 {
            return Err(field_error("output.horizon", "must be at least 1"));
        }
        if self.input.features.is_empty() {
            return Err(field_error(
                "input.features",
                "must name at least one feature",
            ));
        }
        for (i, name) in self.input.features.iter().enumerate() {
            if name.is_empty() {
                return Err(field_error(
                    format!("input.features[{i}]"),
                    "must not be empty",
                ));
            }
            if self.input.features[..i].contains(name) {
                return Err(field_error(
                    format!("input.features[{i}]"),
                    format!("duplicate feature `{name}`"),
                ));
            }
        }
        if self.target_index().is_none() {
            return Err(field_error(
                "input.target",
                format!(
                    "`{}` is not one of input.features {:?}",
                    self.input.target, self.input.features
                ),
            ));
        }
        parse_frequency(&self.input.frequency)
            .map_err(|reason| field_error("input.frequency", reason.to_string()))?;
        Ok(())
    }

    /// Each z-score step has one finite mean and one positive std per feature.
    fn check_preprocessing(&self) -> Result<(), ContractError> {
        let features = self.input.features.len();
        for (i, step) in self.preprocessing.iter().enumerate() {
            if let Preprocessing::ZScore { mean, std } = step {
                let field = format!("preprocessing[{i}]");
                if mean.len() != features || std.len() != features {
                    return Err(field_error(
                        field,
                        format!(
                            "z_score has {} means and {} stds for {features} features",
                            mean.len(),
                            std.len()
                        ),
                    ));
                }
                if mean.iter().any(|m| !m.is_finite()) {
                    return Err(field_error(field, "z_score mean must be finite"));
                }
                if std.iter().any(|s| !s.is_finite() || *s <= 0.0) {
                    return Err(field_error(field, "z_score std must be finite and > 0"));
                }
            }
        }
        Ok(())
    }

    /// Training statistics for exactly the input features, which drift detection reads.
    fn check_training_stats(&self) -> Result<(), ContractError> {
        for name in &self.input.features {
            let Some(stats) = self.training_stats.get(name) else {
                return Err(field_error(
                    "training_stats",
                    format!("missing statistics for feature `{name}`"),
                ));
            };
            let edges = &stats.quantile_edges;
            if edges.len() < 2 || edges.windows(2).any(|w| w[0] > w[1]) {
                return Err(field_error(
                    format!("training_stats.{name}.quantile_edges"),
                    "needs at least 2 ascending values",
                ));
            }
            if !stats.std.is_finite() || stats.std <= 0.0 || !stats.mean.is_finite() {
                return Err(field_error(
                    format!("training_stats.{name}"),
                    "mean must be finite and std finite and > 0",
                ));
            }
            if let Some(windows) = &stats.windows {
                let field = format!("training_stats.{name}.windows");
                if !windows.cell.is_finite() || windows.cell <= 0.0 {
                    return Err(field_error(field, "cell must be finite and > 0"));
                }
                if windows.cells.is_empty() {
                    return Err(field_error(
                        field,
                        "cells is empty: no training window was recorded",
                    ));
                }
                // A window's min <= mean <= max, so its cells are ordered too.
                if let Some(bad) = windows
                    .cells
                    .iter()
                    .find(|[mean, min, max]| min > mean || mean > max)
                {
                    return Err(field_error(
                        field,
                        format!("cell {bad:?} is not [mean, min, max] (needs min <= mean <= max)"),
                    ));
                }
            }
        }
        if let Some(extra) = self
            .training_stats
            .keys()
            .find(|k| !self.input.features.contains(k))
        {
            return Err(field_error(
                "training_stats",
                format!("statistics for `{extra}`, which is not an input feature"),
            ));
        }
        Ok(())
    }

    /// Column of the target feature in the input rows.
    pub fn target_index(&self) -> Option<usize> {
        self.input
            .features
            .iter()
            .position(|f| *f == self.input.target)
    }

    /// The sampling period; valid once [`ModelMetadata::check`] has passed.
    pub fn frequency(&self) -> Duration {
        parse_frequency(&self.input.frequency).expect("checked at load")
    }

    /// Compares `model.pt` bytes with the declared checksum.
    pub fn verify_checksum(&self, model_pt: &[u8]) -> Result<(), ContractError> {
        verify_sha256("model.pt", &self.model_sha256, model_pt)
    }

    /// Compares `model.onnx` bytes with the declared checksum. Bytes without a declared checksum
    /// are refused: nothing unverified reaches an engine.
    pub fn verify_onnx_checksum(&self, model_onnx: &[u8]) -> Result<(), ContractError> {
        let declared = self.onnx_sha256.as_deref().unwrap_or("nothing");
        verify_sha256("model.onnx", declared, model_onnx)
    }
}

fn verify_sha256(file: &'static str, declared: &str, bytes: &[u8]) -> Result<(), ContractError> {
    let actual = sha256_hex(bytes);
    if actual.eq_ignore_ascii_case(declared) {
        Ok(())
    } else {
        Err(ContractError::Checksum {
            file,
            declared: declared.to_string(),
            actual,
        })
    }
}

fn is_sha256_hex(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Names and versions become S3 keys and metric dimensions, so keep them plain.
fn is_safe_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    hex::encode(Sha256::digest(bytes))
}

/// Why a `frequency` could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrequencyError {
    #[error("`{0}` has no unit (expected e.g. 1h, 15min, 1d)")]
    NoUnit(String),
    #[error("`{0}` has an invalid count")]
    InvalidCount(String),
    #[error("`{text}` has unknown unit `{unit}` (use s, min, h or d)")]
    UnknownUnit { text: String, unit: String },
    #[error("`{0}` must be a positive period")]
    NotPositive(String),
    #[error("`{0}` is too long a period")]
    TooLong(String),
}

/// Parses `<count><unit>` with unit one of `s`, `min`, `h`, `d` (pandas-like aliases `T`, `H`, `D`).
pub fn parse_frequency(text: &str) -> Result<Duration, FrequencyError> {
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| FrequencyError::NoUnit(text.to_string()))?;
    let (count, unit) = text.split_at(split);
    let count: u64 = if count.is_empty() {
        1
    } else {
        count
            .parse()
            .map_err(|_| FrequencyError::InvalidCount(text.to_string()))?
    };
    let unit_secs = match unit {
        "s" => 1,
        "min" | "T" => 60,
        "h" | "H" => 3600,
        "d" | "D" => 86_400,
        _ => {
            return Err(FrequencyError::UnknownUnit {
                text: text.to_string(),
                unit: unit.to_string(),
            })
        }
    };
    if count == 0 {
        return Err(FrequencyError::NotPositive(text.to_string()));
    }
    count
        .checked_mul(unit_secs)
        .map(Duration::from_secs)
        .ok_or_else(|| FrequencyError::TooLong(text.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid_json() -> serde_json::Value {
        serde_json::json!({
            "format_version": 1,
            "name": "demo",
            "version": "1.0.0",
            "created_at": "2026-11-27T00:00:00Z",
            "torch_version": "2.13.0",
            "model_sha256": "0".repeat(64),
            "input": {"window": 4, "features": ["OT"], "target": "OT", "frequency": "1h"},
            "output": {"horizon": 2},
            "preprocessing": [{"kind": "z_score", "mean": [1.0], "std": [2.0]}, {"kind": "subtract_last"}],
            "training_stats": {"OT": {"mean": 1.0, "std": 2.0, "min": -3.0, "max": 5.0, "quantile_edges": [-3.0, 1.0, 5.0]}}
        })
    }

    fn parse(value: serde_json::Value) -> Result<ModelMetadata, ContractError> {
        ModelMetadata::from_json(value.to_string().as_bytes())
    }

    fn error_text(value: serde_json::Value) -> String {
        parse(value)
            .expect_err("contract must be refused")
            .to_string()
    }

    #[test]
    fn a_complete_contract_loads() {
        let metadata = parse(valid_json()).unwrap();
        assert_eq!(metadata.input.window, 4);
        assert_eq!(metadata.target_index(), Some(0));
        assert_eq!(metadata.frequency(), Duration::from_secs(3600));
    }

    #[test]
    fn unknown_fields_are_refused_and_named() {
        let mut doc = valid_json();
        doc["input"]["windw"] = 3.into();
        assert!(error_text(doc).contains("windw"));
    }

    #[test]
    fn missing_fields_are_refused_and_named() {
        let mut doc = valid_json();
        doc["output"].as_object_mut().unwrap().remove("horizon");
        assert!(error_text(doc).contains("horizon"));
    }

    #[test]
    fn unknown_preprocessing_kinds_are_refused() {
        let mut doc = valid_json();
        doc["preprocessing"] = serde_json::json!([{"kind": "revin"}]);
        assert!(error_text(doc).contains("revin"));
    }

    #[test]
    fn target_must_be_a_feature() {
        let mut doc = valid_json();
        doc["input"]["target"] = "HUFL".into();
        let text = error_text(doc);
        assert!(text.contains("input.target"), "{text}");
    }

    #[test]
    fn z_score_must_cover_every_feature_with_positive_std() {
        let mut doc = valid_json();
        doc["preprocessing"][0]["mean"] = serde_json::json!([1.0, 2.0]);
        assert!(error_text(doc).contains("preprocessing[0]"));
        let mut doc = valid_json();
        doc["preprocessing"][0]["std"] = serde_json::json!([0.0]);
        assert!(error_text(doc).contains("std must be finite and > 0"));
    }

    #[test]
    fn zero_window_or_horizon_is_refused() {
        let mut doc = valid_json();
        doc["input"]["window"] = 0.into();
        assert!(error_text(doc).contains("input.window"));
        let mut doc = valid_json();
        doc["output"]["horizon"] = 0.into();
        assert!(error_text(doc).contains("output.horizon"));
    }

    #[test]
    fn newer_format_versions_are_refused() {
        let mut doc = valid_json();
        doc["format_version"] = 2.into();
        assert_eq!(parse(doc), Err(ContractError::FormatVersion { found: 2 }));
    }

    #[test]
    fn names_that_cannot_be_s3_keys_are_refused() {
        let mut doc = valid_json();
        doc["version"] = "../1".into();
        assert!(error_text(doc).contains("`version`"));
    }

    #[test]
    fn a_drift_calibration_must_be_cells_of_mean_min_and_max() {
        let mut doc = valid_json();
        doc["training_stats"]["OT"]["windows"] =
            serde_json::json!({"cell": 0.25, "cells": [[0, -1, 2]]});
        assert!(parse(doc.clone()).is_ok());
        doc["training_stats"]["OT"]["windows"]["cells"] = serde_json::json!([[0, 1, 2]]);
        assert!(error_text(doc.clone()).contains("is not [mean, min, max]"));
        doc["training_stats"]["OT"]["windows"] =
            serde_json::json!({"cell": 0.0, "cells": [[0, 0, 0]]});
        assert!(error_text(doc.clone()).contains("cell must be finite and > 0"));
        doc["training_stats"]["OT"]["windows"] = serde_json::json!({"cell": 0.25, "cells": []});
        assert!(error_text(doc).contains("cells is empty"));
    }

    #[test]
    fn every_feature_needs_training_statistics() {
        let mut doc = valid_json();
        doc["training_stats"] = serde_json::json!({});
        assert!(error_text(doc).contains("missing statistics for feature `OT`"));
    }

    #[test]
    fn checksum_mismatch_names_both_digests() {
        let mut metadata = parse(valid_json()).unwrap();
        metadata.model_sha256 = sha256_hex(b"model");
        assert!(metadata.verify_checksum(b"model").is_ok());
        let err = metadata.verify_checksum(b"tampered").unwrap_err();
        assert!(err.to_string().contains(&metadata.model_sha256));
    }

    #[test]
    fn frequencies_parse_with_units() {
        assert_eq!(parse_frequency("15min"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_frequency("1d"), Ok(Duration::from_secs(86_400)));
        assert_eq!(parse_frequency("h"), Ok(Duration::from_secs(3600)));
        assert!(parse_frequency("0h").is_err());
        assert!(parse_frequency("5").is_err());
        assert!(parse_frequency("1w").is_err());
    }

    #[test]
    fn a_frequency_too_long_to_count_in_seconds_is_refused_not_wrapped() {
        let err = parse_frequency("300000000000000000d")
            .unwrap_err()
            .to_string();
        assert!(err.contains("too long"), "{err}");
    }
}
