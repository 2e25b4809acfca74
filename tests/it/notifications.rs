//! Alarms that fire from data: the template's own alarm, created in CloudWatch (ministack), fed by
//! the crate's real telemetry (`Telemetry` -> `CloudWatchSink` -> PutMetricData), notifies its SNS
//! topic, and the notification arrives in an SQS queue subscribed to it. Nothing sets alarm state
//! by hand.
//!
//! What the emulator does not do like CloudWatch (ministack 1.5.33; see `Ministack`), and how the
//! test stays honest about it:
//! - it evaluates alarms only on PutMetricData and PutMetricAlarm, never on a timer: each state
//!   change here follows a flush, and the queue is read after it (SNS -> SQS delivery happens
//!   before PutMetricData answers);
//! - it folds the whole `Period x EvaluationPeriods` window (5 minutes here) into one p99, and
//!   stores but does not use `DatapointsToAlarm` (3 of 5) and `EvaluateLowSampleCountPercentile`
//!   (ignore): so each phase publishes 1,000 requests at once, enough samples for CloudWatch itself
//!   to compute a p99 (it ignores a percentile on fewer than 1/(1 - 0.99) x 10 samples), and what
//!   is tested is the threshold, the statistic and the notification path, not the "3 of 5 minutes";
//! - it ignores dimensions during evaluation: the test has a ministack of its own;
//! - only SNS actions fire.
//!
//! SNS and SQS are set up and read with boto3 (tests/notifications/sns_sqs.py, the tools venv's
//! Python): the code under test never calls them, and aws-sdk-sns and aws-sdk-sqs as
//! dev-dependencies would add two SDK crates to every test build.

use crate::common;

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_cloudwatch::types::StateValue;
use common::emulators::Ministack;
use common::eventually;
use lstm_forecast::metrics::cloudwatch::{CloudWatchSink, DEFAULT_MAX_PENDING_DATUMS};
use lstm_forecast::metrics::{RequestOutcome, Telemetry, Traffic};

/// What the HTTP adapter records for `count` answered forecasts, `slow` of them taking 900 ms and
/// the rest 40 ms; then the flush that ships them (one PutMetricData call).
async fn forecasts_answered(telemetry: &Telemetry, count: usize, slow: usize) {
    for i in 0..count {
        telemetry.record_request(&RequestOutcome {
            route: "/v1/forecast",
            traffic: Traffic::Forecast,
            status: 200,
            error_code: None,
            elapsed: Duration::from_millis(if i < slow { 900 } else { 40 }),
        });
    }
    telemetry.flush().await;
}

async fn alarm_state(cloudwatch: &aws_sdk_cloudwatch::Client, name: &str) -> Option<StateValue> {
    cloudwatch
        .describe_alarms()
        .alarm_names(name)
        .send()
        .await
        .unwrap()
        .metric_alarms()
        .first()?
        .state_value()
        .cloned()
}

#[tokio::test]
async fn the_latency_alarm_stays_ok_for_a_few_slow_requests_and_notifies_sns_for_a_slow_tail() {
    // GIVEN the template's p99 latency alarm (threshold 500 ms) in CloudWatch, its alert topic a
    // topic with a subscribed queue
    let ministack = Ministack::start();
    let cloudwatch = ministack.cloudwatch().await;
    let alerts = common::sns_sqs(&["subscribe", &ministack.endpoint, "lstm-forecast-alerts"]);
    let (topic, queue) = (
        alerts["topic_arn"].as_str().unwrap().to_string(),
        alerts["queue_url"].as_str().unwrap().to_string(),
    );
    let alarm = common::template::alarm_properties("LatencyP99Alarm");
    assert_eq!(alarm["MetricName"], "ForecastLatency");
    assert_eq!(alarm["ExtendedStatistic"], "p99");
    assert_eq!(alarm["Threshold"], 500);
    assert_eq!(alarm["AlarmActions"][0]["resource"], "AlertTopic");
    common::template::put_alarm(&cloudwatch, &alarm, |resource| {
        assert_eq!(resource, "AlertTopic", "the latency alarm only notifies");
        Some(topic.clone())
    })
    .await;
    let name = alarm["AlarmName"].as_str().unwrap();
    // AND the service's telemetry, publishing to CloudWatch under the alarm's model and stage
    let sink = Arc::new(CloudWatchSink::new(
        cloudwatch.clone(),
        alarm["Namespace"].as_str().unwrap(),
        DEFAULT_MAX_PENDING_DATUMS,
    ));
    let telemetry = Telemetry::new(vec![sink.clone()], "etth1-ot-lstm", "1.0.0", Some("prod"));

    // WHEN 1,000 forecasts are answered, 5 of them slow (p99 = 40 ms)
    forecasts_answered(&telemetry, 1000, 5).await;
    assert_eq!((sink.calls(), sink.failures()), (1, 0));
    // THEN the alarm is OK, and nobody was notified
    let client = &cloudwatch;
    eventually(
        Duration::from_secs(10),
        "the latency alarm OK",
        || async move { (alarm_state(client, name).await == Some(StateValue::Ok)).then_some(()) },
    )
    .await;
    assert_eq!(
        common::sns_sqs(&["receive", &ministack.endpoint, &queue]),
        serde_json::json!([]),
        "a notification for an alarm that stayed OK"
    );

    // WHEN 1,000 more are answered, 20 of them slow (a 2% tail: p99 = 900 ms)
    forecasts_answered(&telemetry, 1000, 20).await;
    // THEN the alarm is in ALARM ...
    eventually(Duration::from_secs(10), "the latency alarm in ALARM", || async move {
        (alarm_state(client, name).await == Some(StateValue::Alarm)).then_some(())
    })
    .await;
    // ... AND exactly one notification arrived, for this alarm going from OK to ALARM
    let notifications =
        common::notifications_arriving(&ministack.endpoint, &queue, "the ALARM notification").await;
    assert_eq!(
        notifications.as_array().unwrap().len(),
        1,
        "{notifications}"
    );
    let message = &notifications[0]["message"];
    assert_eq!(message["AlarmName"], name, "{message}");
    assert_eq!(message["OldStateValue"], "OK", "{message}");
    assert_eq!(message["NewStateValue"], "ALARM", "{message}");
    assert_eq!(message["Trigger"]["MetricName"], "ForecastLatency");
}
