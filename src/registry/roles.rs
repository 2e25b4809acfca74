//! The roles beside `live` in the alias document, and the decisions taken about them.
//!
//! - **challenger**: a version under test. In `shadow` mode it forecasts a fraction of series
//!   alongside live, off the response path; in `canary` mode it answers them. Which series is
//!   decided by a hash of the series id ([`serves_series`]), so the same series are compared at
//!   every origin.
//! - **previous**: the version a promotion replaced, shadowed until its probation ends, so that
//!   a rollback can ask whether it would have done better.
//! - **decisions**: every challenge, withdrawal, promotion, rejection, rollback and kept model,
//!   newest last, with its evidence ([`Decision`]); the last [`MAX_DECISIONS`] are kept.
//!
//! The transitions are pure functions of the document; [`super::Registry`] reads it, applies one
//! and writes it back conditionally, so two writers cannot interleave.

use serde::{Deserialize, Serialize};

use super::Alias;
use crate::monitor::verdict::Evidence;

/// How a challenger meets traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeMode {
    /// It forecasts its series after live has answered; callers never see it.
    Shadow,
    /// It answers its series; live forecasts them in its shadow.
    Canary,
}

impl std::str::FromStr for ChallengeMode {
    type Err = RoleError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        match text {
            "shadow" => Ok(ChallengeMode::Shadow),
            "canary" => Ok(ChallengeMode::Canary),
            other => Err(RoleError::Mode(other.to_string())),
        }
    }
}

impl std::fmt::Display for ChallengeMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ChallengeMode::Shadow => "shadow",
            ChallengeMode::Canary => "canary",
        })
    }
}

/// A version under test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenger {
    pub version: String,
    pub mode: ChallengeMode,
    /// Share of series it forecasts, in (0, 1].
    pub fraction: f64,
    pub since: String,
}

/// The version a promotion replaced, shadowed on probation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Previous {
    pub version: String,
    /// When the probation ends: after it, `previous` is no longer shadowed.
    pub until: String,
    /// Share of series it shadows: the challenger's when the promotion was the challenger's
    /// (the same series go on being compared), all of them after a promotion by hand.
    #[serde(default = "all_series")]
    pub fraction: f64,
}

fn all_series() -> f64 {
    1.0
}

/// What was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecisionAction {
    Challenge,
    Withdraw,
    /// The challenger became live.
    Promote,
    /// The challenger was withdrawn for its results.
    Reject,
    /// Live moved back to an earlier version.
    Rollback,
    /// An alarm asked for a rollback and the model stayed: the earlier version would not have
    /// done better.
    Keep,
}

impl DecisionAction {
    pub fn as_str(self) -> &'static str {
        match self {
            DecisionAction::Challenge => "challenge",
            DecisionAction::Withdraw => "withdraw",
            DecisionAction::Promote => "promote",
            DecisionAction::Reject => "reject",
            DecisionAction::Rollback => "rollback",
            DecisionAction::Keep => "keep",
        }
    }
}

/// One decision, as the alias history keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Decision {
    pub action: DecisionAction,
    /// The version decided about: the challenger, or live for a rollback or a kept model.
    pub version: String,
    /// The version it was compared with, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub against: Option<String>,
    pub at: String,
    /// What asked: `cli`, `evaluation`, `alarm:NAME@TIME`.
    pub trigger: String,
    /// False when the decision was only recorded (automatic promotion is off).
    pub acted: bool,
    pub reason: String,
    /// `reference` is `against`, `challenger` is `version`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
}

/// Decisions kept in the alias document, newest last.
pub const MAX_DECISIONS: usize = 200;

/// Why a role cannot change.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error("`{0}` is not a challenge mode (shadow or canary)")]
    Mode(String),
    #[error("the fraction {0} is not in (0, 1]")]
    Fraction(f64),
    #[error("{0} is live already: a challenger must be another version")]
    AlreadyLive(String),
    #[error("no challenger to withdraw or decide about")]
    NoChallenger,
    #[error(
        "the challenger is {current}, not {asked}: the alias changed since the decision was taken"
    )]
    OtherChallenger { current: String, asked: String },
}

