//! Event source mappings against a real AWS stand-in (moto or LocalStack): the API's shapes and
//! errors, batches in Lambda's SQS event shape, partial batch failures, filters, a disabled
//! mapping, the OnFailure extension, and polling that resumes after a restart.

use std::time::Duration;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::error::ProvideErrorMetadata;
use aws_sdk_lambda::types::{
    DestinationConfig, Filter, FilterCriteria, FunctionResponseType, OnFailure, OnSuccess, Runtime,
};
use aws_sdk_sqs::types::{MessageAttributeValue, QueueAttributeName};
use serde_json::{Value, json};

use crate::harness::{
    AwsStandIn, Queues, create_builtin, create_function, data_dir, serve_invoq_on, sqs_batch_zip,
};

fn queue_arn(name: &str) -> String {
    format!("arn:aws:sqs:us-east-1:123456789012:{name}")
}

/// A queue whose failed messages come back after two seconds.
async fn short_visibility_queue(queues: &Queues, name: &str) -> String {
    let url = queues.create(name).await;
    queues
        .sqs
        .set_queue_attributes()
        .queue_url(&url)
        .attributes(QueueAttributeName::VisibilityTimeout, "2")
        .send()
        .await
        .unwrap();
    url
}

async fn send(queues: &Queues, url: &str, body: &str) {
    queues
        .sqs
        .send_message()
        .queue_url(url)
        .message_body(body)
        .send()
        .await
        .expect("send");
}

/// Messages still in the queue, visible or in flight.
async fn remaining(queues: &Queues, url: &str) -> u64 {
    let output = queues
        .sqs
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(QueueAttributeName::All)
        .send()
        .await
        .unwrap();
    let attributes = output.attributes().unwrap();
    let count = |name: QueueAttributeName| -> u64 {
        attributes
            .get(&name)
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    };
    count(QueueAttributeName::ApproximateNumberOfMessages)
        + count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
}

