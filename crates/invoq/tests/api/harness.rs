//! Test harness: runs the real `invoq` binary on loopback ports and points the official
//! aws-sdk-lambda client at it.

use std::io::{BufRead, BufReader, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use aws_sdk_lambda::Client;
use aws_sdk_lambda::client::Waiters;
use aws_sdk_lambda::config::retry::RetryConfig;
use aws_sdk_lambda::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{FunctionCode, Runtime};

pub(crate) const ROLE: &str = "arn:aws:iam::123456789012:role/invoq-test";

/// A running `invoq` process. Killed when dropped.
pub(crate) struct Invoq {
    child: Child,
    /// Addresses it announced, in order (`http`, `grpc`).
    pub(crate) addresses: Vec<(String, SocketAddr)>,
}

impl Invoq {
    /// `invoq serve` on a free port, with its data in `data_dir`.
    pub(crate) fn serve(data_dir: &Path) -> Self {
        Self::serve_with(data_dir, &[])
    }

    /// `invoq serve` with extra environment variables.
    pub(crate) fn serve_with(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        Self::start(&["serve", "--http-addr", "127.0.0.1:0"], data_dir, env, 1)
    }

    /// `invoq <args>`, waiting until it announced `listeners` addresses.
    pub(crate) fn start(
        args: &[&str],
        data_dir: &Path,
        env: &[(&str, &str)],
        listeners: usize,
    ) -> Self {
        Self::start_command(
            Command::new(env!("CARGO_BIN_EXE_invoq")),
            args,
            data_dir,
            env,
            listeners,
        )
    }

    /// `invoq serve` as the unprivileged user `nobody` (started by root with setpriv), so
    /// neither namespaces nor cgroups are available to it. `scratch` must be world-writable;
    /// the binary is copied there, since the build directory may not be reachable by nobody.
    pub(crate) fn serve_as_nobody(scratch: &Path, data_dir: &Path) -> Self {
        let binary = scratch.join("invoq");
        std::fs::copy(env!("CARGO_BIN_EXE_invoq"), &binary).expect("copy invoq");
        let mut command = Command::new("setpriv");
        command
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
            .arg(binary);
        let args = ["serve", "--http-addr", "127.0.0.1:0"];
        let home = scratch.display().to_string();
        Self::start_command(command, &args, data_dir, &[("HOME", &home)], 1)
    }

    fn start_command(
        mut command: Command,
        args: &[&str],
        data_dir: &Path,
        env: &[(&str, &str)],
        listeners: usize,
    ) -> Self {
        let mut child = command
            .args(args)
            // By environment, so services without a data directory ignore it.
            .env("INVOQ_DATA_DIR", data_dir)
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("RUST_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start invoq");
        let stdout = child.stdout.take().expect("piped stdout");
        let (sender, receiver) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some((what, addr)) = line
                    .strip_prefix("invoq: ")
                    .and_then(|rest| rest.split_once(" listening on "))
                {
                    let _ = sender.send((what.to_owned(), addr.parse().expect("socket address")));
                }
            }
        });
        let addresses = (0..listeners)
            .map(|_| {
                receiver
                    .recv_timeout(Duration::from_secs(20))
                    .expect("invoq did not announce its address")
            })
            .collect();
        Invoq { child, addresses }
    }

    pub(crate) fn address(&self, what: &str) -> SocketAddr {
        self.addresses
            .iter()
            .find(|(name, _)| name == what)
            .expect("announced address")
            .1
    }

    pub(crate) fn http_url(&self) -> String {
        format!("http://{}", self.address("http"))
    }

    pub(crate) fn client(&self) -> Client {
        client(&self.http_url())
    }

    /// Peak resident memory of the invoq process so far (VmHWM), in MiB.
    pub(crate) fn peak_rss_mib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("invoq's /proc status");
        let kib: u64 = status
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|value| value.split_whitespace().next()?.parse().ok())
            .expect("VmHWM");
        kib / 1024
    }

    /// SIGKILL, as a crash would.
    pub(crate) fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Invoq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The official SDK client, with test credentials, pointed at `endpoint`. Retries are off so
