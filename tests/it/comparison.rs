//! The statistics behind champion/challenger decisions (`monitor::compare`), held to a reference
//! written elsewhere: statsmodels' HAC covariance and scipy's Student-t, run from the tools venv.

use crate::common;

use lstm_forecast::monitor::compare::{diebold_mariano, Loss, LossDifferentials};
use serde_json::{json, Value};

/// Differentials with the overlap's correlation: a moving average over `horizon` of seeded noise,
/// shifted by `drift`.
fn overlapping_differentials(seed: u64, origins: usize, horizon: usize, drift: f64) -> Vec<f64> {
    let mut state = seed;
    let mut noise = || {
        // SplitMix64, then a sum of uniforms: close enough to normal for a test statistic.
        let mut draw = || {
            state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            (z ^ (z >> 31)) as f64 / u64::MAX as f64
        };
        (0..12).map(|_| draw()).sum::<f64>() - 6.0
    };
    let shocks: Vec<f64> = (0..origins + horizon).map(|_| noise()).collect();
    shocks
        .windows(horizon)
        .take(origins)
        .map(|w| drift + 0.3 * w.iter().sum::<f64>() / horizon as f64)
        .collect()
}

#[test]
fn the_diebold_mariano_test_equals_statsmodels_and_scipy_within_1e_9() {
    let cases: Vec<(Vec<f64>, usize)> = [
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
