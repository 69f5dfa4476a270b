//! The consuming loop every queue consumer shares (the retry worker, the router): lease as
//! many items as there are free slots, handle each in its own task, and lease more as slots
//! free up. At most `concurrency` items are leased and in hand at once, so leases never wait
//! in memory for a slot while their visibility runs out.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::{EventQueue, Lease};

/// How long one lease call waits for work.
const LEASE_WAIT: Duration = Duration::from_secs(1);
/// Pause after the queue itself failed, before asking again.
const ERROR_PAUSE: Duration = Duration::from_secs(1);

/// Leases from `queue_name` for `visibility` and runs `handle` on every lease, with at most
/// `concurrency` in flight, until the process ends.
pub async fn consume<F, Fut>(
    queue: Arc<dyn EventQueue>,
    queue_name: &str,
    concurrency: usize,
    visibility: Duration,
    handle: F,
) where
    F: Fn(Lease) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let slots = Arc::new(Semaphore::new(concurrency.max(1)));
    let handle = Arc::new(handle);
    loop {
        let Ok(first) = slots.clone().acquire_owned().await else {
            return;
        };
        let mut permits = vec![first];
        while let Ok(permit) = slots.clone().try_acquire_owned() {
            permits.push(permit);
        }
        let leases = match queue
            .lease(queue_name, permits.len(), visibility, LEASE_WAIT)
            .await
        {
            Ok(leases) => leases,
            Err(error) => {
                tracing::error!(%error, queue = queue_name, "cannot lease");
                tokio::time::sleep(ERROR_PAUSE).await;
                continue;
            }
        };
        for (lease, permit) in leases.into_iter().zip(permits) {
            let handle = handle.clone();
            tokio::spawn(async move {
                handle(lease).await;
                drop(permit);
            });
        }
    }
}
