//! `GET /invoq/queues/{queue}`: what a queue holds, without taking anything out of it. Until
//! the router delivers them, terminal outcomes wait in `deliveries`, and this is where they
//! can be read (`invoq` extension, not part of Lambda's API).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use invoq_domain::ApiError;
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
    let Some(queue) = &frontend.queue else {
        return Err(ApiError::not_found("This invoq frontend runs without an event queue").into());
    };
    let max_items = query.max_items.unwrap_or(100).clamp(1, 10_000);
    let storage = |error: invoq_queue::QueueError| ApiError::service(error.to_string());
    let stats = queue.stats(&queue_name).await.map_err(storage)?;
    let items: Vec<Value> = queue
        .peek(&queue_name, max_items)
        .await
        .map_err(storage)?
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
        }),
    ))
}
