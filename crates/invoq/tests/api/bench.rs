//! Smoke runs of every `invoq bench` scenario: a second or so of load each, against an invoq
//! the bench starts itself. No thresholds (figures belong to BENCHMARKS.md); what is checked
//! is that each scenario runs, follows every accepted event to its record, and writes its
//! reports.

use std::process::Command;

use serde_json::Value;

fn bench(scenario: &str, options: &[&str]) -> (Value, String) {
    let out = tempfile::tempdir().expect("a report directory");
    let output = Command::new(env!("CARGO_BIN_EXE_invoq"))
        .args(["bench", scenario, "--quiet", "--out"])
        .arg(out.path())
        .args(options)
        .env("RUST_LOG", "warn")
        .output()
        .expect("invoq bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "invoq bench {scenario} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json = std::fs::read_to_string(out.path().join(format!("{scenario}.json")))
        .expect("a JSON report");
    let html = std::fs::read_to_string(out.path().join(format!("{scenario}.html")))
        .expect("an HTML report");
    assert!(html.contains("<svg"), "the HTML report has its plots");
    (
        serde_json::from_str(&json).expect("valid JSON"),
        stdout.into_owned(),
    )
}

/// Every accepted event reached the destination once; the stages were all measured.
fn assert_followed(report: &Value, stages: &[&str]) {
    let accepted = report["accepted"].as_u64().unwrap();
    assert!(accepted > 0, "nothing accepted: {report}");
    assert_eq!(report["lost"], 0, "{report}");
    assert_eq!(report["delivered"].as_u64(), Some(accepted));
    assert_eq!(report["duplicates"], 0, "{report}");
    let measured: Vec<&str> = report["stages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|stage| stage["name"].as_str().unwrap())
        .collect();
    assert_eq!(measured, stages);
}

const ASYNC_STAGES: [&str; 5] = [
    "accept",
    "queue wait",
    "execution",
    "delivery",
    "end to end",
];

#[test]
fn accept_measures_the_202_path_and_the_baseline() {
    let (report, table) = bench("accept", &["--duration", "1", "--connections", "8"]);
    assert_followed(&report, &ASYNC_STAGES);
    assert!(report["baseline"]["accepted_per_second"].as_f64().unwrap() > 0.0);
    assert!(report["baseline_ratio"].as_f64().unwrap() > 0.0);
    assert!(table.contains("baseline (bare 202 server)"), "{table}");
}

#[test]
fn accept_without_workers_measures_the_202_path_alone() {
    let (report, _) = bench(
        "accept",
        &["--duration", "1", "--connections", "8", "--no-workers"],
    );
    assert!(report["accepted"].as_u64().unwrap() > 0);
    assert_eq!(report["stages"][0]["name"], "accept");
    assert_eq!(report["stages"].as_array().unwrap().len(), 1, "{report}");
    assert!(
        report["lost"].is_null(),
        "nothing runs the events, so nothing is followed"
    );
    assert!(report["baseline_ratio"].as_f64().unwrap() > 0.0);
    assert!(report["load"].as_str().unwrap().contains("no worker"));
}

#[test]
fn drain_queues_first_then_runs_everything() {
    let (report, _) = bench("drain", &["--events", "500", "--connections", "8"]);
    assert_followed(&report, &ASYNC_STAGES);
    assert_eq!(report["accepted"], 500);
    assert!(report["drain_seconds"].as_f64().unwrap() > 0.0);
    assert!(report["rss_mb"].as_f64().unwrap() > 0.0);
}

#[test]
fn steady_follows_each_event_end_to_end() {
    let (report, _) = bench("steady", &["--rate", "200", "--duration", "1"]);
    assert_followed(&report, &ASYNC_STAGES);
    assert_eq!(report["accepted"], 200);
}

#[test]
fn failures_retry_the_failing_share() {
    let (report, _) = bench(
        "failures",
        &["--rate", "100", "--duration", "1", "--fail-share", "0.2"],
    );
    assert_followed(&report, &ASYNC_STAGES);
    assert_eq!(
        report["retried"], 20,
        "every fifth event fails once: {report}"
    );
    assert_eq!(report["failed"], 0, "a retry succeeds: {report}");
}

#[test]
fn sync_measures_request_response() {
    let (report, _) = bench("sync", &["--duration", "1", "--connections", "4"]);
    assert!(report["accepted"].as_u64().unwrap() > 0);
    assert_eq!(report["stages"][0]["name"], "response");
    assert!(
        report["lost"].is_null(),
        "sync invokes have no records to follow"
    );
}

#[test]
fn drain_refuses_the_memory_queue_with_a_reason() {
    let output = Command::new(env!("CARGO_BIN_EXE_invoq"))
        .args(["bench", "drain", "--queue", "memory", "--quiet"])
        .output()
        .expect("invoq bench runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("does not survive a restart"), "{stderr}");
}
