//! The split deployment: `invoq frontend` and `invoq runtime` as separate processes talking
//! gRPC over loopback.

use aws_sdk_lambda::error::ProvideErrorMetadata;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{InvocationType, Runtime};
use serde_json::{Value, json};

use crate::harness::{
    Invoq, code_zip, create_builtin, create_function, data_dir, repository_file, shell_echo_zip,
};

/// The shared secret every process of these deployments is given.
const TOKEN: [(&str, &str); 1] = [("INVOQ_GRPC_TOKEN", "split-deployment-secret")];

/// `invoq frontend` on a free port, using the runtime service at `runtime_url`.
fn start_frontend(runtime_url: &str, data: &std::path::Path) -> Invoq {
    start_frontend_with(runtime_url, data, &TOKEN)
}

fn start_frontend_with(runtime_url: &str, data: &std::path::Path, env: &[(&str, &str)]) -> Invoq {
    let args = [
        "frontend",
        "--http-addr",
        "127.0.0.1:0",
        "--grpc-addr",
        "127.0.0.1:0",
        "--runtime-addr",
        runtime_url,
        "--queue-addr",
        &format!("http://127.0.0.1:{}", free_port()),
    ];
    Invoq::start(&args, data, env, 2)
}

/// A port nobody listens on right now, so a restarted runtime can come back on it.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn frontend_and_runtime_run_as_separate_processes() {
    let runtime_addr = format!("127.0.0.1:{}", free_port());
    let runtime_data = data_dir();
    let runtime = Invoq::start(
        &["runtime", "--grpc-addr", &runtime_addr],
        runtime_data.path(),
        &TOKEN,
        1,
    );
    let frontend_data = data_dir();
    let frontend = start_frontend(&format!("http://{runtime_addr}"), frontend_data.path());
    let client = frontend.client();
    create_builtin(&client, "echo", "echo").await;
    create_function(
        &client,
        "shell",
        Runtime::Providedal2023,
        "echo",
        Some(shell_echo_zip()),
    )
    .await;

    let output = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new("[1,2]"))
        .send()
        .await;
    assert_eq!(
        output.unwrap().payload().map(Blob::as_ref),
        Some(b"[1,2]".as_slice())
    );
    let invoke_shell = || async {
        let output = client
            .invoke()
            .function_name("shell")
            .payload(Blob::new(r#"{"via":"grpc"}"#))
            .send()
            .await
            .expect("invoke through the split deployment");
        serde_json::from_slice::<Value>(output.payload().unwrap().as_ref()).unwrap()
    };
    assert_eq!(invoke_shell().await["echo"], json!({"via": "grpc"}));

    // A managed runtime: the runtime service's host says it has the interpreter, and
    // installs the client (or finds it installed) while the function is Pending.
    let python = crate::managed_runtimes::offered("python").await;
    let python_code = code_zip(&[(
        "app.py",
        &repository_file("../../examples/python-echo/app.py"),
    )]);
    create_function(
        &client,
        "python",
        Runtime::from(python.as_str()),
        "app.handler",
        Some(python_code),
    )
    .await;
    let invoke_python = || async {
        let output = client
            .invoke()
            .function_name("python")
            .payload(Blob::new(r#"{"via":"python"}"#))
            .send()
            .await
            .expect("invoke python through the split deployment");
        serde_json::from_slice::<Value>(output.payload().unwrap().as_ref()).unwrap()
    };
    assert_eq!(invoke_python().await, json!({"via": "python"}));

    // This frontend's queue service is not running: Event invokes are refused, never
    // answered 202.
    let event = client
        .invoke()
        .function_name("echo")
        .invocation_type(InvocationType::Event)
        .send()
        .await
        .expect_err("no queue, no 202");
    assert_eq!(event.code(), Some("ServiceException"));

    // A runtime that comes back empty gets the code again from the frontend on first use,
    // and installs the managed runtime's client again at its first cold start.
    runtime.kill();
    let fresh_data = data_dir();
    let fresh_runtimes = fresh_data.path().join("runtimes").display().to_string();
    let _runtime = Invoq::start(
        &["runtime", "--grpc-addr", &runtime_addr],
        fresh_data.path(),
        &[TOKEN[0], ("INVOQ_RUNTIMES_DIR", fresh_runtimes.as_str())],
        1,
    );
    assert_eq!(invoke_shell().await["echo"], json!({"via": "grpc"}));
    assert_eq!(invoke_python().await, json!({"via": "python"}));
}

#[tokio::test]
async fn serve_also_exposes_its_runtime_over_grpc() {
    let serve_data = data_dir();
    let serve = Invoq::start(
        &[
            "serve",
            "--http-addr",
            "127.0.0.1:0",
            "--grpc-addr",
            "127.0.0.1:0",
        ],
        serve_data.path(),
        &TOKEN,
        2,
    );
    let frontend_data = data_dir();
    let frontend = start_frontend(
        &format!("http://{}", serve.address("grpc")),
        frontend_data.path(),
    );
    let client = frontend.client();
    create_builtin(&client, "echo", "echo").await;
    let output = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new("true"))
        .send()
        .await;
    assert_eq!(
        output.unwrap().payload().map(Blob::as_ref),
        Some(b"true".as_slice())
    );
}

#[tokio::test]
async fn services_refuse_callers_without_the_token() {
    let runtime_addr = format!("127.0.0.1:{}", free_port());
    let runtime_data = data_dir();
    let _runtime = Invoq::start(
        &["runtime", "--grpc-addr", &runtime_addr],
        runtime_data.path(),
        &TOKEN,
        1,
    );
    let frontend_data = data_dir();
    let frontend = start_frontend_with(
        &format!("http://{runtime_addr}"),
        frontend_data.path(),
        &[("INVOQ_GRPC_TOKEN", "a-guess")],
    );
    let client = frontend.client();
    create_builtin(&client, "echo", "echo").await;
    let refused = client
        .invoke()
        .function_name("echo")
        .payload(Blob::new("{}"))
        .send()
        .await
        .expect_err("the runtime refuses a wrong token");
    assert_eq!(refused.code(), Some("ServiceException"), "{refused:?}");

    // Health checks stay open.
    let health = std::process::Command::new(env!("CARGO_BIN_EXE_invoq"))
        .args(["health", &format!("http://{runtime_addr}")])
        .output()
        .unwrap();
    assert!(health.status.success(), "{health:?}");
}

#[test]
fn services_off_loopback_need_the_token_to_start() {
    let data = data_dir();
    // Refused before anything binds: no non-loopback socket is opened.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_invoq"))
        .args(["runtime", "--grpc-addr", "0.0.0.0:0"])
        .env("INVOQ_DATA_DIR", data.path())
        .env_remove("INVOQ_GRPC_TOKEN")
        .env_remove("INVOQ_GRPC_TOKEN_FILE")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("need a shared token"), "{stderr}");
}
