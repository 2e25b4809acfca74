//! A champion/challenger replay of ETTh1's test period: a registry on moto with a live version and
//! a challenger in its shadow, the service following the alias, four forecasts a day (live
//! answers, the shadow forecasts after), the day's actuals, and the scheduled evaluation with its
//! decision. Time-ordered like the interval replay ([`super::replay`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use lstm_forecast::forecast::SeriesInput;
use lstm_forecast::infer::InferenceHandle;
use lstm_forecast::metrics::ServerMetrics;
use lstm_forecast::model::Model;
use lstm_forecast::monitor::observations::Observation;
use lstm_forecast::monitor::store::{AccuracyStore, ForecastLog};
use lstm_forecast::registry::roles::{ChallengeMode, Decision};
use lstm_forecast::registry::{Registry, RegistryRef, DEFAULT_PROBATION};
use lstm_forecast::service::challenge::ChallengePolicy;
use lstm_forecast::service::follow::AliasFollower;
use lstm_forecast::service::jobs::{evaluate, EvaluationConfig};
use lstm_forecast::service::{Limits, Monitoring, Service};
use lstm_forecast::source::s3::S3ModelSource;
use lstm_forecast::source::DirectorySource;

use super::emulators::{tools_bin, Moto};
use super::replay::{etth1_ot, TEST_START};
use super::repo_path;

/// ETTh1's test period holds 119 whole days after the first origin's week of history.
pub const TEST_DAYS: usize = 119;

/// The bundled model under `version` with the weights of its linear autoregressive part (the
/// skip connection from the window to the forecast) scaled by `factor`: a real network of the
/// same contract that forecasts worse the further `factor` is from 1.
pub fn weakened_bundled(version: &str, factor: f64) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (ok, printed) = super::outcome(
        std::process::Command::new(tools_bin("python"))
            .arg(repo_path("tests/support/weaken_model.py"))
            .arg(repo_path("model_artifacts/etth1-ot-lstm"))
            .arg(dir.path())
            .args([version, "10", &factor.to_string()]),
    );
    assert!(ok, "{printed}");
    dir
}

/// What a replay saw.
#[derive(Debug, Default)]
pub struct ChallengeOutcome {
    /// The first decision the evaluation took, with the day (0-based) it took it.
    pub decision: Option<(usize, Decision)>,
    /// The live version at the end.
    pub live: String,
    /// The last evaluation's report folder.
    pub report: String,
    pub forecasts_logged: u64,
}

/// A service following a registry on moto, as `serve` does: `live` and `challenger` (model
/// directories) published, `live` live, `challenger` challenging in `mode` on `fraction` of the
/// series, forecasts logged to `s3://BUCKET/monitoring`.
pub struct Challenged {
    pub service: Service,
    pub follower: AliasFollower,
    pub log: Arc<ForecastLog>,
    pub store: AccuracyStore,
    /// The versions published: live's, then the challenger's.
    pub versions: [String; 2],
    _cache: tempfile::TempDir,
}

pub async fn challenged(
    moto: &Moto,
    bucket: &str,
    (live, challenger): (&Path, &Path),
    mode: ChallengeMode,
    fraction: f64,
) -> Challenged {
    let s3 = moto.s3().await;
    let registry = Registry::new(
        s3.clone(),
        RegistryRef::parse(&format!("s3://{bucket}/models/etth1")).unwrap(),
    );
    let mut versions = Vec::new();
    for dir in [live, challenger] {
        let artifacts = DirectorySource::new(dir).read().unwrap();
        versions.push(registry.publish(&artifacts, &|_| {}).await.unwrap());
    }
    registry
        .promote(&versions[0], DEFAULT_PROBATION)
        .await
        .unwrap();
    registry
        .challenge(&versions[1], mode, fraction)
        .await
        .unwrap();
    let store = AccuracyStore::new(s3.clone(), &format!("s3://{bucket}/monitoring")).unwrap();
    let log = Arc::new(ForecastLog::new(store.clone()));
    let live_model = Model::load(&DirectorySource::new(live).read().unwrap()).unwrap();
    let (handle, _engine) = InferenceHandle::spawn(live_model, 64);
    let monitoring = Monitoring {
        forecast_log: Some(log.clone()),
        ..Monitoring::default()
    };
    let service = Service::new(handle, ServerMetrics::new(), Limits::default(), monitoring);
    let cache = tempfile::tempdir().unwrap();
    let follower = AliasFollower::new(
        S3ModelSource::new(registry.clone(), cache.path().to_path_buf()),
        service.clone(),
        Duration::from_secs(3600),
    );
    follower.check_now().await;
    Challenged {
        service,
        follower,
        log,
        store,
        versions: [versions[0].clone(), versions[1].clone()],
        _cache: cache,
    }
}

/// Publishes `live` and `challenger` (model directories) to a registry on `moto`, makes `live`
/// live with `challenger` in shadow on every series, and replays up to `days` days of ETTh1's test
/// period until the evaluation decides.
pub async fn replay_challenge(
    moto: &Moto,
    bucket: &str,
    live: &Path,
    challenger: &Path,
    days: usize,
    policy: ChallengePolicy,
) -> ChallengeOutcome {
    let Challenged {
        service,
        follower,
        log,
        store,
        versions,
        _cache,
    } = challenged(moto, bucket, (live, challenger), ChallengeMode::Shadow, 1.0).await;
    assert_eq!(
        service.shadow().map(|s| s.0),
        Some(versions[1].clone()),
        "the challenger serves in live's shadow"
    );
    let config = EvaluationConfig {
        grace: Duration::from_secs(3600),
        recalibration: Default::default(),
        challenge: policy,
    };
    let rows = etth1_ot();
    let mut outcome = ChallengeOutcome::default();
    let mut expected_records = 0;
    for day in 0..days {
        let day_start = TEST_START + 24 * day;
        for origin in [day_start, day_start + 6, day_start + 12, day_start + 18] {
            let series = SeriesInput {
                id: Some("etth1-ot".into()),
                values: rows[origin - 168..origin].iter().map(|r| r.1).collect(),
                last_timestamp: lstm_forecast::time::parse_rfc3339(&rows[origin - 1].0),
            };
            service.forecast(vec![series], None).await.unwrap();
            expected_records += u64::from(service.shadow().is_some()) + 1;
            // The shadow's forecast is in the store before the next origin, six hours later.
            super::eventually(
                Duration::from_secs(30),
                "the live and shadow forecasts are written",
                || async {
                    log.flush().await;
                    (log.written() >= expected_records).then_some(())
                },
            )
            .await;
        }
        let actuals: Vec<Observation> = rows[day_start..day_start + 24]
            .iter()
            .map(|(t, value)| Observation {
                series_id: "etth1-ot".into(),
                timestamp: lstm_forecast::time::parse_rfc3339(t).unwrap(),
                value: *value,
            })
            .collect();
        store.append_actuals(&actuals).await.unwrap();
        let summary = evaluate(&service, Some(&follower), &config).await.unwrap();
        outcome.report = summary.report;
        if let Some(decision) = summary.decision {
            outcome.decision = Some((day, decision));
            break;
        }
    }
    outcome.live = service.model().metadata().version.clone();
    outcome.forecasts_logged = log.written();
    outcome
}
