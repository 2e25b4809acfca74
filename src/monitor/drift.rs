//! Input drift of one request window against the training distribution.

/// Floor for bin shares, so an empty bin does not make the index infinite.
const EPSILON: f64 = 1e-4;

/// Population stability index of `values` against the bins defined by the training quantile
/// `edges` (ascending; `n` edges make `n - 1` bins of equal training mass). Values below the first
/// edge count in the first bin, above the last in the last. 0 means the same distribution; above
/// ~0.25 is the usual "significant shift".
pub fn psi(values: &[f64], edges: &[f64]) -> f64 {
    let bins = edges.len().saturating_sub(1);
    if bins == 0 || values.is_empty() {
        return 0.0;
    }
    let mut counts = vec![0usize; bins];
    for &v in values {
        // Interior edges only: partition_point gives the bin index directly.
        let bin = edges[1..bins].partition_point(|&e| e <= v);
        counts[bin] += 1;
    }
    let expected = 1.0 / bins as f64;
    counts
        .iter()
        .map(|&c| {
            let actual = (c as f64 / values.len() as f64).max(EPSILON);
            (actual - expected) * (actual / expected).ln()
        })
        .sum()
}

/// Share of `values` outside the training range `[min, max]`.
pub fn out_of_range_fraction(values: &[f64], min: f64, max: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.iter().filter(|&&v| v < min || v > max).count() as f64 / values.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_spread_like_the_training_data_has_zero_psi() {
        let edges = [0.0, 1.0, 2.0, 3.0, 4.0];
        let values = [0.5, 1.5, 2.5, 3.5];
        assert!(psi(&values, &edges).abs() < 1e-12);
    }

    #[test]
    fn a_window_stuck_in_one_bin_has_a_large_psi_computed_by_hand() {
        let edges = [0.0, 1.0, 2.0];
        // Bins: [0.5, 0.5] expected; actual [1.0, 0.0001 floor].
        let expected = (1.0 - 0.5) * (1.0f64 / 0.5).ln() + (0.0001 - 0.5) * (0.0001f64 / 0.5).ln();
        assert!((psi(&[0.1, 0.2, 0.9], &edges) - expected).abs() < 1e-12);
        assert!(psi(&[0.1, 0.2, 0.9], &edges) > 0.25);
    }

    #[test]
    fn values_beyond_the_edges_fall_in_the_outer_bins() {
        let edges = [0.0, 1.0, 2.0];
        assert!(psi(&[-5.0, 10.0], &edges).abs() < 1e-12);
        assert_eq!(
            out_of_range_fraction(&[-5.0, 0.5, 10.0, 1.0], 0.0, 2.0),
            0.5
        );
    }
}
