//! Forecast requests and answers, independent of any transport.
//!
//! Every request is parsed by hand from a JSON value rather than with `#[derive(Deserialize)]`:
//! serde's messages ("data did not match any variant") do not say which series or which value is
//! wrong, and this parser's do (`series[3].values[17] is null`). Nothing here trusts the client:
//! shapes, finiteness and sizes are checked before libtorch sees a single number.

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Utc};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::model::contract::{Calibration, ModelMetadata, OutputSpec};
use crate::model::SeriesOutput;
use crate::time::{parse_rfc3339, span_of_steps, steps_after};

/// One series to forecast, validated against the model's input shape.
#[derive(Debug, Clone, PartialEq)]
pub struct SeriesInput {
    pub id: Option<String>,
    /// The history, row-major `[rows][features]`, original scale, all finite, at least `window`
    /// rows. The forecast reads the last `window` rows; a longer history allows a backtest.
    pub values: Vec<f64>,
    pub last_timestamp: Option<DateTime<Utc>>,
}

impl SeriesInput {
    /// The last `len` values (the network's window, when `len = window * features`).
    pub fn window(&self, len: usize) -> &[f64] {
        &self.values[self.values.len().saturating_sub(len)..]
    }
}

/// What a request may look like for one model.
#[derive(Debug, Clone)]
pub struct RequestShape {
    pub window: usize,
    pub features: Vec<String>,
    pub max_series: usize,
    /// How far the forecast's last step lies after `last_timestamp` (`horizon` steps of the
    /// model's frequency); `None` when that span does not fit a date at all.
    pub forecast_span: Option<TimeDelta>,
}

impl RequestShape {
    pub fn new(metadata: &ModelMetadata, max_series: usize) -> Self {
        RequestShape {
            window: metadata.input.window,
            features: metadata.input.features.clone(),
            max_series,
            forecast_span: span_of_steps(metadata.frequency(), metadata.output.horizon),
        }
    }

    /// Checks that every forecast step after `last` can be written as RFC 3339, whose years end at
    /// 9999; `last` itself parsed, so only the steps can overflow.
    pub(crate) fn check_forecast_fits_after(&self, last: DateTime<Utc>) -> Result<(), String> {
        let newest_writable = NaiveDate::from_ymd_opt(9999, 12, 31)
            .and_then(|d| d.and_hms_opt(23, 59, 59))
            .expect("a valid date")
            .and_utc();
        match self
            .forecast_span
            .and_then(|span| last.checked_add_signed(span))
        {
            Some(end) if end <= newest_writable => Ok(()),
            _ => Err(format!(
                "its forecast steps would run past {}, which RFC 3339 timestamps cannot write",
                newest_writable.to_rfc3339_opts(SecondsFormat::Secs, true)
            )),
        }
    }
}

/// Longest accepted series id; ids end up in logs and forecast records.
pub const MAX_ID_LEN: usize = 256;

/// Longest accepted history, in windows: enough for a backtest, bounded against abuse.
pub const MAX_HISTORY_WINDOWS: usize = 8;

/// Machine-readable error codes (the `code` of an error body, and the `kind` label of metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    InvalidJson,
    InvalidRequest,
    EmptyRequest,
    TooManySeries,
    WrongWindowLength,
    WrongFeatureCount,
    NonFiniteValue,
    InvalidTimestamp,
    /// `intervals` is malformed (not levels in (0, 1)).
    InvalidInterval,
    /// A well-formed level the model has no calibration for.
    UnsupportedInterval,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::EmptyRequest => "empty_request",
            ErrorCode::TooManySeries => "too_many_series",
            ErrorCode::WrongWindowLength => "wrong_window_length",
            ErrorCode::WrongFeatureCount => "wrong_feature_count",
            ErrorCode::NonFiniteValue => "non_finite_value",
            ErrorCode::InvalidTimestamp => "invalid_timestamp",
            ErrorCode::InvalidInterval => "invalid_interval",
            ErrorCode::UnsupportedInterval => "unsupported_interval",
        }
    }
}

