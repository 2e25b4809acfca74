//! Batch forecasts: series from S3 objects through [`Service::forecast`], forecasts back to S3.
//!
//! - [`stream`]: one shard of any size in, JSON Lines out, in bounded memory.
//! - [`object`]: one whole object in and one out (the scheduled `batch-forecast`).
//! - [`shards`]: a Step Functions run's shards, each streamed into its own output, with a typed
//!   [`ShardStatus`] beside it.
//! - [`manifest`]: the run's [`Manifest`], written once its shards are done.
//!
//! Every job is confined to the prefixes of its [`BatchConfig`]: a scheduled event must not be
//! able to read the registry or overwrite the model alias.
//!
//! [`Service::forecast`]: super::Service::forecast

pub mod config;
pub mod manifest;
pub mod object;
pub mod shards;
pub mod stream;

pub use config::{BatchConfig, Side};
pub use manifest::{write_manifest, Manifest, ManifestWritten};
pub use object::{batch_forecast, BatchForecastSummary};
pub use shards::{forecast_shards, ShardError, ShardJob, ShardRunSummary, ShardStatus};
pub use stream::{
    forecast_lines, forecast_stream, BatchError, StreamOptions, StreamSummary, MAX_LINE_BYTES,
    MAX_PART_BYTES, MIN_PART_BYTES,
};
