//! A run's results: the per-stage latencies of the accepted events, throughput, lost and
//! duplicated events, memory, the baseline; printed as a table and written as JSON and as a
//! self-contained HTML page with SVG plots (latency over time, percentile distribution).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::load::Sent;
use crate::observe::Observed;
use crate::stats::{Latencies, Summary};
use crate::{BenchArgs, BenchError, Scenario};

#[derive(Debug, Serialize)]
pub struct Report {
    pub scenario: Scenario,
    pub target: String,
    pub machine: Machine,
    pub load: String,
    pub started_at: String,
    /// Seconds from the first intended send to the last answer.
    pub load_seconds: f64,
    pub invokes: u64,
    pub accepted: u64,
    /// Invokes answered with an error status (e.g. 429 when the queue is full).
    pub refused: u64,
    pub accepted_per_second: f64,
    pub stages: Vec<Stage>,
    /// Accepted events with a record in a destination (None: records not followed). `lost`
    /// are the others: no record within `--settle-timeout`.
    pub delivered: Option<u64>,
    pub lost: Option<u64>,
    /// Records beyond the first for the same request id.
    pub duplicates: Option<u64>,
    /// Events whose record went to OnFailure.
    pub failed: Option<u64>,
    /// Events that took more than one attempt.
    pub retried: Option<u64>,
    /// Accepted events run per second, end to end (drain: from the start of the workers).
    pub delivered_per_second: Option<f64>,
    pub drain_seconds: Option<f64>,
    /// Resident memory of the invoq under test at the end of the load (drain: with every
    /// event queued), and its peak.
    pub rss_mb: Option<f64>,
    pub peak_rss_mb: Option<f64>,
    pub rss_mb_while_draining: Option<f64>,
    pub baseline: Option<Baseline>,
    /// invoq's accepted/s over the bare server's.
    pub baseline_ratio: Option<f64>,
    pub series: Vec<Second>,
    pub percentiles: BTreeMap<String, Vec<(f64, f64)>>,
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu: String,
    pub memory_gb: f64,
}

#[derive(Debug, Serialize)]
pub struct Stage {
    pub name: &'static str,
    pub meaning: &'static str,
    #[serde(flatten)]
    pub summary: Summary,
}

/// One second of the run, by intended send time.
#[derive(Debug, Serialize)]
pub struct Second {
    pub second: u64,
    pub invokes: u64,
    pub accept_p50_ms: f64,
    pub accept_p99_ms: f64,
    pub end_to_end_p50_ms: Option<f64>,
    pub end_to_end_p99_ms: Option<f64>,
}

/// The bare 202 server under the same load.
#[derive(Debug, Serialize)]
pub struct Baseline {
    pub accepted_per_second: f64,
    pub accept: Summary,
}

impl Baseline {
    pub fn from_sent(sent: &[Sent]) -> Baseline {
        let mut accept = Latencies::default();
        for s in sent.iter().filter(|s| s.status < 300) {
            accept.record(s.latency_us);
        }
        Baseline {
            accepted_per_second: accept.len() as f64 / span_seconds(sent),
            accept: accept.summary(),
        }
    }
}

/// Seconds from the first intended send to the last answer.
fn span_seconds(sent: &[Sent]) -> f64 {
    let first = sent.iter().map(|s| s.intended_us).min().unwrap_or(0);
    let last = sent
        .iter()
        .map(|s| s.intended_us + s.latency_us)
        .max()
        .unwrap_or(0);
    ((last.saturating_sub(first)) as f64 / 1e6).max(1e-6)
}

#[derive(Default)]
struct StageLatencies {
    accept: Latencies,
    queue_wait: Latencies,
    execution: Latencies,
    delivery: Latencies,
    end_to_end: Latencies,
}

