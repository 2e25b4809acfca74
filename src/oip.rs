//! The Open Inference Protocol v2 (KServe's predict API v2, which Triton, MLServer, OpenVINO
//! Model Server, KServe and their clients speak), over the same service as `/v1`. This module only
//! converts: tensors in to [`SeriesInput`]s, a [`ForecastResponse`] out to tensors. It knows no
//! transport; `http` routes it, and the Lambda function reaches it through the same router.
//!
//! The model as the protocol sees it:
//! - input `window`, FP64 (FP32 accepted) `[-1, window, features]`: each series' latest rows,
//!   oldest first, in the original scale (up to 8 windows of history, as `/v1` accepts);
//! - inputs `series_id` and `last_timestamp`, BYTES `[-1]`, optional: what `/v1`'s `id` and
//!   `last_timestamp` are, so that forecasts are logged and scored the same way. Per-series
//!   strings are tensors here, because the protocol's parameters are scalars;
//! - output `forecast`, FP64 `[-1, horizon]`;
//! - outputs `lower_P` and `upper_P`, FP64 `[-1, horizon]`: the interval at level P% (`lower_80`)
//!   for each level the model serves. Asking for one asks for its level, as does the request
//!   parameter `intervals` (`"0.8,0.95"`).
//!
//! The binary tensor data extension (what `tritonclient.http` uses by default): the body is the
//! JSON header, `header_length` bytes (the `Inference-Header-Content-Length` header), then each
//! binary input's raw little-endian bytes in input order, each sized by its
//! `parameters.binary_data_size`. BYTES elements are a 4-byte little-endian length and the bytes.
//! Outputs asked for with `parameters.binary_data` (or all of them, with the request parameter
//! `binary_data_output`) come back the same way.

use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::forecast::{
    check_unique_ids, excerpt, reject, ErrorCode, ForecastResponse, RequestError, RequestShape,
    SeriesInput, MAX_HISTORY_WINDOWS, MAX_ID_LEN,
};
use crate::model::contract::ModelMetadata;
use crate::time::parse_rfc3339;

pub const WINDOW_INPUT: &str = "window";
pub const SERIES_ID_INPUT: &str = "series_id";
pub const LAST_TIMESTAMP_INPUT: &str = "last_timestamp";
pub const FORECAST_OUTPUT: &str = "forecast";
/// The extensions this server speaks, as `GET /v2` names them.
pub const EXTENSIONS: [&str; 1] = ["binary_tensor_data"];

/// `GET /v2`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ServerMetadata {
    pub name: &'static str,
    pub version: &'static str,
    pub extensions: Vec<&'static str>,
}

impl ServerMetadata {
    pub fn new() -> Self {
        ServerMetadata {
            name: "lstm-forecast",
            version: env!("CARGO_PKG_VERSION"),
            extensions: EXTENSIONS.to_vec(),
        }
    }
}

impl Default for ServerMetadata {
    fn default() -> Self {
        Self::new()
    }
}

/// A tensor as model metadata declares it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct TensorMetadata {
    pub name: String,
    pub datatype: &'static str,
    pub shape: Vec<i64>,
}

/// `GET /v2/models/{name}[/versions/{version}]`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ModelMetadataV2 {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: &'static str,
    pub inputs: Vec<TensorMetadata>,
    pub outputs: Vec<TensorMetadata>,
}

/// The protocol's view of `metadata` (see the module doc); `versions` are those a request may
/// name, live's first.
pub fn model_metadata(metadata: &ModelMetadata, versions: Vec<String>) -> ModelMetadataV2 {
    let (window, features) = (
        metadata.input.window as i64,
        metadata.input.features.len() as i64,
    );
    let horizon = metadata.output.horizon as i64;
    let tensor = |name: String, datatype, shape: Vec<i64>| TensorMetadata {
        name,
        datatype,
        shape,
    };
    let mut outputs = vec![tensor(FORECAST_OUTPUT.into(), "FP64", vec![-1, horizon])];
    for level in metadata.interval_levels() {
        for side in [Side::Lower, Side::Upper] {
            outputs.push(tensor(side.output_name(level), "FP64", vec![-1, horizon]));
        }
    }
    ModelMetadataV2 {
        name: metadata.name.clone(),
        versions,
        platform: "pytorch_torchscript",
        inputs: vec![
            tensor(WINDOW_INPUT.into(), "FP64", vec![-1, window, features]),
            tensor(SERIES_ID_INPUT.into(), "BYTES", vec![-1]),
            tensor(LAST_TIMESTAMP_INPUT.into(), "BYTES", vec![-1]),
        ],
        outputs,
    }
}

