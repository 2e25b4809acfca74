//! The sharded batch run: the real binary as the shard function, fed the events a Step Functions
//! Distributed Map sends, against S3 emulators; and the template's state machine end to end on
//! ministack.

use crate::common;

use std::collections::BTreeMap;

use common::emulators::{s3_at, Function, LambdaEmulator, Ministack, Moto};
use common::shards::{
    batch_env, csv_shard, for_ministack, forecast_ids, item_batches, jsonl_shard, listed_items,
    put, series, substitute, template_state_machine, text, FaultyS3, BUCKET, INPUT_PREFIX,
    OUTPUT_PREFIX,
};
use serde_json::{json, Value};

/// One Lambda execution environment: the Runtime API emulator and the function under it.
struct Instance {
    emulator: LambdaEmulator,
    function: Function,
}

impl Instance {
    fn start(env: &[(&str, String)]) -> Self {
        let emulator = LambdaEmulator::start();
        let function = Function::start(&emulator, env);
        Instance { emulator, function }
    }

    /// Invokes the function: `Ok(result)` or `Err(error payload)`.
    async fn invoke(&self, event: &Value) -> Result<Value, Value> {
        let (status, payload) = self.emulator.invoke(event).await;
        if status == 200 && payload.get("errorType").is_none() {
            Ok(payload)
        } else {
            Err(payload)
        }
    }
}

