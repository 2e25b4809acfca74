//! Alarm-driven rollback: when an alarm named in `ROLLBACK_ALARMS` enters ALARM, the registry's
//! `live` alias moves back to the version that served before, and this instance follows it.

use aws_lambda_events::cloudwatch_alarms::CloudWatchAlarmStateValue;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::events::InvocationError;
use crate::metrics::Metric;
use crate::registry::{RegistryError, RollbackOutcome};
use crate::service::follow::AliasFollower;
use crate::service::Service;

/// Acts on one alarm state change. `follower` is `None` when the model is not an S3 alias, in which
/// case a rollback is a configuration error.
pub async fn on_alarm(
    service: &Service,
    follower: Option<&AliasFollower>,
    rollback_alarms: &[String],
    alarm: &str,
    state: Option<(CloudWatchAlarmStateValue, DateTime<Utc>)>,
) -> Result<Value, InvocationError> {
    let Some((value, changed_at)) = state else {
        return Err(InvocationError::new(
            "InvalidEvent",
            format!("alarm event for {alarm} carries no state"),
        ));
    };
    if value != CloudWatchAlarmStateValue::Alarm {
        return Ok(
            json!({"action": "none", "reason": format!("alarm {alarm} is {value:?}, not ALARM")}),
        );
    }
    if !rollback_alarms.iter().any(|a| a == alarm) {
        return Ok(
            json!({"action": "none", "reason": format!("alarm {alarm} is not in ROLLBACK_ALARMS {rollback_alarms:?}")}),
        );
    }
    let Some(follower) = follower else {
        return Err(InvocationError::new(
            "NotConfigured",
            format!("alarm {alarm} asks for a rollback, but MODEL_URI is not an S3 alias (s3://BUCKET/models/NAME)"),
        ));
    };
    // The same alarm state change delivered twice (EventBridge retries, two targets) must roll
    // back once: the registry keys idempotency on this trigger.
    let trigger = format!("alarm:{alarm}@{}", changed_at.to_rfc3339());
    let outcome = follower
        .registry()
        .rollback(&trigger)
        .await
        .map_err(|e| match e {
            RegistryError::NoPreviousVersion { .. } => {
                InvocationError::new("RollbackImpossible", e.to_string())
            }
            other => InvocationError::new("Registry", other.to_string()),
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
    Ok(json!({"action": action, "alarm": alarm, "from": from, "to": to, "serving": serving}))
}
