//! Scheduled work that every entry point shares: how a job fails, and the accuracy evaluation as
//! a job of the running service.
//!
//! A job's error carries its kind ([`JobError::kind`]): the Lambda function reports it as the
//! invocation's `errorType`, and `infra/template.yaml` retries on some of them (`ShardFailed`),
//! so each kind is spelt here and nowhere else.

use std::time::Duration;

use chrono::Utc;
use serde::Serialize;

use super::challenge::{challenger_decision, ChallengePolicy};
use super::follow::AliasFollower;
use super::Service;
use crate::monitor::evaluate::{
    evaluate_partition as evaluate_shards, plan_run, reduce_run, run_evaluation_with,
    EvaluationRun, EvaluationWindow, IntervalScores, Recalibration, VersionScores,
};
use crate::monitor::store::{AccuracyStore, StoreError};
use crate::objects::ObjectError;
use crate::registry::roles::Decision;
use crate::registry::RegistryError;

/// Why a job (a batch forecast, a shard, a manifest, an evaluation, a rollback) failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The process is not configured for this job; the message names the setting.
    #[error("{0}")]
    NotConfigured(String),
    /// The job's input breaks its contract (a URI, a format, an interval level).
    #[error("{0}")]
    InvalidInput(String),
    /// A URI outside what the job may read or write.
    #[error("{0}")]
    Forbidden(String),
    #[error("{what} {uri}: {cause}")]
    Object {
        what: &'static str,
        uri: String,
        cause: Box<ObjectError>,
    },
    /// A shard's status object is not what a shard writes.
    #[error("{uri} is not a shard status: {cause}")]
    InvalidStatus { uri: String, cause: String },
    #[error("{0}")]
    ForecastFailed(String),
    /// Some shards of a run failed for good or never reported; the manifest lists them.
    #[error("{0}")]
    BatchIncomplete(String),
    /// Some shards failed for a reason a retry may cure: Step Functions retries on this kind.
    #[error("{0}")]
    ShardFailed(String),
    #[error(transparent)]
    EvaluationFailed(StoreError),
    /// Another evaluation holds the store; this one changed nothing.
    #[error(transparent)]
    EvaluationBusy(StoreError),
    /// A run's reduce step found a partition unfinished; it changed nothing.
    #[error(transparent)]
    EvaluationIncomplete(StoreError),
    #[error(transparent)]
    Store(StoreError),
    #[error(transparent)]
    Registry(RegistryError),
    #[error("no model is live: there is nothing to roll back")]
    NothingLive,
    #[error(transparent)]
    RollbackImpossible(RegistryError),
    /// The alarm's real state could not be read, so nothing may act on it.
    #[error("{0}")]
    AlarmUnverifiable(String),
}

impl JobError {
    /// The error's name as callers and the template see it (the Lambda `errorType`).
    pub fn kind(&self) -> &'static str {
        match self {
            JobError::NotConfigured(_) => "NotConfigured",
            JobError::InvalidInput(_) => "InvalidInput",
            JobError::Forbidden(_) => "Forbidden",
            JobError::Object { .. } => "S3",
            JobError::InvalidStatus { .. } => "InvalidStatus",
            JobError::ForecastFailed(_) => "ForecastFailed",
            JobError::BatchIncomplete(_) => "BatchIncomplete",
            JobError::ShardFailed(_) => "ShardFailed",
            JobError::EvaluationFailed(_) => "EvaluationFailed",
            JobError::EvaluationBusy(_) => "EvaluationBusy",
            JobError::EvaluationIncomplete(_) => "EvaluationIncomplete",
            JobError::Store(_) => "Store",
            JobError::Registry(_) | JobError::NothingLive => "Registry",
            JobError::RollbackImpossible(_) => "RollbackImpossible",
            JobError::AlarmUnverifiable(_) => "AlarmUnverifiable",
        }
    }

    pub(crate) fn object(what: &'static str, uri: &str, cause: ObjectError) -> Self {
        JobError::Object {
            what,
            uri: uri.to_string(),
            cause: Box::new(cause),
        }
    }
}

