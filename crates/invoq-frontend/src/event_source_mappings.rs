//! Create / Get / List / Update / Delete EventSourceMapping (lambda-spec.md §6), for SQS
//! sources: their shapes and validation. The registry stores them and publishes every change
//! to the pollers.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path as UrlPath, Query, State};
use axum::http::StatusCode;
use invoq_domain::arn::{Arn, Service};
use invoq_domain::event_source::{
    DEFAULT_BATCH_SIZE, EventSourceMapping, MAX_BATCH_SIZE, MAX_BATCHING_WINDOW_SECONDS,
    MAX_FIFO_BATCH_SIZE,
};
use invoq_domain::{ApiError, ErrorCode, FunctionRef};
use serde::Deserialize;
use serde_json::{Value, json};

use invoq_registry::EventSourceChecker;

use crate::Frontend;
use crate::configuration::validate_range;
use crate::http::{ApiResult, json_response, parse_json_body};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct MappingRequest {
    event_source_arn: Option<String>,
    function_name: Option<String>,
    enabled: Option<bool>,
    batch_size: Option<i64>,
    maximum_batching_window_in_seconds: Option<i64>,
    function_response_types: Option<Vec<String>>,
    scaling_config: Option<ScalingConfig>,
    filter_criteria: Option<FilterCriteria>,
    destination_config: Option<DestinationConfig>,
    maximum_retry_attempts: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ScalingConfig {
    maximum_concurrency: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct FilterCriteria {
    filters: Option<Vec<Filter>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Filter {
    pattern: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DestinationConfig {
    on_success: Option<Destination>,
    on_failure: Option<Destination>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Destination {
    destination: Option<String>,
}

pub(crate) async fn create(State(frontend): State<Arc<Frontend>>, body: Bytes) -> ApiResult {
    let request: MappingRequest = parse_json_body(&body)?;
    let event_source_arn = request
        .event_source_arn
        .clone()
        .filter(|arn| Arn::parse(arn).is_ok_and(|arn| arn.service == Service::Sqs))
        .ok_or_else(|| ApiError::invalid_parameter("Unrecognized event source."))?;
    let function_name = request
        .function_name
        .clone()
        .ok_or_else(|| ApiError::validation("null", "functionName", "Member must not be null"))?;
    let (name, function_arn) = frontend.mapping_function(&function_name)?;
    let mut mapping = EventSourceMapping {
        uuid: uuid::Uuid::new_v4().to_string(),
        event_source_arn: event_source_arn.clone(),
        function_name: name,
        function_arn,
        batch_size: DEFAULT_BATCH_SIZE,
        maximum_batching_window_seconds: 0,
        enabled: true,
        state: String::new(),
        function_response_types: Vec::new(),
        maximum_concurrency: None,
        filters: Vec::new(),
        on_failure: None,
        maximum_retry_attempts: None,
        last_modified: 0.0,
    };
    apply(&mut mapping, &request)?;
    if let Some(existing) = frontend.registry.mappings().all().into_iter().find(|m| {
        m.event_source_arn == event_source_arn && m.function_name == mapping.function_name
    }) {
        return Err(ApiError::conflict(format!(
            "An event source mapping with SQS arn (\" {event_source_arn} \") and function (\" {} \") \
             already exists. Please update or delete the existing mapping with UUID {}",
            mapping.function_name, existing.uuid
        ))
        .into());
    }
    let checker = frontend.event_source_checker.get().ok_or_else(|| {
        ApiError::invalid_parameter(
            "This invoq runs no event source pollers, so it cannot map event sources.",
        )
    })?;
    checker
        .check(&event_source_arn)
        .await
        .map_err(ApiError::invalid_parameter)?;
    frontend.registry.mappings().put(mapping.clone())?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &frontend.mapping_json(&mapping, "Creating"),
    ))
}

pub(crate) async fn get(
    State(frontend): State<Arc<Frontend>>,
    UrlPath(uuid): UrlPath<String>,
) -> ApiResult {
    let mapping = frontend
        .registry
        .mappings()
        .get(&uuid)
        .ok_or_else(mapping_not_found)?;
    Ok(json_response(
        StatusCode::OK,
        &frontend.mapping_json(&mapping, &mapping.state),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListQuery {
    event_source_arn: Option<String>,
    function_name: Option<String>,
    marker: Option<String>,
    max_items: Option<i64>,
}

pub(crate) async fn list(
    State(frontend): State<Arc<Frontend>>,
    Query(query): Query<ListQuery>,
) -> ApiResult {
    let max_items = match query.max_items {
        None => 100,
        Some(max) => validate_range(max, 1, 10_000, "maxItems")?.min(100) as usize,
    };
    let function_name = query
        .function_name
        .as_deref()
        .map(|name| FunctionRef::parse(name, None).map(|f| f.name))
        .transpose()?;
    let mut matching = frontend
        .registry
        .mappings()
        .all()
        .into_iter()
        .filter(|mapping| {
            query
                .event_source_arn
                .as_ref()
                .is_none_or(|arn| *arn == mapping.event_source_arn)
                && function_name
                    .as_ref()
                    .is_none_or(|name| *name == mapping.function_name)
                && query
                    .marker
                    .as_ref()
                    .is_none_or(|marker| mapping.uuid > *marker)
        });
    let page: Vec<EventSourceMapping> = matching.by_ref().take(max_items).collect();
    let mut body = json!({
        "EventSourceMappings": page.iter().map(|m| frontend.mapping_json(m, &m.state)).collect::<Vec<Value>>(),
    });
    if matching.next().is_some()
        && let Some(last) = page.last()
    {
        body["NextMarker"] = json!(last.uuid);
    }
    Ok(json_response(StatusCode::OK, &body))
}

pub(crate) async fn update(
    State(frontend): State<Arc<Frontend>>,
    UrlPath(uuid): UrlPath<String>,
    body: Bytes,
) -> ApiResult {
    let request: MappingRequest = parse_json_body(&body)?;
    let mut mapping = frontend
        .registry
        .mappings()
        .get(&uuid)
        .ok_or_else(mapping_not_found)?;
    if let Some(function_name) = &request.function_name {
        let (name, function_arn) = frontend.mapping_function(function_name)?;
        mapping.function_name = name;
        mapping.function_arn = function_arn;
    }
    apply(&mut mapping, &request)?;
    frontend.registry.mappings().put(mapping.clone())?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &frontend.mapping_json(&mapping, "Updating"),
    ))
}

pub(crate) async fn delete(
    State(frontend): State<Arc<Frontend>>,
    UrlPath(uuid): UrlPath<String>,
) -> ApiResult {
    let mapping = frontend
        .registry
        .mappings()
        .get(&uuid)
        .ok_or_else(mapping_not_found)?;
    frontend.registry.mappings().remove(&uuid)?;
    Ok(json_response(
        StatusCode::ACCEPTED,
        &frontend.mapping_json(&mapping, "Deleting"),
    ))
}

/// Validates the settings a Create or Update gives and writes them into `mapping`.
fn apply(mapping: &mut EventSourceMapping, request: &MappingRequest) -> Result<(), ApiError> {
    if let Some(enabled) = request.enabled {
        mapping.enabled = enabled;
    }
    mapping.state = if mapping.enabled {
        "Enabled"
    } else {
        "Disabled"
    }
    .to_owned();
    if let Some(batch_size) = request.batch_size {
        mapping.batch_size = validate_range(batch_size, 1, i64::from(MAX_BATCH_SIZE), "batchSize")?;
    }
    if let Some(window) = request.maximum_batching_window_in_seconds {
        mapping.maximum_batching_window_seconds = validate_range(
            window,
            0,
            i64::from(MAX_BATCHING_WINDOW_SECONDS),
            "maximumBatchingWindowInSeconds",
        )?;
    }
    if mapping.is_fifo() && mapping.batch_size > MAX_FIFO_BATCH_SIZE {
        return Err(ApiError::invalid_parameter(
            "Batch size for FIFO queues must be less than or equal to 10.",
        ));
    }
    if mapping.batch_size > 10 && mapping.maximum_batching_window_seconds == 0 {
        return Err(ApiError::invalid_parameter(
            "Maximum batch window in seconds must be greater than 0 if maximum batch size is greater than 10",
        ));
    }
    if let Some(types) = &request.function_response_types {
        if let Some(unknown) = types.iter().find(|kind| *kind != "ReportBatchItemFailures") {
            return Err(ApiError::validation(
                unknown,
                "functionResponseTypes",
                "Member must satisfy enum value set: [ReportBatchItemFailures]",
            ));
        }
        mapping.function_response_types = types.clone();
    }
    if let Some(scaling) = &request.scaling_config {
        mapping.maximum_concurrency = scaling
            .maximum_concurrency
            .map(|max| validate_range(max, 2, 1000, "scalingConfig.maximumConcurrency"))
            .transpose()?;
    }
    if let Some(criteria) = &request.filter_criteria {
        let mut filters = Vec::new();
        for pattern in criteria
            .filters
            .iter()
            .flatten()
            .filter_map(|f| f.pattern.clone())
        {
            if !serde_json::from_str::<Value>(&pattern).is_ok_and(|p| p.is_object()) {
                return Err(ApiError::invalid_parameter(format!(
                    "Invalid filter pattern definition: {pattern}"
                )));
            }
            filters.push(pattern);
        }
        mapping.filters = filters;
    }
    if let Some(destinations) = &request.destination_config {
        if destinations
            .on_success
            .as_ref()
            .is_some_and(|d| d.destination.is_some())
        {
            return Err(ApiError::invalid_parameter(
                "Unsupported DestinationConfig parameter for given event source mapping type.",
            ));
        }
        mapping.on_failure = destinations
            .on_failure
            .as_ref()
            .and_then(|d| d.destination.clone());
        if let Some(destination) = &mapping.on_failure {
            Arn::parse(destination).map_err(|error| {
                ApiError::validation(
                    destination,
                    "destinationConfig.onFailure.destination",
                    &format!("Member must be a valid destination ARN: {error}"),
                )
            })?;
        }
    }
    if let Some(retries) = request.maximum_retry_attempts {
        mapping.maximum_retry_attempts =
            Some(validate_range(retries, 0, 10_000, "maximumRetryAttempts")?);
    }
    mapping.last_modified = epoch_seconds();
    Ok(())
}

fn mapping_not_found() -> ApiError {
    ApiError::new(
        ErrorCode::ResourceNotFound,
        "The resource you requested does not exist.",
    )
}

fn epoch_seconds() -> f64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as f64 / 1000.0
}

impl Frontend {
    /// The mapped function's name and the ARN to show: qualified only if the caller
    /// qualified it.
    fn mapping_function(&self, function_name: &str) -> Result<(String, String), ApiError> {
        let function = FunctionRef::parse(function_name, None)?;
        if self.registry.functions().get(&function.name).is_none() {
            return Err(ApiError::invalid_parameter("Function does not exist"));
        }
        let arn = match &function.qualifier {
            Some(qualifier) => self
                .registry
                .location()
                .qualified_function_arn(&function.name, &qualifier.to_string()),
            None => self.registry.location().function_arn(&function.name),
        };
        Ok((function.name, arn))
    }

    fn mapping_json(&self, mapping: &EventSourceMapping, state: &str) -> Value {
        let mut body = json!({
            "UUID": mapping.uuid,
            "EventSourceMappingArn": format!(
                "arn:aws:lambda:{}:{}:event-source-mapping:{}",
                self.registry.location().region, self.registry.location().account_id, mapping.uuid
            ),
            "EventSourceArn": mapping.event_source_arn,
            "FunctionArn": mapping.function_arn,
            "BatchSize": mapping.batch_size,
            "MaximumBatchingWindowInSeconds": mapping.maximum_batching_window_seconds,
            "FunctionResponseTypes": mapping.function_response_types,
            "LastModified": mapping.last_modified,
            "State": state,
            "StateTransitionReason": "USER_INITIATED",
        });
        if let Some(maximum_concurrency) = mapping.maximum_concurrency {
            body["ScalingConfig"] = json!({ "MaximumConcurrency": maximum_concurrency });
        }
        if !mapping.filters.is_empty() {
            let filters: Vec<Value> = mapping
                .filters
                .iter()
                .map(|p| json!({ "Pattern": p }))
                .collect();
            body["FilterCriteria"] = json!({ "Filters": filters });
        }
        if let Some(on_failure) = &mapping.on_failure {
            body["DestinationConfig"] = json!({ "OnFailure": { "Destination": on_failure } });
        }
        if let Some(retries) = mapping.maximum_retry_attempts {
            body["MaximumRetryAttempts"] = json!(retries);
        }
        body
    }

    /// Sets how new mappings' sources are checked (done by whoever runs the pollers).
    pub fn set_event_source_checker(&self, checker: Arc<dyn EventSourceChecker>) {
        let _ = self.event_source_checker.set(checker);
    }
}
