//! Two model versions compared on the same actuals: which one forecasts better, and whether the
//! difference is more than chance. The statistics behind champion/challenger decisions.
//!
//! Every pair of forecasts of one (series, origin, step) by both versions, once its actual is
//! scored, adds a loss differential `loss(challenger) - loss(reference)` on squared and on
//! absolute error ([`LossDifferentials::add`]). The test is Diebold and Mariano's on the mean
//! differential, with three corrections for what forecasts of many series look like:
//!
//! - **Series at one origin are correlated** (one weather front moves every sensor): the
//!   differentials are averaged across series per origin first, and the test runs on that time
//!   series of origins, so a thousand series do not count as a thousand independent samples.
//! - **Forecasts overlap.** A 24-step forecast made every 6 hours shares 18 targets with the next,
//!   so neighbouring origins' differentials are correlated: the variance is a HAC one whose lag
//!   covers the overlap, `ceil(h / s) - 1` origins for horizon `h` and origin spacing `s`
//!   ([`overlap_lag`]), with the truncated kernel the next correction assumes.
//! - **Small samples** get Harvey, Leybourne and Newbold's factor and a Student-t tail.
//!
//! Per horizon bucket, one test each, made simultaneous by Holm's step-down correction
//! ([`holm`]).
//!
//! The sums merge ([`LossDifferentials::merge`]): an evaluation partitioned by series adds up,
//! origin by origin, to what one process would have found, so a comparison can be fanned out.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::accuracy::Sum;

/// Which loss the differential is taken on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Loss {
    Squared,
    Absolute,
}

impl Loss {
    fn of(self, error: f64) -> f64 {
        match self {
            Loss::Squared => error * error,
            Loss::Absolute => error.abs(),
        }
    }
}

/// The sums of one origin: pairs, and each version's loss summed over them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct OriginSums {
    pub pairs: u64,
    pub reference_squared: Sum,
    pub challenger_squared: Sum,
    pub reference_absolute: Sum,
    pub challenger_absolute: Sum,
}

impl OriginSums {
    fn losses(&self, loss: Loss) -> (f64, f64) {
        match loss {
            Loss::Squared => (
                self.reference_squared.value(),
                self.challenger_squared.value(),
            ),
            Loss::Absolute => (
                self.reference_absolute.value(),
                self.challenger_absolute.value(),
            ),
        }
    }

    fn merge(&mut self, other: &OriginSums) {
        self.pairs += other.pairs;
        self.reference_squared.merge(other.reference_squared);
        self.challenger_squared.merge(other.challenger_squared);
        self.reference_absolute.merge(other.reference_absolute);
        self.challenger_absolute.merge(other.challenger_absolute);
    }
}

/// Loss sums of two versions on the pairs both forecast, per origin (seconds since the epoch).
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct LossDifferentials {
    pub by_origin: BTreeMap<i64, OriginSums>,
}

impl LossDifferentials {
    /// One (series, origin, step) that both versions forecast, with its actual.
    pub fn add(&mut self, origin: i64, reference: f64, challenger: f64, actual: f64) {
        let sums = self.by_origin.entry(origin).or_default();
        let (reference_error, challenger_error) = (reference - actual, challenger - actual);
        sums.pairs += 1;
        sums.reference_squared
            .add(Loss::Squared.of(reference_error));
        sums.challenger_squared
            .add(Loss::Squared.of(challenger_error));
        sums.reference_absolute
            .add(Loss::Absolute.of(reference_error));
        sums.challenger_absolute
            .add(Loss::Absolute.of(challenger_error));
    }

    /// Adds another partition's sums, origin by origin.
    pub fn merge(&mut self, other: &LossDifferentials) {
        for (origin, sums) in &other.by_origin {
            self.by_origin.entry(*origin).or_default().merge(sums);
        }
    }

    /// Origins with at least one compared pair.
    pub fn origins(&self) -> usize {
        self.by_origin.len()
    }

    /// Compared pairs.
    pub fn pairs(&self) -> u64 {
        self.by_origin.values().map(|s| s.pairs).sum()
    }

