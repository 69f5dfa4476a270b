//! The conformance suite every queue backend passes: delay ordering, lease expiry and
//! redelivery, idempotent ack, atomic settle, statistics, long polling, depth limit, and
//! (for backends that persist) restart recovery.

use std::time::Duration;

use bytes::Bytes;
use std::sync::Arc;

use invoq_queue::grpc::{QueueGrpcClient, QueueGrpcServer};
use invoq_queue::{EmbeddedQueue, EmbeddedQueueOptions, EventQueue, QueueError, QueueItem};

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

/// Every backend, fresh: embedded on disk, in memory, and behind the gRPC service (the
/// client is what services in other processes use). Temporary directories live as long as
/// the queue.
async fn backends(
    max_depth: u64,
) -> Vec<(&'static str, Box<dyn EventQueue>, Option<tempfile::TempDir>)> {
    let options = EmbeddedQueueOptions { max_depth };
    let dir = tempfile::tempdir().unwrap();
    let embedded = EmbeddedQueue::open(&dir.path().join("queue.redb"), options.clone()).unwrap();
    let memory = EmbeddedQueue::in_memory(options.clone()).unwrap();
    let served: Arc<dyn EventQueue> = Arc::new(EmbeddedQueue::in_memory(options).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(QueueGrpcServer::new(served))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let client = QueueGrpcClient::connect_lazy(&address).unwrap();
    vec![
        ("embedded", Box::new(embedded), Some(dir)),
        ("memory", Box::new(memory), None),
        ("grpc", Box::new(client), None),
    ]
}

#[tokio::test]
async fn delayed_items_become_visible_in_order() {
    for (name, queue, _dir) in backends(100).await {
        queue
            .enqueue(Q, item("late"), Duration::from_millis(300))
            .await
            .unwrap();
        queue.enqueue(Q, item("first"), NO_WAIT).await.unwrap();
        queue.enqueue(Q, item("second"), NO_WAIT).await.unwrap();
        let now = queue
            .lease(Q, 10, Duration::from_secs(30), NO_WAIT)
            .await
            .unwrap();
        assert_eq!(ids(&now), ["first", "second"], "{name}");
        tokio::time::sleep(Duration::from_millis(350)).await;
        let later = queue
            .lease(Q, 10, Duration::from_secs(30), NO_WAIT)
            .await
            .unwrap();
        assert_eq!(ids(&later), ["late"], "{name}");
        assert_eq!(later[0].item.body, Bytes::from("body of late"), "{name}");
    }
}

#[tokio::test]
async fn expired_leases_are_delivered_again() {
    for (name, queue, _dir) in backends(100).await {
        queue.enqueue(Q, item("a"), NO_WAIT).await.unwrap();
        let first = queue
            .lease(Q, 1, Duration::from_millis(100), NO_WAIT)
            .await
            .unwrap();
        assert_eq!(first[0].receive_count, 1, "{name}");
        let hidden = queue
            .lease(Q, 1, Duration::from_millis(100), NO_WAIT)
            .await
            .unwrap();
        assert!(hidden.is_empty(), "{name}: leased items are invisible");
        tokio::time::sleep(Duration::from_millis(150)).await;
        let again = queue
            .lease(Q, 1, Duration::from_secs(30), NO_WAIT)
            .await
            .unwrap();
        assert_eq!(ids(&again), ["a"], "{name}");
        assert_eq!(again[0].receive_count, 2, "{name}");
        assert_ne!(again[0].receipt, first[0].receipt, "{name}");
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

#[tokio::test]
async fn ack_is_idempotent_and_nack_delays() {
    for (name, queue, _dir) in backends(100).await {
        queue.enqueue(Q, item("a"), NO_WAIT).await.unwrap();
        queue.enqueue(Q, item("b"), NO_WAIT).await.unwrap();
        let leases = queue
            .lease(Q, 2, Duration::from_secs(30), NO_WAIT)
            .await
            .unwrap();
        queue.ack(&leases[0]).await.unwrap();
        queue
            .ack(&leases[0])
            .await
            .expect("second ack of the same lease");
        queue
            .nack(&leases[1], Duration::from_millis(200))
            .await
            .unwrap();
        assert!(
            queue
                .lease(Q, 2, Duration::from_secs(30), NO_WAIT)
                .await
                .unwrap()
                .is_empty()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        let again = queue
            .lease(Q, 2, Duration::from_secs(30), NO_WAIT)
            .await
            .unwrap();
        assert_eq!(ids(&again), ["b"], "{name}");
        assert_eq!(again[0].receive_count, 2, "{name}");
    }
}

#[tokio::test]
async fn settle_and_enqueue_moves_an_item_atomically() {
    for (name, queue, _dir) in backends(100).await {
        queue.enqueue(Q, item("a"), NO_WAIT).await.unwrap();
        let lease = queue
            .lease(Q, 1, Duration::from_secs(30), NO_WAIT)
            .await
            .unwrap()
            .remove(0);
        let enqueued_at_ms = lease.enqueued_at_ms;
        queue
            .settle_and_enqueue(&lease, OUT, item("a-outcome"), NO_WAIT)
            .await
            .unwrap();
        assert_eq!(queue.stats(Q).await.unwrap().depth, 0, "{name}");
        assert_eq!(queue.stats(OUT).await.unwrap().depth, 1, "{name}");
        let moved = queue
            .lease(OUT, 1, Duration::from_secs(30), NO_WAIT)
            .await
            .unwrap();
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
async fn extend_moves_the_lease_and_retires_the_old_receipt() {
    for (name, queue, _dir) in backends(100).await {
        queue.enqueue(Q, item("a"), NO_WAIT).await.unwrap();
        let lease = queue
            .lease(Q, 1, Duration::from_millis(100), NO_WAIT)
            .await
            .unwrap()
            .remove(0);
        let extended = queue.extend(&lease, Duration::from_secs(30)).await.unwrap();
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            queue
                .lease(Q, 1, Duration::from_secs(1), NO_WAIT)
                .await
                .unwrap()
                .is_empty(),
            "{name}"
        );
        assert!(
            matches!(queue.ack(&lease).await, Err(QueueError::LeaseLost { .. })),
            "{name}"
        );
        queue.ack(&extended).await.unwrap();
        assert_eq!(queue.stats(Q).await.unwrap().depth, 0, "{name}");
    }
}

#[tokio::test]
async fn stats_peek_and_depth_limit() {
    for (name, queue, _dir) in backends(2).await {
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
        assert!(
            stats.oldest_age.unwrap() >= Duration::from_millis(20),
            "{name}"
        );
        let peeked: Vec<String> = queue
            .peek(Q, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|i| i.id)
            .collect();
        assert_eq!(
            peeked,
            ["a", "b"],
            "{name}: peek shows delayed items too, oldest first"
        );
        // Work in flight always moves on, past the limit.
        let lease = queue
            .lease(Q, 1, Duration::from_secs(30), NO_WAIT)
            .await
            .unwrap()
            .remove(0);
        queue
            .settle_and_enqueue(&lease, Q, item("a-retry"), NO_WAIT)
            .await
            .unwrap();
        assert_eq!(queue.stats(Q).await.unwrap().depth, 2, "{name}");
    }
}

#[tokio::test]
async fn long_poll_wakes_on_enqueue_and_on_delay_expiry() {
    for (name, queue, _dir) in backends(100).await {
        let queue: Arc<dyn EventQueue> = Arc::from(queue);
        let producer = queue.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            producer.enqueue(Q, item("woken"), NO_WAIT).await.unwrap();
        });
        let started = std::time::Instant::now();
        let leases = queue
            .lease(Q, 1, Duration::from_secs(30), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ids(&leases), ["woken"], "{name}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{name}: woken by the enqueue"
        );

        queue
            .enqueue(Q, item("delayed"), Duration::from_millis(200))
            .await
            .unwrap();
        let leases = queue
            .lease(Q, 1, Duration::from_secs(30), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ids(&leases), ["delayed"], "{name}");
        let empty = queue
            .lease(Q, 1, Duration::from_secs(30), Duration::from_millis(50))
            .await
            .unwrap();
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
