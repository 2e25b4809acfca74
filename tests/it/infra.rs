//! infra/ checked offline: linters, a deployment to moto's CloudFormation, the metric contract
//! between the code and the alarms/dashboard/alert rules, the Kubernetes manifests, the image
//! filesystem, and the remediation loop (alarm -> function -> rollback) on the emulators (S3 and
//! CloudFormation on moto, CloudWatch on ministack).

use crate::common;

use std::collections::BTreeSet;
use std::process::{Command, Stdio};

use aws_sdk_cloudwatch::types::StateValue;
use common::emulators::{tools_bin, Function, LambdaEmulator, Ministack, Moto};
use common::repo_path;
use lstm_forecast::metrics::{
    prometheus::prometheus_name, Metric, DIM_HORIZON_BUCKET, DIM_LEVEL, DIM_MODEL, DIM_STAGE,
};
use serde_json::{json, Value};

const TEMPLATES: [&str; 2] = ["infra/template.yaml", "infra/ecs.yaml"];

fn run(program: &std::path::Path, args: &[&str]) -> (bool, String) {
    common::outcome(Command::new(program).args(args).current_dir(repo_path("")))
}

fn cfn_helper(args: &[&str]) -> Value {
    let mut all = vec!["tests/infra/cfn.py"];
    all.extend_from_slice(args);
    let (ok, out) = run(&tools_bin("python"), &all);
    assert!(ok, "{out}");
    // The last JSON line: the SAM translator may log after it.
    let json = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{') || l.starts_with('['))
        .unwrap_or("");
    serde_json::from_str(json).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn cfn_lint_and_the_serverless_rules_are_clean_on_every_template() {
    for template in TEMPLATES {
        let (ok, out) = run(&tools_bin("cfn-lint"), &[template]);
        assert!(ok, "cfn-lint {template}:\n{out}");
        let (ok, out) = run(
            &tools_bin("cfn-lint"),
            &[template, "-a", "cfn_lint_serverless.rules"],
        );
        assert!(ok, "cfn-lint serverless rules {template}:\n{out}");
    }
}

/// A JSON array of strings (resource types, logical ids) as a set.
fn string_set(values: &Value) -> BTreeSet<&str> {
    values
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect()
}

#[test]
fn the_sam_template_translates_and_deploys_to_moto_cloudformation() {
    let moto = Moto::start();
    let report = cfn_helper(&["deploy", "infra/template.yaml", &moto.endpoint]);
    assert_eq!(report["status"], "CREATE_COMPLETE", "{report}");
    // The translation produces everything, including what moto then skips (alarms, HTTP API).
    let types = string_set(&report["translated_types"]);
    for expected in [
        "AWS::CloudWatch::Alarm",
        "AWS::CloudWatch::CompositeAlarm",
        "AWS::CloudWatch::Dashboard",
        "AWS::ApiGatewayV2::Route",
        "AWS::ApiGatewayV2::Stage",
        "AWS::Events::Rule",
        "AWS::SNS::Subscription",
        "AWS::S3::BucketPolicy",
    ] {
        assert!(
            types.contains(expected),
            "{expected} missing from the translated template"
        );
    }
    let created = string_set(&report["created"]);
    for expected in [
        "ArtifactsBucket",
        "ForecastFunction",
        "ForecastFunctionRole",
        "AlertTopic",
        "ForecastFunctionBatchForecast",
        "FunctionLogGroup",
        "BatchStateMachine",
        "BatchStateMachineNightly",
        "EvaluationStateMachine",
        "EvaluationStateMachineHourly",
    ] {
        assert!(
            created.contains(expected),
            "moto did not create {expected}: {created:?}"
        );
    }
    assert_eq!(report["bucket_encryption"], "AES256");
    // SnapStart on, for published versions, with /tmp within its limit; and since only published
    // versions are snapshotted, every invoker (API, schedules, the alarm action) calls the alias
    assert_eq!(
        report["snap_start"],
        json!({"ApplyOn": "PublishedVersions"})
    );
    assert!(report["ephemeral_storage"]["Size"].as_u64().unwrap() <= 512);
    assert_eq!(report["aliases"], json!(["ForecastFunctionAliaslive"]));
    // A new function version takes traffic as a canary, rolled back by the function-error, 5xx
    // share and latency alarms.
    let deployment = &report["deployment"];
    assert_eq!(
        deployment["alarms"],
        json!(["ErrorRateAlarm", "LambdaErrorsAlarm", "LatencyP99Alarm"]),
        "{deployment}"
    );
    assert!(
        deployment["config"][0]
            .as_str()
            .unwrap()
            .contains("Canary10Percent5Minutes"),
        "{deployment}"
    );
    assert!(
        deployment["rollback_on_alarm"][0]
            .to_string()
            .contains("DEPLOYMENT_STOP_ON_ALARM"),
        "{deployment}"
    );
    assert!(
        deployment["alias_update_policy"]
            .to_string()
            .contains("CodeDeployLambdaAliasUpdate"),
        "{deployment}"
    );
    let invokers = report["invokers"].as_object().unwrap();
    for expected in [
        "HttpApiIntegration",
        "HttpApiInvokePermission",
        "AlarmInvokePermission",
        "AccuracyAlarm",
        "ForecastFunctionBatchForecast",
    ] {
        assert!(invokers.contains_key(expected), "{expected}: {invokers:?}");
    }
    for (invoker, targets) in invokers {
        assert_eq!(
            targets,
            &json!(["ForecastFunctionAliaslive"]),
            "{invoker} must call the alias"
        );
    }
    let function = &report["function"];
    assert_eq!(function["memory"], 2048);
    assert_eq!(function["timeout"], 300, "a batch shard has minutes");
    let env = &function["environment"];
    assert!(env["MODEL_URI"]
        .as_str()
        .unwrap()
        .ends_with("/models/etth1-ot-lstm"));
    assert_eq!(
        env["ROLLBACK_ALARMS"], "lstm-forecast-accuracy",
        "the rollback alarm is wired by name"
    );
    assert_eq!(env["METRICS_SINKS"], "emf");
    let inputs: Vec<Value> = report["schedule_inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| serde_json::from_str(i.as_str().unwrap()).unwrap())
        .collect();
    assert!(inputs.iter().any(|i| i["action"] == "batch-forecast"));
    // The evaluation is the state machine's, in partitions; no schedule invokes it whole.
    assert!(inputs.iter().any(|i| i["partitions"] == 16));
    assert!(!inputs.iter().any(|i| i["action"] == "evaluate"));
}

#[test]
fn every_alarm_watches_a_metric_the_code_emits_and_every_metric_is_on_the_dashboard() {
    let found = cfn_helper(&["metrics", TEMPLATES[0], TEMPLATES[1]]);
    let code_names: BTreeSet<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
    let code_dimensions: BTreeSet<&str> =
        [DIM_MODEL, DIM_STAGE, DIM_HORIZON_BUCKET, DIM_LEVEL].into();
    let mut checked = 0;
    for alarm in found["alarms"].as_array().unwrap() {
        if alarm["namespace"] != "LstmForecast" {
            // AWS/Lambda, AWS/ApplicationELB, AWS/ECS: AWS's own metrics.
            assert!(
                alarm["namespace"].as_str().unwrap().starts_with("AWS/"),
                "{alarm}"
            );
            continue;
        }
        let metric = alarm["metric"].as_str().unwrap();
        assert!(
            code_names.contains(metric),
            "alarm {} watches {metric}, which the code never emits",
            alarm["alarm"]
        );
        for dimension in alarm["dimensions"].as_array().unwrap() {
            assert!(
                code_dimensions.contains(dimension.as_str().unwrap()),
                "alarm {} uses dimension {dimension}",
                alarm["alarm"]
            );
        }
        checked += 1;
    }
    assert!(checked >= 7, "the LstmForecast alarms were found");
    let dashboard = found["dashboard"].as_str().unwrap();
    for name in &code_names {
        // Named in a metric row, or searched for (metrics whose dimensions name versions).
        assert!(
            dashboard.contains(&format!("\"{name}\""))
                || dashboard.contains(&format!("MetricName=\\\"{name}\\\"")),
            "{name} is not on the dashboard"
        );
    }
}

#[test]
fn the_forecast_log_lines_the_function_writes_are_what_the_template_delivers_to_the_store() {
    let template = std::fs::read_to_string(repo_path(TEMPLATES[0])).unwrap();
    // The function writes log lines, ...
    assert!(template.contains("FORECAST_LOG_DELIVERY: log-lines"));
    // ... the subscription picks exactly those (the key the code wraps each record in), ...
    let key = lstm_forecast::monitor::store::LOG_LINE_KEY;
    assert!(
        template.contains(&format!("FilterPattern: '{{ $.{key}.series_id = \"*\" }}'")),
        "the subscription filter must select {key} lines"
    );
    assert!(template.contains("LogGroupName: !Ref FunctionLogGroup"));
    // ... and Firehose writes them, unpacked, where evaluate reads forecasts: under
    // PREFIX/forecasts/origin=HOUR/, HOUR taken from each line by the template's jq query.
    assert!(template.contains("FORECAST_LOG_URI: !Sub \"s3://${ArtifactsBucket}/monitoring\""));
    assert!(template
        .contains("- \"monitoring/forecasts/origin=!{partitionKeyFromQuery:origin_hour}/\""));
    assert!(template.contains(&format!("- \"{{origin_hour: .{key}.origin[0:13]}}\"")));
    // A sharded store (ForecastLogShards > 1): each line names its shard, as the store's folders.
    assert!(template.contains("FORECAST_LOG_SHARDS: !Ref ForecastLogShards"));
    assert!(template.contains(
        "- \"monitoring/forecasts/shard=!{partitionKeyFromQuery:shard}/origin=!{partitionKeyFromQuery:origin_hour}/\""
    ));
    assert!(template.contains(&format!(
        "- \"{{origin_hour: .{key}.origin[0:13], shard: .shard}}\""
    )));
    // What that query takes from a real log line is the store's own partition name.
    let origin = chrono::DateTime::parse_from_rfc3339("2016-07-01T09:00:00Z")
        .unwrap()
        .with_timezone(&chrono::Utc);
    let line = serde_json::json!({ key: lstm_forecast::monitor::store::ForecastRecord {
        series_id: "s".into(), origin, last_value: 1.0, timestamps: vec![], values: vec![],
        model: "m".into(), model_version: "1".into(), request_id: None, created_at: origin, intervals_calibration: None,
            intervals: Vec::new(),
            out_of_range: false,
            role: Default::default(),
    }});
    assert_eq!(
        &line[key]["origin"].as_str().unwrap()[0..13],
        lstm_forecast::monitor::store::hour_partition(origin)
    );
    for processor in [
        "Decompression",
        "CloudWatchLogProcessing",
        "MetadataExtraction",
        "AppendDelimiterToRecord",
    ] {
        assert!(
            template.contains(&format!("- Type: {processor}")),
            "{processor}"
        );
    }
}

#[test]
fn every_topic_an_alarm_notifies_is_encrypted_with_a_key_cloudwatch_may_use() {
    // CloudWatch cannot publish to a topic under the AWS-managed alias/aws/sns (its policy cannot
    // be edited to grant it), and moto does not enforce KMS: only this check catches it.
    let topics = cfn_helper(&["alarm-topics", TEMPLATES[0], TEMPLATES[1]]);
    let topics = topics.as_array().unwrap();
    for template in TEMPLATES {
        assert!(
            topics.iter().any(|t| t["template"] == template),
            "{template} has an alarm topic: {topics:?}"
        );
    }
    for topic in topics {
        assert_eq!(topic["key_in_stack"], true, "{topic}");
        let grants = topic["cloudwatch_grants"].as_array().unwrap();
        assert!(
            grants.iter().any(|g| {
                let actions: Vec<&str> = g["actions"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a.as_str().unwrap())
                    .collect();
                actions.contains(&"kms:Decrypt")
                    && actions.contains(&"kms:GenerateDataKey*")
                    && g["source_account"] == true
            }),
            "the key of {topic} must grant cloudwatch.amazonaws.com kms:Decrypt and kms:GenerateDataKey*, conditioned on the source account"
        );
    }
}

#[test]
fn posting_actuals_is_a_permission_of_its_own_with_its_own_throttle() {
    let template = std::fs::read_to_string(repo_path(TEMPLATES[0])).unwrap();
    let route = &template[template.find("  ObservationsRoute:").unwrap()..];
    let route = &route[..route.find("\n\n").unwrap()];
    assert!(
        route.contains("AuthorizationScopes: !If [UseJwt, [!Ref ObservationsScope]"),
        "{route}"
    );
    assert!(template.contains(
        "        POST /v1/observations:\n          ThrottlingRateLimit: !Ref ObservationsRateLimit"
    ));
    // The two IAM policies each grant one side only.
    let policy = |name: &str| {
        let start = template.find(&format!("  {name}:")).unwrap();
        let rest = &template[start..];
        rest[..rest.find("\n\n").unwrap_or(rest.len())].to_string()
    };
    let writer = policy("ObservationsWriterPolicy");
    let caller = policy("ForecastCallerPolicy");
    assert!(writer.contains("/POST/v1/observations") && !writer.contains("/v1/forecast"));
    assert!(caller.contains("/POST/v1/forecast") && !caller.contains("observations"));
}

#[test]
fn the_ecs_stack_serves_https_only_keeps_metrics_inside_and_guards_actuals() {
    let ecs = std::fs::read_to_string(repo_path(TEMPLATES[1])).unwrap();
    // HTTPS with the given certificate; plain HTTP only redirects.
    assert!(ecs.contains("Protocol: HTTPS") && ecs.contains("CertificateArn: !Ref CertificateArn"));
    let redirect = &ecs[ecs.find("  HttpRedirectListener:").unwrap()..];
    let redirect = &redirect[..redirect.find("\n\n").unwrap()];
    assert!(
        redirect.contains("Type: redirect") && !redirect.contains("forward"),
        "{redirect}"
    );
    // /metrics never leaves the VPC through the load balancer.
    let metrics = &ecs[ecs.find("  MetricsNotRouted:").unwrap()..];
    let metrics = &metrics[..metrics.find("\n\n").unwrap()];
    assert!(metrics.contains("\"/metrics\"") && metrics.contains("Type: fixed-response"));
    // Posting actuals needs the token the task gets from Secrets Manager (the variable serve reads).
    assert!(ecs.contains(
        "- Name: OBSERVATIONS_TOKEN\n              ValueFrom: !Ref ObservationsTokenSecretArn"
    ));
    assert!(ecs.contains("Action: secretsmanager:GetSecretValue"));
}

#[test]
fn every_prefix_has_a_lifecycle_and_access_logs_name_the_caller() {
    let template = std::fs::read_to_string(repo_path(TEMPLATES[0])).unwrap();
    // Every prefix the code writes: the registry, the accuracy store (forecasts, Firehose's
    // errors, actuals and their index by hour, settled pairs, reports, state, run journals) and
    // batch input and output.
    for prefix in [
        "models/",
        "monitoring/forecasts/",
        "monitoring/forecast-log-errors/",
        "monitoring/actuals/",
        "monitoring/actuals-by-hour/",
        "monitoring/settled/",
        "monitoring/reports/",
        "monitoring/state/",
        "monitoring/state/runs/",
        "batch/input/",
        "batch/output/",
        "batch/map-results/",
    ] {
        assert!(
            template.contains(&format!("Prefix: {prefix}\n")),
            "no lifecycle rule for {prefix}"
        );
    }
    assert!(template.contains("AbortIncompleteMultipartUpload:"));
    assert!(template.contains("ExpiredObjectDeleteMarker: true"));
    assert_eq!(
        template.matches("NoncurrentVersionExpiration:").count(),
        12,
        "a versioned bucket keeps every overwritten object until a rule expires it"
    );
    for field in [
        "$context.identity.sourceIp",
        "$context.identity.userArn",
        "$context.authorizer.claims.sub",
    ] {
        assert!(template.contains(field), "the access log lacks {field}");
    }
}

#[test]
fn every_failure_that_would_page_nobody_has_an_alarm() {
    let found = cfn_helper(&["metrics", TEMPLATES[0], TEMPLATES[1]]);
    let alarms: Vec<(String, String, String)> = found["alarms"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["template"].as_str().unwrap().to_string(),
                a["namespace"].as_str().unwrap().to_string(),
                a["metric"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let count = |template: &str, namespace: &str, metric: &str| {
        alarms
            .iter()
            .filter(|(t, n, m)| t == template && n == namespace && m == metric)
            .count()
    };
    let (main, ecs) = (TEMPLATES[0], TEMPLATES[1]);
    // Every dead-letter queue: failed invocations, undelivered alerts, the three schedules' DLQs.
    assert_eq!(
        count(main, "AWS/SQS", "ApproximateNumberOfMessagesVisible"),
        5,
        "{alarms:?}"
    );
    // The batch run's and the evaluation run's failures and timeouts.
    assert_eq!(
        count(main, "AWS/States", "ExecutionsFailed"),
        2,
        "{alarms:?}"
    );
    assert_eq!(
        count(main, "AWS/States", "ExecutionsTimedOut"),
        2,
        "{alarms:?}"
    );
    for (template, namespace, metric) in [
        (main, "AWS/ApiGateway", "5xx"),
        (main, "LstmForecast", "BatchSeries"),
        (main, "LstmForecast", "BatchShardFailures"),
        (main, "LstmForecast", "BatchManifests"),
        (main, "LstmForecast", "EvaluationPartitionFailures"),
        (main, "LstmForecast", "IntervalCoverage"),
        (main, "LstmForecast", "ForecastLogFailures"),
        (main, "AWS/Lambda", "Errors"),
        (ecs, "AWS/ApplicationELB", "HealthyHostCount"),
        (ecs, "AWS/ApplicationELB", "HTTPCode_ELB_5XX_Count"),
        (ecs, "AWS/ApplicationELB", "HTTPCode_Target_5XX_Count"),
    ] {
        assert_eq!(
            count(template, namespace, metric),
            1,
            "{template}: an alarm on {namespace} {metric}"
        );
    }
}

#[test]
fn the_prometheus_rules_pass_promtool_and_use_metrics_the_server_exposes() {
    let (ok, out) = run(
        std::path::Path::new("promtool"),
        &["check", "rules", "infra/prometheus/rules.yml"],
    );
    assert!(ok, "{out}");
    let rules = std::fs::read_to_string(repo_path("infra/prometheus/rules.yml")).unwrap();
    let mut exposed: BTreeSet<String> = Metric::ALL
        .iter()
        .filter_map(|m| prometheus_name(*m))
        .map(str::to_owned)
        .collect();
    for native in [
        "lstm_forecast_request_duration_seconds",
        "lstm_forecast_requests_total",
        "lstm_forecast_model_reload_failures_total",
    ] {
        exposed.insert(native.to_owned());
    }
    let mentioned: BTreeSet<String> = rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("lstm_forecast_"))
        .map(|w| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .fold(w.to_string(), |w, s| {
                    w.strip_suffix(s).map(str::to_owned).unwrap_or(w)
                })
        })
        .collect();
    assert!(!mentioned.is_empty());
    for name in &mentioned {
        assert!(
            exposed.contains(name),
            "rules.yml uses {name}, which the server does not expose"
        );
    }
}

#[tokio::test]
async fn a_live_metrics_scrape_passes_promtool_check_metrics() {
    use lstm_forecast::metrics::{ServerMetrics, Telemetry};
    let metrics = ServerMetrics::new();
    let monitoring = lstm_forecast::service::Monitoring {
        telemetry: Telemetry::new(Vec::new(), "etth1-ot-lstm", "1.0.0", None),
        forecast_log: None,
        backtest_rate: 1.0,
        sampling_seed: None,
    };
    let server = common::TestServer::start_with(
        common::bundled_model(),
        Default::default(),
        64,
        metrics,
        monitoring,
    )
    .await;
    let client = reqwest::Client::new();
    client
        .post(server.url("/v1/forecast"))
        .json(&common::forecast_body(&[common::window(0.0)]))
        .send()
        .await
        .unwrap();
    client
        .post(server.url("/v1/forecast"))
        .json(&json!({"series": []}))
        .send()
        .await
        .unwrap();
    server
        .service
        .telemetry()
        .record_in_bucket(Metric::Mae, 0.5, Some("1-6"));
    let scrape = common::get_text(&client, &server.url("/metrics")).await;
    assert!(scrape.contains("lstm_forecast_input_drift"), "{scrape}");
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut promtool.stdin.take().unwrap(), scrape.as_bytes()).unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop().await;
}

#[test]
fn the_kubernetes_manifests_validate_against_the_api_schema() {
    let mut args = vec!["--strict", "-k", "1.30.0"];
    // The plain manifests; kserve/ holds custom resources, checked against KServe's schemas below.
    let manifests: Vec<String> = std::fs::read_dir(repo_path("infra/k8s"))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_type().unwrap().is_file())
        .map(|e| format!("infra/k8s/{}", e.file_name().to_string_lossy()))
        .collect();
    args.extend(manifests.iter().map(String::as_str));
    let (ok, out) = run(&tools_bin("kubernetes-validate"), &args);
    assert!(ok, "{out}");
    assert_eq!(out.matches("passed").count(), manifests.len(), "{out}");
    let deployment = std::fs::read_to_string(repo_path("infra/k8s/deployment.yaml")).unwrap();
    for needle in [
        "name: lstm-predictor",
        "runAsNonRoot: true",
        "readinessProbe",
        "path: /readyz",
        "path: /healthz",
        "configMapRef",
        "automountServiceAccountToken: false",
        "preStop:",
        // The observations token comes from a Secret, never the ConfigMap.
        "name: OBSERVATIONS_TOKEN",
        "secretKeyRef",
    ] {
        assert!(deployment.contains(needle), "{needle}");
    }
    // The HPA owns the replica count, and an image is a release, never whatever :latest is today.
    assert!(!deployment.contains("replicas:"), "replicas fights the HPA");
    let image = deployment
        .lines()
        .find_map(|l| l.trim().strip_prefix("image: "))
        .expect("an image");
    assert!(
        !image.ends_with(":latest") && (image.contains('@') || image.contains(':')),
        "{image}"
    );
    for (file, kind) in [
        ("pdb.yaml", "PodDisruptionBudget"),
        ("networkpolicy.yaml", "NetworkPolicy"),
        ("hpa.yaml", "HorizontalPodAutoscaler"),
    ] {
        let text = std::fs::read_to_string(repo_path(&format!("infra/k8s/{file}"))).unwrap();
        assert!(text.contains(&format!("kind: {kind}")), "{file}");
    }
}

#[test]
fn the_image_filesystem_runs_with_an_empty_environment() {
    // The same script the Dockerfile's builder stage runs; the test build's binary stands in for
    // the release one.
    let root = tempfile::tempdir().unwrap();
    let rootfs = root.path().join("rootfs");
    let status = Command::new(repo_path("scripts/build-image-rootfs.sh"))
        .arg(&rootfs)
        .env("BINARY", env!("CARGO_BIN_EXE_lstm-forecast"))
        .status()
        .unwrap();
    assert!(status.success());
    let binary = rootfs.join("opt/lstm-forecast/bin/lstm-forecast");
    let rpath = Command::new("patchelf")
        .arg("--print-rpath")
        .arg(&binary)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&rpath.stdout).trim(),
        "$ORIGIN/../lib",
        "no build-machine path in the image"
    );
    // Stripped: no symbol table and no debug info (line tables were most of its 218 MB).
    // (.debug_gdb_scripts, in debug builds, is loaded data, not debug info.)
    let sections = readelf(&["-S", "--wide"], &binary);
    for section in [".symtab", ".debug_info", ".debug_line"] {
        assert!(
            !sections.contains(section),
            "{section} in the shipped binary"
        );
    }
    // Only what the loader opens: every shipped library is in the binary's DT_NEEDED closure
    // (libtorch.so and libshm.so are not, so they stay out), and that closure is all shipped
    // or left to the base image (glibc, libstdc++, libgcc_s). Plus libonnxruntime.so, which the
    // binary opens itself (dlopen), and whose own closure the base image holds.
    let lib = rootfs.join("opt/lstm-forecast/lib");
    let shipped: BTreeSet<String> = std::fs::read_dir(&lib)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let mut reached = BTreeSet::from(["libonnxruntime.so".to_string()]);
    let mut queue = vec![binary.clone(), lib.join("libonnxruntime.so")];
    while let Some(elf) = queue.pop() {
        for name in needed(&elf) {
            if shipped.contains(&name) && reached.insert(name.clone()) {
                queue.push(lib.join(&name));
            }
        }
    }
    assert_eq!(reached, shipped, "every shipped library is loaded");
    assert!(shipped.contains("libtorch_cpu.so") && shipped.contains("libc10.so"));
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("scripts/build-image-rootfs.sh /rootfs")
            && dockerfile.contains("COPY --from=builder /rootfs/ /")
    );
    assert!(dockerfile.contains("USER 10001"));
    let csv = repo_path("model_artifacts/data/ETTh1.csv");
    for entry in ["lstm-forecast", "bootstrap"] {
        let program = rootfs.join("opt/lstm-forecast/bin").join(entry);
        let args: &[&str] = if entry == "bootstrap" {
            &[]
        } else {
            &["forecast", "--input", csv.to_str().unwrap()]
        };
        if entry == "bootstrap" {
            // As `bootstrap` it is the Lambda entry: outside Lambda it must fail cleanly, naming
            // what is missing, rather than forecast.
            let output = Command::new(&program)
                .args(args)
                .env_clear()
                .env("THREADS", "1")
                .output()
                .unwrap();
            assert!(!output.status.success());
            continue;
        }
        let output = Command::new(&program)
            .args(args)
            .env_clear()
            .env("THREADS", "1")
            .output()
            .unwrap();
        let log = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success(), "{log}");
        // The image's own ONNX Runtime opened (tests/cli.rs shows this warning when it cannot).
        assert!(!log.contains("ONNX Runtime cannot be opened"), "{log}");
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert_eq!(
            answer["forecasts"][0]["values"].as_array().unwrap().len(),
            24
        );
    }
}