/// Which bound of an interval an output holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Lower,
    Upper,
}

impl Side {
    /// `lower_80` for the lower bound at level 0.8.
    pub fn output_name(self, level: f64) -> String {
        let percent = (level * 1e8).round() / 1e6;
        match self {
            Side::Lower => format!("lower_{percent}"),
            Side::Upper => format!("upper_{percent}"),
        }
    }
}

/// One output a request asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct RequestedOutput {
    pub name: String,
    /// `None` for the forecast itself.
    pub interval: Option<(Side, f64)>,
    pub binary: bool,
}

/// An infer request, converted.
#[derive(Debug, Clone, PartialEq)]
pub struct InferRequest {
    pub id: Option<String>,
    pub series: Vec<SeriesInput>,
    /// Interval levels, from the `intervals` parameter and the interval outputs asked for.
    pub levels: Vec<f64>,
    pub outputs: Vec<RequestedOutput>,
}

/// An infer request's JSON header (the body, without the binary extension).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = InferRequestBody)]
pub(crate) struct RawRequest {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<RequestParameters>,
    inputs: Vec<RawInput>,
    #[serde(default)]
    outputs: Option<Vec<RawOutput>>,
}

/// `window` (FP64 or FP32 `[series, rows, features]`), `series_id` or `last_timestamp` (BYTES
/// `[series]`).
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = InferInput)]
pub(crate) struct RawInput {
    name: String,
    shape: Vec<i64>,
    datatype: String,
    #[serde(default)]
    parameters: Option<InputParameters>,
    /// Row-major values, flat or nested as the shape (absent with `binary_data_size`).
    #[serde(default)]
    #[schema(value_type = Option<Vec<Value>>)]
    data: Option<FlatData>,
}

/// `forecast`, `lower_P` or `upper_P`.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = InferRequestedOutput)]
pub(crate) struct RawOutput {
    name: String,
    #[serde(default)]
    parameters: Option<OutputParameters>,
}

// The parameters this server reads. Others (a client's own) are skipped unread, never built
// into a JSON tree.

/// An infer request's parameters.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[schema(as = InferParameters)]
pub(crate) struct RequestParameters {
    /// Interval levels: `"0.8,0.95"`, or one level as a number.
    #[serde(default)]
    #[schema(value_type = Option<String>)]
    intervals: Option<LevelsParameter>,
    /// Every output as binary data (the binary tensor extension).
    #[serde(default)]
    binary_data_output: Option<bool>,
}

/// An input's parameters.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[schema(as = InferInputParameters)]
pub(crate) struct InputParameters {
    /// The input's bytes in the binary part of the body.
    #[serde(default)]
    binary_data_size: Option<u64>,
}

/// A requested output's parameters.
#[derive(Default, Deserialize, utoipa::ToSchema)]
#[schema(as = InferOutputParameters)]
pub(crate) struct OutputParameters {
    /// This output as binary data.
    #[serde(default)]
    binary_data: Option<bool>,
}

/// The `intervals` parameter: a comma-separated list, or one level as a number. Read as a
/// scalar: anything else stops the read, without building it.
enum LevelsParameter {
    Text(String),
    Level(f64),
}

impl<'de> Deserialize<'de> for LevelsParameter {
    fn deserialize<D: Deserializer<'de>>(reader: D) -> Result<Self, D::Error> {
        struct Levels;
        impl<'de> Visitor<'de> for Levels {
            type Value = LevelsParameter;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("levels in (0, 1) such as \"0.8,0.95\", or one level")
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<LevelsParameter, E> {
                Ok(LevelsParameter::Text(text.to_owned()))
            }

            fn visit_f64<E: de::Error>(self, level: f64) -> Result<LevelsParameter, E> {
                Ok(LevelsParameter::Level(level))
            }

            fn visit_i64<E: de::Error>(self, level: i64) -> Result<LevelsParameter, E> {
                Ok(LevelsParameter::Level(level as f64))
            }

            fn visit_u64<E: de::Error>(self, level: u64) -> Result<LevelsParameter, E> {
                Ok(LevelsParameter::Level(level as f64))
            }
        }
        reader.deserialize_any(Levels)
    }
}

/// A tensor's `data`, flattened row-major as it is read (the protocol allows nested or flat), and
/// how it was nested.
#[derive(Debug, Default)]
struct FlatData {
    numbers: Vec<f64>,
    strings: Vec<String>,
    /// The length of the arrays at each depth, when all of one depth agree.
    lengths: Vec<Option<usize>>,
    /// The depth of the values, when they all sit at one.
    value_depth: Option<usize>,
    /// Arrays of one depth with different lengths, or values at two depths.
    ragged: bool,
}

