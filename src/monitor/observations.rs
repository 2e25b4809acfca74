//! Actuals: the observed values that forecasts are scored against.
//!
//! They arrive as `POST /v1/observations` bodies (parsed here with the same field-naming errors as
//! forecast requests) or as files other systems drop into the store (read by the store).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::forecast::{number, reject, reject_unknown_fields, ErrorCode, RequestError, MAX_ID_LEN};
use crate::time::parse_rfc3339;

/// One observed value of a series.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Observation {
    pub series_id: String,
    pub timestamp: DateTime<Utc>,
    pub value: f64,
}

/// How far past the server's clock an actual may be stamped: clock skew between the systems that
/// measure and this one, and values stamped at the end of their period. An actual stamped later
/// has not happened: accepted, it would mark every target of its series before it as missing the
/// moment it is read, and the series' real actuals would never be scored again.
pub const MAX_OBSERVATION_LEAD: chrono::Duration = chrono::Duration::hours(1);

/// The fields of each series of an observations body: what the parser accepts and the OpenAPI
/// document describes.
const SERIES_FIELDS: [&str; 3] = ["id", "timestamps", "values"];

/// A `POST /v1/observations` body, as the OpenAPI document describes it ([`parse_observations`]
/// reads it).
pub struct ObservationsRequest;

impl utoipa::PartialSchema for ObservationsRequest {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        let [id, timestamps, values] = SERIES_FIELDS;
        let schema = serde_json::json!({
            "type": "object", "required": ["series"], "additionalProperties": false,
            "properties": {"series": {"type": "array", "items": {
                "type": "object", "required": SERIES_FIELDS, "additionalProperties": false,
                "properties": {
                    id: {"type": "string", "minLength": 1, "maxLength": MAX_ID_LEN,
                         "description": "The series id its forecasts were made under."},
                    timestamps: {"type": "array", "items": {"type": "string", "format": "date-time"},
                                 "description": format!("RFC 3339, at most {} hours after the server's clock.", MAX_OBSERVATION_LEAD.num_hours())},
                    values: {"type": "array", "items": {"type": "number"},
                             "description": "One per timestamp."}
                }
            }}}
        });
        serde_json::from_value(schema).expect("a valid schema")
    }
}

impl utoipa::ToSchema for ObservationsRequest {}

/// Parses a `POST /v1/observations` body: `{"series":[{"id","timestamps":[...],"values":[...]}]}`.
/// Timestamps after `now` + [`MAX_OBSERVATION_LEAD`] are refused, naming the field.
pub fn parse_observations(
    body: &[u8],
    max_points: usize,
    now: DateTime<Utc>,
) -> Result<Vec<Observation>, RequestError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(reject(
            ErrorCode::EmptyRequest,
            "request body is empty; expected {\"series\": [{\"id\", \"timestamps\", \"values\"}]}",
        ));
    }
    let document: Value = serde_json::from_slice(body).map_err(|e| {
        reject(
            ErrorCode::InvalidJson,
            format!("request body is not valid JSON: {e}"),
        )
    })?;
    let Value::Object(top) = document else {
        return Err(reject(
            ErrorCode::InvalidRequest,
            "request body must be a JSON object with a `series` array",
        ));
    };
    reject_unknown_fields(&top, &["series"], "request body")?;
    let Some(Value::Array(series)) = top.get("series") else {
        return Err(reject(
            ErrorCode::InvalidRequest,
            "`series` must be an array",
        ));
    };
    let mut observations = Vec::new();
    for (i, item) in series.iter().enumerate() {
        append_series(&mut observations, i, item, (max_points, now))?;
    }
    if observations.is_empty() {
        return Err(reject(
            ErrorCode::EmptyRequest,
            "no observations in the request",
        ));
    }
    Ok(observations)
}

/// Appends the observations of `series[i]` (`item`), refusing more than `max_points` in all and
/// timestamps past `now` + [`MAX_OBSERVATION_LEAD`].
fn append_series(
    observations: &mut Vec<Observation>,
    i: usize,
    item: &Value,
    (max_points, now): (usize, DateTime<Utc>),
) -> Result<(), RequestError> {
    let at = format!("series[{i}]");
    let Value::Object(fields) = item else {
        return Err(reject(
            ErrorCode::InvalidRequest,
            format!("{at} must be an object"),
        ));
    };
    reject_unknown_fields(fields, &SERIES_FIELDS, &at)?;
    let id = match fields.get("id") {
        Some(Value::String(id)) if !id.is_empty() && id.chars().count() <= MAX_ID_LEN => id.clone(),
        _ => {
            return Err(reject(
                ErrorCode::InvalidRequest,
                format!("{at}.id must be a non-empty string (the series id used when forecasting)"),
            ))
        }
    };
    let (Some(Value::Array(stamps)), Some(Value::Array(values))) =
        (fields.get("timestamps"), fields.get("values"))
    else {
        return Err(reject(
            ErrorCode::InvalidRequest,
            format!("{at} needs `timestamps` and `values` arrays"),
        ));
    };
    if stamps.len() != values.len() {
        return Err(reject(
            ErrorCode::InvalidRequest,
            format!(
                "{at} has {} timestamps but {} values",
                stamps.len(),
                values.len()
            ),
        ));
    }
    for (k, (stamp, value)) in stamps.iter().zip(values).enumerate() {
        let timestamp = stamp.as_str().and_then(parse_rfc3339).ok_or_else(|| {
            reject(
                ErrorCode::InvalidTimestamp,
                format!("{at}.timestamps[{k}] must be an RFC 3339 string"),
            )
        })?;
        if timestamp > now + MAX_OBSERVATION_LEAD {
            return Err(reject(
                ErrorCode::InvalidTimestamp,
                format!(
                    "{at}.timestamps[{k}] is {}, more than {} hour(s) after the server's clock ({}): an actual cannot be from the future",
                    crate::time::format_rfc3339(timestamp),
                    MAX_OBSERVATION_LEAD.num_hours(),
                    crate::time::format_rfc3339(now)
                ),
            ));
        }
        let value = number(value, &format!("{at}.values[{k}]"), &["value".to_string()])?;
        observations.push(Observation {
            series_id: id.clone(),
            timestamp,
            value,
        });
        if observations.len() > max_points {
            return Err(reject(
                ErrorCode::TooManySeries,
                format!("more than {max_points} observations in one request"),
            ));
        }
    }
    Ok(())
}