/// that a 429 reaches the test as it was sent.
pub(crate) fn client(endpoint: &str) -> Client {
    client_signing_as(endpoint, "test", "test")
}

/// The same client, signing with another access key.
pub(crate) fn client_signing_as(endpoint: &str, access_key_id: &str, secret: &str) -> Client {
    let config = aws_sdk_lambda::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .endpoint_url(endpoint)
        .region(Region::new("us-east-1"))
        .credentials_provider(Credentials::new(
            access_key_id,
            secret,
            None,
            None,
            "invoq-tests",
        ))
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(config)
}

/// The HTTP status and `x-amzn-ErrorType` an SDK call failed with.
pub(crate) fn status_and_type<E>(
    error: &aws_sdk_lambda::error::SdkError<E, aws_sdk_lambda::config::http::HttpResponse>,
) -> (Option<u16>, Option<String>) {
    let response = error.raw_response();
    (
        response.map(|response| response.status().as_u16()),
        response
            .and_then(|response| response.headers().get("x-amzn-errortype"))
            .map(str::to_owned),
    )
}

/// A zip holding `bootstrap` (mode 755) with these contents.
pub(crate) fn bootstrap_zip(bootstrap: &[u8]) -> Vec<u8> {
    code_zip(&[("bootstrap", bootstrap)])
}

/// A zip of these files (mode 755), by name.
pub(crate) fn code_zip(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    for (name, contents) in files {
        zip.start_file(*name, options).expect("zip entry");
        zip.write_all(contents).expect("zip write");
    }
    zip.finish().expect("zip finish").into_inner()
}

/// A file of this crate, by path from its manifest directory.
pub(crate) fn repository_file(path: &str) -> Vec<u8> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read(&path).unwrap_or_else(|error| panic!("{}: {error}", path.display()))
}

/// The SQS batch handler fixture (Python), zipped.
pub(crate) fn sqs_batch_zip() -> Vec<u8> {
    bootstrap_zip(&repository_file("tests/api/fixtures/sqs-batch-bootstrap"))
}

/// `examples/shell-echo/bootstrap`, zipped.
pub(crate) fn shell_echo_zip() -> Vec<u8> {
    bootstrap_zip(&repository_file("../../examples/shell-echo/bootstrap"))
}

/// The misbehaving test runtime, zipped; its Handler picks the misbehaviour.
pub(crate) fn misbehaving_zip() -> Vec<u8> {
    bootstrap_zip(&repository_file("tests/api/fixtures/misbehaving-bootstrap"))
}

/// `examples/rust-echo` (built with the official lambda_runtime crate), zipped as `bootstrap`.
pub(crate) fn rust_echo_zip() -> Vec<u8> {
    let exe = std::env::current_exe().expect("test executable");
    let profile_dir: PathBuf = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .into();
    let binary = profile_dir.join("rust-echo-bootstrap");
    let bytes = std::fs::read(&binary).unwrap_or_else(|error| {
        panic!(
            "{}: {error}; build the example first: cargo build -p rust-echo \
             (cargo xtask test does)",
            binary.display()
        )
    });
    bootstrap_zip(&bytes)
}

/// Creates a function and waits until it is Active.
pub(crate) async fn create_function(
    client: &Client,
    name: &str,
    runtime: Runtime,
    handler: &str,
    zip: Option<Vec<u8>>,
) {
    let code = match zip {
        Some(zip) => FunctionCode::builder().zip_file(Blob::new(zip)).build(),
        None => FunctionCode::builder().build(),
    };
    client
        .create_function()
        .function_name(name)
        .runtime(runtime)
        .handler(handler)
        .role(ROLE)
        .code(code)
        .send()
        .await
        .expect("create function");
    wait_until_active(client, name).await;
}

