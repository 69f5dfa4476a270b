//! Scale-out on SQS: every service a separate OS process over loopback gRPC, the queues in
//! SQS on the stand-in `INVOQ_AWS_STANDIN` names. Two workers share the queues and one is
//! SIGKILLed mid-load: every accepted request id must still reach exactly one terminal outcome
//! (its OnSuccess record), none lost and none twice. And the README's LocalStack example, run
//! with the AWS CLI against the same shape of deployment as docker-compose.yml's.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use aws_sdk_lambda::types::{DestinationConfig, OnSuccess};
use serde_json::Value;

use crate::harness::{AwsStandIn, Invoq, create_builtin, data_dir, invoke_event};

const EVENTS: usize = 200;
const KILL_AFTER: usize = 80;

/// The services of docker-compose.yml's `localstack` profile, as local processes: a runtime,
/// a frontend, `workers` workers, a router and the pollers, all on the SQS queue backend.
struct Deployment {
    frontend: Invoq,
    workers: Vec<Invoq>,
    router_data: tempfile::TempDir,
    _others: Vec<Invoq>,
    _data: Vec<tempfile::TempDir>,
}

impl Deployment {
    fn start(aws: &AwsStandIn, destinations: &str, workers: usize) -> Self {
        let mut env = aws.env();
        env.extend([
            ("INVOQ_QUEUE", "sqs".to_owned()),
            (
                "INVOQ_SQS_QUEUE_PREFIX",
                format!("t{}-", std::process::id()),
            ),
            ("INVOQ_DESTINATIONS", destinations.to_owned()),
        ]);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let grpc = ["--grpc-addr", "127.0.0.1:0"];
        let (runtime_data, frontend_data, router_data, other_data) =
            (data_dir(), data_dir(), data_dir(), data_dir());
        let runtime = Invoq::start(&["runtime", grpc[0], grpc[1]], runtime_data.path(), &env, 1);
        let runtime_addr = format!("http://{}", runtime.address("grpc"));
        let http = ["--http-addr", "127.0.0.1:0"];
        let frontend_args = ["frontend", http[0], http[1], grpc[0], grpc[1]];
        let frontend = Invoq::start(
            &[&frontend_args[..], &["--runtime-addr", &runtime_addr]].concat(),
            frontend_data.path(),
            &env,
            2,
        );
        let registry_addr = format!("http://{}", frontend.address("grpc"));
        let addresses = [
            "--registry-addr",
            &registry_addr,
            "--runtime-addr",
            &runtime_addr,
        ];
        let consumer = |role: &str, data: &Path, with_runtime: bool| {
            let addresses = if with_runtime {
                &addresses[..]
            } else {
                &addresses[..2]
            };
            Invoq::start(
                &[&[role, grpc[0], grpc[1]], addresses].concat(),
                data,
                &env,
                1,
            )
        };
        let workers = (0..workers)
            .map(|_| consumer("worker", other_data.path(), true))
            .collect();
        let router = consumer("router", router_data.path(), false);
        let pollers = consumer("pollers", other_data.path(), true);
        Deployment {
            frontend,
            workers,
            router_data,
            _others: vec![runtime, router, pollers],
            _data: vec![runtime_data, frontend_data, other_data],
        }
    }
}

/// Request ids of the OnSuccess records the router wrote (file adapter), with how often each
/// came.
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

/// The builtin `echo`, its OnSuccess records to the router's `destinations/sqs/outcomes.jsonl`.
async fn create_echo_with_outcomes(client: &aws_sdk_lambda::Client) {
    create_builtin(client, "echo", "echo").await;
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
}

