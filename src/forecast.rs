//! Forecast requests and answers, independent of any transport.
//!
//! A forecast body is streamed through hand-written serde visitors ("slots") straight into
//! typed values, rather than with `#[derive(Deserialize)]` or through a `serde_json::Value`:
//! derived messages ("data did not match any variant") do not say which series or which value is
//! wrong, and a slot's do (`series[3].values[17] is null`); a `Value` tree costs about 16 times
//! the body, where each value read here costs its 8 bytes. Nothing here trusts the client:
//! shapes, finiteness and sizes are checked as they are read, before libtorch sees a number.

use chrono::{DateTime, NaiveDate, SecondsFormat, TimeDelta, Utc};
use std::cell::RefCell;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
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

#[cfg(test)]
impl RequestShape {
    /// A shape for parser tests: at most 4 series, a 24-hour forecast.
    pub(crate) fn for_tests(window: usize, features: &[&str]) -> Self {
        RequestShape {
            window,
            features: features.iter().map(|f| f.to_string()).collect(),
            max_series: 4,
            forecast_span: Some(TimeDelta::hours(24)),
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
    parse_body(body, shape, false).map(|request| request.series)
}

/// A forecast request: its series, and the interval levels it asks for (none when empty).
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastRequest {
    pub series: Vec<SeriesInput>,
    pub intervals: Vec<f64>,
}

/// Most interval levels one request may ask for.
pub const MAX_INTERVAL_LEVELS: usize = 8;

/// The fields of a forecast body, and of each of its series: what the parser accepts and the
/// OpenAPI document describes.
const REQUEST_FIELDS: [&str; 2] = ["series", "intervals"];
const SERIES_FIELDS: [&str; 3] = ["id", "values", "last_timestamp"];

/// The wire shape of a `POST /v1/forecast` body for the OpenAPI document, from the constants the
/// parser checks against (a model's window and features are known only at run time).
impl utoipa::PartialSchema for ForecastRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let [id, values, last_timestamp] = SERIES_FIELDS;
        let [series, intervals] = REQUEST_FIELDS;
        let number = serde_json::json!({"type": "number"});
        let schema = serde_json::json!({
            "type": "object",
            "required": [series],
            "additionalProperties": false,
            "properties": {
                series: {
                    "type": "array", "minItems": 1,
                    "description": "The series to forecast (at most the server's MAX_SERIES).",
                    "items": {
                        "type": "object", "required": [values], "additionalProperties": false,
                        "properties": {
                            id: {"type": ["string", "null"], "maxLength": MAX_ID_LEN,
                                 "description": "Names the series in the forecast log and scores; unique in a request."},
                            values: {
                                "type": "array",
                                "description": format!("The history, oldest first: numbers for a one-feature model, rows of one number per feature otherwise; at least the model's window, at most {MAX_HISTORY_WINDOWS} windows."),
                                "items": {"anyOf": [number, {"type": "array", "items": number}]}
                            },
                            last_timestamp: {"type": ["string", "null"], "format": "date-time",
                                             "description": "RFC 3339 time of the last value: stamps the forecast steps."}
                        }
                    }
                },
                intervals: {
                    "type": ["array", "null"], "maxItems": MAX_INTERVAL_LEVELS,
                    "items": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
                    "description": "Prediction interval levels, such as [0.8, 0.95]."
                }
            }
        });
        serde_json::from_value(schema).expect("a valid schema")
    }
}

impl utoipa::ToSchema for ForecastRequest {}

/// Parses a `POST /v1/forecast` body: [`parse_forecast_request`] plus `"intervals": [0.8, 0.95]`.
pub fn parse_forecast_body(
    body: &[u8],
    shape: &RequestShape,
) -> Result<ForecastRequest, RequestError> {
    parse_body(body, shape, true)
}