    /// The same sums with the two versions' roles exchanged.
    pub fn swapped(&self) -> LossDifferentials {
        LossDifferentials {
            by_origin: self
                .by_origin
                .iter()
                .map(|(origin, s)| {
                    let swapped = OriginSums {
                        pairs: s.pairs,
                        reference_squared: s.challenger_squared,
                        challenger_squared: s.reference_squared,
                        reference_absolute: s.challenger_absolute,
                        challenger_absolute: s.reference_absolute,
                    };
                    (*origin, swapped)
                })
                .collect(),
        }
    }

    /// The mean differential (challenger - reference) per origin, in origin order: the time
    /// series the test runs on.
    pub fn per_origin(&self, loss: Loss) -> Vec<f64> {
        self.by_origin
            .values()
            .filter(|sums| sums.pairs > 0)
            .map(|sums| {
                let (reference, challenger) = sums.losses(loss);
                (challenger - reference) / sums.pairs as f64
            })
            .collect()
    }

    /// Each version's mean loss over every pair.
    pub fn mean_losses(&self, loss: Loss) -> Option<(f64, f64)> {
        let pairs: u64 = self.by_origin.values().map(|s| s.pairs).sum();
        if pairs == 0 {
            return None;
        }
        let (reference, challenger) = self
            .by_origin
            .values()
            .map(|sums| sums.losses(loss))
            .fold((0.0, 0.0), |(r, c), (dr, dc)| (r + dr, c + dc));
        Some((reference / pairs as f64, challenger / pairs as f64))
    }

    /// The Diebold-Mariano test of these differentials (see [`diebold_mariano`]).
    pub fn test(&self, loss: Loss, horizon_origins: usize) -> Option<DmTest> {
        diebold_mariano(&self.per_origin(loss), horizon_origins)
    }
}

/// Lags of origins whose forecasts overlap: `ceil(horizon / spacing) - 1`, with both in the same
/// unit (steps, or seconds). 24 hours ahead from origins 6 hours apart: 3.
pub fn overlap_lag(horizon: u64, spacing: u64) -> usize {
    if spacing == 0 {
        return 0;
    }
    (horizon.div_ceil(spacing) as usize).saturating_sub(1)
}

/// A Diebold-Mariano test of a mean differential.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DmTest {
    /// Origins tested.
    pub origins: usize,
    /// Mean differential (challenger - reference): below 0, the challenger's loss is lower.
    pub mean: f64,
    /// The statistic with the Harvey-Leybourne-Newbold factor.
    pub statistic: f64,
    /// Two-sided p-value, Student-t with `origins - 1` degrees of freedom.
    pub p_value: f64,
}

/// The Diebold-Mariano test of `differentials` (one per origin, in time order) whose forecasts
/// reach `horizon_origins` origins ahead (`overlap_lag + 1`).
///
/// The variance of the mean is the HAC estimate `statsmodels` computes for a regression on a
/// constant (`sandwich_covariance.cov_hac` with its small-sample factor `T / (T - 1)`) over the
/// `horizon_origins - 1` lags the forecasts overlap, with uniform weights (Diebold and Mariano's
/// truncated kernel, which Harvey, Leybourne and Newbold's factor is derived for; Bartlett's
/// weights under-estimate the variance there and the test rejects too often: BENCHMARKS.md,
/// "Size of the Diebold-Mariano test"), or Bartlett's where the uniform estimate is not positive.
/// The statistic is then multiplied by
/// `sqrt((T + 1 - 2h + h(h - 1) / T) / T)` (Harvey, Leybourne and Newbold, 1997) and read
/// against Student's t with `T - 1` degrees of freedom. `None` with fewer than two origins, a
/// variance that is not positive, or an HLN factor that is not (too few origins for the horizon).
pub fn diebold_mariano(differentials: &[f64], horizon_origins: usize) -> Option<DmTest> {
    let t = differentials.len();
    let h = horizon_origins.max(1) as f64;
    if t < 2 {
        return None;
    }
    let n = t as f64;
    let mean = differentials.iter().sum::<f64>() / n;
    let centred: Vec<f64> = differentials.iter().map(|d| d - mean).collect();
    let lags = (horizon_origins.max(1) - 1).min(t - 1);
    // The truncated (uniform) kernel over exactly the overlap is the variance HLN's factor
    // corrects; it can come out negative on short samples, and then Bartlett's, always positive,
    // stands in.
    let uniform = long_run_variance(&centred, lags, |_| 1.0);
    let long_run = if uniform > 0.0 {
        uniform
    } else {
        long_run_variance(&centred, lags, |lag| 1.0 - lag as f64 / (lags as f64 + 1.0))
    };
    let variance_of_mean = long_run / (n * n) * (n / (n - 1.0));
    let hln = (n + 1.0 - 2.0 * h + h * (h - 1.0) / n) / n;
    // Also refuses NaN: a comparison with NaN is false.
    let positive = |x: f64| x > 0.0;
    if !positive(variance_of_mean) || !positive(hln) {
        return None;
    }
    let statistic = mean / variance_of_mean.sqrt() * hln.sqrt();
    Some(DmTest {
        origins: t,
        mean,
        statistic,
        p_value: student_t_two_sided(statistic, n - 1.0),
    })
}

