//! The HTTP/1.1 server in front of the API, with the limits a service exposed to careless
//! or hostile clients needs: how many connections it serves at once (past that a new one gets
//! 503 and is closed), how long a client may take to send a request's headers (idle
//! keep-alive connections included, so idle and half-open connections are dropped), and how
//! many bytes of request bodies may be in flight at once across all connections (past that a
//! request waits briefly, then gets 429).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use invoq_domain::{ApiError, ErrorCode};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use crate::CONTROL_PLANE_BODY_LIMIT;
use crate::http::ErrorResponse;

/// How long a request may wait for room in the body budget before it is refused.
const BODY_ADMISSION_WAIT: Duration = Duration::from_secs(1);
/// How long in-flight requests get to finish once shutdown starts.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
pub struct HttpLimits {
    pub max_connections: usize,
    /// From a connection's start, or the end of its previous response, to the end of the
    /// next request's headers.
    pub header_read_timeout: Duration,
    /// Bytes of request bodies being received or held at once, across all connections.
    pub body_budget_bytes: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_connections: 1024,
            header_read_timeout: Duration::from_secs(10),
            // Two zip uploads at their 70 MB limit, with room for invokes beside them.
            body_budget_bytes: 160 * 1024 * 1024,
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` completes, then lets
/// requests in flight finish for a few seconds.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: HttpLimits,
    shutdown: impl Future<Output = ()>,
) {
    let budget = Arc::new(BodyBudget::new(limits.body_budget_bytes));
    let router = router.layer(axum::middleware::from_fn_with_state(budget, admit_body));
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(error) => {
                    // Out of file descriptors, mostly: wait rather than spin.
                    tracing::warn!(%error, "http accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tokio::spawn(refuse(stream));
            continue;
        };
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(limits.header_read_timeout);
        let connection = builder.serve_connection(
            TokioIo::new(stream),
            TowerToHyperService::new(router.clone()),
        );
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "http connection ended");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("http requests still running after the shutdown grace period");
    }
}

/// Answers a connection over the limit with 503 and closes it.
async fn refuse(mut stream: TcpStream) {
    let body = ApiError::new(
        ErrorCode::Service,
        "invoq is serving as many connections as it allows; retry later.",
    )
    .body()
    .to_string();
    let response = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n\
         x-amzn-errortype: ServiceException\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// Bytes of request bodies in flight, counted in KiB permits.
struct BodyBudget {
    kib: Arc<Semaphore>,
    total_kib: u32,
}

impl BodyBudget {
    fn new(bytes: usize) -> Self {
        let total_kib = u32::try_from(bytes.div_ceil(1024))
            .unwrap_or(u32::MAX)
            .max(1);
        BodyBudget {
            kib: Arc::new(Semaphore::new(total_kib as usize)),
            total_kib,
        }
    }
}

/// Holds a request's body size against the budget until its response is ready. A body of
/// unknown length (chunked) counts as the largest the API takes.
async fn admit_body(
    State(budget): State<Arc<BodyBudget>>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok()?.parse::<usize>().ok());
    let size = match declared {
        Some(size) => size,
        None if headers.contains_key(http::header::TRANSFER_ENCODING) => CONTROL_PLANE_BODY_LIMIT,
        None => 0,
    };
    if size == 0 {
        return next.run(request).await;
    }
    // Larger bodies are refused by the body limit itself; they still take the whole budget.
    let kib = u32::try_from(size.min(CONTROL_PLANE_BODY_LIMIT).div_ceil(1024))
        .unwrap_or(u32::MAX)
        .min(budget.total_kib);
    match tokio::time::timeout(
        BODY_ADMISSION_WAIT,
        budget.kib.clone().acquire_many_owned(kib),
    )
    .await
    {
        Ok(Ok(permit)) => {
            let response = next.run(request).await;
            drop(permit);
            response
        }
        _ => ErrorResponse::from(
            ApiError::new(
                ErrorCode::TooManyRequests,
                "Too many request bytes are being received at once; retry later.",
            )
            .with_reason("CallerRateLimitExceeded"),
        )
        .into_response(),
    }
}
