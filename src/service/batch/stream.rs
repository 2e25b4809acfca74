//! Batch forecasts over a stream: a shard of any size in, JSON Lines out, in bounded memory.
//!
//! The input is read a line at a time ([`SeriesStream`]: each series' rows contiguous), forecast
//! through [`Service::forecast`] in chunks (so a batch records the same metrics, drift and forecast
//! log as an API request), and written out as parts of a fixed size that the caller uploads as it
//! receives them. At any moment the stream holds one chunk being parsed, one being forecast, one
//! part being filled and the parts in the caller's queue: nothing grows with the shard.

use serde_json::json;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::forecast::{ForecastResponse, RequestError};
use crate::input::{SeriesStream, StreamFormat};
use crate::service::{Service, ServiceError};

/// S3's smallest part (every part but the last must reach it).
pub const MIN_PART_BYTES: usize = 5 * 1024 * 1024;

/// S3's largest part.
pub const MAX_PART_BYTES: usize = 5 * 1024 * 1024 * 1024;

/// Longest line a shard may have: far above any series (a JSON line of 8 windows of 168 rows),
/// far below the function's memory. A file without newlines stops here instead of filling it.
pub const MAX_LINE_BYTES: usize = 16 * 1024 * 1024;

/// How a stream is cut up.
#[derive(Debug, Clone, Copy)]
pub struct StreamOptions {
    /// Series per forward pass.
    pub chunk_series: usize,
    /// Output bytes per part handed to the caller (the last part may be smaller).
    pub part_bytes: usize,
}

/// What a finished stream produced.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSummary {
    pub series: usize,
    pub parts: usize,
    pub bytes: u64,
    /// The model version of the last chunk (a reload mid-shard may change it; each line names its own).
    pub model_version: String,
}

/// Why a stream stopped.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    /// The shard breaks the input contract: permanent, the message names the line or series.
    #[error(transparent)]
    Input(#[from] RequestError),
    /// A line longer than [`MAX_LINE_BYTES`]: not one record per line.
    #[error("line {line} is longer than {MAX_LINE_BYTES} bytes: a shard holds one record per line, ended by \\n")]
    LineTooLong { line: usize },
    /// The input could not be read to its end (the store failed mid-stream).
    #[error("reading the input failed after {lines} lines: {source}")]
    Read {
        lines: usize,
        source: std::io::Error,
    },
    #[error("forecast failed: {0}")]
    Forecast(#[from] ServiceError),
    /// The caller stopped taking parts (its upload failed; it holds the reason).
    #[error("the output was closed before the stream ended")]
    OutputClosed,
}

impl BatchError {
    /// Whether running the same shard again may succeed (the input itself is not at fault).
    pub fn is_transient(&self) -> bool {
        !matches!(self, BatchError::Input(_) | BatchError::LineTooLong { .. })
    }
}

/// One forecast as a JSON Lines record: what every batch output holds.
pub fn forecast_lines(response: &ForecastResponse, out: &mut Vec<u8>) {
    let model = &response.model;
    for forecast in &response.forecasts {
        let mut line = json!({"id": forecast.id, "values": forecast.values, "timestamps": forecast.timestamps,
                              "model": {"name": model.name, "version": model.version}});
        if !forecast.intervals.is_empty() {
            line["intervals"] = json!(forecast.intervals);
        }
        serde_json::to_writer(&mut *out, &line).expect("JSON values serialise");
        out.push(b'\n');
    }
}

type InFlight = JoinHandle<Result<ForecastResponse, ServiceError>>;

/// A forecast task that is cancelled when dropped before it was awaited.
struct AbortOnDrop(Option<InFlight>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = self.0.take() {
            task.abort();
        }
    }
}