impl FlatData {
    fn array_at(&mut self, depth: usize, length: usize) {
        if self.lengths.len() <= depth {
            self.lengths.resize(depth + 1, None);
        }
        match self.lengths[depth] {
            None => self.lengths[depth] = Some(length),
            Some(seen) => self.ragged |= seen != length,
        }
    }

    fn value_at(&mut self, depth: usize) {
        match self.value_depth {
            None => self.value_depth = Some(depth),
            Some(seen) => self.ragged |= seen != depth,
        }
    }

    /// Checks the nesting against `shape`: flat, or nested exactly as the shape says.
    fn check_nesting(&self, name: &str, shape: &[i64]) -> Result<(), RequestError> {
        if !self.ragged && self.value_depth.is_none_or(|d| d <= 1) {
            return Ok(());
        }
        let nested: Vec<i64> = self
            .lengths
            .iter()
            .map(|l| l.map_or(-1, |l| l as i64))
            .collect();
        if self.ragged || nested != shape || self.value_depth != Some(shape.len()) {
            return Err(invalid(format!(
                "input `{}`: `data` must be flat, or nested exactly as its shape {}",
                excerpt(name),
                shape_text(shape)
            )));
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for FlatData {
    fn deserialize<D: Deserializer<'de>>(reader: D) -> Result<Self, D::Error> {
        let mut data = FlatData::default();
        Flatten(&mut data, 0).deserialize(reader)?;
        Ok(data)
    }
}

/// Reads `data` at a depth of nesting.
struct Flatten<'a>(&'a mut FlatData, usize);

impl<'de> DeserializeSeed<'de> for Flatten<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, reader: D) -> Result<(), D::Error> {
        reader.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Flatten<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an array of numbers or of strings")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Flatten(data, depth) = self;
        let mut length = 0;
        while seq.next_element_seed(Flatten(data, depth + 1))?.is_some() {
            length += 1;
        }
        data.array_at(depth, length);
        Ok(())
    }

    fn visit_f64<E: de::Error>(self, n: f64) -> Result<(), E> {
        self.0.value_at(self.1);
        self.0.numbers.push(n);
        Ok(())
    }

    fn visit_i64<E: de::Error>(self, n: i64) -> Result<(), E> {
        self.visit_f64(n as f64)
    }

    fn visit_u64<E: de::Error>(self, n: u64) -> Result<(), E> {
        self.visit_f64(n as f64)
    }

    fn visit_str<E: de::Error>(self, text: &str) -> Result<(), E> {
        self.0.value_at(self.1);
        self.0.strings.push(text.to_owned());
        Ok(())
    }
}

fn invalid(message: impl Into<String>) -> RequestError {
    reject(ErrorCode::InvalidRequest, message)
}

/// The body of `POST /v2/models/{name}/infer`: its JSON header is the first `header_length`
/// bytes (all of them without the binary extension), then the binary inputs.
pub fn parse_infer(
    body: &[u8],
    header_length: Option<usize>,
    shape: &RequestShape,
) -> Result<InferRequest, RequestError> {
    let header_length = header_length.unwrap_or(body.len());
    if header_length > body.len() {
        return Err(invalid(format!(
            "Inference-Header-Content-Length is {header_length}, but the body has only {} bytes",
            body.len()
        )));
    }
    let (header, mut binary) = body.split_at(header_length);
    if header.iter().all(u8::is_ascii_whitespace) {
        return Err(reject(
            ErrorCode::EmptyRequest,
            "request body is empty; expected {\"inputs\": [{\"name\": \"window\", ...}]}",
        ));
    }
    let raw: RawRequest = serde_json::from_slice(header).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            ErrorCode::InvalidJson
        } else {
            ErrorCode::InvalidRequest
        };
        reject(code, format!("infer request: {e}"))
    })?;
    let mut tensors = Tensors::default();
    for input in &raw.inputs {
        tensors.read(input, &mut binary, shape)?;
    }
    if !binary.is_empty() {
        return Err(invalid(format!(
            "the body has {} bytes after the inputs' binary data",
            binary.len()
        )));
    }
    let series = tensors.into_series(shape)?;
    check_unique_ids(&series)?;
    let parameters = raw.parameters.unwrap_or_default();
    let binary_by_default = parameters.binary_data_output.unwrap_or(false);
    let mut levels = interval_parameter(parameters.intervals)?;
    let outputs = requested_outputs(raw.outputs, binary_by_default, &mut levels)?;
    Ok(InferRequest {
        id: raw.id,
        series,
        levels,
        outputs,
    })
}

