//! The queue over gRPC: [`QueueGrpcServer`] serves any [`EventQueue`], and
//! [`QueueGrpcClient`] is an [`EventQueue`] that calls one. Wire types stop here.

use invoq_proto::bearer::{AddToken, GrpcToken};
use std::sync::Arc;
use std::time::Duration;
use tonic::service::interceptor::InterceptedService;

use async_trait::async_trait;
use bytes::Bytes;
use invoq_proto::error_kind::{kind_of, tagged_status};
use invoq_proto::v1 as pb;
use invoq_proto::v1::queue_client::QueueClient;
use invoq_proto::v1::queue_server::{Queue, QueueServer};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Response, Status};

use crate::{EventQueue, Lease, PeekLimit, QueueError, QueueItem, QueueStats};

/// Items carry event payloads of up to 1 MB, and a lease call returns several.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

pub struct QueueGrpcServer {
    queue: Arc<dyn EventQueue>,
}

impl QueueGrpcServer {
    pub fn new(queue: Arc<dyn EventQueue>) -> QueueServer<Self> {
        QueueServer::new(QueueGrpcServer { queue })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }
}

#[async_trait]
impl Queue for QueueGrpcServer {
    async fn enqueue(
        &self,
        request: Request<pb::EnqueueRequest>,
    ) -> Result<Response<pb::Done>, Status> {
        let request = request.into_inner();
        let item = item_from(request.item)?;
        self.queue
            .enqueue(&request.queue, item, millis(request.delay_ms))
            .await?;
        Ok(Response::new(pb::Done {}))
    }

    async fn lease(
        &self,
        request: Request<pb::LeaseRequest>,
    ) -> Result<Response<pb::LeaseResponse>, Status> {
        let request = request.into_inner();
        let leases = self
            .queue
            .lease(
                &request.queue,
                request.max as usize,
                millis(request.visibility_ms),
                millis(request.wait_ms),
            )
            .await?;
        Ok(Response::new(pb::LeaseResponse {
            leases: leases.into_iter().map(pb::Lease::from).collect(),
        }))
    }

    async fn extend(
        &self,
        request: Request<pb::ExtendRequest>,
    ) -> Result<Response<pb::ExtendResponse>, Status> {
        let request = request.into_inner();
        let lease = lease_from(request.lease)?;
        let lease = self
            .queue
            .extend(&lease, millis(request.visibility_ms))
            .await?;
        Ok(Response::new(pb::ExtendResponse {
            lease: Some(lease.into()),
        }))
    }

    async fn ack(&self, request: Request<pb::AckRequest>) -> Result<Response<pb::Done>, Status> {
        let lease = lease_from(request.into_inner().lease)?;
        self.queue.ack(&lease).await?;
        Ok(Response::new(pb::Done {}))
    }

    async fn nack(&self, request: Request<pb::NackRequest>) -> Result<Response<pb::Done>, Status> {
        let request = request.into_inner();
        let lease = lease_from(request.lease)?;
        self.queue.nack(&lease, millis(request.delay_ms)).await?;
        Ok(Response::new(pb::Done {}))
    }

    async fn settle_and_enqueue(
        &self,
        request: Request<pb::SettleAndEnqueueRequest>,
    ) -> Result<Response<pb::Done>, Status> {
        let request = request.into_inner();
        let lease = lease_from(request.lease)?;
        let item = item_from(request.item)?;
        self.queue
            .settle_and_enqueue(&lease, &request.target, item, millis(request.delay_ms))
            .await?;
        Ok(Response::new(pb::Done {}))
    }

    async fn stats(
        &self,
        request: Request<pb::StatsRequest>,
    ) -> Result<Response<pb::StatsResponse>, Status> {
        let stats = self.queue.stats(&request.into_inner().queue).await?;
        Ok(Response::new(pb::StatsResponse {
            depth: stats.depth,
            oldest_age_ms: stats.oldest_age.map(|age| age.as_millis() as u64),
        }))
    }

    async fn peek(
        &self,
        request: Request<pb::PeekRequest>,
    ) -> Result<Response<pb::PeekResponse>, Status> {
        let request = request.into_inner();
        let items = self
            .queue
            .peek(
                &request.queue,
                PeekLimit {
                    items: request.max as usize,
                    // 0: a client that sends no bound gets the default one.
                    bytes: match request.max_bytes {
                        0 => PeekLimit::DEFAULT_BYTES,
                        bytes => usize::try_from(bytes).unwrap_or(usize::MAX),
                    },
                },
            )
            .await?;
        Ok(Response::new(pb::PeekResponse {
            items: items.into_iter().map(pb::Item::from).collect(),
        }))
    }
}

/// An [`EventQueue`] served elsewhere.
#[derive(Clone)]
pub struct QueueGrpcClient {
    client: QueueClient<InterceptedService<Channel, AddToken>>,
}

impl QueueGrpcClient {
    /// A client for `address` (e.g. `http://127.0.0.1:9103`), sending `token` with every
    /// call; connects lazily.
    pub fn connect_lazy(address: &str, token: Option<GrpcToken>) -> Result<Self, QueueError> {
        let endpoint = Endpoint::from_shared(address.to_owned())
            .map_err(|error| QueueError::Storage(format!("bad queue address: {error}")))?
            .connect_timeout(Duration::from_secs(5))
            .tcp_nodelay(true);
        let client = QueueClient::with_interceptor(endpoint.connect_lazy(), AddToken(token))
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(QueueGrpcClient { client })
    }
}

#[async_trait]
impl EventQueue for QueueGrpcClient {
    async fn enqueue(
        &self,
        queue: &str,
        item: QueueItem,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let request = pb::EnqueueRequest {
            queue: queue.into(),
            item: Some(item.into()),
            delay_ms: ms(delay),
        };
        self.client.clone().enqueue(request).await?;
        Ok(())
    }

