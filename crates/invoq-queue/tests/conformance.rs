//! The conformance suite every queue backend passes: delay ordering, lease expiry and
//! redelivery, idempotent ack, atomic settle, statistics, long polling, depth limit, and
//! (for backends that persist) restart recovery.
//!
//! Backends: embedded on disk, in memory, behind the gRPC service, and SQS on the AWS
//! stand-in `INVOQ_AWS_STANDIN` names (moto or LocalStack, started per test). Durations are
//! multiples of each backend's time unit: SQS counts whole seconds. Where SQS is documented
//! as weaker (sqs.rs), the check depends on a [`Capabilities`] flag rather than being dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use invoq_proto::bearer::{GrpcToken, RequireToken};
use invoq_queue::grpc::{QueueGrpcClient, QueueGrpcServer};
use invoq_queue::{
    EmbeddedQueue, EmbeddedQueueOptions, EventQueue, PayloadBucket, PeekLimit, QueueError,
    QueueItem, SqsQueue, SqsQueueOptions,
};
use invoq_testkit::AwsStandIn;
use tonic::service::interceptor::InterceptedService;

const Q: &str = "work";
const OUT: &str = "done";
const NO_WAIT: Duration = Duration::ZERO;

fn item(id: &str) -> QueueItem {
    QueueItem {
        id: id.to_owned(),
        body: Bytes::from(format!("body of {id}")),
    }
}

fn ids(leases: &[invoq_queue::Lease]) -> Vec<&str> {
    leases.iter().map(|lease| lease.item.id.as_str()).collect()
}

/// What a backend guarantees beyond the common contract.
#[derive(Clone, Copy)]
struct Capabilities {
    /// A receipt from an expired lease, or from before an extension, is refused.
    refuses_stale_receipts: bool,
    /// `stats` knows the age of the oldest item.
    knows_oldest_age: bool,
    /// `peek` shows leased and delayed items too.
    peeks_everything: bool,
}

const FULL: Capabilities = Capabilities {
    refuses_stale_receipts: true,
    knows_oldest_age: true,
    peeks_everything: true,
};

struct Backend {
    name: &'static str,
    queue: Arc<dyn EventQueue>,
    /// The time unit: tests wait multiples of it.
    unit: Duration,
    can: Capabilities,
    _guards: (Option<tempfile::TempDir>, Option<AwsStandIn>),
}

impl Backend {
    fn units(&self, count: u32) -> Duration {
        self.unit * count
    }
}

