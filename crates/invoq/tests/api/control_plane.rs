//! Function control plane through the official SDK: shapes, states, errors, persistence.

use std::time::Duration;

use aws_sdk_lambda::client::Waiters;
use aws_sdk_lambda::error::ProvideErrorMetadata;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{
    Environment, FunctionCode, LastUpdateStatus, Runtime, State, TracingConfig, TracingMode,
};

use crate::harness::{Invoq, ROLE, create_builtin, data_dir, shell_echo_zip};

#[tokio::test]
async fn create_answers_pending_then_the_waiter_sees_active() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    let created = client
        .create_function()
        .function_name("orders")
        .runtime(Runtime::Providedal2023)
        .handler("orders.handler")
        .role(ROLE)
        .description("takes orders")
        .timeout(7)
        .memory_size(256)
        .environment(Environment::builder().variables("STAGE", "test").build())
        .tracing_config(TracingConfig::builder().mode(TracingMode::Active).build())
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(shell_echo_zip()))
                .build(),
        )
        .send()
        .await
        .expect("create");
    assert_eq!(created.state(), Some(&State::Pending));
    assert_eq!(
        created.state_reason(),
        Some("The function is being created.")
    );
    assert_eq!(
        created.function_arn(),
        Some("arn:aws:lambda:us-east-1:000000000000:function:orders")
    );
    assert_eq!(created.version(), Some("$LATEST"));
    assert_eq!(created.timeout(), Some(7));
    assert_eq!(created.memory_size(), Some(256));
    assert_eq!(
        created.code_sha256().map(str::len),
        Some(44),
        "base64 of a SHA-256"
    );
    let last_modified = created.last_modified().expect("LastModified");
    assert!(
        last_modified.ends_with("+0000") && last_modified.contains('T'),
        "{last_modified}"
    );

    client
        .wait_until_function_active_v2()
        .function_name("orders")
        .wait(Duration::from_secs(30))
        .await
        .expect("active");
    let function = client
        .get_function()
        .function_name("orders")
        .send()
        .await
        .expect("get");
    let configuration = function.configuration().expect("configuration");
    assert_eq!(configuration.state(), Some(&State::Active));
    assert_eq!(configuration.description(), Some("takes orders"));
    assert_eq!(
        configuration
            .environment()
            .and_then(|e| e.variables())
            .and_then(|v| v.get("STAGE")),
        Some(&"test".to_owned())
    );
    let code = function.code().expect("code");
    assert_eq!(code.repository_type(), Some("S3"));
    let location = code.location().expect("code location");
    let zip = reqwest::get(location)
        .await
        .expect("download")
        .bytes()
        .await
        .expect("body");
    assert_eq!(
        zip.as_ref(),
        shell_echo_zip().as_slice(),
        "Code.Location serves the package"
    );
}

#[tokio::test]
async fn update_configuration_and_code_go_in_progress_then_successful() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "worker", "echo").await;

    let updated = client
        .update_function_configuration()
        .function_name("worker")
        .timeout(30)
        .handler("sleep")
        .send()
        .await
        .expect("update configuration");
    assert_eq!(
        updated.last_update_status(),
        Some(&LastUpdateStatus::InProgress)
    );
    assert_eq!(updated.timeout(), Some(30));
    client
        .wait_until_function_updated_v2()
        .function_name("worker")
        .wait(Duration::from_secs(30))
        .await
        .expect("updated");
    let configuration = client
        .get_function_configuration()
        .function_name("worker")
        .send()
        .await
        .expect("get");
    assert_eq!(
        configuration.last_update_status(),
        Some(&LastUpdateStatus::Successful)
    );
    assert_eq!(configuration.handler(), Some("sleep"));

    let stale = client
        .update_function_configuration()
        .function_name("worker")
        .revision_id("not-the-revision")
        .timeout(4)
        .send()
        .await
        .expect_err("stale revision");
    assert_eq!(stale.code(), Some("PreconditionFailedException"));

    let code = client
        .update_function_code()
        .function_name("worker")
        .zip_file(Blob::new(shell_echo_zip()))
        .send()
        .await
        .expect("update code");
    assert_eq!(
        code.last_update_status(),
        Some(&LastUpdateStatus::InProgress)
    );
    assert_ne!(code.code_sha256(), configuration.code_sha256());
    let busy = client
        .update_function_configuration()
        .function_name("worker")
        .timeout(5)
        .send()
        .await;
    // The deployment may already be over; if not, AWS's conflict answer is expected.
    if let Err(error) = busy {
        assert_eq!(error.code(), Some("ResourceConflictException"));
        assert!(
            error
                .message()
                .unwrap_or_default()
                .contains("An update is in progress")
        );
    }
}