/// A request the client must fix. The message names the offending field or series.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    pub code: ErrorCode,
    pub message: String,
}

pub(crate) fn reject(code: ErrorCode, message: impl Into<String>) -> RequestError {
    RequestError {
        code,
        message: message.into(),
    }
}

/// Parses and validates a `POST /v1/forecast` body: `{"series":[{"id","values","last_timestamp"}]}`.
pub fn parse_forecast_request(
    body: &[u8],
    shape: &RequestShape,
) -> Result<Vec<SeriesInput>, RequestError> {
    let top = parse_document(body)?;
    reject_unknown_fields(&top, &["series"], "request body")?;
    parse_series_array(&top, shape)
}

/// A forecast request: its series, and the interval levels it asks for (none when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastRequest {
    pub series: Vec<SeriesInput>,
    pub intervals: Vec<f64>,
}

/// Most interval levels one request may ask for.
pub const MAX_INTERVAL_LEVELS: usize = 8;

/// Parses a `POST /v1/forecast` body: [`parse_forecast_request`] plus `"intervals": [0.8, 0.95]`.
pub fn parse_forecast_body(
    body: &[u8],
    shape: &RequestShape,
) -> Result<ForecastRequest, RequestError> {
    let top = parse_document(body)?;
    reject_unknown_fields(&top, &["series", "intervals"], "request body")?;
    let intervals = match top.get("intervals") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(levels)) => {
            let mut parsed = Vec::with_capacity(levels.len());
            for (i, level) in levels.iter().enumerate() {
                parsed.push(level.as_f64().ok_or_else(|| {
                    reject(
                        ErrorCode::InvalidInterval,
                        format!(
                            "`intervals[{i}]` must be a number in (0, 1), got {}",
                            kind_of(level)
                        ),
                    )
                })?);
            }
            check_interval_levels(&parsed)?;
            parsed
        }
        Some(other) => {
            return Err(reject(
                ErrorCode::InvalidInterval,
                format!(
                    "`intervals` must be an array of levels in (0, 1) such as [0.8, 0.95], got {}",
                    kind_of(other)
                ),
            ))
        }
    };
    Ok(ForecastRequest {
        series: parse_series_array(&top, shape)?,
        intervals,
    })
}

/// Checks interval levels however they arrived (request body, CLI flag, batch event): each in
/// (0, 1), no repeats, at most [`MAX_INTERVAL_LEVELS`]. Errors name `intervals[i]`.
pub fn check_interval_levels(levels: &[f64]) -> Result<(), RequestError> {
    if levels.len() > MAX_INTERVAL_LEVELS {
        return Err(reject(
            ErrorCode::InvalidInterval,
            format!(
                "`intervals` has {} levels; at most {MAX_INTERVAL_LEVELS} are accepted",
                levels.len()
            ),
        ));
    }
    for (i, &level) in levels.iter().enumerate() {
        if !(level > 0.0 && level < 1.0) {
            return Err(reject(
                ErrorCode::InvalidInterval,
                format!("`intervals[{i}]` is {level}; a level is a share in (0, 1), such as 0.8 or 0.95"),
            ));
        }
        if levels[..i].contains(&level) {
            return Err(reject(
                ErrorCode::InvalidInterval,
                format!("`intervals[{i}]` repeats {level}"),
            ));
        }
    }
    Ok(())
}

/// Checks that `calibration` serves every level asked for, before any work is done.
pub fn check_levels_calibrated(
    calibration: Option<&Calibration>,
    levels: &[f64],
) -> Result<(), RequestError> {
    if levels.is_empty() {
        return Ok(());
    }
    let Some(calibration) = calibration else {
        return Err(reject(
            ErrorCode::UnsupportedInterval,
            "this model has no calibrated intervals (its model.json has no `calibration`; see `lstm-forecast model calibrate`)",
        ));
    };
    match levels
        .iter()
        .enumerate()
        .find(|(_, level)| calibration.radius(**level).is_none())
    {
        Some((i, level)) => Err(reject(
            ErrorCode::UnsupportedInterval,
            format!(
                "`intervals[{i}]` ({level}) is not a calibrated level; this model serves {:?}",
                calibration.level_values()
            ),
        )),
        None => Ok(()),
    }
}

