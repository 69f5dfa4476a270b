//! Following events past the 202: a thread tails the destination files (one invocation record
//! per line) and invoq's JSON log (the `invoq::timeline` lines: attempt started / ended), and
//! notes when each record was seen. Polling every millisecond keeps the observation within
//! about a millisecond of the write.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::invoq::{ON_FAILURE, ON_SUCCESS};
use crate::load::{Counter, unix_us};

const POLL: Duration = Duration::from_millis(1);

/// One invocation record seen in a destination.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub observed_us: u64,
    pub success: bool,
    pub invoke_count: u32,
}

/// One attempt, from invoq's timeline.
#[derive(Clone, Debug, Default)]
pub struct Attempt {
    pub number: u32,
    pub started_us: Option<u64>,
    pub ended_us: Option<u64>,
}

/// Everything seen, by request id.
#[derive(Debug, Default)]
pub struct Observed {
    pub deliveries: HashMap<String, Vec<Delivery>>,
    pub attempts: HashMap<String, Vec<Attempt>>,
    /// When the last record was seen.
    pub last_observed: Option<Instant>,
}

pub struct Observer {
    state: Arc<Mutex<Observed>>,
    records: Counter,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl Observer {
    /// Follows `<records>/sqs/invoq-bench-{success,failure}.jsonl` and, if given, the log.
    /// Room for `expected` events is made up front: growing the maps mid-run rehashes them
    /// all at once, a pause that shows up in the latencies of the invoq sharing the CPU.
    pub fn start(records: PathBuf, log: Option<PathBuf>, expected: usize) -> Observer {
        let state = Arc::new(Mutex::new(Observed {
            deliveries: HashMap::with_capacity(expected),
            attempts: HashMap::with_capacity(expected),
            last_observed: None,
        }));
        let counter = Counter::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut files: Vec<Tail> = [ON_SUCCESS, ON_FAILURE]
            .into_iter()
            .map(|queue| {
                Tail::new(
                    records.join("sqs").join(format!("{queue}.jsonl")),
                    Kind::Record,
                )
            })
            .collect();
        files.extend(log.map(|log| Tail::new(log, Kind::Timeline)));
        let thread = {
            let (state, counter, stop) = (state.clone(), counter.clone(), stop.clone());
            std::thread::spawn(move || {
                // One last pass after the stop, for what was written just before it.
                let mut last_pass = false;
                loop {
                    for file in &mut files {
                        file.poll(&state, &counter);
                    }
                    if last_pass {
                        return;
                    }
                    last_pass = stop.load(Ordering::Relaxed);
                    std::thread::sleep(POLL);
                }
            })
        };
        Observer {
            state,
            records: counter,
            stop,
            thread: Mutex::new(Some(thread)),
        }
    }

    /// Records seen so far (duplicates included).
    pub fn counter(&self) -> Counter {
        self.records.clone()
    }

    /// Keeps in `waiting` only the request ids with no record yet.
    pub fn retain_missing(&self, waiting: &mut Vec<&str>) {
        let state = self.state.lock().expect("observer poisoned");
        waiting.retain(|id| !state.deliveries.contains_key(*id));
    }

    /// Stops following and answers everything seen.
    pub fn finish(&self) -> Observed {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.lock().expect("observer poisoned").take() {
            let _ = thread.join();
        }
        std::mem::take(&mut *self.state.lock().expect("observer poisoned"))
    }
}

impl Drop for Observer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Record,
    Timeline,
}

/// A file read as it grows, line by line.
struct Tail {
    path: PathBuf,
    kind: Kind,
    file: Option<File>,
    partial: Vec<u8>,
}

impl Tail {
    fn new(path: PathBuf, kind: Kind) -> Tail {
        Tail {
            path,
            kind,
            file: None,
            partial: Vec::new(),
        }
    }

    fn poll(&mut self, state: &Mutex<Observed>, counter: &Counter) {
        if self.file.is_none() {
            self.file = File::open(&self.path).ok();
        }
        let Some(file) = self.file.as_mut() else {
            return;
        };
        let start = self.partial.len();
        if file.read_to_end(&mut self.partial).is_err() {
            self.file = None; // opened again on the next poll
            return;
        }
        if self.partial.len() == start {
            return;
        }
        let observed_us = unix_us();
        let complete = match self.partial.iter().rposition(|&b| b == b'\n') {
            Some(end) => end + 1,
            None => return,
        };
        let lines: Vec<u8> = self.partial.drain(..complete).collect();
        let mut state = state.lock().expect("observer poisoned");
        for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            match self.kind {
                Kind::Record => {
                    if let Some((id, delivery)) = record(line, observed_us) {
                        state.deliveries.entry(id).or_default().push(delivery);
                        state.last_observed = Some(Instant::now());
                        counter.add_one();
                    }
                }
                Kind::Timeline => timeline(line, &mut state.attempts),
            }
        }
    }
}

/// An invocation record: its request id, outcome and attempt count.
fn record(line: &[u8], observed_us: u64) -> Option<(String, Delivery)> {
    let record: Value = serde_json::from_slice(line).ok()?;
    let context = record.get("requestContext")?;
    let id = context.get("requestId")?.as_str()?.to_owned();
    Some((
        id,
        Delivery {
            observed_us,
            success: context.get("condition")?.as_str()? == "Success",
            invoke_count: context
                .get("approximateInvokeCount")
                .and_then(Value::as_u64)
                .unwrap_or(0) as u32,
        },
    ))
}

/// A line of invoq's JSON log; only `invoq::timeline` events count.
fn timeline(line: &[u8], attempts: &mut HashMap<String, Vec<Attempt>>) {
    if !line
        .windows(b"invoq::timeline".len())
        .any(|w| w == b"invoq::timeline")
    {
        return;
    }
    let Ok(event) = serde_json::from_slice::<Value>(line) else {
        return;
    };
    let (Some(id), Some(number), Some(at_us), Some(message)) = (
        event.get("request_id").and_then(Value::as_str),
        event.get("attempt").and_then(Value::as_u64),
        event.get("at_us").and_then(Value::as_u64),
        event.get("message").and_then(Value::as_str),
    ) else {
        return;
    };
    let list = attempts.entry(id.to_owned()).or_default();
    let number = number as u32;
    let attempt = match list.iter_mut().position(|a| a.number == number) {
        Some(index) => &mut list[index],
        None => {
            list.push(Attempt {
                number,
                ..Attempt::default()
            });
            list.last_mut().expect("just pushed")
        }
    };
    match message {
        "attempt started" => attempt.started_us = Some(at_us),
        "attempt ended" => attempt.ended_us = Some(at_us),
        _ => {}
    }
}
