//! Synchronous Invoke of builtins through the official SDK and raw HTTP: headers, payloads,
//! and every error Lambda returns before a function runs.

use std::time::Duration;

use aws_sdk_lambda::error::ProvideErrorMetadata;
use aws_sdk_lambda::operation::invoke::InvokeError;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{InvocationType, LogType};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;

use crate::harness::{Invoq, create_builtin, data_dir};

#[tokio::test]
async fn echo_returns_the_event_with_lambda_headers() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "echo", "echo").await;

    let output = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new(r#"{"hello":"world"}"#))
        .log_type(LogType::Tail)
        .send()
        .await
        .expect("invoke");
    assert_eq!(output.status_code(), 200);
    assert_eq!(
        output.payload().map(Blob::as_ref),
        Some(br#"{"hello":"world"}"#.as_slice())
    );
    assert_eq!(output.executed_version(), Some("$LATEST"));
    assert_eq!(output.function_error(), None);
    let log = BASE64
        .decode(output.log_result().expect("log tail"))
        .expect("base64");
    let log = String::from_utf8(log).expect("utf-8 log");
    assert!(log.starts_with("START RequestId: "), "{log}");
    assert!(
        log.contains("\nEND RequestId: ") && log.contains("\nREPORT RequestId: "),
        "{log}"
    );
}

#[tokio::test]
async fn request_id_is_the_one_the_function_sees() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "fail", "fail").await;
    let response = reqwest::Client::new()
        .post(format!(
            "{}/2015-03-31/functions/fail/invocations",
            invoq.http_url()
        ))
        .body("{}")
        .send()
        .await
        .expect("invoke");
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-amz-function-error"], "Unhandled");
    let request_id = response.headers()["x-amzn-requestid"]
        .to_str()
        .unwrap()
        .to_owned();
    let error: serde_json::Value = response.json().await.expect("error object");
    assert_eq!(error["requestId"], request_id.as_str());
    assert_eq!(error["errorType"], "InvoqBuiltinFailure");
    assert!(uuid_like(&request_id), "{request_id}");
}

