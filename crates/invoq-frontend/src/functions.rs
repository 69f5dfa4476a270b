//! Control-plane operations on functions (lambda-spec.md §7): Create, Get, GetConfiguration,
//! List, UpdateConfiguration, UpdateCode, Delete, Put/Get/Delete FunctionConcurrency and
//! Put/Get FunctionRecursionConfig.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use invoq_domain::limits::{ACCOUNT_CONCURRENCY, MIN_UNRESERVED_CONCURRENCY};
use invoq_domain::recursion::RecursiveLoop;
use invoq_domain::{ApiError, FunctionRef, Qualifier};
use invoq_runtime::BUILTIN_RUNTIME;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::Frontend;
use crate::configuration::{
    CodeInput, ConfigurationInput, check_host_runtime, check_package, configuration_json,
};
use crate::http::{ApiResult, ErrorResponse, json_response, parse_json_body};
use invoq_registry::FunctionRecord;

#[derive(Debug, Deserialize)]
pub(crate) struct QualifierQuery {
    #[serde(rename = "Qualifier")]
    pub(crate) qualifier: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct CreateFunctionRequest {
    function_name: Option<String>,
    code: Option<CodeInput>,
    publish: Option<bool>,
    package_type: Option<String>,
    tags: Option<BTreeMap<String, String>>,
    architectures: Option<Vec<String>>,
    #[serde(flatten)]
    configuration: ConfigurationInput,
}

pub(crate) async fn create(State(frontend): State<Arc<Frontend>>, body: Bytes) -> ApiResult {
    let request: CreateFunctionRequest = parse_json_body(&body)?;
    let function_name = request
        .function_name
        .ok_or_else(|| missing("functionName"))?;
    let function = FunctionRef::parse(&function_name, None)?;
    if function.qualifier.is_some() {
        return Err(ApiError::invalid_parameter(format!(
            "{function_name} names a version or alias; CreateFunction takes an unqualified name."
        ))
        .into());
    }
    if request
        .package_type
        .as_deref()
        .is_some_and(|package_type| package_type != "Zip")
    {
        return Err(ApiError::invalid_parameter(
            "invoq runs Zip packages only; PackageType Image is not supported.",
        )
        .into());
    }
    reject_publish(request.publish)?;
    if request.configuration.role.is_none() {
        return Err(missing("role").into());
    }
    if request.configuration.runtime.is_none() {
        return Err(ApiError::invalid_parameter(
            "Runtime and Handler are mandatory parameters for functions created with deployment \
             packages.",
        )
        .into());
    }
    let zip = match request.code.unwrap_or_default().zip()? {
        Some(zip) => Some(check_package(zip).await?),
        None => None,
    };
    let is_builtin = request.configuration.runtime.as_deref() == Some(BUILTIN_RUNTIME);
    if zip.is_none() && !is_builtin {
        return Err(
            ApiError::invalid_parameter("Please provide a source for function code.").into(),
        );
    }
    let code = frontend
        .registry
        .functions()
        .put_code(zip.as_deref().unwrap_or_default())?;
    let mut record = FunctionRecord::new(&function.name, code);
    record.tags = request.tags.unwrap_or_default();
    if let Some(architectures) = request.architectures {
        record.architectures = validate_architectures(architectures)?;
    }
    check_host_runtime(
        frontend.runtime.as_ref(),
        request.configuration.runtime.as_deref(),
    )
    .await?;
    request.configuration.apply(&mut record)?;
    let record = frontend.registry.functions().create(record)?;
    frontend.registry.deploy_in_background(record.name.clone());
    Ok(json_response(
        StatusCode::CREATED,
        &configuration_json(&record, frontend.registry.location()),
    ))
}

pub(crate) async fn get(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    Query(query): Query<QualifierQuery>,
    headers: HeaderMap,
) -> ApiResult {
    let record = frontend.find(&function_name, query.qualifier.as_deref())?;
    let host = headers
        .get("host")
        .and_then(|host| host.to_str().ok())
        .unwrap_or("127.0.0.1");
    let mut response = json!({
        "Configuration": configuration_json(&record, frontend.registry.location()),
        "Code": {
            "RepositoryType": "S3",
            "Location": format!("http://{host}/invoq/code/{}", record.code.sha256_hex),
        },
    });
    if !record.tags.is_empty() {
        response["Tags"] = json!(record.tags);
    }
    if let Some(reserved) = record.reserved_concurrency {
        response["Concurrency"] = json!({ "ReservedConcurrentExecutions": reserved });
    }
    Ok(json_response(StatusCode::OK, &response))
}

pub(crate) async fn get_configuration(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    Query(query): Query<QualifierQuery>,
) -> ApiResult {
    let record = frontend.find(&function_name, query.qualifier.as_deref())?;
    Ok(json_response(
        StatusCode::OK,
        &configuration_json(&record, frontend.registry.location()),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ListQuery {
    marker: Option<String>,
    max_items: Option<i64>,
}

/// ListFunctions returns at most this many functions per page, whatever MaxItems says.
const LIST_PAGE_LIMIT: usize = 50;

pub(crate) async fn list(
    State(frontend): State<Arc<Frontend>>,
    Query(query): Query<ListQuery>,
) -> ApiResult {
    let max_items = match query.max_items {
        None => LIST_PAGE_LIMIT,
        Some(max_items @ 1..=10_000) => (max_items as usize).min(LIST_PAGE_LIMIT),
        Some(max_items) => {
            let constraint = if max_items < 1 {
                "Member must have value greater than or equal to 1"
            } else {
                "Member must have value less than or equal to 10000"
            };
            return Err(ApiError::validation(max_items, "maxItems", constraint).into());
        }
    };
    let marker = query.marker.filter(|marker| !marker.is_empty());
    let (page, more) = frontend
        .registry
        .functions()
        .list(marker.as_deref(), max_items);
    let mut response = json!({
        "Functions": page
            .iter()
            .map(|record| configuration_json(record, frontend.registry.location()))
            .collect::<Vec<Value>>(),
    });
    if more && let Some(last) = page.last() {
        response["NextMarker"] = json!(last.name);
    }
    Ok(json_response(StatusCode::OK, &response))
}

pub(crate) async fn update_configuration(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    body: Bytes,
) -> ApiResult {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct UpdateConfigurationRequest {
        revision_id: Option<String>,
        #[serde(flatten)]
        configuration: ConfigurationInput,
    }
    let request: UpdateConfigurationRequest = parse_json_body(&body)?;
    check_host_runtime(
        frontend.runtime.as_ref(),
        request.configuration.runtime.as_deref(),
    )
    .await?;
    let record = frontend.update_latest(&function_name, request.revision_id, |record| {
        request.configuration.apply(record)
    })?;
    Ok(json_response(
        StatusCode::OK,
        &configuration_json(&record, frontend.registry.location()),
    ))
}

pub(crate) async fn update_code(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    body: Bytes,
) -> ApiResult {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct UpdateCodeRequest {
        revision_id: Option<String>,
        publish: Option<bool>,
        dry_run: Option<bool>,
        architectures: Option<Vec<String>>,
        #[serde(flatten)]
        code: CodeInput,
    }
    let request: UpdateCodeRequest = parse_json_body(&body)?;
    reject_publish(request.publish)?;
    let zip = request
        .code
        .zip()?
        .ok_or_else(|| ApiError::invalid_parameter("Please provide a source for function code."))?;
    let zip = check_package(zip).await?;
    let architectures = request
        .architectures
        .map(validate_architectures)
        .transpose()?;
    if request.dry_run == Some(true) {
        let record = frontend.find(&function_name, None)?;
        return Ok(json_response(
            StatusCode::OK,
            &configuration_json(&record, frontend.registry.location()),
        ));
    }
    let code = frontend.registry.functions().put_code(&zip)?;
    let record = frontend.update_latest(&function_name, request.revision_id, |record| {
        record.code = code;
        if let Some(architectures) = architectures {
            record.architectures = architectures;
        }
        Ok(())
    })?;
    Ok(json_response(
        StatusCode::OK,
        &configuration_json(&record, frontend.registry.location()),
    ))
}

pub(crate) async fn delete(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    Query(query): Query<QualifierQuery>,
) -> ApiResult {
    let function = FunctionRef::parse(&function_name, query.qualifier.as_deref())?;
    match &function.qualifier {
        None => {}
        Some(Qualifier::Latest) => {
            return Err(ApiError::invalid_parameter(
                "$LATEST version cannot be deleted without deleting the function.",
            )
            .into());
        }
        Some(other) => {
            return Err(frontend
                .not_found(&function.name, Some(&other.to_string()))
                .into());
        }
    }
    match frontend.registry.functions().delete(&function.name)? {
        Some(_) => Ok(StatusCode::NO_CONTENT.into_response()),
        None => Err(frontend.not_found(&function.name, None).into()),
    }
}

pub(crate) async fn put_concurrency(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    body: Bytes,
) -> ApiResult {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct PutConcurrencyRequest {
        reserved_concurrent_executions: Option<i64>,
    }
    let request: PutConcurrencyRequest = parse_json_body(&body)?;
    let reserved = request
        .reserved_concurrent_executions
        .ok_or_else(|| missing("reservedConcurrentExecutions"))?;
    if reserved < 0 {
        return Err(ApiError::validation(
            reserved,
            "reservedConcurrentExecutions",
            "Member must have value greater than or equal to 0",
        )
        .into());
    }
    let record = frontend.find(&function_name, None)?;
    let reserved_elsewhere = i64::from(
        frontend
            .registry
            .functions()
            .reserved_concurrency_except(&record.name),
    );
    if reserved_elsewhere + reserved > i64::from(ACCOUNT_CONCURRENCY - MIN_UNRESERVED_CONCURRENCY) {
        return Err(ApiError::invalid_parameter(format!(
            "Specified ReservedConcurrentExecutions for function decreases account's \
             UnreservedConcurrentExecution below its minimum value of [{MIN_UNRESERVED_CONCURRENCY}]."
        ))
        .into());
    }
    let reserved = reserved as u32;
    frontend.set_setting(&record.name, |record| {
        record.reserved_concurrency = Some(reserved)
    })?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "ReservedConcurrentExecutions": reserved }),
    ))
}

