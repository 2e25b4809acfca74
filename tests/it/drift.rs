//! Drift that means drift: `InputDrift` is quiet on the model's own training data and loud on the
//! same data shifted, at the drift alarm's default threshold, through the real service.

use crate::common;

use std::sync::Arc;

use common::{bundled_model, etth1_training_windows, Collected};
use lstm_forecast::forecast::SeriesInput;
use lstm_forecast::infer::InferenceHandle;
use lstm_forecast::metrics::{Metric, Telemetry};
use lstm_forecast::service::{Limits, Monitoring, Service};

/// The `DriftThreshold` parameter's default in the SAM template: what the alarm fires above.
fn alarm_threshold() -> f64 {
    let template = std::fs::read_to_string(common::repo_path("infra/template.yaml")).unwrap();
    let parameter = &template[template.find("  DriftThreshold:").expect("DriftThreshold")..];
    parameter
        .lines()
        .find_map(|l| l.trim().strip_prefix("Default:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("DriftThreshold has a numeric default")
}

/// The training standard deviation of OT, from the bundled model's contract.
fn training_std() -> f64 {
    bundled_model().metadata().training_stats["OT"].std
}

/// `InputDrift` of each window, as the service records it for a forecast request.
async fn input_drift(windows: &[Vec<f64>]) -> Vec<f64> {
    let sink = Arc::new(Collected::default());
    let monitoring = Monitoring {
        telemetry: Telemetry::new(vec![sink.clone()], "etth1-ot-lstm", "", None),
        ..Monitoring::default()
    };
    let (handle, _engine) = InferenceHandle::spawn(bundled_model(), 4);
    let service = Service::new(handle, Default::default(), Limits::default(), monitoring);
    for chunk in windows.chunks(64) {
        let series = chunk
            .iter()
            .map(|values| SeriesInput {
                id: None,
                values: values.clone(),
                last_timestamp: None,
            })
            .collect();
        service.forecast(series, None).await.unwrap();
    }
    let drift = sink.values(Metric::InputDrift);
    assert_eq!(drift.len(), windows.len(), "one InputDrift per window");
    drift
}

/// Whether an alarm that averages `per_period` consecutive windows and fires on 3 breaching
/// periods in a row (the template's 3 x 1 hour) would fire anywhere in this stream.
fn alarm_fires(drift: &[f64], per_period: usize, threshold: f64) -> bool {
    let breaching: Vec<bool> = drift
        .chunks(per_period)
        .map(|p| p.iter().sum::<f64>() / p.len() as f64 > threshold)
        .collect();
    breaching.windows(3).any(|w| w.iter().all(|b| *b))
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

#[tokio::test]
async fn training_windows_never_alarm_and_the_same_windows_shifted_by_two_std_do() {
    let threshold = alarm_threshold();
    // GIVEN every training window of the bundled model, one every 6 hours, in time order
    let training: Vec<Vec<f64>> = etth1_training_windows(1412, 168, 6)
        .into_iter()
        .map(|(_, _, values)| values)
        .collect();
    // WHEN they are forecast, THEN none of them drifts, so no period can alarm
    let drift = input_drift(&training).await;
    assert!(drift.iter().all(|d| *d == 0.0), "{:?}", &drift[..10]);
    assert!(!alarm_fires(&drift, 20, threshold));
    // WHEN the same windows arrive shifted by +2 and by -2 training standard deviations,
    // THEN the traffic as a whole averages above the threshold, and the alarm fires
    for sigmas in [2.0, -2.0] {
        let shift = sigmas * training_std();
        let shifted: Vec<Vec<f64>> = training
            .iter()
            .map(|w| w.iter().map(|v| v + shift).collect())
            .collect();
        let drift = input_drift(&shifted).await;
        assert!(
            mean(&drift) > threshold,
            "{sigmas:+} std: mean drift {} <= threshold {threshold}",
            mean(&drift)
        );
        assert!(alarm_fires(&drift, 20, threshold), "{sigmas:+} std");
    }
}
