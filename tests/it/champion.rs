//! Champion and challenger: a new version earns promotion on the same actuals as live, a worse
//! one is rejected, and the same weights under a new number never win. Replays of ETTh1's test
//! period with real models on libtorch, the registry and the store on moto, and the service's own
//! shadow, evaluation and decision.

use crate::common;

use common::challenge::{replay_challenge, weakened_bundled, TEST_DAYS};
use common::emulators::Moto;
use common::{bundled_as_version, repo_path};
use lstm_forecast::registry::roles::DecisionAction;
use lstm_forecast::service::challenge::ChallengePolicy;

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