fn shard_function_env(
    s3_endpoint: &str,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let mut env: Vec<(&'static str, String)> = Moto::env_at(s3_endpoint);
    env.extend(batch_env());
    env.extend(extra.iter().cloned());
    env
}

fn run_uri(run: &str) -> (String, String) {
    (
        format!("s3://{BUCKET}/{INPUT_PREFIX}{run}/"),
        format!("s3://{BUCKET}/{OUTPUT_PREFIX}{run}/"),
    )
}

fn manifest_event(run: &str) -> Value {
    let (input, output) = run_uri(run);
    json!({"action": "batch-manifest", "input": input, "output": output})
}

async fn read_manifest(s3: &aws_sdk_s3::Client, run: &str) -> Value {
    let key = format!("{OUTPUT_PREFIX}{run}/_manifest.json");
    serde_json::from_str(&text(s3, &key).await.expect("the manifest exists")).unwrap()
}

fn output_key(run: &str, name: &str) -> String {
    format!("{OUTPUT_PREFIX}{run}/{name}.jsonl")
}

/// When the object at `key` was last written.
async fn last_modified(s3: &aws_sdk_s3::Client, key: &str) -> aws_sdk_s3::primitives::DateTime {
    let listed = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .prefix(key)
        .send()
        .await
        .unwrap();
    let object = listed.contents().iter().find(|o| o.key() == Some(key));
    *object.expect("the object exists").last_modified().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_batched_as_the_item_batcher_would_land_complete_across_two_instances_with_a_manifest(
) {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let run = "run-1";
    let shards = [
        ("part-00000.csv", "a", 40, csv_shard("a", 40)),
        ("part-00001.jsonl", "b", 30, jsonl_shard("b", 30)),
        ("part-00002.csv", "c", 25, csv_shard("c", 25)),
        ("part-00003.ndjson", "d", 20, jsonl_shard("d", 20)),
        ("part-00004.csv", "e", 35, csv_shard("e", 35)),
    ];
    for (name, _, _, body) in &shards {
        put(&s3, &format!("{INPUT_PREFIX}{run}/{name}"), body.clone()).await;
    }
    let env = shard_function_env(&moto.endpoint, &[]);
    let instances = [Instance::start(&env), Instance::start(&env)];

    // The test driver does what the Distributed Map does: list the prefix, batch the items two
    // at a time, and hand the batches to the instances in parallel.
    let items = listed_items(&s3, &format!("{INPUT_PREFIX}{run}/")).await;
    assert_eq!(items.len(), shards.len());
    let (_, output) = run_uri(run);
    let batches = item_batches(&items, 2, &output);
    let runs = instances.iter().enumerate().map(|(i, instance)| {
        let mine: Vec<&Value> = batches.iter().skip(i).step_by(2).collect();
        async move {
            let mut results = Vec::new();
            for batch in mine {
                results.push(instance.invoke(batch).await.expect("the batch succeeds"));
            }
            results
        }
    });
    let results: Vec<Value> = futures_util::future::join_all(runs)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(results.len(), 3);
    let series_written: u64 = results.iter().map(|r| r["series"].as_u64().unwrap()).sum();
    assert_eq!(series_written, 150);
    assert!(results.iter().all(|r| r["failed"] == 0), "{results:?}");
    // Both instances worked, and each published the service core's metrics for its shards.
    for instance in &instances {
        let log = instance.function.log_once_it_holds("BatchSeries");
        assert!(
            log.contains("batch shard written"),
            "both instances forecast shards"
        );
        for metric in [
            "\"BatchSeries\"",
            "\"Forecasts\"",
            "\"InputDrift\"",
            "\"InferenceLatency\"",
        ] {
            assert!(
                log.contains(metric),
                "{metric} missing from the EMF lines:\n{log}"
            );
        }
    }

    // Each shard's output holds its series in input order, forecast by the served model.
    let model = common::bundled_model();
    for (name, tag, count, _) in &shards {
        let body = text(&s3, &output_key(run, name))
            .await
            .expect("an output per shard");
        let expected: Vec<String> = series(tag, *count).into_iter().map(|s| s.0).collect();
        assert_eq!(forecast_ids(&body), expected);
        let first: Value = serde_json::from_str(body.lines().next().unwrap()).unwrap();
        let window = &series(tag, 1)[0].2;
        let alone = model.forecast(&[window]).unwrap().remove(0);
        let streamed: Vec<f64> = common::f64s(&first["values"]);
        for (a, b) in alone.iter().zip(&streamed) {
            assert!(
                (a - b).abs() <= 1e-6 * a.abs().max(1.0),
                "{alone:?} vs {streamed:?}"
            );
        }
    }

    // The manifest comes last and accounts for every shard.
    let answer = instances[0].invoke(&manifest_event(run)).await.unwrap();
    assert_eq!(answer["shards"], 5);
    assert_eq!(answer["series"], 150);
    let manifest = read_manifest(&s3, run).await;
    assert_eq!(manifest["series"], 150);
    assert_eq!(manifest["completed"].as_array().unwrap().len(), 5);
    assert_eq!(manifest["failed"], json!([]));
    assert_eq!(manifest["missing"], json!([]));
    let counts: BTreeMap<String, u64> = manifest["completed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["output"].as_str().unwrap().to_owned(),
                c["series"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        counts[&format!("s3://{BUCKET}/{}", output_key(run, "part-00001.jsonl"))],
        30
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_that_breaks_the_input_contract_fails_alone_and_the_manifest_names_it() {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let run = "run-bad";
    // The fifth row's value replaced by text.
    let not_a_number: String = csv_shard("n", 3)
        .lines()
        .enumerate()
        .map(|(i, line)| match i {
            5 => format!("{},abc\n", line.rsplit_once(',').unwrap().0),
            _ => format!("{line}\n"),
        })
        .collect();
    let mut interleaved = csv_shard("x", 2);
    interleaved.push_str(&csv_shard("x", 1).replacen("id,date,OT\n", "", 1));
    let shards = [
        ("good.csv", csv_shard("g", 12)),
        ("not-a-number.csv", not_a_number),
        (
            "no-target.csv",
            csv_shard("t", 3).replacen("id,date,OT", "id,date,temperature", 1),
        ),
        ("interleaved.csv", interleaved),
        ("notes.txt", "just some notes\n".to_string()),
        ("good.jsonl", jsonl_shard("j", 8)),
        // A spreadsheet export: its byte-order mark is not part of the `id` column's name.
        ("excel.csv", format!("\u{feff}{}", csv_shard("x", 3))),
    ];
    for (name, body) in &shards {
        put(&s3, &format!("{INPUT_PREFIX}{run}/{name}"), body.clone()).await;
    }
    let instance = Instance::start(&shard_function_env(&moto.endpoint, &[]));
    let items = listed_items(&s3, &format!("{INPUT_PREFIX}{run}/")).await;
    let (_, output) = run_uri(run);
    // An object deleted between the listing and the invocation: gone for good, not retried.
    let mut items = items;
    items.push(json!({"Key": format!("{INPUT_PREFIX}{run}/gone.csv")}));
    let batch = &item_batches(&items, items.len(), &output)[0];

    // Bad input is permanent: the invocation succeeds and names each bad shard.
    let result = instance
        .invoke(batch)
        .await
        .expect("bad input fails only its shard");
    assert_eq!(result["failed"], 5, "{result}");
    assert_eq!(result["series"], 23, "{result}");
    let errors: BTreeMap<String, String> = result["results"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r.get("error").is_some())
        .map(|r| {
            let name = r["input"]
                .as_str()
                .unwrap()
                .rsplit('/')
                .next()
                .unwrap()
                .to_owned();
            (name, r["error"]["message"].as_str().unwrap().to_owned())
        })
        .collect();
    let expect = |name: &str, needle: &str| {
        assert!(errors[name].contains(needle), "{name}: {}", errors[name]);
    };
    expect("not-a-number.csv", "`abc` is not a number");
    expect("no-target.csv", "no column `OT`");
    expect("interleaved.csv", "series `x-0` appears again");
    expect("notes.txt", "*.csv, *.jsonl or *.ndjson");
    expect("gone.csv", "does not exist");
    let excel = text(&s3, &output_key(run, "excel.csv")).await.unwrap();
    assert_eq!(
        forecast_ids(&excel),
        ["x-0", "x-1", "x-2"],
        "three series, not one"
    );
    for name in [
        "not-a-number.csv",
        "no-target.csv",
        "interleaved.csv",
        "notes.txt",
    ] {
        assert_eq!(
            text(&s3, &output_key(run, name)).await,
            None,
            "{name}: nothing visible"
        );
    }
    for (name, count) in [("good.csv", 12), ("good.jsonl", 8)] {
        let body = text(&s3, &output_key(run, name)).await.unwrap();
        assert_eq!(forecast_ids(&body).len(), count, "{name}");
    }
    assert!(instance
        .function
        .log_once_it_holds("BatchShardFailures")
        .contains("BatchShardFailures"));

    // The manifest is written, names the failures, and fails the run so that it pages.
    let refused = instance.invoke(&manifest_event(run)).await.unwrap_err();
    assert_eq!(refused["errorType"], "BatchIncomplete", "{refused}");
    assert!(
        refused["errorMessage"]
            .as_str()
            .unwrap()
            .contains("4 of 7 shards failed"),
        "{refused}"
    );
    let manifest = read_manifest(&s3, run).await;
    assert_eq!(manifest["failed"].as_array().unwrap().len(), 4);
    assert_eq!(manifest["completed"].as_array().unwrap().len(), 3);
    assert_eq!(manifest["series"], 23);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shards_of_one_name_in_two_subfolders_fail_the_run_instead_of_overwriting_each_other() {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let run = "run-dup";
    for region in ["eu", "us"] {
        put(
            &s3,
            &format!("{INPUT_PREFIX}{run}/{region}/part-0.csv"),
            csv_shard(region, 2),
        )
        .await;
    }
    let instance = Instance::start(&shard_function_env(&moto.endpoint, &[]));
    let items = listed_items(&s3, &format!("{INPUT_PREFIX}{run}/")).await;
    let (_, output) = run_uri(run);
    instance
        .invoke(&item_batches(&items, 2, &output)[0])
        .await
        .unwrap();
    let refused = instance.invoke(&manifest_event(run)).await.unwrap_err();
    assert_eq!(refused["errorType"], "BatchIncomplete", "{refused}");
    let manifest = read_manifest(&s3, run).await;
    assert_eq!(
        manifest["failed"].as_array().unwrap().len(),
        2,
        "{manifest}"
    );
    let message = manifest["failed"][0]["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("share this file name") && message.contains("eu/part-0.csv"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_shard_events_read_and_write_nothing_outside_the_batch_prefixes() {
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let alias = "models/m/alias/live.json";
    put(&s3, alias, r#"{"version":"1.0.0"}"#).await;
    put(&s3, "models/m/1.0.0/data.csv", csv_shard("secret", 2)).await;
    let instance = Instance::start(&shard_function_env(&moto.endpoint, &[]));
    let (_, output) = run_uri("run-forged");

    // A shard outside the input prefix is refused and gets no status or output.
    let reads_a_model = item_batches(&[json!({"Key": "models/m/1.0.0/data.csv"})], 1, &output);
    let result = instance.invoke(&reads_a_model[0]).await.unwrap();
    assert_eq!(
        result["results"][0]["error"]["type"], "Forbidden",
        "{result}"
    );
    // An output outside the output prefix refuses the whole batch, before any work.
    for forged_output in [
        format!("s3://{BUCKET}/models/m/alias/"),
        format!("s3://{BUCKET}/{OUTPUT_PREFIX}"),
        format!("s3://{BUCKET}/{OUTPUT_PREFIX}run-forged"),
        format!("s3://other-bucket/{OUTPUT_PREFIX}run-forged/"),
    ] {
        let items = [json!({"Key": format!("{INPUT_PREFIX}run-forged/a.csv")})];
        let event = &item_batches(&items, 1, &forged_output)[0];
        let refused = instance.invoke(event).await.unwrap_err();
        assert!(
            ["Forbidden", "InvalidInput"].contains(&refused["errorType"].as_str().unwrap()),
            "{forged_output}: {refused}"
        );
    }
    // The un-batched shape is as strict, and so is the manifest.
    let unknown_field = json!({"action": "batch-forecast-shard", "bucket": BUCKET, "output": output,
                               "Key": format!("{INPUT_PREFIX}run-forged/a.csv"), "overwrite": "models/"});
    assert_eq!(
        instance.invoke(&unknown_field).await.unwrap_err()["errorType"],
        "InvalidEvent"
    );
    let wrong_action = json!({"Items": [], "BatchInput": {"action": "batch-forecast", "bucket": BUCKET, "output": output}});
    assert_eq!(
        instance.invoke(&wrong_action).await.unwrap_err()["errorType"],
        "InvalidEvent"
    );
    let manifest_over_models = json!({"action": "batch-manifest", "input": format!("s3://{BUCKET}/models/"),
                                      "output": format!("s3://{BUCKET}/models/m/alias/")});
    assert_eq!(
        instance.invoke(&manifest_over_models).await.unwrap_err()["errorType"],
        "Forbidden"
    );

    // Nothing outside the prefixes changed, and nothing was written at all.
    assert_eq!(text(&s3, alias).await.unwrap(), r#"{"version":"1.0.0"}"#);
    let keys: Vec<String> = s3
        .list_objects_v2()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap()
        .contents()
        .iter()
        .map(|o| o.key().unwrap().to_owned())
        .collect();
    assert_eq!(keys, ["models/m/1.0.0/data.csv", alias]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_s3_failure_mid_upload_leaves_no_partial_object_and_a_rerun_rewrites_only_that_shard() {
    // Parts of 16 KiB (moto told to accept them), so a 60-series shard (~66 KB) takes 5 parts.
    let moto = Moto::start_with(&[("S3_UPLOAD_PART_MIN_SIZE", "8192")]);
    let s3 = moto.create_bucket(BUCKET).await;
    let faulty = FaultyS3::in_front_of(&moto.endpoint).await;
    let run = "run-retry";
    for name in ["a", "b", "c", "d"] {
        put(
            &s3,
            &format!("{INPUT_PREFIX}{run}/{name}.csv"),
            csv_shard(name, 60),
        )
        .await;
    }
    let instance = Instance::start(&shard_function_env(
        &faulty.endpoint,
        &[("BATCH_PART_BYTES", "16384".into())],
    ));
    let items = listed_items(&s3, &format!("{INPUT_PREFIX}{run}/")).await;
    let item = |name: &str| {
        items
            .iter()
            .find(|i| {
                i["Key"]
                    .as_str()
                    .unwrap()
                    .ends_with(&format!("/{name}.csv"))
            })
            .unwrap()
            .clone()
    };
    let (_, output) = run_uri(run);
    let batch_of = |names: &[&str]| {
        let chosen: Vec<Value> = names.iter().map(|n| item(n)).collect();
        item_batches(&chosen, chosen.len(), &output).remove(0)
    };
    instance.invoke(&batch_of(&["a", "b", "c"])).await.unwrap();
    assert!(
        faulty.forwarded_parts() >= 12,
        "each output went up in several parts"
    );
    let a_before = last_modified(&s3, &output_key(run, "a.csv")).await;
    let c_before = last_modified(&s3, &output_key(run, "c.csv")).await;
    let b_before = text(&s3, &output_key(run, "b.csv")).await.unwrap();

    // S3 fails from the second part on: b (written before) and d (new) fail in mid-upload.
    faulty.fail_parts_from(2);
    let forwarded = faulty.forwarded_parts();
    let failed = instance.invoke(&batch_of(&["b", "d"])).await.unwrap_err();
    assert_eq!(
        failed["errorType"], "ShardFailed",
        "a retry may cure it: {failed}"
    );
    assert!(
        faulty.refused() > 0 && faulty.forwarded_parts() > forwarded,
        "first parts went up"
    );
    assert_eq!(
        text(&s3, &output_key(run, "b.csv")).await.unwrap(),
        b_before,
        "b is still whole"
    );
    assert_eq!(
        text(&s3, &output_key(run, "d.csv")).await,
        None,
        "no partial d is visible"
    );
    let uploads = s3
        .list_multipart_uploads()
        .bucket(BUCKET)
        .send()
        .await
        .unwrap();
    assert!(
        uploads.uploads().is_empty(),
        "aborted: {:?}",
        uploads.uploads()
    );

    // The re-run (what Step Functions' Retry does) rewrites b and d, and nothing else.
    faulty.heal();
    instance.invoke(&batch_of(&["b", "d"])).await.unwrap();
    assert_eq!(
        forecast_ids(&text(&s3, &output_key(run, "d.csv")).await.unwrap()).len(),
        60
    );
    assert_eq!(
        text(&s3, &output_key(run, "b.csv")).await.unwrap(),
        b_before
    );
    for (name, was) in [("a.csv", a_before), ("c.csv", c_before)] {
        assert_eq!(
            last_modified(&s3, &output_key(run, name)).await,
            was,
            "{name} untouched"
        );
    }
    let answer = instance.invoke(&manifest_event(run)).await.unwrap();
    assert_eq!(
        (answer["shards"].as_u64(), answer["series"].as_u64()),
        (Some(4), Some(240))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_template_state_machine_forecasts_every_shard_on_ministack_and_writes_the_manifest() {
    let ministack = Ministack::start_step_functions();
    let s3 = s3_at(&ministack.endpoint);
    s3.create_bucket().bucket(BUCKET).send().await.unwrap();
    let (definition, schedule_input) = template_state_machine();
    let definition = substitute(
        &for_ministack(
            &definition,
            &json!({"max_concurrency": 2, "tolerated_failure_percentage": 0}),
        ),
        "lstm-forecast",
        BUCKET,
    );
    let dir = tempfile::tempdir().unwrap();
    let definition_file = dir.path().join("batch.asl.json");
    std::fs::write(&definition_file, definition.to_string()).unwrap();

    let execute = |run: &str| {
        let mut input = schedule_input.clone();
        input["input_prefix"] = json!(format!("{INPUT_PREFIX}{run}/"));
        let mut args: Vec<String> = [
            "tests/support/step_functions.py",
            "--endpoint",
            &ministack.endpoint,
            "--function-name",
            "lstm-forecast",
            "--binary",
            env!("CARGO_BIN_EXE_lstm-forecast"),
            "--state-machine-name",
            "lstm-forecast-batch",
            "--definition",
            definition_file.to_str().unwrap(),
            "--execution-name",
            run,
            "--input",
            &input.to_string(),
            "--timeout-seconds",
            "240",
        ]
        .map(str::to_owned)
        .to_vec();
        for (name, value) in shard_function_env(&ministack.endpoint, &[("THREADS", "1".into())]) {
            args.extend(["--env".to_owned(), format!("{name}={value}")]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        common::python_json(&args)
    };

    for (name, body) in [
        ("part-0.csv", csv_shard("p", 30)),
        ("part-1.jsonl", jsonl_shard("q", 20)),
        ("part-2.csv", csv_shard("r", 10)),
    ] {
        put(&s3, &format!("{INPUT_PREFIX}nightly-1/{name}"), body).await;
    }
    let finished = execute("nightly-1");
    assert_eq!(finished["status"], "SUCCEEDED", "{finished}");
    assert_eq!(finished["output"]["action"], "batch-manifest", "{finished}");
    assert_eq!(finished["output"]["series"], 60, "{finished}");
    let manifest = read_manifest(&s3, "nightly-1").await;
    assert_eq!(
        manifest["completed"].as_array().unwrap().len(),
        3,
        "{manifest}"
    );
    for (name, count) in [("part-0.csv", 30), ("part-1.jsonl", 20), ("part-2.csv", 10)] {
        let body = text(&s3, &output_key("nightly-1", name)).await.unwrap();
        assert_eq!(forecast_ids(&body).len(), count);
    }

    // A bad shard: the run still writes its manifest, then fails (the alarm's signal).
    for (name, body) in [
        ("part-0.csv", csv_shard("s", 5)),
        (
            "part-1.csv",
            "id,date,OT\ns-0,2016-07-01 00:00:00,1.0\n".to_owned(),
        ),
    ] {
        put(&s3, &format!("{INPUT_PREFIX}nightly-2/{name}"), body).await;
    }
    let failed = execute("nightly-2");
    assert_eq!(failed["status"], "FAILED", "{failed}");
    assert_eq!(failed["error"], "BatchIncomplete", "{failed}");
    let manifest = read_manifest(&s3, "nightly-2").await;
    assert_eq!(
        manifest["failed"].as_array().unwrap().len(),
        1,
        "{manifest}"
    );
    assert!(
        manifest["failed"][0]["error"]["message"]
            .as_str()
            .unwrap()
            .contains("has 1 rows"),
        "{manifest}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_with_one_series_id_twice_fails_alone_and_names_both() {
    // GIVEN a JSON Lines shard whose third series reuses the first one's id, beside a good shard
    let moto = Moto::start();
    let s3 = moto.create_bucket(BUCKET).await;
    let run = "run-duplicate-ids";
    let good = jsonl_shard("d", 3);
    let first_line = good.lines().next().unwrap().to_string();
    let repeated = format!("{}{first_line}\n", jsonl_shard("d", 2));
    put(
        &s3,
        &format!("{INPUT_PREFIX}{run}/repeated.jsonl"),
        repeated,
    )
    .await;
    put(&s3, &format!("{INPUT_PREFIX}{run}/good.jsonl"), good).await;
    let instance = Instance::start(&shard_function_env(&moto.endpoint, &[]));
    let items = listed_items(&s3, &format!("{INPUT_PREFIX}{run}/")).await;
    let (_, output) = run_uri(run);
    // WHEN both shards run
    let result = instance
        .invoke(&item_batches(&items, items.len(), &output)[0])
        .await
        .expect("bad input fails only its shard");
    // THEN the repeated id fails its shard for good, naming both series; nothing of it is written
    assert_eq!(result["failed"], 1, "{result}");
    let failed = result["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r.get("error").is_some())
        .expect("a failed shard");
    assert_eq!(failed["error"]["type"], "InvalidInput", "{failed}");
    let message = failed["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("series[2].id `d-0` repeats series[0].id"),
        "{message}"
    );
    assert_eq!(text(&s3, &output_key(run, "repeated.jsonl")).await, None);
    // AND the good shard is written whole
    let written = text(&s3, &output_key(run, "good.jsonl")).await.unwrap();
    assert_eq!(forecast_ids(&written), ["d-0", "d-1", "d-2"]);
}
