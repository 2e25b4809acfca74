//! Following the registry's `live` alias: the one place that notices a promotion or a rollback and
//! swaps the new version in.
//!
//! A new version is fetched (through the on-disk cache) and loaded off the async workers while the
//! old one keeps serving; the swap is a pointer exchange, so no request ever sees a half-loaded
//! model. A failed reload leaves the old model in service and is counted (`ModelReloadFailures`).
//!
//! `serve` polls on a period ([`AliasFollower::run`]); the Lambda function checks at most once per
//! period at the start of an invocation ([`AliasFollower::check_if_due`]), since a frozen sandbox
//! runs no timers, and right after it moved the alias itself ([`AliasFollower::switch_to`]).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::shadow::Shadow;
use super::Service;
use crate::aws::AwsClients;
use crate::metrics::Metric;
use crate::model::{Model, ModelError};
use crate::monitor::store::ForecastRole;
use crate::registry::roles::ChallengeMode;
use crate::registry::{Alias, Registry, RegistryError};
use crate::source::s3::S3ModelSource;
use crate::source::ModelUri;

/// The follower of `uri`'s alias when `uri` names one (`s3://BUCKET/models/NAME`, no version);
/// `None` for a pinned version, a directory or the bundled model, which never change.
pub fn follower_for(
    uri: &ModelUri,
    clients: &AwsClients,
    cache_dir: &Path,
    service: &Service,
    interval: Duration,
) -> Option<Arc<AliasFollower>> {
    match uri {
        ModelUri::S3(model) if model.version.is_none() => Some(Arc::new(
            AliasFollower::new(
                S3ModelSource::new(
                    Registry::new(clients.s3().clone(), model.clone()),
                    cache_dir.to_path_buf(),
                ),
                service.clone(),
                interval,
            )
            // This process is `lstm-forecast` (serve, lambda): it probes each version in a child
            // of itself before the version may serve here.
            .probing_with(std::env::current_exe().ok(), cache_dir.to_path_buf()),
        )),
        _ => None,
    }
}

/// Why a version could not be put in service.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("fetching version {version}: {cause}")]
    Fetch {
        version: String,
        cause: RegistryError,
    },
    #[error("loading version {version}: {cause}")]
    Load { version: String, cause: ModelError },
    #[error("loading version {version} panicked")]
    Panicked { version: String },
    /// The version failed the child-process probe: it would have crashed or misbehaved here.
    #[error(transparent)]
    Probe(#[from] crate::validate::ProbeError),
    /// With `MODEL_VERIFY_KEY` set, the version's signature does not hold.
    #[error("version {version}: {cause}")]
    Signature {
        version: String,
        cause: crate::model::signature::SignatureError,
    },
}

/// Follows one registry alias for one service.
pub struct AliasFollower {
    source: S3ModelSource,
    service: Service,
    interval: Duration,
    /// When the alias was last read; a mutex so concurrent invocations do not all re-read it.
    last_check: Mutex<Instant>,
    /// The `lstm-forecast` executable that probes a version, and where its scratch copy goes;
    /// `None`: versions are loaded unprobed (a library user without the binary).
    probe: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// How long a version's probe may take before the version is refused.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(120);

impl AliasFollower {
    pub fn new(source: S3ModelSource, service: Service, interval: Duration) -> Self {
        AliasFollower {
            source,
            service,
            interval,
            last_check: Mutex::new(Instant::now()),
            probe: None,
        }
    }

    /// Probes every version in a child process of `exe` (`lstm-forecast model probe`), from a
    /// scratch copy under `scratch_root`, before it may serve: a version that would crash libtorch
    /// (a network traced at a fixed batch dies at batch 64) is refused, and the old one keeps
    /// serving. `None`: no probe.
    pub fn probing_with(
        mut self,
        exe: Option<std::path::PathBuf>,
        scratch_root: std::path::PathBuf,
    ) -> Self {
        self.probe = exe.map(|exe| (exe, scratch_root));
        self
    }

