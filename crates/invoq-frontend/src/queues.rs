//! invoq's own queue endpoints (not part of Lambda's API): `GET /invoq/queues/{queue}` shows
//! what a queue holds without taking anything out of it (`parked` lists undeliverable
//! outcomes), and `POST /invoq/parked/redrive` sends every parked outcome back to the router.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use bytes::Bytes;
use invoq_domain::ApiError;
use invoq_domain::asynchronous::{Outcome, QueueMessage};
use invoq_queue::{DELIVERIES, PARKED, PeekLimit, QueueItem};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Frontend;
use crate::http::{ApiResult, json_response};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct InspectQuery {
    max_items: Option<usize>,
}

pub(crate) async fn inspect(
    State(frontend): State<Arc<Frontend>>,
    Path(queue_name): Path<String>,
    Query(query): Query<InspectQuery>,
) -> ApiResult {
    let queue = &frontend.queue;
    let max_items = query.max_items.unwrap_or(100).clamp(1, 10_000);
    let storage = |error: invoq_queue::QueueError| ApiError::service(error.to_string());
    let stats = queue.stats(&queue_name).await.map_err(storage)?;
    let peeked = queue
        .peek(&queue_name, PeekLimit::items(max_items))
        .await
        .map_err(storage)?;
    // A listing is cut at PeekLimit::DEFAULT_BYTES of bodies, whatever MaxItems says.
    let truncated = peeked.len() < max_items && (peeked.len() as u64) < stats.depth;
    let items: Vec<Value> = peeked
        .into_iter()
        .map(|item| {
            let body = serde_json::from_slice(&item.body)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&item.body).into()));
            json!({ "Id": item.id, "Body": body })
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "Queue": queue_name,
            "Depth": stats.depth,
            "OldestAgeSeconds": stats.oldest_age.map(|age| age.as_secs_f64()),
            "Items": items,
            "Truncated": truncated,
        }),
    ))
}

/// Moves every parked outcome back to `deliveries` with a fresh retry budget; targets it
/// already reached are not sent again.
pub(crate) async fn redrive_parked(State(frontend): State<Arc<Frontend>>) -> ApiResult {
    let queue = &frontend.queue;
    let storage = |error: invoq_queue::QueueError| ApiError::service(error.to_string());
    let mut redriven = 0u64;
    loop {
        let leases = queue
            .lease(PARKED, 100, Duration::from_secs(60), Duration::ZERO)
            .await
            .map_err(storage)?;
        if leases.is_empty() {
            break;
        }
        for lease in leases {
            let body = match Outcome::decode(&lease.item.body) {
                Ok(mut outcome) => {
                    outcome.delivery.failed_attempts = 0;
                    outcome.delivery.last_error = None;
                    Bytes::from(outcome.encode())
                }
                Err(_) => lease.item.body.clone(),
            };
            let item = QueueItem {
                id: lease.item.id.clone(),
                body,
            };
            queue
                .settle_and_enqueue(&lease, DELIVERIES, item, Duration::ZERO)
                .await
                .map_err(storage)?;
            redriven += 1;
        }
    }
    Ok(json_response(
        StatusCode::OK,
        &json!({ "Redriven": redriven }),
    ))
}
