//! The command line's commands, one module each; `main.rs` parses and dispatches.
//!
//! Each command only converts: arguments to library configuration, results to output and exit
//! codes. Models load through [`lstm_forecast::service::build::fetch_and_load`], and `serve` is
//! composed by [`lstm_forecast::service::build::compose`], the same root as the Lambda function.

pub mod args;
pub mod batch;
pub mod evaluate;
pub mod forecast;
pub mod lambda;
pub mod model;
pub mod probe;
pub mod serve;

use anyhow::Context;

use lstm_forecast::aws::AwsClients;
use lstm_forecast::model::engine::{configure_libtorch, Workload};
use lstm_forecast::model::Model;
use lstm_forecast::service::build::{compose, Composed, MetricsConfig, ServiceConfig};
use lstm_forecast::service::Limits;
use lstm_forecast::source::ModelUri;

use args::{AwsArgs, ModelArgs};

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The AWS clients: configured the standard way when `needed`; otherwise ones that never look for
/// credentials or a region (asking the instance metadata service costs a network round trip on
/// every local start, and seconds where a firewall drops the packets; figures: BENCHMARKS.md,
/// "AWS configuration at a local start").
pub async fn aws_clients(aws: &AwsArgs, needed: bool) -> AwsClients {
    if needed {
        AwsClients::load(aws.aws_endpoint_url.as_deref()).await
    } else {
        AwsClients::offline()
    }
}

/// The service of a one-off command (`forecast`, `batch`): one request at a time, `max_series`
/// series per forward.
pub fn compose_one_off(
    model: Model,
    max_series: usize,
    metrics: MetricsConfig,
    clients: &AwsClients,
) -> anyhow::Result<Composed> {
    let config = ServiceConfig {
        limits: Limits {
            max_series,
            ..Limits::default()
        },
        ..ServiceConfig::one_at_a_time(metrics)
    };
    Ok(compose(model, &config, clients)?)
}

/// Fetches, checks, loads and warms up a model for a one-off command.
pub fn load_model(args: &ModelArgs, workload: Workload) -> anyhow::Result<Model> {
    configure_libtorch(args.threads, workload);
    let uri = ModelUri::parse(&args.model)?;
    runtime()?.block_on(async {
        let clients = aws_clients(&args.aws, matches!(uri, ModelUri::S3(_))).await;
        let (model, _) =
            lstm_forecast::service::build::fetch_and_load(&uri, &args.model_cache_dir, &clients)
                .await?;
        anyhow::Ok(model)
    })
}
