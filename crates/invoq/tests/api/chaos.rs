//! The chaos run: `invoq serve` under open-loop Event load, SIGKILLed at random moments and
//! started again on the same data, for a bounded time. At the end every accepted request id
//! must have its one OnSuccess record; duplicate executions and duplicate records are
//! counted and reported (at least once allows them), and so is the time to recover.
//!
//! CI runs it short (`INVOQ_CHAOS_SECONDS`, 12 s by default); `cargo xtask chaos` runs it
//! for two minutes and prints the table.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_lambda::primitives::Blob;
use aws_sdk_lambda::types::{DestinationConfig, InvocationType, OnSuccess};

use crate::harness::{Invoq, client, create_builtin, data_dir};

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

/// Request id -> OnSuccess records seen in the file destination.
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

/// Request id -> attempts that ran, from the function's log.
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

fn start(data: &Path) -> Invoq {
    Invoq::serve_with(data, &[("INVOQ_TIME_SCALE", "0.01")])
}

#[tokio::test]
async fn sigkill_chaos_loses_no_accepted_event() {
    let seconds = env_number("INVOQ_CHAOS_SECONDS", 12);
    let rate = env_number("INVOQ_CHAOS_RATE", 100);
    let data = data_dir();
    let mut invoq = start(data.path());
    {
        let client = invoq.client();
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

    // The load follows invoq to whatever port it has after each restart.
    let endpoint = Arc::new(Mutex::new(invoq.http_url()));
    let accepted = Arc::new(Mutex::new(Vec::<String>::new()));
    let load_until = Instant::now() + Duration::from_secs(seconds);
    let load = {
        let (endpoint, accepted) = (endpoint.clone(), accepted.clone());
        tokio::spawn(async move {
            let period = Duration::from_micros(1_000_000 / rate.max(1));
            let mut ticker = tokio::time::interval(period);
            let mut sent = 0u64;
            while Instant::now() < load_until {
                ticker.tick().await;
                let url = endpoint.lock().unwrap().clone();
                let accepted = accepted.clone();
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
        invoq.kill();
        kills += 1;
        let restarted_at = Instant::now();
        let before = records(data.path()).len();
        invoq = start(data.path());
        *endpoint.lock().unwrap() = invoq.http_url();
        // Recovered: the first record written after the restart.
        let mut recovered = None;
        for _ in 0..100 {
            if records(data.path()).len() > before {
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
    let mut settled = records(data.path());
    for _ in 0..600 {
        if accepted.iter().all(|id| settled.contains_key(id)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = records(data.path());
    }
    let lost: Vec<&String> = accepted
        .iter()
        .filter(|id| !settled.contains_key(*id))
        .collect();
    let duplicate_records: usize = settled.values().map(|count| count - 1).sum();
    let runs = executions(data.path());
    let duplicate_executions: usize = accepted
        .iter()
        .map(|id| runs.get(id).copied().unwrap_or(0).saturating_sub(1))
        .sum();
    let recovered: Vec<f64> = recoveries
        .iter()
        .flatten()
        .map(Duration::as_secs_f64)
        .collect();
    let worst_recovery = recovered.iter().copied().fold(0.0, f64::max);
    eprintln!(
        "chaos (invoq serve, embedded queue, {seconds} s at {rate}/s): kills {kills}, accepted {}, \
         lost {}, duplicate executions {duplicate_executions}, duplicate records \
         {duplicate_records}, recovery (restart to first record) worst {worst_recovery:.2} s \
         over {} restarts ({} without a record within 2 s)",
        accepted.len(),
        lost.len(),
        recovered.len(),
        recoveries.len() - recovered.len(),
    );
    assert!(kills >= 1, "the run killed invoq at least once");
    assert!(!accepted.is_empty(), "invoq accepted events between kills");
    assert!(
        lost.is_empty(),
        "accepted events without an outcome: {lost:?}"
    );
}