/// The indices of the quantiles that bound the interval at `level`.
fn quantile_pair(output: &OutputSpec, level: f64) -> Option<(usize, usize)> {
    Some((
        output.quantile_index((1.0 - level) / 2.0)?,
        output.quantile_index((1.0 + level) / 2.0)?,
    ))
}

/// Checks that a quantile network returns the two quantiles every level asked for needs.
pub fn check_levels_in_quantiles(output: &OutputSpec, levels: &[f64]) -> Result<(), RequestError> {
    let Some(quantiles) = &output.quantiles else {
        return Ok(());
    };
    match levels
        .iter()
        .enumerate()
        .find(|(_, level)| quantile_pair(output, **level).is_none())
    {
        Some((i, level)) => Err(reject(
            ErrorCode::UnsupportedInterval,
            format!(
                "`intervals[{i}]` ({level}) needs the quantiles {} and {}; this model returns {quantiles:?}",
                (1.0 - level) / 2.0,
                (1.0 + level) / 2.0
            ),
        )),
        None => Ok(()),
    }
}

/// The JSON object a body must be.
fn parse_document(body: &[u8]) -> Result<Map<String, Value>, RequestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(reject(
            ErrorCode::EmptyRequest,
            "request body is empty; expected {\"series\": [{\"values\": [...]}]}",
        ));
    }
    let document: Value = serde_json::from_slice(body).map_err(|e| {
        let hint = if contains_non_json_number(body) {
            " (NaN and Infinity are not JSON numbers; send finite values)"
        } else {
            ""
        };
        reject(
            ErrorCode::InvalidJson,
            format!("request body is not valid JSON: {e}{hint}"),
        )
    })?;
    match document {
        Value::Object(top) => Ok(top),
        other => Err(reject(
            ErrorCode::InvalidRequest,
            format!(
                "request body must be a JSON object with a `series` array, got {}",
                kind_of(&other)
            ),
        )),
    }
}

fn parse_series_array(
    top: &Map<String, Value>,
    shape: &RequestShape,
) -> Result<Vec<SeriesInput>, RequestError> {
    let series = match top.get("series") {
        None => return Err(reject(ErrorCode::InvalidRequest, "missing field `series`")),
        Some(Value::Array(series)) => series,
        Some(other) => {
            return Err(reject(
                ErrorCode::InvalidRequest,
                format!("`series` must be an array, got {}", kind_of(other)),
            ))
        }
    };
    if series.is_empty() {
        return Err(reject(
            ErrorCode::EmptyRequest,
            "`series` is empty; send at least one series",
        ));
    }
    if series.len() > shape.max_series {
        return Err(reject(
            ErrorCode::TooManySeries,
            format!(
                "`series` has {} entries; at most {} are accepted per request",
                series.len(),
                shape.max_series
            ),
        ));
    }
    let series = series
        .iter()
        .enumerate()
        .map(|(i, item)| parse_series(i, item, shape))
        .collect::<Result<Vec<_>, _>>()?;
    check_unique_ids(&series)?;
    Ok(series)
}

/// Refuses two series with one id in `series`, naming both indexes.
pub fn check_unique_ids(series: &[SeriesInput]) -> Result<(), RequestError> {
    let mut ids = UniqueIds::default();
    for (index, input) in series.iter().enumerate() {
        ids.check(input.id.as_deref(), index)?;
    }
    Ok(())
}

/// The series ids seen so far in one request or one shard. Two series with one id would be
/// answered, logged and scored as each other (the forecast log and the scores are keyed by id),
/// so the second is refused. Ids are kept as keyed hashes, 16 bytes a series, so a shard of
/// millions of series stays cheap; the keys are random per process, so no caller can craft a
/// collision.
#[derive(Default)]
pub struct UniqueIds {
    first_index: std::collections::HashMap<u64, usize>,
    hasher: std::collections::hash_map::RandomState,
}

