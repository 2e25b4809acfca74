//! Champion/challenger decisions, taken for every adapter after each scheduled evaluation, and
//! the evidence a rollback asks for.
//!
//! The evaluation compares every pair of versions that forecast the same targets
//! ([`crate::monitor::verdict`]). Here that evidence meets the registry's roles:
//!
//! - **A challenger** is promoted when it forecasts better than live at the policy's alpha after
//!   enough compared origins, with no horizon bucket significantly worse; it is rejected when it
//!   forecasts worse, or when no difference shows after the maximum number of origins.
//! - **A rollback** asks whether the previous version, shadowed on probation since the promotion,
//!   would have done better on the same actuals ([`against_previous`]); see
//!   [`super::rollback`].
//!
//! Each decision is written to the alias history with its evidence, by a conditional write that
//! names the challenger it was taken on (a decision about a challenger since replaced fails), and
//! counted in `ModelDecisions`. With automatic promotion off, decisions are recorded and counted,
//! never acted on, and the same verdict is recorded once.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::monitor::verdict::{Comparisons, DecisionRule, Evidence, Verdict};
use crate::registry::roles::{Decision, DecisionAction};
use crate::registry::{Alias, DEFAULT_PROBATION};

/// How the evaluation decides about a challenger.
#[derive(Debug, Clone)]
pub struct ChallengePolicy {
    pub rule: DecisionRule,
    /// Act on promotions and rejections; when false they are only recorded and notified.
    pub auto_promote: bool,
    /// How long a replaced version stays shadowed as `previous`.
    pub probation: Duration,
}

impl Default for ChallengePolicy {
    fn default() -> Self {
        ChallengePolicy {
            rule: DecisionRule::default(),
            auto_promote: true,
            probation: DEFAULT_PROBATION,
        }
    }
}

/// What the comparisons say of the challenger, as a decision to take; `None` without a
/// challenger, without evidence, or while the evidence is undecided.
pub fn challenger_decision(
    alias: &Alias,
    comparisons: &Comparisons,
    policy: &ChallengePolicy,
    now: &str,
) -> Option<Decision> {
    let challenger = alias.challenger.as_ref()?;
    let (live, version) = (&alias.version, &challenger.version);
    let evidence = policy.rule.evidence(&comparisons.between(live, version)?)?;
    let origins = evidence.origins;
    let measured = describe(&evidence);
    let (action, reason) = match policy.rule.verdict(&evidence) {
        Verdict::Better => (
            DecisionAction::Promote,
            format!("{version} forecasts better than {live}: {measured}"),
        ),
        Verdict::Worse => (
            DecisionAction::Reject,
            format!("{version} forecasts worse than {live}: {measured}"),
        ),
        Verdict::NoDifference => (
            DecisionAction::Reject,
            format!(
                "no significant difference between {version} and {live} after {origins} origins (at most {}): {measured}",
                policy.rule.max_origins
            ),
        ),
        Verdict::Undecided => return None,
    };
    Some(Decision {
        action,
        version: version.clone(),
        against: Some(live.clone()),
        at: now.to_string(),
        trigger: "evaluation".into(),
        acted: policy.auto_promote,
        reason,
        evidence: Some(evidence),
    })
}

/// `N origins, loss ratio R, p = P`.
fn describe(evidence: &Evidence) -> String {
    format!(
        "{} origins, {:?} loss ratio {:.3}, p = {}",
        evidence.origins,
        evidence.loss,
        evidence.ratio,
        evidence
            .p_value
            .map_or_else(|| "n/a".to_string(), |p| format!("{p:.4}"))
    )
    .to_lowercase()
}

/// What the previous version's shadow says about live, for a rollback.
#[derive(Debug, Clone, PartialEq)]
pub enum AgainstPrevious {
    /// No previous version on probation, or too few origins compared: today's rule decides.
    NoEvidence(String),
    /// Live forecasts significantly worse than `previous` did on the same actuals.
    Worse {
        previous: String,
        evidence: Evidence,
    },
    /// It does not: rolling back cannot help.
    NotWorse {
        previous: String,
        evidence: Evidence,
    },
}

/// Live against the previous version on probation, on the actuals both forecast.
pub fn against_previous(
    alias: &Alias,
    comparisons: &Comparisons,
    rule: &DecisionRule,
    now: DateTime<Utc>,
) -> AgainstPrevious {
    let Some(previous) = alias.on_probation(now) else {
        return AgainstPrevious::NoEvidence("no previous version is shadowed on probation".into());
    };
    let evidence = comparisons
        .between(&previous.version, &alias.version)
        .and_then(|c| rule.evidence(&c));
    let previous = previous.version.clone();
    match evidence {
        Some(evidence) => {
            if rule.verdict(&evidence) == Verdict::Worse {
                AgainstPrevious::Worse { previous, evidence }
            } else {
                AgainstPrevious::NotWorse { previous, evidence }
            }
        }
        None => AgainstPrevious::NoEvidence(format!(
            "{previous} and {} were not compared at the {} origins a comparison needs yet",
            alias.version, rule.min_origins
        )),
    }
}

impl AgainstPrevious {
    /// A one-line account for logs and decisions.
    pub fn describe(&self, live: &str) -> String {
        match self {
            AgainstPrevious::NoEvidence(why) => why.clone(),
            AgainstPrevious::Worse { previous, evidence } => {
                format!(
                    "{live} forecasts worse than {previous} did on the same actuals: {}",
                    describe(evidence)
                )
            }
            AgainstPrevious::NotWorse { previous, evidence } => {
                not_worse_reason(live, previous, evidence)
            }
        }
    }
}

/// Why the model stays: `live` forecast no worse than `previous` would have.
pub fn not_worse_reason(live: &str, previous: &str, evidence: &Evidence) -> String {
    format!(
        "{live} forecasts no worse than {previous} would have on the same actuals ({}): every version is wrong, so the inputs or the world changed; rolling back cannot help",
        describe(evidence)
    )
}
