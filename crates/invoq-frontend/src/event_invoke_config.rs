//! Put / Update / Get / Delete / List FunctionEventInvokeConfig (lambda-spec.md §3): how
//! asynchronous invocations of a function retry and where their outcomes go.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use invoq_domain::arn::{Arn, ArnError, Service};
use invoq_domain::asynchronous::{
    EventInvokeConfig, MAX_MAXIMUM_EVENT_AGE_SECONDS, MAX_MAXIMUM_RETRY_ATTEMPTS,
    MIN_MAXIMUM_EVENT_AGE_SECONDS,
};
use invoq_domain::{ApiError, ErrorCode, FunctionRef, Qualifier};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Frontend;
use crate::configuration::validate_range;
use crate::functions::QualifierQuery;
use crate::http::{ApiResult, json_response, parse_json_body};
use invoq_registry::FunctionRecord;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ConfigRequest {
    maximum_retry_attempts: Option<i64>,
    maximum_event_age_in_seconds: Option<i64>,
    destination_config: Option<DestinationConfigInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DestinationConfigInput {
    on_success: Option<DestinationInput>,
    on_failure: Option<DestinationInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct DestinationInput {
    destination: Option<String>,
}

/// What a Put or Update asked for, validated: `None` leaves a field as it is (Update), and
/// `Some(None)` clears it.
struct Changes {
    maximum_retry_attempts: Option<u32>,
    maximum_event_age_seconds: Option<u32>,
    on_success: Option<Option<String>>,
    on_failure: Option<Option<String>>,
}

pub(crate) async fn put(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    Query(query): Query<QualifierQuery>,
    body: Bytes,
) -> ApiResult {
    frontend.change_config(&function_name, query.qualifier.as_deref(), &body, true)
}

pub(crate) async fn update(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    Query(query): Query<QualifierQuery>,
    body: Bytes,
) -> ApiResult {
    frontend.change_config(&function_name, query.qualifier.as_deref(), &body, false)
}

pub(crate) async fn get(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    Query(query): Query<QualifierQuery>,
) -> ApiResult {
    let (record, qualifier) = frontend.config_target(&function_name, query.qualifier.as_deref())?;
    let config = record
        .event_invoke_configs
        .get(&qualifier)
        .ok_or_else(|| frontend.no_config(&record.name, &qualifier))?;
    Ok(json_response(
        StatusCode::OK,
        &frontend.config_json(&record.name, &qualifier, config),
    ))
}

pub(crate) async fn delete(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    Query(query): Query<QualifierQuery>,
) -> ApiResult {
    let (record, qualifier) = frontend.config_target(&function_name, query.qualifier.as_deref())?;
    frontend
        .registry
        .functions()
        .update(&record.name, |record| {
            record
                .event_invoke_configs
                .remove(&qualifier)
                .map(drop)
                .ok_or_else(|| frontend.no_config(&record.name, &qualifier))
        })?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListQuery {
    max_items: Option<i64>,
}

pub(crate) async fn list(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    Query(query): Query<ListQuery>,
) -> ApiResult {
    if let Some(max_items) = query.max_items.filter(|max| !(1..=50).contains(max)) {
        let constraint = if max_items < 1 {
            "Member must have value greater than or equal to 1"
        } else {
            "Member must have value less than or equal to 50"
        };
        return Err(ApiError::validation(max_items, "maxItems", constraint).into());
    }
    let (record, _) = frontend.config_target(&function_name, None)?;
    let configs: Vec<Value> = record
        .event_invoke_configs
        .iter()
        .map(|(qualifier, config)| frontend.config_json(&record.name, qualifier, config))
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({ "FunctionEventInvokeConfigs": configs }),
    ))
}

impl Frontend {
    fn change_config(
        &self,
        function_name: &str,
        qualifier: Option<&str>,
        body: &[u8],
        replace: bool,
    ) -> ApiResult {
        let request: ConfigRequest = parse_json_body(body)?;
        let (record, qualifier) = self.config_target(function_name, qualifier)?;
        let changes = self.validate(&record.name, &request)?;
        let updated = self.registry.functions().update(&record.name, |record| {
            let current = record.event_invoke_configs.get(&qualifier);
            let mut config = match (replace, current) {
                (true, _) => EventInvokeConfig::default(),
                (false, Some(current)) => current.clone(),
                (false, None) => return Err(self.no_config(&record.name, &qualifier)),
            };
            if replace || changes.maximum_retry_attempts.is_some() {
                config.maximum_retry_attempts = changes.maximum_retry_attempts;
            }
            if replace || changes.maximum_event_age_seconds.is_some() {
                config.maximum_event_age_seconds = changes.maximum_event_age_seconds;
            }
            if let Some(on_success) = changes.on_success.clone() {
                config.on_success = on_success;
            }
            if let Some(on_failure) = changes.on_failure.clone() {
                config.on_failure = on_failure;
            }
            config.last_modified = epoch_seconds();
            record
                .event_invoke_configs
                .insert(qualifier.clone(), config);
            Ok(())
        })?;
        let updated = updated.ok_or_else(function_does_not_exist)?;
        let config = &updated.event_invoke_configs[&qualifier];
        Ok(json_response(
            StatusCode::OK,
            &self.config_json(&updated.name, &qualifier, config),
        ))
    }

    /// The function and qualifier a config call names; only `$LATEST` exists.
    fn config_target(
        &self,
        function_name: &str,
        qualifier: Option<&str>,
    ) -> Result<(Arc<FunctionRecord>, String), ApiError> {
        let function = FunctionRef::parse(function_name, qualifier)?;
        match (
            function.qualifier_or_latest(),
            self.registry.functions().get(&function.name),
        ) {
            (Qualifier::Latest, Some(record)) => Ok((record, Qualifier::Latest.to_string())),
            _ => Err(function_does_not_exist()),
        }
    }

    fn validate(&self, function_name: &str, request: &ConfigRequest) -> Result<Changes, ApiError> {
        if request.maximum_retry_attempts.is_none()
            && request.maximum_event_age_in_seconds.is_none()
            && request.destination_config.is_none()
        {
            return Err(ApiError::invalid_parameter(
                "You must specify at least one of error handling or destination setting.",
            ));
        }
        let maximum_retry_attempts = request
            .maximum_retry_attempts
            .map(|value| {
                validate_range(
                    value,
                    0,
                    i64::from(MAX_MAXIMUM_RETRY_ATTEMPTS),
                    "maximumRetryAttempts",
                )
            })
            .transpose()?;
        let maximum_event_age_seconds = request
            .maximum_event_age_in_seconds
            .map(|value| {
                validate_range(
                    value,
                    i64::from(MIN_MAXIMUM_EVENT_AGE_SECONDS),
                    i64::from(MAX_MAXIMUM_EVENT_AGE_SECONDS),
                    "maximumEventAgeInSeconds",
                )
            })
            .transpose()?;
        let (mut on_success, mut on_failure) = (None, None);
        if let Some(destinations) = &request.destination_config {
            let arn_of = |input: &Option<DestinationInput>| {
                input
                    .as_ref()
                    .map(|input| input.destination.clone().filter(|arn| !arn.is_empty()))
            };
            on_success = arn_of(&destinations.on_success);
            on_failure = arn_of(&destinations.on_failure);
            let description = format!(
                "DestinationConfig(onSuccess={}, onFailure={})",
                describe("OnSuccess", on_success.as_ref()),
                describe("OnFailure", on_failure.as_ref()),
            );
            for (arn, field, on_failure_only_allowed) in [
                (on_success.clone().flatten(), "onSuccess", false),
                (on_failure.clone().flatten(), "onFailure", true),
            ] {
                if let Some(arn) = arn {
                    self.validate_destination(
                        function_name,
                        &arn,
                        field,
                        on_failure_only_allowed,
                        &description,
                    )?;
                }
            }
        }
        Ok(Changes {
            maximum_retry_attempts,
            maximum_event_age_seconds,
            on_success,
            on_failure,
        })
    }

    fn validate_destination(
        &self,
        function_name: &str,
        arn: &str,
        field: &str,
        is_on_failure: bool,
        description: &str,
    ) -> Result<(), ApiError> {
        let parts: Vec<&str> = arn.splitn(6, ':').collect();
        let well_formed = arn.len() <= 350
            && parts.len() == 6
            && parts[0] == "arn"
            && parts[1].starts_with("aws")
            && !parts[2].is_empty()
            && (parts[4].is_empty()
                || (parts[4].len() == 12 && parts[4].bytes().all(|b| b.is_ascii_digit())));
        if !well_formed {
            return Err(ApiError::validation(
                arn,
                &format!("destinationConfig.{field}.destination"),
                "Member must satisfy regular expression pattern: \
                 ^$|kafka://([^.]([a-zA-Z0-9\\-_.]{0,61}))?[^.]\\.([^.]([a-zA-Z0-9\\-_.]{0,61}))?[^.]:[0-9]{1,5}|\
                 arn:(aws[a-zA-Z0-9-]*):([a-zA-Z0-9\\-])+:((eusc-)?[a-z]{2}((-gov)|(-iso([a-z]?)))?-[a-z]+-\\d{1})?:(\\d{12})?:(.*)",
            ));
        }
        let invalid_config = || {
            ApiError::invalid_parameter(format!(
                "The provided destination config {description} is invalid."
            ))
        };
        // Past AWS's pattern, the name itself must be one the service allows: it becomes a
        // queue URL, a topic, or a file name in the data dir.
        let parsed = match Arn::parse(arn) {
            Ok(parsed) => parsed,
            Err(ArnError::UnsupportedService(_)) => return Err(invalid_config()),
            Err(error) => {
                return Err(ApiError::validation(
                    arn,
                    &format!("destinationConfig.{field}.destination"),
                    &format!("Member must be a valid destination ARN: {error}"),
                ));
            }
        };
        match parsed.service {
            Service::Sqs | Service::Sns | Service::Events => Ok(()),
            Service::S3 if is_on_failure => Ok(()),
            Service::S3 => Err(invalid_config()),
            Service::Lambda => {
                let target = parsed.resource_name();
                if target == function_name {
                    Err(ApiError::invalid_parameter(
                        "You can't specify the function as a destination for itself.",
                    ))
                } else if self.registry.functions().get(target).is_some() {
                    Ok(())
                } else {
                    Err(ApiError::invalid_parameter(format!(
                        "The destination ARN {arn} is invalid."
                    )))
                }
            }
        }
    }

    fn config_json(&self, name: &str, qualifier: &str, config: &EventInvokeConfig) -> Value {
        let destination = |arn: &Option<String>| match arn {
            Some(arn) => json!({ "Destination": arn }),
            None => json!({}),
        };
        let mut body = json!({
            "LastModified": config.last_modified,
            "FunctionArn": self.registry.location().qualified_function_arn(name, qualifier),
            "DestinationConfig": {
                "OnSuccess": destination(&config.on_success),
                "OnFailure": destination(&config.on_failure),
            },
        });
        if let Some(attempts) = config.maximum_retry_attempts {
            body["MaximumRetryAttempts"] = json!(attempts);
        }
        if let Some(age) = config.maximum_event_age_seconds {
            body["MaximumEventAgeInSeconds"] = json!(age);
        }
        body
    }

    fn no_config(&self, name: &str, qualifier: &str) -> ApiError {
        ApiError::not_found(format!(
            "The function {} doesn't have an EventInvokeConfig",
            self.registry
                .location()
                .qualified_function_arn(name, qualifier)
        ))
    }
}

fn function_does_not_exist() -> ApiError {
    ApiError::new(ErrorCode::ResourceNotFound, "The function doesn't exist.")
}

fn describe(kind: &str, arn: Option<&Option<String>>) -> String {
    match arn {
        Some(Some(arn)) => format!("{kind}(destination={arn})"),
        Some(None) => format!("{kind}(destination=null)"),
        None => "null".to_owned(),
    }
}

/// `Date` shapes are epoch seconds with a fraction.
fn epoch_seconds() -> f64 {
    let now = time::OffsetDateTime::now_utc();
    (now.unix_timestamp_nanos() / 1_000_000) as f64 / 1000.0
}
