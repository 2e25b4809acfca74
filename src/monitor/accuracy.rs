//! Accuracy scores of forecasts against actuals.

use serde::{Deserialize, Serialize};

/// A sum of many terms, compensated (Neumaier's variant of Kahan's) so that its rounding error
/// does not grow with their number: the sums of a run split into parts add up to what one
/// process finds within a few units in the last place, not within `n` of them. Written as the
/// plain number it is.
#[derive(Debug, Default, Clone, Copy)]
pub struct Sum {
    sum: f64,
    compensation: f64,
}

impl Sum {
    pub fn add(&mut self, term: f64) {
        let total = self.sum + term;
        if total.is_finite() {
            self.compensation += if self.sum.abs() >= term.abs() {
                (self.sum - total) + term
            } else {
                (term - total) + self.sum
            };
        }
        self.sum = total;
    }

    /// Adds another sum, its compensation included.
    pub fn merge(&mut self, other: Sum) {
        self.add(other.sum);
        self.add(other.compensation);
    }

    pub fn value(self) -> f64 {
        self.sum + self.compensation
    }
}

/// Sums are equal when their values are, however their terms were split.
impl PartialEq for Sum {
    fn eq(&self, other: &Sum) -> bool {
        self.value() == other.value()
    }
}

impl From<f64> for Sum {
    fn from(value: f64) -> Self {
        Sum {
            sum: value,
            compensation: 0.0,
        }
    }
}

impl Serialize for Sum {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_f64(self.value())
    }
}

impl<'de> Deserialize<'de> for Sum {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        f64::deserialize(deserializer).map(Sum::from)
    }
}

/// Running sums for one group of (forecast, actual) pairs.
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Accumulator {
    count: usize,
    abs_error: Sum,
    squared_error: Sum,
    error: Sum,
    abs_actual: Sum,
    naive_abs_error: Sum,
}

/// The accuracy set. `mase` is the MAE relative to repeating the last observed value on the same
/// points (below 1: better than naive).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Scores {
    pub count: usize,
    pub mae: f64,
    pub rmse: f64,
    pub wape: f64,
    pub bias: f64,
    pub mase: f64,
}

impl Accumulator {
    /// Adds one point: the forecast, what happened, and the naive forecast (last value at origin).
    pub fn add(&mut self, forecast: f64, actual: f64, naive: f64) {
        let e = forecast - actual;
        self.count += 1;
        self.abs_error.add(e.abs());
        self.squared_error.add(e * e);
        self.error.add(e);
        self.abs_actual.add(actual.abs());
        self.naive_abs_error.add((naive - actual).abs());
    }

    /// Adds another group's sums: the sums of both groups' pairs.
    pub fn merge(&mut self, other: &Accumulator) {
        self.count += other.count;
        self.abs_error.merge(other.abs_error);
        self.squared_error.merge(other.squared_error);
        self.error.merge(other.error);
        self.abs_actual.merge(other.abs_actual);
        self.naive_abs_error.merge(other.naive_abs_error);
    }

    pub fn count(&self) -> usize {
        self.count
    }

    pub fn scores(&self) -> Option<Scores> {
        if self.count == 0 {
            return None;
        }
        let n = self.count as f64;
        let (abs_error, squared_error, error, abs_actual, naive_abs_error) = (
            self.abs_error.value(),
            self.squared_error.value(),
            self.error.value(),
            self.abs_actual.value(),
            self.naive_abs_error.value(),
        );
        Some(Scores {
            count: self.count,
            mae: abs_error / n,
            rmse: (squared_error / n).sqrt(),
            wape: if abs_actual > 0.0 {
                abs_error / abs_actual
            } else {
                f64::NAN
            },
            bias: error / n,
            mase: if naive_abs_error > 0.0 {
                abs_error / naive_abs_error
            } else {
                f64::NAN
            },
        })
    }
}

/// Horizon buckets for reporting: `1-6`, `7-12`, `13-24` (for a 24-step horizon), cut at 6 and 12
/// and clipped to the horizon.
pub fn horizon_buckets(horizon: usize) -> Vec<(usize, usize, String)> {
    let mut buckets = Vec::new();
    let mut start = 1;
    for end in [6, 12, usize::MAX] {
        let end = end.min(horizon);
        if start > end {
            break;
        }
        buckets.push((start, end, format!("{start}-{end}")));
        start = end + 1;
    }
    buckets
}

/// The bucket label of 1-based horizon step `step`.
pub fn bucket_of(step: usize, horizon: usize) -> String {
    horizon_buckets(horizon)
        .into_iter()
        .find(|(s, e, _)| (*s..=*e).contains(&step))
        .map(|(_, _, label)| label)
        .unwrap_or_else(|| format!("{step}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_match_a_hand_computation() {
        // forecasts 2, 4, 9 for actuals 1, 5, 10; naive (last value) 0 for all
        let mut acc = Accumulator::default();
        for (f, a) in [(2.0, 1.0), (4.0, 5.0), (9.0, 10.0)] {
            acc.add(f, a, 0.0);
        }
        let s = acc.scores().unwrap();
        assert_eq!(s.count, 3);
        assert!((s.mae - 1.0).abs() < 1e-12);
        assert!((s.rmse - 1.0).abs() < 1e-12);
        assert!((s.wape - 3.0 / 16.0).abs() < 1e-12);
        assert!((s.bias - (-1.0 / 3.0)).abs() < 1e-12);
        assert!((s.mase - 3.0 / 16.0).abs() < 1e-12);
        assert_eq!(Accumulator::default().scores(), None);
    }

    #[test]
    fn buckets_cover_the_horizon() {
        let labels: Vec<String> = horizon_buckets(24).into_iter().map(|b| b.2).collect();
        assert_eq!(labels, vec!["1-6", "7-12", "13-24"]);
        let labels: Vec<String> = horizon_buckets(8).into_iter().map(|b| b.2).collect();
        assert_eq!(labels, vec!["1-6", "7-8"]);
        assert_eq!(bucket_of(7, 24), "7-12");
        assert_eq!(bucket_of(24, 24), "13-24");
    }
}
