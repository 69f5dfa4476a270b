//! Destinations and dead-letter queues against a real AWS stand-in (moto or LocalStack):
//! records reach SQS, SNS (seen through an SQS subscription) and EventBridge (through a rule's
//! SQS target), DLQ messages carry Lambda's attributes, function destinations run, and a
//! destination that is missing loses nothing.

use std::time::Duration;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::types::{DeadLetterConfig, DestinationConfig, OnFailure, OnSuccess};
use aws_sdk_sqs::types::QueueAttributeName;
use serde_json::{Value, json};

use crate::harness::{
    AwsStandIn, Queues, create_builtin, data_dir, invoke_event, serve_invoq_on, string_attribute,
};

/// The stand-ins' account.
const ACCOUNT: &str = "123456789012";

fn arn(service: &str, resource: &str) -> String {
    format!("arn:aws:{service}:us-east-1:{ACCOUNT}:{resource}")
}

async fn configure(
    client: &Client,
    function: &str,
    retries: i32,
    on_success: Option<String>,
    on_failure: Option<String>,
) {
    client
        .put_function_event_invoke_config()
        .function_name(function)
        .maximum_retry_attempts(retries)
        .destination_config(
            DestinationConfig::builder()
                .set_on_success(on_success.map(|arn| OnSuccess::builder().destination(arn).build()))
                .set_on_failure(on_failure.map(|arn| OnFailure::builder().destination(arn).build()))
                .build(),
        )
        .send()
        .await
        .expect("event invoke config");
}

