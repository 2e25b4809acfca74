//! A second version forecasting in live's shadow: the challenger in `shadow` mode, or the version
//! a promotion replaced while it is on probation. Its forecasts are logged beside live's, with
//! their version and role, so `evaluate` compares the two on the same actuals.
//!
//! **Which series**: those whose id hashes under the role's fraction
//! ([`crate::registry::roles::serves_series`]), the same at every origin, so pairs accrue per
//! series. Only series the forecast log keeps (an id and a last timestamp) are shadowed.
//!
//! **Never in the live answer's way.** The shadow forecast starts after the live answer is
//! complete, on a task of its own, and runs on the shadow's own engine thread behind a queue of
//! [`SHADOW_QUEUE`] requests. When live requests are waiting for an engine thread, or the shadow
//! queue is full, it is skipped and counted (`ShadowSkipped`): under load the live answers keep
//! the CPUs. Its failures are logged and counted the same way, never returned to a caller.

use crate::forecast::SeriesInput;
use crate::infer::{Batching, ForecastOutcome, InferError, InferenceHandle};
use crate::model::Model;
use crate::monitor::store::ForecastRole;
use crate::registry::roles::serves_series;

/// Shadow forecasts that may wait for the shadow's engine thread; beyond, they are skipped.
pub const SHADOW_QUEUE: usize = 2;

/// A version serving in live's shadow, on its own engine thread.
pub struct Shadow {
    pub role: ForecastRole,
    /// Share of series it forecasts.
    pub fraction: f64,
    handle: InferenceHandle,
}

impl Shadow {
    /// Starts the shadow's engine thread. One thread, batching as live's: its forwards share the
    /// CPUs with live's only while live leaves them idle.
    pub fn start(model: Model, role: ForecastRole, fraction: f64) -> Shadow {
        let (handle, _engine) =
            InferenceHandle::spawn_with(model, SHADOW_QUEUE, Batching::default(), 1);
        Shadow {
            role,
            fraction,
            handle,
        }
    }

    pub fn version(&self) -> String {
        self.handle.model().metadata().version.clone()
    }

    /// Forecasts on the shadow's engine thread; refused at once when its queue is full.
    pub async fn forecast(&self, series: Vec<SeriesInput>) -> Result<ForecastOutcome, InferError> {
        self.handle.forecast(series).await
    }

    /// The shadow's model contract.
    pub fn metadata(&self) -> crate::model::contract::ModelMetadata {
        self.handle.model().metadata().clone()
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