/// Whether the series `id` is among the `fraction` of series a challenger forecasts: the same
/// answer for the same id in every process and at every origin (FNV-1a, not the std hasher,
/// whose keys differ per process, then SplitMix64's finaliser: FNV alone leaves ids that differ
/// in their last character, `sensor-1` and `sensor-2`, close in the high bits).
pub fn serves_series(id: &str, fraction: f64) -> bool {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in id.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash = (hash ^ (hash >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    hash = (hash ^ (hash >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    hash ^= hash >> 31;
    // The top 53 bits as a uniform draw in [0, 1).
    ((hash >> 11) as f64 / (1u64 << 53) as f64) < fraction
}

impl Alias {
    /// Records a decision, keeping the newest [`MAX_DECISIONS`].
    pub fn record(&mut self, decision: Decision) {
        self.decisions.push(decision);
        let excess = self.decisions.len().saturating_sub(MAX_DECISIONS);
        self.decisions.drain(..excess);
    }

    /// Names `version` the challenger (replacing any other).
    pub fn challenge(
        &mut self,
        version: &str,
        mode: ChallengeMode,
        fraction: f64,
        now: &str,
    ) -> Result<(), RoleError> {
        if !(fraction > 0.0 && fraction <= 1.0) {
            return Err(RoleError::Fraction(fraction));
        }
        if version == self.version {
            return Err(RoleError::AlreadyLive(version.to_string()));
        }
        self.challenger = Some(Challenger {
            version: version.to_string(),
            mode,
            fraction,
            since: now.to_string(),
        });
        self.record(Decision {
            action: DecisionAction::Challenge,
            version: version.to_string(),
            against: Some(self.version.clone()),
            at: now.to_string(),
            trigger: "cli".into(),
            acted: true,
            reason: format!("{mode} on {:.0}% of series", fraction * 100.0),
            evidence: None,
        });
        Ok(())
    }

    /// Ends the challenge; returns the withdrawn version.
    pub fn withdraw(&mut self, now: &str, trigger: &str) -> Result<String, RoleError> {
        let challenger = self.challenger.take().ok_or(RoleError::NoChallenger)?;
        self.record(Decision {
            action: DecisionAction::Withdraw,
            version: challenger.version.clone(),
            against: Some(self.version.clone()),
            at: now.to_string(),
            trigger: trigger.to_string(),
            acted: true,
            reason: "withdrawn".into(),
            evidence: None,
        });
        Ok(challenger.version)
    }

    /// Makes `version` live; the version it replaces becomes `previous` until `probation_until`,
    /// and a challenger of that version is done. Returns the version replaced.
    pub fn make_live(&mut self, version: &str, now: &str, probation_until: &str) -> String {
        let replaced = std::mem::replace(&mut self.version, version.to_string());
        self.history.push(version.to_string());
        self.updated_at = now.to_string();
        let was_challenger = self.challenger.take_if(|c| c.version == version);
        self.previous = Some(Previous {
            version: replaced.clone(),
            until: probation_until.to_string(),
            fraction: was_challenger.map_or(1.0, |c| c.fraction),
        });
        replaced
    }

    /// Applies a decision the evaluation or an alarm took: a promotion makes the challenger live
    /// (the replaced version on probation until `probation_until`), a rejection ends the
    /// challenge, a kept model changes no role. A decision only recorded (`acted: false`) changes
    /// no role either. The same decision twice in a row (same action, version, trigger and
    /// whether it was acted on: an alarm delivered twice, a verdict recorded again by the next
    /// evaluation) is recorded once. Returns whether the document changed.
    pub fn apply(&mut self, decision: Decision, probation_until: &str) -> Result<bool, RoleError> {
        if matches!(
            decision.action,
            DecisionAction::Promote | DecisionAction::Reject
        ) {
            self.challenger_named(&decision.version)?;
        }
        let repeated = self.decisions.last().is_some_and(|last| {
            last.action == decision.action
                && last.version == decision.version
                && last.acted == decision.acted
                && last.trigger == decision.trigger
        });
        if repeated {
            return Ok(false);
        }
        if decision.acted {
            match decision.action {
                DecisionAction::Promote => {
                    self.make_live(&decision.version, &decision.at, probation_until);
                }
                DecisionAction::Reject => self.challenger = None,
                _ => {}
            }
        }
        self.record(decision);
        Ok(true)
    }

    /// The challenger, if it is `version`.
    pub fn challenger_named(&self, version: &str) -> Result<&Challenger, RoleError> {
        match &self.challenger {
            Some(c) if c.version == version => Ok(c),
            Some(c) => Err(RoleError::OtherChallenger {
                current: c.version.clone(),
                asked: version.to_string(),
            }),
            None => Err(RoleError::NoChallenger),
        }
    }

    /// The previous version while its probation lasts at `now`.
    pub fn on_probation(&self, now: chrono::DateTime<chrono::Utc>) -> Option<&Previous> {
        self.previous
            .as_ref()
            .filter(|p| crate::time::parse_rfc3339(&p.until).is_some_and(|until| now < until))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alias(live: &str) -> Alias {
        Alias {
            version: live.into(),
            history: vec![live.into()],
            updated_at: "2026-01-01T00:00:00Z".into(),
            last_rollback: None,
            challenger: None,
            previous: None,
            decisions: Vec::new(),
        }
    }

    #[test]
    fn a_series_is_always_served_by_the_same_role_and_fractions_are_honoured() {
        let ids: Vec<String> = (0..10_000).map(|i| format!("sensor-{i}")).collect();
        let share = ids.iter().filter(|id| serves_series(id, 0.2)).count() as f64 / 1e4;
        assert!((share - 0.2).abs() < 0.02, "{share}");
        assert!(ids.iter().all(|id| serves_series(id, 1.0)));
        // The same id, the same answer; a larger fraction keeps the smaller one's series.
        assert!(ids
            .iter()
            .filter(|id| serves_series(id, 0.1))
            .all(|id| serves_series(id, 0.1) && serves_series(id, 0.5)));
    }

    #[test]
    fn a_promotion_keeps_the_replaced_version_on_probation_and_ends_its_challenge() {
        let mut a = alias("1");
        a.challenge("2", ChallengeMode::Shadow, 0.5, "t1").unwrap();
        assert!(a.challenge("1", ChallengeMode::Shadow, 0.5, "t1").is_err());
        assert!(a.challenge("3", ChallengeMode::Canary, 0.0, "t1").is_err());
        let replaced = a.make_live("2", "t2", "2026-02-01T00:00:00Z");
        assert_eq!((replaced.as_str(), a.version.as_str()), ("1", "2"));
        assert_eq!(a.challenger, None);
        assert_eq!(a.previous.as_ref().unwrap().version, "1");
        assert_eq!(a.history, ["1", "2"]);
        let during = crate::time::parse_rfc3339("2026-01-15T00:00:00Z").unwrap();
        let after = crate::time::parse_rfc3339("2026-02-02T00:00:00Z").unwrap();
        assert!(a.on_probation(during).is_some() && a.on_probation(after).is_none());
    }

    #[test]
    fn the_alias_keeps_the_newest_decisions() {
        let mut a = alias("1");
        for i in 0..MAX_DECISIONS + 5 {
            a.challenge(&format!("v{i}"), ChallengeMode::Shadow, 0.5, "t")
                .unwrap();
        }
        assert_eq!(a.decisions.len(), MAX_DECISIONS);
        assert_eq!(
            a.decisions.last().unwrap().version,
            format!("v{}", MAX_DECISIONS + 4)
        );
        assert_eq!(
            a.withdraw("t", "cli").unwrap(),
            format!("v{}", MAX_DECISIONS + 4)
        );
        assert!(matches!(
            a.withdraw("t", "cli"),
            Err(RoleError::NoChallenger)
        ));
    }

    fn decided(action: DecisionAction, version: &str, acted: bool) -> Decision {
        Decision {
            action,
            version: version.into(),
            against: Some("1".into()),
            at: "2026-01-10T00:00:00Z".into(),
            trigger: "evaluation".into(),
            acted,
            reason: "test".into(),
            evidence: None,
        }
    }

    #[test]
    fn a_decision_applies_to_the_challenger_it_was_taken_on_and_only_once() {
        let mut a = alias("1");
        a.challenge("2", ChallengeMode::Shadow, 0.5, "t").unwrap();
        // A decision about another version than the challenger changes nothing.
        assert!(a
            .apply(decided(DecisionAction::Promote, "3", true), "u")
            .is_err());
        // Recorded but not acted on: no role moves, and the same verdict is recorded once.
        assert!(a
            .apply(decided(DecisionAction::Promote, "2", false), "u")
            .unwrap());
        assert!(!a
            .apply(decided(DecisionAction::Promote, "2", false), "u")
            .unwrap());
        assert_eq!((a.version.as_str(), a.challenger.is_some()), ("1", true));
        // Acted on: the challenger is live, and the old live on probation.
        assert!(a
            .apply(decided(DecisionAction::Promote, "2", true), "u")
            .unwrap());
        assert_eq!(a.version, "2");
        assert_eq!(a.previous.as_ref().unwrap().version, "1");
        assert!(a
            .apply(decided(DecisionAction::Reject, "2", true), "u")
            .is_err());
    }

    #[test]
    fn documents_written_before_roles_existed_still_read() {
        let old = r#"{"version":"1","history":["1"],"updated_at":"2026-01-01T00:00:00Z"}"#;
        let a: Alias = serde_json::from_str(old).unwrap();
        assert_eq!(a, alias("1"));
    }
}