/// The request parameter `intervals`: `"0.8,0.95"`, or one level as a number.
fn interval_parameter(intervals: Option<LevelsParameter>) -> Result<Vec<f64>, RequestError> {
    match intervals {
        None => Ok(Vec::new()),
        Some(LevelsParameter::Level(level)) => Ok(vec![level]),
        Some(LevelsParameter::Text(text)) => text
            .split(',')
            .map(|level| {
                level.trim().parse::<f64>().map_err(|_| {
                    reject(
                        ErrorCode::InvalidInterval,
                        format!(
                            "parameter `intervals` must be levels in (0, 1) such as \"0.8,0.95\", got `{}`",
                            excerpt(&text)
                        ),
                    )
                })
            })
            .collect(),
    }
}

/// The outputs asked for (all of them when none are named), adding the levels of interval
/// outputs to `levels`.
fn requested_outputs(
    raw: Option<Vec<RawOutput>>,
    binary_by_default: bool,
    levels: &mut Vec<f64>,
) -> Result<Vec<RequestedOutput>, RequestError> {
    let Some(raw) = raw.filter(|outputs| !outputs.is_empty()) else {
        let mut all = vec![RequestedOutput {
            name: FORECAST_OUTPUT.into(),
            interval: None,
            binary: binary_by_default,
        }];
        for &level in levels.iter() {
            for side in [Side::Lower, Side::Upper] {
                all.push(RequestedOutput {
                    name: side.output_name(level),
                    interval: Some((side, level)),
                    binary: binary_by_default,
                });
            }
        }
        return Ok(all);
    };
    let mut outputs = Vec::with_capacity(raw.len());
    for output in raw {
        let interval = interval_output(&output.name)?;
        if let Some((_, level)) = interval {
            if !levels.contains(&level) {
                levels.push(level);
            }
        }
        let binary = output
            .parameters
            .and_then(|p| p.binary_data)
            .unwrap_or(binary_by_default);
        outputs.push(RequestedOutput {
            name: output.name,
            interval,
            binary,
        });
    }
    Ok(outputs)
}

/// What an output name asks for: the forecast (`None`) or an interval bound.
fn interval_output(name: &str) -> Result<Option<(Side, f64)>, RequestError> {
    if name == FORECAST_OUTPUT {
        return Ok(None);
    }
    let (side, percent) = if let Some(percent) = name.strip_prefix("lower_") {
        (Side::Lower, percent)
    } else if let Some(percent) = name.strip_prefix("upper_") {
        (Side::Upper, percent)
    } else {
        return Err(invalid(format!(
            "unknown output `{}`; this model has `forecast`, and `lower_P`/`upper_P` for an interval at P% (lower_80)",
            excerpt(name)
        )));
    };
    match percent.parse::<f64>() {
        Ok(percent) if percent > 0.0 && percent < 100.0 => Ok(Some((side, percent / 100.0))),
        _ => Err(reject(
            ErrorCode::InvalidInterval,
            format!(
                "output `{}` names no level: P in lower_P/upper_P is a percentage in (0, 100)",
                excerpt(name)
            ),
        )),
    }
}

/// The inputs read so far.
#[derive(Default)]
struct Tensors {
    /// Rows per series, and the flat values, row-major `[series][rows][features]`.
    window: Option<(usize, usize, Vec<f64>)>,
    series_ids: Option<Vec<String>>,
    last_timestamps: Option<Vec<String>>,
}

impl Tensors {
    fn read(
        &mut self,
        input: &RawInput,
        binary: &mut &[u8],
        shape: &RequestShape,
    ) -> Result<(), RequestError> {
        let bytes = binary_part(input, binary)?;
        let slot = match input.name.as_str() {
            WINDOW_INPUT => {
                let window = read_window(input, bytes, shape)?;
                return put_once(&mut self.window, window, WINDOW_INPUT);
            }
            SERIES_ID_INPUT => &mut self.series_ids,
            LAST_TIMESTAMP_INPUT => &mut self.last_timestamps,
            other => {
                return Err(invalid(format!(
                    "unknown input `{}`; this model takes `window` (and optionally `series_id`, `last_timestamp`)",
                    excerpt(other)
                )))
            }
        };
        let strings = read_strings(input, bytes)?;
        put_once(slot, strings, &input.name)
    }

