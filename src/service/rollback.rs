//! Alarm-driven rollback, decided here for every adapter: when an alarm named in
//! `ROLLBACK_ALARMS` enters ALARM, the registry's `live` alias moves back to the version that
//! served before, and this instance follows it.
//!
//! When the version the last promotion replaced is still shadowed on probation, and the two were
//! compared at enough origins, the comparison decides ([`super::challenge::against_previous`]):
//! roll back only if live forecasts significantly worse than the previous version did on the
//! same actuals. Otherwise the model stays (a `keep` decision in the alias history): when every
//! version is wrong, the inputs or the world changed, and the alarm, which stays in ALARM, tells
//! people. Without that evidence, the rule below decides.
//!
//! The accuracy alarm watches all versions together (its dimensions cannot follow the alias), so
//! before acting the function checks that the version live *now* earned it: its own WAPE, from
//! the evaluation that last scored it, is above the threshold on at least `min_pairs` scored
//! pairs, and the alias has not moved within the cooldown. Without that, a bad version's forecasts
//! still being scored for a day after a rollback would roll back its successor too.
//!
//! And it checks that the event is true. Anyone allowed to invoke the function could send an
//! "alarm state change"; so CloudWatch itself is asked ([`AlarmStates`]): the alarm must be in
//! ALARM now, since the very state change the event reports (same time, to the second). The
//! idempotency key is CloudWatch's time, not the event's, so forged events cannot walk the history
//! back one version each.

use chrono::{DateTime, Utc};
use serde::Serialize;

use std::sync::Arc;
use std::time::Duration;

use super::challenge::{against_previous, not_worse_reason, AgainstPrevious};
use super::jobs::JobError;
use crate::metrics::Metric;
use crate::monitor::verdict::{DecisionRule, Evidence};
use crate::registry::roles::{Decision, DecisionAction};
use crate::registry::{RegistryError, RollbackOutcome};
use crate::service::follow::AliasFollower;
use crate::service::Service;

/// An alarm as CloudWatch holds it now.
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmState {
    pub in_alarm: bool,
    /// When it entered its current state.
    pub updated_at: Option<DateTime<Utc>>,
}

/// Why an alarm's state could not be read.
#[derive(Debug, thiserror::Error)]
#[error("DescribeAlarms for {alarm}: {cause}")]
pub struct AlarmLookupError {
    pub alarm: String,
    pub cause: String,
}

/// The port to the alarms' real state (CloudWatch in AWS).
pub trait AlarmStates: Send + Sync {
    /// The alarm's current state; `None` when no such alarm exists.
    fn current<'a>(
        &'a self,
        alarm: &'a str,
    ) -> crate::source::BoxFuture<'a, Result<Option<AlarmState>, AlarmLookupError>>;
}

/// [`AlarmStates`] from CloudWatch's `DescribeAlarms`.
pub struct CloudWatchAlarms(pub crate::aws::Shared<aws_sdk_cloudwatch::Client>);

impl AlarmStates for CloudWatchAlarms {
    fn current<'a>(
        &'a self,
        alarm: &'a str,
    ) -> crate::source::BoxFuture<'a, Result<Option<AlarmState>, AlarmLookupError>> {
        Box::pin(async move {
            let described = self
                .0
                .current()
                .describe_alarms()
                .alarm_names(alarm)
                .send()
                .await
                .map_err(|e| AlarmLookupError {
                    alarm: alarm.to_string(),
                    cause: aws_sdk_cloudwatch::error::DisplayErrorContext(&e).to_string(),
                })?;
            Ok(described
                .metric_alarms()
                .iter()
                .map(|a| {
                    (
                        a.state_value(),
                        state_changed_at(
                            a.state_transitioned_timestamp(),
                            a.state_updated_timestamp(),
                        ),
                    )
                })
                .chain(described.composite_alarms().iter().map(|a| {
                    (
                        a.state_value(),
                        state_changed_at(
                            a.state_transitioned_timestamp(),
                            a.state_updated_timestamp(),
                        ),
                    )
                }))
                .next()
                .map(|(value, updated)| AlarmState {
                    in_alarm: value == Some(&aws_sdk_cloudwatch::types::StateValue::Alarm),
                    updated_at: updated
                        .and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos())),
                }))
        })
    }
}