/// Checks interval levels however they arrived (request body, CLI flag, batch event): each in
/// (0, 1), no repeats, at most [`MAX_INTERVAL_LEVELS`]. Errors name `intervals[i]`.
pub fn check_interval_levels(levels: &[f64]) -> Result<(), RequestError> {
    if levels.len() > MAX_INTERVAL_LEVELS {
        return Err(too_many_levels(levels.len()));
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

fn too_many_levels(count: usize) -> RequestError {
    reject(
        ErrorCode::InvalidInterval,
        format!("`intervals` has {count} levels; at most {MAX_INTERVAL_LEVELS} are accepted"),
    )
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

/// Streams a body through the slots below straight into [`ForecastRequest`]: values land in
/// their `Vec<f64>` as they are read, and a refusal stops the read where it is.
fn parse_body(
    body: &[u8],
    shape: &RequestShape,
    accept_intervals: bool,
) -> Result<ForecastRequest, RequestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(reject(
            ErrorCode::EmptyRequest,
            "request body is empty; expected {\"series\": [{\"values\": [...]}]}",
        ));
    }
    let rejection = Rejection::default();
    let mut reader = serde_json::Deserializer::from_slice(body);
    let slot = RequestSlot {
        shape,
        accept_intervals,
    };
    let parsed = Streamed::new(slot, &rejection)
        .deserialize(&mut reader)
        .and_then(|request| reader.end().map(|()| request));
    match (parsed, rejection.0.into_inner()) {
        (_, Some(refused)) => Err(refused),
        (Ok(request), None) => Ok(request),
        (Err(syntax), None) => {
            let hint = if contains_non_json_number(body) {
                " (NaN and Infinity are not JSON numbers; send finite values)"
            } else {
                ""
            };
            Err(reject(
                ErrorCode::InvalidJson,
                format!("request body is not valid JSON: {syntax}{hint}"),
            ))
        }
    }
}

/// The first refusal met while streaming a body. serde_json's error cannot carry a
/// [`RequestError`], so a slot that refuses a value leaves it here and stops the read with a
/// placeholder, which [`parse_body`] swaps back.
#[derive(Default)]
struct Rejection(RefCell<Option<RequestError>>);

impl Rejection {
    fn stop<E: de::Error>(&self, refused: RequestError) -> E {
        self.0.borrow_mut().get_or_insert(refused);
        E::custom("request refused")
    }

    fn settle<T, E: de::Error>(&self, outcome: Result<T, RequestError>) -> Result<T, E> {
        outcome.map_err(|refused| self.stop(refused))
    }
}

/// One place in a forecast body and what it accepts. Any JSON kind a slot does not take is
/// refused by [`Slot::wrong_kind`], which names the place and what was sent instead; strings are
/// borrowed from the reader, and positions are formatted only for an error.
trait Slot: Sized {
    type Out;

    fn wrong_kind(&self, kind: &'static str) -> RequestError;

    fn null(self) -> Result<Self::Out, RequestError> {
        Err(self.wrong_kind("null"))
    }

    fn number(self, _: f64) -> Result<Self::Out, RequestError> {
        Err(self.wrong_kind("a number"))
    }

    fn string(self, _: &str) -> Result<Self::Out, RequestError> {
        Err(self.wrong_kind("a string"))
    }

    fn array<'de, A: SeqAccess<'de>>(self, _: A, at: &Rejection) -> Result<Self::Out, A::Error> {
        Err(at.stop(self.wrong_kind("an array")))
    }

    fn object<'de, M: MapAccess<'de>>(self, _: M, at: &Rejection) -> Result<Self::Out, M::Error> {
        Err(at.stop(self.wrong_kind("an object")))
    }
}

/// A [`Slot`] as serde reads it.
struct Streamed<'r, S> {
    slot: S,
    rejection: &'r Rejection,
}

impl<'r, S: Slot> Streamed<'r, S> {
    fn new(slot: S, rejection: &'r Rejection) -> Self {
        Streamed { slot, rejection }
    }
}

impl<'de, S: Slot> DeserializeSeed<'de> for Streamed<'_, S> {
    type Value = S::Out;

    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<S::Out, D::Error> {
        reader.deserialize_any(self)
    }
}

