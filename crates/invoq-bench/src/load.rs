//! Sending invokes. Open loop at a fixed rate: each invoke has an intended send time and its
//! latency counts from then, so a stalled server is not hidden by a stalled sender
//! (no coordinated omission). Closed loop: `connections` senders, each sending its next
//! invoke when the previous one is answered, as fast as the server allows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::BenchError;

/// At most this many open-loop invokes in flight; past it the sender waits (and the waiting
/// shows in the latencies, which count from the intended time).
const MAX_IN_FLIGHT: usize = 10_000;

#[derive(Clone, Copy, Debug)]
pub enum Pace {
    Open { rate: u32 },
    Closed { connections: usize },
}

#[derive(Clone, Debug)]
pub struct Load {
    pub url: String,
    pub function: String,
    /// Event (202) or RequestResponse (200) invokes.
    pub asynchronous: bool,
    pub pace: Pace,
    pub duration: Duration,
    /// Stop after this many invokes, whatever the duration.
    pub limit: Option<u64>,
    pub payload_bytes: usize,
    /// Share of events asking the flaky builtin to fail their first attempt.
    pub fail_share: f64,
    /// Signs every invoke (`--sign`).
    pub signer: Option<crate::sign::Signer>,
    /// Run every invoke on a fresh process (`--cold`): before each one, and outside its
    /// latency, a configuration update retires the warm ones.
    pub cold: bool,
}

/// One invoke: when it was meant to go, how long until it was answered, and the answer.
#[derive(Clone, Debug)]
pub struct Sent {
    /// Wall-clock microseconds of the intended send time.
    pub intended_us: u64,
    /// Microseconds from the intended send time to the answer.
    pub latency_us: u64,
    /// The request id of an accepted invoke; `None` when invoq refused it.
    pub request_id: Option<String>,
    pub status: u16,
}

/// Invokes sent so far, for the progress bar.
#[derive(Clone, Default)]
pub struct Counter(Arc<AtomicU64>);

impl Counter {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }

    pub(crate) fn add_one(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Wall-clock microseconds for an `Instant`, consistent within the run: the timeline of the
/// invoq under test and the records are wall-clock, so the stages line up across processes.
#[derive(Clone, Copy)]
struct Clock {
    instant: Instant,
    unix_us: u64,
}

impl Clock {
    fn now() -> Clock {
        Clock {
            instant: Instant::now(),
            unix_us: unix_us(),
        }
    }

    fn unix_us(&self, at: Instant) -> u64 {
        self.unix_us + at.saturating_duration_since(self.instant).as_micros() as u64
    }
}

pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

impl Load {
    /// Sends invokes for `duration` (or up to `limit`) and answers every one of them.
    pub async fn run(&self, counter: &Counter) -> Result<Vec<Sent>, BenchError> {
        let connections = match self.pace {
            Pace::Open { .. } => 256,
            Pace::Closed { connections } => connections,
        };
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(connections)
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(960))
            .build()?;
        let sender = Arc::new(Sender {
            client,
            signer: self.signer.clone(),
            url: format!(
                "{}/2015-03-31/functions/{}/invocations",
                self.url, self.function
            ),
            invocation_type: if self.asynchronous {
                "Event"
            } else {
                "RequestResponse"
            },
            padding: "x".repeat(self.payload_bytes),
            fail_share: self.fail_share,
            clock: Clock::now(),
            configuration_url: self.cold.then(|| {
                format!(
                    "{}/2015-03-31/functions/{}/configuration",
                    self.url, self.function
                )
            }),
        });
        // One warm-up invoke, so that connection setup and lazy queue creation are not
        // measured (not counted in the results).
        sender.send(0, Instant::now(), false).await?;
        let (results, mut collected) = mpsc::unbounded_channel();
        let started = Instant::now();
        let deadline = started + self.duration;
        let limit = self.limit.unwrap_or(u64::MAX);
        match self.pace {
            Pace::Open { rate } => {
                let slots = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
                let interval = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
                let mut index = 0u64;
                loop {
                    let intended = started + interval.mul_f64(index as f64);
                    if intended >= deadline || index >= limit {
                        break;
                    }
                    tokio::time::sleep_until(intended).await;
                    let slot = slots.clone().acquire_owned().await.expect("never closed");
                    let (sender, results, counter) =
                        (sender.clone(), results.clone(), counter.clone());
                    tokio::spawn(async move {
                        let sent = sender.send(index, intended, sender.fails(index)).await;
                        counter.add_one();
                        let _ = results.send(sent);
                        drop(slot);
                    });
                    index += 1;
                }
            }
            Pace::Closed { connections } => {
                let next = Arc::new(AtomicU64::new(0));
                for _ in 0..connections {
                    let (sender, results, counter, next) = (
                        sender.clone(),
                        results.clone(),
                        counter.clone(),
                        next.clone(),
                    );
                    tokio::spawn(async move {
                        loop {
                            let index = next.fetch_add(1, Ordering::Relaxed);
                            if Instant::now() >= deadline || index >= limit {
                                break;
                            }
                            if let Err(error) = sender.retire_warm_processes(index).await {
                                let _ = results.send(Err(error));
                                break;
                            }
                            let now = Instant::now();
                            let sent = sender.send(index, now, sender.fails(index)).await;
                            counter.add_one();
                            if results.send(sent).is_err() {
                                break;
                            }
                        }
                    });
                }
            }
        }
        drop(results);
        let mut all = Vec::new();
        while let Some(sent) = collected.recv().await {
            all.push(sent?);
        }
        Ok(all)
    }
}