#[tokio::test]
async fn two_workers_on_sqs_survive_a_sigkill_without_losing_or_repeating_an_outcome() {
    let aws = AwsStandIn::start();
    let mut deployment = Deployment::start(&aws, "file", 2);
    let client = deployment.frontend.client();
    create_echo_with_outcomes(&client).await;

    let mut accepted = Vec::with_capacity(EVENTS);
    for index in 0..EVENTS {
        accepted.push(invoke_event(&client, "echo", &format!(r#"{{"n":{index}}}"#)).await);
        if index == KILL_AFTER {
            // Mid-load: the worker holds leases, runs events and hands outcomes off.
            deployment.workers.remove(0).kill();
        }
    }

    // Leases of the killed worker come back after their visibility timeout (seconds).
    let router_data = deployment.router_data.path();
    let mut seen = HashMap::new();
    for _ in 0..600 {
        seen = delivered(router_data);
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
    let seen = delivered(router_data);
    assert_eq!(seen.len(), EVENTS, "outcomes for events never accepted");
    let twice: Vec<(&String, &usize)> = seen.iter().filter(|(_, count)| **count > 1).collect();
    // A worker killed between a hand-off's send and its delete leaves the event to run again;
    // SQS drops the second hand-off by its deduplication id, which moto forgets once the
    // first one is consumed, so there only loss is checked.
    if aws.kind.keeps_deduplication_ids_after_delete() {
        assert!(
            twice.is_empty(),
            "outcomes delivered more than once: {twice:?}"
        );
    } else if !twice.is_empty() {
        eprintln!("moto forgot a deduplication id; delivered more than once: {twice:?}");
    }
}

/// A shell script run with the AWS CLI on PATH and the stand-in's environment.
fn script(path: &str, aws: &AwsStandIn, env: &[(&str, &str)]) -> String {
    let cli = invoq_testkit::aws_cli();
    let path_var = format!(
        "{}:{}",
        cli.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let output = Command::new("sh")
        .arg(root.join(path))
        .envs(aws.env())
        .env("PATH", path_var)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .envs(env.iter().copied())
        .output()
        .expect("run script");
    assert!(
        output.status.success(),
        "{path} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).unwrap()
}

#[tokio::test]
async fn the_readme_example_runs_with_the_aws_cli() {
    let aws = AwsStandIn::start();
    script("deploy/localstack-init.sh", &aws, &[]);
    let deployment = Deployment::start(&aws, "aws", 1);
    let invoq = deployment.frontend.http_url();
    let output = script(
        "examples/localstack/demo.sh",
        &aws,
        &[
            ("INVOQ_ENDPOINT_URL", invoq.as_str()),
            ("AWS_ACCOUNT_ID", invoq_testkit::ACCOUNT),
        ],
    );
    let record: Value = serde_json::from_str(output.trim()).expect("the record, as JSON");
    assert_eq!(record["requestContext"]["condition"], "Success");
    assert_eq!(
        record["requestPayload"],
        serde_json::json!({"hello": "world"})
    );
    assert_eq!(
        record["responsePayload"],
        serde_json::json!({"hello": "world"})
    );
}

/// On SQS a message is at most `INVOQ_SQS_MAX_MESSAGE_BYTES` (256 KiB by default): an event
/// that cannot be stored is refused up front with 413, never a 202 or a 500; one of quotes
/// that fits is stored as its own text (not escaped to nearly twice its size), and its
/// outcome, too large for the deliveries queue with the echoed response, is handed over
/// without the response payload instead of being run again and again.
#[tokio::test]
async fn on_sqs_an_event_too_large_to_store_gets_413_and_a_large_outcome_is_trimmed() {
    let aws = AwsStandIn::start();
    let deployment = Deployment::start(&aws, "file", 1);
    let client = deployment.frontend.client();
    create_echo_with_outcomes(&client).await;

    let too_large = format!(r#"{{"pad":"{}"}}"#, "x".repeat(300_000));
    let refused = client
        .invoke()
        .function_name("echo")
        .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
        .payload(aws_sdk_lambda::primitives::Blob::new(too_large))
        .send()
        .await
        .unwrap_err();
    assert_eq!(
        crate::harness::status_and_type(&refused),
        (
            Some(413),
            Some("SerializedRequestEntityTooLargeException".into())
        )
    );

    let quotes = format!(r#"{{"quotes":"{}"}}"#, "\\\"".repeat(100_000));
    assert!(quotes.len() > 200_000 && quotes.len() < 262_144);
    let request_id = invoke_event(&client, "echo", &quotes).await;
    let (line, record) = first_success(deployment.router_data.path(), &request_id).await;
    assert!(line.contains(&quotes), "the event's own text");
    assert!(record.get("responsePayload").is_none(), "{}", &line[..200]);
}

/// Waits for the first OnSuccess record in `data`'s `outcomes.jsonl`, which must be
/// `request_id`'s Success; returns its line and the record.
async fn first_success(data: &Path, request_id: &str) -> (String, Value) {
    let path = data.join("destinations/sqs/outcomes.jsonl");
    for _ in 0..300 {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if let Some(line) = text.lines().next() {
            let record: Value = serde_json::from_str(line).unwrap();
            assert_eq!(record["requestContext"]["requestId"], request_id);
            assert_eq!(record["requestContext"]["condition"], "Success");
            return (line.to_owned(), record);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no outcome for {request_id}");
}

/// With `INVOQ_SQS_PAYLOAD_BUCKET`, the SQS backend takes Lambda's full 1 MB Event payload:
/// bodies too large for a message are kept in S3, and the event runs to its record.
#[tokio::test]
async fn on_sqs_with_a_payload_bucket_a_megabyte_event_runs() {
    let aws = AwsStandIn::start();
    let config = aws.sdk_config().await;
    let s3 = invoq_aws::s3_client(&config);
    s3.create_bucket()
        .bucket("invoq-bodies")
        .send()
        .await
        .unwrap();
    let mut env = aws.env();
    env.extend([
        ("INVOQ_QUEUE", "sqs".to_owned()),
        (
            "INVOQ_SQS_QUEUE_PREFIX",
            format!("b{}-", std::process::id()),
        ),
        ("INVOQ_SQS_PAYLOAD_BUCKET", "invoq-bodies".to_owned()),
    ]);
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let data = data_dir();
    let invoq = Invoq::serve_with(data.path(), &env);
    let client = invoq.client();
    create_echo_with_outcomes(&client).await;
    let payload = format!(r#"{{"pad":"{}"}}"#, "m".repeat(1_040_000));
    let request_id = invoke_event(&client, "echo", &payload).await;
    let (_, record) = first_success(data.path(), &request_id).await;
    assert_eq!(
        record["requestPayload"]["pad"].as_str().map(str::len),
        Some(1_040_000)
    );
}
