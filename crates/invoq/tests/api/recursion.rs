//! Recursive loop detection: the recursion-config operations through aws-sdk-lambda, a
//! synchronous invoke deep in a chain refused with RecursiveInvocationException, and a loop
//! of two functions' OnFailure destinations stopped after 16 invocations, with the stopped
//! event in the dead-letter queue.

use std::time::Duration;

use aws_sdk_lambda::types::{DeadLetterConfig, DestinationConfig, OnFailure, RecursiveLoop};
use serde_json::Value;

use crate::harness::{
    AwsStandIn, Invoq, Queues, create_builtin, data_dir, invoke_event, serve_invoq_on,
    status_and_type, string_attribute,
};

#[tokio::test]
async fn recursion_config_defaults_to_terminate_and_is_kept() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "looper", "echo").await;

    let get = |client: aws_sdk_lambda::Client| async move {
        client
            .get_function_recursion_config()
            .function_name("looper")
            .send()
            .await
            .expect("get recursion config")
            .recursive_loop()
            .cloned()
    };
    assert_eq!(get(client.clone()).await, Some(RecursiveLoop::Terminate));
    let put = client
        .put_function_recursion_config()
        .function_name("looper")
        .recursive_loop(RecursiveLoop::Allow)
        .send()
        .await
        .expect("put recursion config");
    assert_eq!(put.recursive_loop(), Some(&RecursiveLoop::Allow));

    let invalid = client
        .put_function_recursion_config()
        .function_name("looper")
        .recursive_loop(RecursiveLoop::from("Sometimes"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_and_type(&invalid),
        (Some(400), Some("ValidationException".into()))
    );
    let missing = client
        .get_function_recursion_config()
        .function_name("nobody")
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        status_and_type(&missing),
        (Some(404), Some("ResourceNotFoundException".into()))
    );

    invoq.kill();
    let invoq = Invoq::serve(data.path());
    assert_eq!(get(invoq.client()).await, Some(RecursiveLoop::Allow));
}

#[tokio::test]
async fn a_synchronous_invoke_past_sixteen_in_a_chain_is_refused() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "deep", "echo").await;
    let invoke = |lineage: u32| {
        reqwest::Client::new()
            .post(format!(
                "{}/2015-03-31/functions/deep/invocations",
                invoq.http_url()
            ))
            .header(
                "x-amzn-trace-id",
                format!("Root=1-5759e988-bd862e3fe1be46a994272793;Lineage=a87bd80c:{lineage}"),
            )
            .body("{}")
            .send()
    };
    assert_eq!(invoke(15).await.unwrap().status(), 200);
    let refused = invoke(16).await.unwrap();
    assert_eq!(refused.status(), 400);
    assert_eq!(
        refused.headers()["x-amzn-errortype"],
        "RecursiveInvocationException"
    );
    let body: Value = refused.json().await.unwrap();
    assert!(
        body["Message"].as_str().unwrap().contains("recursive loop"),
        "{body}"
    );

    client
        .put_function_recursion_config()
        .function_name("deep")
        .recursive_loop(RecursiveLoop::Allow)
        .send()
        .await
        .unwrap();
    assert_eq!(invoke(16).await.unwrap().status(), 200);
    let metrics = reqwest::get(format!("{}/metrics", invoq.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("invoq_recursive_invocations_refused_total 1"),
        "{metrics}"
    );
}

/// ping fails and sends its record to pong's OnFailure... and back: Lambda's destination
/// loop. The 17th invocation is stopped and its event goes to the dead-letter queue only.
#[tokio::test]
async fn a_destination_loop_stops_after_sixteen_invocations() {
    let aws = AwsStandIn::start();
    let queues = Queues::new(&aws).await;
    let dlq_url = queues.create("loop-dlq").await;
    let dlq_arn = "arn:aws:sqs:us-east-1:123456789012:loop-dlq";
    let data = data_dir();
    let invoq = serve_invoq_on(&aws, data.path(), "0.01");
    let client = invoq.client();
    create_builtin(&client, "ping", "fail").await;
    create_builtin(&client, "pong", "fail").await;
    for (function, next) in [("ping", "pong"), ("pong", "ping")] {
        client
            .update_function_configuration()
            .function_name(function)
            .dead_letter_config(DeadLetterConfig::builder().target_arn(dlq_arn).build())
            .send()
            .await
            .expect("dead-letter config");
        client
            .put_function_event_invoke_config()
            .function_name(function)
            .maximum_retry_attempts(0)
            .destination_config(
                DestinationConfig::builder()
                    .on_failure(
                        OnFailure::builder()
                            .destination(format!(
                                "arn:aws:lambda:us-east-1:000000000000:function:{next}"
                            ))
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .expect("event invoke config");
    }
    crate::harness::wait_until_active(&client, "ping").await;
    crate::harness::wait_until_active(&client, "pong").await;
    invoke_event(&client, "ping", r#"{"serve":1}"#).await;

    // 16 runs that failed, then the stopped one: 17 dead letters, and no more after that.
    let messages = queues.receive(&dlq_url, 17).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut later = queues.receive_now(&dlq_url).await;
    later.extend(queues.receive_now(&dlq_url).await);
    assert_eq!(
        messages.len() + later.len(),
        17,
        "the loop goes on: {later:?}"
    );
    let stopped: Vec<_> = messages
        .iter()
        .filter(|message| {
            string_attribute(message, "ErrorMessage").1 == "RecursiveInvocationDetected"
        })
        .collect();
    assert_eq!(stopped.len(), 1, "{messages:?}");

    let metrics = reqwest::get(format!("{}/metrics", invoq.http_url()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for expected in [
        "invoq_async_outcomes_total{condition=\"RetriesExhausted\"} 16",
        "invoq_async_outcomes_total{condition=\"RecursiveInvocationDetected\"} 1",
    ] {
        assert!(metrics.contains(expected), "{expected}\n{metrics}");
    }
}