    fn into_series(self, shape: &RequestShape) -> Result<Vec<SeriesInput>, RequestError> {
        let Some((count, rows, values)) = self.window else {
            return Err(invalid(
                "missing input `window` ([-1, window, features] FP64 or FP32)",
            ));
        };
        let per_series = rows * shape.features.len();
        let column = |strings: Option<Vec<String>>, name: &str| match strings {
            Some(strings) if strings.len() != count => Err(invalid(format!(
                "input `{name}` has {} elements for {count} series in `window`",
                strings.len()
            ))),
            Some(strings) => Ok(strings.into_iter().map(Some).collect()),
            None => Ok(vec![None; count]),
        };
        let ids = column(self.series_ids, SERIES_ID_INPUT)?;
        let stamps = column(self.last_timestamps, LAST_TIMESTAMP_INPUT)?;
        let mut series = Vec::with_capacity(count);
        for (i, ((values, id), stamp)) in values.chunks(per_series).zip(ids).zip(stamps).enumerate()
        {
            series.push(SeriesInput {
                id: checked_id(id, i)?,
                values: values.to_vec(),
                last_timestamp: checked_timestamp(stamp, i, shape)?,
            });
        }
        Ok(series)
    }
}

fn put_once<T>(slot: &mut Option<T>, value: T, name: &str) -> Result<(), RequestError> {
    if slot.is_some() {
        return Err(invalid(format!("input `{name}` is given twice")));
    }
    *slot = Some(value);
    Ok(())
}

/// The input's binary data, taken off the front of `binary`, when it has any.
fn binary_part<'a>(
    input: &RawInput,
    binary: &mut &'a [u8],
) -> Result<Option<&'a [u8]>, RequestError> {
    let Some(size) = input.parameters.as_ref().and_then(|p| p.binary_data_size) else {
        return Ok(None);
    };
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > binary.len() {
        return Err(invalid(format!(
            "input `{}` claims {size} bytes of binary data; {} are left in the body",
            excerpt(&input.name),
            binary.len()
        )));
    }
    let (part, rest) = binary.split_at(size);
    *binary = rest;
    if input.data.is_some() {
        return Err(invalid(format!(
            "input `{}` has both `data` and binary data",
            excerpt(&input.name)
        )));
    }
    Ok(Some(part))
}

/// A shape as an error message quotes it: at most four dimensions, so a hostile one with a
/// million entries is not echoed back whole.
fn shape_text(shape: &[i64]) -> String {
    match shape {
        [first @ .., _] if shape.len() > 4 => {
            format!(
                "{:?} (and {} more dimensions)",
                &first[..4],
                shape.len() - 4
            )
        }
        _ => format!("{shape:?}"),
    }
}

/// The `window` input: `[series, rows, features]`, FP64 or FP32, every value finite.
fn read_window(
    input: &RawInput,
    binary: Option<&[u8]>,
    shape: &RequestShape,
) -> Result<(usize, usize, Vec<f64>), RequestError> {
    let features = shape.features.len();
    let [count, rows, width] = input.shape[..] else {
        return Err(invalid(format!(
            "input `window` has shape {}; it must be [series, {}, {features}]",
            shape_text(&input.shape),
            shape.window
        )));
    };
    let most_rows = MAX_HISTORY_WINDOWS * shape.window;
    if width != features as i64 {
        return Err(reject(
            ErrorCode::WrongFeatureCount,
            format!(
                "input `window` has {width} features per row; the model needs {features} ({})",
                shape.features.join(", ")
            ),
        ));
    }
    if rows < shape.window as i64 || rows > most_rows as i64 {
        return Err(reject(
            ErrorCode::WrongWindowLength,
            format!(
                "input `window` has {rows} rows per series; the model needs at least {} and takes at most {most_rows} (the most recent observations, oldest first)",
                shape.window
            ),
        ));
    }
    if count < 1 {
        return Err(reject(
            ErrorCode::EmptyRequest,
            "input `window` holds no series; send at least one",
        ));
    }
    if count > shape.max_series as i64 {
        return Err(reject(
            ErrorCode::TooManySeries,
            format!(
                "input `window` holds {count} series; at most {} are accepted per request",
                shape.max_series
            ),
        ));
    }
    let (count, rows) = (count as usize, rows as usize);
    let expected = count * rows * features;
    let values = match (input.datatype.as_str(), binary) {
        ("FP64", Some(bytes)) => little_endian(bytes, 8, expected, |b| {
            f64::from_le_bytes(b.try_into().expect("8 bytes"))
        })?,
        ("FP32", Some(bytes)) => little_endian(bytes, 4, expected, |b| {
            f64::from(f32::from_le_bytes(b.try_into().expect("4 bytes")))
        })?,
        ("FP64", None) => json_numbers(input, expected, |x| x)?,
        // A JSON number sent as FP32 is what the client rounded to f32: round it the same way.
        ("FP32", None) => json_numbers(input, expected, |x| f64::from(x as f32))?,
        (other, _) => {
            return Err(invalid(format!(
                "input `window` is {}; send FP64 or FP32",
                excerpt(other)
            )))
        }
    };
    if let Some(k) = values.iter().position(|v| !v.is_finite()) {
        let (i, t, f) = (k / (rows * features), k / features % rows, k % features);
        return Err(reject(
            ErrorCode::NonFiniteValue,
            format!("input `window`[{i}][{t}][{f}] is not a finite number; values must be finite (fill gaps before forecasting)"),
        ));
    }
    Ok((count, rows, values))
}