impl UniqueIds {
    /// Records the id of the series at `index` (counting from 0); `None` (no id) never repeats.
    pub fn check(&mut self, id: Option<&str>, index: usize) -> Result<(), RequestError> {
        use std::hash::BuildHasher;
        let Some(id) = id else {
            return Ok(());
        };
        match self.first_index.entry(self.hasher.hash_one(id)) {
            std::collections::hash_map::Entry::Occupied(first) => Err(reject(
                ErrorCode::InvalidRequest,
                format!(
                    "series[{index}].id `{}` repeats series[{}].id: each series needs its own id (answers, the forecast log and accuracy scores are keyed by it)",
                    excerpt(id),
                    first.get()
                ),
            )),
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(index);
                Ok(())
            }
        }
    }
}

/// Caller text as an error message quotes it: at most 64 characters, control characters escaped,
/// so a 2 MiB field or one with newlines cannot flood the answer or forge log lines.
pub(crate) fn excerpt(text: &str) -> String {
    let mut quoted: String = text.chars().take(64).flat_map(char::escape_debug).collect();
    if text.chars().nth(64).is_some() {
        quoted.push_str("...");
    }
    quoted
}

fn parse_series(i: usize, item: &Value, shape: &RequestShape) -> Result<SeriesInput, RequestError> {
    let at = format!("series[{i}]");
    let Value::Object(fields) = item else {
        return Err(reject(
            ErrorCode::InvalidRequest,
            format!(
                "{at} must be an object with `values`, got {}",
                kind_of(item)
            ),
        ));
    };
    reject_unknown_fields(fields, &["id", "values", "last_timestamp"], &at)?;
    let id = series_id(fields.get("id"), &at)?;
    let values = match fields.get("values") {
        None => {
            return Err(reject(
                ErrorCode::InvalidRequest,
                format!("{at} is missing `values`"),
            ))
        }
        Some(Value::Array(values)) => values,
        Some(other) => {
            return Err(reject(
                ErrorCode::InvalidRequest,
                format!("{at}.values must be an array, got {}", kind_of(other)),
            ))
        }
    };
    if values.len() < shape.window {
        return Err(reject(
            ErrorCode::WrongWindowLength,
            format!(
                "{at}.values has {} entries; the model needs at least {} (the most recent observations, oldest first)",
                values.len(),
                shape.window
            ),
        ));
    }
    if values.len() > MAX_HISTORY_WINDOWS * shape.window {
        return Err(reject(
            ErrorCode::WrongWindowLength,
            format!(
                "{at}.values has {} entries; send at most {} ({MAX_HISTORY_WINDOWS} windows of history)",
                values.len(),
                MAX_HISTORY_WINDOWS * shape.window
            ),
        ));
    }
    let flat = flatten_rows(values, &at, shape)?;
    let last_timestamp = last_timestamp(fields.get("last_timestamp"), &at, shape)?;
    Ok(SeriesInput {
        id,
        values: flat,
        last_timestamp,
    })
}

/// A series' optional `id`, at most [`MAX_ID_LEN`] characters.
fn series_id(id: Option<&Value>, at: &str) -> Result<Option<String>, RequestError> {
    Ok(match id {
        None | Some(Value::Null) => None,
        Some(Value::String(id)) if id.chars().count() <= MAX_ID_LEN => Some(id.clone()),
        Some(Value::String(_)) => {
            return Err(reject(
                ErrorCode::InvalidRequest,
                format!("{at}.id is longer than {MAX_ID_LEN} characters"),
            ))
        }
        Some(other) => {
            return Err(reject(
                ErrorCode::InvalidRequest,
                format!("{at}.id must be a string, got {}", kind_of(other)),
            ))
        }
    })
}