/// What an evaluation job scored, as the scheduled invocation answers it.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationSummary {
    pub action: &'static str,
    pub run: u64,
    pub report: String,
    pub forecasts_scored: usize,
    pub pairs: usize,
    pub missing_actuals: usize,
    pub scores: std::collections::BTreeMap<String, VersionScores>,
    pub intervals: std::collections::BTreeMap<String, Vec<IntervalScores>>,
    pub recalibrated: Vec<String>,
    /// Each pair of versions compared in this run, with the evidence so far.
    pub compared: Vec<crate::monitor::evaluate::ComparedVersions>,
    /// The champion/challenger decision this run's evidence led to, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub decision: Option<Decision>,
}

/// How the service's scheduled evaluation runs.
#[derive(Debug, Clone, Default)]
pub struct EvaluationConfig {
    /// How long after a forecast's last target time its actuals may still arrive.
    pub grace: Duration,
    /// How the intervals are recalibrated from the latest scored errors.
    pub recalibration: Recalibration,
    /// How a challenger is decided on after the evaluation.
    pub challenge: ChallengePolicy,
}

/// The service's own store, or the error that names the setting.
fn accuracy_store(service: &Service) -> Result<&AccuracyStore, JobError> {
    match service.forecast_log() {
        Some(log) => Ok(log.store()),
        None => Err(JobError::NotConfigured(
            "accuracy evaluation is not configured: set FORECAST_LOG_URI=s3://BUCKET/PREFIX (where forecasts and actuals are stored)".into(),
        )),
    }
}

/// How far an evaluation looks: forecasts of older versions with a longer horizon are found up
/// to the live model's reach.
fn evaluation_window(service: &Service, config: &EvaluationConfig) -> EvaluationWindow {
    let grace =
        chrono::Duration::from_std(config.grace).unwrap_or_else(|_| chrono::Duration::hours(1));
    let model = service.model();
    let metadata = model.metadata();
    EvaluationWindow::for_horizon(metadata.output.horizon, metadata.frequency(), grace)
}

fn evaluation_error(e: StoreError) -> JobError {
    match e {
        StoreError::Busy { .. } | StoreError::RunTaken { .. } => JobError::EvaluationBusy(e),
        StoreError::RunPartMissing { .. } => JobError::EvaluationIncomplete(e),
        StoreError::ShardRange { .. } | StoreError::Layout { .. } => {
            JobError::InvalidInput(e.to_string())
        }
        other => JobError::EvaluationFailed(other),
    }
}

/// Scores the forecasts that the newly arrived actuals complete, publishes the scores and writes a
/// report: the service's own forecast log, looked at as far as the model in service reaches.
/// With the registry's alias (`follower`), then decides about its challenger.
pub async fn evaluate(
    service: &Service,
    follower: Option<&AliasFollower>,
    config: &EvaluationConfig,
) -> Result<EvaluationSummary, JobError> {
    let store = accuracy_store(service)?;
    let run = run_evaluation_with(
        store,
        service.telemetry(),
        Utc::now(),
        evaluation_window(service, config),
        &config.recalibration,
    )
    .await
    .map_err(evaluation_error)?;
    summarise("evaluate", run, service, follower, config).await
}

/// The first step of an evaluation fanned out on a Distributed Map: the next run's plan, and one
/// item per partition for the map.
#[derive(Debug, Clone, Serialize)]
pub struct EvaluationPlanned {
    pub action: &'static str,
    pub run: u64,
    pub shards: u32,
    pub partitions: Vec<PartitionItem>,
}

/// One partition of a run, as the map sends it to the function.
#[derive(Debug, Clone, Serialize)]
pub struct PartitionItem {
    pub action: &'static str,
    pub run: u64,
    pub first: u32,
    pub end: u32,
}

/// Plans the next run in at most `partitions` partitions (or resumes the run planned and not
/// committed).
pub async fn plan_evaluation(
    service: &Service,
    config: &EvaluationConfig,
    partitions: u32,
) -> Result<EvaluationPlanned, JobError> {
    let store = accuracy_store(service)?;
    let window = evaluation_window(service, config);
    let plan = plan_run(store, Utc::now(), window, &config.recalibration, partitions)
        .await
        .map_err(evaluation_error)?;
    let partitions = plan
        .partitions
        .iter()
        .map(|range| PartitionItem {
            action: "evaluate-partition",
            run: plan.run,
            first: range.start,
            end: range.end,
        })
        .collect();
    Ok(EvaluationPlanned {
        action: "evaluate-plan",
        run: plan.run,
        shards: plan.shards,
        partitions,
    })
}

