//! Scale-out on SQS: every service a separate OS process over loopback gRPC, the queues in
//! SQS (on the stand-in `INVOQ_AWS_STANDIN` names), two workers sharing them. One worker is
//! SIGKILLed mid-load; every accepted request id must still reach exactly one terminal
//! outcome (its OnSuccess record), none lost and none twice.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use aws_sdk_lambda::types::{DestinationConfig, OnSuccess};
use serde_json::Value;

use crate::harness::{AwsStandIn, Invoq, create_builtin, data_dir, invoke_event};

const EVENTS: usize = 200;
const KILL_AFTER: usize = 80;

/// One invoq service process with the stand-in's environment and the SQS queue backend.
fn service(args: &[&str], data: &Path, env: &[(&'static str, String)]) -> Invoq {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let listeners = if args[0] == "frontend" { 2 } else { 1 };
    Invoq::start(args, data, &env, listeners)
}

/// Request ids of the OnSuccess records the router wrote, with how often each came.
fn delivered(router_data: &Path) -> HashMap<String, usize> {
    let path = router_data.join("destinations/sqs/outcomes.jsonl");
    let mut seen = HashMap::new();
    for line in std::fs::read_to_string(path).unwrap_or_default().lines() {
        let record: Value = serde_json::from_str(line).expect("one record per line");
        let request_id = record["requestContext"]["requestId"].as_str().unwrap();
        *seen.entry(request_id.to_owned()).or_default() += 1;
    }
    seen
}

#[tokio::test]
async fn two_workers_on_sqs_survive_a_sigkill_without_losing_or_repeating_an_outcome() {
    let aws = AwsStandIn::start();
    let mut env = aws.env();
    let prefix = format!("t{}-", std::process::id());
    env.extend([
        ("INVOQ_QUEUE", "sqs".to_owned()),
        ("INVOQ_SQS_QUEUE_PREFIX", prefix),
        ("INVOQ_DESTINATIONS", "file".to_owned()),
    ]);
    let grpc = ["--grpc-addr", "127.0.0.1:0"];
    let (runtime_data, frontend_data, worker_data, router_data) =
        (data_dir(), data_dir(), data_dir(), data_dir());
    let runtime = service(&["runtime", grpc[0], grpc[1]], runtime_data.path(), &env);
    let runtime_addr = format!("http://{}", runtime.address("grpc"));
    let frontend = service(
        &[
            "frontend",
            "--http-addr",
            "127.0.0.1:0",
            grpc[0],
            grpc[1],
            "--runtime-addr",
            &runtime_addr,
        ],
        frontend_data.path(),
        &env,
    );
    let registry_addr = format!("http://{}", frontend.address("grpc"));
    let consumer_args = |role: &'static str| {
        vec![
            role,
            grpc[0],
            grpc[1],
            "--registry-addr",
            &registry_addr,
            "--runtime-addr",
            &runtime_addr,
        ]
    };
    let doomed = service(&consumer_args("worker"), worker_data.path(), &env);
    let _survivor = service(&consumer_args("worker"), worker_data.path(), &env);
    let mut router_args = consumer_args("router");
    router_args.truncate(5);
    let _router = service(&router_args, router_data.path(), &env);

    let client = frontend.client();
    create_builtin(&client, "echo", "echo").await;
    client
        .put_function_event_invoke_config()
        .function_name("echo")
        .destination_config(
            DestinationConfig::builder()
                .on_success(
                    OnSuccess::builder()
                        .destination("arn:aws:sqs:us-east-1:123456789012:outcomes")
                        .build(),
                )
                .build(),
        )
        .send()
        .await
        .expect("event invoke config");

    let mut accepted = Vec::with_capacity(EVENTS);
    let mut doomed = Some(doomed);
    for index in 0..EVENTS {
        accepted.push(invoke_event(&client, "echo", &format!(r#"{{"n":{index}}}"#)).await);
        if index == KILL_AFTER {
            // Mid-load: the worker holds leases, runs events and hands outcomes off.
            doomed.take().unwrap().kill();
        }
    }

    // Leases of the killed worker come back after their visibility timeout (seconds).
    let mut seen = HashMap::new();
    for _ in 0..600 {
        seen = delivered(router_data.path());
        if accepted.iter().all(|id| seen.contains_key(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .collect();
    assert!(lost.is_empty(), "{} of {EVENTS} lost: {lost:?}", lost.len());
    // Give a late duplicate time to show up before counting.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = delivered(router_data.path());
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, count)| **count > 1).collect();
    assert!(
        twice.is_empty(),
        "outcomes delivered more than once: {twice:?}"
    );
    assert_eq!(seen.len(), EVENTS);
}