/// When an alarm entered its state: `StateTransitionedTimestamp`, which only a state change
/// moves (`StateUpdatedTimestamp` also moves with the evaluation's details), or the updated time
/// where CloudWatch (or an emulator) gives no transition time.
fn state_changed_at<'a>(
    transitioned: Option<&'a aws_sdk_cloudwatch::primitives::DateTime>,
    updated: Option<&'a aws_sdk_cloudwatch::primitives::DateTime>,
) -> Option<&'a aws_sdk_cloudwatch::primitives::DateTime> {
    transitioned.or(updated)
}

/// When a rollback alarm may act.
#[derive(Debug, Clone)]
pub struct RollbackPolicy {
    /// Alarm names whose ALARM state asks for a rollback.
    pub alarms: Vec<String>,
    /// The live version's own WAPE must be above this (the accuracy alarm's threshold).
    pub wape_threshold: f64,
    /// ... on at least this many scored (forecast, actual) pairs.
    pub min_pairs: usize,
    /// No rollback within this long after the alias last moved (a promotion or a rollback).
    pub cooldown: Duration,
    /// When live against the previous version is enough evidence (see the module doc).
    pub comparison: DecisionRule,
}

/// An alarm's state change, as an event reports it (not yet verified).
#[derive(Debug, Clone, PartialEq)]
pub struct AlarmChange {
    pub alarm: String,
    /// The state it entered, as the event names it (`ALARM`, `OK`, `INSUFFICIENT_DATA`).
    pub state: String,
    pub changed_at: DateTime<Utc>,
}

impl AlarmChange {
    fn entered_alarm(&self) -> bool {
        self.state.eq_ignore_ascii_case("ALARM")
    }
}

/// What the service did about an alarm state change.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(untagged)]
pub enum RollbackDecision {
    /// Nothing moved; `reason` says why.
    None {
        action: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        alarm: Option<String>,
        reason: String,
    },
    /// The alias moved back (`action: rollback`), or this state change had already moved it
    /// (`action: none`); `serving` is the version this instance serves now.
    Moved {
        action: &'static str,
        alarm: String,
        from: String,
        to: String,
        serving: String,
    },
}

impl RollbackDecision {
    fn none(alarm: Option<&str>, reason: String) -> Self {
        RollbackDecision::None {
            action: "none",
            alarm: alarm.map(str::to_owned),
            reason,
        }
    }
}

