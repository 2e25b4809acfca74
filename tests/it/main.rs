//! The integration tests: one binary, so the crate and libtorch are linked once.
//!
//! Each module specifies one part of the product as its users meet it (the HTTP API, the Lambda
//! function, the batch run, the infrastructure, ...), with real parts: libtorch, the AWS SDKs
//! against emulators on 127.0.0.1, the real binary under the Lambda Runtime API. `common` holds
//! the helpers they share.

mod common;

mod bad_requests;
mod batch_shards;
mod batching;
mod champion;
mod cli;
mod comparison;
mod drift;
mod entry_points;
mod evaluation_at_scale;
mod http_api;
mod infra;
mod intervals;
mod lambda;
mod layout;
mod model_loading;
mod monitoring;
mod notifications;
mod oip;
mod openapi;
mod parity;
mod registry;
mod shutdown;
mod signing;
mod slow_clients;
mod snapstart;
