//! The registry in this process: the function and mapping stores in the data directory,
//! the deployments that settle a function's changes, and [`LocalRegistry::accept_event`],
//! the one write point of asynchronous invokes.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use invoq_domain::asynchronous::{
    EVENT_PAYLOAD_MAX_BYTES, JsonText, QueueMessage, QueuedInvocation, now_ms,
};
use invoq_domain::event_source::EventSourceMapping;
use invoq_domain::{ApiError, ErrorCode, FunctionRef, LATEST, Location, Qualifier};
use invoq_queue::{EventQueue, INVOCATIONS, QueueError, QueueItem};
use invoq_runtime::{RuntimeError, RuntimeService};
use prometheus_client::metrics::counter::Counter;
use tokio::sync::watch;

use crate::function_store::{FunctionRecord, FunctionState, FunctionStore, UpdateStatus};
use crate::mapping_store::MappingStore;
use crate::{AsyncConfiguration, Registry, RegistryError};

/// How often a deployment is tried while the runtime cannot be reached.
const SETTLE_ATTEMPTS: u32 = 30;

/// The registry's stores, the runtime its functions deploy to and the queue their Event
/// invocations go to.
pub struct LocalRegistry {
    location: Location,
    functions: FunctionStore,
    mappings: MappingStore,
    runtime: Arc<dyn RuntimeService>,
    /// Where Event invocations go: in process, the queue service, or SQS.
    queue: Arc<dyn EventQueue>,
    counters: AcceptCounters,
}

/// What [`LocalRegistry::accept_event`] has done, for `/metrics`.
#[derive(Debug, Default)]
pub struct AcceptCounters {
    /// Event invocations written to the queue.
    pub events_accepted: Counter,
    /// Event invocations refused because the queue is full (429). The frontend counts its
    /// synchronous throttles on the same counter.
    pub throttles: Counter,
}

/// An asynchronous invoke, as [`LocalRegistry::accept_event`] takes it.
#[derive(Debug)]
pub struct EventInvoke<'a> {
    pub request_id: &'a str,
    /// The function as the caller named it; its qualifier is part of the invoked ARN.
    pub function: &'a FunctionRef,
    /// The event, checked to be JSON.
    pub payload: JsonText,
    /// The payload's size as the caller sent it, which Lambda's limit counts (the JSON text
    /// kept drops surrounding whitespace).
    pub payload_bytes: usize,
    /// Invocations of the event's chain before this one.
    pub chain_depth: u32,
}

impl LocalRegistry {
    /// Opens the stores in `data_dir` and resumes the deployments a restart cut short.
    pub fn open(
        location: Location,
        data_dir: &Path,
        runtime: Arc<dyn RuntimeService>,
        queue: Arc<dyn EventQueue>,
    ) -> std::io::Result<Arc<Self>> {
        let registry = Arc::new(LocalRegistry {
            location,
            functions: FunctionStore::open(data_dir)?,
            mappings: MappingStore::open(data_dir)?,
            runtime,
            queue,
            counters: AcceptCounters::default(),
        });
        for name in registry.functions.settling() {
            registry.deploy_in_background(name);
        }
        Ok(registry)
    }

    pub fn location(&self) -> &Location {
        &self.location
    }

    pub fn functions(&self) -> &FunctionStore {
        &self.functions
    }

    pub fn mappings(&self) -> &MappingStore {
        &self.mappings
    }

    pub fn counters(&self) -> &AcceptCounters {
        &self.counters
    }

    /// Lambda's error for a function (or a qualifier of it) that does not exist.
    pub fn not_found(&self, name: &str, qualifier: Option<&str>) -> ApiError {
        let arn = match qualifier {
            Some(qualifier) => self.location.qualified_function_arn(name, qualifier),
            None => self.location.function_arn(name),
        };
        ApiError::not_found(format!("Function not found: {arn}"))
    }

