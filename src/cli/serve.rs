//! `lstm-forecast serve`: the long-running HTTP server (ECS, Kubernetes, a laptop).

use std::time::Duration;

use anyhow::Context;

use lstm_forecast::http::{ApiAuth, ConnectionLimits};
use lstm_forecast::infer::Batching;
use lstm_forecast::metrics::SinkKind;
use lstm_forecast::model::engine::{
    available_cpus, configure_libtorch, configured_intra_op_threads, default_engine_workers,
    oversubscription_warning, Workload,
};
use lstm_forecast::monitor::store::LogDelivery;
use lstm_forecast::service::build::{
    compose, fetch_and_load, start_background, BackgroundConfig, ServiceConfig,
};
use lstm_forecast::service::follow::follower_for;
use lstm_forecast::service::Limits;
use lstm_forecast::source::ModelUri;

use super::args::{LogDeliveryArg, ObservationsAuth, ServeArgs};
use super::{aws_clients, runtime};

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    configure_libtorch(args.model.threads, Workload::Serving);
    let uri = ModelUri::parse(&args.model.model)?;
    let mut config = service_config(&args);
    let observations_token = observations_token(&args)?;
    let uses_aws = config.metrics.uses_aws()
        || config.forecast_log_uri.is_some()
        || matches!(uri, ModelUri::S3(_));
    let runtime = runtime()?;
    let engine = runtime.block_on(async move {
        let clients = aws_clients(&args.model.aws, uses_aws).await;
        let (model, _) = fetch_and_load(&uri, &args.model.model_cache_dir, &clients).await?;
        // A lone ONNX Runtime forward runs on one thread wherever it runs: the low-latency lane
        // would only add its gate. Decided once; a reloaded model keeps the lanes.
        config.low_latency_threads = config
            .low_latency_threads
            .filter(|_| model.forward_engine().spreads_over_intra_op_threads());
        tracing::info!(
            engine_workers = config.engine_workers,
            intra_op_threads = configured_intra_op_threads().max(1),
            low_latency_engine_threads = config.low_latency_threads.unwrap_or(0),
            forward_engine = model.forward_engine().as_str(),
            max_batch_size = config.batching.max_batch_series,
            "starting the engine threads"
        );
        let composed = compose(model, &config, &clients)?;
        let service = composed.service;
        let poll = Duration::from_secs(args.reload_interval_seconds);
        let background = start_background(
            &service,
            BackgroundConfig {
                follower: follower_for(&uri, &clients, &args.model.model_cache_dir, &service, poll),
                poll_interval: (args.reload_interval_seconds > 0).then_some(poll),
                flush_period: Duration::from_secs(args.metrics.metrics_flush_seconds.max(1)),
            },
        );
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("binding {}", args.bind))?;
        let address = listener.local_addr()?;
        let metadata = service.model().metadata().clone();
        tracing::info!(
            model = %metadata.name,
            model_version = %metadata.version,
            "listening on http://{address}  (try: curl -s http://{address}/v1/model)"
        );
        lstm_forecast::model::footprint::release_libtorch_startup_pages_in_background();
        let served = lstm_forecast::http::serve_with(
            listener,
            service,
            ApiAuth { observations_token },
            connection_limits(&args),
            lstm_forecast::http::shutdown_signal(),
        )
        .await
        .context("serving HTTP");
        background.stop().await;
        if let Some(sink) = composed.cloudwatch {
            if sink.pending() > 0 {
                tracing::warn!(
                    pending = sink.pending(),
                    "some metrics could not be sent to CloudWatch before shutdown"
                );
            }
        }
        tracing::info!("metrics and forecast log flushed");
        served.map(|()| composed.engine)
    })?;
    // Every service handle is gone: the engine threads drain the queue and exit.
    let _ = engine.join();
    tracing::info!("stopped");
    Ok(())
}