/// Every backend, fresh: embedded on disk, in memory, behind the gRPC service (the client is
/// what services in other processes use), and SQS.
async fn backends(max_depth: u64) -> Vec<Backend> {
    let options = EmbeddedQueueOptions {
        max_depth,
        ..EmbeddedQueueOptions::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedQueue::open(&dir.path().join("queue.redb"), options.clone()).unwrap();
    let memory = EmbeddedQueue::in_memory(options.clone()).unwrap();
    let served: Arc<dyn EventQueue> = Arc::new(EmbeddedQueue::in_memory(options).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    // Served the way invoq serves it: behind the shared-token check.
    let token = GrpcToken::new("conformance-token").unwrap();
    let guarded = InterceptedService::new(
        QueueGrpcServer::new(served),
        RequireToken(Some(token.clone())),
    );
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(guarded)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let client = QueueGrpcClient::connect_lazy(&address, Some(token)).unwrap();
    let millis = Duration::from_millis(100);
    vec![
        Backend {
            name: "embedded",
            queue: Arc::new(embedded),
            unit: millis,
            can: FULL,
            _guards: (Some(dir), None),
        },
        Backend {
            name: "memory",
            queue: Arc::new(memory),
            unit: millis,
            can: FULL,
            _guards: (None, None),
        },
        Backend {
            name: "grpc",
            queue: Arc::new(client),
            unit: millis,
            can: FULL,
            _guards: (None, None),
        },
        sqs_backend(max_depth).await,
    ]
}

async fn sqs_backend(max_depth: u64) -> Backend {
    let stand_in = tokio::task::spawn_blocking(AwsStandIn::start)
        .await
        .unwrap();
    let client = aws_sdk_sqs::Client::new(&stand_in.sdk_config().await);
    let options = SqsQueueOptions {
        prefix: format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        max_depth,
        depth_refresh: Duration::ZERO,
        ..SqsQueueOptions::default()
    };
    Backend {
        name: "sqs",
        queue: Arc::new(SqsQueue::new(client, options).unwrap()),
        unit: Duration::from_secs(1),
        can: Capabilities {
            refuses_stale_receipts: false,
            knows_oldest_age: false,
            peeks_everything: false,
        },
        _guards: (None, Some(stand_in)),
    }
}

const LONG: Duration = Duration::from_secs(30);

#[tokio::test]
async fn delayed_items_become_visible_in_order() {
    for backend in backends(100).await {
        let (name, queue) = (backend.name, &backend.queue);
        queue
            .enqueue(Q, item("late"), backend.units(3))
            .await
            .unwrap();
        queue.enqueue(Q, item("first"), NO_WAIT).await.unwrap();
        queue.enqueue(Q, item("second"), NO_WAIT).await.unwrap();
        let now = queue.lease(Q, 10, LONG, NO_WAIT).await.unwrap();
        assert_eq!(ids(&now), ["first", "second"], "{name}");
        let not_yet = queue.lease(Q, 10, LONG, NO_WAIT).await.unwrap();
        assert!(not_yet.is_empty(), "{name}: {:?}", ids(&not_yet));
        let later = queue.lease(Q, 10, LONG, backend.units(30)).await.unwrap();
        assert_eq!(ids(&later), ["late"], "{name}");
        assert_eq!(later[0].item.body, Bytes::from("body of late"), "{name}");
    }
}

#[tokio::test]
async fn expired_leases_are_delivered_again() {
    for backend in backends(100).await {
        let (name, queue) = (backend.name, &backend.queue);
        queue.enqueue(Q, item("a"), NO_WAIT).await.unwrap();
        let first = queue.lease(Q, 1, backend.units(1), NO_WAIT).await.unwrap();
        assert_eq!(first[0].receive_count, 1, "{name}");
        let hidden = queue.lease(Q, 1, backend.units(1), NO_WAIT).await.unwrap();
        assert!(hidden.is_empty(), "{name}: leased items are invisible");
        let again = queue.lease(Q, 1, LONG, backend.units(30)).await.unwrap();
        assert_eq!(ids(&again), ["a"], "{name}");
        assert_eq!(again[0].receive_count, 2, "{name}");
        assert_ne!(again[0].receipt, first[0].receipt, "{name}");
        if backend.can.refuses_stale_receipts {
            // The first holder lost its lease: it can settle nothing.
            let lost = queue
                .settle_and_enqueue(&first[0], OUT, item("x"), NO_WAIT)
                .await;
            assert!(
                matches!(lost, Err(QueueError::LeaseLost { .. })),
                "{name}: {lost:?}"
            );
            assert_eq!(
                queue.stats(OUT).await.unwrap().depth,
                0,
                "{name}: nothing handed off"
            );
        }
    }
}

#[tokio::test]
async fn ack_is_idempotent_and_nack_delays() {
    for backend in backends(100).await {
        let (name, queue) = (backend.name, &backend.queue);
        queue.enqueue(Q, item("a"), NO_WAIT).await.unwrap();
        queue.enqueue(Q, item("b"), NO_WAIT).await.unwrap();
        let leases = queue.lease(Q, 2, LONG, NO_WAIT).await.unwrap();
        assert_eq!(ids(&leases), ["a", "b"], "{name}");
        queue.ack(&leases[0]).await.unwrap();
        queue
            .ack(&leases[0])
            .await
            .expect("second ack of the same lease");
        queue.nack(&leases[1], backend.units(2)).await.unwrap();
        assert!(
            queue.lease(Q, 2, LONG, NO_WAIT).await.unwrap().is_empty(),
            "{name}"
        );
        let again = queue.lease(Q, 2, LONG, backend.units(30)).await.unwrap();
        assert_eq!(ids(&again), ["b"], "{name}");
        assert_eq!(again[0].receive_count, 2, "{name}");
    }
}

#[tokio::test]
async fn settle_and_enqueue_moves_an_item_atomically() {
    for backend in backends(100).await {
        let (name, queue) = (backend.name, &backend.queue);
        queue.enqueue(Q, item("a"), NO_WAIT).await.unwrap();
        let lease = queue.lease(Q, 1, LONG, NO_WAIT).await.unwrap().remove(0);
        let enqueued_at_ms = lease.enqueued_at_ms;
        queue
            .settle_and_enqueue(&lease, OUT, item("a-outcome"), NO_WAIT)
            .await
            .unwrap();
        assert_eq!(queue.stats(Q).await.unwrap().depth, 0, "{name}");
        assert_eq!(queue.stats(OUT).await.unwrap().depth, 1, "{name}");
        let moved = queue.lease(OUT, 1, LONG, NO_WAIT).await.unwrap();
        assert_eq!(ids(&moved), ["a-outcome"], "{name}");
        assert!(moved[0].enqueued_at_ms >= enqueued_at_ms, "{name}");
        // Settling the same lease again hands off nothing a second time.
        let twice = queue
            .settle_and_enqueue(&lease, OUT, item("dup"), NO_WAIT)
            .await;
        assert!(twice.is_err(), "{name}");
        assert_eq!(queue.stats(OUT).await.unwrap().depth, 1, "{name}");
    }
}

#[tokio::test]
async fn extend_keeps_the_item_leased() {
    for backend in backends(100).await {
        let (name, queue) = (backend.name, &backend.queue);
        queue.enqueue(Q, item("a"), NO_WAIT).await.unwrap();
        let lease = queue
            .lease(Q, 1, backend.units(1), NO_WAIT)
            .await
            .unwrap()
            .remove(0);
        let extended = queue.extend(&lease, LONG).await.unwrap();
        let during = queue.lease(Q, 1, LONG, backend.units(3)).await.unwrap();
        assert!(
            during.is_empty(),
            "{name}: still leased past the first expiry"
        );
        if backend.can.refuses_stale_receipts {
            assert!(
                matches!(queue.ack(&lease).await, Err(QueueError::LeaseLost { .. })),
                "{name}: the receipt before the extension is retired"
            );
        }
        queue.ack(&extended).await.unwrap();
        assert_eq!(queue.stats(Q).await.unwrap().depth, 0, "{name}");
    }
}

#[tokio::test]
async fn stats_peek_and_depth_limit() {
    for backend in backends(2).await {
        let (name, queue) = (backend.name, &backend.queue);
        let empty = queue.stats(Q).await.unwrap();
        assert_eq!((empty.depth, empty.oldest_age), (0, None), "{name}");
        queue.enqueue(Q, item("a"), NO_WAIT).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        queue
            .enqueue(Q, item("b"), Duration::from_secs(60))
            .await
            .unwrap();
        let full = queue.enqueue(Q, item("c"), NO_WAIT).await;
        assert!(
            matches!(full, Err(QueueError::Full { depth: 2, .. })),
            "{name}: {full:?}"
        );
        let stats = queue.stats(Q).await.unwrap();
        assert_eq!(stats.depth, 2, "{name}");
        if backend.can.knows_oldest_age {
            assert!(
                stats.oldest_age.unwrap() >= Duration::from_millis(20),
                "{name}"
            );
        }
        let peeked: Vec<String> = queue
            .peek(Q, PeekLimit::items(10))
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        if backend.can.peeks_everything {
            assert_eq!(
                peeked,
                ["a", "b"],
                "{name}: delayed items too, oldest first"
            );
        } else {
            assert_eq!(peeked.first().map(String::as_str), Some("a"), "{name}");
        }
        // Work in flight always moves on, past the limit.
        let lease = queue.lease(Q, 1, LONG, NO_WAIT).await.unwrap().remove(0);
        assert_eq!(lease.item.id, "a", "{name}");
        queue
            .settle_and_enqueue(&lease, Q, item("a-retry"), NO_WAIT)
            .await
            .unwrap();
        assert_eq!(queue.stats(Q).await.unwrap().depth, 2, "{name}");
    }
}

#[tokio::test]
async fn the_grpc_queue_refuses_calls_without_the_token() {
    let served: Arc<dyn EventQueue> =
        Arc::new(EmbeddedQueue::in_memory(EmbeddedQueueOptions::default()).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    let token = GrpcToken::new("the-right-one").unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(InterceptedService::new(
                QueueGrpcServer::new(served),
                RequireToken(Some(token.clone())),
            ))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    for wrong in [None, Some(GrpcToken::new("a-wrong-one").unwrap())] {
        let client = QueueGrpcClient::connect_lazy(&address, wrong).unwrap();
        let refused = client.enqueue(Q, item("x"), NO_WAIT).await.unwrap_err();
        assert!(
            refused.to_string().contains("invoq gRPC token"),
            "{refused}"
        );
    }
    let client = QueueGrpcClient::connect_lazy(&address, Some(token)).unwrap();
    client.enqueue(Q, item("x"), NO_WAIT).await.unwrap();
    assert_eq!(
        client.stats(Q).await.unwrap().depth,
        1,
        "only the right token got in"
    );
}

/// A message SQS would refuse is refused before it is sent, with the sizes, so the frontend
/// can answer 413 and the worker can trim an outcome; one just under the limit (in a queue
/// invoq created with that MaximumMessageSize) goes through byte for byte.
#[tokio::test]
async fn sqs_refuses_items_over_its_message_size_before_sending() {
    let stand_in = tokio::task::spawn_blocking(AwsStandIn::start)
        .await
        .unwrap();
    let client = aws_sdk_sqs::Client::new(&stand_in.sdk_config().await);
    let options = SqsQueueOptions {
        prefix: format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        max_message_bytes: 4096,
        ..SqsQueueOptions::default()
    };
    let queue = SqsQueue::new(client, options).unwrap();
    let sized = |id: &str, size: usize| QueueItem {
        id: id.to_owned(),
        body: Bytes::from(vec![b'q'; size]),
    };
    match queue.enqueue(Q, sized("big", 5000), NO_WAIT).await {
        Err(QueueError::TooLarge { size, limit }) => {
            assert!(size > 5000, "the attributes count too: {size}");
            assert_eq!(limit, 4096);
        }
        other => panic!("expected TooLarge, got {other:?}"),
    }
    let fits = sized("fits", 4000);
    queue.enqueue(Q, fits.clone(), NO_WAIT).await.unwrap();
    let leases = queue
        .lease(Q, 10, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ids(&leases), ["fits"]);
    assert_eq!(leases[0].item.body, fits.body);
    // A settle that would hand over too large an item keeps the lease's item where it is.
    let refused = queue
        .settle_and_enqueue(&leases[0], OUT, sized("big", 5000), NO_WAIT)
        .await;
    assert!(
        matches!(refused, Err(QueueError::TooLarge { .. })),
        "{refused:?}"
    );
    assert_eq!(queue.stats(OUT).await.unwrap().depth, 0);
}

/// With a payload bucket, bodies too large for a message go to S3 (the extended-client
/// pattern): leases, hand-offs and peeks see the whole body, and the objects go with their
/// messages.
#[tokio::test]
async fn sqs_keeps_bodies_too_large_for_a_message_in_the_payload_bucket() {
    let stand_in = tokio::task::spawn_blocking(AwsStandIn::start)
        .await
        .unwrap();
    let config = stand_in.sdk_config().await;
    let s3 = aws_sdk_s3::Client::from_conf(
        aws_sdk_s3::config::Builder::from(&config)
            .force_path_style(true)
            .build(),
    );
    s3.create_bucket()
        .bucket("large-bodies")
        .send()
        .await
        .unwrap();
    let options = SqsQueueOptions {
        prefix: format!("t{}-", &uuid::Uuid::new_v4().simple().to_string()[..8]),
        max_message_bytes: 4096,
        ..SqsQueueOptions::default()
    };
    let queue = SqsQueue::new(aws_sdk_sqs::Client::new(&config), options)
        .unwrap()
        .with_payload_bucket(PayloadBucket::new(s3.clone(), "large-bodies"));
    let objects = || async {
        s3.list_objects_v2()
            .bucket("large-bodies")
            .send()
            .await
            .unwrap()
            .contents()
            .len()
    };
    let large = QueueItem {
        id: "large".into(),
        body: Bytes::from((0..20_000u32).map(|n| (n % 251) as u8).collect::<Vec<u8>>()),
    };
    let small = item("small");
    queue.enqueue(Q, large.clone(), NO_WAIT).await.unwrap();
    queue.enqueue(Q, small.clone(), NO_WAIT).await.unwrap();
    assert_eq!(objects().await, 1, "only the large body is an object");
    let peeked = queue.peek(Q, PeekLimit::items(10)).await.unwrap();
    assert!(peeked.contains(&large), "peek shows the whole body");

    let leases = queue
        .lease(Q, 10, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    let leased = |id: &str| leases.iter().find(|lease| lease.item.id == id).unwrap();
    assert_eq!(leased("large").item, large);
    assert_eq!(leased("small").item, small);
    let outcome = QueueItem {
        id: "large".into(),
        body: Bytes::from("o".repeat(9_000)),
    };
    queue
        .settle_and_enqueue(leased("large"), OUT, outcome.clone(), NO_WAIT)
        .await
        .unwrap();
    queue.ack(leased("small")).await.unwrap();
    let handed = queue
        .lease(OUT, 10, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(handed.len(), 1);
    assert_eq!(handed[0].item, outcome);
    assert_eq!(
        objects().await,
        1,
        "the event's object went with its message"
    );
    queue.ack(&handed[0]).await.unwrap();
    assert_eq!(objects().await, 0);

    // A message whose object is gone (its copy was settled) is dropped, not handed out, and
    // does not keep the others from being leased.
    queue
        .enqueue(
            Q,
            QueueItem {
                id: "orphan".into(),
                ..large.clone()
            },
            NO_WAIT,
        )
        .await
        .unwrap();
    queue.enqueue(Q, item("other"), NO_WAIT).await.unwrap();
    let listed = s3
        .list_objects_v2()
        .bucket("large-bodies")
        .send()
        .await
        .unwrap();
    for object in listed.contents() {
        s3.delete_object()
            .bucket("large-bodies")
            .key(object.key().unwrap())
            .send()
            .await
            .unwrap();
    }
    let leases = queue
        .lease(Q, 10, Duration::from_secs(30), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ids(&leases), ["other"]);
}

#[tokio::test]
async fn peeks_are_bounded_by_bytes_as_well_as_items() {
    for backend in backends(100).await {
        let (name, queue) = (backend.name, &backend.queue);
        for id in ["a", "b", "c", "d"] {
            let item = QueueItem {
                id: id.to_owned(),
                body: Bytes::from(vec![b'x'; 1000]),
            };
            queue.enqueue(Q, item, NO_WAIT).await.unwrap();
        }
        // Embedded items carry a few bytes of framing; 2,500 bytes hold two of them.
        let two = queue
            .peek(
                Q,
                PeekLimit {
                    items: 10,
                    bytes: 2500,
                },
            )
            .await
            .unwrap();
        assert!(two.len() <= 2, "{name}: {} items", two.len());
        let one = queue
            .peek(
                Q,
                PeekLimit {
                    items: 10,
                    bytes: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(one.len(), 1, "{name}: the first item always comes");
        if backend.can.peeks_everything {
            assert_eq!(two.len(), 2, "{name}");
            let three = queue.peek(Q, PeekLimit::items(3)).await.unwrap();
            assert_eq!(three.len(), 3, "{name}");
        }
    }
}

#[tokio::test]
async fn long_poll_wakes_on_enqueue_and_on_delay_expiry() {
    for backend in backends(100).await {
        let (name, queue) = (backend.name, &backend.queue);
        let producer = queue.clone();
        let pause = backend.units(1);
        tokio::spawn(async move {
            tokio::time::sleep(pause).await;
            producer.enqueue(Q, item("woken"), NO_WAIT).await.unwrap();
        });
        let started = std::time::Instant::now();
        let leases = queue.lease(Q, 1, LONG, backend.units(50)).await.unwrap();
        assert_eq!(ids(&leases), ["woken"], "{name}");
        assert!(
            started.elapsed() < backend.units(20),
            "{name}: woken by the enqueue"
        );
        // Settled, so that nothing else is in flight: LocalStack's FIFO queues (2026.3) put
        // in-flight messages back only in the order they were received, so a message hidden
        // for a short time waits behind one leased earlier for longer (sqs.rs).
        queue.ack(&leases[0]).await.unwrap();

        queue
            .enqueue(Q, item("delayed"), backend.units(2))
            .await
            .unwrap();
        let leases = queue.lease(Q, 1, LONG, backend.units(50)).await.unwrap();
        assert_eq!(ids(&leases), ["delayed"], "{name}");
        let empty = queue.lease(Q, 1, LONG, backend.units(1) / 2).await.unwrap();
        assert!(empty.is_empty(), "{name}");
    }
}

#[tokio::test]
async fn the_embedded_queue_recovers_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("queue.redb");
    {
        let queue = EmbeddedQueue::open(&path, EmbeddedQueueOptions::default()).unwrap();
        for id in ["settled", "leased", "waiting"] {
            queue.enqueue(Q, item(id), NO_WAIT).await.unwrap();
        }
        let leases = queue
            .lease(Q, 2, Duration::from_millis(300), NO_WAIT)
            .await
            .unwrap();
        assert_eq!(ids(&leases), ["settled", "leased"]);
        queue
            .settle_and_enqueue(&leases[0], OUT, item("outcome"), NO_WAIT)
            .await
            .unwrap();
    }
    let queue = EmbeddedQueue::open(&path, EmbeddedQueueOptions::default()).unwrap();
    assert_eq!(queue.stats(Q).await.unwrap().depth, 2);
    assert_eq!(queue.stats(OUT).await.unwrap().depth, 1);
    let visible = queue
        .lease(Q, 10, Duration::from_secs(30), NO_WAIT)
        .await
        .unwrap();
    assert!(
        ids(&visible).iter().all(|id| *id != "settled"),
        "{:?}",
        ids(&visible)
    );
    assert!(ids(&visible).contains(&"waiting"));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let redelivered = queue
        .lease(Q, 10, Duration::from_secs(30), NO_WAIT)
        .await
        .unwrap();
    let mut all: Vec<&str> = ids(&visible);
    all.extend(ids(&redelivered));
    all.sort();
    assert_eq!(
        all,
        ["leased", "waiting"],
        "the unsettled lease comes back, once"
    );
}