#[tokio::test]
async fn list_functions_pages_with_markers() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    for index in 0..5 {
        create_builtin(&client, &format!("fn-{index}"), "echo").await;
    }
    let first = client
        .list_functions()
        .max_items(2)
        .send()
        .await
        .expect("page 1");
    let names: Vec<_> = first
        .functions()
        .iter()
        .filter_map(|f| f.function_name())
        .collect();
    assert_eq!(names, ["fn-0", "fn-1"]);
    let marker = first.next_marker().expect("a next marker");
    let rest = client
        .list_functions()
        .marker(marker)
        .send()
        .await
        .expect("page 2");
    let names: Vec<_> = rest
        .functions()
        .iter()
        .filter_map(|f| f.function_name())
        .collect();
    assert_eq!(names, ["fn-2", "fn-3", "fn-4"]);
    assert_eq!(rest.next_marker(), None);

    let all: Vec<String> = client
        .list_functions()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .expect("paginate")
        .into_iter()
        .filter_map(|f| f.function_name)
        .collect();
    assert_eq!(all.len(), 5);

    let bad = client
        .list_functions()
        .max_items(0)
        .send()
        .await
        .expect_err("MaxItems 0");
    assert_eq!(bad.code(), Some("ValidationException"));
}

#[tokio::test]
async fn errors_carry_aws_codes_and_texts() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "taken", "echo").await;

    let missing = client
        .get_function()
        .function_name("ghost")
        .send()
        .await
        .expect_err("404");
    assert_eq!(missing.code(), Some("ResourceNotFoundException"));
    assert_eq!(
        missing.message(),
        Some("Function not found: arn:aws:lambda:us-east-1:000000000000:function:ghost")
    );
    assert!(
        missing
            .into_service_error()
            .is_resource_not_found_exception()
    );

    let duplicate = client
        .create_function()
        .function_name("taken")
        .runtime(Runtime::from("invoq.builtin"))
        .handler("echo")
        .role(ROLE)
        .code(FunctionCode::builder().build())
        .send()
        .await
        .expect_err("409");
    assert_eq!(duplicate.code(), Some("ResourceConflictException"));
    assert_eq!(duplicate.message(), Some("Function already exist: taken"));

    let bad_timeout = client
        .create_function()
        .function_name("slow")
        .runtime(Runtime::from("invoq.builtin"))
        .handler("echo")
        .role(ROLE)
        .timeout(901)
        .code(FunctionCode::builder().build())
        .send()
        .await
        .expect_err("timeout above 900");
    assert_eq!(bad_timeout.code(), Some("ValidationException"));
    assert!(
        bad_timeout
            .message()
            .unwrap_or_default()
            .contains("less than or equal to 900")
    );

    let bad_zip = client
        .create_function()
        .function_name("broken")
        .runtime(Runtime::Providedal2023)
        .handler("x")
        .role(ROLE)
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(b"not a zip".to_vec()))
                .build(),
        )
        .send()
        .await
        .expect_err("bad zip");
    assert_eq!(bad_zip.code(), Some("InvalidParameterValueException"));
    assert_eq!(
        bad_zip.message(),
        Some("Could not unzip uploaded file. Please check your file, then try to upload again.")
    );

    let reserved_env = client
        .update_function_configuration()
        .function_name("taken")
        .environment(
            Environment::builder()
                .variables("AWS_REGION", "mars-1")
                .build(),
        )
        .send()
        .await
        .expect_err("reserved variable");
    assert_eq!(reserved_env.code(), Some("InvalidParameterValueException"));
    assert!(
        reserved_env
            .message()
            .unwrap_or_default()
            .ends_with("Reserved keys used in this request: AWS_REGION")
    );

    let delete_latest = client
        .delete_function()
        .function_name("taken")
        .qualifier("$LATEST")
        .send()
        .await
        .expect_err("delete $LATEST");
    assert_eq!(
        delete_latest.message(),
        Some("$LATEST version cannot be deleted without deleting the function.")
    );
}