async fn until_empty(queues: &Queues, url: &str) {
    for _ in 0..100 {
        if remaining(queues, url).await == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("queue {url} never emptied");
}

/// The events the batch handler printed, in order.
fn batches(data: &std::path::Path, function: &str) -> Vec<Value> {
    std::fs::read_to_string(data.join(format!("runtime/logs/{function}.log")))
        .unwrap_or_default()
        .lines()
        .filter_map(|line| line.strip_prefix("event "))
        .map(|json| serde_json::from_str(json).unwrap())
        .collect()
}

/// The message bodies the batch handler printed, once there are at least `count`.
async fn logged_bodies(data: &std::path::Path, function: &str, count: usize) -> Vec<String> {
    for _ in 0..300 {
        let seen = bodies(&batches(data, function));
        if seen.len() >= count {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{function} never saw {count} messages");
}

fn bodies(batches: &[Value]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|batch| batch["Records"].as_array().unwrap().iter())
        .map(|record| record["body"].as_str().unwrap().to_owned())
        .collect()
}

async fn create_handler(client: &Client, name: &str) {
    create_function(
        client,
        name,
        Runtime::Providedal2023,
        "handler",
        Some(sqs_batch_zip()),
    )
    .await;
}

/// Maps `queue` to `function` with the defaults; returns the mapping's UUID.
async fn map(client: &Client, queue: &str, function: &str) -> String {
    let created = client
        .create_event_source_mapping()
        .event_source_arn(queue_arn(queue))
        .function_name(function)
        .send()
        .await
        .expect("create mapping");
    created.uuid().expect("uuid").to_owned()
}

#[tokio::test]
async fn the_mapping_api_answers_like_aws() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    queues.create("source").await;
    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_builtin(&client, "consumer", "echo").await;

    let created = client
        .create_event_source_mapping()
        .event_source_arn(queue_arn("source"))
        .function_name("consumer")
        .send()
        .await
        .expect("create");
    assert_eq!(created.state(), Some("Creating"));
    assert_eq!(created.batch_size(), Some(10));
    assert_eq!(created.maximum_batching_window_in_seconds(), Some(0));
    assert_eq!(
        created.function_arn(),
        Some("arn:aws:lambda:us-east-1:000000000000:function:consumer")
    );
    assert_eq!(created.state_transition_reason(), Some("USER_INITIATED"));
    let uuid = created.uuid().unwrap().to_owned();
    assert_eq!(
        created.event_source_mapping_arn().map(str::to_owned),
        Some(format!(
            "arn:aws:lambda:us-east-1:000000000000:event-source-mapping:{uuid}"
        ))
    );
    let got = client
        .get_event_source_mapping()
        .uuid(&uuid)
        .send()
        .await
        .unwrap();
    assert_eq!(got.state(), Some("Enabled"));

    let duplicate = client
        .create_event_source_mapping()
        .event_source_arn(queue_arn("source"))
        .function_name("consumer")
        .send()
        .await
        .expect_err("409");
    assert_eq!(duplicate.code(), Some("ResourceConflictException"));
    assert_eq!(
        duplicate.message().map(str::to_owned),
        Some(format!(
            "An event source mapping with SQS arn (\" {} \") and function (\" consumer \") already exists. \
             Please update or delete the existing mapping with UUID {uuid}",
            queue_arn("source")
        ))
    );
    let missing_queue = client
        .create_event_source_mapping()
        .event_source_arn(queue_arn("nowhere"))
        .function_name("consumer")
        .send()
        .await
        .expect_err("400");
    assert_eq!(
        missing_queue.message(),
        Some(
            "Error occurred while ReceiveMessage. SQS Error Code: AWS.SimpleQueueService.NonExistentQueue. \
             SQS Error Message: The specified queue does not exist."
        )
    );
    let window = client
        .create_event_source_mapping()
        .event_source_arn(queue_arn("source"))
        .function_name("consumer")
        .batch_size(50)
        .send()
        .await
        .expect_err("batch window rule");
    assert_eq!(
        window.message(),
        Some(
            "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater than 10"
        )
    );
    let on_success = client
        .create_event_source_mapping()
        .event_source_arn(queue_arn("source"))
        .function_name("consumer")
        .destination_config(
            DestinationConfig::builder()
                .on_success(OnSuccess::builder().destination(queue_arn("x")).build())
                .build(),
        )
        .send()
        .await
        .expect_err("OnSuccess rejected");
    assert_eq!(
        on_success.message(),
        Some("Unsupported DestinationConfig parameter for given event source mapping type.")
    );
    let unknown_function = client
        .create_event_source_mapping()
        .event_source_arn(queue_arn("source"))
        .function_name("ghost")
        .send()
        .await
        .expect_err("unknown function");
    assert_eq!(unknown_function.message(), Some("Function does not exist"));
    let no_source = client
        .create_event_source_mapping()
        .function_name("consumer")
        .send()
        .await;
    assert_eq!(
        no_source.expect_err("no source").message(),
        Some("Unrecognized event source.")
    );

    let listed = client
        .list_event_source_mappings()
        .function_name("consumer")
        .send()
        .await
        .unwrap();
    assert_eq!(listed.event_source_mappings().len(), 1);
    let updated = client
        .update_event_source_mapping()
        .uuid(&uuid)
        .batch_size(5)
        .enabled(false)
        .send()
        .await
        .unwrap();
    assert_eq!(
        (updated.state(), updated.batch_size()),
        (Some("Updating"), Some(5))
    );
    let got = client
        .get_event_source_mapping()
        .uuid(&uuid)
        .send()
        .await
        .unwrap();
    assert_eq!(got.state(), Some("Disabled"));
    let deleted = client
        .delete_event_source_mapping()
        .uuid(&uuid)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.state(), Some("Deleting"));
    let gone = client
        .get_event_source_mapping()
        .uuid(&uuid)
        .send()
        .await
        .expect_err("404");
    assert_eq!(
        gone.message(),
        Some("The resource you requested does not exist.")
    );
}

#[tokio::test]
async fn messages_arrive_in_batches_in_lambda_shape_and_are_deleted() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    let url = queues.create("orders").await;
    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_handler(&client, "batcher").await;
    for index in 0..3 {
        queues
            .sqs
            .send_message()
            .queue_url(&url)
            .message_body(format!("order-{index}"))
            .message_attributes(
                "Author",
                MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value("x")
                    .build()
                    .unwrap(),
            )
            .send()
            .await
            .unwrap();
    }
    client
        .create_event_source_mapping()
        .event_source_arn(queue_arn("orders"))
        .function_name("batcher")
        .batch_size(10)
        .maximum_batching_window_in_seconds(1)
        .send()
        .await
        .unwrap();
    until_empty(&queues, &url).await;
    let batches = batches(data.path(), "batcher");
    let mut seen = bodies(&batches);
    seen.sort();
    assert_eq!(seen, ["order-0", "order-1", "order-2"]);
    let record = &batches[0]["Records"][0];
    assert_eq!(record["eventSource"], "aws:sqs");
    assert_eq!(record["eventSourceARN"], queue_arn("orders").as_str());
    assert_eq!(record["awsRegion"], "us-east-1");
    assert_eq!(record["attributes"]["ApproximateReceiveCount"], "1");
    for attribute in [
        "SentTimestamp",
        "SenderId",
        "ApproximateFirstReceiveTimestamp",
    ] {
        assert!(
            record["attributes"][attribute].is_string(),
            "{attribute}: {record}"
        );
    }
    assert_eq!(
        record["messageAttributes"]["Author"],
        json!({"stringValue": "x", "stringListValues": [], "binaryListValues": [], "dataType": "String"})
    );
    assert!(record["messageId"].is_string() && record["receiptHandle"].is_string());
    assert!(record["md5OfBody"].is_string());
}