/// `sum u_t^2 + 2 sum_k weight(k) sum_t u_t u_{t-k}` over lags `1..=lags`: `T` times the HAC
/// long-run variance of `centred`.
fn long_run_variance(centred: &[f64], lags: usize, weight: impl Fn(usize) -> f64) -> f64 {
    let t = centred.len();
    let mut sum = centred.iter().map(|u| u * u).sum::<f64>();
    for lag in 1..=lags {
        let autocovariance: f64 = centred[lag..]
            .iter()
            .zip(&centred[..t - lag])
            .map(|(a, b)| a * b)
            .sum();
        sum += 2.0 * weight(lag) * autocovariance;
    }
    sum
}

/// Holm's step-down adjustment of `p_values` (one family): each adjusted p-value, in the input's
/// order. Rejecting where the adjusted value is at most alpha keeps the family-wise error at alpha.
pub fn holm(p_values: &[f64]) -> Vec<f64> {
    let m = p_values.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p_values[a].total_cmp(&p_values[b]));
    let mut adjusted = vec![0.0; m];
    let mut running_max: f64 = 0.0;
    for (rank, &index) in order.iter().enumerate() {
        let scaled = ((m - rank) as f64 * p_values[index]).min(1.0);
        running_max = running_max.max(scaled);
        adjusted[index] = running_max;
    }
    adjusted
}

/// `P(|T| >= |t|)` for Student's t with `dof` degrees of freedom.
pub fn student_t_two_sided(t: f64, dof: f64) -> f64 {
    if t.is_nan() || dof <= 0.0 {
        return f64::NAN;
    }
    if t.is_infinite() {
        return 0.0;
    }
    regularized_incomplete_beta(dof / (dof + t * t), dof / 2.0, 0.5)
}

/// `I_x(a, b)`, by the continued fraction (Lentz's method) on whichever side converges.
fn regularized_incomplete_beta(x: f64, a: f64, b: f64) -> f64 {
    if x <= 0.0 {
        return 0.0;
    }
    if x >= 1.0 {
        return 1.0;
    }
    let front =
        (ln_gamma(a + b) - ln_gamma(a) - ln_gamma(b) + a * x.ln() + b * (1.0 - x).ln()).exp();
    if x < (a + 1.0) / (a + b + 2.0) {
        front * beta_continued_fraction(x, a, b) / a
    } else {
        1.0 - front * beta_continued_fraction(1.0 - x, b, a) / b
    }
}

fn beta_continued_fraction(x: f64, a: f64, b: f64) -> f64 {
    const TINY: f64 = 1e-300;
    let mut c = 1.0;
    let mut d = 1.0 - (a + b) * x / (a + 1.0);
    d = 1.0 / if d.abs() < TINY { TINY } else { d };
    let mut fraction = d;
    for m in 1..=10_000 {
        let m = m as f64;
        for numerator in [
            m * (b - m) * x / ((a + 2.0 * m - 1.0) * (a + 2.0 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2.0 * m) * (a + 2.0 * m + 1.0)),
        ] {
            d = 1.0 + numerator * d;
            d = 1.0 / if d.abs() < TINY { TINY } else { d };
            c = 1.0 + numerator / c;
            if c.abs() < TINY {
                c = TINY;
            }
            fraction *= d * c;
            if (d * c - 1.0).abs() < 1e-16 {
                return fraction;
            }
        }
    }
    fraction
}

