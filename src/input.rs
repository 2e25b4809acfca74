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
    // A JSON request checks its ids itself, as the API's body does.
    let series = match format {
        InputFormat::Json => return parse_forecast_request(content, shape),
        InputFormat::Csv => parse_csv(content, shape)?,
        InputFormat::JsonLines => parse_json_lines(content, shape)?,
    };
    crate::forecast::check_unique_ids(&series)?;
    Ok(series)
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
    let layout = CsvLayout::from_header(&headers, shape)?;

    let mut order: Vec<Option<String>> = Vec::new();
    let mut series: HashMap<Option<String>, SeriesRows> = HashMap::new();
    for (line, record) in reader.records().enumerate() {
        let line = line + 2; // 1-based, after the header
        let record = record.map_err(|e| invalid(format!("CSV line {line}: {e}")))?;
        let id = layout.id(&record).map(str::to_owned);
        let rows = series.entry(id.clone()).or_insert_with(|| {
            order.push(id.clone());
            SeriesRows::default()
        });
        layout.push_row(&record, line, shape, rows)?;
        rows.keep_last(shape.window, shape.features.len());
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
    order
        .into_iter()
        .map(|id| {
            let rows = series.remove(&id).expect("every id in order has rows");
            rows.into_series(id, shape)
        })
        .collect()
}

/// Where a CSV file keeps the model's features, the series id and the timestamp.
struct CsvLayout {
    feature_columns: Vec<usize>,
    id_column: Option<usize>,
    time_column: Option<usize>,
}

impl CsvLayout {
    fn from_header(
        headers: &csv::StringRecord,
        shape: &RequestShape,
    ) -> Result<Self, RequestError> {
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
        Ok(CsvLayout {
            feature_columns,
            id_column: column("id").or_else(|| column("series_id")),
            time_column: column("timestamp").or_else(|| column("date")),
        })
    }