/// `readelf ARGS FILE`'s output (binutils, as in the Dockerfile's builder stage).
fn readelf(args: &[&str], file: &std::path::Path) -> String {
    let output = Command::new("readelf")
        .args(args)
        .arg(file)
        .output()
        .unwrap();
    assert!(output.status.success(), "readelf {}", file.display());
    String::from_utf8(output.stdout).unwrap()
}

/// The DT_NEEDED names of an ELF file: the libraries the loader opens for it.
fn needed(file: &std::path::Path) -> Vec<String> {
    readelf(&["-d"], file)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| Some(l.split_once('[')?.1.split_once(']')?.0.to_string()))
        .collect()
}

#[test]
fn make_deploy_fails_fast_without_aws_credentials() {
    let home = tempfile::tempdir().unwrap();
    let output = Command::new("make")
        .args(["-s", "deploy"])
        .current_dir(repo_path(""))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap())
        .env("HOME", home.path())
        .output()
        .unwrap();
    assert!(!output.status.success());
    let text = String::from_utf8_lossy(&output.stderr);
    assert!(text.contains("AWS credentials"), "{text}");
}

#[tokio::test]
async fn the_accuracy_alarm_rolls_the_model_back_end_to_end_on_the_emulators() {
    // GIVEN two published versions, 1.0.1 live
    let moto = Moto::start();
    moto.create_bucket("remediation").await;
    let registry = "s3://remediation/models/etth1-ot-lstm";
    for version in ["1.0.0", "1.0.1"] {
        let dir = common::bundled_as_version(version);
        let (ok, out) = common::emulators::cli(
            &moto,
            &["model", "publish", dir.path().to_str().unwrap(), registry],
        );
        assert!(ok, "{out}");
    }
    // AND the template's accuracy alarm in CloudWatch (ministack), in ALARM. It is a metric-math
    // alarm (WAPE counted only on hours with enough scored pairs), and ministack neither keeps nor
    // evaluates its queries (its GetMetricData answers "Expressions not implemented"), so the
    // state the data would produce is set here; `the_accuracy_alarm_counts_only_hours_with_enough_scored_pairs`
    // checks the gate, and tests/notifications.rs drives a plain alarm from data. Its Lambda action
    // is stored, not invoked: the test delivers it below.
    let ministack = Ministack::start();
    let cloudwatch = ministack.cloudwatch().await;
    let accuracy = common::template::alarm_properties("AccuracyAlarm");
    common::template::put_alarm(&cloudwatch, &accuracy, |resource| match resource {
        // The `live` alias: SnapStart serves published versions only.
        "ForecastFunction.Alias" => {
            Some("arn:aws:lambda:us-east-1:123456789012:function:lstm-forecast:live".into())
        }
        // Its e-mail and SMS subscribers are not part of this test.
        "AlertTopic" => None,
        other => panic!("an action on {other}"),
    })
    .await;
    let alarm_name = accuracy["AlarmName"].as_str().unwrap();
    assert_eq!(alarm_name, "lstm-forecast-accuracy");
    cloudwatch
        .set_alarm_state()
        .alarm_name(alarm_name)
        .state_value(StateValue::Alarm)
        .state_reason("WAPE 0.4 on 480 scored pairs in 2 of 3 hours")
        .send()
        .await
        .unwrap();
    let alarm = cloudwatch
        .describe_alarms()
        .alarm_names(alarm_name)
        .send()
        .await
        .unwrap()
        .metric_alarms()
        .first()
        .cloned()
        .expect("the template's accuracy alarm");
    assert_eq!(alarm.state_value(), Some(&StateValue::Alarm));

    // WHEN CloudWatch's Lambda action delivers the state change to the function (built from the
    // alarm as described by CloudWatch) through the Runtime API emulator
    let emulator = LambdaEmulator::start();
    let cache = tempfile::tempdir().unwrap();
    // (the evaluation that published that WAPE also recorded it as 1.0.1's own score, which the
    // function checks before it acts)
    let scores = json!({"1.0.1": {"wape": 0.4, "pairs": 480, "evaluated_at": chrono::Utc::now()}});
    moto.s3()
        .await
        .put_object()
        .bucket("remediation")
        .key("monitoring/state/scores.json")
        .body(aws_sdk_s3::primitives::ByteStream::from(
            scores.to_string().into_bytes(),
        ))
        .send()
        .await
        .unwrap();
    // Each service's own endpoint variable, none shared: S3 on moto (path-style addressing all the
    // same), the alarm it checks on ministack.
    let mut env = moto.env_for_s3_only();
    env.push(ministack.env_for_cloudwatch());
    env.push(("MODEL_URI", registry.to_string()));
    env.push(("ROLLBACK_ALARMS", alarm_name.to_string()));
    env.push((
        "FORECAST_LOG_URI",
        "s3://remediation/monitoring".to_string(),
    ));
    // Published a moment ago: no cooldown, or the alarm could not act at all.
    env.push(("ROLLBACK_COOLDOWN_MINUTES", "0".to_string()));
    env.push((
        "LSTM_FORECAST_MODEL_CACHE",
        cache.path().display().to_string(),
    ));
    let function = Function::start(&emulator, &env);
    let updated = alarm
        .state_updated_timestamp()
        .map(|t| t.secs())
        .unwrap_or(0);
    let stamp = chrono::DateTime::from_timestamp(updated, 0)
        .unwrap()
        .to_rfc3339();
    let payload = json!({
        "source": "aws.cloudwatch",
        "alarmArn": alarm.alarm_arn(),
        "accountId": "123456789012",
        "time": stamp,
        "region": "us-east-1",
        "alarmData": {
            "alarmName": alarm.alarm_name(),
            "state": {"value": "ALARM", "reason": alarm.state_reason(), "timestamp": stamp},
            "previousState": {"value": "OK", "reason": "", "timestamp": stamp},
            "configuration": {"description": "", "metrics": []}
        }
    });
    let (status, response) = emulator.invoke(&payload).await;

    // THEN the alias rolled back and the function serves the previous version
    assert_eq!(status, 200, "{response}\n{}", function.log());
    assert_eq!(response["action"], "rollback", "{response}");
    assert_eq!(response["to"], "1.0.0");
    let s3 = moto.s3().await;
    let alias = s3
        .get_object()
        .bucket("remediation")
        .key("models/etth1-ot-lstm/alias/live.json")
        .send()
        .await
        .unwrap();
    let alias: Value =
        serde_json::from_slice(&alias.body.collect().await.unwrap().into_bytes()).unwrap();
    assert_eq!(alias["version"], "1.0.0");
}

