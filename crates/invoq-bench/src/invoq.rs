//! The system under test: a running invoq at `--target`, or `invoq serve` started here as a
//! child process on a fresh data directory; and the bare 202 server of the baseline.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tempfile::TempDir;
use tokio::process::{Child, Command};

use crate::sign::Signer;
use crate::{Backend, BenchError, Scenario};

/// The function every run invokes.
pub const FUNCTION: &str = "invoq-bench";
/// Destination queues; with `file` destinations they are `sqs/<name>.jsonl` files.
pub const ON_SUCCESS: &str = "invoq-bench-success";
pub const ON_FAILURE: &str = "invoq-bench-failure";

/// How to start `invoq serve`.
#[derive(Clone, Debug)]
pub struct SpawnOptions {
    pub backend: Backend,
    /// Log the `invoq::timeline` (attempt start and end of every event).
    pub timeline: bool,
    /// `INVOQ_TIME_SCALE`, to make retry delays short.
    pub time_scale: Option<f64>,
    /// Run workers; without them events stay queued.
    pub workers: bool,
    /// `ID:SECRET`: start invoq with SigV4 authentication on, accepting this key.
    pub access_keys: Option<String>,
}

/// The function and the destinations a scenario needs.
#[derive(Clone, Copy, Debug)]
pub struct Setup {
    pub function: &'static str,
    pub handler: &'static str,
}

impl Setup {
    pub fn for_scenario(scenario: Scenario) -> Setup {
        let handler = match scenario {
            Scenario::Failures => "flaky",
            _ => "echo",
        };
        Setup {
            function: FUNCTION,
            handler,
        }
    }
}

/// A deployment package the bench runs instead of a builtin (`--code-zip`).
#[derive(Clone, Debug)]
pub struct Code {
    pub zip: Vec<u8>,
    pub runtime: String,
    /// The scenario's builtin handler name when unset (any name suits a `bootstrap`).
    pub handler: Option<String>,
}

pub struct Invoq {
    url: String,
    description: String,
    child: Option<Child>,
    data: Option<TempDir>,
    records: Option<PathBuf>,
    client: reqwest::Client,
    /// Signs the control-plane requests when invoq authenticates (`--sign`).
    signer: Option<Signer>,
}

impl Invoq {
    /// An invoq someone else runs; `records` is its file destinations' directory, if known.
    pub fn remote(url: &str, records: Option<PathBuf>) -> Invoq {
        Invoq {
            url: url.trim_end_matches('/').to_owned(),
            description: format!("invoq at {url}"),
            child: None,
            data: None,
            records,
            client: reqwest::Client::new(),
            signer: None,
        }
    }

    /// Starts `invoq serve` on `data` (a fresh directory when `None`) and waits until it
    /// answers.
    pub async fn spawn(options: &SpawnOptions, data: Option<TempDir>) -> Result<Invoq, BenchError> {
        let data = match data {
            Some(data) => data,
            None => tempfile::Builder::new()
                .prefix("invoq-bench-")
                .tempdir()
                .map_err(BenchError::io("creating a data directory"))?,
        };
        let mut filter = String::from("warn");
        if options.timeline {
            filter.push_str(",invoq::timeline=trace");
        }
        let mut command = invoq_command(&data)?;
        command
            .arg("serve")
            .env("INVOQ_DATA_DIR", data.path())
            .env("INVOQ_QUEUE", options.backend.as_str())
            .env("INVOQ_DESTINATIONS", "file")
            .env("INVOQ_LOG_FORMAT", "json")
            .env("RUST_LOG", filter);
        if options.backend == Backend::Sqs && std::env::var_os("INVOQ_SQS_QUEUE_PREFIX").is_none() {
            command.env("INVOQ_SQS_QUEUE_PREFIX", sqs_prefix(data.path()));
        }
        if let Some(scale) = options.time_scale {
            command.env("INVOQ_TIME_SCALE", scale.to_string());
        }
        if !options.workers {
            command.env("INVOQ_WORKER_CONCURRENCY", "0");
        }
        if let Some(keys) = &options.access_keys {
            command
                .env("INVOQ_AUTH", "on")
                .env("INVOQ_ACCESS_KEYS", keys);
        }
        let description = format!(
            "invoq serve, {} queue, file destinations",
            options.backend.as_str()
        );
        Self::start(command, description, Some(data)).await
    }

    /// Starts the bare HTTP server that answers 202 to everything (`invoq baseline`).
    pub async fn spawn_baseline() -> Result<Invoq, BenchError> {
        let dir = tempfile::Builder::new()
            .prefix("invoq-baseline-")
            .tempdir()
            .map_err(BenchError::io("creating a directory"))?;
        let mut command = invoq_command(&dir)?;
        command.arg("baseline");
        Self::start(command, "bare 202 server".into(), Some(dir)).await
    }

    async fn start(
        mut command: Command,
        description: String,
        data: Option<TempDir>,
    ) -> Result<Invoq, BenchError> {
        let port = free_port()?;
        let data_dir = data.as_ref().map(|d| d.path().to_owned());
        let log_path = data_dir.as_deref().map(|dir| dir.join("invoq.log"));
        let log = match &log_path {
            Some(path) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map(Stdio::from)
                .map_err(BenchError::io("opening the invoq log"))?,
            None => Stdio::null(),
        };
        let child = command
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .map_err(BenchError::io("starting invoq"))?;
        let mut invoq = Invoq {
            url: format!("http://127.0.0.1:{port}"),
            description,
            child: Some(child),
            records: data_dir.map(|dir| dir.join("destinations")),
            data,
            client: reqwest::Client::new(),
            signer: None,
        };
        invoq.wait_until_ready(log_path.as_deref()).await?;
        Ok(invoq)
    }

