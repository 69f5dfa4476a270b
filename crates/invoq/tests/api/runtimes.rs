//! Real Lambda runtimes: a function built with the official `lambda_runtime` crate, a shell
//! bootstrap speaking the Runtime API with curl, and every way a runtime can fail.

use std::collections::HashSet;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::client::Waiters;
use aws_sdk_lambda::operation::RequestId;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{LogType, Runtime};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::harness::{
    Invoq, create_function, data_dir, misbehaving_zip, rust_echo_zip, shell_echo_zip,
};

async fn invoke(client: &Client, name: &str, payload: &str) -> (Option<String>, Value) {
    let output = client
        .invoke()
        .function_name(name)
        .payload(Blob::new(payload))
        .send()
        .await
        .unwrap_or_else(|error| panic!("invoke {name}: {error:?}"));
    let body =
        serde_json::from_slice(output.payload().expect("payload").as_ref()).expect("json payload");
    (output.function_error().map(str::to_owned), body)
}

#[tokio::test]
async fn lambda_runtime_crate_function_runs_unchanged() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_function(
        &client,
        "rusty",
        Runtime::Providedal2023,
        "bootstrap",
        Some(rust_echo_zip()),
    )
    .await;

    let client_context = BASE64.encode(r#"{"custom":{"tenant":"acme"}}"#);
    let output = client
        .invoke()
        .function_name("rusty")
        .client_context(client_context)
        .payload(Blob::new(r#"{"order":42}"#))
        .log_type(LogType::Tail)
        .send()
        .await
        .expect("invoke");
    let request_id = output.request_id().map(str::to_owned);
    let body: Value = serde_json::from_slice(output.payload().unwrap().as_ref()).unwrap();
    assert_eq!(body["echo"], json!({"order": 42}));
    assert_eq!(
        body["requestId"].as_str().map(str::to_owned),
        request_id,
        "same request id"
    );
    assert_eq!(
        body["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:rusty"
    );
    assert_eq!(body["functionName"], "rusty");
    assert_eq!(body["memorySize"], "128");
    assert_eq!(body["clientContext"], json!({"tenant": "acme"}));
    let log = String::from_utf8(BASE64.decode(output.log_result().unwrap()).unwrap()).unwrap();
    assert!(
        log.contains("rust-echo handling"),
        "function output in the tail: {log}"
    );
    assert!(
        log.contains("Init Duration:"),
        "a cold start reports init: {log}"
    );

    let (error, body) = invoke(&client, "rusty", r#"{"fail":"no stock"}"#).await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(body["errorMessage"], "no stock");

    // Invoked by qualified ARN, the function sees the ARN it was called by.
    let (_, body) = invoke(
        &client,
        "arn:aws:lambda:us-east-1:000000000000:function:rusty:$LATEST",
        "{}",
    )
    .await;
    assert_eq!(
        body["invokedFunctionArn"],
        "arn:aws:lambda:us-east-1:000000000000:function:rusty:$LATEST"
    );
}

#[tokio::test]
async fn shell_bootstrap_runs_and_update_code_switches_code() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_function(
        &client,
        "shell",
        Runtime::Provided,
        "echo",
        Some(shell_echo_zip()),
    )
    .await;
    let (error, body) = invoke(&client, "shell", r#"{"n":1}"#).await;
    assert_eq!(error, None);
    assert_eq!(body["echo"], json!({"n": 1}));

    client
        .update_function_code()
        .function_name("shell")
        .zip_file(Blob::new(misbehaving_zip()))
        .send()
        .await
        .expect("update code");
    client
        .wait_until_function_updated_v2()
        .function_name("shell")
        .wait(std::time::Duration::from_secs(30))
        .await
        .unwrap();
    // The misbehaving runtime with handler "echo" returns the bare event: new code runs.
    let (_, body) = invoke(&client, "shell", r#"{"n":2}"#).await;
    assert_eq!(body, json!({"n": 2}));
}

#[tokio::test]
async fn warm_processes_are_reused_and_concurrency_adds_processes() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_function(
        &client,
        "pids",
        Runtime::Providedal2,
        "pid",
        Some(misbehaving_zip()),
    )
    .await;
    let (_, first) = invoke(&client, "pids", "{}").await;
    let (_, second) = invoke(&client, "pids", "{}").await;
    assert_eq!(
        first["sandbox"], second["sandbox"],
        "a warm process serves the next invoke"
    );

    let concurrent: Vec<_> = (0..3)
        .map(|_| {
            let client = client.clone();
            tokio::spawn(async move { invoke(&client, "pids", "{}").await.1["sandbox"].clone() })
        })
        .collect();
    let mut pids = HashSet::new();
    for task in concurrent {
        pids.insert(task.await.unwrap().to_string());
    }
    assert_eq!(
        pids.len(),
        3,
        "one invocation at a time per process: {pids:?}"
    );
}

#[tokio::test]
async fn timeouts_crashes_and_errors_are_reported_like_lambda() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    for handler in ["hang", "crash", "error", "big", "init-error", "init-exit"] {
        create_function(
            &client,
            handler,
            Runtime::Providedal2023,
            handler,
            Some(misbehaving_zip()),
        )
        .await;
    }
    client
        .update_function_configuration()
        .function_name("hang")
        .timeout(1)
        .send()
        .await
        .unwrap();
    client
        .wait_until_function_updated_v2()
        .function_name("hang")
        .wait(std::time::Duration::from_secs(30))
        .await
        .unwrap();

    let output = client.invoke().function_name("hang").send().await.unwrap();
    let request_id = output.request_id().unwrap().to_owned();
    let body: Value = serde_json::from_slice(output.payload().unwrap().as_ref()).unwrap();
    assert_eq!(output.function_error(), Some("Unhandled"));
    assert_eq!(
        body,
        json!({
            "errorType": "Sandbox.Timedout",
            "errorMessage": format!("RequestId: {request_id} Error: Task timed out after 1.00 seconds"),
        })
    );

    let (error, body) = invoke(&client, "crash", "{}").await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(body["errorType"], "Runtime.ExitError");
    let message = body["errorMessage"].as_str().unwrap();
    assert!(
        message.ends_with("Error: Runtime exited with error: exit status 3"),
        "{message}"
    );
    // The next invoke gets a fresh process.
    let (_, again) = invoke(&client, "crash", "{}").await;
    assert_eq!(again["errorType"], "Runtime.ExitError");

    let (error, body) = invoke(&client, "error", "{}").await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(
        body,
        json!({"errorMessage": "handled badly", "errorType": "HandlerError", "stackTrace": []})
    );

    let (error, body) = invoke(&client, "big", "{}").await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(
        body,
        json!({
            "errorType": "Function.ResponseSizeTooLarge",
            "errorMessage": "Response payload size exceeded maximum allowed payload size (6291556 bytes).",
        })
    );

    let (error, body) = invoke(&client, "init-error", "{}").await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(body["errorType"], "InitFailure");
    assert_eq!(body["errorMessage"], "init failed on purpose");
    assert_eq!(body["requestId"], "");

    let (error, body) = invoke(&client, "init-exit", "{}").await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(body["errorType"], "Runtime.ExitError");
}

#[tokio::test]
async fn a_package_without_bootstrap_is_an_invalid_entrypoint() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    zip.start_file("handler.py", zip::write::SimpleFileOptions::default())
        .unwrap();
    std::io::Write::write_all(&mut zip, b"print('hi')").unwrap();
    let zip = zip.finish().unwrap().into_inner();
    create_function(
        &client,
        "nobootstrap",
        Runtime::Providedal2023,
        "x",
        Some(zip),
    )
    .await;
    let (error, body) = invoke(&client, "nobootstrap", "{}").await;
    assert_eq!(error.as_deref(), Some("Unhandled"));
    assert_eq!(body["errorType"], "Runtime.InvalidEntrypoint");
    assert!(
        body["errorMessage"]
            .as_str()
            .unwrap()
            .contains("Couldn't find valid bootstrap(s)")
    );
}
