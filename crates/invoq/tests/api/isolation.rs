//! Function isolation, tried as an attacker would: each test is an attack that worked before
//! sandboxes had namespaces, cgroups and a clean environment (ARCHITECTURE.md, "Sandboxes").
//!
//! Tests that need root (namespaces, cgroups) run invoq with `INVOQ_SANDBOX=namespaces`, so
//! a host that cannot isolate fails them instead of passing them in the fallback. The
//! fallback itself is tried by running invoq as `nobody`.

use std::time::Duration;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{Environment, FunctionCode, LogType, Runtime};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde_json::{Value, json};

use crate::harness::{Invoq, ROLE, data_dir, misbehaving_zip, wait_until_active};

const ISOLATED: [(&str, &str); 1] = [("INVOQ_SANDBOX", "namespaces")];

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .any(|line| line.starts_with("Uid:") && line.split_whitespace().nth(1) == Some("0"))
}

/// Namespaces and cgroups need root: elsewhere these tests have nothing to try.
fn needs_root(test: &str) -> bool {
    if !is_root() {
        eprintln!("{test}: skipped, it needs root (CI runs as root)");
    }
    is_root()
}

async fn create(client: &Client, name: &str, handler: &str, memory: i32, timeout: i32) {
    create_with_env(client, name, handler, memory, timeout, None).await;
}

async fn create_with_env(
    client: &Client,
    name: &str,
    handler: &str,
    memory: i32,
    timeout: i32,
    environment: Option<Environment>,
) {
    client
        .create_function()
        .function_name(name)
        .runtime(Runtime::Providedal2023)
        .handler(handler)
        .role(ROLE)
        .memory_size(memory)
        .timeout(timeout)
        .set_environment(environment)
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(misbehaving_zip()))
                .build(),
        )
        .send()
        .await
        .expect("create function");
    wait_until_active(client, name).await;
}

struct Answer {
    error: Option<String>,
    body: Value,
    log: String,
}

async fn invoke(client: &Client, name: &str, payload: Value) -> Answer {
    let output = client
        .invoke()
        .function_name(name)
        .payload(Blob::new(payload.to_string()))
        .log_type(LogType::Tail)
        .send()
        .await
        .unwrap_or_else(|error| panic!("invoke {name}: {error:?}"));
    let log = output
        .log_result()
        .map(|log| String::from_utf8(BASE64.decode(log).unwrap()).unwrap())
        .unwrap_or_default();
    Answer {
        error: output.function_error().map(str::to_owned),
        body: serde_json::from_slice(output.payload().expect("payload").as_ref())
            .expect("json payload"),
        log,
    }
}

/// The environment a function printed (the `env` handler), as `NAME=value` lines.
async fn function_environment(client: &Client, name: &str) -> String {
    let answer = invoke(client, name, json!({})).await;
    assert_eq!(answer.error, None, "{:?}", answer.body);
    String::from_utf8(BASE64.decode(answer.body.as_str().unwrap()).unwrap()).unwrap()
}

/// Host processes whose command line contains `marker`.
fn processes_named(marker: &str) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| std::fs::read(entry.path().join("cmdline")).ok())
        .map(|cmdline| String::from_utf8_lossy(&cmdline).replace('\0', " "))
        .filter(|cmdline| cmdline.contains(marker))
        .collect()
}

async fn wait_until_gone(marker: &str, within: Duration) {
    let gone = async {
        while !processes_named(marker).is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    if tokio::time::timeout(within, gone).await.is_err() {
        panic!("still running: {:?}", processes_named(marker));
    }
}

/// The Runtime API address a function's process was given, read on the host.
fn runtime_api_of(function: &str) -> String {
    let wanted = format!("AWS_LAMBDA_FUNCTION_NAME={function}");
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(environ) = std::fs::read(entry.path().join("environ")) else {
            continue;
        };
        let environ = String::from_utf8_lossy(&environ).into_owned();
        let variables: Vec<&str> = environ.split('\0').collect();
        if variables.contains(&wanted.as_str())
            && let Some(address) = variables
                .iter()
                .find_map(|variable| variable.strip_prefix("AWS_LAMBDA_RUNTIME_API="))
        {
            return address.to_owned();
        }
    }
    panic!("no process of {function} found");
}