#[test]
fn the_accuracy_alarm_counts_only_hours_with_enough_scored_pairs() {
    // The alarm's queries, as CloudFormation deploys them with the parameters' defaults.
    let alarm = common::template::alarm_properties("AccuracyAlarm");
    let queries = alarm["Metrics"].as_array().expect("a metric-math alarm");
    let query = |id: &str| queries.iter().find(|q| q["Id"] == id).unwrap();
    let (wape, pairs) = (&query("wape")["MetricStat"], &query("pairs")["MetricStat"]);
    // WAPE and the pairs behind it, as `evaluate` publishes them (the version-free set), per hour
    assert_eq!(wape["Metric"]["MetricName"], Metric::Wape.name());
    assert_eq!(pairs["Metric"]["MetricName"], Metric::ScoredPairs.name());
    assert_eq!(
        (&wape["Stat"], &pairs["Stat"]),
        (&json!("Average"), &json!("Sum"))
    );
    assert_eq!(wape["Metric"]["Dimensions"], pairs["Metric"]["Dimensions"]);
    assert_eq!(wape["Period"], pairs["Period"]);
    // ... and the alarm sees WAPE only where the hour scored enough pairs: the minimum the function
    // also asks of a version before it rolls back (one parameter for both)
    let returned: Vec<&Value> = queries.iter().filter(|q| q["ReturnData"] == true).collect();
    assert_eq!(returned.len(), 1);
    assert_eq!(returned[0]["Expression"], "IF(pairs >= 240, wape, 0)");
    let template = std::fs::read_to_string(repo_path(TEMPLATES[0])).unwrap();
    assert!(template.contains("ROLLBACK_MIN_PAIRS: !Ref AccuracyMinPairs"));
    assert!(template.contains("Expression: !Sub \"IF(pairs >= ${AccuracyMinPairs}, wape, 0)\""));
}