impl Report {
    pub fn build(
        args: &BenchArgs,
        target: String,
        sent: &[Sent],
        observed: Option<&Observed>,
        drain: Option<Duration>,
        rss: Option<(f64, f64)>,
        baseline: Option<Baseline>,
    ) -> Report {
        let accepted: Vec<&Sent> = sent.iter().filter(|s| s.request_id.is_some()).collect();
        let first_us = sent.iter().map(|s| s.intended_us).min().unwrap_or(0);
        let mut stages = StageLatencies::default();
        let mut seconds: BTreeMap<u64, (u64, Latencies, Latencies)> = BTreeMap::new();
        let (mut delivered, mut duplicates, mut failed, mut retried) = (0, 0, 0, 0);
        let mut last_observed_us = 0;
        for s in &accepted {
            let second = seconds
                .entry((s.intended_us - first_us) / 1_000_000)
                .or_default();
            second.0 += 1;
            second.1.record(s.latency_us);
            stages.accept.record(s.latency_us);
            let Some(observed) = observed else { continue };
            let id = s.request_id.as_deref().expect("accepted");
            let answered_us = s.intended_us + s.latency_us;
            let attempts = observed.attempts.get(id);
            if let Some(attempts) = attempts {
                if let Some(start) = attempts.iter().filter_map(|a| a.started_us).min() {
                    // The worker may start before the 202 has reached the client: that is 0.
                    stages.queue_wait.record(start.saturating_sub(answered_us));
                }
                for attempt in attempts {
                    if let (Some(start), Some(end)) = (attempt.started_us, attempt.ended_us) {
                        stages.execution.record(end.saturating_sub(start));
                    }
                }
            }
            let Some(deliveries) = observed.deliveries.get(id) else {
                continue;
            };
            delivered += 1;
            duplicates += deliveries.len() as u64 - 1;
            let first = deliveries
                .iter()
                .min_by_key(|d| d.observed_us)
                .expect("at least one");
            failed += u64::from(!first.success);
            retried += u64::from(first.invoke_count > 1);
            last_observed_us = last_observed_us.max(first.observed_us);
            let end_to_end = first.observed_us.saturating_sub(s.intended_us);
            stages.end_to_end.record(end_to_end);
            second.2.record(end_to_end);
            let last_end = attempts.and_then(|a| a.iter().filter_map(|a| a.ended_us).max());
            if let Some(end) = last_end {
                stages
                    .delivery
                    .record(first.observed_us.saturating_sub(end));
            }
        }
        let load_seconds = span_seconds(sent);
        let accepted_per_second = accepted.len() as f64 / load_seconds;
        let (accept_name, accept_meaning) = if args.scenario == Scenario::Sync {
            (
                "response",
                "invoke sent (intended) to the function's answer",
            )
        } else {
            ("accept", "invoke sent (intended) to the 202")
        };
        let mut percentiles = BTreeMap::new();
        let mut stage_list = Vec::new();
        for (name, meaning, latencies) in [
            (accept_name, accept_meaning, &stages.accept),
            (
                "queue wait",
                "202 to the first attempt's start",
                &stages.queue_wait,
            ),
            (
                "execution",
                "each attempt, start to end (worker to runtime and back)",
                &stages.execution,
            ),
            (
                "delivery",
                "last attempt's end to the record seen in the destination",
                &stages.delivery,
            ),
            (
                "end to end",
                "invoke sent (intended) to the record seen in the destination",
                &stages.end_to_end,
            ),
        ] {
            if latencies.is_empty() {
                continue;
            }
            percentiles.insert(name.to_owned(), latencies.percentile_curve());
            stage_list.push(Stage {
                name,
                meaning,
                summary: latencies.summary(),
            });
        }
        let follows = observed.is_some();
        let delivered_per_second = match (drain, follows) {
            (Some(drain), true) => Some(delivered as f64 / drain.as_secs_f64().max(1e-6)),
            (None, true) if last_observed_us > first_us => {
                Some(delivered as f64 / ((last_observed_us - first_us) as f64 / 1e6))
            }
            _ => None,
        };
        let series = seconds
            .into_iter()
            .map(|(second, (invokes, accept, end_to_end))| {
                let accept = accept.summary();
                let end_to_end = (!end_to_end.is_empty()).then(|| end_to_end.summary());
                Second {
                    second,
                    invokes,
                    accept_p50_ms: accept.p50_ms,
                    accept_p99_ms: accept.p99_ms,
                    end_to_end_p50_ms: end_to_end.as_ref().map(|s| s.p50_ms),
                    end_to_end_p99_ms: end_to_end.as_ref().map(|s| s.p99_ms),
                }
            })
            .collect();
        let baseline_ratio = baseline
            .as_ref()
            .map(|b| accepted_per_second / b.accepted_per_second);
        Report {
            scenario: args.scenario,
            target,
            machine: Machine::this(),
            load: describe_load(args),
            started_at: started_at(first_us),
            load_seconds,
            invokes: sent.len() as u64,
            accepted: accepted.len() as u64,
            refused: (sent.len() - accepted.len()) as u64,
            accepted_per_second,
            stages: stage_list,
            delivered: follows.then_some(delivered),
            lost: follows.then_some(accepted.len() as u64 - delivered),
            duplicates: follows.then_some(duplicates),
            failed: follows.then_some(failed),
            retried: follows.then_some(retried),
            delivered_per_second,
            drain_seconds: drain.map(|d| d.as_secs_f64()),
            rss_mb: rss.map(|(rss, _)| rss),
            peak_rss_mb: rss.map(|(_, peak)| peak),
            rss_mb_while_draining: None,
            baseline,
            baseline_ratio,
            series,
            percentiles,
        }
    }

