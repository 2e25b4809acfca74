//! A second version forecasting in live's shadow: the challenger in `shadow` mode, or the version
//! a promotion replaced while it is on probation. Its forecasts are logged beside live's, with
//! their version and role, so `evaluate` compares the two on the same actuals.
//!
//! **Which series**: those whose id hashes under the role's fraction
//! ([`crate::registry::roles::serves_series`]), the same at every origin, so pairs accrue per
//! series. Only series the forecast log keeps (an id and a last timestamp) are shadowed.
//!
//! **Never in the live answer's way.** The shadow forecast starts after the live answer is
//! complete, on a task of its own. It waits for live's engine to have been idle for
//! [`SHADOW_QUIET`] (a forward cannot be interrupted), then runs on the shadow's own engine
//! thread, a `SCHED_IDLE` one that only gets CPU time nothing else wants. With [`SHADOW_QUEUE`]
//! shadow forecasts already pending, or no such gap in the traffic within [`SHADOW_PATIENCE`], it
//! is skipped and counted (`ShadowSkipped`): under sustained load the shadow yields everything,
//! and its comparisons accrue in the traffic's gaps. Its failures are logged and counted the same
//! way, never returned to a caller.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::forecast::SeriesInput;
use crate::infer::{ForecastOutcome, InferError, InferenceHandle};
use crate::model::Model;
use crate::monitor::store::ForecastRole;
use crate::registry::roles::serves_series;

/// Shadow forecasts that may wait for a quiet moment and the shadow's engine thread; beyond,
/// they are skipped.
pub const SHADOW_QUEUE: usize = 2;

/// How long live's engine must have been idle (nothing queued or running, no request arriving)
/// before a shadow forward starts. A forward cannot be interrupted, and on machines whose CPUs
/// are hyperthreads of one core even an idle-priority forward slows a live one beside it; so the
/// shadow waits for a gap in the traffic several forwards long.
pub const SHADOW_QUIET: Duration = Duration::from_millis(5);

/// How long a shadow forecast waits for such a gap before it is skipped.
pub const SHADOW_PATIENCE: Duration = Duration::from_secs(1);

/// A version serving in live's shadow, on its own engine thread.
pub struct Shadow {
    pub role: ForecastRole,
    /// Share of series it forecasts.
    pub fraction: f64,
    handle: InferenceHandle,
    /// Shadow forecasts waiting or running.
    pending: AtomicUsize,
}

impl Shadow {
    /// Starts the shadow's engine thread, a background one
    /// ([`InferenceHandle::spawn_background`]).
    pub fn start(model: Model, role: ForecastRole, fraction: f64) -> Shadow {
        let (handle, _engine) = InferenceHandle::spawn_background(model, SHADOW_QUEUE);
        Shadow {
            role,
            fraction,
            handle,
            pending: AtomicUsize::new(0),
        }
    }

    pub fn version(&self) -> String {
        self.handle.model().metadata().version.clone()
    }

    /// The shadow's engine: idle priority, a queue of [`SHADOW_QUEUE`].
    pub fn handle(&self) -> &InferenceHandle {
        &self.handle
    }

    /// Forecasts on the shadow's engine thread once `live` has been quiet for [`SHADOW_QUIET`];
    /// `Ok(None)` when [`SHADOW_QUEUE`] forecasts are already pending, or no such gap came within
    /// [`SHADOW_PATIENCE`]: skipped.
    pub async fn forecast_when_quiet(
        &self,
        live: &InferenceHandle,
        series: Vec<SeriesInput>,
    ) -> Result<Option<ForecastOutcome>, InferError> {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= SHADOW_QUEUE {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            return Ok(None);
        }
        let answer = self.after_a_quiet_moment(live, series).await;
        self.pending.fetch_sub(1, Ordering::AcqRel);
        answer
    }

    async fn after_a_quiet_moment(
        &self,
        live: &InferenceHandle,
        series: Vec<SeriesInput>,
    ) -> Result<Option<ForecastOutcome>, InferError> {
        let deadline = Instant::now() + SHADOW_PATIENCE;
        loop {
            let quiet = live.quiet_for();
            if quiet >= SHADOW_QUIET {
                return self.handle.forecast(series).await.map(Some);
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            // Looked at again when this gap, if it lasts, is long enough.
            tokio::time::sleep(SHADOW_QUIET - quiet).await;
        }
    }

    /// The shadow's model.
    pub fn model(&self) -> std::sync::Arc<Model> {
        self.handle.model()
    }

    /// Whether this series is among the shadow's.
    pub fn selects(&self, series: &SeriesInput) -> bool {
        series.last_timestamp.is_some()
            && series
                .id
                .as_deref()
                .is_some_and(|id| serves_series(id, self.fraction))
    }
}