/// A YAML file of the repository as JSON (the tools venv's PyYAML).
fn yaml_file(path: &str) -> Value {
    common::python_json(&[
        "-c",
        "import json, sys, yaml; print(json.dumps(yaml.safe_load(open(sys.argv[1]))))",
        path,
    ])
}

#[test]
fn the_kserve_runtime_and_inference_service_follow_kserves_schemas_and_speak_v2() {
    // KServe's CRD schemas, vendored (tests/fixtures/kserve/README.md) ...
    let validate = |schema: &str, path: &str| {
        run(
            &tools_bin("check-jsonschema"),
            &[
                "--schemafile",
                &format!("tests/fixtures/kserve/{schema}"),
                path,
            ],
        )
    };
    let runtime_schema = "servingruntime-serving.kserve.io-v1alpha1.json";
    let service_schema = "inferenceservice-serving.kserve.io-v1beta1.json";
    for (schema, path) in [
        (runtime_schema, "infra/k8s/kserve/servingruntime.yaml"),
        (service_schema, "infra/k8s/kserve/inferenceservice.yaml"),
    ] {
        let (ok, out) = validate(schema, path);
        assert!(ok, "{path}: {out}");
    }
    // ... which a runtime with a mistyped field fails
    let broken = tempfile::Builder::new().suffix(".yaml").tempfile().unwrap();
    let text = std::fs::read_to_string(repo_path("infra/k8s/kserve/servingruntime.yaml")).unwrap();
    std::fs::write(
        broken.path(),
        text.replace("  protocolVersions:\n    - v2", "  protocolVersions: v2"),
    )
    .unwrap();
    let (ok, out) = validate(runtime_schema, broken.path().to_str().unwrap());
    assert!(
        !ok,
        "the schema accepted protocolVersions as a string\n{out}"
    );
    // AND the runtime speaks v2 from the Deployment's image, probed on the v2 health routes
    let runtime = yaml_file("infra/k8s/kserve/servingruntime.yaml");
    assert_eq!(runtime["spec"]["protocolVersions"], json!(["v2"]));
    let container = &runtime["spec"]["containers"][0];
    assert_eq!(
        container["readinessProbe"]["httpGet"]["path"],
        "/v2/health/ready"
    );
    assert_eq!(
        container["livenessProbe"]["httpGet"]["path"],
        "/v2/health/live"
    );
    let deployment = yaml_file("infra/k8s/deployment.yaml");
    assert_eq!(
        container["image"],
        deployment["spec"]["template"]["spec"]["containers"][0]["image"]
    );
    let service = yaml_file("infra/k8s/kserve/inferenceservice.yaml");
    let model = &service["spec"]["predictor"]["model"];
    assert_eq!(model["runtime"], runtime["metadata"]["name"]);
    assert_eq!(model["protocolVersion"], "v2");
}

