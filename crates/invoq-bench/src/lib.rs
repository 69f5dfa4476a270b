//! `invoq bench`: load tests of invoq's invoke paths, with the latency of every stage of every
//! event, lost and duplicated events counted, and a report people can look at.
//!
//! A run drives a running invoq (`--target`) or starts one (`invoq serve` as a child process,
//! so that its memory is measured apart from the bench's own bookkeeping) with the chosen queue
//! backend, the builtin functions and `file` destinations. Each accepted event is followed by
//! its request id: the 202 here, its attempts in invoq's timeline (TRACE events on the
//! `invoq::timeline` target, read from the child's JSON log), and its invocation record in the
//! destination file.
//!
//! - [`invoq`] starts and sets up the system under test, and the [`baseline`] server;
//! - [`load`] sends invokes, open loop at a fixed rate or closed loop as fast as possible;
//! - [`observe`] follows the destination files and the timeline;
//! - [`stats`] turns all of it into per-stage histograms and a time series;
//! - [`report`] prints the table and writes the JSON and HTML reports.

pub mod baseline;
pub mod invoq;
pub mod load;
pub mod observe;
pub mod report;
pub mod sign;
pub mod stats;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use crate::invoq::{Invoq, Setup, SpawnOptions};
use crate::load::{Load, Pace, Sent};
use crate::observe::Observer;
use crate::report::{Baseline, Report};
use crate::sign::Signer;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("HTTP: {0}")]
    Http(#[from] reqwest::Error),
    #[error("invoq answered {status} to {request}: {body}")]
    Invoq {
        request: String,
        status: u16,
        body: String,
    },
    #[error("{0}")]
    Setup(String),
}

impl BenchError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> BenchError {
        let context = context.into();
        move |source| BenchError::Io { context, source }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scenario {
    /// Event invokes, as fast as possible or at `--rate`: the 202 path.
    Accept,
    /// `--events` queued first (no worker running), then the time to run them all.
    Drain,
    /// Event invokes at `--rate` for `--duration`: end-to-end latency of each event.
    Steady,
    /// Like steady, with `--fail-share` of the events failing once and retried.
    Failures,
    /// RequestResponse invokes: the synchronous path.
    Sync,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Embedded,
    Memory,
    Sqs,
}

impl Backend {
    fn as_str(self) -> &'static str {
        match self {
            Backend::Embedded => "embedded",
            Backend::Memory => "memory",
            Backend::Sqs => "sqs",
        }
    }
}