pub(crate) async fn wait_until_active(client: &Client, name: &str) {
    client
        .wait_until_function_active_v2()
        .function_name(name)
        .wait(Duration::from_secs(30))
        .await
        .expect("function becomes active");
}

pub(crate) async fn create_builtin(client: &Client, name: &str, handler: &str) {
    create_function(client, name, Runtime::from("invoq.builtin"), handler, None).await;
}

pub(crate) fn data_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temporary data dir")
}

pub(crate) use invoq_testkit::AwsStandIn;

/// `invoq serve` delivering and polling through the AWS SDKs against a stand-in (moto or
/// LocalStack, per `INVOQ_AWS_STANDIN`).
pub(crate) fn serve_invoq_on(aws: &AwsStandIn, data_dir: &Path, time_scale: &str) -> Invoq {
    let mut env = aws.env();
    env.push(("INVOQ_DESTINATIONS", "aws".into()));
    env.push(("INVOQ_TIME_SCALE", time_scale.into()));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    Invoq::serve_with(data_dir, &env)
}

pub(crate) struct Queues {
    pub(crate) sqs: aws_sdk_sqs::Client,
}

/// A message as a consumer sees it: body and string attributes.
#[derive(Debug)]
pub(crate) struct Message {
    pub(crate) body: String,
    pub(crate) attributes:
        std::collections::HashMap<String, aws_sdk_sqs::types::MessageAttributeValue>,
}

impl Queues {
    pub(crate) async fn new(aws: &AwsStandIn) -> Self {
        Queues {
            sqs: aws_sdk_sqs::Client::new(&aws.sdk_config().await),
        }
    }

    pub(crate) async fn create(&self, name: &str) -> String {
        let output = self
            .sqs
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .expect("create queue");
        output.queue_url().expect("queue url").to_owned()
    }

    /// Waits for `count` messages on the queue.
    pub(crate) async fn receive(&self, url: &str, count: usize) -> Vec<Message> {
        let mut messages = Vec::new();
        for _ in 0..40 {
            messages.extend(self.receive_now(url).await);
            if messages.len() >= count {
                return messages;
            }
        }
        panic!("expected {count} messages on {url}, got {messages:?}");
    }

    /// The messages one receive of up to 10 brings, waiting up to a second for the first.
    pub(crate) async fn receive_now(&self, url: &str) -> Vec<Message> {
        let output = self
            .sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .message_attribute_names("All")
            .send()
            .await
            .expect("receive");
        output
            .messages()
            .iter()
            .map(|message| Message {
                body: message.body().unwrap_or_default().to_owned(),
                attributes: message.message_attributes().cloned().unwrap_or_default(),
            })
            .collect()
    }
}

pub(crate) fn string_attribute(message: &Message, name: &str) -> (String, String) {
    let value = message
        .attributes
        .get(name)
        .unwrap_or_else(|| panic!("attribute {name}: {message:?}"));
    (
        value.data_type().to_owned(),
        value.string_value().unwrap_or_default().to_owned(),
    )
}

/// An Event invoke that must be answered 202 with an empty body; returns the request id.
pub(crate) async fn invoke_event(client: &Client, function: &str, payload: &str) -> String {
    let output = client
        .invoke()
        .function_name(function)
        .invocation_type(aws_sdk_lambda::types::InvocationType::Event)
        .payload(Blob::new(payload))
        .send()
        .await
        .expect("event invoke");
    assert_eq!(output.status_code(), 202);
    assert_eq!(
        output.executed_version(),
        None,
        "no executed version on 202"
    );
    assert!(
        output.payload().is_none_or(|p| p.as_ref().is_empty()),
        "empty body"
    );
    aws_sdk_lambda::operation::RequestId::request_id(&output)
        .expect("request id")
        .to_owned()
}
