//! A time-ordered replay of ETTh1's test period through the accuracy loop, asking for intervals:
//! four forecasts a day over HTTP, the day's actuals posted to `/v1/observations`, an evaluation
//! a day, and the service re-reading the calibration it publishes. What a month of production
//! looks like, in seconds.

use std::sync::Arc;

use lstm_forecast::metrics::{ServerMetrics, Telemetry};
use lstm_forecast::monitor::evaluate::{run_evaluation_with, EvaluationWindow, Recalibration};
use lstm_forecast::monitor::store::{AccuracyStore, ForecastLog};
use lstm_forecast::service::{Limits, Monitoring};
use serde_json::{json, Value};

use super::{bundled_model, post_json, repo_path, TestServer};

/// The first row of ETTh1's test targets.
pub const TEST_START: usize = 11_520;
pub const LEVELS: [f64; 2] = [0.8, 0.95];

/// Coverage and width, per level, of a set of forecasts' intervals.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub points: [usize; 2],
    pub inside: [usize; 2],
    pub width: [f64; 2],
}

impl Tally {
    fn add(&mut self, level: usize, lower: f64, upper: f64, actual: f64) {
        self.points[level] += 1;
        self.inside[level] += usize::from(lower <= actual && actual <= upper);
        self.width[level] += upper - lower;
    }

    pub fn coverage(&self, level: usize) -> f64 {
        self.inside[level] as f64 / self.points[level].max(1) as f64
    }

    pub fn mean_width(&self, level: usize) -> f64 {
        self.width[level] / self.points[level].max(1) as f64
    }
}

/// What a replay measured.
#[derive(Debug, Default)]
pub struct ReplayReport {
    pub forecasts: usize,
    /// Every forecast's served intervals.
    pub served: Tally,
    /// The forecasts served with the online calibration, and the same forecasts with model.json's.
    pub online: Tally,
    pub static_on_online: Tally,
    /// Every forecast with model.json's intervals: what no recalibration would have given.
    pub static_all: Tally,
    /// The first day served with the online calibration.
    pub online_from_day: Option<usize>,
    /// Daily evaluations that scored the intervals.
    pub evaluations_with_interval_scores: usize,
    /// Forecasts the evaluations scored late (logged after their actuals were read).
    pub late_forecasts: usize,
}

/// What to replay.
pub struct Replay {
    pub days: usize,
    /// Recalibration window (errors per version and step).
    pub window: usize,
    pub model: lstm_forecast::model::Model,
    /// Where `evaluate`'s metrics go.
    pub telemetry: Telemetry,
    /// The forecast log reaches the store only after the day's evaluation, as with `serve`'s
    /// periodic flush: every forecast is then late to its first actuals.
    pub flush_after_evaluation: bool,
}

impl Replay {
    /// The bundled model, no metrics.
    pub fn bundled(days: usize, window: usize) -> Self {
        Replay {
            days,
            window,
            model: bundled_model(),
            telemetry: Telemetry::new(Vec::new(), "", "", None),
            flush_after_evaluation: false,
        }
    }
}

/// Replays the first days of ETTh1's test period into the store at `s3://BUCKET/monitoring` (an
/// empty bucket).
pub async fn replay_etth1(s3: aws_sdk_s3::Client, bucket: &str, replay: Replay) -> ReplayReport {
    let Replay {
        days,
        window,
        model,
        telemetry,
        flush_after_evaluation,
    } = replay;
    let rows = etth1_ot();
    let store = AccuracyStore::new(s3, &format!("s3://{bucket}/monitoring")).unwrap();
    let log = Arc::new(ForecastLog::new(store.clone()));
    let static_radii: Vec<Vec<f64>> = LEVELS
        .iter()
        .map(|l| {
            model
                .metadata()
                .calibration
                .as_ref()
                .unwrap()
                .radius(*l)
                .unwrap()
                .to_vec()
        })
        .collect();
    let monitoring = Monitoring {
        forecast_log: Some(log.clone()),
        ..Monitoring::default()
    };
    let server = TestServer::start_with(
        model,
        Limits::default(),
        64,
        ServerMetrics::new(),
        monitoring,
    )
    .await;
    let client = reqwest::Client::new();
    let window_spec = EvaluationWindow::for_horizon(
        24,
        std::time::Duration::from_secs(3600),
        chrono::Duration::hours(1),
    );
    let recalibration = Recalibration {
        window,
        levels: LEVELS.to_vec(),
    };
    let mut report = ReplayReport::default();
    for day in 0..days {
        let day_start = TEST_START + 24 * day;
        for origin in [day_start, day_start + 6, day_start + 12, day_start + 18] {
            let history: Vec<f64> = rows[origin - 168..origin].iter().map(|r| r.1).collect();
            let body = json!({"series": [{"id": "etth1-ot", "values": history, "last_timestamp": rows[origin - 1].0}],
                              "intervals": LEVELS});
            let answer: Value = post_json(&client, &server.url("/v1/forecast"), &body).await;
            let forecast = &answer["forecasts"][0];
            let online = answer["calibration"]["source"] == "online";
            if online && report.online_from_day.is_none() {
                report.online_from_day = Some(day);
            }
            report.forecasts += 1;
            let values = super::f64s(&forecast["values"]);
            for (level, interval) in forecast["intervals"].as_array().unwrap().iter().enumerate() {
                let (lower, upper) = (
                    super::f64s(&interval["lower"]),
                    super::f64s(&interval["upper"]),
                );
                for k in 0..24 {
                    let actual = rows[origin + k].1;
                    report.served.add(level, lower[k], upper[k], actual);
                    let radius = static_radii[level][k];
                    report
                        .static_all
                        .add(level, values[k] - radius, values[k] + radius, actual);
                    if online {
                        report.online.add(level, lower[k], upper[k], actual);
                        report.static_on_online.add(
                            level,
                            values[k] - radius,
                            values[k] + radius,
                            actual,
                        );
                    }
                }
            }
        }
        if !flush_after_evaluation {
            log.flush().await;
        }
        let actuals = &rows[day_start..day_start + 24];
        let observations = json!({"series": [{"id": "etth1-ot",
            "timestamps": actuals.iter().map(|r| r.0.clone()).collect::<Vec<_>>(),
            "values": actuals.iter().map(|r| r.1).collect::<Vec<_>>()}]});
        let stored = client
            .post(server.url("/v1/observations"))
            .json(&observations)
            .send()
            .await
            .unwrap();
        assert_eq!(stored.status(), 202);
        let run = run_evaluation_with(
            &store,
            &telemetry,
            chrono::Utc::now(),
            window_spec,
            &recalibration,
        )
        .await
        .unwrap();
        report.evaluations_with_interval_scores +=
            usize::from(!run.evaluation.intervals.is_empty());
        report.late_forecasts += run.evaluation.late_forecasts;
        if flush_after_evaluation {
            log.flush().await;
        }
        // What `serve --reload-interval-seconds` does on its poll.
        server.service.refresh_calibration().await;
    }
    server.stop().await;
    report
}

/// ETTh1's OT column with its timestamps (RFC 3339).
/// ETTh1's oil temperature, `(RFC 3339 time, value)` per hour.
pub fn etth1_ot() -> Vec<(String, f64)> {
    std::fs::read_to_string(repo_path("model_artifacts/data/ETTh1.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| {
            let cells: Vec<&str> = l.split(',').collect();
            (
                format!("{}Z", cells[0].replace(' ', "T")),
                cells[7].parse().unwrap(),
            )
        })
        .collect()
}
