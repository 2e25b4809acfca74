//! From compared pairs to a verdict: which of two versions forecasts better on the same actuals,
//! per horizon bucket and overall, and whether that is enough to act on.
//!
//! A [`Comparison`] is what `evaluate` keeps for one pair of versions across runs: the loss sums
//! of [`super::compare`] per horizon bucket and overall, and the forecasts' reach, which with the
//! origins' spacing gives the overlap the HAC variance must cover. It merges like the sums it
//! holds, so an evaluation split by series adds up to one.
//!
//! [`Comparison::evidence`] runs one Diebold-Mariano test overall and one per bucket (made
//! simultaneous by Holm); [`DecisionRule::verdict`] reads that evidence:
//!
//! - **better**: the overall mean loss lower with p < the look's alpha, and no bucket
//!   significantly worse;
//! - **worse**: the overall mean loss higher with p < the look's alpha;
//! - **no difference**: neither, at the last look (`max_origins`);
//! - otherwise **undecided**: wait for more actuals.
//!
//! **Looks.** The evaluation runs every day, and a test repeated on a growing sample until it
//! rejects rejects far more often than its alpha. So a verdict is only ever taken at a few fixed
//! sample sizes, the looks ([`DecisionRule::looks`]: `min_origins`, doubling, up to
//! `max_origins`), each on exactly the first that many origins ([`DecisionRule::evidence`]), and
//! alpha is split evenly between them (Bonferroni): whatever the number of evaluations, two
//! versions with the same skill are told apart with probability at most alpha. Between looks the
//! verdict is the last look's, so a rerun decides the same.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::compare::{holm, overlap_lag, Loss, LossDifferentials};

/// Two versions, the first before the second in byte order: one key per unordered pair.
pub type VersionPair = (String, String);

/// Pairs of versions kept in [`Comparisons`]: the most recently compared.
pub const MAX_COMPARED_PAIRS: usize = 20;

/// Every pair of versions compared so far, as the evaluation keeps them across runs
/// (`state/comparisons.json`).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparisons {
    pub pairs: Vec<StoredComparison>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredComparison {
    pub reference: String,
    pub challenger: String,
    pub updated_at: chrono::DateTime<chrono::Utc>,
    pub comparison: Comparison,
}

impl Comparisons {
    /// Adds a run's (or a partition's) comparisons, keyed by unordered pair; keeps the
    /// [`MAX_COMPARED_PAIRS`] most recently compared.
    pub fn merge(
        &mut self,
        added: &BTreeMap<VersionPair, Comparison>,
        now: chrono::DateTime<chrono::Utc>,
    ) {
        for ((reference, challenger), comparison) in added {
            match self
                .pairs
                .iter_mut()
                .find(|p| &p.reference == reference && &p.challenger == challenger)
            {
                Some(stored) => {
                    stored.comparison.merge(comparison);
                    stored.updated_at = now;
                }
                None => self.pairs.push(StoredComparison {
                    reference: reference.clone(),
                    challenger: challenger.clone(),
                    updated_at: now,
                    comparison: comparison.clone(),
                }),
            }
        }
        self.pairs.sort_by_key(|p| std::cmp::Reverse(p.updated_at));
        self.pairs.truncate(MAX_COMPARED_PAIRS);
    }

    /// `challenger` compared with `reference`, oriented so: the differential is
    /// `loss(challenger) - loss(reference)`.
    pub fn between(&self, reference: &str, challenger: &str) -> Option<Comparison> {
        self.pairs.iter().find_map(|p| {
            if p.reference == reference && p.challenger == challenger {
                Some(p.comparison.clone())
            } else if p.reference == challenger && p.challenger == reference {
                Some(p.comparison.swapped())
            } else {
                None
            }
        })
    }
}

/// Two versions compared on every (series, origin, step) both forecast, with its actual.
/// `reference` is the first version of the pair, `challenger` the second (see
/// [`Comparison::swapped`]).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub overall: LossDifferentials,
    pub buckets: BTreeMap<String, LossDifferentials>,
    /// The longest reach of a compared forecast: seconds from its origin to its last target.
    pub reach_seconds: i64,
}

impl Comparison {
    /// One (series, origin, step) both versions forecast, in horizon bucket `bucket`.
    pub fn add(&mut self, pair: ComparedPair<'_>) {
        let origin = pair.origin.timestamp();
        self.overall
            .add(origin, pair.reference, pair.challenger, pair.actual);
        self.buckets.entry(pair.bucket.to_owned()).or_default().add(
            origin,
            pair.reference,
            pair.challenger,
            pair.actual,
        );
        self.reach_seconds = self.reach_seconds.max(pair.reach_seconds);
    }