    async fn wait_until_ready(&mut self, log: Option<&Path>) -> Result<(), BenchError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                let log = log
                    .and_then(|log| std::fs::read_to_string(log).ok())
                    .unwrap_or_default();
                return Err(BenchError::Setup(format!(
                    "{} exited ({status}) before answering:\n{log}",
                    self.description
                )));
            }
            let ping = self
                .client
                .get(format!("{}/2015-03-31/functions", self.url))
                .send()
                .await;
            if ping.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BenchError::Setup(format!(
            "{} did not answer within 60 s",
            self.description
        )))
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn describe(&self) -> String {
        self.description.clone()
    }

    /// The file destinations' directory, when the records can be followed.
    pub fn records(&self) -> Option<PathBuf> {
        self.records.clone()
    }

    /// The started invoq's log, where its timeline goes.
    pub fn log(&self) -> Option<PathBuf> {
        self.data.as_ref().map(|d| d.path().join("invoq.log"))
    }

    /// Resident and peak resident memory of the started invoq, in MB.
    pub fn memory(&self) -> Option<(f64, f64)> {
        let pid = self.child.as_ref()?.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let field = |name: &str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / 1024.0)
        };
        Some((field("VmRSS:")?, field("VmHWM:")?))
    }

    /// Stops the started invoq (SIGTERM, then SIGKILL) and hands back its data directory.
    pub async fn stop(&mut self) -> Option<TempDir> {
        if let Some(mut child) = self.child.take() {
            if let Some(pid) = child.id() {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
            }
            if tokio::time::timeout(Duration::from_secs(10), child.wait())
                .await
                .is_err()
            {
                let _ = child.kill().await;
            }
        }
        self.data.take()
    }

    /// Creates the function (a builtin, or `code` on its runtime) and, when records are
    /// followed, points its destinations at the files the observer reads.
    pub async fn prepare(&self, setup: &Setup, code: Option<&Code>) -> Result<(), BenchError> {
        use base64::Engine;
        let (runtime, handler, code) = match code {
            Some(code) => (
                code.runtime.as_str(),
                code.handler.as_deref().unwrap_or(setup.handler),
                json!({"ZipFile": base64::engine::general_purpose::STANDARD.encode(&code.zip)}),
            ),
            None => ("invoq.builtin", setup.handler, json!({})),
        };
        let created = self
            .client
            .post(format!("{}/2015-03-31/functions", self.url))
            .json(&json!({
                "FunctionName": setup.function,
                "Runtime": runtime,
                "Handler": handler,
                "Role": "arn:aws:iam::000000000000:role/invoq-bench",
                "Code": code,
            }));
        let created = self.send(created).await?;
        // 409: it exists already (a running target); its handler must then be the same.
        if !created.status().is_success() && created.status().as_u16() != 409 {
            return Err(answer("CreateFunction", created).await);
        }
        self.wait_until_active(setup.function).await?;
        if self.records.is_none() {
            return Ok(());
        }
        let arn = |queue: &str| format!("arn:aws:sqs:us-east-1:000000000000:{queue}");
        let configured = self
            .client
            .put(format!(
                "{}/2019-09-25/functions/{}/event-invoke-config",
                self.url, setup.function
            ))
            .json(&json!({
                "DestinationConfig": {
                    "OnSuccess": {"Destination": arn(ON_SUCCESS)},
                    "OnFailure": {"Destination": arn(ON_FAILURE)},
                }
            }));
        let configured = self.send(configured).await?;
        if !configured.status().is_success() {
            return Err(answer("PutFunctionEventInvokeConfig", configured).await);
        }
        Ok(())
    }
}

impl Invoq {
    /// Signs requests from now on (`--sign`).
    pub fn set_signer(&mut self, signer: Option<Signer>) {
        self.signer = signer;
    }

    /// Sends a request, signed when a signer is set.
    async fn send(
        &self,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BenchError> {
        let mut request = request.build()?;
        if let Some(signer) = &self.signer {
            signer.sign(&mut request)?;
        }
        Ok(self.client.execute(request).await?)
    }

    /// Polls GetFunctionConfiguration (at most 30 s) until the function is Active.
    async fn wait_until_active(&self, function: &str) -> Result<(), BenchError> {
        let url = format!("{}/2015-03-31/functions/{function}/configuration", self.url);
        for _ in 0..300 {
            let response = self.send(self.client.get(&url)).await?;
            if !response.status().is_success() {
                return Err(answer("GetFunctionConfiguration", response).await);
            }
            let configuration: serde_json::Value = response.json().await?;
            if configuration["State"] == "Active" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(BenchError::Setup(format!(
            "{function} did not become Active in 30 s"
        )))
    }
}

/// This very binary, as the child to start.
fn invoq_command(dir: &TempDir) -> Result<Command, BenchError> {
    let exe = std::env::current_exe().map_err(BenchError::io("finding the invoq binary"))?;
    let mut command = Command::new(exe);
    command.current_dir(dir.path());
    Ok(command)
}

/// SQS queue names of one run: fresh ones, the same across the drain's restart.
fn sqs_prefix(data: &Path) -> String {
    let name = data.file_name().unwrap_or_default().to_string_lossy();
    let tag: String = name.chars().filter(char::is_ascii_alphanumeric).collect();
    format!("bench-{}-", &tag[tag.len().saturating_sub(8)..])
}

fn free_port() -> Result<u16, BenchError> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(BenchError::io("finding a free port"))?;
    Ok(listener
        .local_addr()
        .map_err(BenchError::io("finding a free port"))?
        .port())
}

async fn answer(request: &str, response: reqwest::Response) -> BenchError {
    BenchError::Invoq {
        request: request.to_owned(),
        status: response.status().as_u16(),
        body: response.text().await.unwrap_or_default(),
    }
}