#[tokio::test]
async fn every_name_form_reaches_the_function() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "named", "echo").await;
    for name in [
        "named",
        "named:$LATEST",
        "000000000000:function:named",
        "arn:aws:lambda:us-east-1:000000000000:function:named",
        "arn:aws:lambda:us-east-1:000000000000:function:named:$LATEST",
    ] {
        let configuration = client
            .get_function_configuration()
            .function_name(name)
            .send()
            .await
            .unwrap_or_else(|error| panic!("{name}: {error:?}"));
        assert_eq!(configuration.function_name(), Some("named"), "{name}");
    }
    let version = client
        .get_function_configuration()
        .function_name("named")
        .qualifier("7")
        .send()
        .await
        .expect_err("no version 7");
    assert_eq!(
        version.message(),
        Some("Function not found: arn:aws:lambda:us-east-1:000000000000:function:named:7")
    );
    let conflict = client
        .get_function_configuration()
        .function_name("named:1")
        .qualifier("2")
        .send()
        .await
        .expect_err("qualifier conflict");
    assert_eq!(conflict.code(), Some("InvalidParameterValueException"));
}

#[tokio::test]
async fn reserved_concurrency_round_trips_and_keeps_100_unreserved() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "limited", "echo").await;
    create_builtin(&client, "greedy", "echo").await;

    let empty = client
        .get_function_concurrency()
        .function_name("limited")
        .send()
        .await
        .unwrap();
    assert_eq!(empty.reserved_concurrent_executions(), None);
    let put = client
        .put_function_concurrency()
        .function_name("limited")
        .reserved_concurrent_executions(5)
        .send()
        .await
        .expect("put");
    assert_eq!(put.reserved_concurrent_executions(), Some(5));
    let got = client
        .get_function_concurrency()
        .function_name("limited")
        .send()
        .await
        .unwrap();
    assert_eq!(got.reserved_concurrent_executions(), Some(5));
    let function = client
        .get_function()
        .function_name("limited")
        .send()
        .await
        .unwrap();
    assert_eq!(
        function
            .concurrency()
            .and_then(|c| c.reserved_concurrent_executions()),
        Some(5)
    );

    let too_much = client
        .put_function_concurrency()
        .function_name("greedy")
        .reserved_concurrent_executions(896)
        .send()
        .await
        .expect_err("over the unreserved minimum");
    assert_eq!(
        too_much.message(),
        Some(
            "Specified ReservedConcurrentExecutions for function decreases account's \
             UnreservedConcurrentExecution below its minimum value of [100]."
        )
    );
    client
        .put_function_concurrency()
        .function_name("greedy")
        .reserved_concurrent_executions(895)
        .send()
        .await
        .expect("exactly at the minimum");

    client
        .delete_function_concurrency()
        .function_name("limited")
        .send()
        .await
        .expect("delete");
    let cleared = client
        .get_function_concurrency()
        .function_name("limited")
        .send()
        .await
        .unwrap();
    assert_eq!(cleared.reserved_concurrent_executions(), None);
}

#[tokio::test]
async fn functions_survive_a_restart_and_delete_removes_them() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "durable", "echo").await;
    create_builtin(&client, "doomed", "echo").await;
    client
        .put_function_concurrency()
        .function_name("durable")
        .reserved_concurrent_executions(3)
        .send()
        .await
        .unwrap();
    client
        .delete_function()
        .function_name("doomed")
        .send()
        .await
        .expect("delete");
    invoq.kill();

    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    let function = client
        .get_function()
        .function_name("durable")
        .send()
        .await
        .expect("kept");
    assert_eq!(
        function
            .concurrency()
            .and_then(|c| c.reserved_concurrent_executions()),
        Some(3)
    );
    let gone = client
        .get_function()
        .function_name("doomed")
        .send()
        .await
        .expect_err("deleted");
    assert_eq!(gone.code(), Some("ResourceNotFoundException"));
    let deleted_again = client
        .delete_function()
        .function_name("doomed")
        .send()
        .await;
    assert_eq!(
        deleted_again.expect_err("404").code(),
        Some("ResourceNotFoundException")
    );
}
