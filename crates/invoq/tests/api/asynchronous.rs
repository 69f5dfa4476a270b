//! Asynchronous invocation through the official SDK: 202 and durability, Lambda's retry and
//! event-age rules (under INVOQ_TIME_SCALE), reserved concurrency 0, queue back-pressure, the
//! event-invoke-config API, and recovery from SIGKILL.

use std::collections::HashMap;
use std::time::Duration;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::error::ProvideErrorMetadata;
use aws_sdk_lambda::primitives::{Blob, ByteStream};
use aws_sdk_lambda::types::{DestinationConfig, InvocationType, OnFailure, OnSuccess};
use serde_json::Value;

use crate::harness::{Invoq, create_builtin, data_dir, invoke_event};

/// Retry waits of 60 s and 120 s become 0.6 s and 1.2 s.
const TIME_SCALE: &str = "0.01";

fn serve_scaled(data: &std::path::Path, extra: &[(&str, &str)]) -> Invoq {
    let mut env = vec![("INVOQ_TIME_SCALE", TIME_SCALE)];
    env.extend_from_slice(extra);
    Invoq::serve_with(data, &env)
}

/// Every outcome goes here: with the default `file` adapters, one JSON line per record in
/// `<data-dir>/destinations/sqs/outcomes.jsonl`.
const OUTCOMES: &str = "arn:aws:sqs:us-east-1:000000000000:outcomes";

/// Records delivered to [`OUTCOMES`], by request id.
fn outcomes(data: &std::path::Path) -> HashMap<String, Vec<Value>> {
    let lines =
        std::fs::read_to_string(data.join("destinations/sqs/outcomes.jsonl")).unwrap_or_default();
    let mut by_id: HashMap<String, Vec<Value>> = HashMap::new();
    for line in lines.lines() {
        let record: Value = serde_json::from_str(line).expect("one JSON record per line");
        let id = record["requestContext"]["requestId"]
            .as_str()
            .unwrap()
            .to_owned();
        by_id.entry(id).or_default().push(record);
    }
    by_id
}