#[tokio::test]
async fn functions_get_their_own_environment_and_none_of_invoqs() {
    let data = data_dir();
    let mut env = vec![
        ("INVOQ_TEST_SECRET", "leak-me"),
        ("AWS_SESSION_TOKEN", "invoqs-own-session"),
        ("INVOQ_FUNCTION_CREDENTIALS", "function-key:function-secret"),
    ];
    if is_root() {
        env.extend(ISOLATED);
    }
    let invoq = Invoq::serve_with(data.path(), &env);
    let client = invoq.client();
    let variables = Environment::builder().variables("STAGE", "test").build();
    create_with_env(&client, "env", "env", 128, 3, Some(variables)).await;

    let environment = function_environment(&client, "env").await;
    for expected in [
        "STAGE=test",
        "AWS_ACCESS_KEY_ID=function-key",
        "AWS_SECRET_ACCESS_KEY=function-secret",
        "AWS_LAMBDA_FUNCTION_NAME=env",
        "AWS_LAMBDA_FUNCTION_MEMORY_SIZE=128",
        "_HANDLER=env",
    ] {
        assert!(
            environment.lines().any(|line| line == expected),
            "{expected} missing in:\n{environment}"
        );
    }
    // invoq itself runs with AWS_SECRET_ACCESS_KEY=test (the harness sets it).
    for leaked in [
        "leak-me",
        "invoqs-own-session",
        "INVOQ_",
        "RUST_LOG",
        "AWS_SECRET_ACCESS_KEY=test",
    ] {
        assert!(
            !environment.contains(leaked),
            "invoq's {leaked} leaked into:\n{environment}"
        );
    }
}

