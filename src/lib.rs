//! lstm-forecast: LSTM time-series forecasts on libtorch, served from AWS Lambda, a long-running
//! HTTP server (ECS, Kubernetes, a laptop) or the command line, all on one inference core.
//!
//! # Layout
//!
//! The core knows no transport:
//!
//! - [`model`]: the model contract (`model.json`, [`model::contract`]), the preprocessing it declares
//!   ([`model::preprocess`]), the engine port with its TorchScript implementation
//!   ([`model::engine`]), and [`model::Model`], which ties them into the batched forecast path.
//! - [`forecast`]: forecast requests and answers, parsed and validated without trusting the client.
//! - [`input`]: CSV and JSON files as forecast input (CLI, batch jobs).
//! - [`source`]: the model-source port and model URIs (`bundled`, a directory, the S3 registry).
//! - [`registry`]: the model registry on S3 (versions, the `live` alias with its history,
//!   rollback) and the S3 model source with its on-disk cache.
//! - [`reload`]: hot reload of the alias in long-running processes.
//! - [`allocator`]: jemalloc as the malloc of the whole process, libtorch's included.
//! - [`aws`]: SDK configuration (retries and timeouts sized for Lambda init, emulator endpoints).
//! - [`monitor`]: input drift, accuracy scores, the forecast log and actuals on S3, evaluation
//!   reports.
//! - [`infer`]: the inference handle: dedicated engine threads behind one bounded queue, so libtorch
//!   never runs on async workers.
//! - [`validate`]: `model validate`, which probes a model in a child process so a model that
//!   crashes libtorch cannot crash the caller.
//! - [`metrics`]: one metrics facade ([`metrics::Telemetry`], the metric list in
//!   [`metrics::Metric`]) with three sinks: Prometheus, the CloudWatch API, EMF log lines.
//!
//! Adapters only convert types and errors:
//!
//! - [`http`]: the axum server (`lstm-forecast serve`).
//! - [`lambda`]: the Lambda function: API Gateway events through the same router, scheduled batch
//!   jobs, alarm-driven rollback.
//! - `src/main.rs`: the command line (`serve`, `forecast`, `model ...`).

pub mod allocator;
pub mod aws;
pub mod forecast;
pub mod http;
pub mod infer;
pub mod input;
pub mod lambda;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod registry;
pub mod reload;
pub mod source;
pub mod validate;