pub(crate) async fn get_concurrency(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
) -> ApiResult {
    let record = frontend.find(&function_name, None)?;
    let body = match record.reserved_concurrency {
        Some(reserved) => json!({ "ReservedConcurrentExecutions": reserved }),
        None => json!({}),
    };
    Ok(json_response(StatusCode::OK, &body))
}

pub(crate) async fn delete_concurrency(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
) -> ApiResult {
    let record = frontend.find(&function_name, None)?;
    frontend.set_setting(&record.name, |record| record.reserved_concurrency = None)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GetFunctionRecursionConfig`: `GET /2024-08-31/functions/{FunctionName}/recursion-config`.
pub(crate) async fn get_recursion_config(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
) -> ApiResult {
    let record = frontend.find(&function_name, None)?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "RecursiveLoop": record.recursive_loop.as_str() }),
    ))
}

/// `PutFunctionRecursionConfig`: `PUT /2024-08-31/functions/{FunctionName}/recursion-config`
/// with `{"RecursiveLoop": "Allow" | "Terminate"}`.
pub(crate) async fn put_recursion_config(
    State(frontend): State<Arc<Frontend>>,
    Path(function_name): Path<String>,
    body: Bytes,
) -> ApiResult {
    #[derive(Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct PutRecursionConfigRequest {
        recursive_loop: Option<String>,
    }
    let request: PutRecursionConfigRequest = parse_json_body(&body)?;
    let value = request
        .recursive_loop
        .ok_or_else(|| missing("recursiveLoop"))?;
    let recursive_loop = RecursiveLoop::parse(&value).ok_or_else(|| {
        ApiError::validation(
            &value,
            "recursiveLoop",
            "Member must satisfy enum value set: [Allow, Terminate]",
        )
    })?;
    let record = frontend.find(&function_name, None)?;
    frontend.set_setting(&record.name, |record| {
        record.recursive_loop = recursive_loop
    })?;
    Ok(json_response(
        StatusCode::OK,
        &json!({ "RecursiveLoop": recursive_loop.as_str() }),
    ))
}

/// The deployment package behind GetFunction's `Code.Location`.
pub(crate) async fn download_code(
    State(frontend): State<Arc<Frontend>>,
    Path(code_sha256_hex): Path<String>,
) -> Response {
    let is_digest = code_sha256_hex.len() == 64
        && code_sha256_hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
    match is_digest.then(|| frontend.registry.functions().code(&code_sha256_hex)) {
        Some(Ok(zip)) => ([("content-type", "application/zip")], zip).into_response(),
        _ => StatusCode::NOT_FOUND.into_response(),
    }
}

impl Frontend {
    /// The function a control-plane call names. Only `$LATEST` exists: any other qualifier
    /// is not found.
    pub(crate) fn find(
        &self,
        function_name: &str,
        qualifier: Option<&str>,
    ) -> Result<Arc<FunctionRecord>, ApiError> {
        let function = FunctionRef::parse(function_name, qualifier)?;
        let qualifier = function.qualifier.as_ref().map(ToString::to_string);
        match (
            &function.qualifier,
            self.registry.functions().get(&function.name),
        ) {
            (None | Some(Qualifier::Latest), Some(record)) => Ok(record),
            _ => Err(self.not_found(&function.name, qualifier.as_deref())),
        }
    }

    /// Changes a function-level setting (reserved concurrency, recursion config) at once: such
    /// settings need no deployment and keep the revision.
    pub(crate) fn set_setting(
        &self,
        name: &str,
        change: impl FnOnce(&mut FunctionRecord),
    ) -> Result<(), ApiError> {
        self.registry
            .functions()
            .update(name, |record| {
                change(record);
                Ok(())
            })?
            .map(drop)
            .ok_or_else(|| self.not_found(name, None))
    }

    /// Applies a change to `$LATEST` as UpdateFunctionConfiguration / UpdateFunctionCode do:
    /// refused while the previous change is still deploying or when `RevisionId` is stale,
    /// then deployed in the background.
    fn update_latest(
        self: &Arc<Self>,
        function_name: &str,
        expected_revision_id: Option<String>,
        change: impl FnOnce(&mut FunctionRecord) -> Result<(), ApiError>,
    ) -> Result<FunctionRecord, ErrorResponse> {
        let current = self.find(function_name, None)?;
        let function_arn = self.registry.location().function_arn(&current.name);
        let updated = self.registry.functions().update(&current.name, |record| {
            if record.is_settling() {
                return Err(ApiError::conflict(format!(
                    "The operation cannot be performed at this time. An update is in progress \
                     for resource: {function_arn}"
                )));
            }
            if expected_revision_id
                .as_ref()
                .is_some_and(|expected| *expected != record.revision_id)
            {
                return Err(ApiError::new(
                    invoq_domain::ErrorCode::PreconditionFailed,
                    "The Revision Id provided does not match the latest Revision Id. Call the \
                     GetFunction/GetAlias API to retrieve the latest Revision Id",
                ));
            }
            change(record)?;
            record.mark_updated();
            Ok(())
        })?;
        let updated = updated.ok_or_else(|| self.not_found(&current.name, None))?;
        self.registry.deploy_in_background(updated.name.clone());
        Ok(updated)
    }
}

fn reject_publish(publish: Option<bool>) -> Result<(), ApiError> {
    if publish == Some(true) {
        return Err(ApiError::invalid_parameter(
            "invoq does not publish function versions: call without Publish, and invoke $LATEST.",
        ));
    }
    Ok(())
}

fn validate_architectures(architectures: Vec<String>) -> Result<Vec<String>, ApiError> {
    match architectures.as_slice() {
        [architecture] if architecture == "x86_64" || architecture == "arm64" => Ok(architectures),
        _ => Err(ApiError::validation(
            format!("{architectures:?}"),
            "architectures",
            "Member must have length less than or equal to 1, Member must satisfy enum value \
             set: [x86_64, arm64]",
        )),
    }
}

fn missing(field: &str) -> ApiError {
    ApiError::new(
        invoq_domain::ErrorCode::Validation,
        format!(
            "1 validation error detected: Value null at '{field}' failed to satisfy constraint: \
             Member must not be null"
        ),
    )
}