#[tokio::test]
async fn partial_batch_failures_keep_only_the_reported_messages() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    let url = short_visibility_queue(&queues, "partial").await;
    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_handler(&client, "reporter").await;
    for body in ["ok-1", "fail-2", "ok-3"] {
        send(&queues, &url, body).await;
    }
    client
        .create_event_source_mapping()
        .event_source_arn(queue_arn("partial"))
        .function_name("reporter")
        .function_response_types(FunctionResponseType::ReportBatchItemFailures)
        .send()
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(5000)).await;
    let seen = bodies(&batches(data.path(), "reporter"));
    assert_eq!(seen.iter().filter(|b| *b == "ok-1").count(), 1, "{seen:?}");
    assert_eq!(seen.iter().filter(|b| *b == "ok-3").count(), 1, "{seen:?}");
    assert!(
        seen.iter().filter(|b| *b == "fail-2").count() >= 2,
        "the failed one comes back: {seen:?}"
    );
    assert_eq!(remaining(&queues, &url).await, 1);
}

#[tokio::test]
async fn filters_drop_messages_that_match_no_pattern() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    let url = queues.create("mixed").await;
    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_handler(&client, "picky").await;
    send(&queues, &url, r#"{"kind":"order","id":1}"#).await;
    send(&queues, &url, r#"{"kind":"refund","id":2}"#).await;
    client
        .create_event_source_mapping()
        .event_source_arn(queue_arn("mixed"))
        .function_name("picky")
        .filter_criteria(
            FilterCriteria::builder()
                .filters(
                    Filter::builder()
                        .pattern(r#"{"body":{"kind":["order"]}}"#)
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .unwrap();
    until_empty(&queues, &url).await;
    assert_eq!(
        bodies(&batches(data.path(), "picky")),
        [r#"{"kind":"order","id":1}"#]
    );
}

#[tokio::test]
async fn a_disabled_mapping_does_not_poll_until_enabled() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    let url = queues.create("paused").await;
    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_handler(&client, "sleeper").await;
    let mapping = client
        .create_event_source_mapping()
        .event_source_arn(queue_arn("paused"))
        .function_name("sleeper")
        .enabled(false)
        .send()
        .await
        .unwrap();
    send(&queues, &url, "wait").await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(batches(data.path(), "sleeper").is_empty());
    assert_eq!(remaining(&queues, &url).await, 1);
    client
        .update_event_source_mapping()
        .uuid(mapping.uuid().unwrap())
        .enabled(true)
        .send()
        .await
        .unwrap();
    until_empty(&queues, &url).await;
    assert_eq!(bodies(&batches(data.path(), "sleeper")), ["wait"]);
}

#[tokio::test]
async fn the_on_failure_extension_delivers_the_record_and_deletes_the_message() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    let url = short_visibility_queue(&queues, "source-queue").await;
    let failures_url = queues.create("destination-queue").await;
    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_handler(&client, "my-function").await;
    // The example from the issue, with the stand-in's account.
    client
        .create_event_source_mapping()
        .function_name("my-function")
        .event_source_arn(queue_arn("source-queue"))
        .destination_config(
            DestinationConfig::builder()
                .on_failure(
                    OnFailure::builder()
                        .destination(queue_arn("destination-queue"))
                        .build(),
                )
                .build(),
        )
        .maximum_retry_attempts(1)
        .send()
        .await
        .expect("OnFailure is accepted for SQS sources");
    send(&queues, &url, "crash").await;
    let message = queues.receive(&failures_url, 1).await.remove(0);
    let record: Value = serde_json::from_str(&message.body).unwrap();
    assert_eq!(record["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(record["requestContext"]["approximateInvokeCount"], 2);
    assert_eq!(record["requestPayload"]["Records"][0]["body"], "crash");
    assert_eq!(record["responseContext"]["functionError"], "Unhandled");
    until_empty(&queues, &url).await;
}

#[tokio::test]
async fn polling_resumes_after_a_restart() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    let url = queues.create("durable").await;
    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_handler(&client, "steady").await;
    map(&client, "durable", "steady").await;
    invoq.kill();

    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    send(&queues, &url, "after-restart").await;
    assert_eq!(
        logged_bodies(data.path(), "steady", 1).await,
        ["after-restart"]
    );
    until_empty(&queues, &url).await;
    let listed = invoq
        .client()
        .list_event_source_mappings()
        .send()
        .await
        .unwrap();
    assert_eq!(listed.event_source_mappings().len(), 1);
}
