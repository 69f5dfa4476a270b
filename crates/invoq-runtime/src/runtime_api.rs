//! Lambda's Runtime API (`/2018-06-01`, lambda-spec.md §8), served to one function process.
//!
//! Each sandbox gets its own listener on 127.0.0.1 (in namespace mode on its own loopback,
//! unreachable from anywhere else), so `AWS_LAMBDA_RUNTIME_API` can stay a
//! plain `host:port` as clients expect and every request is known to come from that sandbox.
//! The server hands out invocations the sandbox queues and reports what the process posts
//! back as [`ApiEvent`]s, in order.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use invoq_domain::limits::SYNC_RESPONSE_MAX_BYTES;
use serde_json::json;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// An invocation waiting for the process's next `GET /runtime/invocation/next`.
#[derive(Debug)]
pub(crate) struct PendingInvocation {
    pub(crate) request_id: String,
    pub(crate) payload: Bytes,
    pub(crate) invoked_function_arn: String,
    pub(crate) client_context: Option<String>,
    pub(crate) trace_id: Option<String>,
    pub(crate) timeout: Duration,
}

/// What the process did, in the order it did it.
#[derive(Debug)]
pub(crate) enum ApiEvent {
    /// The process took the invocation; its timeout runs from here.
    Delivered {
        request_id: String,
        deadline: Instant,
    },
    Response {
        request_id: String,
        body: Bytes,
    },
    Error {
        request_id: String,
        body: Bytes,
        error_type: Option<String>,
    },
    ResponseTooLarge {
        request_id: String,
    },
    InitError {
        body: Bytes,
        error_type: Option<String>,
    },
}

/// A running Runtime API server. Dropping it stops the server.
pub(crate) struct RuntimeApi {
    pub(crate) addr: SocketAddr,
    pub(crate) invocations: mpsc::Sender<PendingInvocation>,
    pub(crate) events: mpsc::UnboundedReceiver<ApiEvent>,
    server: JoinHandle<()>,
}

impl Drop for RuntimeApi {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct ApiState {
    invocations: tokio::sync::Mutex<mpsc::Receiver<PendingInvocation>>,
    /// The request id handed out by the last `/next` and not yet answered.
    current: Mutex<Option<String>>,
    events: mpsc::UnboundedSender<ApiEvent>,
}

const ERROR_TYPE_HEADER: &str = "lambda-runtime-function-error-type";

impl RuntimeApi {
    /// Serves the Runtime API on `listener` (bound by the sandbox, possibly inside its own
    /// network namespace). Must be called within a Tokio runtime.
    pub(crate) fn serve(listener: std::net::TcpListener) -> std::io::Result<Self> {
        listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(listener)?;
        let addr = listener.local_addr()?;
        let (invocation_sender, invocation_receiver) = mpsc::channel(1);
        let (event_sender, event_receiver) = mpsc::unbounded_channel();
        let state = Arc::new(ApiState {
            invocations: tokio::sync::Mutex::new(invocation_receiver),
            current: Mutex::new(None),
            events: event_sender,
        });
        let router = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next_invocation))
            .route(
                "/2018-06-01/runtime/invocation/{request_id}/response",
                post(post_response),
            )
            .route(
                "/2018-06-01/runtime/invocation/{request_id}/error",
                post(post_error),
            )
            .route("/2018-06-01/runtime/init/error", post(post_init_error))
            .with_state(state);
        let server = tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::warn!(%error, "runtime api server stopped");
            }
        });
        Ok(RuntimeApi {
            addr,
            invocations: invocation_sender,
            events: event_receiver,
            server,
        })
    }
}