    /// The table on the terminal.
    pub fn print(&self) {
        print!("{}", self.table());
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\ninvoq bench {:?}: {} ({})",
            self.scenario, self.target, self.load
        );
        let _ = writeln!(
            out,
            "machine: {} x {}, {:.1} GB",
            self.machine.cpus, self.machine.cpu, self.machine.memory_gb
        );
        let _ = writeln!(
            out,
            "{} invokes in {:.2} s: {} accepted ({:.0}/s), {} refused",
            self.invokes, self.load_seconds, self.accepted, self.accepted_per_second, self.refused
        );
        let _ = writeln!(
            out,
            "\n{:<12} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "stage (ms)", "count", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        for stage in &self.stages {
            let s = &stage.summary;
            let _ = writeln!(
                out,
                "{:<12} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                stage.name, s.count, s.p50_ms, s.p90_ms, s.p99_ms, s.p999_ms, s.max_ms, s.mean_ms
            );
        }
        out.push('\n');
        if let (Some(delivered), Some(lost), Some(duplicates)) =
            (self.delivered, self.lost, self.duplicates)
        {
            let _ = writeln!(
                out,
                "delivered {delivered}, lost {lost} (no record within --settle-timeout), \
                 duplicates {duplicates}, failed {}, retried {}",
                self.failed.unwrap_or(0),
                self.retried.unwrap_or(0)
            );
        }
        if let Some(rate) = self.delivered_per_second {
            let _ = writeln!(out, "delivered per second: {rate:.0}");
        }
        if let Some(drain) = self.drain_seconds {
            let _ = writeln!(out, "drain: {drain:.2} s");
        }
        if let (Some(rss), Some(peak)) = (self.rss_mb, self.peak_rss_mb) {
            let _ = writeln!(out, "invoq memory: {rss:.1} MB resident, {peak:.1} MB peak");
        }
        if let Some(rss) = self.rss_mb_while_draining {
            let _ = writeln!(out, "invoq memory after draining: {rss:.1} MB resident");
        }
        if let (Some(baseline), Some(ratio)) = (&self.baseline, self.baseline_ratio) {
            let _ = writeln!(
                out,
                "baseline (bare 202 server): {:.0}/s, p50 {:.2} ms, p99 {:.2} ms; invoq reaches {:.0}% of it",
                baseline.accepted_per_second,
                baseline.accept.p50_ms,
                baseline.accept.p99_ms,
                ratio * 100.0
            );
        }
        out
    }

    /// Writes `<scenario>.json` and `<scenario>.html` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(PathBuf, PathBuf), BenchError> {
        std::fs::create_dir_all(dir)
            .map_err(BenchError::io(format!("creating {}", dir.display())))?;
        let name = format!("{:?}", self.scenario).to_lowercase();
        let json_path = dir.join(format!("{name}.json"));
        let html_path = dir.join(format!("{name}.html"));
        let text = serde_json::to_string_pretty(self).expect("a report serializes");
        std::fs::write(&json_path, text)
            .map_err(BenchError::io(format!("writing {}", json_path.display())))?;
        std::fs::write(&html_path, html(self))
            .map_err(BenchError::io(format!("writing {}", html_path.display())))?;
        Ok((json_path, html_path))
    }
}