/// The service as the arguments describe it. The low-latency lane is asked for here and kept
/// only if the model's engine can use it (decided once it has loaded).
fn service_config(args: &ServeArgs) -> ServiceConfig {
    let cpus = available_cpus();
    let engine_workers = args
        .engine_workers
        .unwrap_or_else(|| default_engine_workers(cpus))
        .max(1);
    let intra_op_threads = configured_intra_op_threads().max(1);
    if let Some(warning) = oversubscription_warning(engine_workers, intra_op_threads, cpus) {
        tracing::warn!("{warning}");
    }
    // Its OpenMP team must be the only one, or libgomp's threads outnumber the CPUs.
    let low_latency_threads =
        (args.low_latency_engine && intra_op_threads == 1 && cpus > 1).then_some(cpus);
    ServiceConfig {
        limits: Limits {
            max_body_bytes: args.max_body_bytes,
            max_series: args.max_series,
            max_observation_bytes: args.max_observation_bytes,
        },
        max_queue: args.max_queue,
        batching: Batching {
            max_batch_series: args.max_batch_size.max(1),
            max_delay: Duration::from_millis(args.max_batch_delay_ms),
            overflow_depth: args.overflow_depth,
        },
        engine_workers,
        low_latency_threads,
        metrics: args.metrics.config(&[SinkKind::Prometheus], false),
        forecast_log_uri: args.accuracy.forecast_log.clone(),
        forecast_log_shards: args.accuracy.forecast_log_shards,
        forecast_log_delivery: LogDeliveryArg::or(
            args.accuracy.forecast_log_delivery,
            LogDelivery::Objects,
        ),
        backtest_rate: args.accuracy.backtest_rate,
        sampling_seed: args.accuracy.sampling_seed,
    }
}

/// The token that writers of actuals must present, from its file or the environment. Fails
/// closed: a forecast log without a token is refused unless `--observations-auth none` opens it
/// on purpose, since anyone's actuals would then drive the accuracy alarm and the rollback.
fn observations_token(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let token = read_observations_token(args)?;
    match (args.observations_auth, &token) {
        (ObservationsAuth::None, Some(_)) => anyhow::bail!(
            "--observations-auth none with an observations token: drop one of the two"
        ),
        (ObservationsAuth::Token, None) if args.accuracy.forecast_log.is_some() => anyhow::bail!(
            "FORECAST_LOG_URI is set but no OBSERVATIONS_TOKEN (or OBSERVATIONS_TOKEN_FILE): anyone could post the actuals that drive the accuracy alarm and the rollback. Set a token, or pass --observations-auth none (OBSERVATIONS_AUTH=none) if something in front of the server authenticates its callers"
        ),
        (ObservationsAuth::None, None) if args.accuracy.forecast_log.is_some() => {
            tracing::warn!("POST /v1/observations accepts anyone's actuals (--observations-auth none)");
        }
        _ => {}
    }
    Ok(token)
}

fn read_observations_token(args: &ServeArgs) -> anyhow::Result<Option<String>> {
    let Some(path) = &args.observations_token_file else {
        return Ok(args.observations_token.clone().filter(|t| !t.is_empty()));
    };
    let token = std::fs::read_to_string(path)
        .with_context(|| format!("reading the observations token from {}", path.display()))?;
    let token = token.trim().to_string();
    anyhow::ensure!(
        !token.is_empty(),
        "the observations token file {} is empty",
        path.display()
    );
    Ok(Some(token))
}

fn connection_limits(args: &ServeArgs) -> ConnectionLimits {
    ConnectionLimits {
        header_read_timeout: Duration::from_secs_f64(args.header_timeout_seconds),
        body_read_timeout: Duration::from_secs_f64(args.body_timeout_seconds),
        max_concurrent_requests: args.max_concurrent_requests.max(1),
        large_bodies_in_flight: (args.large_body_budget_mib.max(1) as usize) << 20,
        max_connections: args.max_connections.max(1),
    }
}