#[test]
fn the_swarm_stack_follows_the_compose_specification_and_rolls_back_a_failed_update() {
    // The Compose Specification's JSON schema, vendored by check-jsonschema (offline) ...
    let validate = |path: &str| {
        run(
            &tools_bin("check-jsonschema"),
            &["--builtin-schema", "vendor.compose-spec", path],
        )
    };
    let (ok, out) = validate("infra/swarm/stack.yml");
    assert!(ok, "{out}");
    // ... which a stack with a misspelt setting (silently ignored by a lenient reader) fails
    let broken = tempfile::Builder::new().suffix(".yml").tempfile().unwrap();
    let text = std::fs::read_to_string(repo_path("infra/swarm/stack.yml")).unwrap();
    std::fs::write(
        broken.path(),
        text.replace("    healthcheck:", "    healtcheck:"),
    )
    .unwrap();
    let (ok, out) = validate(broken.path().to_str().unwrap());
    assert!(!ok, "the schema accepted a misspelt healthcheck\n{out}");

    let stack = yaml_file("infra/swarm/stack.yml");
    let predictor = &stack["services"]["lstm-predictor"];
    let deploy = &predictor["deploy"];
    // Replicas, updated one at a time with the new task healthy first, rolled back on failure.
    assert!(deploy["replicas"].as_u64().unwrap() >= 2);
    let update = &deploy["update_config"];
    assert_eq!(
        (
            &update["parallelism"],
            &update["order"],
            &update["failure_action"]
        ),
        (&json!(1), &json!("start-first"), &json!("rollback"))
    );
    assert!(deploy["rollback_config"].is_object());
    assert!(deploy["resources"]["limits"]["cpus"].is_string());
    assert!(deploy["resources"]["limits"]["memory"].is_string());
    // The health check is the binary's own probe of readiness (the image has no curl).
    let health = predictor["healthcheck"]["test"].as_array().unwrap();
    assert_eq!(health[0], "CMD");
    assert!(health[1].as_str().unwrap().ends_with("/lstm-forecast"));
    assert_eq!(health[2], "probe");
    assert!(health[3].as_str().unwrap().ends_with("/readyz"));
    // Credentials and the observations token come from Swarm secrets, as files; the environment
    // holds no secret.
    let env = &predictor["environment"];
    assert_eq!(
        env["AWS_SHARED_CREDENTIALS_FILE"],
        "/run/secrets/aws_credentials"
    );
    assert_eq!(
        env["OBSERVATIONS_TOKEN_FILE"],
        "/run/secrets/observations_token"
    );
    for (name, _) in env.as_object().unwrap() {
        assert!(
            ![
                "AWS_SECRET_ACCESS_KEY",
                "AWS_ACCESS_KEY_ID",
                "OBSERVATIONS_TOKEN"
            ]
            .contains(&name.as_str()),
            "{name} in the environment"
        );
    }
    for secret in ["aws_credentials", "observations_token"] {
        assert_eq!(stack["secrets"][secret]["external"], true, "{secret}");
    }
    // An image is a release, never whatever :latest is today.
    let image = predictor["image"].as_str().unwrap();
    assert!(!image.contains("latest"), "{image}");
    // The service publishes nothing in clear: clients reach it through the TLS proxy, whose
    // certificate and key are secrets, and which forwards to every replica.
    assert!(predictor.get("ports").is_none(), "{predictor}");
    let proxy = &stack["services"]["tls-proxy"];
    assert_eq!(proxy["ports"][0]["published"], 443, "{proxy}");
    for secret in ["tls_certificate", "tls_key"] {
        assert!(proxy["secrets"].to_string().contains(secret), "{proxy}");
        assert_eq!(stack["secrets"][secret]["external"], true, "{secret}");
    }
    let caddyfile = std::fs::read_to_string(repo_path("infra/swarm/Caddyfile")).unwrap();
    assert!(
        caddyfile.contains("tls /run/secrets/tls_certificate /run/secrets/tls_key")
            && caddyfile.contains("reverse_proxy tasks.lstm-predictor:8080"),
        "{caddyfile}"
    );
    let published: Vec<String> = stack["services"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|s| s["ports"].as_array().cloned().unwrap_or_default())
        .map(|p| p["published"].to_string())
        .collect();
    assert!(!published.contains(&"8080".to_string()), "{published:?}");

    // Prometheus scrapes every task, with the rules shared with Kubernetes: promtool checks the
    // configuration as the stack mounts it (rules.yml beside prometheus.yml).
    let prometheus = &stack["services"]["prometheus"];
    assert_eq!(
        stack["configs"]["prometheus_rules"]["file"],
        "../prometheus/rules.yml"
    );
    assert!(prometheus["configs"].as_array().unwrap().len() == 2);
    let scrape = yaml_file("infra/swarm/prometheus.yml");
    assert_eq!(
        scrape["scrape_configs"][0]["dns_sd_configs"][0]["names"][0],
        "tasks.lstm-predictor"
    );
    let mounted = tempfile::tempdir().unwrap();
    for (from, to) in [
        ("infra/swarm/prometheus.yml", "prometheus.yml"),
        ("infra/prometheus/rules.yml", "rules.yml"),
    ] {
        std::fs::copy(repo_path(from), mounted.path().join(to)).unwrap();
    }
    let config = mounted.path().join("prometheus.yml");
    let (ok, out) = run(
        std::path::Path::new("promtool"),
        &["check", "config", config.to_str().unwrap()],
    );
    assert!(ok, "{out}");
}