/// Forecasts every series of `input` (with intervals at `intervals`, none when empty) and sends the JSON Lines output to `parts` in parts of
/// `options.part_bytes` (at least one part, even for a shard whose every line is blank, so the
/// caller always has an object to complete or abort).
///
/// One chunk is forecast while the next is parsed, so parsing costs no engine time.
pub async fn forecast_stream<R: AsyncBufRead + Unpin>(
    service: &Service,
    mut input: R,
    format: StreamFormat,
    options: StreamOptions,
    intervals: &[f64],
    parts: mpsc::Sender<Vec<u8>>,
    request_id: &str,
) -> Result<StreamSummary, BatchError> {
    let chunk_series = options.chunk_series.max(1);
    let mut stream = SeriesStream::new(format, service.request_shape(chunk_series));
    let mut summary = StreamSummary {
        series: 0,
        parts: 0,
        bytes: 0,
        model_version: service.model().metadata().version.clone(),
    };
    let mut output = Output {
        parts: &parts,
        part: Vec::with_capacity(options.part_bytes + 64 * 1024),
        part_bytes: options.part_bytes,
        sent_parts: 0,
        sent_bytes: 0,
    };
    let mut line = Vec::with_capacity(4096);
    let mut chunk = Vec::with_capacity(chunk_series);
    // Aborted if the stream stops early: nothing is forecast (or logged) for an output that
    // will not be written.
    let mut in_flight = AbortOnDrop(None);
    let mut lines = 0;
    // Series parsed so far, and their ids: one id twice in a shard is refused like in a request.
    let (mut parsed, mut ids) = (0, crate::forecast::UniqueIds::default());
    loop {
        line.clear();
        let read = (&mut input)
            .take(MAX_LINE_BYTES as u64 + 1)
            .read_until(b'\n', &mut line)
            .await
            .map_err(|source| BatchError::Read { lines, source })?;
        if line.len() > MAX_LINE_BYTES {
            return Err(BatchError::LineTooLong { line: lines + 1 });
        }
        let ended = read == 0;
        lines += usize::from(!ended);
        let completed = if ended {
            stream.finish()?
        } else {
            stream.push_line(&line)?
        };
        if let Some(series) = completed {
            ids.check(series.id.as_deref(), parsed)?;
            parsed += 1;
            chunk.push(series);
        }
        if chunk.len() == chunk_series || (ended && !chunk.is_empty()) {
            let next = spawn_forecast(service, std::mem::take(&mut chunk), intervals, request_id);
            chunk.reserve(chunk_series);
            if let Some(previous) = in_flight.0.replace(next) {
                output.write(collect(previous, &mut summary).await?).await?;
            }
        }
        if ended {
            break;
        }
    }
    if let Some(last) = in_flight.0.take() {
        output.write(collect(last, &mut summary).await?).await?;
    }
    output.finish(&mut summary).await?;
    Ok(summary)
}

fn spawn_forecast(
    service: &Service,
    chunk: Vec<crate::forecast::SeriesInput>,
    intervals: &[f64],
    request_id: &str,
) -> InFlight {
    let (service, intervals, request_id) =
        (service.clone(), intervals.to_vec(), request_id.to_owned());
    tokio::spawn(async move {
        service
            .forecast_with_intervals(chunk, &intervals, Some(&request_id))
            .await
    })
}

async fn collect(
    in_flight: InFlight,
    summary: &mut StreamSummary,
) -> Result<ForecastResponse, BatchError> {
    let response = in_flight
        .await
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))?;
    summary.series += response.forecasts.len();
    summary.model_version.clone_from(&response.model.version);
    Ok(response)
}

/// The part being filled, and where full parts go.
struct Output<'a> {
    parts: &'a mpsc::Sender<Vec<u8>>,
    part: Vec<u8>,
    part_bytes: usize,
    sent_parts: usize,
    sent_bytes: u64,
}

impl Output<'_> {
    async fn write(&mut self, response: ForecastResponse) -> Result<(), BatchError> {
        forecast_lines(&response, &mut self.part);
        // Parts are cut at exactly `part_bytes`, mid-line if need be: S3 joins them byte for byte.
        while self.part.len() >= self.part_bytes {
            let rest = self.part.split_off(self.part_bytes);
            let full = std::mem::replace(&mut self.part, rest);
            self.send(full).await?;
        }
        Ok(())
    }

    async fn send(&mut self, part: Vec<u8>) -> Result<(), BatchError> {
        self.sent_parts += 1;
        self.sent_bytes += part.len() as u64;
        self.parts
            .send(part)
            .await
            .map_err(|_| BatchError::OutputClosed)
    }

    /// Sends the last part: the remainder, or an empty part when nothing at all was sent.
    async fn finish(mut self, summary: &mut StreamSummary) -> Result<(), BatchError> {
        let last = std::mem::take(&mut self.part);
        if !last.is_empty() || self.sent_parts == 0 {
            self.send(last).await?;
        }
        summary.parts = self.sent_parts;
        summary.bytes = self.sent_bytes;
        Ok(())
    }
}
