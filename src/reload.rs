//! Hot reload: long-running processes follow the registry's `live` alias.
//!
//! A new version is fetched and loaded (off the async workers) while the old one keeps serving; the
//! swap is a pointer exchange, so no request ever sees a half-loaded model. A failed reload leaves
//! the old model in service and is counted.

use std::time::Duration;

use crate::http::AppState;
use crate::infer::InferenceHandle;
use crate::model::Model;
use crate::registry::{Registry, S3ModelSource};

/// Fetches and loads `version`, then swaps it in.
pub async fn reload(
    registry: &Registry,
    version: &str,
    handle: &InferenceHandle,
) -> Result<(), String> {
    let source = S3ModelSource::new(registry.clone(), crate::registry::default_cache_dir());
    let (artifacts, _) = source
        .fetch_version(version)
        .await
        .map_err(|e| e.to_string())?;
    let model = tokio::task::spawn_blocking(move || Model::load(&artifacts))
        .await
        .map_err(|e| format!("loading panicked: {e}"))?
        .map_err(|e| e.to_string())?;
    let old = handle.swap_model(model);
    tracing::info!(from = %old.metadata().version, to = version, "model reloaded");
    Ok(())
}

/// Polls the alias every `interval` until `shutdown` resolves, reloading on change.
pub async fn watch_alias(
    registry: Registry,
    state: AppState,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the model was just loaded
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            _ = ticker.tick() => {}
        }
        let serving = state.handle().model().metadata().version.clone();
        let live = match registry.live_version().await {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("could not read the model alias (still serving {serving}): {e}");
                continue;
            }
        };
        if live == serving {
            continue;
        }
        match reload(&registry, &live, state.handle()).await {
            Ok(()) => {
                state.metrics().model_reloads.inc();
                state
                    .telemetry()
                    .record(crate::metrics::Metric::ModelReloads, 1.0);
                state.model_changed();
            }
            Err(e) => {
                state.metrics().model_reload_failures.inc();
                state
                    .telemetry()
                    .record(crate::metrics::Metric::ModelReloadFailures, 1.0);
                tracing::error!(version = %live, "model reload failed; still serving {serving}: {e}");
            }
        }
    }
}
