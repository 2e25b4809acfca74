//! In-process aggregation for push sinks: per metric and dimension set, counters are summed and
//! distributions kept as value -> count (quantised to 4 significant digits), which is exactly
//! CloudWatch's Values/Counts representation and keeps a flush O(distinct values), not O(requests).

use std::collections::BTreeMap;

use super::telemetry::{Dimensions, Kind, Metric, Sample};

/// Values are rounded to this many significant digits before counting, so a distribution of
/// latencies collapses to at most a few hundred distinct values per period.
const SIGNIFICANT_DIGITS: i32 = 4;

#[derive(Debug, Default)]
pub struct Aggregator {
    series: BTreeMap<(Metric, Dimensions), Distribution>,
}

#[derive(Debug, Default, Clone, PartialEq)]
pub struct Distribution {
    /// Quantised value (as f64 bits, for a total order key) -> number of samples.
    pub counts: BTreeMap<u64, f64>,
}

/// One aggregated metric series, ready to ship.
#[derive(Debug, Clone, PartialEq)]
pub struct Aggregated {
    pub metric: Metric,
    pub dimensions: Dimensions,
    /// `(value, count)` pairs; a counter has exactly one pair `(sum, 1)`.
    pub values: Vec<(f64, f64)>,
}

impl Aggregated {
    pub fn sample_count(&self) -> f64 {
        self.values.iter().map(|(_, c)| c).sum()
    }
    pub fn sum(&self) -> f64 {
        self.values.iter().map(|(v, c)| v * c).sum()
    }
}

pub fn quantise(value: f64) -> f64 {
    if value == 0.0 || !value.is_finite() {
        return value;
    }
    let magnitude = value.abs().log10().floor() as i32;
    let scale = 10f64.powi(SIGNIFICANT_DIGITS - 1 - magnitude);
    (value * scale).round() / scale
}

impl Aggregator {
    pub fn record(&mut self, sample: &Sample) {
        let entry = self
            .series
            .entry((sample.metric, sample.dimensions.clone()))
            .or_default();
        match sample.metric.kind() {
            Kind::Counter => {
                // A counter is one value, its running sum, counted once.
                let previous = entry
                    .counts
                    .keys()
                    .next()
                    .map(|bits| f64::from_bits(*bits))
                    .unwrap_or(0.0);
                entry.counts.clear();
                entry
                    .counts
                    .insert((previous + sample.value).to_bits(), 1.0);
            }
            Kind::Gauge => {
                entry.counts.clear();
                entry.counts.insert(sample.value.to_bits(), 1.0);
            }
            Kind::Distribution => {
                *entry
                    .counts
                    .entry(quantise(sample.value).to_bits())
                    .or_insert(0.0) += 1.0;
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.series.is_empty()
    }

    /// Everything recorded since the last take.
    pub fn take(&mut self) -> Vec<Aggregated> {
        std::mem::take(&mut self.series)
            .into_iter()
            .map(|((metric, dimensions), distribution)| Aggregated {
                metric,
                dimensions,
                values: distribution
                    .counts
                    .into_iter()
                    .map(|(bits, count)| (f64::from_bits(bits), count))
                    .collect(),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::metrics::telemetry::test_sample as sample;

    #[test]
    fn counters_sum_and_distributions_count_distinct_quantised_values() {
        let mut agg = Aggregator::default();
        for _ in 0..1000 {
            agg.record(&sample(Metric::Forecasts, 2.0));
            agg.record(&sample(Metric::ForecastLatency, 1.23449));
        }
        agg.record(&sample(Metric::ForecastLatency, 7.0));
        let out = agg.take();
        let forecasts = out.iter().find(|a| a.metric == Metric::Forecasts).unwrap();
        assert_eq!(forecasts.values, vec![(2000.0, 1.0)]);
        let latency = out
            .iter()
            .find(|a| a.metric == Metric::ForecastLatency)
            .unwrap();
        assert_eq!(latency.values.len(), 2);
        assert_eq!(latency.sample_count(), 1001.0);
        assert!(latency.values.contains(&(1.234, 1000.0)));
        assert!(agg.is_empty());
    }

    #[test]
    fn quantisation_keeps_four_significant_digits() {
        assert_eq!(quantise(123456.0), 123500.0);
        assert_eq!(quantise(0.00123456), 0.001235);
        assert_eq!(quantise(-5.43219), -5.432);
        assert_eq!(quantise(0.0), 0.0);
    }
}
