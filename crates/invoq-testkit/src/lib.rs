//! Test support shared by invoq's suites: real AWS stand-ins, started on a free 127.0.0.1
//! port for one test and stopped when it ends.
//!
//! [`AwsStandIn::start`] starts the one `INVOQ_AWS_STANDIN` names: `moto` (the default; the
//! moto server from `INVOQ_MOTO_SERVER` or `.venv/bin/moto_server`) or `localstack`
//! (LocalStack's own runtime from PyPI, without Docker: the Python of
//! `INVOQ_LOCALSTACK_PYTHON` or `.venv-localstack/bin/python`). `cargo xtask test` installs
//! both and runs the AWS-facing suites once against each.
//!
//! Both answer for account [`ACCOUNT`] (LocalStack takes the account from a 12-digit access
//! key id), so tests name the same ARNs against either.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The account every stand-in answers for.
pub const ACCOUNT: &str = "123456789012";
/// Credentials for the stand-ins: never real ones, never the instance-metadata service.
pub const ACCESS_KEY_ID: &str = ACCOUNT;
pub const SECRET_ACCESS_KEY: &str = "test";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StandInKind {
    Moto,
    LocalStack,
}

impl StandInKind {
    /// The kind `INVOQ_AWS_STANDIN` asks for (moto when unset).
    pub fn from_env() -> Self {
        match std::env::var("INVOQ_AWS_STANDIN").as_deref() {
            Ok("localstack") => StandInKind::LocalStack,
            Ok("moto") | Err(_) => StandInKind::Moto,
            Ok(other) => panic!("INVOQ_AWS_STANDIN must be moto or localstack, not {other}"),
        }
    }

    /// Whether a FIFO queue remembers a `MessageDeduplicationId` for SQS's 5-minute window
    /// even after the message is deleted. moto 5 forgets it with the message.
    pub fn keeps_deduplication_ids_after_delete(self) -> bool {
        self == StandInKind::LocalStack
    }
}

/// A running moto server or LocalStack, owned by one test. Stopped when dropped.
pub struct AwsStandIn {
    pub kind: StandInKind,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    child: Child,
    _state: Option<tempfile::TempDir>,
}

impl AwsStandIn {
    /// Starts the stand-in `INVOQ_AWS_STANDIN` names and waits until it answers.
    pub fn start() -> Self {
        Self::start_kind(StandInKind::from_env())
    }

    pub fn start_kind(kind: StandInKind) -> Self {
        let port = free_port();
        let (child, state) = match kind {
            StandInKind::Moto => {
                let binary = tool("INVOQ_MOTO_SERVER", ".venv/bin/moto_server");
                let child = Command::new(&binary)
                    .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .expect("start moto server");
                (child, None)
            }
            StandInKind::LocalStack => {
                let python = tool("INVOQ_LOCALSTACK_PYTHON", ".venv-localstack/bin/python");
                let state = tempfile::tempdir().expect("LocalStack state directory");
                let child = localstack_command(&python, port, state.path())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .expect("start LocalStack");
                (child, Some(state))
            }
        };
        let stand_in = AwsStandIn {
            kind,
            endpoint: format!("http://127.0.0.1:{port}"),
            child,
            _state: state,
        };
        stand_in.wait_until_ready(port);
        stand_in
    }

    fn wait_until_ready(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let ready = match self.kind {
                StandInKind::Moto => TcpStream::connect(("127.0.0.1", port)).is_ok(),
                StandInKind::LocalStack => http_get(port, "/_localstack/health")
                    .is_some_and(|health| health.contains("\"sqs\": \"available\"")),
            };
            if ready {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("{:?} did not start on port {port}", self.kind);
    }

    /// Environment that points an invoq process (or any SDK) at this stand-in.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY_ID.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_ACCESS_KEY.into()),
            ("AWS_EC2_METADATA_DISABLED", "true".into()),
        ]
    }

    /// SDK configuration for this stand-in in `us-east-1`: test credentials only.
    pub async fn sdk_config(&self) -> aws_config::SdkConfig {
        aws_config::defaults(aws_config::BehaviorVersion::latest())
            .endpoint_url(&self.endpoint)
            .region(aws_config::Region::new("us-east-1"))
            .credentials_provider(aws_credential_types::Credentials::new(
                ACCESS_KEY_ID,
                SECRET_ACCESS_KEY,
                None,
                None,
                "invoq-testkit",
            ))
            .load()
            .await
    }
}

impl Drop for AwsStandIn {
    fn drop(&mut self) {
        // The whole process group: LocalStack may have started helpers.
        let group = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// LocalStack's runtime from PyPI (`localstack-core`), without Docker, serving SQS, SNS and
/// EventBridge on `127.0.0.1:<port>` only, with its state under `state_dir`. The settings are
/// those of ../shared/TEST-SERVERS.md, plus the hypercorn gateway, which (unlike the default
/// one) binds the loopback address it is given rather than every interface.
pub fn localstack_command(python: &Path, port: u16, state_dir: &Path) -> Command {
    let listen = format!("127.0.0.1:{port}");
    let certificate = python
        .parent()
        .and_then(Path::parent)
        .map(|venv| venv.join("server.pem"))
        .unwrap_or_default();
    let mut command = Command::new(python);
    command
        .args(["-m", "localstack.runtime.main"])
        .env("GATEWAY_LISTEN", &listen)
        .env("GATEWAY_SERVER", "hypercorn")
        .env("LOCALSTACK_HOST", &listen)
        .env("SERVICES", "sqs,sns,events,s3")
        .env("SQS_ENDPOINT_STRATEGY", "path")
        .env("DNS_ADDRESS", "0")
        .env("DISABLE_EVENTS", "1")
        .env("OVERRIDE_IN_DOCKER", "0")
        .env("SKIP_SSL_CERT_DOWNLOAD", "1")
        .env("FILESYSTEM_ROOT", state_dir)
        // LocalStack's own certificate code breaks with current pyOpenSSL; the installer
        // (`cargo xtask`) makes one beside the virtual environment.
        .env("CUSTOM_SSL_CERT_PATH", certificate);
    command
}

/// The AWS CLI that end-to-end scripts use: `INVOQ_AWS_CLI`, else `.venv/bin/aws` (installed
/// by `cargo xtask test`).
pub fn aws_cli() -> PathBuf {
    tool("INVOQ_AWS_CLI", ".venv/bin/aws")
}

/// A tool's path from `variable`, else `default` under the workspace root.
fn tool(variable: &str, default: &str) -> PathBuf {
    let path = std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../..")
                .join(default)
        });
    assert!(
        path.exists(),
        "{} not found: run the tests with `cargo xtask test`, which installs it",
        path.display()
    );
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

/// The body of a plain HTTP GET on loopback, or `None` if nothing answers yet.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    Some(response)
}
