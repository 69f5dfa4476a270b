//! Managed runtimes: Python and Node.js handlers run by the host's interpreters and the
//! official runtime interface clients (awslambdaric, aws-lambda-ric), installed once into a
//! runtimes directory shared by the tests (`cargo xtask test` installs them first).

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::operation::RequestId;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{DestinationConfig, FunctionCode, OnFailure, OnSuccess, Runtime};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use invoq_runtime::managed::ManagedRuntimes;
use serde_json::{Value, json};

use crate::harness::{
    Invoq, ROLE, code_zip, data_dir, invoke_event, repository_file, status_and_type,
    wait_until_active,
};

/// Where the runtimes are installed: `INVOQ_RUNTIMES_DIR` when set (by xtask), else one
/// directory under the target dir, shared by every test process.
pub(crate) fn runtimes_dir() -> PathBuf {
    std::env::var_os("INVOQ_RUNTIMES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("invoq-runtimes"))
}

/// The newest runtime of `language` this host's interpreters serve. The tests need one of
/// each: their absence is a failure, not a skip.
pub(crate) async fn offered(language: &str) -> String {
    let runtimes = ManagedRuntimes::scan(runtimes_dir()).await;
    let offered = runtimes.offered();
    offered
        .iter()
        .rev()
        .find(|name| name.starts_with(language))
        .unwrap_or_else(|| {
            panic!(
                "no {language} runtime on this host ({:?}); install the interpreter in /usr/bin",
                runtimes.status()
            )
        })
        .to_string()
}

/// One language's fixture: its runtime, code and handler names.
struct Fixture {
    runtime: String,
    zip: Vec<u8>,
    module: &'static str,
    file: &'static str,
    path_variable: &'static str,
}

impl Fixture {
    async fn python() -> Self {
        Fixture {
            runtime: offered("python").await,
            zip: code_zip(&[(
                "app.py",
                &repository_file("tests/api/fixtures/python/app.py"),
            )]),
            module: "app",
            file: "app.py",
            path_variable: "PYTHONPATH",
        }
    }

    async fn node() -> Self {
        Fixture {
            runtime: offered("nodejs").await,
            zip: code_zip(&[(
                "index.mjs",
                &repository_file("tests/api/fixtures/node/index.mjs"),
            )]),
            module: "index",
            file: "index.mjs",
            path_variable: "NODE_PATH",
        }
    }

    fn serve(&self, data: &std::path::Path) -> Invoq {
        let runtimes = runtimes_dir().display().to_string();
        Invoq::serve_with(
            data,
            &[
                ("INVOQ_RUNTIMES_DIR", runtimes.as_str()),
                ("INVOQ_TIME_SCALE", "0.01"),
            ],
        )
    }

    /// Creates `name` with the handler `function` of the fixture's module, or `handler` as
    /// given when it names another module.
    async fn create(&self, client: &Client, name: &str, function: &str, timeout: i32) {
        let handler = if function.contains('.') {
            function.to_owned()
        } else {
            format!("{}.{function}", self.module)
        };
        client
            .create_function()
            .function_name(name)
            .runtime(Runtime::from(self.runtime.as_str()))
            .handler(handler)
            .role(ROLE)
            .timeout(timeout)
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(self.zip.clone()))
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|error| panic!("create {name}: {error:?}"));
        // The first function of a runtime installs its client while Pending (pip, or npm
        // building the addon): longer than the usual wait.
        for _ in 0..3 {
            let state = client
                .get_function_configuration()
                .function_name(name)
                .send()
                .await
                .expect("get configuration");
            if state.state().map(|state| state.as_str()) == Some("Active") {
                return;
            }
            if state.state().map(|state| state.as_str()) == Some("Failed") {
                panic!("{name} failed: {:?}", state.state_reason());
            }
            wait_until_active(client, name).await;
        }
    }
}