impl<'de, S: Slot> Visitor<'de> for Streamed<'_, S> {
    type Value = S::Out;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("a forecast request")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<S::Out, E> {
        Err(self.rejection.stop(self.slot.wrong_kind("a boolean")))
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<S::Out, E> {
        self.rejection.settle(self.slot.number(n as f64))
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<S::Out, E> {
        self.rejection.settle(self.slot.number(n as f64))
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<S::Out, E> {
        self.rejection.settle(self.slot.number(n))
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<S::Out, E> {
        self.rejection.settle(self.slot.string(text))
    }

    fn visit_unit<E: de::Error>(self) -> Result<S::Out, E> {
        self.rejection.settle(self.slot.null())
    }

    fn visit_none<E: de::Error>(self) -> Result<S::Out, E> {
        self.rejection.settle(self.slot.null())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<S::Out, A::Error> {
        self.slot.array(seq, self.rejection)
    }

    fn visit_map<M: MapAccess<'de>>(self, map: M) -> Result<S::Out, M::Error> {
        self.slot.object(map, self.rejection)
    }
}

/// Reads the rest of an array without keeping it, for a message that says how long it was.
fn count_rest<'de, A: SeqAccess<'de>>(mut seq: A, read: usize) -> Result<usize, A::Error> {
    let mut total = read;
    while seq.next_element::<de::IgnoredAny>()?.is_some() {
        total += 1;
    }
    Ok(total)
}

/// An object's key, one of `known`; anything else is refused as an unknown field.
struct FieldSlot<'a> {
    known: &'static [&'static str],
    at: &'a str,
}

impl Slot for FieldSlot<'_> {
    type Out = &'static str;

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::InvalidRequest,
            format!("{} has a key that is {kind}", self.at),
        )
    }

    fn string(self, name: &str) -> Result<&'static str, RequestError> {
        self.known
            .iter()
            .find(|known| **known == name)
            .copied()
            .ok_or_else(|| unknown_field(name, self.known, self.at))
    }
}

/// Reads an object's fields in any order, refusing unknown and repeated ones: a repeated field
/// would otherwise be read twice, with the last one silently winning.
fn read_fields<'de, M: MapAccess<'de>>(
    map: &mut M,
    known: &'static [&'static str],
    at: &str,
    rejection: &Rejection,
    mut read_value: impl FnMut(&mut M, &'static str) -> Result<(), M::Error>,
) -> Result<(), M::Error> {
    let mut seen = Vec::with_capacity(known.len());
    while let Some(field) = map.next_key_seed(Streamed::new(FieldSlot { known, at }, rejection))? {
        if seen.contains(&field) {
            return Err(rejection.stop(reject(
                ErrorCode::InvalidRequest,
                format!("{at} has `{field}` twice"),
            )));
        }
        seen.push(field);
        read_value(map, field)?;
    }
    Ok(())
}

/// The body: `{"series": [...], "intervals": [...]}`.
struct RequestSlot<'a> {
    shape: &'a RequestShape,
    accept_intervals: bool,
}

impl Slot for RequestSlot<'_> {
    type Out = ForecastRequest;

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::InvalidRequest,
            format!("request body must be a JSON object with a `series` array, got {kind}"),
        )
    }

    fn object<'de, M: MapAccess<'de>>(
        self,
        mut map: M,
        rejection: &Rejection,
    ) -> Result<ForecastRequest, M::Error> {
        let known: &'static [&'static str] = if self.accept_intervals {
            &REQUEST_FIELDS
        } else {
            &REQUEST_FIELDS[..1]
        };
        let mut series = None;
        let mut intervals = Vec::new();
        read_fields(&mut map, known, "request body", rejection, |map, field| {
            if field == "series" {
                series = Some(map.next_value_seed(Streamed::new(
                    SeriesListSlot { shape: self.shape },
                    rejection,
                ))?);
            } else {
                intervals = map.next_value_seed(Streamed::new(IntervalsSlot, rejection))?;
            }
            Ok(())
        })?;
        let series = series.ok_or_else(|| {
            rejection.stop(reject(ErrorCode::InvalidRequest, "missing field `series`"))
        })?;
        Ok(ForecastRequest { series, intervals })
    }
}