/// `ln Γ(x)` for `x > 0` (Lanczos, g = 7, 9 terms: about 15 significant digits).
fn ln_gamma(x: f64) -> f64 {
    const COEFFICIENTS: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x)Γ(1 - x) = π / sin(πx).
        return (std::f64::consts::PI / (std::f64::consts::PI * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let sum = COEFFICIENTS[1..]
        .iter()
        .enumerate()
        .fold(COEFFICIENTS[0], |sum, (i, c)| {
            sum + c / (x + i as f64 + 1.0)
        });
    let t = x + 7.5;
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + sum.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_student_t_tail_matches_known_quantiles() {
        // Two-sided 5% critical values of Student's t (any statistics table).
        for (dof, critical) in [
            (1.0, 12.706_204_736),
            (10.0, 2.228_138_852),
            (100.0, 1.983_971_519),
        ] {
            let p = student_t_two_sided(critical, dof);
            assert!((p - 0.05).abs() < 1e-8, "dof {dof}: {p}");
        }
        assert_eq!(student_t_two_sided(0.0, 5.0), 1.0);
        assert!((ln_gamma(5.0) - 24f64.ln()).abs() < 1e-13);
        assert!((ln_gamma(0.5) - std::f64::consts::PI.sqrt().ln()).abs() < 1e-13);
    }

    #[test]
    fn holm_scales_the_smallest_p_by_the_family_and_keeps_the_order() {
        let close = |got: Vec<f64>, want: [f64; 3]| {
            got.iter().zip(want).all(|(g, w)| (g - w).abs() < 1e-15)
        };
        assert!(close(holm(&[0.04, 0.01, 0.03]), [0.06, 0.03, 0.06]));
        assert!(close(holm(&[0.9, 0.8, 0.5]), [1.0, 1.0, 1.0]));
        assert!(close(holm(&[0.001, 0.2, 0.3]), [0.003, 0.4, 0.4]));
    }

    #[test]
    fn overlap_counts_the_origins_a_forecast_reaches_past_its_own() {
        assert_eq!(overlap_lag(24, 6), 3);
        assert_eq!(overlap_lag(24, 24), 0);
        assert_eq!(overlap_lag(24, 5), 4);
        assert_eq!(overlap_lag(1, 1), 0);
    }

    #[test]
    fn a_constant_improvement_with_noise_is_significant_and_none_is_not() {
        // A deterministic, zero-mean wiggle around -1 and around 0.
        let wiggle = |i: usize| ((i * 7919) % 13) as f64 / 13.0 - 6.0 / 13.0;
        let better: Vec<f64> = (0..200).map(|i| -1.0 + wiggle(i)).collect();
        let same: Vec<f64> = (0..200).map(wiggle).collect();
        let better = diebold_mariano(&better, 4).unwrap();
        assert!(better.p_value < 1e-6 && better.mean < 0.0, "{better:?}");
        let same = diebold_mariano(&same, 4).unwrap();
        assert!(same.p_value > 0.05, "{same:?}");
        assert!(diebold_mariano(&[1.0], 1).is_none());
        assert!(
            diebold_mariano(&[1.0, 1.0, 1.0], 1).is_none(),
            "no variance"
        );
    }

    #[test]
    fn partitions_merge_to_the_sums_of_one_pass() {
        let pairs: Vec<(i64, f64, f64, f64)> = (0..60)
            .map(|i| (i / 6 * 21_600, i as f64, i as f64 * 1.1, i as f64 + 0.5))
            .collect();
        let mut whole = LossDifferentials::default();
        let (mut even, mut odd) = (LossDifferentials::default(), LossDifferentials::default());
        for (i, &(origin, reference, challenger, actual)) in pairs.iter().enumerate() {
            whole.add(origin, reference, challenger, actual);
            let part = if i % 2 == 0 { &mut even } else { &mut odd };
            part.add(origin, reference, challenger, actual);
        }
        even.merge(&odd);
        assert_eq!(even.origins(), whole.origins());
        for (merged, one) in even
            .per_origin(Loss::Squared)
            .iter()
            .zip(whole.per_origin(Loss::Squared))
        {
            assert!(
                (merged - one).abs() <= 1e-12 * one.abs().max(1.0),
                "{merged} vs {one}"
            );
        }
        assert_eq!(even.by_origin.values().map(|s| s.pairs).sum::<u64>(), 60);
    }
}