fn little_endian(
    bytes: &[u8],
    width: usize,
    expected: usize,
    decode: impl Fn(&[u8]) -> f64,
) -> Result<Vec<f64>, RequestError> {
    if bytes.len() != expected * width {
        return Err(invalid(format!(
            "input `window` has {} bytes of binary data; its shape needs {} ({expected} values of {width} bytes)",
            bytes.len(),
            expected * width
        )));
    }
    Ok(bytes.chunks_exact(width).map(decode).collect())
}

fn json_numbers(
    input: &RawInput,
    expected: usize,
    round: impl Fn(f64) -> f64,
) -> Result<Vec<f64>, RequestError> {
    let Some(data) = &input.data else {
        return Err(invalid("input `window` has neither `data` nor binary data"));
    };
    if !data.strings.is_empty() {
        return Err(invalid("input `window` holds strings; send numbers"));
    }
    data.check_nesting(WINDOW_INPUT, &input.shape)?;
    if data.numbers.len() != expected {
        return Err(invalid(format!(
            "input `window` has {} values; its shape {} needs {expected}",
            data.numbers.len(),
            shape_text(&input.shape)
        )));
    }
    Ok(data.numbers.iter().map(|x| round(*x)).collect())
}

/// A BYTES input `[series]`, as JSON strings or length-prefixed binary elements.
fn read_strings(input: &RawInput, binary: Option<&[u8]>) -> Result<Vec<String>, RequestError> {
    let name = excerpt(&input.name);
    if input.datatype != "BYTES" {
        return Err(invalid(format!(
            "input `{name}` is {}; send BYTES",
            excerpt(&input.datatype)
        )));
    }
    let count = match input.shape[..] {
        [count] if count >= 0 => count as usize,
        _ => {
            return Err(invalid(format!(
                "input `{name}` has shape {}; it must be [series]",
                shape_text(&input.shape)
            )))
        }
    };
    let strings = match (binary, &input.data) {
        (Some(mut bytes), _) => {
            let mut strings = Vec::with_capacity(count.min(bytes.len() / 4));
            while !bytes.is_empty() {
                let Some((length, rest)) = bytes.split_first_chunk::<4>() else {
                    return Err(invalid(format!(
                        "input `{name}`: a truncated BYTES element"
                    )));
                };
                let length = u32::from_le_bytes(*length) as usize;
                if length > rest.len() {
                    return Err(invalid(format!(
                        "input `{name}`: a truncated BYTES element"
                    )));
                }
                let (text, rest) = rest.split_at(length);
                let text = std::str::from_utf8(text).map_err(|_| {
                    invalid(format!("input `{name}` holds bytes that are not UTF-8"))
                })?;
                strings.push(text.to_owned());
                bytes = rest;
            }
            strings
        }
        (None, Some(data)) if data.numbers.is_empty() => {
            data.check_nesting(&input.name, &input.shape)?;
            data.strings.clone()
        }
        (None, _) => {
            return Err(invalid(format!(
                "input `{name}` must hold one string per series"
            )))
        }
    };
    if strings.len() != count {
        return Err(invalid(format!(
            "input `{name}` has {} elements; its shape says {count}",
            strings.len()
        )));
    }
    Ok(strings)
}

fn checked_id(id: Option<String>, i: usize) -> Result<Option<String>, RequestError> {
    match id {
        Some(id) if id.chars().nth(MAX_ID_LEN).is_some() => Err(invalid(format!(
            "input `series_id`[{i}] is longer than {MAX_ID_LEN} characters"
        ))),
        Some(id) if id.is_empty() => Ok(None),
        id => Ok(id),
    }
}

