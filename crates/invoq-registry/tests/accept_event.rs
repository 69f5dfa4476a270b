//! The one write point of asynchronous invokes, on the in-memory queue and a real runtime:
//! what it refuses (in Lambda's words), what it writes, and the function-destination path
//! through the [`Registry`] trait.

use std::sync::Arc;
use std::time::Duration;

use invoq_domain::asynchronous::{JsonText, QueueMessage, QueuedInvocation};
use invoq_domain::{ErrorCode, FunctionRef, Location};
use invoq_queue::{EmbeddedQueue, EmbeddedQueueOptions, EventQueue, INVOCATIONS};
use invoq_registry::{
    EventInvoke, FunctionRecord, FunctionState, LocalRegistry, Registry, RegistryError,
};
use invoq_runtime::{
    BUILTIN_RUNTIME, LocalRuntime, RuntimeService, SandboxIsolation, SandboxOptions,
};

const ARN: &str = "arn:aws:lambda:us-east-1:000000000000:function";

struct Setup {
    registry: Arc<LocalRegistry>,
    queue: Arc<dyn EventQueue>,
    _data: tempfile::TempDir,
}

async fn setup(max_depth: u64) -> Setup {
    let data = tempfile::tempdir().unwrap();
    let sandbox = SandboxOptions {
        isolation: SandboxIsolation::Process,
        ..SandboxOptions::default()
    };
    let runtime: Arc<dyn RuntimeService> = Arc::new(
        LocalRuntime::open(data.path(), Duration::from_secs(60), sandbox)
            .await
            .unwrap(),
    );
    let options = EmbeddedQueueOptions {
        max_depth,
        ..EmbeddedQueueOptions::default()
    };
    let queue: Arc<dyn EventQueue> = Arc::new(EmbeddedQueue::in_memory(options).unwrap());
    let location = Location {
        region: "us-east-1".into(),
        account_id: "000000000000".into(),
    };
    let registry = LocalRegistry::open(location, data.path(), runtime, queue.clone()).unwrap();
    Setup {
        registry,
        queue,
        _data: data,
    }
}

/// A builtin echo function in `state`.
fn function(setup: &Setup, name: &str, state: FunctionState) {
    let code = setup.registry.functions().put_code(b"").unwrap();
    let mut record = FunctionRecord::new(name, code);
    record.runtime = BUILTIN_RUNTIME.into();
    record.handler = "echo".into();
    record.state = state;
    setup.registry.functions().create(record).unwrap();
}

fn named(name: &str) -> FunctionRef {
    FunctionRef::parse(name, None).unwrap()
}

async fn accept(setup: &Setup, function: &FunctionRef, payload: &[u8]) -> Result<(), ErrorCode> {
    setup
        .registry
        .accept_event(EventInvoke {
            request_id: "req-1",
            function,
            payload: JsonText::parse(payload).unwrap(),
            payload_bytes: payload.len(),
            chain_depth: 2,
        })
        .await
        .map_err(|error| error.code)
}

async fn queued(setup: &Setup) -> Vec<QueuedInvocation> {
    let leases = setup
        .queue
        .lease(INVOCATIONS, 10, Duration::from_secs(30), Duration::ZERO)
        .await
        .unwrap();
    leases
        .iter()
        .map(|lease| QueuedInvocation::decode(&lease.item.body).unwrap())
        .collect()
}

#[tokio::test]
async fn an_accepted_event_is_queued_with_its_request_id_and_the_callers_bytes() {
    let setup = setup(100).await;
    function(&setup, "f", FunctionState::Active);
    let payload = br#"{ "order" : 1.50, "z": [1,2] }"#;
    let function = FunctionRef::parse("f", Some("$LATEST")).unwrap();
    accept(&setup, &function, payload).await.unwrap();

    let events = queued(&setup).await;
    assert_eq!(events.len(), 1);
    let event = &events[0];
    assert_eq!(event.request_id, "req-1");
    assert_eq!(event.function_name, "f");
    assert_eq!(event.invoked_function_arn, format!("{ARN}:f:$LATEST"));
    assert_eq!(event.payload.as_str().as_bytes(), payload);
    assert_eq!((event.attempts, event.chain_depth), (0, 2));
    let counters = setup.registry.counters();
    assert_eq!(counters.events_accepted.get(), 1);
}