    /// Deploys the function's latest change in the background (after every create and code
    /// or configuration update): it ends Active / Successful, or Failed.
    pub fn deploy_in_background(self: &Arc<Self>, name: String) {
        tokio::spawn(self.clone().settle(name));
    }

    async fn settle(self: Arc<Self>, name: String) {
        let Some(record) = self.functions.get(&name) else {
            return;
        };
        let mut outcome = Ok(());
        for attempt in 1..=SETTLE_ATTEMPTS {
            outcome = self.deploy(&record).await;
            // Only an unreachable runtime is worth waiting for.
            if !matches!(outcome, Err(RuntimeError::Internal(_))) || attempt == SETTLE_ATTEMPTS {
                break;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        let settled = self.functions.update(&name, |current| {
            // A newer change came in meanwhile; its own settle finishes it.
            if current.revision_id != record.revision_id {
                return Ok(());
            }
            let failed = outcome.as_ref().err().map(ToString::to_string);
            current.failure_reason = failed.clone();
            if current.state == FunctionState::Pending {
                current.state = if failed.is_some() {
                    FunctionState::Failed
                } else {
                    FunctionState::Active
                };
            }
            if current.last_update_status.is_some() {
                current.last_update_status = Some(if failed.is_some() {
                    UpdateStatus::Failed
                } else {
                    UpdateStatus::Successful
                });
            }
            Ok(())
        });
        if let Err(error) = settled {
            tracing::error!(function = %name, %error, "cannot record deployment outcome");
        }
    }

    /// Hands the runtime the function's code and readies its runtime (a managed runtime's
    /// interface client is installed on first use).
    async fn deploy(&self, record: &FunctionRecord) -> Result<(), RuntimeError> {
        if let Some(code_sha256_hex) = record.deployed_code() {
            let zip = self.code_now(code_sha256_hex)?;
            self.runtime.put_code(code_sha256_hex, zip).await?;
        }
        // Only a managed runtime has anything to prepare; the others ask nothing of the
        // runtime service until they run.
        if invoq_runtime::MANAGED_RUNTIMES.contains(&record.runtime.as_str()) {
            self.runtime.prepare_runtime(&record.runtime).await?;
        }
        Ok(())
    }

    /// A stored deployment package, by hex SHA-256.
    pub fn code_now(&self, code_sha256_hex: &str) -> Result<Bytes, RuntimeError> {
        self.functions
            .code(code_sha256_hex)
            .map_err(|error| RuntimeError::Internal(error.message))
    }

    /// The function's async configuration now. Only `$LATEST` exists.
    pub fn async_configuration_now(
        &self,
        function_name: &str,
        qualifier: &str,
    ) -> Option<AsyncConfiguration> {
        let record = self
            .functions
            .get(function_name)
            .filter(|_| qualifier == LATEST)?;
        Some(AsyncConfiguration {
            spec: record.spec(&self.location),
            event_invoke_config: record.event_invoke_configs.get(qualifier).cloned(),
            dead_letter_target_arn: record.dead_letter_target_arn.clone(),
            recursive_loop: record.recursive_loop,
        })
    }

    /// Writes an Event invocation to the durable queue: on disk (or in SQS) when this
    /// returns `Ok`. Every asynchronous invoke comes through here, whoever makes it, and
    /// meets the same checks: the function exists and is Active, the payload is within
    /// Lambda's limit, the queue has room.
    pub async fn accept_event(&self, event: EventInvoke<'_>) -> Result<(), ApiError> {
        let function = event.function;
        let qualifier = function.qualifier_or_latest();
        let record = match (&qualifier, self.functions.get(&function.name)) {
            (Qualifier::Latest, Some(record)) => record,
            _ => return Err(self.not_found(&function.name, Some(&qualifier.to_string()))),
        };
        record.check_active()?;
        let payload_bytes = event.payload_bytes;
        if payload_bytes > EVENT_PAYLOAD_MAX_BYTES {
            return Err(ApiError::new(
                ErrorCode::RequestEntityTooLarge,
                format!(
                    "{payload_bytes} byte payload is too large for the Event invocation type \
                     (limit {EVENT_PAYLOAD_MAX_BYTES} bytes)"
                ),
            ));
        }
        let invoked_function_arn = match &function.qualifier {
            Some(qualifier) => self
                .location
                .qualified_function_arn(&record.name, &qualifier.to_string()),
            None => self.location.function_arn(&record.name),
        };
        let queued = QueuedInvocation {
            request_id: event.request_id.to_owned(),
            function_name: record.name.clone(),
            qualifier: LATEST.to_owned(),
            invoked_function_arn,
            payload: event.payload,
            accepted_at_ms: now_ms(),
            attempts: 0,
            throttles: 0,
            chain_depth: event.chain_depth,
        };
        let item = QueueItem {
            id: event.request_id.to_owned(),
            body: Bytes::from(queued.encode()),
        };
        match self.queue.enqueue(INVOCATIONS, item, Duration::ZERO).await {
            Ok(()) => {
                self.counters.events_accepted.inc();
                Ok(())
            }
            Err(QueueError::Full { .. }) => {
                self.counters.throttles.inc();
                Err(ApiError::new(ErrorCode::TooManyRequests, "Rate Exceeded."))
            }
            // The queue backend (SQS) cannot hold the event with its metadata.
            Err(QueueError::TooLarge { size, limit }) => Err(ApiError::new(
                ErrorCode::SerializedRequestEntityTooLarge,
                format!(
                    "{payload_bytes} byte payload is too large for the Event invocation type once \
                     serialized ({size} bytes, limit {limit} bytes)"
                ),
            )),
            // Nothing was stored: the caller may retry (SDKs retry 5xx), never a 202.
            Err(error) => {
                tracing::error!(%error, "cannot enqueue an event");
                Err(ApiError::new(
                    ErrorCode::ServiceUnavailable,
                    format!("The event could not be stored: {error}"),
                ))
            }
        }
    }
}

#[async_trait]
impl Registry for LocalRegistry {
    async fn async_configuration(
        &self,
        function_name: &str,
        qualifier: &str,
    ) -> Result<Option<AsyncConfiguration>, RegistryError> {
        Ok(self.async_configuration_now(function_name, qualifier))
    }

    async fn code(&self, code_sha256_hex: &str) -> Result<Bytes, RegistryError> {
        self.functions
            .code(code_sha256_hex)
            .map_err(|error| RegistryError::Unavailable(error.message))
    }

    /// A function destination's invoke: of `$LATEST` whatever the ARN's qualifier, as
    /// before versions existed.
    async fn invoke_event(
        &self,
        function_arn: &str,
        event: &str,
        request_id: &str,
        chain_depth: u32,
    ) -> Result<(), RegistryError> {
        let refused = |error: ApiError| RegistryError::Refused(error.message);
        let named = FunctionRef::parse(function_arn, None).map_err(refused)?;
        let function = FunctionRef {
            name: named.name,
            qualifier: None,
        };
        let request_id = if request_id.is_empty() {
            invoq_domain::new_request_id()
        } else {
            request_id.to_owned()
        };
        let payload = JsonText::parse(event.as_bytes())
            .map_err(|error| RegistryError::Refused(error.to_string()))?;
        self.accept_event(EventInvoke {
            request_id: &request_id,
            function: &function,
            payload,
            payload_bytes: event.len(),
            chain_depth,
        })
        .await
        .map_err(|error| match error.code {
            ErrorCode::ServiceUnavailable | ErrorCode::TooManyRequests => {
                RegistryError::Unavailable(error.message)
            }
            _ => RegistryError::Refused(error.message),
        })
    }

    fn watch_mappings(&self) -> watch::Receiver<Vec<EventSourceMapping>> {
        self.mappings.subscribe()
    }
}
