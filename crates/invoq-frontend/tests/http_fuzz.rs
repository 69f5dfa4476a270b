//! The HTTP API under arbitrary requests (proptest): any method, path, qualifier, header and
//! body against every route family, sent through the real router with a real runtime
//! (builtin functions) and an in-memory queue. No request may panic a handler or get a 500
//! (bad input is the caller's error, a 4xx), and every error carries `x-amzn-ErrorType` and
//! a JSON body, as the SDKs expect.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use http::{Method, Request};
use invoq_domain::Location;
use invoq_frontend::Frontend;
use invoq_queue::{EmbeddedQueue, EmbeddedQueueOptions, EventQueue};
use invoq_registry::LocalRegistry;
use invoq_runtime::{LocalRuntime, RuntimeService, SandboxIsolation, SandboxOptions};
use proptest::prelude::*;
use tower::ServiceExt;

/// One runtime and one invoq for every case: the setup is the slow part.
struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: Router,
    _data: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let data = tempfile::tempdir().unwrap();
        let router = runtime.block_on(async {
            let sandbox = SandboxOptions {
                isolation: SandboxIsolation::Process,
                ..SandboxOptions::default()
            };
            let functions: Arc<dyn RuntimeService> = Arc::new(
                LocalRuntime::open(data.path(), Duration::from_secs(60), sandbox)
                    .await
                    .unwrap(),
            );
            let queue: Arc<dyn EventQueue> =
                Arc::new(EmbeddedQueue::in_memory(EmbeddedQueueOptions::default()).unwrap());
            let location = Location {
                region: "us-east-1".into(),
                account_id: "000000000000".into(),
            };
            let registry =
                LocalRegistry::open(location, data.path(), functions.clone(), queue.clone())
                    .unwrap();
            let frontend = Frontend::new(registry, functions, queue);
            let router = frontend.router(None, Default::default());
            let create = r#"{"FunctionName":"f","Runtime":"invoq.builtin","Handler":"echo",
                "Role":"arn:aws:iam::000000000000:role/r","Code":{}}"#;
            let response = router
                .clone()
                .oneshot(
                    Request::post("/2015-03-31/functions")
                        .body(Body::from(create))
                        .unwrap(),
                )
                .await
                .unwrap();
            assert_eq!(response.status(), 201, "the seed function is created");
            router
        });
        Fixture {
            runtime,
            router,
            _data: data,
        }
    })
}

fn method() -> impl Strategy<Value = Method> {
    prop_oneof![
        Just(Method::GET),
        Just(Method::POST),
        Just(Method::PUT),
        Just(Method::DELETE),
        Just(Method::PATCH),
    ]
}

/// A path segment: mostly plausible names and ARNs (so requests get past routing into
/// validation), sometimes anything, percent-encoded.
fn segment() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("f".to_owned()),
        Just("arn:aws:lambda:us-east-1:000000000000:function:f".to_owned()),
        Just("f%FF%FE".to_owned()),
        "[a-zA-Z0-9:$_.-]{0,80}",
        "\\PC{0,40}".prop_map(|text| {
            text.bytes()
                .map(|byte| format!("%{byte:02X}"))
                .collect::<String>()
        }),
    ]
}

fn path() -> impl Strategy<Value = String> {
    let template = prop_oneof![
        Just("/2015-03-31/functions/{}/invocations"),
        Just("/2015-03-31/functions/{}"),
        Just("/2015-03-31/functions/{}/configuration"),
        Just("/2015-03-31/functions/{}/code"),
        Just("/2017-10-31/functions/{}/concurrency"),
        Just("/2019-09-30/functions/{}/concurrency"),
        Just("/2019-09-25/functions/{}/event-invoke-config"),
        Just("/2019-09-25/functions/{}/event-invoke-config/list"),
        Just("/2024-08-31/functions/{}/recursion-config"),
        Just("/2014-11-13/functions/{}/invoke-async/"),
        Just("/2015-03-31/event-source-mappings/{}"),
        Just("/2015-03-31/event-source-mappings"),
        Just("/2015-03-31/functions"),
        Just("/invoq/queues/{}"),
        Just("/{}"),
    ];
    let query = prop_oneof![
        Just(String::new()),
        segment().prop_map(|qualifier| format!("?Qualifier={qualifier}")),
        "[a-zA-Z=&%0-9]{0,40}".prop_map(|query| format!("?{query}")),
    ];
    (template, segment(), query).prop_map(|(template, segment, query)| {
        format!("{}{query}", template.replace("{}", &segment))
    })
}