/// A series' `values` as one flat row-major vector: numbers for a one-feature model, rows of one
/// number per feature otherwise.
fn flatten_rows(
    values: &[Value],
    at: &str,
    shape: &RequestShape,
) -> Result<Vec<f64>, RequestError> {
    let features = shape.features.len();
    let mut flat = Vec::with_capacity(shape.window * features);
    for (t, entry) in values.iter().enumerate() {
        let at = format!("{at}.values[{t}]");
        if features == 1 {
            flat.push(number(entry, &at, &shape.features)?);
            continue;
        }
        let Value::Array(row) = entry else {
            return Err(reject(
                ErrorCode::WrongFeatureCount,
                format!(
                    "{at} must be a row of {features} numbers ({}), got {}",
                    shape.features.join(", "),
                    kind_of(entry)
                ),
            ));
        };
        if row.len() != features {
            return Err(reject(
                ErrorCode::WrongFeatureCount,
                format!(
                    "{at} has {} values; the model needs {features} features ({})",
                    row.len(),
                    shape.features.join(", ")
                ),
            ));
        }
        for (f, cell) in row.iter().enumerate() {
            flat.push(number(cell, &format!("{at}[{f}]"), &shape.features)?);
        }
    }
    Ok(flat)
}

/// A series' optional `last_timestamp`, which must leave room for the whole forecast after it.
fn last_timestamp(
    last_timestamp: Option<&Value>,
    at: &str,
    shape: &RequestShape,
) -> Result<Option<DateTime<Utc>>, RequestError> {
    Ok(match last_timestamp {
        None | Some(Value::Null) => None,
        Some(Value::String(text)) => {
            let last = parse_rfc3339(text).ok_or_else(|| {
                reject(
                    ErrorCode::InvalidTimestamp,
                    format!("{at}.last_timestamp `{}` is not an RFC 3339 timestamp (e.g. 2018-02-20T23:00:00Z)", excerpt(text)),
                )
            })?;
            shape.check_forecast_fits_after(last).map_err(|why| {
                reject(
                    ErrorCode::InvalidTimestamp,
                    format!("{at}.last_timestamp `{}`: {why}", excerpt(text)),
                )
            })?;
            Some(last)
        }
        Some(other) => {
            return Err(reject(
                ErrorCode::InvalidTimestamp,
                format!(
                    "{at}.last_timestamp must be an RFC 3339 string, got {}",
                    kind_of(other)
                ),
            ))
        }
    })
}

pub(crate) fn number(value: &Value, at: &str, features: &[String]) -> Result<f64, RequestError> {
    match value {
        Value::Number(n) => n
            .as_f64()
            .filter(|x| x.is_finite())
            .ok_or_else(|| reject(ErrorCode::NonFiniteValue, format!("{at} is not a finite number"))),
        Value::String(s) if is_non_finite_word(s) => Err(reject(
            ErrorCode::NonFiniteValue,
            format!("{at} is \"{s}\"; values must be finite numbers (fill gaps before forecasting)"),
        )),
        Value::Null => Err(reject(
            ErrorCode::NonFiniteValue,
            format!("{at} is null; values must be finite numbers (fill gaps before forecasting)"),
        )),
        Value::Array(_) if features.len() == 1 => Err(reject(
            ErrorCode::WrongFeatureCount,
            format!(
                "{at} must be a number: the model takes one feature ({}), so `values` is a flat list",
                features[0]
            ),
        )),
        other => Err(reject(
            ErrorCode::InvalidRequest,
            format!("{at} must be a number, got {}", kind_of(other)),
        )),
    }
}

