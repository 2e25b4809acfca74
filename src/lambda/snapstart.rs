//! SnapStart: what the function does around the snapshot, through lambda_runtime's hooks
//! ([`lambda_runtime::SnapStartResource`]).
//!
//! With SnapStart, Lambda runs init once, when a version is published, snapshots the microVM, and
//! starts every environment of that version from the snapshot. Init's expensive work (libtorch's
//! static initialisers, the model load and warm-up) is then off the request path, but anything
//! init captured is shared by every restored environment, or stale in all of them:
//!
//! | captured at init | after restore | hook |
//! |---|---|---|
//! | buffered metrics and forecast-log records | would be shipped by every environment, or lost | [`Boundary`] flushes them before the snapshot |
//! | SDK credentials and connections | expired, or to peers that are gone | [`Clients`] rebuilds every client in place |
//! | the environment id, the sampling seed | identical in every environment | [`Identity`] draws both again |
//! | the model | the alias may have moved since publish | [`ModelAlias`] re-reads it and reloads |
//! | ColdStartDuration | not a cold start any user waited for | init skips it; [`Report`] publishes `RestoreDuration` |
//!
//! Registration order is dependency order (lambda_runtime runs `after_restore` in registration
//! order and `before_snapshot` in reverse): the boundary first, so it notes the restore first and
//! flushes last; then the clients, which the alias check needs; the report last, so its duration
//! covers every hook. Each hook logs one `snapstart hook` line with its name and phase.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use lambda_runtime::{BoxFuture, Error, SnapStartResource};

use crate::aws::AwsClients;
use crate::metrics::Metric;
use crate::service::follow::AliasFollower;
use crate::service::Service;

/// Whether Lambda initialises this environment for a snapshot
/// (`AWS_LAMBDA_INITIALIZATION_TYPE=snap-start`).
pub fn is_snap_start() -> bool {
    std::env::var("AWS_LAMBDA_INITIALIZATION_TYPE").as_deref() == Ok("snap-start")
}

/// The hooks, in registration order.
pub fn resources(
    service: &Service,
    clients: &AwsClients,
    follower: Option<Arc<AliasFollower>>,
) -> Vec<Arc<dyn SnapStartResource>> {
    let restored_at = Arc::new(Mutex::new(None));
    vec![
        Arc::new(Boundary {
            service: service.clone(),
            restored_at: restored_at.clone(),
        }),
        Arc::new(Clients(clients.clone())),
        Arc::new(Identity(service.clone())),
        Arc::new(ModelAlias(follower)),
        Arc::new(Report {
            service: service.clone(),
            restored_at,
        }),
    ]
}

fn logged(hook: &'static str, phase: &'static str) {
    tracing::info!(hook, phase, "snapstart hook");
}

/// Flushes before the snapshot (last of all); notes when the restore began (first of all).
struct Boundary {
    service: Service,
    restored_at: Arc<Mutex<Option<Instant>>>,
}

impl SnapStartResource for Boundary {
    fn before_snapshot(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            logged("flush", "before_snapshot");
            crate::service::build::flush(&self.service).await;
            Ok(())
        })
    }

    fn after_restore(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            *self.restored_at.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            logged("flush", "after_restore");
            Ok(())
        })
    }
}

/// Rebuilds the SDK clients: new credentials (Lambda hands a restored environment its own), new
/// connection pools.
struct Clients(AwsClients);

impl SnapStartResource for Clients {
    fn after_restore(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            self.0.rebuild().await;
            logged("aws-clients", "after_restore");
            Ok(())
        })
    }
}

/// Draws the environment's id and the backtest sampling seed again.
struct Identity(Service);

impl SnapStartResource for Identity {
    fn after_restore(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let (snapshot_id, environment_id) = crate::entropy::renew();
            self.0.reseed_sampling(crate::entropy::random_u64());
            tracing::info!(
                hook = "identity",
                phase = "after_restore",
                snapshot_environment_id = format!("{snapshot_id:016x}"),
                environment_id = format!("{environment_id:016x}"),
                "snapstart hook"
            );
            Ok(())
        })
    }
}

/// Re-reads the `live` alias: a version promoted after the snapshot was taken is served from the
/// first request. A registry that cannot be read leaves the snapshot's model serving (logged and
/// retried on the follower's period), as it would in a warm environment.
struct ModelAlias(Option<Arc<AliasFollower>>);

impl SnapStartResource for ModelAlias {
    fn after_restore(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            if let Some(follower) = &self.0 {
                follower.check_now().await;
            }
            logged("model-alias", "after_restore");
            Ok(())
        })
    }
}

/// Publishes `RestoreDuration` and the memory of the restored environment.
struct Report {
    service: Service,
    restored_at: Arc<Mutex<Option<Instant>>>,
}

impl SnapStartResource for Report {
    fn after_restore(&self) -> BoxFuture<'_, Result<(), Error>> {
        Box::pin(async move {
            let started = *self.restored_at.lock().unwrap_or_else(|p| p.into_inner());
            let telemetry = self.service.telemetry();
            if let Some(started) = started {
                let ms = started.elapsed().as_secs_f64() * 1e3;
                telemetry.record(Metric::RestoreDuration, ms);
                tracing::info!(
                    hook = "report",
                    phase = "after_restore",
                    restore_ms = ms,
                    "snapstart hook"
                );
            }
            telemetry.record_process_memory();
            crate::service::build::flush(&self.service).await;
            Ok(())
        })
    }
}