    pub fn registry(&self) -> &Registry {
        self.source.registry()
    }

    /// Reads the alias and swaps its version in if it is not the one serving, and puts the
    /// version it names for live's shadow there. Never fails: a registry or load error is logged
    /// and counted, and the current models keep serving.
    pub async fn check_now(&self) {
        let read = self.registry().read_alias().await;
        match read {
            Ok(Some((alias, _))) => {
                self.switch_to(&alias.version).await;
                self.sync_canary(&alias).await;
                self.sync_shadow(&alias).await;
            }
            Ok(None) => {
                let serving = self.serving_version();
                tracing::warn!("the model alias is gone (still serving {serving})");
            }
            Err(e) => {
                let serving = self.serving_version();
                tracing::warn!("could not read the model alias (still serving {serving}): {e}");
            }
        }
    }

    /// Puts the canary challenger `alias` names beside live (on an engine thread of its own), or
    /// stops it. A failed load is logged and counted, and leaves live answering every series.
    pub async fn sync_canary(&self, alias: &Alias) {
        let wanted = alias
            .challenger
            .as_ref()
            .filter(|c| c.mode == ChallengeMode::Canary)
            .map(|c| (c.version.clone(), c.fraction));
        let current = self.service.canary();
        if wanted == current {
            return;
        }
        let Some((version, fraction)) = wanted else {
            self.service.set_canary(None);
            tracing::info!("canary stopped");
            return;
        };
        match self.load(&version).await {
            Ok(model) => {
                let (handle, _engine) = crate::infer::InferenceHandle::spawn_with(
                    model,
                    CANARY_QUEUE,
                    crate::infer::Batching::default(),
                    1,
                );
                self.service.set_canary(Some((handle, fraction)));
                tracing::info!(canary_version = %version, fraction, "canary started");
            }
            Err(e) => {
                self.service.set_canary(None);
                self.service
                    .telemetry()
                    .record(Metric::ModelReloadFailures, 1.0);
                tracing::error!(canary_version = %version, "could not start the canary; live answers every series: {e}");
            }
        }
    }

    /// Puts the version `alias` wants in live's shadow ([`wanted_shadow`]), loading it if it is
    /// not there yet, or stops the shadow. A failed load is logged and counted, and leaves no
    /// shadow: a shadow never holds up live.
    pub async fn sync_shadow(&self, alias: &Alias) {
        let wanted = wanted_shadow(alias, chrono::Utc::now());
        let current = self.service.shadow();
        let Some((version, role, fraction)) = wanted else {
            if let Some((version, ..)) = current {
                self.service.set_shadow(None);
                tracing::info!(shadow_version = %version, "shadow stopped");
            }
            return;
        };
        if current.as_ref() == Some(&(version.clone(), role, fraction)) {
            return;
        }
        match self.load(&version).await {
            Ok(model) => {
                self.service
                    .set_shadow(Some(Shadow::start(model, role, fraction)));
                tracing::info!(shadow_version = %version, ?role, fraction, "shadow started");
            }
            Err(e) => {
                self.service.set_shadow(None);
                self.service
                    .telemetry()
                    .record(Metric::ModelReloadFailures, 1.0);
                tracing::error!(shadow_version = %version, "could not start the shadow: {e}");
            }
        }
    }

    /// [`AliasFollower::check_now`] at most once per interval (0: every call). A check already
    /// running elsewhere counts as done.
    pub async fn check_if_due(&self) {
        let Ok(mut last) = self.last_check.try_lock() else {
            return;
        };
        if last.elapsed() < self.interval {
            return;
        }
        *last = Instant::now();
        drop(last);
        self.check_now().await;
    }