#[tokio::test]
async fn a_function_cannot_take_another_functions_invocations() {
    if !needs_root("a_function_cannot_take_another_functions_invocations") {
        return;
    }
    let data = data_dir();
    let invoq = Invoq::serve_with(data.path(), &ISOLATED);
    let client = invoq.client();
    create(&client, "victim", "slow-echo", 128, 10).await;
    create(&client, "thief", "steal", 128, 15).await;

    // Warm the victim, then learn its Runtime API address as only the host can.
    let warm = invoke(&client, "victim", json!({"secret": "victim-0"})).await;
    assert_eq!(warm.body, json!({"secret": "victim-0"}));
    let target = runtime_api_of("victim");

    // The thief queues GET /next at the victim's address (and at every address it can read
    // in /proc) while the victim's caller keeps invoking it.
    let thief = tokio::spawn({
        let client = client.clone();
        async move { invoke(&client, "thief", json!({"target": target})).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    for n in 1..=6 {
        let secret = format!("victim-{n}");
        let answer = invoke(&client, "victim", json!({"secret": secret})).await;
        assert_eq!(answer.error, None, "the victim answered: {:?}", answer.body);
        assert_eq!(
            answer.body,
            json!({"secret": secret}),
            "the victim's own answer"
        );
    }
    let thief = thief.await.unwrap();
    assert_eq!(thief.error, None, "{:?}", thief.body);
    let stolen = BASE64
        .decode(thief.body["stolen"].as_str().unwrap())
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&stolen).contains("victim"),
        "the thief got: {}",
        String::from_utf8_lossy(&stolen)
    );
    // In its own pid namespace the thief sees no other sandbox's environment.
    assert_eq!(
        thief.body["found"].as_str().unwrap().trim(),
        "127.0.0.1:9001",
        "only its own Runtime API"
    );
}

#[tokio::test]
async fn a_function_cannot_write_outside_its_tmp() {
    if !needs_root("a_function_cannot_write_outside_its_tmp") {
        return;
    }
    let data = data_dir();
    let invoq = Invoq::serve_with(data.path(), &ISOLATED);
    let client = invoq.client();
    create(&client, "writer", "write", 128, 3).await;
    let data_path = data.path().display().to_string();
    let targets = [
        format!("{data_path}/functions/intruder.json"),
        format!("{data_path}/intruder"),
        "/var/task/bootstrap".to_owned(),
        "/var/task/intruder".to_owned(),
        "/usr/intruder".to_owned(),
        "/etc/intruder".to_owned(),
        "/intruder".to_owned(),
        "/tmp/mine".to_owned(),
    ];
    let answer = invoke(&client, "writer", json!({"paths": targets.join(" ")})).await;
    let result = answer.body.as_str().unwrap().to_owned();
    for target in &targets[..targets.len() - 1] {
        assert!(
            result.contains(&format!("{target}:refused")),
            "{target} was not refused: {result}"
        );
    }
    assert!(result.contains("/tmp/mine:written"), "{result}");
    assert!(!data.path().join("functions/intruder.json").exists());
    assert!(!data.path().join("intruder").exists());
    assert!(!std::path::Path::new("/usr/intruder").exists());
}

#[tokio::test]
async fn memory_size_is_enforced_and_reported() {
    if !needs_root("memory_size_is_enforced_and_reported") {
        return;
    }
    let data = data_dir();
    let invoq = Invoq::serve_with(data.path(), &ISOLATED);
    let client = invoq.client();
    create(&client, "hog", "alloc", 128, 20).await;
    create(&client, "echo", "echo", 128, 3).await;

    let answer = invoke(&client, "hog", json!({})).await;
    let request_id_prefix = "RequestId: ";
    assert_eq!(answer.error.as_deref(), Some("Unhandled"));
    assert_eq!(
        answer.body["errorType"], "Runtime.OutOfMemory",
        "{:?}",
        answer.body
    );
    let message = answer.body["errorMessage"].as_str().unwrap();
    assert!(
        message.starts_with(request_id_prefix)
            && message.ends_with(" Error: Runtime exited with error: signal: killed"),
        "{message}"
    );
    assert!(
        answer.log.contains("Max Memory Used: 128 MB"),
        "the real peak: {}",
        answer.log
    );
    // The next invoke gets a fresh sandbox (a cold start), and invoq is still serving.
    let again = invoke(&client, "hog", json!({})).await;
    assert_eq!(again.body["errorType"], "Runtime.OutOfMemory");
    assert!(again.log.contains("Init Duration"), "{}", again.log);
    let echo = invoke(&client, "echo", json!({"still": "up"})).await;
    assert_eq!(echo.body, json!({"still": "up"}));
    let used: u64 = echo
        .log
        .split("Max Memory Used: ")
        .nth(1)
        .and_then(|rest| rest.split(' ').next())
        .and_then(|mb| mb.parse().ok())
        .unwrap_or_else(|| panic!("no peak in {}", echo.log));
    assert!((1..128).contains(&used), "a plausible peak: {used} MB");
}

#[tokio::test]
async fn no_descendant_survives_a_timeout_or_a_killed_invoq() {
    if !needs_root("no_descendant_survives_a_timeout_or_a_killed_invoq") {
        return;
    }
    let data = data_dir();
    let invoq = Invoq::serve_with(data.path(), &ISOLATED);
    let client = invoq.client();
    create(&client, "hang", "orphan-hang", 128, 1).await;
    create(&client, "orphan", "orphan", 128, 3).await;

    // A bootstrap that detached a process (setsid) and then timed out.
    let answer = invoke(&client, "hang", json!({})).await;
    assert_eq!(answer.body["errorType"], "Sandbox.Timedout");
    let sandbox = answer
        .log
        .lines()
        .find_map(|line| line.strip_prefix("sandbox="))
        .unwrap_or_else(|| panic!("the sandbox name in {}", answer.log))
        .to_owned();
    wait_until_gone(&format!("orphan-{sandbox}"), Duration::from_secs(3)).await;

    // One that detached a process and is warm when invoq is killed.
    let answer = invoke(&client, "orphan", json!({})).await;
    let marker = format!("orphan-{}", answer.body["sandbox"].as_str().unwrap());
    assert_eq!(
        processes_named(&marker).len(),
        1,
        "the detached process runs"
    );
    invoq.kill();
    wait_until_gone(&marker, Duration::from_secs(5)).await;
}

/// A small zip that inflates past Lambda's 250 MB: one deflated MiB copied 251 times.
fn zip_bomb() -> Vec<u8> {
    use std::io::Write;
    let mut one = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated);
    one.start_file("zeros", options).unwrap();
    one.write_all(&vec![0u8; 1 << 20]).unwrap();
    let mut source = zip::ZipArchive::new(one.finish().unwrap()).unwrap();
    let mut bomb = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for index in 0..251 {
        bomb.raw_copy_file_rename(source.by_index(0).unwrap(), format!("zeros-{index}"))
            .unwrap();
    }
    bomb.finish().unwrap().into_inner()
}