/// What one partition did, and the memory it took: the process's resident set before it and
/// the largest the process has had (Linux; what sizes the function's memory).
#[derive(Debug, Clone, Serialize)]
pub struct PartitionDone {
    pub action: &'static str,
    pub run: u64,
    pub first: u32,
    pub end: u32,
    pub pairs: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rss_before_bytes: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_rss_bytes: Option<f64>,
}

/// Evaluates shards `first..end` of run `run`; a retry scores nothing twice.
pub async fn evaluate_partition(
    service: &Service,
    run: u64,
    first: u32,
    end: u32,
) -> Result<PartitionDone, JobError> {
    let store = accuracy_store(service)?;
    let rss_before_bytes = crate::metrics::process::resident_set_bytes();
    let pairs = match evaluate_shards(store, run, first..end).await {
        Ok(pairs) => pairs,
        Err(e) => {
            service
                .telemetry()
                .record(crate::metrics::Metric::EvaluationPartitionFailures, 1.0);
            tracing::error!(run, first, end, "evaluation partition failed: {e}");
            return Err(evaluation_error(e));
        }
    };
    Ok(PartitionDone {
        action: "evaluate-partition",
        run,
        first,
        end,
        pairs,
        rss_before_bytes,
        peak_rss_bytes: crate::metrics::process::peak_resident_set_bytes(),
    })
}

/// Merges run `run`'s partitions and publishes it once; then decides about the challenger.
pub async fn reduce_evaluation(
    service: &Service,
    follower: Option<&AliasFollower>,
    config: &EvaluationConfig,
    run: u64,
) -> Result<EvaluationSummary, JobError> {
    let store = accuracy_store(service)?;
    let run = reduce_run(store, service.telemetry(), run)
        .await
        .map_err(evaluation_error)?;
    summarise("evaluate-reduce", run, service, follower, config).await
}

async fn summarise(
    action: &'static str,
    run: EvaluationRun,
    service: &Service,
    follower: Option<&AliasFollower>,
    config: &EvaluationConfig,
) -> Result<EvaluationSummary, JobError> {
    let evaluation = run.evaluation;
    let decision = match follower {
        Some(follower) => decide_after_evaluation(service, follower, &config.challenge).await?,
        None => None,
    };
    Ok(EvaluationSummary {
        action,
        run: run.run,
        report: run.report,
        forecasts_scored: evaluation.forecasts_scored,
        pairs: evaluation.pairs,
        missing_actuals: evaluation.missing_actuals,
        scores: evaluation.by_version,
        intervals: evaluation.intervals,
        recalibrated: evaluation.recalibrated,
        compared: evaluation.compared,
        decision,
    })
}

/// Takes the challenger decision the latest comparisons support, if any, and follows a
/// promotion. Returns the decision when it was recorded now.
pub async fn decide_after_evaluation(
    service: &Service,
    follower: &AliasFollower,
    policy: &ChallengePolicy,
) -> Result<Option<Decision>, JobError> {
    let registry = follower.registry();
    let Some((alias, _)) = registry.read_alias().await.map_err(JobError::Registry)? else {
        return Ok(None);
    };
    if alias.challenger.is_none() {
        return Ok(None);
    }
    let Some(log) = service.forecast_log() else {
        return Ok(None);
    };
    let comparisons = log.store().comparisons().await.map_err(JobError::Store)?;
    let now = crate::registry::now_rfc3339();
    let Some(decision) = challenger_decision(&alias, &comparisons, policy, &now) else {
        return Ok(None);
    };
    let recorded = registry
        .apply_decision(decision.clone(), policy.probation)
        .await
        .map_err(JobError::Registry)?;
    if !recorded {
        return Ok(None);
    }
    service
        .telemetry()
        .record(crate::metrics::Metric::ModelDecisions, 1.0);
    tracing::warn!(
        action = decision.action.as_str(),
        version = %decision.version,
        against = decision.against.as_deref().unwrap_or(""),
        acted = decision.acted,
        "champion/challenger decision: {}",
        decision.reason
    );
    if decision.acted {
        // Serve what the alias says now: the promoted version, or live without the challenger.
        follower.check_now().await;
    }
    Ok(Some(decision))
}