async fn invoke(client: &Client, name: &str, payload: &str) -> (Option<String>, Value, String) {
    let client_context = BASE64.encode(r#"{"custom":{"tenant":"acme"}}"#);
    let output = client
        .invoke()
        .function_name(name)
        .client_context(client_context)
        .payload(Blob::new(payload))
        .send()
        .await
        .unwrap_or_else(|error| panic!("invoke {name}: {error:?}"));
    let body =
        serde_json::from_slice(output.payload().expect("payload").as_ref()).expect("json payload");
    let request_id = output.request_id().expect("request id").to_owned();
    (output.function_error().map(str::to_owned), body, request_id)
}

/// Success, warm reuse, context fields and Lambda's environment.
async fn handler_runs_with_lambdas_context(fixture: &Fixture, client: &Client) {
    fixture.create(client, "echo", "handler", 3).await;
    let (error, body, request_id) = invoke(client, "echo", r#"{"order":42}"#).await;
    assert_eq!(error, None, "{body}");
    assert_eq!(body["event"], json!({"order": 42}));
    assert_eq!(body["requestId"], request_id.as_str());
    assert_eq!(
        body["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:echo"
    );
    let remaining = body["remainingMillis"].as_i64().expect("remaining time");
    assert!((1..=3000).contains(&remaining), "{remaining}");
    assert_eq!(body["clientContext"], json!({"tenant": "acme"}));
    let env = &body["env"];
    assert_eq!(
        env["_HANDLER"],
        format!("{}.handler", fixture.module).as_str()
    );
    assert_eq!(
        env["AWS_EXECUTION_ENV"],
        format!("AWS_Lambda_{}", fixture.runtime).as_str()
    );
    let task_root = env["LAMBDA_TASK_ROOT"].as_str().expect("LAMBDA_TASK_ROOT");
    assert_eq!(
        body["file"],
        format!("{task_root}/{}", fixture.file).as_str(),
        "the handler is loaded from the task root"
    );
    let runtime_dir = env["LAMBDA_RUNTIME_DIR"]
        .as_str()
        .expect("LAMBDA_RUNTIME_DIR");
    let search_path = env[fixture.path_variable].as_str().expect("search path");
    assert!(
        search_path
            .split(':')
            .any(|entry| entry.starts_with(runtime_dir)),
        "{search_path}"
    );
    let (_, warm, _) = invoke(client, "echo", "{}").await;
    assert_eq!(warm["invocations"], 2, "the warm process served it: {warm}");
}

/// A raised error, an import error, a missing handler and a timeout, as the RIC reports
/// them.
async fn failures_come_back_as_the_ric_reports_them(fixture: &Fixture, client: &Client) {
    fixture.create(client, "fail", "fail", 3).await;
    let (error, body, _) = invoke(client, "fail", r#"{"order":7}"#).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    let (error_type, trace_key) = match fixture.module {
        "app" => ("ValueError", "stackTrace"),
        _ => ("TypeError", "trace"),
    };
    assert_eq!(body["errorType"], error_type, "{body}");
    assert_eq!(body["errorMessage"], "cannot take 7");
    let trace = body[trace_key].as_array().expect("stack trace");
    assert!(
        trace
            .iter()
            .any(|line| line.as_str().unwrap_or_default().contains(fixture.file)),
        "{body}"
    );

    fixture
        .create(client, "unimportable", "nope.handler", 3)
        .await;
    let (error, body, _) = invoke(client, "unimportable", "{}").await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(body["errorType"], "Runtime.ImportModuleError", "{body}");
    let message = body["errorMessage"].as_str().unwrap_or_default();
    let expected = match fixture.module {
        "app" => "Unable to import module 'nope': No module named 'nope'",
        _ => "Error: Cannot find module 'nope'",
    };
    assert!(message.starts_with(expected), "{message}");

    fixture.create(client, "handlerless", "missing", 3).await;
    let (error, body, _) = invoke(client, "handlerless", "{}").await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(body["errorType"], "Runtime.HandlerNotFound", "{body}");
    let expected = match fixture.module {
        "app" => "Handler 'missing' missing on module 'app'",
        _ => "index.missing is undefined or not exported",
    };
    assert_eq!(body["errorMessage"], expected);

    fixture.create(client, "slow", "slow", 1).await;
    let (error, body, request_id) = invoke(client, "slow", "{}").await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(
        body["errorMessage"],
        format!("RequestId: {request_id} Error: Task timed out after 1.00 seconds").as_str(),
        "{body}"
    );
}

/// Every outcome goes to this queue, written by the file adapter.
const OUTCOMES: &str = "arn:aws:sqs:us-east-1:000000000000:outcomes";

/// Async invokes with OnSuccess and OnFailure records of what the handler returned or
/// raised.
async fn async_invokes_send_their_records(client: &Client, data: &std::path::Path) {
    for function in ["echo", "fail"] {
        client
            .put_function_event_invoke_config()
            .function_name(function)
            .maximum_retry_attempts(0)
            .destination_config(
                DestinationConfig::builder()
                    .on_success(OnSuccess::builder().destination(OUTCOMES).build())
                    .on_failure(OnFailure::builder().destination(OUTCOMES).build())
                    .build(),
            )
            .send()
            .await
            .expect("put event invoke config");
    }
    let succeeded = invoke_event(client, "echo", r#"{"order":1}"#).await;
    let failed = invoke_event(client, "fail", r#"{"order":2}"#).await;
    let records = records_of(data, &[&succeeded, &failed]).await;

    let success = &records[&succeeded];
    assert_eq!(success["requestContext"]["condition"], "Success");
    assert_eq!(success["requestPayload"], json!({"order": 1}));
    assert_eq!(success["responsePayload"]["event"], json!({"order": 1}));
    assert_eq!(success["responsePayload"]["requestId"], succeeded.as_str());

    let failure = &records[&failed];
    assert_eq!(failure["requestContext"]["condition"], "RetriesExhausted");
    assert_eq!(failure["responseContext"]["functionError"], "Unhandled");
    assert_eq!(failure["responsePayload"]["errorMessage"], "cannot take 2");
}

/// Waits for one record per request id in the outcomes file; returns them by request id.
async fn records_of(data: &std::path::Path, request_ids: &[&str]) -> HashMap<String, Value> {
    let file = data.join("destinations/sqs/outcomes.jsonl");
    for _ in 0..400 {
        let lines = std::fs::read_to_string(&file).unwrap_or_default();
        let records: HashMap<String, Value> = lines
            .lines()
            .map(|line| serde_json::from_str::<Value>(line).expect("one record per line"))
            .map(|record| {
                let id = record["requestContext"]["requestId"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                (id, record)
            })
            .collect();
        if request_ids.iter().all(|id| records.contains_key(*id)) {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no records for {request_ids:?} in {}", file.display());
}

async fn every_case(fixture: Fixture) {
    let data = data_dir();
    let invoq = fixture.serve(data.path());
    let client = invoq.client();
    handler_runs_with_lambdas_context(&fixture, &client).await;
    failures_come_back_as_the_ric_reports_them(&fixture, &client).await;
    async_invokes_send_their_records(&client, data.path()).await;
}

#[tokio::test]
async fn python_handlers_run_on_awslambdaric() {
    every_case(Fixture::python().await).await;
}

#[tokio::test]
async fn node_handlers_run_on_aws_lambda_ric() {
    every_case(Fixture::node().await).await;
}

#[tokio::test]
async fn a_runtime_this_host_lacks_is_refused_at_create_with_what_it_offers() {
    let data = data_dir();
    let invoq = Fixture::python().await.serve(data.path());
    let client = invoq.client();
    let runtimes = ManagedRuntimes::scan(runtimes_dir()).await;
    let missing = invoq_runtime::MANAGED_RUNTIMES
        .into_iter()
        .find(|name| runtimes.check(name).is_err())
        .expect("no host has every runtime");
    let create = |runtime: &str| {
        client
            .create_function()
            .function_name("lacking")
            .runtime(Runtime::from(runtime))
            .handler("app.handler")
            .role(ROLE)
            .code(
                FunctionCode::builder()
                    .zip_file(Blob::new(code_zip(&[("app.py", b"")])))
                    .build(),
            )
            .send()
    };
    let error = create(missing).await.expect_err("refused");
    assert_eq!(
        status_and_type(&error),
        (Some(400), Some("InvalidParameterValueException".to_owned()))
    );
    let message = format!("{:?}", error.into_service_error());
    assert!(
        message.contains(&format!(
            "The runtime parameter of {missing} is not supported on this invoq host"
        )) && message.contains("This host offers: provided, provided.al2, provided.al2023"),
        "{message}"
    );
    let error = create("python3.8").await.expect_err("refused");
    let message = format!("{:?}", error.into_service_error());
    assert!(
        message.contains(
            "The runtime parameter of python3.8 is no longer supported for creating or updating \
             AWS Lambda functions."
        ),
        "{message}"
    );
}
