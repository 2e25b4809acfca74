//! The CloudWatch alarms of infra/template.yaml, read by tests/infra/cfn.py (the parser the infra
//! tests use) and created in an emulator's CloudWatch with the properties CloudFormation would pass.

use aws_sdk_cloudwatch::types::{
    ComparisonOperator, Dimension, Metric, MetricDataQuery, MetricStat, StandardUnit, Statistic,
};
use serde_json::Value;

/// Alarm `resource`'s properties, deployed with the parameters' defaults under the stack name
/// `lstm-forecast`. An action on a resource of the stack is `{"resource": NAME}`.
pub fn alarm_properties(resource: &str) -> Value {
    super::python_json(&[
        "tests/infra/cfn.py",
        "alarm",
        "infra/template.yaml",
        resource,
    ])
}

/// Creates the alarm `properties` describes (see [`alarm_properties`]). `action` gives the ARN an
/// action on a resource of the stack has here, or `None` to leave that action out. Every property
/// is passed on or refused: an alarm created here is the template's, not a look-alike.
pub async fn put_alarm(
    cloudwatch: &aws_sdk_cloudwatch::Client,
    properties: &Value,
    action: impl Fn(&str) -> Option<String>,
) {
    let text = |key: &str| properties[key].as_str().map(str::to_owned);
    let int = |key: &str| properties[key].as_i64().map(|v| v as i32);
    let actions = |key: &str| -> Option<Vec<String>> {
        properties[key].as_array().map(|list| {
            list.iter()
                .filter_map(|a| match a {
                    Value::String(arn) => Some(arn.clone()),
                    _ => action(a["resource"].as_str().expect("an action on a resource")),
                })
                .collect()
        })
    };
    for key in properties.as_object().unwrap().keys() {
        assert!(
            [
                "AlarmName",
                "AlarmDescription",
                "Namespace",
                "MetricName",
                "Dimensions",
                "Statistic",
                "ExtendedStatistic",
                "EvaluateLowSampleCountPercentile",
                "Period",
                "EvaluationPeriods",
                "DatapointsToAlarm",
                "Threshold",
                "ComparisonOperator",
                "TreatMissingData",
                "Unit",
                "AlarmActions",
                "OKActions",
                "InsufficientDataActions",
                "Metrics",
            ]
            .contains(&key.as_str()),
            "alarm property {key} is not passed on"
        );
    }
    let dimensions_of = |value: &Value| -> Option<Vec<Dimension>> {
        value.as_array().map(|list| {
            list.iter()
                .map(|d| {
                    Dimension::builder()
                        .name(d["Name"].as_str().unwrap())
                        .value(d["Value"].as_str().unwrap())
                        .build()
                })
                .collect()
        })
    };
    let dimensions = dimensions_of(&properties["Dimensions"]);
    // A metric-math alarm's queries, as CloudFormation passes them (ministack stores them; it
    // does not evaluate expressions).
    let metrics = properties["Metrics"].as_array().map(|queries| {
        queries
            .iter()
            .map(|q| {
                let stat = q.get("MetricStat").map(|stat| {
                    let metric = &stat["Metric"];
                    MetricStat::builder()
                        .metric(
                            Metric::builder()
                                .set_namespace(metric["Namespace"].as_str().map(str::to_owned))
                                .set_metric_name(metric["MetricName"].as_str().map(str::to_owned))
                                .set_dimensions(dimensions_of(&metric["Dimensions"]))
                                .build(),
                        )
                        .set_period(stat["Period"].as_i64().map(|p| p as i32))
                        .set_stat(stat["Stat"].as_str().map(str::to_owned))
                        .build()
                });
                MetricDataQuery::builder()
                    .id(q["Id"].as_str().unwrap())
                    .set_label(q["Label"].as_str().map(str::to_owned))
                    .set_expression(q["Expression"].as_str().map(str::to_owned))
                    .set_return_data(q["ReturnData"].as_bool())
                    .set_metric_stat(stat)
                    .build()
            })
            .collect()
    });
    cloudwatch
        .put_metric_alarm()
        .set_alarm_name(text("AlarmName"))
        .set_alarm_description(text("AlarmDescription"))
        .set_namespace(text("Namespace"))
        .set_metric_name(text("MetricName"))
        .set_dimensions(dimensions)
        .set_metrics(metrics)
        .set_statistic(text("Statistic").map(|s| Statistic::from(s.as_str())))
        .set_extended_statistic(text("ExtendedStatistic"))
        .set_evaluate_low_sample_count_percentile(text("EvaluateLowSampleCountPercentile"))
        .set_period(int("Period"))
        .set_evaluation_periods(int("EvaluationPeriods"))
        .set_datapoints_to_alarm(int("DatapointsToAlarm"))
        .set_threshold(properties["Threshold"].as_f64())
        .set_comparison_operator(
            text("ComparisonOperator").map(|s| ComparisonOperator::from(s.as_str())),
        )
        .set_treat_missing_data(text("TreatMissingData"))
        .set_unit(text("Unit").map(|s| StandardUnit::from(s.as_str())))
        .set_alarm_actions(actions("AlarmActions"))
        .set_ok_actions(actions("OKActions"))
        .set_insufficient_data_actions(actions("InsufficientDataActions"))
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "PutMetricAlarm: {}",
                aws_sdk_cloudwatch::error::DisplayErrorContext(&e)
            )
        });
}