/// `series`: at most `max_series` entries with distinct ids.
struct SeriesListSlot<'a> {
    shape: &'a RequestShape,
}

impl Slot for SeriesListSlot<'_> {
    type Out = Vec<SeriesInput>;

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::InvalidRequest,
            format!("`series` must be an array, got {kind}"),
        )
    }

    fn array<'de, A: SeqAccess<'de>>(
        self,
        mut seq: A,
        rejection: &Rejection,
    ) -> Result<Vec<SeriesInput>, A::Error> {
        let max_series = self.shape.max_series;
        let mut series = Vec::new();
        let mut ids = UniqueIds::default();
        loop {
            let index = series.len();
            if index == max_series {
                let total = count_rest(seq, index)?;
                if total > max_series {
                    return Err(rejection.stop(reject(
                        ErrorCode::TooManySeries,
                        format!("`series` has {total} entries; at most {max_series} are accepted per request"),
                    )));
                }
                break;
            }
            let slot = SeriesSlot {
                index,
                shape: self.shape,
            };
            let Some(input) = seq.next_element_seed(Streamed::new(slot, rejection))? else {
                break;
            };
            rejection.settle(ids.check(input.id.as_deref(), index))?;
            series.push(input);
        }
        if series.is_empty() {
            return Err(rejection.stop(reject(
                ErrorCode::EmptyRequest,
                "`series` is empty; send at least one series",
            )));
        }
        Ok(series)
    }
}

/// `series[i]`: `{"id", "values", "last_timestamp"}`.
struct SeriesSlot<'a> {
    index: usize,
    shape: &'a RequestShape,
}

impl Slot for SeriesSlot<'_> {
    type Out = SeriesInput;

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::InvalidRequest,
            format!(
                "series[{}] must be an object with `values`, got {kind}",
                self.index
            ),
        )
    }

    fn object<'de, M: MapAccess<'de>>(
        self,
        mut map: M,
        rejection: &Rejection,
    ) -> Result<SeriesInput, M::Error> {
        let at = format!("series[{}]", self.index);
        let at = at.as_str();
        let shape = self.shape;
        let (mut id, mut values, mut last_timestamp) = (None, None, None);
        let known = &SERIES_FIELDS;
        read_fields(&mut map, known, at, rejection, |map, field| {
            match field {
                "id" => id = map.next_value_seed(Streamed::new(IdSlot { at }, rejection))?,
                "values" => {
                    let slot = ValuesSlot { at, shape };
                    values = Some(map.next_value_seed(Streamed::new(slot, rejection))?);
                }
                _ => {
                    let slot = TimestampSlot { at, shape };
                    last_timestamp = map.next_value_seed(Streamed::new(slot, rejection))?;
                }
            }
            Ok(())
        })?;
        let values = values.ok_or_else(|| {
            rejection.stop(reject(
                ErrorCode::InvalidRequest,
                format!("{at} is missing `values`"),
            ))
        })?;
        Ok(SeriesInput {
            id,
            values,
            last_timestamp,
        })
    }
}

/// `series[i].id`: optional, at most [`MAX_ID_LEN`] characters.
struct IdSlot<'a> {
    at: &'a str,
}

impl Slot for IdSlot<'_> {
    type Out = Option<String>;

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::InvalidRequest,
            format!("{}.id must be a string, got {kind}", self.at),
        )
    }

    fn null(self) -> Result<Option<String>, RequestError> {
        Ok(None)
    }

    fn string(self, id: &str) -> Result<Option<String>, RequestError> {
        if id.chars().nth(MAX_ID_LEN).is_some() {
            return Err(reject(
                ErrorCode::InvalidRequest,
                format!("{}.id is longer than {MAX_ID_LEN} characters", self.at),
            ));
        }
        Ok(Some(id.to_owned()))
    }
}

/// `series[i].last_timestamp`: optional, RFC 3339, with room for the whole forecast after it.
struct TimestampSlot<'a> {
    at: &'a str,
    shape: &'a RequestShape,
}