fn bytes_under(path: &std::path::Path) -> u64 {
    std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| match entry.metadata() {
            Ok(metadata) if metadata.is_dir() => bytes_under(&entry.path()),
            Ok(metadata) => metadata.len(),
            Err(_) => 0,
        })
        .sum()
}

#[tokio::test]
async fn a_zip_bomb_is_refused_before_anything_is_stored() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    let bomb = zip_bomb();
    assert!(bomb.len() < 1 << 20, "{} bytes", bomb.len());
    let error = client
        .create_function()
        .function_name("bomb")
        .runtime(Runtime::Providedal2023)
        .handler("x")
        .role(ROLE)
        .code(
            FunctionCode::builder()
                .zip_file(Blob::new(bomb.clone()))
                .build(),
        )
        .send()
        .await
        .expect_err("refused");
    let service_error = error.as_service_error().expect("a service error");
    assert!(
        service_error.is_invalid_parameter_value_exception(),
        "{service_error:?}"
    );
    assert_eq!(
        service_error.meta().message(),
        Some("Unzipped size must be smaller than 262144000 bytes")
    );
    assert_eq!(error.raw_response().unwrap().status().as_u16(), 400);

    // An existing function refuses it as new code too.
    create(&client, "small", "echo", 128, 3).await;
    let error = client
        .update_function_code()
        .function_name("small")
        .zip_file(Blob::new(bomb))
        .send()
        .await
        .expect_err("refused");
    assert_eq!(
        error.as_service_error().and_then(|e| e.meta().message()),
        Some("Unzipped size must be smaller than 262144000 bytes")
    );
    let stored = bytes_under(data.path());
    assert!(stored < 16 << 20, "{stored} bytes in the data dir");
}

#[tokio::test]
async fn without_root_the_fallback_still_cleans_the_environment_and_limits_memory() {
    if !needs_root("without_root_the_fallback_...") {
        return;
    }
    let scratch = data_dir();
    let data = scratch.path().join("data");
    std::fs::create_dir(&data).unwrap();
    for dir in [scratch.path(), &data] {
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o777)).unwrap();
    }
    let invoq = Invoq::serve_as_nobody(scratch.path(), &data);
    let client = invoq.client();
    create(&client, "env", "env", 128, 3).await;
    create(&client, "hog", "alloc", 128, 20).await;

    let environment = function_environment(&client, "env").await;
    assert!(
        !environment.contains("AWS_SECRET_ACCESS_KEY"),
        "no inherited credentials:\n{environment}"
    );
    // Without cgroups the limit is an rlimit: the shell cannot grow past it and fails.
    let answer = invoke(&client, "hog", json!({})).await;
    assert_eq!(answer.error.as_deref(), Some("Unhandled"));
    assert_eq!(
        answer.body["errorType"], "Runtime.ExitError",
        "{:?}",
        answer.body
    );
    let echo = invoke(&client, "env", json!({})).await;
    assert_eq!(echo.error, None, "invoq still serves");
}