    fn id<'r>(&self, record: &'r csv::StringRecord) -> Option<&'r str> {
        self.id_column.and_then(|c| record.get(c))
    }

    /// Appends one row's feature values (checked finite) and timestamp to `rows`.
    fn push_row(
        &self,
        record: &csv::StringRecord,
        line: usize,
        shape: &RequestShape,
        rows: &mut SeriesRows,
    ) -> Result<(), RequestError> {
        for (&c, feature) in self.feature_columns.iter().zip(&shape.features) {
            let cell = record.get(c).unwrap_or("");
            let value: f64 = cell.parse().map_err(|_| {
                invalid(format!(
                    "CSV line {line}, column `{feature}`: `{}` is not a number",
                    crate::forecast::excerpt(cell)
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
        rows.rows += 1;
        rows.last_timestamp = self
            .time_column
            .and_then(|c| record.get(c))
            .map(str::to_owned);
        Ok(())
    }
}

/// One series' rows as read so far.
#[derive(Default)]
struct SeriesRows {
    values: Vec<f64>,
    rows: usize,
    last_timestamp: Option<String>,
}

impl SeriesRows {
    /// Drops all but the last `keep` rows once twice that many are held, so a long history costs
    /// at most two windows of memory (amortised: one copy per `keep` rows).
    fn keep_last(&mut self, keep: usize, width: usize) {
        if self.values.len() >= 2 * keep * width {
            self.values.drain(..self.values.len() - keep * width);
        }
    }

    /// The series' last window, checked for length and its last timestamp.
    fn into_series(
        self,
        id: Option<String>,
        shape: &RequestShape,
    ) -> Result<SeriesInput, RequestError> {
        let width = shape.features.len();
        let held = self.values.len() / width;
        let name = id
            .clone()
            .map(|i| format!("series `{i}`"))
            .unwrap_or_else(|| "the series".into());
        if self.rows < shape.window {
            return Err(RequestError {
                code: ErrorCode::WrongWindowLength,
                message: format!(
                    "{name} has {} rows; the model needs at least {}",
                    self.rows, shape.window
                ),
            });
        }
        let last_timestamp = match self.last_timestamp {
            Some(text) => {
                let last = parse_timestamp_lenient(&text).ok_or_else(|| RequestError {
                    code: ErrorCode::InvalidTimestamp,
                    message: format!(
                        "{name}: last timestamp `{}` is neither RFC 3339 nor `YYYY-MM-DD HH:MM:SS`",
                        crate::forecast::excerpt(&text)
                    ),
                })?;
                shape
                    .check_forecast_fits_after(last)
                    .map_err(|why| RequestError {
                        code: ErrorCode::InvalidTimestamp,
                        message: format!(
                            "{name}: last timestamp `{}`: {why}",
                            crate::forecast::excerpt(&text)
                        ),
                    })?;
                Some(last)
            }
            None => None,
        };
        Ok(SeriesInput {
            id,
            values: self.values[(held - shape.window) * width..].to_vec(),
            last_timestamp,
        })
    }
}

/// Formats a shard can be streamed in: one record per line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamFormat {
    Csv,
    JsonLines,
}

impl StreamFormat {
    /// From the object's name: `.jsonl`/`.ndjson` are JSON Lines, `.csv` is CSV; anything else is
    /// refused, because a shard cannot be sniffed without buffering it.
    pub fn from_name(name: &str) -> Option<Self> {
        let lower = name.to_ascii_lowercase();
        if lower.ends_with(".csv") {
            Some(StreamFormat::Csv)
        } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            Some(StreamFormat::JsonLines)
        } else {
            None
        }
    }
}

/// Parses a shard line by line into series, holding one series at a time.
///
/// The input contract that makes this possible: **each series' rows are contiguous** (CSV rows
/// grouped by `id`; a JSON line is a whole series), and a record never spans lines. A CSV series
/// id that comes back after another one is refused, because its first rows are already forecast.
/// Memory is the current series' last two windows plus 8 bytes per id seen (the contiguity check).
pub struct SeriesStream {
    format: StreamFormat,
    shape: RequestShape,
    layout: Option<CsvLayout>,
    current: Option<(Option<String>, SeriesRows)>,
    finished_ids: std::collections::HashSet<u64>,
    line: usize,
    series: usize,
    record: csv::StringRecord,
}

impl SeriesStream {
    /// `shape.max_series` is ignored: a stream has no series cap, only its memory bound.
    pub fn new(format: StreamFormat, shape: RequestShape) -> Self {
        SeriesStream {
            format,
            shape: RequestShape {
                max_series: 1,
                ..shape
            },
            layout: None,
            current: None,
            finished_ids: Default::default(),
            line: 0,
            series: 0,
            record: csv::StringRecord::new(),
        }
    }

    /// Series completed so far.
    pub fn series(&self) -> usize {
        self.series
    }

    /// Feeds the next line (without or with its `\n`); returns a series when this line completed one.
    pub fn push_line(&mut self, line: &[u8]) -> Result<Option<SeriesInput>, RequestError> {
        self.line += 1;
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        // A UTF-8 byte-order mark (spreadsheet exports) is not part of the first column's name.
        let line = match self.line {
            1 => line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line),
            _ => line,
        };
        if line.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        match self.format {
            StreamFormat::JsonLines => self.push_json_line(line).map(Some),
            StreamFormat::Csv => self.push_csv_line(line),
        }
    }

    /// Ends the input: the last series, if any; an input without any series is an error.
    pub fn finish(&mut self) -> Result<Option<SeriesInput>, RequestError> {
        let last = match self.current.take() {
            Some((id, rows)) => Some(self.complete(id, rows)?),
            None => None,
        };
        if self.series == 0 {
            return Err(RequestError {
                code: ErrorCode::EmptyRequest,
                message: match (self.format, &self.layout) {
                    (StreamFormat::Csv, Some(_)) => "CSV has a header but no rows".into(),
                    (StreamFormat::Csv, None) => format!(
                        "the CSV file is empty; it needs a header naming {} and at least {} rows",
                        self.shape.features.join(", "),
                        self.shape.window
                    ),
                    (StreamFormat::JsonLines, _) => {
                        "no series: the input has no non-blank lines".into()
                    }
                },
            });
        }
        Ok(last)
    }

    fn push_json_line(&mut self, line: &[u8]) -> Result<SeriesInput, RequestError> {
        let mut parsed = parse_json_lines(line, &self.shape).map_err(|e| RequestError {
            code: e.code,
            message: e
                .message
                .replacen("line 1:", &format!("line {}:", self.line), 1),
        })?;
        // Each line is a whole series, so lines need no order (and ids are optional, as in a
        // request): only CSV rows must keep a series together.
        let series = parsed.pop().expect("one non-blank line is one series");
        self.series += 1;
        Ok(series)
    }

    fn push_csv_line(&mut self, line: &[u8]) -> Result<Option<SeriesInput>, RequestError> {
        let mut record = std::mem::take(&mut self.record);
        let parsed = self.split_csv_line(line, &mut record);
        let result = parsed.and_then(|()| self.push_csv_record(&record));
        self.record = record;
        result
    }

    /// Splits one CSV line into `record` (reused: no allocation per line once warm). Lines without
    /// quotes, nearly all of them, are split on commas directly, which is what a CSV reader
    /// yields for them; a line with quotes goes through the `csv` crate.
    fn split_csv_line(
        &self,
        line: &[u8],
        record: &mut csv::StringRecord,
    ) -> Result<(), RequestError> {
        let text = std::str::from_utf8(line)
            .map_err(|e| invalid(format!("CSV line {}: not UTF-8: {e}", self.line)))?;
        record.clear();
        if !text.contains('"') {
            for field in text.split(',') {
                record.push_field(field.trim());
            }
            return Ok(());
        }
        *record = csv::ReaderBuilder::new()
            .has_headers(false)
            .trim(csv::Trim::All)
            .from_reader(line)
            .records()
            .next()
            .transpose()
            .map_err(|e| invalid(format!("CSV line {}: {e}", self.line)))?
            .unwrap_or_default();
        Ok(())
    }

    fn push_csv_record(
        &mut self,
        record: &csv::StringRecord,
    ) -> Result<Option<SeriesInput>, RequestError> {
        let Some(layout) = &self.layout else {
            self.layout = Some(CsvLayout::from_header(record, &self.shape)?);
            return Ok(None);
        };
        let id = layout.id(record);
        let continues = matches!(&self.current, Some((current, _)) if current.as_deref() == id);
        let mut completed = None;
        if !continues {
            let id = id.map(str::to_owned);
            if let Some((previous, rows)) = self.current.take() {
                completed = Some(self.complete(previous, rows)?);
            }
            self.check_new_id(id.as_deref())?;
            self.current = Some((id, SeriesRows::default()));
        }
        let layout = self.layout.as_ref().expect("set above");
        let (_, rows) = self.current.as_mut().expect("set above");
        layout.push_row(record, self.line, &self.shape, rows)?;
        rows.keep_last(self.shape.window, self.shape.features.len());
        Ok(completed)
    }

    fn complete(
        &mut self,
        id: Option<String>,
        rows: SeriesRows,
    ) -> Result<SeriesInput, RequestError> {
        let series = rows.into_series(id, &self.shape)?;
        self.series += 1;
        Ok(series)
    }

    /// Refuses an id that already had its rows earlier in the input.
    fn check_new_id(&mut self, id: Option<&str>) -> Result<(), RequestError> {
        use std::hash::{BuildHasher, BuildHasherDefault};
        // A fixed hasher: ids are compared by their 64-bit hashes (8 bytes each, not the ids'
        // text); a collision would refuse an input, never merge two series.
        let hash =
            BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default().hash_one(id);
        if !self.finished_ids.insert(hash) {
            let name = id
                .map(|i| format!("series `{i}`"))
                .unwrap_or_else(|| "a series without an id".into());
            return Err(invalid(format!(
                "line {}: {name} appears again after other series; a shard must keep each series' rows together (sort it by id)",
                self.line
            )));
        }
        Ok(())
    }
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

    fn stream_all(format: StreamFormat, text: &str) -> Result<Vec<SeriesInput>, RequestError> {
        let mut stream = SeriesStream::new(format, shape());
        let mut series = Vec::new();
        for line in text.split_inclusive('\n') {
            series.extend(stream.push_line(line.as_bytes())?);
        }
        series.extend(stream.finish()?);
        Ok(series)
    }

    #[test]
    fn a_stream_yields_what_the_whole_file_parser_yields() {
        let csv = "id,date,OT\na,2018-01-01 00:00:00,1\na,2018-01-01 01:00:00,2\na,2018-01-01 02:00:00,3\n\
                   b,2018-01-01 00:00:00,7\nb,2018-01-01 01:00:00,8\n";
        let streamed = stream_all(StreamFormat::Csv, csv).unwrap();
        assert_eq!(streamed, parse_csv(csv.as_bytes(), &shape()).unwrap());
        assert_eq!(streamed[0].values, vec![2.0, 3.0]);
        assert_eq!(
            streamed[0].last_timestamp,
            parse_rfc3339("2018-01-01T02:00:00Z")
        );
    }

    #[test]
    fn a_long_history_costs_a_stream_at_most_two_windows() {
        let mut stream = SeriesStream::new(StreamFormat::Csv, shape());
        stream.push_line(b"id,OT\n").unwrap();
        for value in 0..10_000 {
            assert!(stream
                .push_line(format!("a,{value}\n").as_bytes())
                .unwrap()
                .is_none());
            let (_, rows) = stream.current.as_ref().unwrap();
            assert!(
                rows.values.len() < 2 * 2,
                "{} values held",
                rows.values.len()
            );
        }
        let last = stream.finish().unwrap().unwrap();
        assert_eq!(last.values, vec![9998.0, 9999.0]);
    }

    #[test]
    fn a_series_that_comes_back_after_another_is_refused_with_its_line() {
        let csv = "id,OT\na,1\na,2\nb,1\nb,2\na,3\n";
        let err = stream_all(StreamFormat::Csv, csv).unwrap_err();
        assert!(
            err.message.starts_with("line 6: series `a` appears again"),
            "{}",
            err.message
        );
        // A JSON line is a whole series: ids are optional and may repeat, as in a request.
        let lines = "{\"values\":[1,2]}\n{\"values\":[3,4]}\n{\"id\":\"a\",\"values\":[5,6]}\n";
        assert_eq!(stream_all(StreamFormat::JsonLines, lines).unwrap().len(), 3);
    }

    #[test]
    fn stream_errors_name_their_line_and_empty_streams_are_errors() {
        let err = stream_all(StreamFormat::JsonLines, "\n{\"values\":[1]}\n").unwrap_err();
        assert!(err.message.starts_with("line 2: "), "{}", err.message);
        let err = stream_all(StreamFormat::Csv, "id,OT\n").unwrap_err();
        assert_eq!(err.code, ErrorCode::EmptyRequest);
        let err = stream_all(StreamFormat::Csv, "").unwrap_err();
        assert!(err.message.contains("empty"), "{}", err.message);
        let err = stream_all(StreamFormat::Csv, "id,OT\na,1\na,x\n").unwrap_err();
        assert!(err.message.contains("CSV line 3"), "{}", err.message);
    }

    #[test]
    fn a_byte_order_mark_before_the_header_is_not_part_of_the_id_column() {
        let csv = "\u{feff}id,OT\na,1\na,2\nb,3\nb,4\n";
        let series = stream_all(StreamFormat::Csv, csv).unwrap();
        assert_eq!(series.len(), 2);
        assert_eq!(series[1].id.as_deref(), Some("b"));
    }

    #[test]
    fn quoted_csv_fields_are_read_as_a_csv_reader_reads_them() {
        let csv = "id,OT\n\"shop 1, aisle 2\",1\n\"shop 1, aisle 2\",2\r\n";
        let series = stream_all(StreamFormat::Csv, csv).unwrap();
        assert_eq!(series[0].id.as_deref(), Some("shop 1, aisle 2"));
        assert_eq!(series[0].values, vec![1.0, 2.0]);
    }

    #[test]
    fn a_shard_format_comes_from_its_name_only() {
        assert_eq!(
            StreamFormat::from_name("a/part-0.CSV"),
            Some(StreamFormat::Csv)
        );
        assert_eq!(
            StreamFormat::from_name("p.ndjson"),
            Some(StreamFormat::JsonLines)
        );
        assert_eq!(StreamFormat::from_name("p.json"), None);
    }
}
