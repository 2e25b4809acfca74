//! The statistics behind champion/challenger decisions (`monitor::compare`), held to a reference
//! written elsewhere: statsmodels' HAC covariance and scipy's Student-t, run from the tools venv.

use crate::common;

use chrono::{DateTime, Utc};
use lstm_forecast::monitor::compare::{diebold_mariano, Loss, LossDifferentials};
use lstm_forecast::monitor::verdict::{ComparedPair, Comparison, DecisionRule, Verdict};
use serde_json::{json, Value};

/// Seeded draws (SplitMix64): the same replays on every run.
struct Draws(u64);

impl Draws {
    /// Uniform in [0, 1].
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) as f64 / u64::MAX as f64
    }

    /// A sum of uniforms, centred: close enough to normal for a test statistic.
    fn noise(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// Differentials with the overlap's correlation: a moving average over `horizon` of seeded noise,
/// shifted by `drift`.
fn overlapping_differentials(seed: u64, origins: usize, horizon: usize, drift: f64) -> Vec<f64> {
    let mut draws = Draws(seed);
    let shocks: Vec<f64> = (0..origins + horizon).map(|_| draws.noise()).collect();
    shocks
        .windows(horizon)
        .take(origins)
        .map(|w| drift + 0.3 * w.iter().sum::<f64>() / horizon as f64)
        .collect()
}

#[test]
fn the_diebold_mariano_test_equals_statsmodels_and_scipy_within_1e_9() {
    let mut cases: Vec<(Vec<f64>, usize)> = [
        (10, 1, 0.0),
        (30, 4, -0.2),
        (476, 4, -0.05),
        (100, 2, 0.1),
        (60, 8, 0.0),
        (3, 1, 1.0),
    ]
    .iter()
    .enumerate()
    .map(|(i, &(origins, horizon, drift))| {
        (
            overlapping_differentials(i as u64 + 1, origins, horizon, drift),
            horizon,
        )
    })
    .collect();
    // Alternating signs: the uniform kernel's variance is negative, and Bartlett's stands in.
    cases.push((
        (0..40)
            .map(|i| if i % 2 == 0 { 1.3 } else { -1.0 })
            .collect(),
        2,
    ));
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    let body = json!({"cases": cases.iter().map(|(d, h)| json!({"differentials": d, "horizon_origins": h})).collect::<Vec<_>>()});
    std::fs::write(&file, body.to_string()).unwrap();
    let reference = common::python_json(&["tests/support/dm_reference.py", file.to_str().unwrap()]);
    for ((differentials, horizon), want) in cases.iter().zip(reference.as_array().unwrap()) {
        let got = diebold_mariano(differentials, *horizon).expect("enough origins");
        let close = |got: f64, want: &Value| {
            let want = want.as_f64().unwrap();
            (got - want).abs() <= 1e-9 * want.abs().max(1e-300)
        };
        assert!(close(got.mean, &want["mean"]), "{got:?} vs {want}");
        assert!(
            close(got.statistic, &want["statistic"]),
            "{got:?} vs {want}"
        );
        assert!(close(got.p_value, &want["p_value"]), "{got:?} vs {want}");
    }
}

#[test]
fn per_origin_means_come_from_the_pairs_both_versions_forecast() {
    let mut compared = LossDifferentials::default();
    // Two series at origin 0: the challenger is 1 off where the reference is 2 off.
    compared.add(0, 12.0, 11.0, 10.0);
    compared.add(0, 8.0, 9.0, 10.0);
    // One at origin 1: both exact.
    compared.add(3_600, 5.0, 5.0, 5.0);
    assert_eq!(compared.per_origin(Loss::Squared), vec![1.0 - 4.0, 0.0]);
    assert_eq!(compared.per_origin(Loss::Absolute), vec![1.0 - 2.0, 0.0]);
    assert_eq!(
        compared.mean_losses(Loss::Absolute),
        Some((4.0 / 3.0, 2.0 / 3.0))
    );
}

/// ETTh1's test period, as the issue measures the test's size on it.
const TEST_ORIGINS: usize = 476;
const ORIGIN_SPACING_HOURS: usize = 6;
const HORIZON_HOURS: usize = 24;

/// Per origin of ETTh1's test period, 6 hours apart: the bundled model's mean squared error over
/// its 24 steps minus repeat-last's.
fn model_against_repeat_last_on_the_test_period() -> Vec<f64> {
    let squared = |f: f64, a: f64| (f - a) * (f - a);
    forecasts_of_both_on_the_test_period()
        .iter()
        .map(|(_, steps)| {
            steps
                .iter()
                .map(|&(model, last, actual)| squared(model, actual) - squared(last, actual))
                .sum::<f64>()
                / HORIZON_HOURS as f64
        })
        .collect()
}

#[test]
fn with_the_labels_swapped_by_a_coin_per_day_the_test_rejects_in_at_most_alpha_of_replays() {
    // GIVEN two real forecasters on ETTh1's test period: the bundled model and repeat-last
    let differentials = model_against_repeat_last_on_the_test_period();
    let horizon_origins = HORIZON_HOURS.div_ceil(ORIGIN_SPACING_HOURS);
    assert_eq!(horizon_origins, 4);
    // (the model is genuinely better: the unswapped comparison is decisive)
    let real = diebold_mariano(&differentials, horizon_origins).unwrap();
    assert!(real.mean < 0.0 && real.p_value < 1e-6, "{real:?}");
    // WHEN their labels are swapped by a seeded coin, one flip per day (4 origins, a whole
    // horizon), so the true difference is exactly zero and the overlap's correlation survives
    let replays = 1_000;
    let alpha = 0.05;
    let mut rejected = 0;
    for replay in 0..replays {
        let mut draws = Draws(0x5eed_0000 + replay);
        let swapped: Vec<f64> = differentials
            .chunks(horizon_origins)
            .flat_map(|day| {
                let sign = if draws.uniform() < 0.5 { -1.0 } else { 1.0 };
                day.iter().map(move |d| sign * d)
            })
            .collect();
        let test = diebold_mariano(&swapped, horizon_origins).unwrap();
        rejected += usize::from(test.p_value < alpha);
    }
    // THEN the test rejects (would promote or reject a version) in at most alpha of the replays
    let rate = rejected as f64 / replays as f64;
    println!("size of the Diebold-Mariano test: {rejected} of {replays} replays rejected at alpha {alpha} ({:.1}%)", rate * 100.0);
    assert!(
        rate <= alpha,
        "{rejected} of {replays} replays rejected at alpha {alpha}"
    );
}

/// One origin: its time and, per step, (the bundled model's forecast, repeat-last's, the actual).
type OriginForecasts = (DateTime<Utc>, Vec<(f64, f64, f64)>);

/// Per origin of ETTh1's test period (6 hours apart, from its first test row), both forecasts.
fn forecasts_of_both_on_the_test_period() -> Vec<OriginForecasts> {
    let rows = common::replay::etth1_ot();
    let model = common::bundled_model();
    let window = model.metadata().input.window;
    let origins: Vec<usize> = (0..TEST_ORIGINS)
        .map(|k| common::replay::TEST_START + k * ORIGIN_SPACING_HOURS)
        .collect();
    let windows: Vec<Vec<f64>> = origins
        .iter()
        .map(|&o| rows[o - window..o].iter().map(|r| r.1).collect())
        .collect();
    let forecasts: Vec<Vec<f64>> = windows
        .chunks(64)
        .flat_map(|chunk| model.forecast(chunk).unwrap())
        .collect();
    origins
        .iter()
        .zip(&forecasts)
        .map(|(&o, forecast)| {
            let time = lstm_forecast::time::parse_rfc3339(&rows[o - 1].0).unwrap();
            let last = rows[o - 1].1;
            let steps = forecast
                .iter()
                .zip(&rows[o..o + HORIZON_HOURS])
                .map(|(f, (_, actual))| (*f, last, *actual))
                .collect();
            (time, steps)
        })
        .collect()
}

/// Replays the daily evaluations of the test period: each day adds its 4 origins' compared pairs
/// (the challenger's label on the model when `model_is_challenger(day)`, else on repeat-last),
/// and the rule decides when a look is reached. The first verdict that is not undecided.
fn decide_daily(
    both: &[OriginForecasts],
    rule: &DecisionRule,
    mut model_is_challenger: impl FnMut(usize) -> bool,
) -> Verdict {
    let looks = rule.looks();
    let mut comparison = Comparison::default();
    for (day, origins) in both.chunks(4).enumerate() {
        let before = comparison.overall.origins();
        let swap = model_is_challenger(day);
        for (origin, steps) in origins {
            for (step, &(model, last, actual)) in steps.iter().enumerate() {
                let (reference, challenger) = if swap { (last, model) } else { (model, last) };
                comparison.add(ComparedPair {
                    origin: *origin,
                    bucket: &lstm_forecast::monitor::accuracy::bucket_of(step + 1, HORIZON_HOURS),
                    reference,
                    challenger,
                    actual,
                    reach_seconds: (HORIZON_HOURS * 3600) as i64,
                });
            }
        }
        let now = comparison.overall.origins();
        // The evidence only changes when a look is reached.
        if !looks.iter().any(|&look| before < look && look <= now) {
            continue;
        }
        let evidence = rule.evidence(&comparison).unwrap();
        match rule.verdict(&evidence) {
            Verdict::Undecided => continue,
            decided => return decided,
        }
    }
    Verdict::Undecided
}

#[test]
fn a_challenger_no_better_than_live_is_promoted_in_at_most_alpha_of_1000_replayed_test_periods() {
    // GIVEN the bundled model and repeat-last on ETTh1's test period, compared as the daily
    // evaluation compares two versions (per step, bucketed, looks at 56, 112, 224 and 360 origins)
    let both = forecasts_of_both_on_the_test_period();
    let rule = DecisionRule::default();
    // (the model is genuinely better: labelled as it is, it is promoted at the first look)
    assert_eq!(decide_daily(&both, &rule, |_| true), Verdict::Better);
    assert_eq!(decide_daily(&both, &rule, |_| false), Verdict::Worse);
    // WHEN the labels are swapped by a seeded coin once a day (a whole horizon), so that neither
    // label is better, over 1,000 replays of the whole period
    let replays = 1_000;
    let mut promoted = 0;
    let mut decided = 0;
    for replay in 0..replays {
        let mut draws = Draws(0x00c0_ffee_0000 + replay);
        let verdict = decide_daily(&both, &rule, |_| draws.uniform() < 0.5);
        promoted += usize::from(verdict == Verdict::Better);
        decided += usize::from(matches!(verdict, Verdict::Better | Verdict::Worse));
    }
    // THEN the challenger is promoted in at most alpha of them, however many daily evaluations
    // looked
    let rate = promoted as f64 / replays as f64;
    println!(
        "evaluation-level size: promoted in {promoted} of {replays} replays ({:.1}%), told apart either way in {decided}, at alpha {}",
        rate * 100.0,
        rule.alpha
    );
    assert!(rate <= rule.alpha, "{promoted} of {replays} promoted");
}