#[derive(Clone, Debug, Args)]
pub struct BenchArgs {
    /// What to measure.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// A running invoq's API (e.g. http://127.0.0.1:9000); by default one is started.
    #[arg(long)]
    pub target: Option<String>,
    /// With --target: its `<data-dir>/destinations` directory (file destinations), to follow
    /// events past the 202. Without it only the accept stage is measured.
    #[arg(long, requires = "target")]
    pub records: Option<PathBuf>,
    /// Queue backend of the invoq started here (sqs uses the usual AWS_* environment).
    #[arg(long = "queue", value_enum, default_value = "embedded")]
    pub backend: Backend,
    /// Seconds of load (accept, steady, failures, sync).
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Invokes per second, open loop (latency counts from each invoke's intended send time).
    /// Without it, accept and sync run closed loop, as fast as `--connections` allow.
    #[arg(long)]
    pub rate: Option<u32>,
    /// Connections for closed-loop load.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Events queued before the drain starts.
    #[arg(long, default_value_t = 100_000)]
    pub events: u64,
    /// Share of events that fail their first attempt (failures).
    #[arg(long, default_value_t = 0.1)]
    pub fail_share: f64,
    /// A deployment package to run instead of the builtin handler: a zip with a
    /// `bootstrap` (as `provided.al2023`), or a managed runtime's code with `--runtime`
    /// and `--handler`. Measures a real runtime behind the Runtime API.
    #[arg(long)]
    pub code_zip: Option<PathBuf>,
    /// The `Runtime` of the `--code-zip` function, e.g. python3.11 or nodejs20.x.
    #[arg(long, requires = "code_zip", default_value = "provided.al2023")]
    pub runtime: String,
    /// The `Handler` of the `--code-zip` function, e.g. app.handler.
    #[arg(long, requires = "code_zip")]
    pub handler: Option<String>,
    /// Sync: run every invoke on a fresh process (a configuration update before each, not
    /// timed), one at a time: cold-start latency.
    #[arg(long)]
    pub cold: bool,
    /// Bytes of padding in each event's payload.
    #[arg(long, default_value_t = 64)]
    pub payload_bytes: usize,
    /// Seconds to wait, after the load, for every accepted event's record.
    #[arg(long, default_value_t = 120.0)]
    pub settle_timeout: f64,
    /// Skip the bare-202 baseline of the accept scenario.
    #[arg(long)]
    pub no_baseline: bool,
    /// Accept: start invoq with no worker, so that only the 202 path runs (events stay
    /// queued and are not followed), as the bare-202 baseline does.
    #[arg(long, conflicts_with = "target")]
    pub no_workers: bool,
    /// Sign every request with SigV4 (the key in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
    /// test/test without them); an invoq started here then authenticates with that key.
    #[arg(long)]
    pub sign: bool,
    /// Where the JSON and HTML reports go.
    #[arg(long, default_value = "target/bench")]
    pub out: PathBuf,
    /// No progress bar (for logs and CI).
    #[arg(long)]
    pub quiet: bool,
}

/// Runs one scenario and writes its reports; answers the report.
pub async fn run(args: BenchArgs) -> Result<Report, BenchError> {
    if !(0.0..=1.0).contains(&args.fail_share) {
        return Err(BenchError::Setup(
            "--fail-share must be between 0 and 1".into(),
        ));
    }
    let report = match args.scenario {
        Scenario::Drain => drain(&args).await?,
        _ => timed(&args).await?,
    };
    report.print();
    let (json, html) = report.write(&args.out)?;
    println!("reports: {} and {}", json.display(), html.display());
    Ok(report)
}

/// The `--code-zip` package, if any, with the runtime and handler it runs on.
fn code(args: &BenchArgs) -> Result<Option<invoq::Code>, BenchError> {
    let Some(path) = &args.code_zip else {
        return Ok(None);
    };
    Ok(Some(invoq::Code {
        zip: std::fs::read(path).map_err(BenchError::io("reading --code-zip"))?,
        runtime: args.runtime.clone(),
        handler: args.handler.clone(),
    }))
}

/// The scenarios that put load for `--duration`: accept, steady, failures and sync.
async fn timed(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.cold && args.scenario != Scenario::Sync {
        return Err(BenchError::Setup("--cold is for the sync scenario".into()));
    }
    if args.no_workers && args.scenario != Scenario::Accept {
        return Err(BenchError::Setup(
            "--no-workers is for the accept scenario; the others follow events to their end".into(),
        ));
    }
    let follow = args.scenario != Scenario::Sync && !args.no_workers;
    let signer = args.sign.then(Signer::from_env);
    let mut invoq = match &args.target {
        Some(url) => Invoq::remote(url, args.records.clone()),
        None => {
            let options = SpawnOptions {
                backend: args.backend,
                timeline: follow,
                time_scale: (args.scenario == Scenario::Failures).then_some(0.001),
                workers: !args.no_workers,
                access_keys: signer.as_ref().map(Signer::access_keys),
            };
            Invoq::spawn(&options, None).await?
        }
    };
    invoq.set_signer(signer.clone());
    let setup = Setup::for_scenario(args.scenario);
    invoq.prepare(&setup, code(args)?.as_ref()).await?;
    let pace = match (args.rate, args.scenario) {
        // Each cold invoke retires the process the one before it used.
        _ if args.cold => Pace::Closed { connections: 1 },
        (Some(rate), _) => Pace::Open { rate },
        (None, Scenario::Steady | Scenario::Failures) => Pace::Open { rate: 1_000 },
        (None, _) => Pace::Closed {
            connections: args.connections,
        },
    };
    let expected = match pace {
        Pace::Open { rate } => (f64::from(rate) * args.duration) as usize,
        Pace::Closed { .. } => 0,
    };
    let observer = follow
        .then(|| {
            invoq
                .records()
                .map(|records| Observer::start(records, invoq.log(), expected))
        })
        .flatten();
    let load = Load {
        url: invoq.url().to_owned(),
        function: setup.function.to_owned(),
        asynchronous: args.scenario != Scenario::Sync,
        pace,
        duration: Duration::from_secs_f64(args.duration),
        limit: None,
        payload_bytes: args.payload_bytes,
        fail_share: if args.scenario == Scenario::Failures {
            args.fail_share
        } else {
            0.0
        },
        signer,
        cold: args.cold,
    };
    let progress = Progress::new(args, "load", observer.as_ref());
    let sent = load.run(&progress.sent).await?;
    progress.finish();
    let rss = invoq.memory();
    let delivered = match &observer {
        Some(observer) => Some(settle(args, observer, &sent, "delivery").await),
        None => None,
    };
    let baseline = if args.scenario == Scenario::Accept && !args.no_baseline {
        Some(baseline(args, &load).await?)
    } else {
        None
    };
    invoq.stop().await;
    Ok(Report::build(
        args,
        invoq.describe(),
        &sent,
        delivered.as_ref(),
        None,
        rss,
        baseline,
    ))
}

/// Queues `--events` with no worker running, then starts invoq again with workers and times
/// how long they take to run everything.
async fn drain(args: &BenchArgs) -> Result<Report, BenchError> {
    if args.target.is_some() {
        return Err(BenchError::Setup(
            "drain starts its own invoq (it restarts it with workers); leave out --target".into(),
        ));
    }
    if args.backend == Backend::Memory {
        return Err(BenchError::Setup(
            "drain restarts invoq between queueing and running, and the memory queue does not \
             survive a restart; use --queue embedded or --queue sqs"
                .into(),
        ));
    }
    if args.sign {
        return Err(BenchError::Setup(
            "--sign is for the timed scenarios (accept, steady, failures, sync)".into(),
        ));
    }
    let mut options = SpawnOptions {
        backend: args.backend,
        timeline: false,
        time_scale: None,
        workers: false,
        access_keys: None,
    };
    let mut queueing = Invoq::spawn(&options, None).await?;
    let setup = Setup::for_scenario(Scenario::Drain);
    queueing.prepare(&setup, code(args)?.as_ref()).await?;
    let load = Load {
        url: queueing.url().to_owned(),
        function: setup.function.to_owned(),
        asynchronous: true,
        pace: Pace::Closed {
            connections: args.connections,
        },
        duration: Duration::from_secs(24 * 3600),
        limit: Some(args.events),
        payload_bytes: args.payload_bytes,
        fail_share: 0.0,
        signer: None,
        cold: false,
    };
    let progress = Progress::new(args, "queue", None);
    let sent = load.run(&progress.sent).await?;
    progress.finish();
    let rss_queued = queueing.memory();
    let data_dir = queueing.stop().await;

    options.workers = true;
    options.timeline = true;
    let started = Instant::now();
    let mut running = Invoq::spawn(&options, data_dir).await?;
    let records = running
        .records()
        .ok_or_else(|| BenchError::Setup("the started invoq has no records".into()))?;
    let observer = Observer::start(records, running.log(), sent.len());
    let progress = Progress::new(args, "drain", Some(&observer));
    let delivered = settle(args, &observer, &sent, "drain").await;
    progress.finish();
    let drain_time = delivered
        .last_observed
        .map(|last| last.saturating_duration_since(started))
        .unwrap_or_default();
    let rss_running = running.memory();
    running.stop().await;
    let mut report = Report::build(
        args,
        running.describe(),
        &sent,
        Some(&delivered),
        Some(drain_time),
        rss_queued,
        None,
    );
    report.rss_mb_while_draining = rss_running.map(|(rss, _)| rss);
    Ok(report)
}

/// Waits until every accepted event has a record (or `--settle-timeout`), then a little more
/// so that late duplicates are counted too; answers everything observed.
async fn settle(
    args: &BenchArgs,
    observer: &Observer,
    sent: &[Sent],
    what: &str,
) -> observe::Observed {
    let mut waiting: Vec<&str> = sent
        .iter()
        .filter_map(|s| s.request_id.as_deref())
        .collect();
    let deadline = Instant::now() + Duration::from_secs_f64(args.settle_timeout);
    while Instant::now() < deadline {
        observer.retain_missing(&mut waiting);
        if waiting.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if !waiting.is_empty() && !args.quiet {
        eprintln!(
            "{what}: {} accepted events had no record within --settle-timeout",
            waiting.len()
        );
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    observer.finish()
}

/// The same load against a bare HTTP server that answers 202 at once.
async fn baseline(args: &BenchArgs, load: &Load) -> Result<Baseline, BenchError> {
    let mut server = Invoq::spawn_baseline().await?;
    let load = Load {
        url: server.url().to_owned(),
        ..load.clone()
    };
    let progress = Progress::new(args, "baseline", None);
    let sent = load.run(&progress.sent).await?;
    progress.finish();
    server.stop().await;
    Ok(Baseline::from_sent(&sent))
}

/// The live progress bar: invokes sent, the rate, and records seen.
struct Progress {
    sent: load::Counter,
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn new(args: &BenchArgs, stage: &'static str, observer: Option<&Observer>) -> Progress {
        let sent = load::Counter::default();
        let bar = if args.quiet {
            ProgressBar::hidden()
        } else {
            ProgressBar::new_spinner()
        };
        bar.set_style(
            ProgressStyle::with_template("{spinner} {prefix:>8} [{elapsed_precise}] {msg}")
                .expect("a valid template"),
        );
        bar.set_prefix(stage);
        let delivered = observer.map(Observer::counter);
        let ticker = {
            let (bar, sent) = (bar.clone(), sent.clone());
            tokio::spawn(async move {
                let mut last = (Instant::now(), 0);
                loop {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    let now = (Instant::now(), sent.get());
                    let rate = (now.1 - last.1) as f64 / (now.0 - last.0).as_secs_f64();
                    let records = delivered
                        .as_ref()
                        .map(|d| format!(", {} records", d.get()))
                        .unwrap_or_default();
                    bar.set_message(format!("{} invokes, {rate:.0}/s{records}", now.1));
                    bar.tick();
                    last = now;
                }
            })
        };
        Progress { sent, bar, ticker }
    }

    fn finish(self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}