    /// Adds another partition's (or run's) comparison of the same two versions.
    pub fn merge(&mut self, other: &Comparison) {
        self.overall.merge(&other.overall);
        for (bucket, sums) in &other.buckets {
            self.buckets.entry(bucket.clone()).or_default().merge(sums);
        }
        self.reach_seconds = self.reach_seconds.max(other.reach_seconds);
    }

    /// The comparison of the first `count` origins only (in time order).
    pub fn first_origins(&self, count: usize) -> Comparison {
        let Some(&last) = self.overall.by_origin.keys().nth(count.saturating_sub(1)) else {
            return self.clone();
        };
        let keep = |sums: &LossDifferentials| LossDifferentials {
            by_origin: sums
                .by_origin
                .range(..=last)
                .map(|(o, s)| (*o, *s))
                .collect(),
        };
        Comparison {
            overall: keep(&self.overall),
            buckets: self
                .buckets
                .iter()
                .map(|(bucket, sums)| (bucket.clone(), keep(sums)))
                .collect(),
            reach_seconds: self.reach_seconds,
        }
    }

    /// The same comparison with the roles exchanged: the differential changes sign.
    pub fn swapped(&self) -> Comparison {
        Comparison {
            overall: self.overall.swapped(),
            buckets: self
                .buckets
                .iter()
                .map(|(bucket, sums)| (bucket.clone(), sums.swapped()))
                .collect(),
            reach_seconds: self.reach_seconds,
        }
    }

    /// Origins whose forecasts overlap (the HAC lag): the reach over the median spacing of the
    /// compared origins, `ceil(reach / spacing) - 1`.
    pub fn overlap_lag(&self) -> usize {
        let origins: Vec<i64> = self.overall.by_origin.keys().copied().collect();
        let mut gaps: Vec<i64> = origins.windows(2).map(|w| w[1] - w[0]).collect();
        if gaps.is_empty() {
            return 0;
        }
        gaps.sort_unstable();
        let spacing = gaps[gaps.len() / 2];
        overlap_lag(self.reach_seconds.max(0) as u64, spacing.max(1) as u64)
    }

    /// The tests on `loss`, overall and per bucket; `None` before any pair was compared.
    pub fn evidence(&self, loss: Loss) -> Option<Evidence> {
        let lag = self.overlap_lag();
        let (reference_mean_loss, challenger_mean_loss) = self.overall.mean_losses(loss)?;
        let overall = self.overall.test(loss, lag + 1);
        let mut buckets: Vec<BucketEvidence> = self
            .buckets
            .iter()
            .filter_map(|(bucket, sums)| {
                let (reference, challenger) = sums.mean_losses(loss)?;
                let test = sums.test(loss, lag + 1);
                Some(BucketEvidence {
                    bucket: bucket.clone(),
                    origins: sums.origins(),
                    reference_mean_loss: reference,
                    challenger_mean_loss: challenger,
                    ratio: ratio(challenger, reference),
                    p_value: test.map(|t| t.p_value),
                    adjusted_p_value: None,
                })
            })
            .collect();
        // Holm across the buckets that could be tested: one family per comparison.
        let tested: Vec<usize> = (0..buckets.len())
            .filter(|&i| buckets[i].p_value.is_some())
            .collect();
        let adjusted = holm(
            &tested
                .iter()
                .map(|&i| buckets[i].p_value.unwrap_or(1.0))
                .collect::<Vec<_>>(),
        );
        for (&i, p) in tested.iter().zip(adjusted) {
            buckets[i].adjusted_p_value = Some(p);
        }
        Some(Evidence {
            loss,
            origins: self.overall.origins(),
            pairs: self.overall.pairs(),
            overlap_lag: lag,
            reference_mean_loss,
            challenger_mean_loss,
            ratio: ratio(challenger_mean_loss, reference_mean_loss),
            statistic: overall.map(|t| t.statistic),
            p_value: overall.map(|t| t.p_value),
            buckets,
        })
    }
}

/// `challenger / reference`, or infinity when only the reference is perfect (and 1 when both are).
fn ratio(challenger: f64, reference: f64) -> f64 {
    match (challenger, reference) {
        (c, r) if r > 0.0 => c / r,
        (c, _) if c > 0.0 => f64::INFINITY,
        _ => 1.0,
    }
}

/// One (series, origin, step) forecast by both versions, with its actual.
#[derive(Debug, Clone, Copy)]
pub struct ComparedPair<'a> {
    pub origin: chrono::DateTime<chrono::Utc>,
    pub bucket: &'a str,
    pub reference: f64,
    pub challenger: f64,
    pub actual: f64,
    /// Seconds from the origin to the forecast's last target.
    pub reach_seconds: i64,
}