/// Acts on one alarm state change. `follower` is `None` when the model is not an S3 alias, in which
/// case a rollback is a configuration error; so is `alarms` being `None` (nothing to verify with).
pub async fn on_alarm(
    service: &Service,
    follower: Option<&AliasFollower>,
    alarms: Option<&Arc<dyn AlarmStates>>,
    policy: &RollbackPolicy,
    change: &AlarmChange,
) -> Result<RollbackDecision, JobError> {
    let alarm = change.alarm.as_str();
    if !change.entered_alarm() {
        return Ok(RollbackDecision::none(
            None,
            format!("alarm {alarm} is {}, not ALARM", change.state),
        ));
    }
    if !policy.alarms.iter().any(|a| a == alarm) {
        return Ok(RollbackDecision::none(
            None,
            format!(
                "alarm {alarm} is not in ROLLBACK_ALARMS {:?}",
                policy.alarms
            ),
        ));
    }
    let Some(follower) = follower else {
        return Err(JobError::NotConfigured(format!(
            "alarm {alarm} asks for a rollback, but MODEL_URI is not an S3 alias (s3://BUCKET/models/NAME)"
        )));
    };
    let Some(alarms) = alarms else {
        return Err(JobError::NotConfigured(format!(
            "alarm {alarm} asks for a rollback, but there is no CloudWatch client to verify it with"
        )));
    };
    let entered_alarm_at = match verify(alarms.as_ref(), alarm, change.changed_at).await? {
        Ok(at) => at,
        Err(reason) => {
            tracing::warn!(alarm, "alarm event not acted on: {reason}");
            return Ok(RollbackDecision::none(Some(alarm), reason));
        }
    };
    let trigger = format!("alarm:{alarm}@{}", entered_alarm_at.to_rfc3339());
    let (alias, comparative) = comparative(service, follower, policy).await?;
    if let Some(reason) = cooldown_refusal(&alias, policy) {
        tracing::info!(alarm, "rollback refused: {reason}");
        return Ok(RollbackDecision::none(Some(alarm), reason));
    }
    let evidence = match comparative {
        AgainstPrevious::Worse { evidence, .. } => Some(evidence),
        AgainstPrevious::NotWorse { previous, evidence } => {
            let verdict = (previous, evidence);
            return keep(service, follower, alarm, &trigger, &alias.version, verdict).await;
        }
        AgainstPrevious::NoEvidence(why) => {
            tracing::info!(alarm, "no comparison with a previous version decides ({why}): the live version's own scores do");
            if let Some(reason) = score_refusal(service, &alias.version, policy).await? {
                tracing::info!(alarm, "rollback refused: {reason}");
                return Ok(RollbackDecision::none(Some(alarm), reason));
            }
            None
        }
    };
    roll_back(service, follower, alarm, &trigger, evidence).await
}

/// The alias, and what the previous version's shadow says about live.
async fn comparative(
    service: &Service,
    follower: &AliasFollower,
    policy: &RollbackPolicy,
) -> Result<(crate::registry::Alias, AgainstPrevious), JobError> {
    let Some((alias, _)) = follower
        .registry()
        .read_alias()
        .await
        .map_err(JobError::Registry)?
    else {
        return Err(JobError::NothingLive);
    };
    let Some(log) = service.forecast_log() else {
        return Err(JobError::NotConfigured(
            "a rollback acts on the versions' scores: set FORECAST_LOG_URI=s3://BUCKET/PREFIX (where evaluate writes them)".into(),
        ));
    };
    let comparisons = log.store().comparisons().await.map_err(JobError::Store)?;
    let verdict = against_previous(&alias, &comparisons, &policy.comparison, chrono::Utc::now());
    Ok((alias, verdict))
}

/// The model stays: the previous version would not have done better. Recorded once per alarm
/// state change, and counted.
async fn keep(
    service: &Service,
    follower: &AliasFollower,
    alarm: &str,
    trigger: &str,
    live: &str,
    (previous, evidence): (String, Evidence),
) -> Result<RollbackDecision, JobError> {
    let reason = not_worse_reason(live, &previous, &evidence);
    let decision = Decision {
        action: DecisionAction::Keep,
        version: live.to_string(),
        against: Some(previous),
        at: crate::registry::now_rfc3339(),
        trigger: trigger.to_string(),
        acted: true,
        reason: reason.clone(),
        evidence: Some(evidence),
    };
    let recorded = follower
        .registry()
        .apply_decision(decision, Duration::ZERO)
        .await
        .map_err(JobError::Registry)?;
    if recorded {
        service.telemetry().record(Metric::ModelDecisions, 1.0);
    }
    tracing::warn!(alarm, "rollback refused: {reason}");
    Ok(RollbackDecision::none(Some(alarm), reason))
}