impl Slot for TimestampSlot<'_> {
    type Out = Option<DateTime<Utc>>;

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::InvalidTimestamp,
            format!(
                "{}.last_timestamp must be an RFC 3339 string, got {kind}",
                self.at
            ),
        )
    }

    fn null(self) -> Result<Option<DateTime<Utc>>, RequestError> {
        Ok(None)
    }

    fn string(self, text: &str) -> Result<Option<DateTime<Utc>>, RequestError> {
        let at = self.at;
        let last = parse_rfc3339(text).ok_or_else(|| {
            reject(
                ErrorCode::InvalidTimestamp,
                format!("{at}.last_timestamp `{}` is not an RFC 3339 timestamp (e.g. 2018-02-20T23:00:00Z)", excerpt(text)),
            )
        })?;
        self.shape.check_forecast_fits_after(last).map_err(|why| {
            reject(
                ErrorCode::InvalidTimestamp,
                format!("{at}.last_timestamp `{}`: {why}", excerpt(text)),
            )
        })?;
        Ok(Some(last))
    }
}

/// `series[i].values`, flattened row-major as it is read: numbers for a one-feature model, rows
/// of one number per feature otherwise; between `window` and [`MAX_HISTORY_WINDOWS`] windows.
struct ValuesSlot<'a> {
    at: &'a str,
    shape: &'a RequestShape,
}

impl Slot for ValuesSlot<'_> {
    type Out = Vec<f64>;

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::InvalidRequest,
            format!("{}.values must be an array, got {kind}", self.at),
        )
    }

    fn array<'de, A: SeqAccess<'de>>(
        self,
        mut seq: A,
        rejection: &Rejection,
    ) -> Result<Vec<f64>, A::Error> {
        let (at, shape) = (self.at, self.shape);
        let most_rows = MAX_HISTORY_WINDOWS * shape.window;
        let mut flat = Vec::with_capacity(shape.window * shape.features.len());
        let mut rows = 0;
        loop {
            if rows == most_rows {
                let total = count_rest(seq, rows)?;
                if total > most_rows {
                    return Err(rejection.stop(reject(
                        ErrorCode::WrongWindowLength,
                        format!("{at}.values has {total} entries; send at most {most_rows} ({MAX_HISTORY_WINDOWS} windows of history)"),
                    )));
                }
                break;
            }
            let read = if shape.features.len() == 1 {
                let cell = CellSlot::new(at, rows, None, &shape.features);
                seq.next_element_seed(Streamed::new(cell, rejection))?
                    .map(|value| flat.push(value))
            } else {
                let row = RowSlot {
                    at,
                    row: rows,
                    features: &shape.features,
                    flat: &mut flat,
                };
                seq.next_element_seed(Streamed::new(row, rejection))?
            };
            if read.is_none() {
                break;
            }
            rows += 1;
        }
        if rows < shape.window {
            return Err(rejection.stop(reject(
                ErrorCode::WrongWindowLength,
                format!(
                    "{at}.values has {rows} entries; the model needs at least {} (the most recent observations, oldest first)",
                    shape.window
                ),
            )));
        }
        Ok(flat)
    }
}

/// `series[i].values[t]` of a multi-feature model: one number per feature, appended to `flat`.
struct RowSlot<'a> {
    at: &'a str,
    row: usize,
    features: &'a [String],
    flat: &'a mut Vec<f64>,
}

impl RowSlot<'_> {
    fn wrong_width(&self, width: usize) -> RequestError {
        reject(
            ErrorCode::WrongFeatureCount,
            format!(
                "{}.values[{}] has {width} values; the model needs {} features ({})",
                self.at,
                self.row,
                self.features.len(),
                self.features.join(", ")
            ),
        )
    }
}

