//! The chaos runs: a deployment under open-loop Event load, one of its processes SIGKILLed
//! at random moments and started again on the same ports and data, for a bounded time. At
//! the end every accepted request id must have its one OnSuccess record; duplicate
//! executions and duplicate records are counted and reported (at least once allows them),
//! and so is the time to recover.
//!
//! Four deployments: `invoq serve`, and the split services (runtime, queue, frontend, two
//! workers, router), each on the embedded queue and on SQS (the stand-in
//! `INVOQ_AWS_STANDIN` names). CI runs them short (`INVOQ_CHAOS_SECONDS`, 12 s by default);
//! `cargo xtask chaos` runs them for two minutes and prints the table.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{DestinationConfig, InvocationType, OnSuccess};

use crate::harness::{AwsStandIn, Invoq, client, create_builtin, data_dir};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Request id -> OnSuccess records seen in the file destination of the router's data.
fn records(data: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(data.join("destinations/sqs/chaos-results.jsonl"))
        .unwrap_or_default();
    let mut seen = HashMap::new();
    for line in text.lines() {
        // A line cut short by a kill mid-append is not a record.
        let Ok(record) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if let Some(id) = record["requestContext"]["requestId"].as_str() {
            *seen.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    seen
}

/// Request id -> attempts that ran, from the function's log in the runtime's data.
fn executions(data: &Path) -> HashMap<String, usize> {
    let text = std::fs::read_to_string(data.join("runtime/logs/echo.log")).unwrap_or_default();
    let mut runs = HashMap::new();
    for line in text.lines() {
        if let Some(id) = line
            .strip_prefix("START RequestId: ")
            .and_then(|rest| rest.split(' ').next())
        {
            *runs.entry(id.to_owned()).or_insert(0) += 1;
        }
    }
    runs
}

/// Pseudo-random kill pauses, the same every run (a small xorshift).
struct Pauses(u64);

impl Pauses {
    fn next(&mut self, min: Duration, max: Duration) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        let span = (max - min).as_millis() as u64;
        min + Duration::from_millis(self.0 % span.max(1))
    }
}

/// A loopback port free right now, for a service that must come back on the same address.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free port")
        .port()
}

/// One process of a deployment: how to start it again after a kill.
struct Service {
    role: &'static str,
    args: Vec<String>,
    data: tempfile::TempDir,
    process: Option<Invoq>,
}

impl Service {
    fn new(role: &'static str, args: Vec<String>) -> Self {
        Service {
            role,
            args,
            data: data_dir(),
            process: None,
        }
    }