#[tokio::test]
async fn flaky_and_sleep_builtins_behave_as_documented() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "flaky", "flaky").await;
    create_builtin(&client, "sleepy", "sleep").await;
    // A synchronous invoke is attempt 1: it fails while fail_attempts >= 1.
    let failed = client
        .invoke()
        .function_name("flaky")
        .payload(Blob::new(r#"{"fail_attempts":1}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(failed.function_error(), Some("Unhandled"));
    let passed = client
        .invoke()
        .function_name("flaky")
        .payload(Blob::new(r#"{"fail_attempts":0}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(passed.function_error(), None);

    let slept = client
        .invoke()
        .function_name("sleepy")
        .payload(Blob::new(r#"{"ms":50}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(
        slept.payload().map(Blob::as_ref),
        Some(br#"{"ms":50}"#.as_slice())
    );
    let timed_out = client
        .invoke()
        .function_name("sleepy")
        .payload(Blob::new(r#"{"ms":5000}"#))
        .send()
        .await
        .unwrap();
    assert_eq!(timed_out.function_error(), Some("Unhandled"));
    let error: serde_json::Value =
        serde_json::from_slice(timed_out.payload().unwrap().as_ref()).unwrap();
    assert_eq!(error["errorType"], "Sandbox.Timedout");
    assert!(
        error["errorMessage"]
            .as_str()
            .unwrap()
            .ends_with("Error: Task timed out after 3.00 seconds")
    );
}

#[tokio::test]
async fn invoke_errors_match_aws() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "echo", "echo").await;

    let missing = client
        .invoke()
        .function_name("ghost")
        .send()
        .await
        .expect_err("404");
    assert_eq!(
        missing.message(),
        Some("Function not found: arn:aws:lambda:us-east-1:000000000000:function:ghost:$LATEST")
    );
    assert!(matches!(
        missing.into_service_error(),
        InvokeError::ResourceNotFoundException(_)
    ));

    let not_json = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new("{nope"))
        .send()
        .await;
    let not_json = not_json.expect_err("400");
    assert_eq!(not_json.code(), Some("InvalidRequestContentException"));
    assert!(
        not_json.message().unwrap().starts_with(
            "Could not parse request body into json: Could not parse payload into json"
        )
    );

    let mut big = vec![b' '; 6 * 1024 * 1024 + 1];
    big[0] = b'1';
    let too_large = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new(big))
        .send()
        .await;
    let too_large = too_large.expect_err("413");
    assert_eq!(too_large.code(), Some("RequestEntityTooLargeException"));
    assert_eq!(
        too_large.message(),
        Some("Request must be smaller than 6291456 bytes for the InvokeFunction operation")
    );

    let dry_run = client
        .invoke()
        .function_name("echo")
        .invocation_type(InvocationType::DryRun)
        .send()
        .await
        .expect("dry run");
    assert_eq!(dry_run.status_code(), 204);

    let qualifier = client
        .invoke()
        .function_name("echo")
        .qualifier("live")
        .send()
        .await
        .expect_err("no alias");
    assert_eq!(
        qualifier.message(),
        Some("Function not found: arn:aws:lambda:us-east-1:000000000000:function:echo:live")
    );
}

#[tokio::test]
async fn arn_named_and_percent_encoded_invokes_work() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "echo", "echo").await;
    for name in [
        "arn:aws:lambda:us-east-1:000000000000:function:echo",
        "arn:aws:lambda:us-east-1:000000000000:function:echo:$LATEST",
        "000000000000:function:echo",
    ] {
        let output = client
            .invoke()
            .function_name(name)
            .payload(Blob::new("[1]"))
            .send()
            .await;
        let output = output.unwrap_or_else(|error| panic!("{name}: {error:?}"));
        assert_eq!(
            output.payload().map(Blob::as_ref),
            Some(b"[1]".as_slice()),
            "{name}"
        );
    }
    // The botocore form: every ':' and '$' percent-encoded in the path label.
    let url = format!(
        "{}/2015-03-31/functions/arn%3Aaws%3Alambda%3Aus-east-1%3A000000000000%3Afunction%3Aecho%3A%24LATEST/invocations",
        invoq.http_url()
    );
    let response = reqwest::Client::new()
        .post(url)
        .body("7")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "7");
    // The pre-2025 trailing-slash form of ListFunctions.
    let url = format!("{}/2015-03-31/functions/", invoq.http_url());
    let listed: serde_json::Value = reqwest::get(url).await.unwrap().json().await.unwrap();
    assert_eq!(listed["Functions"][0]["FunctionName"], "echo");
}

#[tokio::test]
async fn reserved_concurrency_throttles_with_reason() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "single", "sleep").await;
    client
        .put_function_concurrency()
        .function_name("single")
        .reserved_concurrent_executions(1)
        .send()
        .await
        .unwrap();
    let busy = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .invoke()
                .function_name("single")
                .payload(Blob::new(r#"{"ms":1500}"#))
                .send()
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let throttled = client
        .invoke()
        .function_name("single")
        .payload(Blob::new(r#"{"ms":1}"#))
        .send()
        .await
        .expect_err("429 while the only slot is busy");
    assert_eq!(throttled.code(), Some("TooManyRequestsException"));
    assert_eq!(throttled.message(), Some("Rate Exceeded."));
    match throttled.into_service_error() {
        InvokeError::TooManyRequestsException(error) => assert_eq!(
            error.reason().map(|reason| reason.as_str()),
            Some("ReservedFunctionConcurrentInvocationLimitExceeded")
        ),
        other => panic!("expected TooManyRequestsException, got {other:?}"),
    }
    busy.await.unwrap().expect("the first invoke completes");

    client
        .put_function_concurrency()
        .function_name("single")
        .reserved_concurrent_executions(0)
        .send()
        .await
        .unwrap();
    let zero = client
        .invoke()
        .function_name("single")
        .send()
        .await
        .expect_err("429 at zero");
    assert_eq!(zero.code(), Some("TooManyRequestsException"));

    let metrics = reqwest::get(format!("{}/metrics", invoq.http_url()))
        .await
        .unwrap();
    let metrics = metrics.text().await.unwrap();
    assert!(metrics.contains("invoq_throttles_total 2"), "{metrics}");
}

fn uuid_like(text: &str) -> bool {
    let groups: Vec<usize> = text.split('-').map(str::len).collect();
    groups == [8, 4, 4, 4, 12]
}