/// What a comparison shows, as a decision records it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evidence {
    pub loss: Loss,
    /// Origins with at least one compared pair: the test's sample size.
    pub origins: usize,
    pub pairs: u64,
    /// The HAC lag, in origins.
    pub overlap_lag: usize,
    pub reference_mean_loss: f64,
    pub challenger_mean_loss: f64,
    /// `challenger_mean_loss / reference_mean_loss`: below 1, the challenger is better.
    pub ratio: f64,
    /// Diebold-Mariano with the HLN factor; `None` with too few origins for the horizon.
    pub statistic: Option<f64>,
    pub p_value: Option<f64>,
    pub buckets: Vec<BucketEvidence>,
}

/// One horizon bucket's test.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BucketEvidence {
    pub bucket: String,
    pub origins: usize,
    pub reference_mean_loss: f64,
    pub challenger_mean_loss: f64,
    pub ratio: f64,
    pub p_value: Option<f64>,
    /// Holm-adjusted across the comparison's buckets.
    pub adjusted_p_value: Option<f64>,
}

impl Evidence {
    /// The same evidence with the roles exchanged.
    pub fn swapped(&self) -> Evidence {
        Evidence {
            reference_mean_loss: self.challenger_mean_loss,
            challenger_mean_loss: self.reference_mean_loss,
            ratio: ratio(self.reference_mean_loss, self.challenger_mean_loss),
            statistic: self.statistic.map(|s| -s),
            buckets: self
                .buckets
                .iter()
                .map(|b| BucketEvidence {
                    reference_mean_loss: b.challenger_mean_loss,
                    challenger_mean_loss: b.reference_mean_loss,
                    ratio: ratio(b.reference_mean_loss, b.challenger_mean_loss),
                    ..b.clone()
                })
                .collect(),
            ..self.clone()
        }
    }

    fn significant(&self, alpha: f64) -> bool {
        self.p_value.is_some_and(|p| p < alpha)
    }
}

/// When a comparison is enough to act on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DecisionRule {
    /// Significance level of every test.
    pub alpha: f64,
    /// No verdict before this many compared origins.
    pub min_origins: usize,
    /// After this many without a significant difference, the verdict is "no difference".
    pub max_origins: usize,
    /// The loss the decision is taken on (both are reported).
    pub loss: Loss,
}

impl Default for DecisionRule {
    fn default() -> Self {
        DecisionRule {
            alpha: 0.05,
            // Two weeks of origins 6 hours apart.
            min_origins: 56,
            // Three months of them.
            max_origins: 360,
            loss: Loss::Squared,
        }
    }
}

/// What the evidence says of the challenger against the reference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Better,
    Worse,
    NoDifference,
    Undecided,
}

impl DecisionRule {
    /// The sample sizes, in compared origins, at which a verdict is taken: `min_origins`, then
    /// doubling, and `max_origins` last.
    pub fn looks(&self) -> Vec<usize> {
        let first = self.min_origins.max(2);
        let mut looks = Vec::new();
        let mut look = first;
        while look < self.max_origins {
            looks.push(look);
            look *= 2;
        }
        looks.push(self.max_origins.max(first));
        looks
    }

    /// Each look's share of alpha.
    pub fn alpha_per_look(&self) -> f64 {
        self.alpha / self.looks().len() as f64
    }

    /// The evidence at the latest look `comparison` has reached, on exactly its first that many
    /// origins; `None` before the first look.
    pub fn evidence(&self, comparison: &Comparison) -> Option<Evidence> {
        let look = self
            .looks()
            .into_iter()
            .rev()
            .find(|&look| look <= comparison.overall.origins())?;
        comparison.first_origins(look).evidence(self.loss)
    }