async fn next_invocation(State(state): State<Arc<ApiState>>) -> Response {
    let invocation = {
        let mut invocations = state.invocations.lock().await;
        match invocations.recv().await {
            Some(invocation) => invocation,
            None => return StatusCode::INTERNAL_SERVER_ERROR.into_response(),
        }
    };
    let deadline_epoch_ms = (SystemTime::now() + invocation.timeout)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    *state.current.lock().expect("runtime api state poisoned") =
        Some(invocation.request_id.clone());
    let delivered = ApiEvent::Delivered {
        request_id: invocation.request_id.clone(),
        deadline: Instant::now() + invocation.timeout,
    };
    // The sandbox went away while the process was waiting: nothing to answer.
    if state.events.send(delivered).is_err() {
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    }

    let mut headers = HeaderMap::new();
    let mut put = |name: &'static str, value: &str| {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(name, value);
        }
    };
    put("lambda-runtime-aws-request-id", &invocation.request_id);
    put("lambda-runtime-deadline-ms", &deadline_epoch_ms.to_string());
    put(
        "lambda-runtime-invoked-function-arn",
        &invocation.invoked_function_arn,
    );
    put("content-type", "application/json");
    if let Some(trace_id) = &invocation.trace_id {
        put("lambda-runtime-trace-id", trace_id);
    }
    if let Some(client_context) = &invocation.client_context {
        put("lambda-runtime-client-context", client_context);
    }
    (StatusCode::OK, headers, invocation.payload).into_response()
}

async fn post_response(
    State(state): State<Arc<ApiState>>,
    Path(request_id): Path<String>,
    body: Body,
) -> Response {
    if !state.take_current(&request_id) {
        return invalid_request_id();
    }
    match axum::body::to_bytes(body, SYNC_RESPONSE_MAX_BYTES).await {
        Ok(body) => {
            let _ = state.events.send(ApiEvent::Response { request_id, body });
            accepted()
        }
        Err(_) => {
            let _ = state.events.send(ApiEvent::ResponseTooLarge { request_id });
            let body = json!({
                "errorMessage": format!(
                    "Exceeded maximum allowed payload size ({SYNC_RESPONSE_MAX_BYTES} bytes)."
                ),
                "errorType": "RequestEntityTooLarge",
            });
            (StatusCode::PAYLOAD_TOO_LARGE, body.to_string()).into_response()
        }
    }
}

async fn post_error(
    State(state): State<Arc<ApiState>>,
    Path(request_id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if !state.take_current(&request_id) {
        return invalid_request_id();
    }
    let error_type = error_type_header(&headers);
    let _ = state.events.send(ApiEvent::Error {
        request_id,
        body,
        error_type,
    });
    accepted()
}

async fn post_init_error(
    State(state): State<Arc<ApiState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if state
        .current
        .lock()
        .expect("runtime api state poisoned")
        .is_some()
    {
        return rejection(
            StatusCode::FORBIDDEN,
            "InvalidStateTransition",
            "Init error after an invocation was handed out",
        );
    }
    let error_type = error_type_header(&headers);
    let _ = state.events.send(ApiEvent::InitError { body, error_type });
    accepted()
}

impl ApiState {
    /// Ends the invocation in progress if it is `request_id`; false if it is not.
    fn take_current(&self, request_id: &str) -> bool {
        let mut current = self.current.lock().expect("runtime api state poisoned");
        if current.as_deref() == Some(request_id) {
            *current = None;
            return true;
        }
        false
    }
}

fn invalid_request_id() -> Response {
    rejection(
        StatusCode::BAD_REQUEST,
        "InvalidRequestID",
        "Invalid request ID",
    )
}

fn error_type_header(headers: &HeaderMap) -> Option<String> {
    headers
        .get(ERROR_TYPE_HEADER)
        .and_then(|value| value.to_str().ok())
        .map(str::to_owned)
}

fn accepted() -> Response {
    (StatusCode::ACCEPTED, r#"{"status":"OK"}"#).into_response()
}

fn rejection(status: StatusCode, error_type: &str, message: &str) -> Response {
    let body = json!({ "errorMessage": message, "errorType": error_type });
    (status, body.to_string()).into_response()
}