impl Slot for RowSlot<'_> {
    type Out = ();

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::WrongFeatureCount,
            format!(
                "{}.values[{}] must be a row of {} numbers ({}), got {kind}",
                self.at,
                self.row,
                self.features.len(),
                self.features.join(", ")
            ),
        )
    }

    fn array<'de, A: SeqAccess<'de>>(
        self,
        mut seq: A,
        rejection: &Rejection,
    ) -> Result<(), A::Error> {
        let width = self.features.len();
        for feature in 0..width {
            let cell = CellSlot::new(self.at, self.row, Some(feature), self.features);
            match seq.next_element_seed(Streamed::new(cell, rejection))? {
                Some(value) => self.flat.push(value),
                None => return Err(rejection.stop(self.wrong_width(feature))),
            }
        }
        let total = count_rest(seq, width)?;
        if total > width {
            return Err(rejection.stop(self.wrong_width(total)));
        }
        Ok(())
    }
}

/// One number of `values`: finite, and named by its position when it is not.
struct CellSlot<'a> {
    at: &'a str,
    row: usize,
    feature: Option<usize>,
    features: &'a [String],
}

impl<'a> CellSlot<'a> {
    fn new(at: &'a str, row: usize, feature: Option<usize>, features: &'a [String]) -> Self {
        CellSlot {
            at,
            row,
            feature,
            features,
        }
    }

    fn position(&self) -> String {
        match self.feature {
            Some(feature) => format!("{}.values[{}][{feature}]", self.at, self.row),
            None => format!("{}.values[{}]", self.at, self.row),
        }
    }
}

impl Slot for CellSlot<'_> {
    type Out = f64;

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::InvalidRequest,
            format!("{} must be a number, got {kind}", self.position()),
        )
    }

    fn number(self, value: f64) -> Result<f64, RequestError> {
        if value.is_finite() {
            return Ok(value);
        }
        Err(reject(
            ErrorCode::NonFiniteValue,
            format!("{} is not a finite number", self.position()),
        ))
    }

    fn string(self, text: &str) -> Result<f64, RequestError> {
        if !is_non_finite_word(text) {
            return Err(self.wrong_kind("a string"));
        }
        Err(reject(
            ErrorCode::NonFiniteValue,
            format!(
                "{} is \"{}\"; values must be finite numbers (fill gaps before forecasting)",
                self.position(),
                excerpt(text)
            ),
        ))
    }

    fn null(self) -> Result<f64, RequestError> {
        Err(reject(
            ErrorCode::NonFiniteValue,
            format!(
                "{} is null; values must be finite numbers (fill gaps before forecasting)",
                self.position()
            ),
        ))
    }

    fn array<'de, A: SeqAccess<'de>>(self, _: A, rejection: &Rejection) -> Result<f64, A::Error> {
        let refused = match self.features {
            [only] => reject(
                ErrorCode::WrongFeatureCount,
                format!(
                    "{} must be a number: the model takes one feature ({only}), so `values` is a flat list",
                    self.position()
                ),
            ),
            _ => self.wrong_kind("an array"),
        };
        Err(rejection.stop(refused))
    }
}

/// `intervals`: optional, levels in (0, 1), checked by [`check_interval_levels`].
struct IntervalsSlot;

impl Slot for IntervalsSlot {
    type Out = Vec<f64>;

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::InvalidInterval,
            format!(
                "`intervals` must be an array of levels in (0, 1) such as [0.8, 0.95], got {kind}"
            ),
        )
    }

    fn null(self) -> Result<Vec<f64>, RequestError> {
        Ok(Vec::new())
    }

    fn array<'de, A: SeqAccess<'de>>(
        self,
        mut seq: A,
        rejection: &Rejection,
    ) -> Result<Vec<f64>, A::Error> {
        let mut levels = Vec::new();
        while levels.len() <= MAX_INTERVAL_LEVELS {
            let slot = LevelSlot {
                index: levels.len(),
            };
            match seq.next_element_seed(Streamed::new(slot, rejection))? {
                Some(level) => levels.push(level),
                None => break,
            }
        }
        if levels.len() > MAX_INTERVAL_LEVELS {
            // The count is all the message needs; the rest is read, not kept.
            let total = count_rest(seq, levels.len())?;
            return Err(rejection.stop(too_many_levels(total)));
        }
        rejection.settle(check_interval_levels(&levels))?;
        Ok(levels)
    }
}