fn checked_timestamp(
    stamp: Option<String>,
    i: usize,
    shape: &RequestShape,
) -> Result<Option<chrono::DateTime<chrono::Utc>>, RequestError> {
    let Some(text) = stamp.filter(|s| !s.is_empty()) else {
        return Ok(None);
    };
    let at = format!("input `last_timestamp`[{i}]");
    let last = parse_rfc3339(&text).ok_or_else(|| {
        reject(
            ErrorCode::InvalidTimestamp,
            format!(
                "{at} `{}` is not an RFC 3339 timestamp (e.g. 2018-02-20T23:00:00Z)",
                excerpt(&text)
            ),
        )
    })?;
    shape.check_forecast_fits_after(last).map_err(|why| {
        reject(
            ErrorCode::InvalidTimestamp,
            format!("{at} `{}`: {why}", excerpt(&text)),
        )
    })?;
    Ok(Some(last))
}

/// An infer response: its JSON header, and the binary outputs that follow it.
#[derive(Debug, Clone, PartialEq)]
pub struct InferAnswer {
    pub header: Vec<u8>,
    pub binary: Vec<u8>,
}

/// An infer response's JSON header.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = InferResponse)]
pub(crate) struct ResponseHeader<'a> {
    model_name: &'a str,
    model_version: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    outputs: Vec<OutputTensor>,
}

/// An output tensor, FP64 `[series, horizon]`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = InferOutput)]
pub(crate) struct OutputTensor {
    name: String,
    datatype: &'static str,
    shape: [usize; 2],
    /// `binary_data_size`, when the output is in the binary part of the body.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    parameters: Option<Map<String, Value>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<Vec<f64>>,
}