#[test]
fn the_batch_state_machine_is_a_distributed_map_over_s3_shards_that_ends_with_the_manifest() {
    let (definition, schedule) = common::shards::template_state_machine();
    let map = &definition["States"]["ForecastShards"];
    assert_eq!(map["Type"], "Map");
    assert_eq!(
        map["ItemProcessor"]["ProcessorConfig"]["Mode"],
        "DISTRIBUTED"
    );
    assert_eq!(
        map["ItemReader"]["Resource"],
        "arn:aws:states:::s3:listObjectsV2"
    );
    assert_eq!(map["ItemReader"]["Parameters"]["Bucket"], "${Bucket}");
    assert_eq!(
        map["ResultWriter"]["Resource"],
        "arn:aws:states:::s3:putObject"
    );
    // The batch the function receives: BatchInput as the shard event documents it (the tests'
    // ItemBatcher stand-in builds the same fields).
    let batch_input = &map["ItemBatcher"]["BatchInput"];
    assert_eq!(batch_input["action"], "batch-forecast-shard");
    assert_eq!(batch_input["bucket"], "${Bucket}");
    let stand_in = &common::shards::item_batches(&[json!({"Key": "k"})], 1, "s3://b/o/")[0];
    let fields = |v: &Value| -> BTreeSet<String> {
        v.as_object()
            .unwrap()
            .keys()
            .map(|k| k.trim_end_matches(".$").to_owned())
            .collect()
    };
    assert_eq!(fields(batch_input), fields(&stand_in["BatchInput"]));
    // Every setting a `*Path` field reads comes with each scheduled run.
    for path in [
        &map["MaxConcurrencyPath"],
        &map["ToleratedFailurePercentagePath"],
        &map["ItemBatcher"]["MaxItemsPerBatchPath"],
        &map["ItemReader"]["Parameters"]["Prefix.$"],
    ] {
        let key = path.as_str().unwrap().strip_prefix("$.").unwrap();
        assert!(!schedule[key].is_null(), "the schedule's input lacks {key}");
    }
    assert!(schedule["input_prefix"]
        .as_str()
        .unwrap()
        .starts_with("batch/input/"));
    // Each batch goes whole to the function's `live` alias; a failure a retry may cure is retried.
    let task = &map["ItemProcessor"]["States"]["ForecastShard"];
    assert_eq!(task["Resource"], "arn:aws:states:::lambda:invoke");
    assert_eq!(task["Parameters"]["FunctionName"], "${FunctionArn}");
    assert_eq!(task["Parameters"]["Payload.$"], "$");
    // The kind is the code's own spelling, not a copy of it.
    let retried = lstm_forecast::service::jobs::JobError::ShardFailed(String::new()).kind();
    assert!(
        task["Retry"][0]["ErrorEquals"]
            .as_array()
            .unwrap()
            .contains(&json!(retried)),
        "{task}"
    );
    // The manifest comes last, after a failed map too, for the same run's output folder.
    assert_eq!(map["Next"], "WriteManifest");
    assert_eq!(map["Catch"][0]["ErrorEquals"], json!(["States.ALL"]));
    assert_eq!(map["Catch"][0]["Next"], "WriteManifest");
    let manifest = &definition["States"]["WriteManifest"];
    assert_eq!(manifest["End"], true);
    assert_eq!(
        manifest["Parameters"]["Payload"]["action"],
        "batch-manifest"
    );
    assert_eq!(
        manifest["Parameters"]["Payload"]["output.$"],
        batch_input["output.$"]
    );
    assert!(batch_input["output.$"]
        .as_str()
        .unwrap()
        .contains("$$.Execution.Name"));
}
