//! File inputs for one-off and batch forecasts: CSV tables and JSON documents.
//!
//! CSV: a header row naming the model's features (any order, extra columns ignored), optionally an
//! `id` column (rows are grouped into series by it, in file order) and a `timestamp` or `date`
//! column. Each series uses its **last** `window` rows, so a long history file such as ETTh1.csv can
//! be passed as it is.

use std::collections::HashMap;

use crate::forecast::{parse_forecast_request, ErrorCode, RequestError, RequestShape, SeriesInput};
use crate::time::parse_timestamp_lenient;

/// Input file formats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InputFormat {
    Csv,
    /// The `POST /v1/forecast` body.
    Json,
    /// One series object (`{"id","values","last_timestamp"}`) per line: batch jobs.
    JsonLines,
}

impl InputFormat {
    /// Guesses from the file name, then from the first non-blank byte.
    pub fn detect(name: &str, content: &[u8]) -> Self {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            return InputFormat::Csv;
        }
        if lower.ends_with(".json") {
            return InputFormat::Json;
        }
        if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            return InputFormat::JsonLines;
        }
        match content.iter().find(|b| !b.is_ascii_whitespace()) {
            Some(b'{') => InputFormat::Json,
            _ => InputFormat::Csv,
        }
    }
}

fn invalid(message: String) -> RequestError {
    RequestError {
        code: ErrorCode::InvalidRequest,
        message,
    }
}

/// Parses a file of either format into validated series. `shape.max_series` bounds the series count.
pub fn parse_input(
    format: InputFormat,
    content: &[u8],
    shape: &RequestShape,
) -> Result<Vec<SeriesInput>, RequestError> {
    match format {
        InputFormat::Json => parse_forecast_request(content, shape),
        InputFormat::Csv => parse_csv(content, shape),
        InputFormat::JsonLines => parse_json_lines(content, shape),
    }
}

/// JSON Lines: each non-blank line is one series, validated like a `POST /v1/forecast` series;
/// errors name the line.
pub fn parse_json_lines(
    content: &[u8],
    shape: &RequestShape,
) -> Result<Vec<SeriesInput>, RequestError> {
    let mut series = Vec::new();
    let one = RequestShape {
        max_series: 1,
        ..shape.clone()
    };
    for (index, line) in content.split(|b| *b == b'\n').enumerate() {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if series.len() == shape.max_series {
            return Err(RequestError {
                code: ErrorCode::TooManySeries,
                message: format!("more than {} series; split the input", shape.max_series),
            });
        }
        let mut body = Vec::with_capacity(line.len() + 12);
        body.extend_from_slice(b"{\"series\":[");
        body.extend_from_slice(line);
        body.extend_from_slice(b"]}");
        let parsed = parse_forecast_request(&body, &one).map_err(|e| RequestError {
            code: e.code,
            message: format!(
                "line {}: {}",
                index + 1,
                e.message.replace("series[0]", "series")
            ),
        })?;
        series.extend(parsed);
    }
    if series.is_empty() {
        return Err(RequestError {
            code: ErrorCode::EmptyRequest,
            message: "no series: the input has no non-blank lines".into(),
        });
    }
    Ok(series)
}

