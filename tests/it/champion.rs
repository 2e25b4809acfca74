//! Champion and challenger: a new version earns promotion on the same actuals as live, a worse
//! one is rejected, and the same weights under a new number never win. Replays of ETTh1's test
//! period with real models on libtorch, the registry and the store on moto, and the service's own
//! shadow, evaluation and decision.

use crate::common;

use common::challenge::{replay_challenge, weakened_bundled, TEST_DAYS};
use common::emulators::Moto;
use common::{bundled_as_version, repo_path};
use std::time::Duration;

use lstm_forecast::forecast::SeriesInput;
use lstm_forecast::model::Model;
use lstm_forecast::monitor::observations::Observation;
use lstm_forecast::registry::roles::{serves_series, ChallengeMode, DecisionAction};
use lstm_forecast::service::challenge::ChallengePolicy;
use lstm_forecast::source::DirectorySource;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_model_challenging_a_weaker_live_one_is_promoted_within_the_test_period() {
    // GIVEN live: the bundled network with its linear part scaled by 0.7, and the
    // bundled model as challenger in its shadow
    let moto = Moto::start();
    moto.create_bucket("champion").await;
    let weak = weakened_bundled("0.9.0", 0.7);
    let bundled = repo_path("model_artifacts/etth1-ot-lstm");
    // WHEN ETTh1's test period is replayed day by day
    let outcome = replay_challenge(
        &moto,
        "champion",
        weak.path(),
        &bundled,
        TEST_DAYS,
        ChallengePolicy::default(),
    )
    .await;
    // THEN the evaluation promotes the challenger, and the service serves it
    let (day, decision) = outcome.decision.expect("a decision within the test period");
    println!(
        "promoted on day {day} of {TEST_DAYS}: {} ({:?})",
        decision.reason, decision.evidence
    );
    assert_eq!(decision.action, DecisionAction::Promote, "{decision:?}");
    assert!(decision.acted && decision.version == "1.0.0");
    let evidence = decision.evidence.unwrap();
    assert!(evidence.ratio < 1.0 && evidence.p_value.unwrap() < 0.05);
    assert!(evidence.origins >= ChallengePolicy::default().rule.min_origins);
    assert_eq!(outcome.live, "1.0.0");
    // AND the report draws the comparison: the cumulative loss differential of the pair
    let folder = outcome.report.strip_prefix("s3://champion/").unwrap();
    let object = moto
        .s3()
        .await
        .get_object()
        .bucket("champion")
        .key(format!("{folder}comparison.svg"))
        .send()
        .await
        .expect("the report has a comparison chart");
    let chart = String::from_utf8(object.body.collect().await.unwrap().to_vec()).unwrap();
    assert!(
        chart.contains("<polyline") && chart.contains("1.0.0 vs 0.9.0"),
        "{chart}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weaker_challenger_is_rejected_and_live_stays() {
    let moto = Moto::start();
    moto.create_bucket("champion").await;
    let weak = weakened_bundled("1.1.0", 0.7);
    let bundled = repo_path("model_artifacts/etth1-ot-lstm");
    let outcome = replay_challenge(
        &moto,
        "champion",
        &bundled,
        weak.path(),
        TEST_DAYS,
        ChallengePolicy::default(),
    )
    .await;
    let (day, decision) = outcome.decision.expect("a decision within the test period");
    println!("rejected on day {day}: {}", decision.reason);
    assert_eq!(decision.action, DecisionAction::Reject, "{decision:?}");
    assert_eq!(outcome.live, "1.0.0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_weights_under_a_new_version_are_never_promoted() {
    // GIVEN the bundled model challenged by itself under another version number
    let moto = Moto::start();
    moto.create_bucket("champion").await;
    let same = bundled_as_version("1.0.1");
    let bundled = repo_path("model_artifacts/etth1-ot-lstm");
    // WHEN the whole test period is replayed, with automatic promotion on
    let outcome = replay_challenge(
        &moto,
        "champion",
        &bundled,
        same.path(),
        TEST_DAYS,
        ChallengePolicy::default(),
    )
    .await;
    // THEN it is never promoted: rejected for showing no difference, once the maximum of
    // compared origins passed, or still undecided
    if let Some((day, decision)) = &outcome.decision {
        println!("decided on day {day}: {}", decision.reason);
        assert_eq!(decision.action, DecisionAction::Reject, "{decision:?}");
    }
    assert_eq!(outcome.live, "1.0.0");
    assert!(outcome.forecasts_logged > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_answers_its_share_of_series_and_live_forecasts_them_in_its_shadow() {
    // GIVEN the bundled model live and a weaker version challenging as a canary on half the series
    let moto = Moto::start();
    moto.create_bucket("canary").await;
    let weak = weakened_bundled("1.1.0", 0.7);
    let bundled = repo_path("model_artifacts/etth1-ot-lstm");
    let challenged = common::challenge::challenged(
        &moto,
        "canary",
        (&bundled, weak.path()),
        ChallengeMode::Canary,
        0.5,
    )
    .await;
    let service = &challenged.service;
    assert_eq!(service.canary(), Some(("1.1.0".to_string(), 0.5)));
    // WHEN one request forecasts 40 series from the same ETTh1 window
    let rows = common::replay::etth1_ot();
    let origin = common::replay::TEST_START;
    let window: Vec<f64> = rows[origin - 168..origin].iter().map(|r| r.1).collect();
    let ids: Vec<String> = (0..40).map(|i| format!("sensor-{i}")).collect();
    let series = ids
        .iter()
        .map(|id| SeriesInput {
            id: Some(id.clone()),
            values: window.clone(),
            last_timestamp: lstm_forecast::time::parse_rfc3339(&rows[origin - 1].0),
        })
        .collect();
    let response = service.forecast(series, None).await.unwrap();
    // THEN each forecast names its version: the canary's share (by a hash of the id) by 1.1.0,
    // in the request's order, with the weaker model's values; the rest by live
    let weak_forecast = Model::load(&DirectorySource::new(weak.path()).read().unwrap())
        .unwrap()
        .forecast(&[&window])
        .unwrap()
        .remove(0);
    let mut by_canary = 0;
    for (id, forecast) in ids.iter().zip(&response.forecasts) {
        assert_eq!(forecast.id.as_ref(), Some(id));
        let canary = serves_series(id, 0.5);
        let version = forecast.model_version.as_deref().unwrap();
        assert_eq!(version, if canary { "1.1.0" } else { "1.0.0" }, "{id}");
        if canary {
            by_canary += 1;
            let largest = forecast
                .values
                .iter()
                .zip(&weak_forecast)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            assert!(largest < 1e-6, "{id}: {largest}");
        }
    }
    assert!((10..30).contains(&by_canary), "{by_canary} of 40");
    // AND live forecasts the canary's series in its shadow: every one is logged by both
    let log = &challenged.log;
    let expected = 40 + by_canary as u64;
    common::eventually(
        Duration::from_secs(30),
        "live's shadow forecasts",
        || async {
            log.flush().await;
            (log.written() >= expected).then_some(())
        },
    )
    .await;
    assert_eq!(log.written(), expected);
    // AND once the actuals arrive, the evaluation compares the two on exactly those series
    let actuals: Vec<Observation> = ids
        .iter()
        .flat_map(|id| {
            rows[origin..origin + 24]
                .iter()
                .map(|(t, value)| Observation {
                    series_id: id.clone(),
                    timestamp: lstm_forecast::time::parse_rfc3339(t).unwrap(),
                    value: *value,
                })
        })
        .collect();
    challenged.store.append_actuals(&actuals).await.unwrap();
    let config = lstm_forecast::service::jobs::EvaluationConfig {
        grace: Duration::from_secs(3600),
        ..Default::default()
    };
    let summary =
        lstm_forecast::service::jobs::evaluate(service, Some(&challenged.follower), &config)
            .await
            .unwrap();
    assert_eq!(summary.compared.len(), 1);
    assert_eq!(summary.compared[0].pairs_added, 24 * by_canary as u64);
    assert_eq!(summary.scores["1.1.0"].overall.count, 24 * by_canary);
}