fn describe_load(args: &BenchArgs) -> String {
    let mut load = match (args.scenario, args.rate) {
        (Scenario::Drain, _) => format!(
            "{} events queued over {} connections, then drained",
            args.events, args.connections
        ),
        (_, Some(rate)) => format!("open loop, {rate}/s for {} s", args.duration),
        (Scenario::Steady | Scenario::Failures, None) => {
            format!("open loop, 1000/s for {} s", args.duration)
        }
        (_, None) => format!(
            "closed loop, {} connections for {} s",
            args.connections, args.duration
        ),
    };
    if args.no_workers {
        load.push_str(", no worker running");
    }
    load
}

fn started_at(unix_us: u64) -> String {
    time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(unix_us) * 1000)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}

impl Machine {
    fn this() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|rest| rest.trim_start_matches([' ', '\t', ':']).to_owned())
            .unwrap_or_else(|| "unknown CPU".into());
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let memory_gb = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kb| kb.parse::<f64>().ok())
            .map(|kb| kb / 1024.0 / 1024.0)
            .unwrap_or(0.0);
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
            memory_gb,
        }
    }
}

/// The HTML report: the table, and two SVG plots. No scripts, no external files.
pub fn html(report: &Report) -> String {
    let escape = |text: &str| {
        text.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
    };
    let over_time = time_plot(report);
    let distribution = percentile_plot(report);
    format!(
        r#"<!doctype html>
<html><head><meta charset="utf-8"><title>invoq bench {scenario:?}</title>
<style>body{{font-family:system-ui,sans-serif;margin:2em;color:#222}}pre{{background:#f6f6f6;padding:1em}}
svg{{background:#fff;border:1px solid #ddd;margin:0.5em 0}}</style></head>
<body><h1>invoq bench: {scenario:?}</h1>
<pre>{table}</pre>
<h2>Latency over time</h2>{over_time}
<h2>Latency by percentile</h2>{distribution}
</body></html>
"#,
        scenario = report.scenario,
        table = escape(&report.table()),
    )
}

const COLOURS: [&str; 5] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e"];

/// p50 and p99 per second of the accept stage and, when followed, of end to end.
fn time_plot(report: &Report) -> String {
    type Pick = fn(&Second) -> Option<f64>;
    let picks: [(&str, Pick); 4] = [
        ("accept p50", |s| Some(s.accept_p50_ms)),
        ("accept p99", |s| Some(s.accept_p99_ms)),
        ("end to end p50", |s| s.end_to_end_p50_ms),
        ("end to end p99", |s| s.end_to_end_p99_ms),
    ];
    let lines: Vec<(String, Vec<(f64, f64)>)> = picks
        .into_iter()
        .map(|(label, pick)| {
            let points: Vec<(f64, f64)> = report
                .series
                .iter()
                .filter_map(|s| pick(s).map(|v| (s.second as f64, v)))
                .collect();
            (label.to_owned(), points)
        })
        .filter(|(_, points)| !points.is_empty())
        .collect();
    let max_x = report
        .series
        .last()
        .map_or(1.0, |s| s.second as f64)
        .max(1.0);
    let x_ticks: Vec<(f64, String)> = ticks(max_x)
        .into_iter()
        .map(|x| (x, format!("{x:.0} s")))
        .collect();
    plot(&lines, (0.0, max_x), &x_ticks, "second of the run")
}

/// Each stage's latency by percentile, on a 1/(1-p) axis so that the tail is visible.
fn percentile_plot(report: &Report) -> String {
    // x = log10(1 / (1 - p)): 0 at p0, 1 at p90, 2 at p99, ..., 5 at p99.999; max at 5.5.
    let position = |p: f64| {
        if p >= 100.0 {
            5.5
        } else {
            (1.0 / (1.0 - p / 100.0)).log10().min(5.0)
        }
    };
    let lines: Vec<(String, Vec<(f64, f64)>)> = report
        .stages
        .iter()
        .filter_map(|stage| {
            let curve = report.percentiles.get(stage.name)?;
            Some((
                stage.name.to_owned(),
                curve.iter().map(|&(p, ms)| (position(p), ms)).collect(),
            ))
        })
        .collect();
    let x_ticks: Vec<(f64, String)> = [
        (0.0, "p0"),
        (1.0, "p90"),
        (2.0, "p99"),
        (3.0, "p99.9"),
        (4.0, "p99.99"),
        (5.0, "p99.999"),
        (5.5, "max"),
    ]
    .into_iter()
    .map(|(x, label)| (x, label.to_owned()))
    .collect();
    plot(&lines, (0.0, 5.5), &x_ticks, "percentile")
}

/// A line plot with a logarithmic millisecond axis.
fn plot(
    lines: &[(String, Vec<(f64, f64)>)],
    (min_x, max_x): (f64, f64),
    x_ticks: &[(f64, String)],
    x_label: &str,
) -> String {
    const WIDTH: f64 = 860.0;
    const HEIGHT: f64 = 360.0;
    const LEFT: f64 = 70.0;
    const RIGHT: f64 = 170.0;
    const TOP: f64 = 20.0;
    const BOTTOM: f64 = 50.0;
    let values = lines
        .iter()
        .flat_map(|(_, points)| points.iter().map(|p| p.1));
    let max_ms = values.clone().fold(0.001_f64, f64::max);
    let min_ms = values.fold(max_ms, f64::min).max(0.001);
    let (low, high) = (
        min_ms.log10().floor(),
        max_ms.log10().ceil().max(min_ms.log10().floor() + 1.0),
    );
    let x = |v: f64| LEFT + (v - min_x) / (max_x - min_x).max(1e-9) * (WIDTH - LEFT - RIGHT);
    let y = |ms: f64| {
        let v = ms.max(0.001).log10();
        TOP + (high - v) / (high - low) * (HEIGHT - TOP - BOTTOM)
    };
    let mut svg = format!(
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" font-size="12">"#
    );
    let mut decade = low;
    while decade <= high {
        let ms = 10f64.powf(decade);
        let label = if ms >= 1.0 {
            format!("{ms:.0} ms")
        } else {
            format!("{ms} ms")
        };
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{}" y1="{y0:.1}" y2="{y0:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{label}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            y(ms) + 4.0,
            y0 = y(ms),
        );
        decade += 1.0;
    }
    for (value, label) in x_ticks {
        let _ = write!(
            svg,
            r##"<line x1="{x0:.1}" x2="{x0:.1}" y1="{TOP}" y2="{}" stroke="#eee"/><text x="{x0:.1}" y="{}" text-anchor="middle">{label}</text>"##,
            HEIGHT - BOTTOM,
            HEIGHT - BOTTOM + 16.0,
            x0 = x(*value),
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">{x_label}</text>"#,
        (LEFT + WIDTH - RIGHT) / 2.0,
        HEIGHT - 10.0
    );
    for (index, (label, points)) in lines.iter().enumerate() {
        let colour = COLOURS[index % COLOURS.len()];
        let path: Vec<String> = points
            .iter()
            .map(|&(px, ms)| format!("{:.1},{:.1}", x(px), y(ms)))
            .collect();
        let _ = write!(
            svg,
            r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/><text x="{}" y="{}" fill="{colour}">{label}</text>"#,
            path.join(" "),
            WIDTH - RIGHT + 10.0,
            TOP + 16.0 * (index as f64 + 1.0),
        );
    }
    svg.push_str("</svg>");
    svg
}

/// About six round tick values from 0 to `max`.
fn ticks(max: f64) -> Vec<f64> {
    let step = [1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0]
        .into_iter()
        .find(|step| max / step <= 8.0)
        .unwrap_or(1200.0);
    (0..)
        .map(|i| i as f64 * step)
        .take_while(|&v| v <= max)
        .collect()
}
