//! In-memory destinations and a fault-injecting wrapper, for tests of everything that
//! delivers.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use async_trait::async_trait;

use crate::{Delivery, DeliveryError, Destination};

/// Keeps every delivery, in order.
#[derive(Default)]
pub struct MemoryDestinations {
    delivered: Mutex<Vec<Delivery>>,
}

impl MemoryDestinations {
    pub fn delivered(&self) -> Vec<Delivery> {
        self.delivered
            .lock()
            .expect("memory destinations poisoned")
            .clone()
    }
}

#[async_trait]
impl Destination for MemoryDestinations {
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError> {
        self.delivered
            .lock()
            .expect("memory destinations poisoned")
            .push(delivery.clone());
        Ok(())
    }
}

/// Wraps a destination and fails deliveries on demand: the next `n`, or all while down.
pub struct FaultInjecting {
    inner: Arc<dyn Destination>,
    fail_next: AtomicU32,
    down: AtomicBool,
}

impl FaultInjecting {
    pub fn new(inner: Arc<dyn Destination>) -> Self {
        FaultInjecting {
            inner,
            fail_next: AtomicU32::new(0),
            down: AtomicBool::new(false),
        }
    }

    pub fn fail_next(&self, deliveries: u32) {
        self.fail_next.store(deliveries, Ordering::SeqCst);
    }

    pub fn set_down(&self, down: bool) {
        self.down.store(down, Ordering::SeqCst);
    }
}

#[async_trait]
impl Destination for FaultInjecting {
    async fn deliver(&self, delivery: &Delivery) -> Result<(), DeliveryError> {
        let injected = self.down.load(Ordering::SeqCst)
            || self
                .fail_next
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| {
                    left.checked_sub(1)
                })
                .is_ok();
        if injected {
            return Err(DeliveryError::failed(
                &delivery.target_arn,
                "injected fault",
            ));
        }
        self.inner.deliver(delivery).await
    }
}