pub(crate) fn reject_unknown_fields(
    fields: &Map<String, Value>,
    known: &[&str],
    at: &str,
) -> Result<(), RequestError> {
    match fields.keys().find(|k| !known.contains(&k.as_str())) {
        Some(unknown) => Err(reject(
            ErrorCode::InvalidRequest,
            format!(
                "{at} has unknown field `{}` (expected {})",
                truncate(unknown, 64),
                known
                    .iter()
                    .map(|k| format!("`{k}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        None => Ok(()),
    }
}

/// "a string", "an array", ...: for messages that say what a client sent instead.
pub(crate) fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn truncate(text: &str, max_chars: usize) -> String {
    match text.char_indices().nth(max_chars) {
        Some((cut, _)) => format!("{}...", &text[..cut]),
        None => text.to_string(),
    }
}

fn is_non_finite_word(s: &str) -> bool {
    matches!(
        s.trim().to_ascii_lowercase().as_str(),
        "nan" | "inf" | "+inf" | "-inf" | "infinity" | "+infinity" | "-infinity"
    )
}

fn contains_non_json_number(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("NaN") || text.contains("Infinity")
}

/// The answer to a forecast request.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ForecastResponse {
    pub model: ModelRef,
    pub forecasts: Vec<SeriesForecast>,
    /// Which calibration the intervals came from, when intervals were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationRef>,
}

/// Where a response's intervals came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CalibrationRef {
    /// `model.json`: the calibration the model shipped with.
    pub source: String,
    /// Scored forecasts the calibration rests on.
    pub forecasts: usize,
}

/// A prediction interval around one forecast: `lower[k] <= values[k] <= upper[k]`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq)]
pub struct Interval {
    pub level: f64,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SeriesForecast {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub values: Vec<f64>,
    /// One per value, when the series gave `last_timestamp`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timestamps: Option<Vec<String>>,
    /// One per level asked for, in the order asked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub intervals: Vec<Interval>,
    /// A quantile network's quantiles (one row per `output.quantiles` level): where its
    /// intervals come from. Not part of the answer.
    #[serde(skip)]
    pub quantiles: Vec<Vec<f64>>,
    /// The version that answered this forecast, when one request was answered by two (a canary
    /// challenger answers its share of series).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
}

impl ForecastResponse {
    /// Pairs each input with its forecast and stamps the steps at the model's frequency.
    pub fn new(metadata: &ModelMetadata, inputs: &[SeriesInput], outputs: Vec<Vec<f64>>) -> Self {
        let outputs = outputs
            .into_iter()
            .map(|values| SeriesOutput {
                values,
                quantiles: Vec::new(),
                crossed_at: None,
            })
            .collect();
        Self::from_outputs(metadata, inputs, outputs)
    }

    /// [`ForecastResponse::new`] from the model's outputs, a quantile network's quantiles kept.
    pub fn from_outputs(
        metadata: &ModelMetadata,
        inputs: &[SeriesInput],
        outputs: Vec<SeriesOutput>,
    ) -> Self {
        let forecasts = inputs
            .iter()
            .zip(outputs)
            .map(
                |(
                    input,
                    SeriesOutput {
                        values, quantiles, ..
                    },
                )| SeriesForecast {
                    id: input.id.clone(),
                    // `RequestShape::check_forecast_fits_after` accepted `last` only if every step
                    // fits; the checked sums keep a caller that skipped it from panicking.
                    timestamps: input
                        .last_timestamp
                        .map(|last| steps_after(last, metadata.frequency(), values.len())),
                    values,
                    intervals: Vec::new(),
                    quantiles,
                    model_version: None,
                },
            )
            .collect();
        ForecastResponse {
            model: ModelRef {
                name: metadata.name.clone(),
                version: metadata.version.clone(),
            },
            forecasts,
            calibration: None,
        }
    }

    /// Puts around every forecast of a quantile network its intervals at `levels` (checked with
    /// [`check_levels_in_quantiles`]): level L spans the quantiles (1 - L) / 2 and (1 + L) / 2.
    pub fn attach_quantile_intervals(&mut self, output: &OutputSpec, levels: &[f64]) {
        if levels.is_empty() {
            return;
        }
        let quantiles = output.quantiles.as_deref().unwrap_or_default();
        // Each interval carries the level its two quantiles bound (0.1 and 0.9: 0.8), not the
        // request's float, as calibrated intervals carry their calibrated level.
        let pairs: Vec<(f64, usize, usize)> = levels
            .iter()
            .filter_map(|&level| {
                let (lo, hi) = quantile_pair(output, level)?;
                let bounded = ((quantiles[hi] - quantiles[lo]) * 1e9).round() / 1e9;
                Some((bounded, lo, hi))
            })
            .collect();
        for forecast in &mut self.forecasts {
            forecast.intervals = pairs
                .iter()
                .filter(|(_, lo, hi)| {
                    *lo < forecast.quantiles.len() && *hi < forecast.quantiles.len()
                })
                .map(|&(level, lo, hi)| Interval {
                    level,
                    lower: forecast.quantiles[lo].clone(),
                    upper: forecast.quantiles[hi].clone(),
                })
                .collect();
        }
        self.calibration = Some(CalibrationRef {
            source: "quantiles".into(),
            forecasts: 0,
        });
    }

    /// Puts around every forecast its intervals at `levels` (checked with
    /// [`check_levels_calibrated`]), and names the calibration they came from.
    pub fn attach_intervals(&mut self, calibration: &Calibration, source: &str, levels: &[f64]) {
        if levels.is_empty() {
            return;
        }
        // Each interval carries the calibrated level, not the request's float: a level sent as
        // 0.8000000001 is served, logged and scored as 0.8.
        let radii: Vec<(f64, &[f64])> = levels
            .iter()
            .filter_map(|&level| {
                let calibrated = calibration.level(level)?;
                Some((calibrated.level, calibrated.radius.as_slice()))
            })
            .collect();
        for forecast in &mut self.forecasts {
            forecast.intervals = radii
                .iter()
                .map(|&(level, radius)| Interval {
                    level,
                    lower: forecast
                        .values
                        .iter()
                        .zip(radius)
                        .map(|(v, r)| v - r)
                        .collect(),
                    upper: forecast
                        .values
                        .iter()
                        .zip(radius)
                        .map(|(v, r)| v + r)
                        .collect(),
                })
                .collect();
        }
        self.calibration = Some(CalibrationRef {
            source: source.to_owned(),
            forecasts: calibration.forecasts,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_timestamp_lenient;

    fn shape(window: usize, features: &[&str]) -> RequestShape {
        RequestShape {
            window,
            features: features.iter().map(|f| f.to_string()).collect(),
            max_series: 4,
            forecast_span: Some(TimeDelta::hours(24)),
        }
    }

    fn parse(body: &str, shape: &RequestShape) -> Result<Vec<SeriesInput>, RequestError> {
        parse_forecast_request(body.as_bytes(), shape)
    }

    #[test]
    fn a_univariate_series_parses_with_id_and_timestamp() {
        let got = parse(
            r#"{"series":[{"id":"t1","values":[1,2.5,3],"last_timestamp":"2018-02-20T23:00:00+01:00"}]}"#,
            &shape(3, &["OT"]),
        )
        .unwrap();
        assert_eq!(got[0].id.as_deref(), Some("t1"));
        assert_eq!(got[0].values, vec![1.0, 2.5, 3.0]);
        assert_eq!(got[0].last_timestamp, parse_rfc3339("2018-02-20T22:00:00Z"));
    }

    #[test]
    fn a_last_timestamp_whose_forecast_would_pass_year_9999_is_refused() {
        // 24 hourly steps after 9999-12-30T23:00 end at 9999-12-31T23:00, the last whole hour
        // an RFC 3339 timestamp can write; one second later they would not.
        let fits = r#"{"series":[{"values":[1,2,3],"last_timestamp":"9999-12-30T23:00:00Z"}]}"#;
        assert!(parse(fits, &shape(3, &["OT"])).is_ok());

        let overflows =
            r#"{"series":[{"values":[1,2,3],"last_timestamp":"9999-12-31T00:00:01Z"}]}"#;
        let err = parse(overflows, &shape(3, &["OT"])).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidTimestamp);
        assert!(
            err.message.starts_with("series[0].last_timestamp"),
            "{}",
            err.message
        );
        assert!(
            err.message.contains("9999-12-31T23:59:59Z"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_model_whose_forecast_span_fits_no_date_refuses_every_timestamp_but_still_forecasts() {
        let shape = RequestShape {
            forecast_span: None,
            ..shape(3, &["OT"])
        };
        let stamped = r#"{"series":[{"values":[1,2,3],"last_timestamp":"2018-02-20T23:00:00Z"}]}"#;
        assert_eq!(
            parse(stamped, &shape).unwrap_err().code,
            ErrorCode::InvalidTimestamp
        );
        assert!(parse(r#"{"series":[{"values":[1,2,3]}]}"#, &shape).is_ok());
    }

    #[test]
    fn multivariate_rows_are_flattened_row_major() {
        let got = parse(
            r#"{"series":[{"values":[[1,2],[3,4]]}]}"#,
            &shape(2, &["a", "b"]),
        )
        .unwrap();
        assert_eq!(got[0].values, vec![1.0, 2.0, 3.0, 4.0]);
    }

    #[test]
    fn the_wrong_window_length_names_the_series_and_both_lengths() {
        let err = parse(
            r#"{"series":[{"values":[1,2,3]},{"values":[1,2]}]}"#,
            &shape(3, &["OT"]),
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::WrongWindowLength);
        assert!(
            err.message.contains("series[1].values has 2 entries"),
            "{}",
            err.message
        );
        assert!(err.message.contains("at least 3"));
    }

    #[test]
    fn nan_in_any_spelling_is_refused_with_its_position() {
        let err = parse(r#"{"series":[{"values":[1,"NaN",3]}]}"#, &shape(3, &["OT"])).unwrap_err();
        assert_eq!(err.code, ErrorCode::NonFiniteValue);
        assert!(err.message.contains("series[0].values[1]"));
        let err = parse(r#"{"series":[{"values":[1,NaN,3]}]}"#, &shape(3, &["OT"])).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
        assert!(err
            .message
            .contains("NaN and Infinity are not JSON numbers"));
    }

    #[test]
    fn a_row_with_the_wrong_number_of_features_is_named() {
        let err = parse(
            r#"{"series":[{"values":[[1,2],[3]]}]}"#,
            &shape(2, &["a", "b"]),
        )
        .unwrap_err();
        assert_eq!(err.code, ErrorCode::WrongFeatureCount);
        assert!(
            err.message.contains("series[0].values[1] has 1 values"),
            "{}",
            err.message
        );
    }

    #[test]
    fn unknown_fields_are_refused_at_every_level() {
        let err = parse(r#"{"series":[],"extra":1}"#, &shape(3, &["OT"])).unwrap_err();
        assert!(err.message.contains("`extra`"));
        let err = parse(
            r#"{"series":[{"values":[1,2,3],"valuez":[]}]}"#,
            &shape(3, &["OT"]),
        )
        .unwrap_err();
        assert!(err.message.contains("series[0] has unknown field `valuez`"));
    }

    #[test]
    fn too_many_series_is_refused_before_parsing_them() {
        let body = format!(r#"{{"series":[{}]}}"#, [r#"{"values":"x"}"#; 5].join(","));
        assert_eq!(
            parse(&body, &shape(3, &["OT"])).unwrap_err().code,
            ErrorCode::TooManySeries
        );
    }

    #[test]
    fn timestamps_follow_the_model_frequency() {
        let metadata: ModelMetadata = serde_json::from_value(serde_json::json!({
            "format_version": 1, "name": "m", "version": "1", "created_at": "2026-11-27T00:00:00Z",
            "torch_version": "2.13.0", "model_sha256": "0".repeat(64),
            "input": {"window": 1, "features": ["OT"], "target": "OT", "frequency": "1h"},
            "output": {"horizon": 2}, "preprocessing": [],
            "training_stats": {"OT": {"mean": 0.0, "std": 1.0, "min": 0.0, "max": 1.0, "quantile_edges": [0.0, 1.0]}}
        }))
        .unwrap();
        let input = SeriesInput {
            id: None,
            values: vec![1.0],
            last_timestamp: parse_rfc3339("2018-02-20T23:00:00Z"),
        };
        let response = ForecastResponse::new(&metadata, &[input], vec![vec![1.0, 2.0]]);
        assert_eq!(
            response.forecasts[0].timestamps,
            Some(vec![
                "2018-02-21T00:00:00Z".to_string(),
                "2018-02-21T01:00:00Z".to_string()
            ])
        );
    }

    #[test]
    fn ett_style_csv_timestamps_are_read_as_utc() {
        assert_eq!(
            parse_timestamp_lenient("2018-06-26 19:00:00"),
            parse_rfc3339("2018-06-26T19:00:00Z")
        );
    }
}
