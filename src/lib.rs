//! lstm-forecast: LSTM time-series forecasts on libtorch, served from AWS Lambda, a long-running
//! HTTP server (ECS, Kubernetes, a laptop) or the command line, all on one inference core.
//!
//! # Layout
//!
//! The core knows no transport:
//!
//! - [`service`]: **the forecast service**, the one path every entry point takes
//!   ([`service::Service::forecast`]: validate, run the engine, record drift, backtests, the
//!   forecast log and metrics), and every decision an adapter would otherwise take:
//!   - [`service::build`], the one composition root (`serve`, `lambda`, the CLI) and the
//!     background tasks that keep a service current;
//!   - [`service::follow`], following the registry's `live` alias;
//!   - [`service::batch`], batch forecasts: whole objects, Step Functions shards streamed in
//!     bounded memory, and the run's typed manifest;
//!   - [`service::jobs`], how a job fails (one error kind per Lambda `errorType`) and the accuracy
//!     evaluation as a job;
//!   - [`service::rollback`], the alarm-driven rollback decision, verified against CloudWatch.
//! - [`model`]: the model contract (`model.json`, [`model::contract`]), the preprocessing it declares
//!   ([`model::preprocess`]), the engine port with its TorchScript implementation
//!   ([`model::engine`]) and its ONNX Runtime one, which runs the forwards when the model ships
//!   `model.onnx` ([`model::onnx`]),
//!   [`model::Model`], which ties them into the batched forecast path, and
//!   split-conformal calibration of its intervals ([`model::calibrate`]).
//! - [`infer`]: the inference handle: dedicated engine threads behind one bounded queue, so libtorch
//!   never runs on async workers; overflow threads join the first once the queue is deep, and
//!   with libtorch a low-latency engine thread answers lone requests on every CPU.
//! - [`forecast`]: forecast requests and answers, parsed and validated without trusting the client.
//! - [`input`]: CSV and JSON files as forecast input (CLI, batch jobs).
//! - [`oip`]: the Open Inference Protocol v2: its tensors to forecast requests and back (the
//!   `/v2` routes and their metadata), no transport.
//! - [`time`]: timestamps as the API and the stores write them (a leaf).
//! - [`source`]: the model-source port, model URIs, the bundled model and directories;
//!   [`source::s3`], the S3 registry as a source with its on-disk cache.
//! - [`registry`]: the model registry on S3 (versions, the `live` alias with its history, rollback).
//! - [`objects`]: S3 objects (get, put, head, list) with errors that name the object.
//! - [`aws`]: SDK configuration (retries and timeouts sized for Lambda init, emulator endpoints)
//!   and the shared clients, rebuilt in place after a SnapStart restore.
//! - [`entropy`]: what must differ between execution environments (an id, sampling draws),
//!   drawn from the OS and drawn again after a SnapStart restore (a leaf).
//! - [`monitor`]: input drift, accuracy scores, actuals, the forecast log and actuals on S3
//!   ([`monitor::store`]), the online recalibration of intervals ([`monitor::calibration`]), and
//!   [`monitor::evaluate`], the evaluation in parts (pairing and scoring, windows, reading what
//!   arrived, recalibration, the report and its chart).
//! - [`metrics`]: one metrics facade ([`metrics::Telemetry`]) over one metric table
//!   ([`metrics::METRICS`]: name, unit, kind, Prometheus name and buckets per metric) with three
//!   sinks: Prometheus, the CloudWatch API, EMF log lines.
//! - [`validate`]: `model validate`, which probes a model in a child process so a model that
//!   crashes libtorch cannot crash the caller.
//! - [`allocator`]: jemalloc as the malloc of the whole process, libtorch's included.
//!
//! Adapters only convert types and errors, and no core module imports one:
//!
//! - [`http`]: the axum router and server (`lstm-forecast serve`), which also classifies its
//!   routes for the metrics (forecast, other API, probe).
//! - [`lambda`]: the Lambda function: events by shape ([`lambda::events`]) into the service's
//!   router, jobs and rollback decision, their answers into JSON and their errors into
//!   `errorType`s; SnapStart's snapshot and restore hooks ([`lambda::snapstart`]).
//! - `src/main.rs` and `src/cli/`: the command line (`serve`, `forecast`, `batch`, `model ...`,
//!   `evaluate`, `lambda`).
//!
//! Neither adapter reaches the stores (`objects`, `registry`, `source`, `monitor::store`) but
//! through the service; `tests/it/layout.rs` holds the layout to these rules, no import cycle and
//! no function over 100 lines.

pub mod allocator;
pub mod aws;
pub mod entropy;
pub mod forecast;
pub mod http;
pub mod infer;
pub mod input;
pub mod lambda;
pub mod metrics;
pub mod model;
pub mod monitor;
pub mod objects;
pub mod oip;
pub mod registry;
pub mod service;
pub mod source;
pub mod time;
pub mod validate;