/// The answer to `request`, from the service's `response` to its series.
pub fn infer_answer(request: &InferRequest, response: &ForecastResponse) -> InferAnswer {
    let series = response.forecasts.len();
    let horizon = response.forecasts.first().map_or(0, |f| f.values.len());
    let mut binary = Vec::new();
    let outputs = request
        .outputs
        .iter()
        .map(|output| {
            let values: Vec<f64> = response
                .forecasts
                .iter()
                .flat_map(|forecast| match output.interval {
                    None => forecast.values.clone(),
                    // One interval per level asked for, in the order asked (the service snaps
                    // each level to the calibrated one, so its value may differ in the last
                    // digits; its place does not).
                    Some((side, level)) => request
                        .levels
                        .iter()
                        .position(|asked| *asked == level)
                        .and_then(|i| forecast.intervals.get(i))
                        .map(|interval| match side {
                            Side::Lower => interval.lower.clone(),
                            Side::Upper => interval.upper.clone(),
                        })
                        .unwrap_or_default(),
                })
                .collect();
            let (parameters, data) = if output.binary {
                let size = values.len() * 8;
                binary.extend(values.iter().flat_map(|v| v.to_le_bytes()));
                let mut parameters = Map::new();
                parameters.insert("binary_data_size".into(), size.into());
                (Some(parameters), None)
            } else {
                (None, Some(values))
            };
            OutputTensor {
                name: output.name.clone(),
                datatype: "FP64",
                shape: [series, horizon],
                parameters,
                data,
            }
        })
        .collect();
    let header = ResponseHeader {
        model_name: &response.model.name,
        model_version: &response.model.version,
        id: request.id.as_deref(),
        outputs,
    };
    InferAnswer {
        header: serde_json::to_vec(&header).expect("serialises"),
        binary,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::parse_forecast_request;

    fn shape(window: usize, features: &[&str]) -> RequestShape {
        RequestShape::for_tests(window, features)
    }

    #[test]
    fn a_multi_feature_window_is_read_row_major_as_v1_reads_its_rows() {
        let two = shape(2, &["OT", "HUFL"]);
        let body = br#"{"inputs": [{"name": "window", "datatype": "FP64", "shape": [1, 2, 2],
                         "data": [[[1.5, 2], [3, 4.25]]]},
                        {"name": "series_id", "datatype": "BYTES", "shape": [1], "data": ["a"]}]}"#;
        let v2 = parse_infer(body, None, &two).unwrap();
        let v1 = parse_forecast_request(
            br#"{"series": [{"id": "a", "values": [[1.5, 2], [3, 4.25]]}]}"#,
            &two,
        )
        .unwrap();
        assert_eq!(v2.series, v1);
        let wrong = br#"{"inputs": [{"name": "window", "datatype": "FP64", "shape": [1, 2, 1],
                          "data": [1, 2]}]}"#;
        let err = parse_infer(wrong, None, &two).unwrap_err();
        assert_eq!(err.code, ErrorCode::WrongFeatureCount);
    }

    #[test]
    fn data_is_flat_or_nested_exactly_as_its_shape() {
        let two = shape(2, &["OT", "HUFL"]);
        let body = |data: &str| {
            format!(
                r#"{{"inputs": [{{"name": "window", "datatype": "FP64", "shape": [1, 2, 2], "data": {data}}}]}}"#
            )
        };
        for accepted in ["[1, 2, 3, 4]", "[[[1, 2], [3, 4]]]"] {
            assert!(
                parse_infer(body(accepted).as_bytes(), None, &two).is_ok(),
                "{accepted}"
            );
        }
        for ragged in [
            "[[1, 2, 3], [4]]",
            "[[[1]], 2, [3, [4]]]",
            "[[[1, 2, 3, 4]]]",
        ] {
            let err = parse_infer(body(ragged).as_bytes(), None, &two).unwrap_err();
            assert!(
                err.message.contains("nested exactly as its shape"),
                "{ragged}: {}",
                err.message
            );
        }
    }

    #[test]
    fn parameters_are_typed_and_unknown_ones_skipped() {
        let one = shape(1, &["OT"]);
        let body = br#"{"parameters": {"sequence_id": {"deep": [1, [2, [3]]]}, "intervals": 0.8},
                        "inputs": [{"name": "window", "datatype": "FP64", "shape": [1, 1, 1], "data": [1],
                                    "parameters": {"shared_memory_region": "x"}}]}"#;
        assert_eq!(parse_infer(body, None, &one).unwrap().levels, vec![0.8]);
        let bad = br#"{"parameters": {"binary_data_output": "yes"},
                       "inputs": [{"name": "window", "datatype": "FP64", "shape": [1, 1, 1], "data": [1]}]}"#;
        let err = parse_infer(bad, None, &one).unwrap_err();
        assert!(
            err.message.contains("expected a boolean"),
            "{}",
            err.message
        );
    }

    #[test]
    fn binary_inputs_are_little_endian_and_bytes_elements_are_length_prefixed() {
        let one = shape(2, &["OT"]);
        let values: Vec<u8> = [1.0f32, 2.5].iter().flat_map(|v| v.to_le_bytes()).collect();
        let mut ids = 5u32.to_le_bytes().to_vec();
        ids.extend_from_slice(b"meter");
        let header = format!(
            r#"{{"id": "7", "inputs": [
                {{"name": "window", "datatype": "FP32", "shape": [1, 2, 1], "parameters": {{"binary_data_size": {}}}}},
                {{"name": "series_id", "datatype": "BYTES", "shape": [1], "parameters": {{"binary_data_size": {}}}}}],
               "outputs": [{{"name": "forecast", "parameters": {{"binary_data": true}}}}]}}"#,
            values.len(),
            ids.len()
        );
        let body = [header.as_bytes(), &values, &ids].concat();
        let request = parse_infer(&body, Some(header.len()), &one).unwrap();
        assert_eq!(request.id.as_deref(), Some("7"));
        assert_eq!(request.series[0].values, vec![1.0, 2.5]);
        assert_eq!(request.series[0].id.as_deref(), Some("meter"));
        assert!(request.outputs[0].binary);
        // A byte too many or too few is named, never read past
        let short = parse_infer(&body[..body.len() - 1], Some(header.len()), &one).unwrap_err();
        assert!(short.message.contains("claims"), "{}", short.message);
        let long = parse_infer(&[&body[..], b"x"].concat(), Some(header.len()), &one).unwrap_err();
        assert!(
            long.message.contains("after the inputs"),
            "{}",
            long.message
        );
    }

    #[test]
    fn interval_outputs_name_their_level_and_ask_for_it() {
        let one = shape(1, &["OT"]);
        let body = br#"{"inputs": [{"name": "window", "datatype": "FP64", "shape": [1, 1, 1], "data": [1]}],
                        "outputs": [{"name": "upper_97.5"}, {"name": "lower_80"}]}"#;
        let request = parse_infer(body, None, &one).unwrap();
        assert_eq!(request.levels, vec![0.975, 0.8]);
        assert_eq!(Side::Upper.output_name(0.975), "upper_97.5");
        assert_eq!(Side::Lower.output_name(0.8), "lower_80");
        let all = br#"{"parameters": {"intervals": "0.8, 0.95"},
                       "inputs": [{"name": "window", "datatype": "FP64", "shape": [1, 1, 1], "data": [1]}]}"#;
        let names: Vec<String> = parse_infer(all, None, &one)
            .unwrap()
            .outputs
            .into_iter()
            .map(|o| o.name)
            .collect();
        assert_eq!(
            names,
            ["forecast", "lower_80", "upper_80", "lower_95", "upper_95"]
        );
    }
}
