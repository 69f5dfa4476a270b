//! Safe exposure: names that reach file paths, tried as a careless (or hostile) user would.

use aws_sdk_lambda::types::{DeadLetterConfig, DestinationConfig, OnFailure};

use crate::harness::{Invoq, create_builtin, data_dir};

const TRAVERSALS: [&str; 3] = [
    "arn:aws:sqs:us-east-1:000000000000:../../../../tmp/invoq-traversal",
    "arn:aws:sns:us-east-1:000000000000:a/../../b",
    "/tmp/invoq-traversal-absolute",
];

#[tokio::test]
async fn destination_and_dead_letter_arns_never_reach_outside_the_data_dir() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let client = invoq.client();
    create_builtin(&client, "f", "echo").await;
    for arn in TRAVERSALS {
        let error = client
            .put_function_event_invoke_config()
            .function_name("f")
            .destination_config(
                DestinationConfig::builder()
                    .on_failure(OnFailure::builder().destination(arn).build())
                    .build(),
            )
            .send()
            .await
            .expect_err(arn);
        let status = error.raw_response().map(|r| r.status().as_u16());
        let code = error.as_service_error().and_then(|e| e.meta().code());
        assert_eq!(status, Some(400), "{arn}: {error:?}");
        assert!(
            matches!(code, Some("ValidationException")),
            "{arn}: {code:?}"
        );

        let error = client
            .update_function_configuration()
            .function_name("f")
            .dead_letter_config(DeadLetterConfig::builder().target_arn(arn).build())
            .send()
            .await
            .expect_err(arn);
        let code = error.as_service_error().and_then(|e| e.meta().code());
        assert_eq!(code, Some("ValidationException"), "{arn}: {error:?}");
    }
    // Nothing was accepted, so nothing can be written: the config is still unset.
    let config = client
        .get_function_configuration()
        .function_name("f")
        .send()
        .await
        .unwrap();
    assert!(config.dead_letter_config().is_none());
    assert!(!std::path::Path::new("/tmp/invoq-traversal.jsonl").exists());
}