    fn start(&mut self, env: &[(String, String)]) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        self.process = Some(Invoq::start(&args, self.data.path(), &env, 1));
    }

    fn kill(&mut self) {
        if let Some(process) = self.process.take() {
            process.kill();
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Shape {
    /// `invoq serve`: everything in one process.
    Serve,
    /// runtime, queue (embedded only), frontend, two workers and a router.
    Split,
}

/// A deployment on fixed loopback ports, so that any of its processes can be killed and
/// started again where the others expect it.
struct Deployment {
    services: Vec<Service>,
    env: Vec<(String, String)>,
    http_url: String,
    /// The services whose data holds the records (the router) and the function's log (the
    /// runtime).
    router: usize,
    runtime: usize,
    _aws: Option<AwsStandIn>,
}

impl Deployment {
    fn start(shape: Shape, on_sqs: bool) -> Self {
        let mut env = vec![("INVOQ_TIME_SCALE".to_owned(), "0.01".to_owned())];
        let aws = on_sqs.then(|| {
            let aws = AwsStandIn::start();
            env.extend(aws.env().into_iter().map(|(k, v)| (k.to_owned(), v)));
            env.push(("INVOQ_QUEUE".into(), "sqs".into()));
            env.push((
                "INVOQ_SQS_QUEUE_PREFIX".into(),
                format!("c{}{:?}-", std::process::id(), shape).to_lowercase(),
            ));
            aws
        });
        let addr = |port: u16| format!("127.0.0.1:{port}");
        let http = addr(free_port());
        let mut services = Vec::new();
        let (router, runtime) = match shape {
            Shape::Serve => {
                services.push(Service::new(
                    "serve",
                    vec!["serve".into(), "--http-addr".into(), http.clone()],
                ));
                (0, 0)
            }
            Shape::Split => {
                let grpc = |role: &'static str, extra: &[&str]| {
                    let mut args = vec![role.to_owned(), "--grpc-addr".into(), addr(free_port())];
                    args.extend(extra.iter().map(|arg| arg.to_string()));
                    Service::new(role, args)
                };
                let runtime = grpc("runtime", &[]);
                let runtime_addr = format!("http://{}", runtime.args[2]);
                services.push(runtime);
                if !on_sqs {
                    let queue = grpc("queue", &[]);
                    env.push((
                        "INVOQ_QUEUE_ADDR".into(),
                        format!("http://{}", queue.args[2]),
                    ));
                    services.push(queue);
                }
                let frontend = grpc(
                    "frontend",
                    &["--http-addr", &http, "--runtime-addr", &runtime_addr],
                );
                let registry_addr = format!("http://{}", frontend.args[2]);
                services.push(frontend);
                let consumer_args = [
                    "--registry-addr",
                    &registry_addr,
                    "--runtime-addr",
                    &runtime_addr,
                ];
                services.push(grpc("worker", &consumer_args));
                services.push(grpc("worker", &consumer_args));
                services.push(grpc("router", &consumer_args[..2]));
                (services.len() - 1, 0)
            }
        };
        for service in &mut services {
            service.start(&env);
        }
        Deployment {
            services,
            env,
            http_url: format!("http://{http}"),
            router,
            runtime,
            _aws: aws,
        }
    }

    fn records(&self) -> HashMap<String, usize> {
        records(self.services[self.router].data.path())
    }

    fn executions(&self) -> HashMap<String, usize> {
        executions(self.services[self.runtime].data.path())
    }
}

/// What one chaos run saw.
struct Report {
    kills: usize,
    accepted: usize,
    lost: Vec<String>,
    duplicate_executions: usize,
    duplicate_records: usize,
    worst_recovery: f64,
    restarts_without_record: usize,
}

async fn chaos(shape: Shape, on_sqs: bool) -> Report {
    let seconds = env_number("INVOQ_CHAOS_SECONDS", 12);
    // Each event is about ten SQS calls; a stand-in on a shared 2-core machine serves a few
    // hundred a second, so the SQS runs go slower unless told otherwise.
    let rate = if on_sqs {
        env_number("INVOQ_CHAOS_SQS_RATE", 20)
    } else {
        env_number("INVOQ_CHAOS_RATE", 100)
    };
    let mut deployment = Deployment::start(shape, on_sqs);
    {
        let client = client(&deployment.http_url);
        create_builtin(&client, "echo", "echo").await;
        client
            .put_function_event_invoke_config()
            .function_name("echo")
            .maximum_retry_attempts(2)
            .destination_config(
                DestinationConfig::builder()
                    .on_success(
                        OnSuccess::builder()
                            .destination("arn:aws:sqs:us-east-1:000000000000:chaos-results")
                            .build(),
                    )
                    .build(),
            )
            .send()
            .await
            .unwrap();
    }

    let url = deployment.http_url.clone();
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let load_until = Instant::now() + Duration::from_secs(seconds);
    let load = {
        let accepted = accepted.clone();
        tokio::spawn(async move {
            let period = Duration::from_micros(1_000_000 / rate.max(1));
            let mut ticker = tokio::time::interval(period);
            let mut sent = 0u64;
            while Instant::now() < load_until {
                ticker.tick().await;
                let (url, accepted) = (url.clone(), accepted.clone());
                sent += 1;
                tokio::spawn(async move {
                    let output = client(&url)
                        .invoke()
                        .function_name("echo")
                        .invocation_type(InvocationType::Event)
                        .payload(Blob::new(format!(r#"{{"chaos":{sent}}}"#)))
                        .send()
                        .await;
                    if let Ok(output) = output
                        && output.status_code() == 202
                        && let Some(id) = aws_sdk_lambda::operation::RequestId::request_id(&output)
                    {
                        accepted.lock().unwrap().push(id.to_owned());
                    }
                });
            }
        })
    };

    let mut pauses = Pauses(0x9E37_79B9_7F4A_7C15);
    let mut kills = 0;
    let mut recoveries = Vec::new();
    while Instant::now() + Duration::from_secs(2) < load_until {
        tokio::time::sleep(pauses.next(Duration::from_millis(700), Duration::from_millis(2500)))
            .await;
        let victim = pauses.0 as usize % deployment.services.len();
        let env = deployment.env.clone();
        let service = &mut deployment.services[victim];
        eprintln!("chaos: SIGKILL {}", service.role);
        service.kill();
        kills += 1;
        let restarted_at = Instant::now();
        let before = deployment.records().len();
        deployment.services[victim].start(&env);
        // Recovered: the first record written after the restart.
        let mut recovered = None;
        for _ in 0..100 {
            if deployment.records().len() > before {
                recovered = Some(restarted_at.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        recoveries.push(recovered);
    }
    load.await.unwrap();
    // Invokes in flight when the load stopped have answered by now.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let accepted = accepted.lock().unwrap().clone();
    let mut settled = deployment.records();
    for _ in 0..900 {
        if accepted.iter().all(|id| settled.contains_key(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = deployment.records();
    }
    let lost: Vec<String> = accepted
        .iter()
        .filter(|id| !settled.contains_key(*id))
        .cloned()
        .collect();
    let duplicate_records: usize = settled.values().map(|count| count - 1).sum();
    let runs = deployment.executions();
    let duplicate_executions: usize = accepted
        .iter()
        .map(|id| runs.get(id).copied().unwrap_or(0).saturating_sub(1))
        .sum();
    let recovered: Vec<f64> = recoveries
        .iter()
        .flatten()
        .map(Duration::as_secs_f64)
        .collect();
    let report = Report {
        kills,
        accepted: accepted.len(),
        lost,
        duplicate_executions,
        duplicate_records,
        worst_recovery: recovered.iter().copied().fold(0.0, f64::max),
        restarts_without_record: recoveries.len() - recovered.len(),
    };
    let backend = if on_sqs { "SQS" } else { "embedded queue" };
    eprintln!(
        "chaos ({shape:?}, {backend}, {seconds} s at {rate}/s): kills {}, accepted {}, lost {}, \
         duplicate executions {}, duplicate records {}, recovery (restart to first record) \
         worst {:.2} s ({} restarts without a record within 2 s)",
        report.kills,
        report.accepted,
        report.lost.len(),
        report.duplicate_executions,
        report.duplicate_records,
        report.worst_recovery,
        report.restarts_without_record,
    );
    report
}

fn check(report: &Report) {
    assert!(report.kills >= 1, "the run killed something at least once");
    assert!(report.accepted > 0, "invoq accepted events between kills");
    assert!(
        report.lost.is_empty(),
        "accepted events without an outcome: {:?}",
        report.lost
    );
}

#[tokio::test]
async fn sigkill_chaos_serve_embedded() {
    check(&chaos(Shape::Serve, false).await);
}

#[tokio::test]
async fn sigkill_chaos_split_embedded() {
    check(&chaos(Shape::Split, false).await);
}

#[tokio::test]
async fn sigkill_chaos_serve_sqs() {
    check(&chaos(Shape::Serve, true).await);
}

#[tokio::test]
async fn sigkill_chaos_split_sqs() {
    check(&chaos(Shape::Split, true).await);
}
