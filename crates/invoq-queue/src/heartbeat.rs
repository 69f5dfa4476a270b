//! Keeping a lease while its holder works on it. A consumer leases items for a short
//! visibility (seconds), so that a crashed consumer's items come back quickly; a
//! [`Heartbeat`] extends the lease to that visibility again every third of it for as long
//! as the work takes (a function up to 900 s, a cold start, a wait for a permit, a slow
//! destination). If the lease cannot be extended before it runs out, the heartbeat reports
//! it [lost](Heartbeat::lost): the holder must stop, and must not settle what it did.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::{EventQueue, Lease};

/// How long to wait before trying a failed extension again.
const RETRY_PAUSE: Duration = Duration::from_millis(500);

/// Runs `work` while a heartbeat keeps `lease`; the renewed lease and the work's result, or
/// `None` if the lease was lost first (the work is then dropped unfinished, and whatever it
/// did must not be settled).
pub async fn while_leased<T>(
    queue: Arc<dyn EventQueue>,
    lease: Lease,
    visibility: Duration,
    work: impl Future<Output = T>,
) -> Option<(Lease, T)> {
    let heartbeat = Heartbeat::start(queue, lease, visibility);
    let done = tokio::select! {
        done = work => Some(done),
        () = heartbeat.lost() => None,
    };
    let lease = heartbeat.stop().await?;
    Some((lease, done?))
}

/// A lease kept alive in the background until [`stop`](Heartbeat::stop).
pub struct Heartbeat {
    /// The newest lease; `None` once it was lost.
    current: Arc<Mutex<Option<Lease>>>,
    lost: watch::Receiver<bool>,
    task: JoinHandle<()>,
}

impl Heartbeat {
    /// Starts extending `lease` to `visibility` from now, every `visibility / 3`. The lease
    /// must have been granted (or last extended) for `visibility` just before this.
    pub fn start(queue: Arc<dyn EventQueue>, lease: Lease, visibility: Duration) -> Self {
        let current = Arc::new(Mutex::new(Some(lease)));
        let (lost_sender, lost) = watch::channel(false);
        let task = tokio::spawn(beat(queue, current.clone(), visibility, lost_sender));
        Heartbeat {
            current,
            lost,
            task,
        }
    }

    /// Completes once the lease is lost (never, while it is kept).
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        if lost.wait_for(|lost| *lost).await.is_err() {
            // The beat ended without losing the lease: it never will be.
            std::future::pending::<()>().await;
        }
    }

    /// Stops extending; the lease as it is now, or `None` if it was lost.
    pub async fn stop(self) -> Option<Lease> {
        self.task.abort();
        let _ = self.task.await;
        self.current.lock().expect("heartbeat poisoned").take()
    }
}

async fn beat(
    queue: Arc<dyn EventQueue>,
    current: Arc<Mutex<Option<Lease>>>,
    visibility: Duration,
    lost: watch::Sender<bool>,
) {
    let period = (visibility / 3).max(Duration::from_millis(100));
    // The lease holds until about here; an extension must land before.
    let mut expires = Instant::now() + visibility;
    loop {
        tokio::time::sleep(period).await;
        loop {
            let Some(lease) = current.lock().expect("heartbeat poisoned").clone() else {
                return;
            };
            let asked = Instant::now();
            match queue.extend(&lease, visibility).await {
                Ok(renewed) => {
                    *current.lock().expect("heartbeat poisoned") = Some(renewed);
                    expires = asked + visibility;
                    break;
                }
                // Someone else holds the item now, or the queue is down for longer than the
                // lease lasts: either way it is no longer ours.
                Err(error) if asked + RETRY_PAUSE >= expires => {
                    tracing::warn!(%error, id = %lease.item.id, "lease lost");
                    current.lock().expect("heartbeat poisoned").take();
                    let _ = lost.send(true);
                    return;
                }
                Err(error) => {
                    tracing::debug!(%error, id = %lease.item.id, "lease extension failed, retrying");
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::{EmbeddedQueue, EmbeddedQueueOptions, QueueItem};

    const Q: &str = "work";
    const VISIBILITY: Duration = Duration::from_millis(300);

    async fn leased() -> (Arc<dyn EventQueue>, Lease) {
        let queue: Arc<dyn EventQueue> =
            Arc::new(EmbeddedQueue::in_memory(EmbeddedQueueOptions::default()).unwrap());
        let item = QueueItem {
            id: "a".into(),
            body: Bytes::from_static(b"{}"),
        };
        queue.enqueue(Q, item, Duration::ZERO).await.unwrap();
        let mut leases = queue.lease(Q, 1, VISIBILITY, Duration::ZERO).await.unwrap();
        (queue, leases.remove(0))
    }

    #[tokio::test]
    async fn a_kept_lease_outlives_its_visibility() {
        let (queue, lease) = leased().await;
        let heartbeat = Heartbeat::start(queue.clone(), lease, VISIBILITY);
        tokio::time::sleep(VISIBILITY * 4).await;
        let others = queue.lease(Q, 1, VISIBILITY, Duration::ZERO).await.unwrap();
        assert!(
            others.is_empty(),
            "nobody else got the item while it was kept"
        );
        let lease = heartbeat.stop().await.expect("still ours");
        queue.ack(&lease).await.unwrap();
        assert_eq!(queue.stats(Q).await.unwrap().depth, 0);
    }

    #[tokio::test]
    async fn a_lease_taken_over_is_reported_lost() {
        let (queue, lease) = leased().await;
        let heartbeat = Heartbeat::start(queue.clone(), lease.clone(), VISIBILITY);
        // The item goes away behind the holder's back: the next extension fails.
        queue.ack(&lease).await.unwrap();
        tokio::time::timeout(VISIBILITY * 4, heartbeat.lost())
            .await
            .expect("reported lost");
        assert!(heartbeat.stop().await.is_none());
    }
}