/// Waits until `request_id`'s record arrives; returns it.
async fn outcome_of(data: &std::path::Path, request_id: &str) -> Value {
    for _ in 0..300 {
        if let Some(records) = outcomes(data).remove(request_id) {
            assert_eq!(
                records.len(),
                1,
                "one terminal outcome per event: {records:?}"
            );
            return records.into_iter().next().unwrap();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no outcome for {request_id}");
}

/// Sends both outcomes of `function` to [`OUTCOMES`], with these retry settings.
async fn put_config(client: &Client, function: &str, retries: Option<i32>, max_age: Option<i32>) {
    let destination = |arn: &str| {
        DestinationConfig::builder()
            .on_success(OnSuccess::builder().destination(arn).build())
            .on_failure(OnFailure::builder().destination(arn).build())
            .build()
    };
    client
        .put_function_event_invoke_config()
        .function_name(function)
        .set_maximum_retry_attempts(retries)
        .set_maximum_event_age_in_seconds(max_age)
        .destination_config(destination(OUTCOMES))
        .send()
        .await
        .expect("put event invoke config");
}

/// How many attempts the function saw with this request id, from its kept log.
fn attempts_logged(data: &std::path::Path, function: &str, request_id: &str) -> usize {
    let log = std::fs::read_to_string(data.join(format!("runtime/logs/{function}.log")))
        .unwrap_or_default();
    log.lines()
        .filter(|line| line.starts_with(&format!("START RequestId: {request_id} ")))
        .count()
}

#[tokio::test]
async fn event_answers_202_and_the_event_runs() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    create_builtin(&client, "echo", "echo").await;
    put_config(&client, "echo", None, None).await;
    let request_id = invoke_event(&client, "echo", r#"{"order":7}"#).await;
    let record = outcome_of(data.path(), &request_id).await;
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(
        record["requestContext"]["functionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:echo:$LATEST"
    );
    assert_eq!(record["requestPayload"], serde_json::json!({"order": 7}));
    assert_eq!(record["responsePayload"], serde_json::json!({"order": 7}));
    assert_eq!(record["responseContext"]["statusCode"], 200);
    assert!(record["responseContext"].get("functionError").is_none());

    #[allow(deprecated)]
    let legacy = client
        .invoke_async()
        .function_name("echo")
        .invoke_args(ByteStream::from_static(br#"{"legacy":true}"#))
        .send()
        .await
        .expect("InvokeAsync");
    assert_eq!(legacy.status(), 202);

    let missing = client
        .invoke()
        .function_name("ghost")
        .invocation_type(InvocationType::Event)
        .send()
        .await
        .expect_err("404");
    assert_eq!(missing.code(), Some("ResourceNotFoundException"));
    let not_json = client
        .invoke()
        .function_name("echo")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new("{"))
        .send()
        .await
        .expect_err("400");
    assert_eq!(not_json.code(), Some("InvalidRequestContentException"));
    let mut big = vec![b' '; 1_048_577];
    big[0] = b'1';
    let too_large = client
        .invoke()
        .function_name("echo")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(big))
        .send()
        .await
        .expect_err("413");
    assert_eq!(too_large.code(), Some("RequestEntityTooLargeException"));
    assert_eq!(
        too_large.message(),
        Some(
            "1048577 byte payload is too large for the Event invocation type (limit 1048576 bytes)"
        )
    );
}

/// A megabyte of quotes is a megabyte in the queue, not an escaped string twice as large:
/// the record carries the caller's text as it was, and the dead-letter body is the caller's
/// exact text. The record, over SQS's size with its echoed response, arrives without the
/// response payload, as Lambda trims records too large for their destination.
#[tokio::test]
async fn a_megabyte_event_of_quotes_keeps_its_text_to_the_record_and_the_dlq() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    create_builtin(&client, "echo", "echo").await;
    put_config(&client, "echo", None, None).await;
    create_builtin(&client, "fail", "fail").await;
    client
        .update_function_configuration()
        .function_name("fail")
        .dead_letter_config(
            aws_sdk_lambda::types::DeadLetterConfig::builder()
                .target_arn("arn:aws:sqs:us-east-1:000000000000:quotes-dlq")
                .build(),
        )
        .send()
        .await
        .expect("dead-letter config");
    client
        .put_function_event_invoke_config()
        .function_name("fail")
        .maximum_retry_attempts(0)
        .send()
        .await
        .unwrap();
    crate::harness::wait_until_active(&client, "fail").await;

    let quotes = "\\\"".repeat(510_000);
    let payload = format!(r#"{{ "quotes" :  "{quotes}" }}"#);
    assert!(payload.len() > 1_000_000 && payload.len() <= 1_048_576);
    let request_id = invoke_event(&client, "echo", &payload).await;
    let record = outcome_of(data.path(), &request_id).await;
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(
        record["requestPayload"]["quotes"].as_str().map(str::len),
        Some(510_000)
    );
    assert!(
        record.get("responsePayload").is_none(),
        "trimmed to fit SQS"
    );
    let line =
        std::fs::read_to_string(data.path().join("destinations/sqs/outcomes.jsonl")).unwrap();
    assert!(
        line.contains(&payload),
        "the caller's text, unescaped and unchanged"
    );

    invoke_event(&client, "fail", &payload).await;
    let dlq = data.path().join("destinations/sqs/quotes-dlq.jsonl");
    let mut dead_letter = None;
    for _ in 0..300 {
        if let Ok(text) = std::fs::read_to_string(&dlq)
            && !text.is_empty()
        {
            dead_letter =
                Some(serde_json::from_str::<Value>(text.lines().next().unwrap()).unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dead_letter = dead_letter.expect("a dead letter");
    assert_eq!(dead_letter["body"].as_str(), Some(payload.as_str()));
}

/// With the file adapters an S3 destination is a directory: one file per record, at
/// Lambda's key layout under `destinations/s3/<bucket>/`.
#[tokio::test]
async fn an_s3_destination_with_file_adapters_gets_one_file_per_record() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    create_builtin(&client, "fail", "fail").await;
    client
        .put_function_event_invoke_config()
        .function_name("fail")
        .maximum_retry_attempts(0)
        .destination_config(
            DestinationConfig::builder()
                .on_failure(
                    OnFailure::builder()
                        .destination("arn:aws:s3:::failures")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    let request_id = invoke_event(&client, "fail", r#"{"n":1}"#).await;
    let bucket = data
        .path()
        .join("destinations/s3/failures/aws/lambda/async/fail");
    for _ in 0..300 {
        let files: Vec<_> = walk(&bucket);
        if let [file] = files.as_slice() {
            let record: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
            assert_eq!(record["requestContext"]["requestId"], request_id.as_str());
            let name = file.file_name().unwrap().to_str().unwrap();
            assert!(!name.ends_with(".partial"), "{name}");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no object under {}", bucket.display());
}

/// Every file under `dir`, however deep.
fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .flat_map(|entry| {
            let path = entry.path();
            if path.is_dir() {
                walk(&path)
            } else {
                vec![path]
            }
        })
        .collect()
}

#[tokio::test]
async fn function_errors_retry_as_configured_with_one_request_id() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    let mut expected = Vec::new();
    for retries in [0, 1, 2] {
        let name = format!("fail-{retries}");
        create_builtin(&client, &name, "fail").await;
        put_config(&client, &name, Some(retries), None).await;
        let request_id = invoke_event(&client, &name, r#"{"n":1}"#).await;
        expected.push((name, retries, request_id));
    }
    // And the default: two retries.
    create_builtin(&client, "fail-default", "fail").await;
    put_config(&client, "fail-default", None, None).await;
    let request_id = invoke_event(&client, "fail-default", "{}").await;
    expected.push(("fail-default".into(), 2, request_id));

    for (name, retries, request_id) in expected {
        let record = outcome_of(data.path(), &request_id).await;
        assert_eq!(
            record["requestContext"]["condition"], "RetriesExhausted",
            "{name}"
        );
        let count = record["requestContext"]["approximateInvokeCount"]
            .as_u64()
            .unwrap();
        assert_eq!(count, u64::from(retries as u32 + 1), "{name}");
        assert_eq!(
            record["responseContext"]["functionError"], "Unhandled",
            "{name}"
        );
        assert_eq!(
            record["responsePayload"]["errorType"], "InvoqBuiltinFailure",
            "{name}"
        );
        assert_eq!(
            record["responsePayload"]["requestId"],
            request_id.as_str(),
            "{name}"
        );
        assert_eq!(
            attempts_logged(data.path(), &name, &request_id),
            count as usize,
            "{name}: every attempt ran with the same request id"
        );
    }
    let metrics = reqwest::get(format!("{}/metrics", invoq.http_url()))
        .await
        .unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(
        metrics.contains("invoq_async_outcomes_total{condition=\"RetriesExhausted\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("invoq_async_retries_total 5"),
        "0 + 1 + 2 + 2 retries: {metrics}"
    );
}

#[tokio::test]
async fn flaky_events_succeed_on_a_retry() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    create_builtin(&client, "flaky", "flaky").await;
    put_config(&client, "flaky", None, None).await;
    let request_id = invoke_event(&client, "flaky", r#"{"fail_attempts":1}"#).await;
    let record = outcome_of(data.path(), &request_id).await;
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
}

#[tokio::test]
async fn event_age_look_ahead_matches_aws_for_60_and_90_seconds() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    for (max_age, count) in [(60, 1), (90, 2)] {
        let name = format!("age-{max_age}");
        create_builtin(&client, &name, "fail").await;
        put_config(&client, &name, None, Some(max_age)).await;
        let request_id = invoke_event(&client, &name, "{}").await;
        let record = outcome_of(data.path(), &request_id).await;
        assert_eq!(
            record["requestContext"]["condition"], "EventAgeExceeded",
            "{name}"
        );
        assert_eq!(
            record["requestContext"]["approximateInvokeCount"], count,
            "{name}"
        );
    }
}

#[tokio::test]
async fn zero_reserved_concurrency_fails_without_running() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    create_builtin(&client, "blocked", "echo").await;
    put_config(&client, "blocked", None, None).await;
    client
        .put_function_concurrency()
        .function_name("blocked")
        .reserved_concurrent_executions(0)
        .send()
        .await
        .unwrap();
    let request_id = invoke_event(&client, "blocked", r#"{"a":1}"#).await;
    let record = outcome_of(data.path(), &request_id).await;
    assert_eq!(
        record["requestContext"]["condition"],
        "ZeroReservedConcurrency"
    );
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 0);
    assert!(record.get("responseContext").is_none());
    assert!(record.get("responsePayload").is_none());
    assert_eq!(attempts_logged(data.path(), "blocked", &request_id), 0);
}

#[tokio::test]
async fn a_full_queue_answers_429_not_a_fake_202() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[("INVOQ_QUEUE_DEPTH_LIMIT", "2")]);
    let client = invoq.client();
    create_builtin(&client, "slow", "sleep").await;
    invoke_event(&client, "slow", r#"{"ms":2000}"#).await;
    invoke_event(&client, "slow", r#"{"ms":2000}"#).await;
    let refused = client
        .invoke()
        .function_name("slow")
        .invocation_type(InvocationType::Event)
        .payload(Blob::new(r#"{"ms":1}"#))
        .send()
        .await
        .expect_err("429 past the depth limit");
    assert_eq!(refused.code(), Some("TooManyRequestsException"));
    let accepted = reqwest::get(format!("{}/invoq/queues/invocations", invoq.http_url()))
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    assert_eq!(accepted["Depth"], 2, "the refused event went nowhere");
}

#[tokio::test]
async fn an_event_running_past_the_first_lease_runs_once() {
    // The worker's first lease lasts 10 s. A function with a longer timeout must have its
    // lease extended before it runs: otherwise the event is leased again at 10 s and run a
    // second time, and the first attempt's outcome, from a lost lease, is refused.
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    create_builtin(&client, "long", "sleep").await;
    client
        .update_function_configuration()
        .function_name("long")
        .timeout(30)
        .send()
        .await
        .unwrap();
    put_config(&client, "long", Some(0), None).await;
    let request_id = invoke_event(&client, "long", r#"{"ms":11000}"#).await;
    // outcome_of waits 15 s: enough for the one 11 s run, not for a second one.
    let record = outcome_of(data.path(), &request_id).await;
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 1);
    assert_eq!(attempts_logged(data.path(), "long", &request_id), 1);
}

#[tokio::test]
async fn an_attempt_with_a_slow_cold_start_runs_once() {
    // 8 s of init, then a 2.5 s handler with a 3 s timeout: the attempt lasts about 10.5 s,
    // past the worker's 10 s lease, though the function timeout is short. Before the lease
    // heartbeat the event was leased again while it ran, and ran two or three times.
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    crate::harness::create_function(
        &client,
        "slow-init",
        aws_sdk_lambda::types::Runtime::Providedal2023,
        "slow-init",
        Some(crate::harness::misbehaving_zip()),
    )
    .await;
    put_config(&client, "slow-init", Some(0), None).await;
    let request_id = invoke_event(&client, "slow-init", r#"{"slow":true}"#).await;
    let record = outcome_of(data.path(), &request_id).await;
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 1);
    // A second run would have started at the 10 s mark and logs when it ends.
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(attempts_logged(data.path(), "slow-init", &request_id), 1);
    assert_eq!(
        outcomes(data.path()).remove(&request_id).map(|r| r.len()),
        Some(1)
    );
}

#[tokio::test]
async fn queued_events_run_the_code_current_when_they_execute() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    create_builtin(&client, "changing", "fail").await;
    put_config(&client, "changing", Some(1), None).await;
    let request_id = invoke_event(&client, "changing", r#"{"v":2}"#).await;
    // The first attempt fails; before the retry 0.6 s later, the handler changes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    client
        .update_function_configuration()
        .function_name("changing")
        .handler("echo")
        .send()
        .await
        .unwrap();
    let record = outcome_of(data.path(), &request_id).await;
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
}

#[tokio::test]
async fn event_invoke_config_lifecycle_and_errors_match_aws() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    create_builtin(&client, "target", "echo").await;
    create_builtin(&client, "other", "echo").await;
    let arn = "arn:aws:lambda:us-east-1:000000000000:function:target:$LATEST";

    let missing = client
        .get_function_event_invoke_config()
        .function_name("target")
        .send()
        .await;
    assert_eq!(
        missing.expect_err("404").message(),
        Some(format!("The function {arn} doesn't have an EventInvokeConfig").as_str())
    );
    let update_missing = client
        .update_function_event_invoke_config()
        .function_name("target")
        .maximum_retry_attempts(1)
        .send()
        .await
        .expect_err("update before put");
    assert_eq!(update_missing.code(), Some("ResourceNotFoundException"));

    let put = client
        .put_function_event_invoke_config()
        .function_name("target")
        .maximum_retry_attempts(1)
        .destination_config(
            DestinationConfig::builder()
                .on_failure(
                    OnFailure::builder()
                        .destination("arn:aws:sqs:us-east-2:123456789012:dlq")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("put");
    assert_eq!(put.function_arn(), Some(arn));
    assert_eq!(put.maximum_retry_attempts(), Some(1));
    assert_eq!(
        put.maximum_event_age_in_seconds(),
        None,
        "defaults are not echoed"
    );
    let destinations = put.destination_config().unwrap();
    assert_eq!(
        destinations.on_success().and_then(|d| d.destination()),
        None
    );
    assert_eq!(
        destinations.on_failure().and_then(|d| d.destination()),
        Some("arn:aws:sqs:us-east-2:123456789012:dlq")
    );
    assert!(put.last_modified().is_some());

    // Update merges; Put replaces.
    let updated = client
        .update_function_event_invoke_config()
        .function_name("target")
        .maximum_event_age_in_seconds(120)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            updated.maximum_retry_attempts(),
            updated.maximum_event_age_in_seconds()
        ),
        (Some(1), Some(120))
    );
    let replaced = client
        .put_function_event_invoke_config()
        .function_name("target")
        .maximum_event_age_in_seconds(300)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (
            replaced.maximum_retry_attempts(),
            replaced.maximum_event_age_in_seconds()
        ),
        (None, Some(300))
    );
    assert_eq!(
        replaced
            .destination_config()
            .and_then(|d| d.on_failure())
            .and_then(|d| d.destination()),
        None
    );

    let listed = client
        .list_function_event_invoke_configs()
        .function_name("target")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.function_event_invoke_configs().len(), 1);

    let raw = reqwest::get(format!(
        "{}/2019-09-25/functions/target/event-invoke-config",
        invoq.http_url()
    ))
    .await
    .unwrap()
    .json::<Value>()
    .await
    .unwrap();
    assert_eq!(
        raw["DestinationConfig"],
        serde_json::json!({"OnSuccess": {}, "OnFailure": {}})
    );
    assert!(
        raw["LastModified"].is_f64(),
        "LastModified is epoch seconds: {raw}"
    );

    let error = |result: Result<_, aws_sdk_lambda::error::SdkError<_, _>>| {
        let error = result.expect_err("refused");
        (
            error.code().map(str::to_owned),
            error.message().map(str::to_owned),
        )
    };
    let nothing = client
        .put_function_event_invoke_config()
        .function_name("target")
        .send()
        .await;
    assert_eq!(
        error(nothing),
        (
            Some("InvalidParameterValueException".into()),
            Some("You must specify at least one of error handling or destination setting.".into())
        )
    );
    let unknown = client
        .put_function_event_invoke_config()
        .function_name("ghost")
        .maximum_retry_attempts(1)
        .send()
        .await;
    assert_eq!(
        error(unknown).1.as_deref(),
        Some("The function doesn't exist.")
    );
    let too_many = client
        .put_function_event_invoke_config()
        .function_name("target")
        .maximum_retry_attempts(3)
        .send()
        .await;
    assert_eq!(error(too_many).0.as_deref(), Some("ValidationException"));
    let too_young = client
        .put_function_event_invoke_config()
        .function_name("target")
        .maximum_event_age_in_seconds(59)
        .send()
        .await;
    assert_eq!(error(too_young).0.as_deref(), Some("ValidationException"));

    let destination = |arn: &str| {
        DestinationConfig::builder()
            .on_success(OnSuccess::builder().destination(arn).build())
            .build()
    };
    let itself = client
        .put_function_event_invoke_config()
        .function_name("target")
        .destination_config(destination(
            "arn:aws:lambda:us-east-1:000000000000:function:target",
        ))
        .send()
        .await;
    assert_eq!(
        error(itself).1.as_deref(),
        Some("You can't specify the function as a destination for itself.")
    );
    let ghost = "arn:aws:lambda:us-east-1:000000000000:function:ghost";
    let missing_fn = client
        .put_function_event_invoke_config()
        .function_name("target")
        .destination_config(destination(ghost))
        .send()
        .await;
    assert_eq!(
        error(missing_fn).1,
        Some(format!("The destination ARN {ghost} is invalid."))
    );
    let iam = "arn:aws:iam::123456789012:role/x";
    let wrong_service = client
        .put_function_event_invoke_config()
        .function_name("target")
        .destination_config(destination(iam))
        .send()
        .await;
    assert_eq!(
        error(wrong_service).1,
        Some(format!(
            "The provided destination config DestinationConfig(onSuccess=OnSuccess(destination={iam}), onFailure=null) is invalid."
        ))
    );
    let malformed = client
        .put_function_event_invoke_config()
        .function_name("target")
        .destination_config(destination("not-an-arn"))
        .send()
        .await;
    let (code, message) = error(malformed);
    assert_eq!(code.as_deref(), Some("ValidationException"));
    assert!(
        message
            .unwrap()
            .contains("at 'destinationConfig.onSuccess.destination'")
    );
    let function_destination = client
        .put_function_event_invoke_config()
        .function_name("target")
        .destination_config(destination(
            "arn:aws:lambda:us-east-1:000000000000:function:other",
        ))
        .send()
        .await;
    assert!(
        function_destination.is_ok(),
        "an existing function is a valid destination"
    );
    let conflict = client
        .put_function_event_invoke_config()
        .function_name("target:1")
        .qualifier("2")
        .maximum_retry_attempts(1)
        .send()
        .await;
    assert_eq!(
        error(conflict).0.as_deref(),
        Some("InvalidParameterValueException")
    );

    client
        .delete_function_event_invoke_config()
        .function_name("target")
        .send()
        .await
        .expect("delete");
    let deleted = client
        .get_function_event_invoke_config()
        .function_name("target")
        .send()
        .await;
    assert_eq!(
        deleted.expect_err("deleted").code(),
        Some("ResourceNotFoundException")
    );
}

#[tokio::test]
async fn every_accepted_event_ends_once_even_after_sigkill() {
    let data = data_dir();
    let invoq = serve_scaled(data.path(), &[]);
    let client = invoq.client();
    create_builtin(&client, "work", "sleep").await;
    put_config(&client, "work", None, None).await;
    let mut accepted = Vec::new();
    for index in 0..60 {
        accepted.push(
            invoke_event(
                &client,
                "work",
                &format!(r#"{{"ms":{}}}"#, 20 + index % 7 * 30),
            )
            .await,
        );
    }
    // Kill while events are queued, leased, running and being delivered.
    tokio::time::sleep(Duration::from_millis(150)).await;
    invoq.kill();

    let _invoq = serve_scaled(data.path(), &[]);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(40);
    loop {
        let outcomes = outcomes(data.path());
        if accepted.iter().all(|id| outcomes.contains_key(id)) {
            for id in &accepted {
                let records = &outcomes[id];
                assert_eq!(records[0]["requestContext"]["condition"], "Success");
                // Delivery is at least once: a record delivered just before the kill may
                // arrive again, but it is the same record. A second terminal outcome (the
                // event run again after it ended) would differ in its timestamp.
                assert!(
                    records.iter().all(|record| *record == records[0]),
                    "{id}: {records:?}"
                );
            }
            assert_eq!(
                outcomes.len(),
                accepted.len(),
                "no outcome for an event never accepted"
            );
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "events lost: {} of {} ended",
            outcomes.len(),
            accepted.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