/// `intervals[i]`.
struct LevelSlot {
    index: usize,
}

impl Slot for LevelSlot {
    type Out = f64;

    fn wrong_kind(&self, kind: &'static str) -> RequestError {
        reject(
            ErrorCode::InvalidInterval,
            format!(
                "`intervals[{}]` must be a number in (0, 1), got {kind}",
                self.index
            ),
        )
    }

    fn number(self, level: f64) -> Result<f64, RequestError> {
        Ok(level)
    }
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
        Some(unknown) => Err(unknown_field(unknown, known, at)),
        None => Ok(()),
    }
}

fn unknown_field(name: &str, known: &[&str], at: &str) -> RequestError {
    reject(
        ErrorCode::InvalidRequest,
        format!(
            "{at} has unknown field `{}` (expected {})",
            excerpt(name),
            known
                .iter()
                .map(|k| format!("`{k}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )
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
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ForecastResponse {
    pub model: ModelRef,
    pub forecasts: Vec<SeriesForecast>,
    /// Which calibration the intervals came from, when intervals were asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub calibration: Option<CalibrationRef>,
}

/// Where a response's intervals came from.
#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct CalibrationRef {
    /// `model.json`: the calibration the model shipped with.
    pub source: String,
    /// Scored forecasts the calibration rests on.
    pub forecasts: usize,
}

/// A prediction interval around one forecast: `lower[k] <= values[k] <= upper[k]`.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, utoipa::ToSchema)]
pub struct Interval {
    pub level: f64,
    pub lower: Vec<f64>,
    pub upper: Vec<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
pub struct ModelRef {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, Serialize, PartialEq, utoipa::ToSchema)]
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
        RequestShape::for_tests(window, features)
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
        let err = parse(
            r#"{"series":[{"values":[1,2,3]}],"extra":1}"#,
            &shape(3, &["OT"]),
        )
        .unwrap_err();
        assert!(err.message.contains("`extra`"));
        let err = parse(
            r#"{"series":[{"values":[1,2,3],"valuez":[]}]}"#,
            &shape(3, &["OT"]),
        )
        .unwrap_err();
        assert!(err.message.contains("series[0] has unknown field `valuez`"));
    }

    #[test]
    fn too_many_series_is_refused_with_their_count_without_parsing_the_extra_ones() {
        let mut entries = vec![r#"{"values":[1,2,3]}"#; 4];
        entries.extend([r#"{"values":"not parsed"}"#; 3]);
        let body = format!(r#"{{"series":[{}]}}"#, entries.join(","));
        let err = parse(&body, &shape(3, &["OT"])).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooManySeries);
        assert!(
            err.message.contains("`series` has 7 entries; at most 4"),
            "{}",
            err.message
        );
    }

    #[test]
    fn a_field_given_twice_is_refused_rather_than_the_last_one_winning() {
        let err = parse(
            r#"{"series":[{"values":[1,2,3],"id":"a","id":"b"}]}"#,
            &shape(3, &["OT"]),
        )
        .unwrap_err();
        assert_eq!(err.message, "series[0] has `id` twice");
        let body = r#"{"series":[{"values":[1,2,3]}],"series":[{"values":[4,5,6]}]}"#;
        assert_eq!(
            parse(body, &shape(3, &["OT"])).unwrap_err().message,
            "request body has `series` twice"
        );
    }

    #[test]
    fn every_wrong_kind_is_named_with_its_place() {
        let univariate = shape(3, &["OT"]);
        let cases = [
            (
                r#"[1]"#,
                "request body must be a JSON object with a `series` array, got an array",
            ),
            (
                r#"{"series":{}}"#,
                "`series` must be an array, got an object",
            ),
            (
                r#"{"series":[7]}"#,
                "series[0] must be an object with `values`, got a number",
            ),
            (
                r#"{"series":[{"values":null}]}"#,
                "series[0].values must be an array, got null",
            ),
            (
                r#"{"series":[{"values":[1,true,3]}]}"#,
                "series[0].values[1] must be a number, got a boolean",
            ),
            (
                r#"{"series":[{"values":[1,2,3],"id":5}]}"#,
                "series[0].id must be a string, got a number",
            ),
            (
                r#"{"series":[{"id":"x"}]}"#,
                "series[0] is missing `values`",
            ),
            (r#"{"intervals":[0.8]}"#, "missing field `series`"),
            (
                r#"{"series":[]}"#,
                "`series` is empty; send at least one series",
            ),
        ];
        for (body, message) in cases {
            let err = parse_forecast_body(body.as_bytes(), &univariate).unwrap_err();
            assert_eq!(err.message, message, "{body}");
        }
        let err = parse(r#"{"series":[{"values":[[1],[2],[3]]}]}"#, &univariate).unwrap_err();
        assert_eq!(err.code, ErrorCode::WrongFeatureCount);
        let bivariate = shape(1, &["a", "b"]);
        let err = parse(r#"{"series":[{"values":[[1,2,3]]}]}"#, &bivariate).unwrap_err();
        assert!(
            err.message.contains("series[0].values[0] has 3 values"),
            "{}",
            err.message
        );
        let err = parse(r#"{"series":[{"values":[[1,[2]]]}]}"#, &bivariate).unwrap_err();
        assert_eq!(
            err.message,
            "series[0].values[0][1] must be a number, got an array"
        );
        let err = parse(r#"{"series":[{"values":[1,2,3]}]} x"#, &univariate).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidJson);
    }

    #[test]
    fn intervals_are_read_as_levels_and_checked() {
        let univariate = shape(3, &["OT"]);
        let body = br#"{"series":[{"values":[1,2,3]}],"intervals":[0.8,0.95]}"#;
        assert_eq!(
            parse_forecast_body(body, &univariate).unwrap().intervals,
            vec![0.8, 0.95]
        );
        let nine =
            br#"{"series":[{"values":[1,2,3]}],"intervals":[0.1,0.2,0.3,0.4,0.5,0.6,0.7,0.8,0.9]}"#;
        let err = parse_forecast_body(nine, &univariate).unwrap_err();
        assert!(err.message.contains("has 9 levels"), "{}", err.message);
        let text = br#"{"series":[{"values":[1,2,3]}],"intervals":["high"]}"#;
        let err = parse_forecast_body(text, &univariate).unwrap_err();
        assert_eq!(
            err.message,
            "`intervals[0]` must be a number in (0, 1), got a string"
        );
        let refused = parse(
            r#"{"series":[{"values":[1,2,3]}],"intervals":[0.8]}"#,
            &univariate,
        );
        assert!(refused
            .unwrap_err()
            .message
            .contains("unknown field `intervals`"));
    }

    #[test]
    fn parsing_a_body_holds_little_more_memory_than_its_numbers() {
        // 64 series of 8 windows of 96 ETTh1-like values: 346 KB of JSON, 393 KB of f64. Read
        // as a JSON tree it peaked at 2.16 MB (6.2 times the body); streamed, at 398 KB.
        let window = 96;
        let series: Vec<String> = (0..64)
            .map(|s| {
                let values: Vec<String> = (0..8 * window)
                    .map(|t| format!("{:.3}", 10.0 + ((s * 7 + t) % 97) as f64 * 0.137))
                    .collect();
                format!(r#"{{"id":"meter-{s}","values":[{}]}}"#, values.join(","))
            })
            .collect();
        let body = format!(r#"{{"series":[{}]}}"#, series.join(","));
        let shape = RequestShape {
            max_series: 64,
            ..shape(window, &["OT"])
        };
        let (parsed, peak) = crate::allocator::thread_peak_during(|| parse(&body, &shape).unwrap());
        let Some(peak) = peak else {
            return; // not jemalloc: nothing measures the peak
        };
        let numbers_bytes = (64 * 8 * window * 8) as u64;
        assert_eq!(parsed.len(), 64);
        assert!(
            peak < numbers_bytes * 3 / 2 + (256 << 10),
            "parsing {} bytes of JSON peaked at {peak} bytes for {numbers_bytes} bytes of numbers",
            body.len()
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