    /// What evidence taken at a look ([`DecisionRule::evidence`]) says.
    pub fn verdict(&self, evidence: &Evidence) -> Verdict {
        if evidence.origins < self.min_origins {
            return Verdict::Undecided;
        }
        let alpha = self.alpha_per_look();
        let lower = evidence.challenger_mean_loss < evidence.reference_mean_loss;
        let significant = evidence.significant(alpha);
        let a_bucket_worse = evidence.buckets.iter().any(|b| {
            b.challenger_mean_loss > b.reference_mean_loss
                && b.adjusted_p_value.is_some_and(|p| p < alpha)
        });
        match (significant, lower) {
            (true, true) if !a_bucket_worse => Verdict::Better,
            (true, false) => Verdict::Worse,
            _ if evidence.origins >= self.max_origins => Verdict::NoDifference,
            _ => Verdict::Undecided,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    /// `origins` origins 6 hours apart, 24 steps each in buckets of the bundled horizon; the
    /// challenger errs by `challenger_error(origin, step)`, the reference by 1 + a wobble.
    fn compared(origins: usize, challenger_error: impl Fn(usize, usize) -> f64) -> Comparison {
        let start = chrono::Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let mut comparison = Comparison::default();
        for o in 0..origins {
            let origin = start + chrono::Duration::hours(6 * o as i64);
            for step in 1..=24 {
                let wobble = ((o * 7 + step * 3) % 5) as f64 * 0.1;
                comparison.add(ComparedPair {
                    origin,
                    bucket: &crate::monitor::accuracy::bucket_of(step, 24),
                    reference: 1.0 + wobble,
                    challenger: challenger_error(o, step),
                    actual: 0.0,
                    reach_seconds: 24 * 3600,
                });
            }
        }
        comparison
    }

    #[test]
    fn verdicts_are_taken_at_doubling_looks_that_share_alpha() {
        let rule = DecisionRule::default();
        assert_eq!(rule.looks(), vec![56, 112, 224, 360]);
        assert!((rule.alpha_per_look() - 0.0125).abs() < 1e-15);
        // Between looks, the evidence is the last look's: the same verdict on every rerun.
        let comparison = compared(150, |o, s| 0.9 + ((o * 3 + s) % 4) as f64 * 0.1);
        let at_150 = rule.evidence(&comparison).unwrap();
        let at_112 = rule.evidence(&comparison.first_origins(112)).unwrap();
        assert_eq!(at_150.origins, 112);
        assert_eq!(at_150, at_112);
    }

    #[test]
    fn the_overlap_lag_follows_the_reach_and_the_spacing_of_origins() {
        // 24 hours ahead from origins 6 hours apart: 3 neighbours overlap
        assert_eq!(compared(10, |_, _| 1.0).overlap_lag(), 3);
    }

    #[test]
    fn a_challenger_clearly_better_everywhere_is_better_and_swapped_it_is_worse() {
        let comparison = compared(100, |o, s| 0.5 + ((o + s) % 3) as f64 * 0.05);
        let rule = DecisionRule::default();
        let evidence = rule.evidence(&comparison).unwrap();
        assert_eq!(evidence.origins, 56, "taken at the first look");
        assert!(evidence.ratio < 0.5, "{evidence:?}");
        assert_eq!(rule.verdict(&evidence), Verdict::Better);
        let reverse = rule.evidence(&comparison.swapped()).unwrap();
        assert_eq!(rule.verdict(&reverse), Verdict::Worse);
        assert!((reverse.ratio * evidence.ratio - 1.0).abs() < 1e-12);
        // AND the evidence swaps the same way
        assert_eq!(evidence.swapped(), reverse);
    }

    #[test]
    fn better_overall_but_significantly_worse_in_a_bucket_is_not_better() {
        // GIVEN a challenger far better at steps 7-24 and clearly worse at steps 1-6
        let comparison = compared(100, |o, s| {
            if s <= 6 {
                1.6 + (o % 2) as f64 * 0.05
            } else {
                0.2
            }
        });
        let rule = DecisionRule::default();
        let evidence = rule.evidence(&comparison).unwrap();
        assert!(evidence.ratio < 1.0 && evidence.p_value.unwrap() < rule.alpha_per_look());
        assert_eq!(rule.verdict(&evidence), Verdict::Undecided);
    }

    #[test]
    fn no_verdict_before_the_minimum_and_no_difference_after_the_maximum() {
        let same = |o: usize, s: usize| 1.0 + ((o * 7 + s * 3) % 5) as f64 * 0.1;
        let rule = DecisionRule {
            max_origins: 80,
            ..DecisionRule::default()
        };
        let few = compared(20, |o, s| same(o, s) * 0.5);
        assert_eq!(rule.evidence(&few), None, "before the first look");
        assert_eq!(
            rule.verdict(&few.evidence(Loss::Squared).unwrap()),
            Verdict::Undecided
        );
        let identical = compared(100, same);
        let evidence = rule.evidence(&identical).unwrap();
        assert_eq!(evidence.origins, 80, "the last look");
        assert_eq!(rule.verdict(&evidence), Verdict::NoDifference);
    }

    #[test]
    fn comparisons_of_two_partitions_merge_to_one() {
        let all = compared(12, |o, s| (o + s) as f64 * 0.01);
        let mut left = Comparison::default();
        let mut right = Comparison::default();
        for (i, (origin, sums)) in all.overall.by_origin.iter().enumerate() {
            let half = if i % 2 == 0 { &mut left } else { &mut right };
            half.overall.by_origin.insert(*origin, *sums);
        }
        for (bucket, sums) in &all.buckets {
            left.buckets.insert(bucket.clone(), sums.clone());
        }
        left.reach_seconds = all.reach_seconds;
        left.merge(&right);
        assert_eq!(left, all);
    }
}
