//! `lstm-forecast serve`: the long-running HTTP server (ECS, Kubernetes, a laptop).

use std::time::Duration;

use anyhow::Context;

use lstm_forecast::infer::Batching;
use lstm_forecast::metrics::SinkKind;
use lstm_forecast::model::engine::{
    available_cpus, configure_libtorch, configured_intra_op_threads, default_engine_workers,
    oversubscription_warning, Workload,
};
use lstm_forecast::registry::Registry;
use lstm_forecast::service::build::{compose, fetch_and_load, flush_periodically, ServiceConfig};
use lstm_forecast::service::follow::AliasFollower;
use lstm_forecast::service::Limits;
use lstm_forecast::source::s3::S3ModelSource;
use lstm_forecast::source::ModelUri;

use super::args::{LogDeliveryArg, ServeArgs};
use super::{aws_clients, runtime};
use lstm_forecast::monitor::store::LogDelivery;

pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    configure_libtorch(args.model.threads, Workload::Serving);
    let uri = ModelUri::parse(&args.model.model)?;
    let follow_alias = match &uri {
        ModelUri::S3(model) if model.version.is_none() && args.reload_interval_seconds > 0 => {
            Some(model.clone())
        }
        _ => None,
    };
    let cpus = available_cpus();
    let engine_workers = args
        .engine_workers
        .unwrap_or_else(|| default_engine_workers(cpus))
        .max(1);
    let intra_op_threads = configured_intra_op_threads().max(1);
    if let Some(warning) = oversubscription_warning(engine_workers, intra_op_threads, cpus) {
        tracing::warn!("{warning}");
    }
    // Its OpenMP team must be the only one, or libgomp's threads outnumber the CPUs. Whether the
    // model's engine can use it is known only once the model has loaded (below).
    let express_threads =
        (args.low_latency_engine && intra_op_threads == 1 && cpus > 1).then_some(cpus);
    let mut config = ServiceConfig {
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
        express_threads,
        metrics: args.metrics.config(&[SinkKind::Prometheus], false),
        forecast_log_uri: args.accuracy.forecast_log.clone(),
        forecast_log_delivery: LogDeliveryArg::or(
            args.accuracy.forecast_log_delivery,
            LogDelivery::Objects,
        ),
        backtest_rate: args.accuracy.backtest_rate,
        sampling_seed: args.accuracy.sampling_seed,
    };
    let observations_token = match &args.observations_token_file {
        Some(path) => {
            let token = std::fs::read_to_string(path).with_context(|| {
                format!("reading the observations token from {}", path.display())
            })?;
            let token = token.trim().to_string();
            anyhow::ensure!(
                !token.is_empty(),
                "the observations token file {} is empty",
                path.display()
            );
            Some(token)
        }
        None => args.observations_token.clone().filter(|t| !t.is_empty()),
    };
    let uses_aws = config.metrics.uses_aws()
        || config.forecast_log_uri.is_some()
        || matches!(uri, ModelUri::S3(_));
    let runtime = runtime()?;
    let engine = runtime.block_on(async move {
        let clients = aws_clients(&args.model.aws, uses_aws).await;
        let (model, _) = fetch_and_load(&uri, &args.model.model_cache_dir, &clients).await?;
        // A lone ONNX Runtime forward runs on one thread wherever it runs: the lane would only
        // add its gate (BENCHMARKS.md, issue 20). Decided once; a reloaded model keeps the lanes.
        config.express_threads =
            express_threads.filter(|_| model.forward_engine().spreads_over_intra_op_threads());
        tracing::info!(
            engine_workers,
            intra_op_threads,
            low_latency_engine_threads = config.express_threads.unwrap_or(0),
            forward_engine = model.forward_engine().as_str(),
            max_batch_size = config.batching.max_batch_series,
            "starting the engine threads"
        );
        let composed = compose(model, &config, &clients)?;
        let service = composed.service;
        let (stop_background, background_stopped) = tokio::sync::watch::channel(false);
        let stopped = move || {
            let mut rx = background_stopped.clone();
            async move {
                let _ = rx.wait_for(|stop| *stop).await;
            }
        };
        let follower = follow_alias.map(|model| {
            let source = S3ModelSource::new(
                Registry::new(clients.s3().clone(), model),
                args.model.model_cache_dir.clone(),
            );
            let follower = AliasFollower::new(
                source,
                service.clone(),
                Duration::from_secs(args.reload_interval_seconds),
            );
            tokio::spawn(follower.run(stopped()))
        });
        // Intervals follow the calibration `evaluate` publishes, on the same poll as the model.
        let calibration = (args.reload_interval_seconds > 0 && service.forecast_log().is_some())
            .then(|| {
                tokio::spawn(lstm_forecast::service::follow::follow_calibration(
                    service.clone(),
                    Duration::from_secs(args.reload_interval_seconds),
                    stopped(),
                ))
            });
        // Push sinks and the forecast log ship on a period and once more at shutdown.
        let background = tokio::spawn(flush_periodically(
            service.clone(),
            Duration::from_secs(args.metrics.metrics_flush_seconds.max(1)),
            stopped(),
        ));
        let listener = tokio::net::TcpListener::bind(args.bind)
            .await
            .with_context(|| format!("binding {}", args.bind))?;
        let address = listener.local_addr()?;
        let model = service.model();
        tracing::info!(
            model = %model.metadata().name,
            model_version = %model.metadata().version,
            "listening on http://{address}  (try: curl -s http://{address}/v1/model)"
        );
        drop(model);
        lstm_forecast::model::footprint::release_libtorch_startup_pages_in_background();
        let served = lstm_forecast::http::serve_with(
            listener,
            service,
            lstm_forecast::http::ApiAuth { observations_token },
            lstm_forecast::http::ConnectionLimits {
                header_read_timeout: Duration::from_secs_f64(args.header_timeout_seconds),
                body_read_timeout: Duration::from_secs_f64(args.body_timeout_seconds),
                max_concurrent_requests: args.max_concurrent_requests.max(1),
            },
            lstm_forecast::http::shutdown_signal(),
        )
        .await
        .context("serving HTTP");
        let _ = stop_background.send(true);
        let _ = background.await;
        for task in [follower, calibration].into_iter().flatten() {
            let _ = task.await;
        }
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
