//! Builtin handlers (`Runtime: "invoq.builtin"`): functions without a process, for tests and
//! load tests. They obey the function timeout and produce Lambda's log framing like any other.
//!
//! - `echo` returns the event;
//! - `fail` always ends in an Unhandled error;
//! - `sleep` waits `{"ms": N}` milliseconds, then echoes;
//! - `flaky` fails while the attempt number is at most `{"fail_attempts": N}`, then echoes.

use std::time::Duration;

use bytes::Bytes;
use serde_json::{Value, json};

use crate::Invocation;
use crate::sandbox::Outcome;

pub(crate) async fn run(invocation: &Invocation) -> Outcome {
    let handler = invocation.function.handler.as_str();
    let event: Value = serde_json::from_slice(&invocation.payload).unwrap_or(Value::Null);
    match handler {
        "echo" => Outcome::Response(invocation.payload.clone()),
        "fail" => handler_error(invocation, "InvoqBuiltinFailure", "invoq builtin fail"),
        "sleep" => match event.get("ms").and_then(Value::as_u64) {
            Some(ms) => sleep_then_echo(invocation, Duration::from_millis(ms)).await,
            None => handler_error(invocation, "InvalidEvent", r#"sleep expects {"ms": N}"#),
        },
        "flaky" => {
            let fail_attempts = event
                .get("fail_attempts")
                .and_then(Value::as_u64)
                .unwrap_or(0);
            if u64::from(invocation.attempt) <= fail_attempts {
                let message = format!(
                    "flaky failure on attempt {} of {fail_attempts}",
                    invocation.attempt
                );
                handler_error(invocation, "InvoqFlakyFailure", &message)
            } else {
                Outcome::Response(invocation.payload.clone())
            }
        }
        other => handler_error(
            invocation,
            "Runtime.HandlerNotFound",
            &format!("invoq.builtin has no handler {other:?}"),
        ),
    }
}

async fn sleep_then_echo(invocation: &Invocation, sleep: Duration) -> Outcome {
    let timeout = invocation.function.timeout;
    if sleep >= timeout {
        tokio::time::sleep(timeout).await;
        return Outcome::TimedOut;
    }
    tokio::time::sleep(sleep).await;
    Outcome::Response(invocation.payload.clone())
}

fn handler_error(invocation: &Invocation, error_type: &str, message: &str) -> Outcome {
    let body = json!({
        "errorMessage": message,
        "errorType": error_type,
        "requestId": invocation.request_id,
        "stackTrace": [],
    });
    Outcome::FunctionError(Bytes::from(body.to_string()))
}