pub fn parse_csv(content: &[u8], shape: &RequestShape) -> Result<Vec<SeriesInput>, RequestError> {
    let mut reader = csv::ReaderBuilder::new()
        .trim(csv::Trim::All)
        .from_reader(content);
    let headers = reader
        .headers()
        .map_err(|e| invalid(format!("CSV header: {e}")))?
        .clone();
    if headers.is_empty() {
        return Err(RequestError {
            code: ErrorCode::EmptyRequest,
            message: format!(
                "the CSV file is empty; it needs a header naming {} and at least {} rows",
                shape.features.join(", "),
                shape.window
            ),
        });
    }
    let column = |name: &str| headers.iter().position(|h| h.eq_ignore_ascii_case(name));
    let feature_columns: Vec<usize> = shape
        .features
        .iter()
        .map(|f| {
            column(f).ok_or_else(|| RequestError {
                code: ErrorCode::WrongFeatureCount,
                message: format!(
                    "CSV has no column `{f}`; the model needs {} (header: {})",
                    shape.features.join(", "),
                    headers.iter().collect::<Vec<_>>().join(",")
                ),
            })
        })
        .collect::<Result<_, _>>()?;
    let id_column = column("id").or_else(|| column("series_id"));
    let time_column = column("timestamp").or_else(|| column("date"));

    struct Rows {
        values: Vec<f64>,
        last_timestamp: Option<String>,
    }
    let mut order: Vec<Option<String>> = Vec::new();
    let mut series: HashMap<Option<String>, Rows> = HashMap::new();
    for (line, record) in reader.records().enumerate() {
        let line = line + 2; // 1-based, after the header
        let record = record.map_err(|e| invalid(format!("CSV line {line}: {e}")))?;
        let id = id_column.and_then(|c| record.get(c)).map(str::to_owned);
        let rows = series.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            Rows {
                values: Vec::new(),
                last_timestamp: None,
            }
        });
        for (&c, feature) in feature_columns.iter().zip(&shape.features) {
            let cell = record.get(c).unwrap_or("");
            let value: f64 = cell.parse().map_err(|_| {
                invalid(format!(
                    "CSV line {line}, column `{feature}`: `{cell}` is not a number"
                ))
            })?;
            if !value.is_finite() {
                return Err(RequestError {
                    code: ErrorCode::NonFiniteValue,
                    message: format!("CSV line {line}, column `{feature}`: `{cell}` is not finite"),
                });
            }
            rows.values.push(value);
        }
        rows.last_timestamp = time_column.and_then(|c| record.get(c)).map(str::to_owned);
    }
    if order.is_empty() {
        return Err(RequestError {
            code: ErrorCode::EmptyRequest,
            message: "CSV has a header but no rows".into(),
        });
    }
    if order.len() > shape.max_series {
        return Err(RequestError {
            code: ErrorCode::TooManySeries,
            message: format!(
                "CSV has {} series; at most {} are accepted",
                order.len(),
                shape.max_series
            ),
        });
    }
    let width = shape.features.len();
    order
        .into_iter()
        .map(|id| {
            let rows = series.remove(&id).expect("every id in order has rows");
            let count = rows.values.len() / width;
            let name = id.clone().map(|i| format!("series `{i}`")).unwrap_or_else(|| "the series".into());
            if count < shape.window {
                return Err(RequestError {
                    code: ErrorCode::WrongWindowLength,
                    message: format!("{name} has {count} rows; the model needs at least {}", shape.window),
                });
            }
            let last_timestamp = match rows.last_timestamp {
                Some(text) => {
                    let last = parse_timestamp_lenient(&text).ok_or_else(|| RequestError {
                        code: ErrorCode::InvalidTimestamp,
                        message: format!("{name}: last timestamp `{text}` is neither RFC 3339 nor `YYYY-MM-DD HH:MM:SS`"),
                    })?;
                    shape.check_forecast_fits_after(last).map_err(|why| RequestError {
                        code: ErrorCode::InvalidTimestamp,
                        message: format!("{name}: last timestamp `{text}`: {why}"),
                    })?;
                    Some(last)
                }
                None => None,
            };
            Ok(SeriesInput {
                id,
                values: rows.values[(count - shape.window) * width..].to_vec(),
                last_timestamp,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::parse_rfc3339;

    fn shape() -> RequestShape {
        RequestShape {
            window: 2,
            features: vec!["OT".into()],
            max_series: 8,
            forecast_span: Some(chrono::TimeDelta::hours(24)),
        }
    }

    #[test]
    fn an_ett_style_file_yields_its_last_window_and_timestamp() {
        let csv = "date,HUFL,OT\n2018-01-01 00:00:00,1,10\n2018-01-01 01:00:00,1,11\n2018-01-01 02:00:00,1,12\n";
        let series = parse_csv(csv.as_bytes(), &shape()).unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].values, vec![11.0, 12.0]);
        assert_eq!(
            series[0].last_timestamp,
            parse_rfc3339("2018-01-01T02:00:00Z")
        );
    }

    #[test]
    fn a_file_ending_too_close_to_year_9999_to_stamp_its_forecast_is_refused() {
        let csv = "date,OT\n9999-12-31 22:00:00,1\n9999-12-31 23:00:00,2\n";
        let err = parse_csv(csv.as_bytes(), &shape()).unwrap_err();
        assert_eq!(err.code, ErrorCode::InvalidTimestamp);
        assert!(
            err.message.contains("9999-12-31T23:59:59Z"),
            "{}",
            err.message
        );
    }

    #[test]
    fn an_empty_file_is_called_empty_not_missing_a_column() {
        let err = parse_csv(b"", &shape()).unwrap_err();
        assert_eq!(err.code, ErrorCode::EmptyRequest);
        assert!(err.message.contains("empty"), "{}", err.message);
    }

    #[test]
    fn rows_are_grouped_by_id_in_file_order() {
        let csv = "id,OT\nb,1\na,5\nb,2\na,6\nb,3\n";
        let series = parse_csv(csv.as_bytes(), &shape()).unwrap();
        assert_eq!(series[0].id.as_deref(), Some("b"));
        assert_eq!(series[0].values, vec![2.0, 3.0]);
        assert_eq!(series[1].values, vec![5.0, 6.0]);
    }

    #[test]
    fn short_histories_and_missing_columns_are_named() {
        let err = parse_csv(b"id,OT\nx,1\n", &shape()).unwrap_err();
        assert!(
            err.message.contains("series `x` has 1 rows"),
            "{}",
            err.message
        );
        let err = parse_csv(b"temp\n1\n2\n", &shape()).unwrap_err();
        assert!(err.message.contains("no column `OT`"));
        let err = parse_csv(b"OT\n1\nnan\n", &shape()).unwrap_err();
        assert_eq!(err.code, ErrorCode::NonFiniteValue);
    }

    #[test]
    fn json_lines_are_one_series_per_line_and_errors_name_the_line() {
        let text = "{\"id\":\"a\",\"values\":[1,2]}\n\n{\"id\":\"b\",\"values\":[3,4]}\n";
        let series = parse_json_lines(text.as_bytes(), &shape()).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[1].values, vec![3.0, 4.0]);
        let err =
            parse_json_lines(b"{\"values\":[1,2]}\n{\"values\":[1]}\n", &shape()).unwrap_err();
        assert!(
            err.message
                .starts_with("line 2: series.values has 1 entries"),
            "{}",
            err.message
        );
    }

    #[test]
    fn formats_are_detected_by_name_then_content() {
        assert_eq!(InputFormat::detect("a.csv", b"{"), InputFormat::Csv);
        assert_eq!(
            InputFormat::detect("-", b"  {\"series\":[]}"),
            InputFormat::Json
        );
        assert_eq!(InputFormat::detect("-", b"OT\n1"), InputFormat::Csv);
    }
}