/// Moves the alias back, once per alarm state change, and follows it.
async fn roll_back(
    service: &Service,
    follower: &AliasFollower,
    alarm: &str,
    trigger: &str,
    evidence: Option<Evidence>,
) -> Result<RollbackDecision, JobError> {
    // The same alarm state change delivered twice (EventBridge retries, two targets) must roll
    // back once: the registry keys idempotency on the trigger, CloudWatch's own time.
    let outcome = follower
        .registry()
        .rollback(trigger, evidence)
        .await
        .map_err(|e| match e {
            RegistryError::NoPreviousVersion { .. } => JobError::RollbackImpossible(e),
            other => JobError::Registry(other),
        })?;
    let (action, from, to) = match outcome {
        RollbackOutcome::RolledBack { from, to } => {
            tracing::warn!(alarm, from = %from, to = %to, "model rolled back");
            service.telemetry().record(Metric::ModelRollbacks, 1.0);
            ("rollback", from, to)
        }
        RollbackOutcome::AlreadyApplied { from, to } => {
            tracing::info!(alarm, from = %from, to = %to, "rollback for this alarm state change was already applied");
            ("none", from, to)
        }
    };
    let serving = follower.switch_to(&to).await;
    Ok(RollbackDecision::Moved {
        action,
        alarm: alarm.to_string(),
        from,
        to,
        serving,
    })
}

/// Why no rollback may happen now: the alias moved within the cooldown.
fn cooldown_refusal(alias: &crate::registry::Alias, policy: &RollbackPolicy) -> Option<String> {
    let moved = crate::time::parse_rfc3339(&alias.updated_at)?;
    let since = (chrono::Utc::now() - moved).to_std().unwrap_or_default();
    (since < policy.cooldown).then(|| {
        format!(
            "the alias moved to {} {}s ago, within the {}s cooldown",
            alias.version,
            since.as_secs(),
            policy.cooldown.as_secs()
        )
    })
}

/// Why the live version's own scores do not justify a rollback, if they do not.
async fn score_refusal(
    service: &Service,
    live: &str,
    policy: &RollbackPolicy,
) -> Result<Option<String>, JobError> {
    let Some(log) = service.forecast_log() else {
        return Err(JobError::NotConfigured(
            "a rollback acts on the live version's own scores: set FORECAST_LOG_URI=s3://BUCKET/PREFIX (where evaluate writes them)".into(),
        ));
    };
    let scores = log.store().latest_scores().await.map_err(JobError::Store)?;
    Ok(match scores.get(live) {
        None => Some(format!(
            "the live version {live} has no scored forecasts yet: the alarm reflects other versions"
        )),
        Some(score) if score.pairs < policy.min_pairs => Some(format!(
            "the live version {live} has {} scored pairs, fewer than the {} a rollback needs",
            score.pairs, policy.min_pairs
        )),
        Some(score) if score.wape <= policy.wape_threshold => Some(format!(
            "the live version {live}'s own WAPE is {:.4}, not above {}: the alarm reflects other versions",
            score.wape, policy.wape_threshold
        )),
        Some(_) => None,
    })
}

/// Checks the event against CloudWatch: the alarm exists, is in ALARM now, and entered it when the
/// event says (to the second). Returns when it entered ALARM, or why the event is not acted on.
async fn verify(
    alarms: &dyn AlarmStates,
    alarm: &str,
    event_time: DateTime<Utc>,
) -> Result<Result<DateTime<Utc>, String>, JobError> {
    let state = alarms
        .current(alarm)
        .await
        .map_err(|e| JobError::AlarmUnverifiable(e.to_string()))?;
    Ok(match state {
        None => Err(format!(
            "CloudWatch has no alarm {alarm}: the event is not genuine"
        )),
        Some(AlarmState {
            in_alarm: false, ..
        }) => Err(format!(
            "CloudWatch holds {alarm} in another state than ALARM: the event is stale or forged"
        )),
        Some(AlarmState {
            updated_at: Some(at),
            ..
        }) if (at - event_time).num_milliseconds().abs() < 1000 => Ok(at),
        Some(AlarmState { updated_at, .. }) => Err(format!(
            "{alarm} entered its current state at {}, not at {} as the event says: stale or forged",
            updated_at.map_or("an unknown time".to_string(), |t| t.to_rfc3339()),
            event_time.to_rfc3339()
        )),
    })
}