struct Sender {
    client: reqwest::Client,
    signer: Option<crate::sign::Signer>,
    url: String,
    invocation_type: &'static str,
    padding: String,
    fail_share: f64,
    clock: Clock,
    /// Set with `--cold`: the function's configuration, updated before every invoke.
    configuration_url: Option<String>,
}

impl Sender {
    /// With `--cold`, gives the function a new revision (an environment variable changes)
    /// and waits until it is deployed: the runtime starts a fresh process for the next
    /// invoke, as Lambda does after an update.
    async fn retire_warm_processes(&self, index: u64) -> Result<(), BenchError> {
        let Some(url) = &self.configuration_url else {
            return Ok(());
        };
        let body = serde_json::json!({
            "Environment": {"Variables": {"INVOQ_BENCH_REVISION": index.to_string()}}
        });
        let update = self.client.put(url).json(&body).build()?;
        let response = self.execute_signed(update).await?;
        if !response.status().is_success() {
            return Err(BenchError::Setup(format!(
                "UpdateFunctionConfiguration answered {}",
                response.status()
            )));
        }
        for _ in 0..5_000 {
            let poll = self.execute_signed(self.client.get(url).build()?).await?;
            let configuration: serde_json::Value = poll.json().await?;
            if configuration["LastUpdateStatus"] == "Successful" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Err(BenchError::Setup(
            "the configuration update did not finish in 10 s".into(),
        ))
    }

    async fn execute_signed(
        &self,
        mut request: reqwest::Request,
    ) -> Result<reqwest::Response, BenchError> {
        if let Some(signer) = &self.signer {
            signer.sign(&mut request)?;
        }
        Ok(self.client.execute(request).await?)
    }

    /// Whether event `index` fails its first attempt: spread evenly, not at random, so that
    /// runs repeat.
    fn fails(&self, index: u64) -> bool {
        let share = self.fail_share;
        share > 0.0 && ((index + 1) as f64 * share).floor() > (index as f64 * share).floor()
    }

    async fn send(&self, index: u64, intended: Instant, fails: bool) -> Result<Sent, BenchError> {
        let body = format!(
            r#"{{"bench":{index},"fail_attempts":{},"pad":"{}"}}"#,
            u8::from(fails),
            self.padding
        );
        let request = self
            .client
            .post(&self.url)
            .header("X-Amz-Invocation-Type", self.invocation_type)
            .header("Content-Type", "application/json")
            .body(body)
            .build()?;
        let response = self.execute_signed(request).await?;
        let status = response.status();
        let request_id = status
            .is_success()
            .then(|| response.headers().get("x-amzn-RequestId"))
            .flatten()
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned);
        // The whole answer counts, body included (RequestResponse returns the function's).
        let _ = response.bytes().await?;
        let answered = Instant::now();
        Ok(Sent {
            intended_us: self.clock.unix_us(intended),
            latency_us: answered.saturating_duration_since(intended).as_micros() as u64,
            request_id,
            status: status.as_u16(),
        })
    }
}
