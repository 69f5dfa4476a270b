//! Function configuration: the input shapes of CreateFunction / UpdateFunctionConfiguration,
//! their validation in AWS's words, and the `FunctionConfiguration` JSON Lambda returns.

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use invoq_domain::arn::{Arn, ArnError, Service};
use invoq_domain::limits::{
    ENVIRONMENT_MAX_BYTES, MAX_MEMORY_SIZE_MB, MAX_TIMEOUT_SECONDS, MIN_MEMORY_SIZE_MB,
};
use invoq_domain::{ApiError, LATEST, Location};
use invoq_runtime::{
    BUILTIN_HANDLERS, BUILTIN_RUNTIME, MANAGED_RUNTIMES, PROCESS_RUNTIMES, RuntimeError,
    RuntimeService,
};
use serde::Deserialize;
use serde_json::{Value, json};

use invoq_registry::{FunctionRecord, FunctionState, UpdateStatus};

/// Settings CreateFunction and UpdateFunctionConfiguration share. Absent fields keep their
/// current value.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct ConfigurationInput {
    pub(crate) runtime: Option<String>,
    pub(crate) role: Option<String>,
    pub(crate) handler: Option<String>,
    pub(crate) description: Option<String>,
    pub(crate) timeout: Option<i64>,
    pub(crate) memory_size: Option<i64>,
    pub(crate) environment: Option<EnvironmentInput>,
    pub(crate) dead_letter_config: Option<DeadLetterConfigInput>,
    pub(crate) tracing_config: Option<TracingConfigInput>,
    pub(crate) ephemeral_storage: Option<EphemeralStorageInput>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EnvironmentInput {
    pub(crate) variables: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeadLetterConfigInput {
    pub(crate) target_arn: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct TracingConfigInput {
    pub(crate) mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct EphemeralStorageInput {
    pub(crate) size: i64,
}

/// `Code` of CreateFunction, and the body of UpdateFunctionCode.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CodeInput {
    pub(crate) zip_file: Option<String>,
    #[serde(rename = "S3Bucket")]
    pub(crate) s3_bucket: Option<String>,
    pub(crate) image_uri: Option<String>,
}

impl CodeInput {
    /// The decoded, validated zip. `Ok(None)` when no package was given.
    pub(crate) fn zip(&self) -> Result<Option<Vec<u8>>, ApiError> {
        if self.s3_bucket.is_some() || self.image_uri.is_some() {
            return Err(ApiError::invalid_parameter(
                "invoq takes deployment packages as Code.ZipFile only; S3 and container image \
                 code locations are not supported.",
            ));
        }
        let Some(encoded) = &self.zip_file else {
            return Ok(None);
        };
        let zip = BASE64.decode(encoded).map_err(|_| unzip_error())?;
        // `--zip-file` of an empty file, as builtins need no code.
        if zip.is_empty() {
            return Ok(None);
        }
        Ok(Some(zip))
    }
}

/// Lambda's checks of a deployment package before it is stored: a readable zip of at most
/// 250 MB unzipped. Off the async threads: inflating that much takes a moment.
pub(crate) async fn check_package(zip: Vec<u8>) -> Result<Vec<u8>, ApiError> {
    tokio::task::spawn_blocking(move || invoq_runtime::package::check(&zip).map(|_| zip))
        .await
        .map_err(|error| ApiError::service(format!("package check failed: {error}")))?
        .map_err(|error| ApiError::invalid_parameter(error.to_string()))
}

/// Lambda's runtimes that are gone for new functions, with the one AWS recommends instead.
const DEPRECATED_RUNTIMES: [(&str, &str); 14] = [
    ("python2.7", "python3.13"),
    ("python3.6", "python3.13"),
    ("python3.7", "python3.13"),
    ("python3.8", "python3.13"),
    ("nodejs", "nodejs22.x"),
    ("nodejs4.3", "nodejs22.x"),
    ("nodejs4.3-edge", "nodejs22.x"),
    ("nodejs6.10", "nodejs22.x"),
    ("nodejs8.10", "nodejs22.x"),
    ("nodejs10.x", "nodejs22.x"),
    ("nodejs12.x", "nodejs22.x"),
    ("nodejs14.x", "nodejs22.x"),
    ("nodejs16.x", "nodejs22.x"),
    ("go1.x", "provided.al2023"),
];

/// A runtime invoq knows: custom, managed (where the runtime service's host has the
/// interpreter, checked by [`check_host_runtime`]) or builtin.
fn validate_runtime(runtime: &str) -> Result<(), ApiError> {
    if runtime == BUILTIN_RUNTIME
        || PROCESS_RUNTIMES.contains(&runtime)
        || MANAGED_RUNTIMES.contains(&runtime)
    {
        return Ok(());
    }
    if let Some((_, newest)) = DEPRECATED_RUNTIMES.iter().find(|(old, _)| *old == runtime) {
        return Err(ApiError::invalid_parameter(format!(
            "The runtime parameter of {runtime} is no longer supported for creating or updating \
             AWS Lambda functions. We recommend you use the new runtime ({newest}) while \
             creating or updating functions."
        )));
    }
    Err(ApiError::invalid_parameter(format!(
        "Runtime {runtime} is not supported by invoq. Supported runtimes: {}, {} (where the host \
         has the interpreter), {BUILTIN_RUNTIME}.",
        PROCESS_RUNTIMES.join(", "),
        MANAGED_RUNTIMES.join(", ")
    )))
}

/// A managed runtime runs only where its interpreter is: the runtime service says whether
/// its host has it, and which runtimes it offers if not.
pub(crate) async fn check_host_runtime(
    runtime_service: &dyn RuntimeService,
    runtime: Option<&str>,
) -> Result<(), ApiError> {
    let Some(runtime) = runtime.filter(|runtime| MANAGED_RUNTIMES.contains(runtime)) else {
        return Ok(());
    };
    match runtime_service.check_runtime(runtime).await {
        Ok(()) => Ok(()),
        Err(RuntimeError::UnsupportedRuntime(reason)) => Err(ApiError::invalid_parameter(format!(
            "The runtime parameter of {runtime} is not supported on this invoq host: {reason}"
        ))),
        Err(error) => Err(ApiError::service(format!(
            "cannot ask the runtime service whether it runs {runtime}: {error}"
        ))),
    }
}

/// A dead-letter queue is an SQS queue or an SNS topic, named as AWS allows (the name may
/// become a file name in the data dir).
fn validate_dead_letter_target(target_arn: &str) -> Result<(), ApiError> {
    match Arn::parse(target_arn) {
        Ok(arn) if matches!(arn.service, Service::Sqs | Service::Sns) => Ok(()),
        Ok(_) | Err(ArnError::UnsupportedService(_)) => Err(ApiError::invalid_parameter(format!(
            "The target ARN {target_arn} of DeadLetterConfig is not an SQS queue or an SNS topic."
        ))),
        Err(error) => Err(ApiError::validation(
            target_arn,
            "deadLetterConfig.targetArn",
            &format!("Member must be a valid SQS queue or SNS topic ARN: {error}"),
        )),
    }
}

fn unzip_error() -> ApiError {
    ApiError::invalid_parameter(
        "Could not unzip uploaded file. Please check your file, then try to upload again.",
    )
}

impl ConfigurationInput {
    /// Validates every given field and writes it into `record`.
    pub(crate) fn apply(self, record: &mut FunctionRecord) -> Result<(), ApiError> {
        if let Some(runtime) = self.runtime {
            validate_runtime(&runtime)?;
            record.runtime = runtime;
        }
        if let Some(role) = self.role {
            validate_role(&role)?;
            record.role = role;
        }
        if let Some(handler) = self.handler {
            if handler.len() > 128 {
                return Err(ApiError::validation(
                    &handler,
                    "handler",
                    "Member must have length less than or equal to 128",
                ));
            }
            record.handler = handler;
        }
        if record.runtime == BUILTIN_RUNTIME && !BUILTIN_HANDLERS.contains(&record.handler.as_str())
        {
            return Err(ApiError::invalid_parameter(format!(
                "Handler {:?} is not a builtin of {BUILTIN_RUNTIME}: use one of {}.",
                record.handler,
                BUILTIN_HANDLERS.join(", ")
            )));
        }
        if let Some(description) = self.description {
            if description.chars().count() > 256 {
                return Err(ApiError::validation(
                    &description,
                    "description",
                    "Member must have length less than or equal to 256",
                ));
            }
            record.description = description;
        }
        if let Some(timeout) = self.timeout {
            record.timeout_seconds =
                validate_range(timeout, 1, i64::from(MAX_TIMEOUT_SECONDS), "timeout")?;
        }
        if let Some(memory_size) = self.memory_size {
            record.memory_size_mb = validate_range(
                memory_size,
                i64::from(MIN_MEMORY_SIZE_MB),
                i64::from(MAX_MEMORY_SIZE_MB),
                "memorySize",
            )?;
        }
        if let Some(environment) = self.environment {
            let variables = environment.variables.unwrap_or_default();
            validate_environment(&variables)?;
            record.environment = Some(variables);
        }
        if let Some(dead_letter_config) = self.dead_letter_config {
            // An empty TargetArn clears the setting, as the AWS CLI does with `TargetArn=`.
            let target_arn = dead_letter_config.target_arn.filter(|arn| !arn.is_empty());
            if let Some(target_arn) = &target_arn {
                validate_dead_letter_target(target_arn)?;
            }
            record.dead_letter_target_arn = target_arn;
        }
        if let Some(tracing_config) = self.tracing_config {
            let mode = tracing_config
                .mode
                .unwrap_or_else(|| "PassThrough".to_owned());
            if mode != "Active" && mode != "PassThrough" {
                return Err(ApiError::validation(
                    &mode,
                    "tracingConfig.mode",
                    "Member must satisfy enum value set: [Active, PassThrough]",
                ));
            }
            record.tracing_mode = mode;
        }
        if let Some(ephemeral_storage) = self.ephemeral_storage {
            record.ephemeral_storage_mb =
                validate_range(ephemeral_storage.size, 512, 10_240, "ephemeralStorage.size")?;
        }
        Ok(())
    }
}

pub(crate) fn validate_range(value: i64, min: i64, max: i64, field: &str) -> Result<u32, ApiError> {
    if value < min {
        return Err(ApiError::validation(
            value,
            field,
            &format!("Member must have value greater than or equal to {min}"),
        ));
    }
    if value > max {
        return Err(ApiError::validation(
            value,
            field,
            &format!("Member must have value less than or equal to {max}"),
        ));
    }
    Ok(value as u32)
}

fn validate_role(role: &str) -> Result<(), ApiError> {
    let valid = role.starts_with("arn:aws")
        && role
            .split_once(":iam::")
            .and_then(|(_, rest)| rest.split_once(":role/"))
            .is_some_and(|(account, name)| {
                account.len() == 12
                    && account.bytes().all(|b| b.is_ascii_digit())
                    && !name.is_empty()
            });
    if valid {
        return Ok(());
    }
    Err(ApiError::validation(
        role,
        "role",
        "Member must satisfy regular expression pattern: \
         arn:(aws[a-zA-Z-]*)?:iam::\\d{12}:role/?[a-zA-Z_0-9+=,.@\\-_/]+",
    ))
}

/// Variables Lambda sets itself and refuses to let users override.
const RESERVED_VARIABLES: [&str; 16] = [
    "_HANDLER",
    "_X_AMZN_TRACE_ID",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_EXECUTION_ENV",
    "AWS_LAMBDA_FUNCTION_NAME",
    "AWS_LAMBDA_FUNCTION_MEMORY_SIZE",
    "AWS_LAMBDA_FUNCTION_VERSION",
    "AWS_LAMBDA_INITIALIZATION_TYPE",
    "AWS_LAMBDA_LOG_GROUP_NAME",
    "AWS_LAMBDA_LOG_STREAM_NAME",
    "AWS_ACCESS_KEY",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_LAMBDA_RUNTIME_API",
];

fn validate_environment(variables: &BTreeMap<String, String>) -> Result<(), ApiError> {
    let reserved: Vec<&str> = variables
        .keys()
        .map(String::as_str)
        .filter(|name| RESERVED_VARIABLES.contains(name))
        .collect();
    if !reserved.is_empty() {
        return Err(ApiError::invalid_parameter(format!(
            "Lambda was unable to configure your environment variables because the environment \
             variables you have provided contains reserved keys that are currently not supported \
             for modification. Reserved keys used in this request: {}",
            reserved.join(",")
        )));
    }
    let size = serde_json::to_string(variables)
        .map(|json| json.len())
        .unwrap_or(usize::MAX);
    if size > ENVIRONMENT_MAX_BYTES {
        return Err(ApiError::invalid_parameter(
            "Lambda was unable to configure your environment variables because the environment \
             variables you have provided exceeded the 4KB limit.",
        ));
    }
    Ok(())
}

/// Lambda's `FunctionConfiguration` shape.
pub(crate) fn configuration_json(record: &FunctionRecord, location: &Location) -> Value {
    let mut configuration = json!({
        "FunctionName": record.name,
        "FunctionArn": location.function_arn(&record.name),
        "Runtime": record.runtime,
        "Role": record.role,
        "Handler": record.handler,
        "CodeSize": record.code.size,
        "Description": record.description,
        "Timeout": record.timeout_seconds,
        "MemorySize": record.memory_size_mb,
        "LastModified": record.last_modified,
        "CodeSha256": record.code.sha256_base64,
        "Version": LATEST,
        "TracingConfig": { "Mode": record.tracing_mode },
        "RevisionId": record.revision_id,
        "PackageType": "Zip",
        "Architectures": record.architectures,
        "EphemeralStorage": { "Size": record.ephemeral_storage_mb },
        "SnapStart": { "ApplyOn": "None", "OptimizationStatus": "Off" },
        "LoggingConfig": { "LogFormat": "Text", "LogGroup": format!("/aws/lambda/{}", record.name) },
    });
    let fields = configuration
        .as_object_mut()
        .expect("configuration is an object");
    if let Some(variables) = &record.environment {
        fields.insert("Environment".into(), json!({ "Variables": variables }));
    }
    if let Some(target_arn) = &record.dead_letter_target_arn {
        fields.insert(
            "DeadLetterConfig".into(),
            json!({ "TargetArn": target_arn }),
        );
    }
    let (state, reason, reason_code) = match record.state {
        FunctionState::Pending => (
            "Pending",
            Some("The function is being created.".to_owned()),
            Some("Creating"),
        ),
        FunctionState::Active => ("Active", None, None),
        FunctionState::Failed => (
            "Failed",
            record.failure_reason.clone(),
            Some("InternalError"),
        ),
    };
    fields.insert("State".into(), state.into());
    if let Some(reason) = reason {
        fields.insert("StateReason".into(), reason.into());
    }
    if let Some(reason_code) = reason_code {
        fields.insert("StateReasonCode".into(), reason_code.into());
    }
    if let Some(status) = record.last_update_status {
        let status = match status {
            UpdateStatus::InProgress => "InProgress",
            UpdateStatus::Successful => "Successful",
            UpdateStatus::Failed => "Failed",
        };
        fields.insert("LastUpdateStatus".into(), status.into());
        if let (Some(reason), "Failed") = (&record.failure_reason, status) {
            fields.insert("LastUpdateStatusReason".into(), reason.clone().into());
            fields.insert("LastUpdateStatusReasonCode".into(), "InternalError".into());
        }
    }
    configuration
}
