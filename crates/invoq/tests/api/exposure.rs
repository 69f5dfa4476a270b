//! Safe exposure: names that reach file paths, tried as a careless (or hostile) user would.

use aws_sdk_lambda::types::{DeadLetterConfig, DestinationConfig, OnFailure};

use crate::harness::{Invoq, client_signing_as, create_builtin, data_dir, status_and_type};

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

#[tokio::test]
async fn sigv4_signed_requests_pass_and_others_get_awss_errors() {
    use aws_sdk_lambda::primitives::Blob;
    let data = data_dir();
    let invoq = Invoq::serve_with(
        data.path(),
        &[
            ("INVOQ_AUTH", "on"),
            ("INVOQ_ACCESS_KEYS", "test:test,AKIDOTHER:other-secret"),
        ],
    );
    // Signed with a configured key: everything works, names with colons and qualifiers too.
    let client = invoq.client();
    create_builtin(&client, "signed", "echo").await;
    let output = client
        .invoke()
        .function_name("arn:aws:lambda:us-east-1:000000000000:function:signed")
        .qualifier("$LATEST")
        .payload(Blob::new(r#"{"signed":true}"#))
        .send()
        .await
        .expect("a signed invoke");
    assert_eq!(output.payload().unwrap().as_ref(), br#"{"signed":true}"#);
    let other = client_signing_as(&invoq.http_url(), "AKIDOTHER", "other-secret");
    other
        .get_function()
        .function_name("signed")
        .send()
        .await
        .expect("second key");

    let wrong_secret = client_signing_as(&invoq.http_url(), "test", "not-the-secret");
    let error = wrong_secret
        .get_function()
        .function_name("signed")
        .send()
        .await
        .expect_err("wrong secret");
    assert_eq!(
        status_and_type(&error),
        (Some(403), Some("InvalidSignatureException".to_owned()))
    );
    let unknown = client_signing_as(&invoq.http_url(), "AKIDUNKNOWN", "x");
    let error = unknown
        .list_functions()
        .send()
        .await
        .expect_err("unknown key");
    assert_eq!(
        status_and_type(&error),
        (Some(403), Some("UnrecognizedClientException".to_owned()))
    );

    // Unsigned: refused, and nothing was created.
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/2015-03-31/functions", invoq.http_url()))
        .body(r#"{"FunctionName":"intruder","Runtime":"invoq.builtin","Handler":"echo","Role":"arn:aws:iam::000000000000:role/x","Code":{}}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert_eq!(
        response.headers()["x-amzn-errortype"],
        "MissingAuthenticationTokenException"
    );
    let error = client
        .get_function()
        .function_name("intruder")
        .send()
        .await
        .expect_err("not created");
    assert!(
        error
            .as_service_error()
            .unwrap()
            .is_resource_not_found_exception()
    );
    // The CLI's admin commands sign with the usual AWS environment.
    let parked = |secret: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_invoq"))
            .args(["parked", "list", "--endpoint-url", &invoq.http_url()])
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", secret)
            .output()
            .unwrap()
    };
    assert!(parked("test").status.success(), "{:?}", parked("test"));
    assert!(!parked("wrong").status.success());
    // Metrics stay open for scrapers.
    let metrics = http
        .get(format!("{}/metrics", invoq.http_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
}

#[test]
fn an_api_off_loopback_without_keys_does_not_start() {
    let data = data_dir();
    // The check runs before anything binds, so no non-loopback socket is ever opened.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_invoq"))
        .args(["serve", "--http-addr", "0.0.0.0:0"])
        .env("INVOQ_DATA_DIR", data.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("INVOQ_ACCESS_KEYS")
        .env_remove("INVOQ_AUTH")
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("needs SigV4 authentication") && stderr.contains("--auth off"),
        "{stderr}"
    );
}

#[tokio::test]
async fn idle_and_excess_connections_are_dropped() {
    use std::io::Read;
    let data = data_dir();
    let invoq = Invoq::serve_with(
        data.path(),
        &[
            ("INVOQ_HTTP_MAX_CONNECTIONS", "20"),
            ("INVOQ_HTTP_HEADER_TIMEOUT", "1"),
        ],
    );
    let address = invoq.address("http");
    // 20 connections that never send a byte, then 5 more.
    let idle: Vec<std::net::TcpStream> = (0..20)
        .map(|_| std::net::TcpStream::connect(address).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(200));
    for _ in 0..5 {
        let mut excess = std::net::TcpStream::connect(address).unwrap();
        excess
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut answer = String::new();
        excess.read_to_string(&mut answer).unwrap();
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(
            answer.contains("x-amzn-errortype: ServiceException"),
            "{answer}"
        );
    }
    // The header timeout closes every idle connection.
    for mut connection in idle {
        connection
            .set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut buffer = [0u8; 1];
        let read = connection.read(&mut buffer).expect("closed, not timed out");
        assert_eq!(read, 0, "the server closed the idle connection");
    }
    // And the API serves again.
    invoq
        .client()
        .list_functions()
        .send()
        .await
        .expect("served");
}

#[tokio::test]
async fn request_bodies_in_flight_are_bounded() {
    let data = data_dir();
    let invoq = Invoq::serve(data.path());
    let url = format!("{}/2015-03-31/functions", invoq.http_url());
    // 16 uploads of 65 MB at once (an invalid zip each: they are all refused after reading).
    let body = format!(
        r#"{{"FunctionName":"big","Runtime":"provided.al2023","Handler":"x","Role":"arn:aws:iam::000000000000:role/x","Code":{{"ZipFile":"{}"}}}}"#,
        "A".repeat(65 * 1024 * 1024)
    );
    let body = bytes::Bytes::from(body);
    let http = reqwest::Client::new();
    let uploads: Vec<_> = (0..16)
        .map(|_| {
            let (http, url, body) = (http.clone(), url.clone(), body.clone());
            tokio::spawn(async move {
                match http.post(url).body(body).send().await {
                    Ok(response) => Some((
                        response.status().as_u16(),
                        response
                            .headers()
                            .get("x-amzn-errortype")
                            .map(|value| value.to_str().unwrap().to_owned()),
                    )),
                    // Refused before its body was read: the connection closes under it.
                    Err(_) => None,
                }
            })
        })
        .collect();
    let mut answers = Vec::new();
    for upload in uploads {
        answers.push(upload.await.unwrap());
    }
    let processed = answers
        .iter()
        .filter(|answer| matches!(answer, Some((400, _))))
        .count();
    let refused = answers
        .iter()
        .filter(|answer| {
            matches!(answer, Some((429, Some(kind))) if kind == "TooManyRequestsException")
                || answer.is_none()
        })
        .count();
    assert!(processed >= 1, "{answers:?}");
    assert_eq!(processed + refused, 16, "{answers:?}");
    let peak = invoq.peak_rss_mib();
    assert!(peak < 700, "invoq peaked at {peak} MiB");
    invoq
        .client()
        .list_functions()
        .send()
        .await
        .expect("served");
}
