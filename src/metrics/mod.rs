//! One metrics facade, three sinks.
//!
//! Code records [`Metric`] samples on a [`Telemetry`] handle; each configured sink turns them into
//! its own wire format, reading what it needs of a metric from its row of [`METRICS`]:
//!
//! - [`prometheus`]: the `serve` process's `/metrics` (pull; updated at once).
//! - [`cloudwatch`]: the CloudWatch `PutMetricData` API, aggregated in process into
//!   Values/Counts and flushed on a period, at the end of a job and on shutdown (push).
//! - [`emf`]: Embedded Metric Format lines on stdout, the default inside Lambda (no API call on
//!   the request path; CloudWatch Logs extracts the metrics).
//!
//! Recording never blocks on I/O: sinks aggregate under a short mutex and ship in the background,
//! so a CloudWatch outage or throttling cannot fail or slow a forecast.

pub mod aggregate;
pub mod cloudwatch;
pub mod emf;
pub mod process;
pub mod prometheus;
pub mod telemetry;

pub use process::resident_set_bytes;
pub use prometheus::ServerMetrics;
pub use telemetry::{
    Dimensions, Kind, Metric, MetricSink, MetricSpec, Prometheus, RequestOutcome, Sample, SinkKind,
    Telemetry, Traffic, DIM_FEATURE, DIM_HORIZON_BUCKET, DIM_LEVEL, DIM_MODEL, DIM_MODEL_VERSION,
    DIM_STAGE, METRICS,
};