    async fn lease(
        &self,
        queue: &str,
        max: usize,
        visibility: Duration,
        wait: Duration,
    ) -> Result<Vec<Lease>, QueueError> {
        let request = pb::LeaseRequest {
            queue: queue.into(),
            max: u32::try_from(max).unwrap_or(u32::MAX),
            visibility_ms: ms(visibility),
            wait_ms: ms(wait),
        };
        let response = self.client.clone().lease(request).await?.into_inner();
        response
            .leases
            .into_iter()
            .map(|lease| lease_from(Some(lease)).map_err(QueueError::from))
            .collect()
    }

    async fn extend(&self, lease: &Lease, visibility: Duration) -> Result<Lease, QueueError> {
        let request = pb::ExtendRequest {
            lease: Some(lease.clone().into()),
            visibility_ms: ms(visibility),
        };
        let response = self.client.clone().extend(request).await?.into_inner();
        Ok(lease_from(response.lease)?)
    }

    async fn ack(&self, lease: &Lease) -> Result<(), QueueError> {
        self.client
            .clone()
            .ack(pb::AckRequest {
                lease: Some(lease.clone().into()),
            })
            .await?;
        Ok(())
    }

    async fn nack(&self, lease: &Lease, delay: Duration) -> Result<(), QueueError> {
        let request = pb::NackRequest {
            lease: Some(lease.clone().into()),
            delay_ms: ms(delay),
        };
        self.client.clone().nack(request).await?;
        Ok(())
    }

    async fn settle_and_enqueue(
        &self,
        lease: &Lease,
        target: &str,
        item: QueueItem,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let request = pb::SettleAndEnqueueRequest {
            lease: Some(lease.clone().into()),
            target: target.into(),
            item: Some(item.into()),
            delay_ms: ms(delay),
        };
        self.client.clone().settle_and_enqueue(request).await?;
        Ok(())
    }

    async fn stats(&self, queue: &str) -> Result<QueueStats, QueueError> {
        let response = self
            .client
            .clone()
            .stats(pb::StatsRequest {
                queue: queue.into(),
            })
            .await?
            .into_inner();
        Ok(QueueStats {
            depth: response.depth,
            oldest_age: response.oldest_age_ms.map(Duration::from_millis),
        })
    }

    async fn peek(&self, queue: &str, limit: PeekLimit) -> Result<Vec<QueueItem>, QueueError> {
        let request = pb::PeekRequest {
            queue: queue.into(),
            max: u32::try_from(limit.items).unwrap_or(u32::MAX),
            max_bytes: limit.bytes as u64,
        };
        let response = self.client.clone().peek(request).await?.into_inner();
        Ok(response.items.into_iter().map(QueueItem::from).collect())
    }
}

impl From<QueueItem> for pb::Item {
    fn from(item: QueueItem) -> Self {
        pb::Item {
            id: item.id,
            body: item.body.to_vec(),
        }
    }
}

impl From<pb::Item> for QueueItem {
    fn from(item: pb::Item) -> Self {
        QueueItem {
            id: item.id,
            body: Bytes::from(item.body),
        }
    }
}

impl From<Lease> for pb::Lease {
    fn from(lease: Lease) -> Self {
        pb::Lease {
            queue: lease.queue,
            item: Some(lease.item.into()),
            receipt: lease.receipt,
            receive_count: lease.receive_count,
            enqueued_at_ms: lease.enqueued_at_ms,
        }
    }
}

fn item_from(item: Option<pb::Item>) -> Result<QueueItem, Status> {
    item.map(QueueItem::from)
        .ok_or_else(|| Status::invalid_argument("missing item"))
}

fn lease_from(lease: Option<pb::Lease>) -> Result<Lease, Status> {
    let lease = lease.ok_or_else(|| Status::invalid_argument("missing lease"))?;
    Ok(Lease {
        queue: lease.queue,
        item: item_from(lease.item)?,
        receipt: lease.receipt,
        receive_count: lease.receive_count,
        enqueued_at_ms: lease.enqueued_at_ms,
    })
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

fn ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl From<QueueError> for Status {
    fn from(error: QueueError) -> Self {
        let (code, kind, message) = match &error {
            QueueError::Full { queue, depth } => {
                (Code::ResourceExhausted, "full", format!("{queue} {depth}"))
            }
            QueueError::LeaseLost { receipt } => {
                (Code::FailedPrecondition, "lease-lost", receipt.clone())
            }
            QueueError::TooLarge { size, limit } => {
                (Code::OutOfRange, "too-large", format!("{size} {limit}"))
            }
            QueueError::Storage(message) => (Code::Internal, "storage", message.clone()),
        };
        tagged_status(code, kind, message)
    }
}

impl From<Status> for QueueError {
    fn from(status: Status) -> Self {
        let kind = kind_of(&status);
        let message = status.message().to_owned();
        match kind {
            Some("full") => {
                let (queue, depth) = message.rsplit_once(' ').unwrap_or((&message, "0"));
                QueueError::Full {
                    queue: queue.to_owned(),
                    depth: depth.parse().unwrap_or(0),
                }
            }
            Some("lease-lost") => QueueError::LeaseLost { receipt: message },
            Some("too-large") => {
                let mut numbers = message.split(' ').map(|n| n.parse().unwrap_or(0));
                QueueError::TooLarge {
                    size: numbers.next().unwrap_or(0),
                    limit: numbers.next().unwrap_or(0),
                }
            }
            Some("storage") => QueueError::Storage(message),
            _ => QueueError::Storage(format!("queue call failed: {status}")),
        }
    }
}
