//! Micro-benchmarks of the queue backends' operations: `cargo bench -p invoq-queue`.
//!
//! Each operation is measured alone and as a burst of 64 concurrent calls, since the
//! embedded backend commits concurrent calls together (group commit) and the difference is
//! what the worker and the frontend see under load. The embedded backend runs on a real file
//! (fsync included) and on redb's in-memory backend (the `memory` queue).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use invoq_queue::{EmbeddedQueue, EmbeddedQueueOptions, EventQueue, QueueItem};

const BURST: usize = 64;
const LEASE: Duration = Duration::from_secs(60);

fn item(n: u64) -> QueueItem {
    QueueItem {
        id: format!("00000000-0000-0000-0000-{n:012}"),
        body: Bytes::from(vec![b'x'; 300]),
    }
}

fn backends() -> Vec<(&'static str, Arc<dyn EventQueue>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let options = EmbeddedQueueOptions {
        max_depth: u64::MAX,
        ..EmbeddedQueueOptions::default()
    };
    let embedded = EmbeddedQueue::open(&dir.path().join("queue.redb"), options.clone())
        .expect("an embedded queue");
    let memory = EmbeddedQueue::in_memory(options).expect("a memory queue");
    vec![
        ("embedded", Arc::new(embedded), Some(dir)),
        ("memory", Arc::new(memory), None),
    ]
}

fn queue_operations(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    let mut group = c.benchmark_group("queue");
    group.measurement_time(Duration::from_secs(5));
    for (name, queue, _dir) in backends() {
        let counter = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let next = move || counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("enqueue", name), |b| {
            b.to_async(&runtime).iter(|| {
                let (queue, n) = (queue.clone(), next());
                async move {
                    queue
                        .enqueue("bench", item(n), Duration::ZERO)
                        .await
                        .unwrap()
                }
            })
        });

        group.throughput(Throughput::Elements(BURST as u64));
        group.bench_function(BenchmarkId::new("enqueue x64 concurrent", name), |b| {
            b.to_async(&runtime).iter(|| {
                let calls: Vec<_> = (0..BURST)
                    .map(|_| {
                        let (queue, n) = (queue.clone(), next());
                        tokio::spawn(async move {
                            queue
                                .enqueue("bench", item(n), Duration::ZERO)
                                .await
                                .unwrap()
                        })
                    })
                    .collect();
                async move {
                    for call in calls {
                        call.await.unwrap();
                    }
                }
            })
        });

        // Lease, then settle into another queue (the worker's hand-off), per item.
        group.throughput(Throughput::Elements(1));
        group.bench_function(BenchmarkId::new("lease + settle_and_enqueue", name), |b| {
            b.to_async(&runtime).iter(|| {
                let (queue, n) = (queue.clone(), next());
                async move {
                    queue
                        .enqueue("work", item(n), Duration::ZERO)
                        .await
                        .unwrap();
                    let leases = queue.lease("work", 1, LEASE, Duration::ZERO).await.unwrap();
                    for lease in leases {
                        queue
                            .settle_and_enqueue(&lease, "done", item(n), Duration::ZERO)
                            .await
                            .unwrap();
                    }
                }
            })
        });

        group.bench_function(BenchmarkId::new("lease + ack", name), |b| {
            b.to_async(&runtime).iter(|| {
                let (queue, n) = (queue.clone(), next());
                async move {
                    queue
                        .enqueue("acked", item(n), Duration::ZERO)
                        .await
                        .unwrap();
                    for lease in queue
                        .lease("acked", 1, LEASE, Duration::ZERO)
                        .await
                        .unwrap()
                    {
                        queue.ack(&lease).await.unwrap();
                    }
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, queue_operations);
criterion_main!(benches);