/// JSON bodies built from the API's own field names with values of any type, and raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        "\\PC{0,30}".prop_map(serde_json::Value::from),
        Just(serde_json::Value::from(
            "arn:aws:sqs:us-east-1:000000000000:q"
        )),
    ];
    let value = leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map(field(), inner, 0..4)
                .prop_map(|map| serde_json::Value::Object(map.into_iter().collect())),
        ]
    });
    prop_oneof![
        prop::collection::btree_map(field(), value, 0..6).prop_map(|map| {
            serde_json::to_vec(&serde_json::Value::Object(map.into_iter().collect())).unwrap()
        }),
        prop::collection::vec(any::<u8>(), 0..300),
    ]
}

fn field() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("FunctionName"),
        Just("Runtime"),
        Just("Handler"),
        Just("Role"),
        Just("Code"),
        Just("ZipFile"),
        Just("Timeout"),
        Just("MemorySize"),
        Just("Environment"),
        Just("Variables"),
        Just("DeadLetterConfig"),
        Just("TargetArn"),
        Just("MaximumRetryAttempts"),
        Just("MaximumEventAgeInSeconds"),
        Just("DestinationConfig"),
        Just("OnSuccess"),
        Just("OnFailure"),
        Just("Destination"),
        Just("ReservedConcurrentExecutions"),
        Just("RecursiveLoop"),
        Just("EventSourceArn"),
        Just("BatchSize"),
        Just("FilterCriteria"),
        Just("Filters"),
        Just("Pattern"),
        Just("ScalingConfig"),
        Just("FunctionResponseTypes"),
        Just("RevisionId"),
        Just("Enabled"),
        Just("Publish"),
    ]
    .prop_map(str::to_owned)
}

fn header_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("Event".to_owned()),
        Just("RequestResponse".to_owned()),
        Just("DryRun".to_owned()),
        Just("Tail".to_owned()),
        "[ -~]{0,60}",
        "[A-Za-z0-9+/=]{0,80}",
        "Root=1-[0-9a-f]{8}-[0-9a-f]{24};Lineage=[0-9a-f]{8}:[0-9]{1,12}",
    ]
}

fn headers() -> impl Strategy<Value = Vec<(&'static str, String)>> {
    let name = prop_oneof![
        Just("x-amz-invocation-type"),
        Just("x-amz-log-type"),
        Just("x-amz-client-context"),
        Just("x-amzn-trace-id"),
        Just("content-type"),
        Just("content-encoding"),
    ];
    prop::collection::vec((name, header_value()), 0..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn any_request_gets_a_lambda_answer_never_a_panic_or_a_500(
        method in method(),
        path in path(),
        headers in headers(),
        body in body(),
    ) {
        let fixture = fixture();
        let mut request = Request::builder().method(method.clone()).uri(&path);
        for (name, value) in &headers {
            request = request.header(*name, value);
        }
        let Ok(request) = request.body(Body::from(body)) else {
            // Not an HTTP request at all (an invalid URI or header): hyper refuses it first.
            return Ok(());
        };
        let response = fixture
            .runtime
            .block_on(async { fixture.router.clone().oneshot(request).await })
            .unwrap();
        let status = response.status();
        prop_assert!(status.as_u16() != 500, "{method} {path} {headers:?}: 500");
        if status.is_client_error() || status.is_server_error() {
            let error_type = response.headers().get("x-amzn-errortype").cloned();
            let body = fixture
                .runtime
                .block_on(axum::body::to_bytes(response.into_body(), 1 << 20))
                .unwrap();
            prop_assert!(
                error_type.is_some(),
                "{method} {path}: {status} without x-amzn-ErrorType"
            );
            prop_assert!(
                serde_json::from_slice::<serde_json::Value>(&body).is_ok(),
                "{method} {path}: {status} with a body that is not JSON: {body:?}"
            );
        }
    }
}