#[tokio::test]
async fn unknown_functions_and_other_qualifiers_are_not_found() {
    let setup = setup(100).await;
    function(&setup, "f", FunctionState::Active);
    let missing = accept(&setup, &named("nope"), b"{}").await;
    assert_eq!(missing, Err(ErrorCode::ResourceNotFound));
    let version = FunctionRef::parse("f", Some("1")).unwrap();
    let error = setup
        .registry
        .accept_event(EventInvoke {
            request_id: "req-1",
            function: &version,
            payload: JsonText::parse(b"{}").unwrap(),
            payload_bytes: 2,
            chain_depth: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(error.message, format!("Function not found: {ARN}:f:1"));
    assert!(queued(&setup).await.is_empty());
}

#[tokio::test]
async fn a_function_that_is_not_active_is_refused_with_its_state() {
    let setup = setup(100).await;
    function(&setup, "pending", FunctionState::Pending);
    function(&setup, "failed", FunctionState::Failed);
    for (name, state) in [("pending", "Pending"), ("failed", "Failed")] {
        let error = setup
            .registry
            .accept_event(EventInvoke {
                request_id: "req-1",
                function: &named(name),
                payload: JsonText::parse(b"{}").unwrap(),
                payload_bytes: 2,
                chain_depth: 0,
            })
            .await
            .unwrap_err();
        assert_eq!(error.code, ErrorCode::ResourceConflict);
        assert!(
            error
                .message
                .ends_with(&format!("following state: {state}"))
        );
    }
    assert!(queued(&setup).await.is_empty());
}

#[tokio::test]
async fn payloads_over_one_megabyte_are_refused() {
    let setup = setup(100).await;
    function(&setup, "f", FunctionState::Active);
    let big = format!("\"{}\"", "x".repeat(1_048_576));
    let refused = accept(&setup, &named("f"), big.as_bytes()).await;
    assert_eq!(refused, Err(ErrorCode::RequestEntityTooLarge));
    // The caller's bytes count, whitespace included, as in Lambda.
    let mut padded = vec![b' '; 1_048_577];
    padded[0] = b'1';
    let refused = accept(&setup, &named("f"), &padded).await;
    assert_eq!(refused, Err(ErrorCode::RequestEntityTooLarge));
    let fits = format!("\"{}\"", "x".repeat(1_048_574));
    accept(&setup, &named("f"), fits.as_bytes()).await.unwrap();
    assert_eq!(queued(&setup).await.len(), 1);
}

#[tokio::test]
async fn a_full_queue_throttles_and_keeps_what_it_holds() {
    let setup = setup(1).await;
    function(&setup, "f", FunctionState::Active);
    accept(&setup, &named("f"), b"1").await.unwrap();
    let throttled = accept(&setup, &named("f"), b"2").await;
    assert_eq!(throttled, Err(ErrorCode::TooManyRequests));
    let counters = setup.registry.counters();
    assert_eq!(counters.throttles.get(), 1);
    let events = queued(&setup).await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].payload.as_str(), "1");
}

#[tokio::test]
async fn function_destinations_write_through_the_same_point() {
    let setup = setup(100).await;
    function(&setup, "target", FunctionState::Active);
    function(&setup, "pending", FunctionState::Pending);
    let registry: Arc<dyn Registry> = setup.registry.clone();
    registry
        .invoke_event(&format!("{ARN}:target"), r#"{"record":1}"#, "dest-1", 4)
        .await
        .unwrap();
    // Without a request id, the record gets a new one.
    registry
        .invoke_event(&format!("{ARN}:target"), "{}", "", 0)
        .await
        .unwrap();
    let refused = registry
        .invoke_event(&format!("{ARN}:pending"), "{}", "dest-2", 0)
        .await;
    assert!(matches!(refused, Err(RegistryError::Refused(message)) if message.contains("Pending")));
    let missing = registry
        .invoke_event(&format!("{ARN}:gone"), "{}", "dest-3", 0)
        .await;
    assert!(matches!(missing, Err(RegistryError::Refused(_))));

    let events = queued(&setup).await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].request_id, "dest-1");
    assert_eq!(events[0].invoked_function_arn, format!("{ARN}:target"));
    assert_eq!(events[0].payload.as_str(), r#"{"record":1}"#);
    assert_eq!(events[0].chain_depth, 4);
    assert!(!events[1].request_id.is_empty() && events[1].request_id != "dest-1");
}

#[tokio::test]
async fn a_created_function_settles_active_in_the_background() {
    let setup = setup(100).await;
    function(&setup, "f", FunctionState::Pending);
    setup.registry.deploy_in_background("f".into());
    let mut state = FunctionState::Pending;
    for _ in 0..200 {
        state = setup.registry.functions().get("f").unwrap().state;
        if state != FunctionState::Pending {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(state, FunctionState::Active);
    let found = setup
        .registry
        .resolve("f", "$LATEST")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(found.spec.function_arn, format!("{ARN}:f"));
    assert_eq!(found.settings.maximum_retry_attempts, 2);
    assert!(setup.registry.resolve("f", "1").await.unwrap().is_none());
}