#[tokio::test]
async fn records_reach_sqs_sns_and_eventbridge_and_the_dlq_gets_the_event() {
    let aws = AwsStandIn::start();
    let config = aws.sdk_config().await;
    let queues = Queues::new(&aws).await;
    let success_url = queues.create("orders-success").await;
    let topic_copy_url = queues.create("failures-copy").await;
    let events_url = queues.create("lambda-events").await;
    let dlq_url = queues.create("orders-dlq").await;

    let sns = aws_sdk_sns::Client::new(&config);
    let topic = sns.create_topic().name("failures").send().await.unwrap();
    let topic_arn = topic.topic_arn().unwrap().to_owned();
    let copy_attributes = queues
        .sqs
        .get_queue_attributes()
        .queue_url(&topic_copy_url)
        .attribute_names(QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap();
    let copy_arn = copy_attributes.attributes().unwrap()[&QueueAttributeName::QueueArn].clone();
    sns.subscribe()
        .topic_arn(&topic_arn)
        .protocol("sqs")
        .endpoint(copy_arn)
        .send()
        .await
        .unwrap();

    let events = aws_sdk_eventbridge::Client::new(&config);
    events
        .put_rule()
        .name("lambda-results")
        .event_pattern(r#"{"source":["lambda"]}"#)
        .send()
        .await
        .unwrap();
    events
        .put_targets()
        .rule("lambda-results")
        .targets(
            aws_sdk_eventbridge::types::Target::builder()
                .id("queue")
                .arn(arn("sqs", "lambda-events"))
                .build()
                .unwrap(),
        )
        .send()
        .await
        .unwrap();

    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_builtin(&client, "orders", "echo").await;
    configure(
        &client,
        "orders",
        0,
        Some(arn("sqs", "orders-success")),
        None,
    )
    .await;
    create_builtin(&client, "broken", "fail").await;
    configure(&client, "broken", 0, None, Some(topic_arn.clone())).await;
    client
        .update_function_configuration()
        .function_name("broken")
        .dead_letter_config(
            DeadLetterConfig::builder()
                .target_arn(arn("sqs", "orders-dlq"))
                .build(),
        )
        .send()
        .await
        .unwrap();
    create_builtin(&client, "announced", "echo").await;
    let bus = arn("events", "event-bus/default");
    configure(&client, "announced", 0, Some(bus.clone()), None).await;
    // The configuration update must be live before the events run.
    tokio::time::sleep(Duration::from_millis(200)).await;

    let ok_id = invoke_event(&client, "orders", r#"{"order":1}"#).await;
    let broken_id = invoke_event(&client, "broken", r#"{"order":2}"#).await;
    let announced_id = invoke_event(&client, "announced", r#"{"order":3}"#).await;

    let success = queues.receive(&success_url, 1).await.remove(0);
    let record: Value = serde_json::from_str(&success.body).unwrap();
    assert_eq!(record["version"], "1.0");
    assert_eq!(record["requestContext"]["requestId"], ok_id.as_str());
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(record["requestPayload"], json!({"order": 1}));
    assert_eq!(record["responsePayload"], json!({"order": 1}));
    assert_eq!(
        string_attribute(&success, "RequestID"),
        ("String".into(), ok_id.clone())
    );

    let notification = queues.receive(&topic_copy_url, 1).await.remove(0);
    let envelope: Value = serde_json::from_str(&notification.body).unwrap();
    assert_eq!(envelope["TopicArn"], topic_arn.as_str());
    let record: Value = serde_json::from_str(envelope["Message"].as_str().unwrap()).unwrap();
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["requestId"], broken_id.as_str());
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    assert_eq!(
        envelope["MessageAttributes"]["RequestID"]["Value"],
        broken_id.as_str()
    );

    let dead_letter = queues.receive(&dlq_url, 1).await.remove(0);
    assert_eq!(
        dead_letter.body, r#"{"order":2}"#,
        "the DLQ gets the original event"
    );
    assert_eq!(
        string_attribute(&dead_letter, "RequestID"),
        ("String".into(), broken_id.clone())
    );
    assert_eq!(
        string_attribute(&dead_letter, "ErrorCode"),
        ("Number".into(), "200".into())
    );
    assert_eq!(
        string_attribute(&dead_letter, "ErrorMessage"),
        ("String".into(), "invoq builtin fail".into())
    );

    let event = queues.receive(&events_url, 1).await.remove(0);
    let event: Value = serde_json::from_str(&event.body).unwrap();
    assert_eq!(event["source"], "lambda");
    assert_eq!(
        event["detail-type"],
        "Lambda Function Invocation Result - Success"
    );
    assert_eq!(
        event["detail"]["requestContext"]["requestId"],
        announced_id.as_str()
    );
    assert_eq!(
        event["resources"],
        json!([
            bus,
            format!("arn:aws:lambda:us-east-1:000000000000:function:announced:$LATEST")
        ])
    );
}

#[tokio::test]
async fn a_function_destination_runs_with_the_record_as_its_event() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    let final_url = queues.create("chain-end").await;
    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_builtin(&client, "first", "echo").await;
    create_builtin(&client, "second", "echo").await;
    configure(
        &client,
        "first",
        0,
        Some("arn:aws:lambda:us-east-1:000000000000:function:second".into()),
        None,
    )
    .await;
    configure(&client, "second", 0, Some(arn("sqs", "chain-end")), None).await;
    let first_id = invoke_event(&client, "first", r#"{"step":1}"#).await;

    let message = queues.receive(&final_url, 1).await.remove(0);
    let second_record: Value = serde_json::from_str(&message.body).unwrap();
    let first_record = &second_record["requestPayload"];
    assert_eq!(
        first_record["requestContext"]["requestId"],
        first_id.as_str()
    );
    assert_eq!(first_record["requestPayload"], json!({"step": 1}));
    assert_ne!(
        second_record["requestContext"]["requestId"],
        first_id.as_str()
    );
}

/// An S3 OnFailure destination gets one object per failed event, at Lambda's key layout,
/// holding the record; the file adapter keeps the same layout under `destinations/s3/`.
#[tokio::test]
async fn an_s3_on_failure_destination_gets_one_object_per_record() {
    let aws = AwsStandIn::start();
    let config = aws.sdk_config().await;
    let s3 = invoq_aws::s3_client(&config);
    s3.create_bucket().bucket("failures").send().await.unwrap();
    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_builtin(&client, "broken", "fail").await;
    configure(
        &client,
        "broken",
        0,
        None,
        Some("arn:aws:s3:::failures".into()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let request_id = invoke_event(&client, "broken", r#"{"order":3}"#).await;

    let mut keys = Vec::new();
    for _ in 0..100 {
        let listed = s3
            .list_objects_v2()
            .bucket("failures")
            .send()
            .await
            .unwrap();
        keys = listed
            .contents()
            .iter()
            .filter_map(|object| object.key().map(str::to_owned))
            .collect();
        if !keys.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(keys.len(), 1, "{keys:?}");
    assert!(
        keys[0].starts_with("aws/lambda/async/broken/"),
        "{}",
        keys[0]
    );
    let object = s3
        .get_object()
        .bucket("failures")
        .key(&keys[0])
        .send()
        .await
        .unwrap();
    let body = object.body.collect().await.unwrap().into_bytes();
    let record: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(record["requestContext"]["requestId"], request_id.as_str());
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestPayload"], json!({"order": 3}));
}

#[tokio::test]
async fn a_missing_destination_loses_nothing() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    let data = data_dir();
    // Backoff 1 s, 2 s ... 300 s scaled to 10 ms ... 3 s.
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_builtin(&client, "early", "echo").await;
    configure(&client, "early", 0, Some(arn("sqs", "late-queue")), None).await;
    let request_id = invoke_event(&client, "early", r#"{"early":true}"#).await;
    // Wait until a delivery has failed at least once.
    let mut failures = 0;
    for _ in 0..300 {
        let metrics = reqwest::get(format!("{}/metrics", invoq.http_url()))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        failures = metrics
            .lines()
            .find_map(|line| line.strip_prefix("invoq_destination_delivery_failures_total "))
            .and_then(|value| value.parse().ok())
            .unwrap();
        if failures >= 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        failures >= 1,
        "no delivery failed while the queue was missing"
    );

    let url = queues.create("late-queue").await;
    let messages = queues.receive(&url, 1).await;
    let record: Value = serde_json::from_str(&messages[0].body).unwrap();
    assert_eq!(record["requestContext"]["requestId"], request_id.as_str());
}

#[tokio::test]
async fn parked_records_are_listed_and_redriven_with_the_cli() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    let data = data_dir();
    // About 20 minutes of retries scaled down to about a second, then parked.
    let invoq = serve_invoq_on(&aws, data.path(), "0.001");
    let client = invoq.client();
    create_builtin(&client, "stranded", "echo").await;
    configure(&client, "stranded", 0, Some(arn("sqs", "not-yet")), None).await;
    let request_id = invoke_event(&client, "stranded", r#"{"stranded":true}"#).await;

    let cli = |action: &str| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_invoq"))
            .args(["parked", action, "--endpoint-url", &invoq.http_url()])
            .output()
            .expect("run invoq parked");
        assert!(output.status.success(), "{output:?}");
        serde_json::from_slice::<Value>(&output.stdout).expect("json output")
    };
    let mut parked = Value::Null;
    for _ in 0..100 {
        parked = cli("list");
        if parked["Depth"] == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(parked["Depth"], 1, "{parked}");
    let item = &parked["Items"][0]["Body"];
    assert_eq!(
        item["record"]["requestContext"]["requestId"],
        request_id.as_str()
    );
    assert!(
        item["delivery"]["last_error"]
            .as_str()
            .unwrap()
            .contains("not-yet"),
        "{item}"
    );

    let url = queues.create("not-yet").await;
    assert_eq!(cli("redrive")["Redriven"], 1);
    let messages = queues.receive(&url, 1).await;
    let record: Value = serde_json::from_str(&messages[0].body).unwrap();
    assert_eq!(record["requestContext"]["requestId"], request_id.as_str());
    assert_eq!(cli("list")["Depth"], 0);
}