    /// Puts `version` in service unless it already is. Returns the version serving afterwards; on
    /// failure that is still the old one.
    pub async fn switch_to(&self, version: &str) -> String {
        let serving = self.serving_version();
        if serving == version {
            return serving;
        }
        let telemetry = self.service.telemetry();
        match self.load(version).await {
            Ok(model) => {
                self.service.handle().swap_model(model);
                self.service.model_changed();
                telemetry.record(Metric::ModelReloads, 1.0);
                tracing::info!(from = %serving, to = version, "model reloaded");
                version.to_string()
            }
            Err(e) => {
                telemetry.record(Metric::ModelReloadFailures, 1.0);
                tracing::error!(version, "model reload failed; still serving {serving}: {e}");
                serving
            }
        }
    }

    /// Polls every interval until `shutdown` resolves.
    pub async fn run(self: Arc<Self>, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await; // the first tick is immediate
                             // The live model was just loaded; what serves in its shadow is not yet.
        self.check_now().await;
        loop {
            tokio::select! {
                _ = &mut shutdown => return,
                _ = ticker.tick() => {}
            }
            self.check_now().await;
        }
    }

    fn serving_version(&self) -> String {
        self.service.model().metadata().version.clone()
    }

    async fn load(&self, version: &str) -> Result<Model, ReloadError> {
        let (artifacts, _) =
            self.source
                .fetch_version(version)
                .await
                .map_err(|cause| ReloadError::Fetch {
                    version: version.to_string(),
                    cause,
                })?;
        // The signature first: it costs no libtorch, and a version without the publisher's key
        // gets no further, not even into the probe.
        if let Some(verifier) = crate::model::signature::required() {
            if let Err(cause) = verifier.verify(artifacts.signature.as_deref(), &artifacts.files())
            {
                self.service
                    .telemetry()
                    .record(Metric::ModelVerificationFailures, 1.0);
                return Err(ReloadError::Signature {
                    version: version.to_string(),
                    cause,
                });
            }
        }
        let artifacts = match self.probe.clone() {
            None => artifacts,
            Some((exe, scratch)) => {
                let probed = version.to_string();
                tokio::task::spawn_blocking(move || {
                    crate::validate::probe_artifacts(
                        &exe,
                        &artifacts,
                        &probed,
                        &scratch,
                        PROBE_TIMEOUT,
                    )
                    .map(|()| artifacts)
                })
                .await
                .map_err(|_| ReloadError::Panicked {
                    version: version.to_string(),
                })??
            }
        };
        tokio::task::spawn_blocking(move || Model::load(&artifacts))
            .await
            .map_err(|_| ReloadError::Panicked {
                version: version.to_string(),
            })?
            .map_err(|cause| ReloadError::Load {
                version: version.to_string(),
                cause,
            })
    }
}

/// Requests that may wait for the canary's engine thread.
const CANARY_QUEUE: usize = 64;

/// The version the alias wants in live's shadow, with its role and share of series: the
/// challenger in shadow mode; live itself on a canary's series (so every series the canary
/// answers is forecast by both); else the previous version while on probation.
pub fn wanted_shadow(
    alias: &Alias,
    now: chrono::DateTime<chrono::Utc>,
) -> Option<(String, ForecastRole, f64)> {
    if let Some(challenger) = &alias.challenger {
        match challenger.mode {
            ChallengeMode::Shadow => {
                return Some((
                    challenger.version.clone(),
                    ForecastRole::Challenger,
                    challenger.fraction,
                ))
            }
            ChallengeMode::Canary => {
                return Some((
                    alias.version.clone(),
                    ForecastRole::Live,
                    challenger.fraction,
                ))
            }
        }
    }
    alias
        .on_probation(now)
        .map(|p| (p.version.clone(), ForecastRole::Previous, p.fraction))
}

/// Re-reads the online interval calibration `evaluate` publishes, every `interval`, until
/// `shutdown` (see [`Service::refresh_calibration`]).
pub async fn follow_calibration(
    service: Service,
    interval: Duration,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        service.refresh_calibration().await;
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = &mut shutdown => return,
        }
    }
}
