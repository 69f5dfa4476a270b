//! A Lambda function written with the official `lambda_runtime` crate, exactly as it would
//! be deployed to AWS: build it, name the binary `bootstrap`, zip it, create the function
//! with Runtime `provided.al2023`. invoq's tests do just that.
//!
//! It echoes the event with what the runtime told it (request id, function ARN, deadline),
//! and fails when the event asks it to: `{"fail": "message"}`.

use lambda_runtime::{Error, LambdaEvent, service_fn};
use serde_json::{Value, json};

#[tokio::main]
async fn main() -> Result<(), Error> {
    lambda_runtime::run(service_fn(handle)).await
}

async fn handle(event: LambdaEvent<Value>) -> Result<Value, Error> {
    let (payload, context) = event.into_parts();
    if let Some(message) = payload.get("fail").and_then(Value::as_str) {
        return Err(message.into());
    }
    println!("rust-echo handling {}", context.request_id);
    Ok(json!({
        "echo": payload,
        "requestId": context.request_id,
        "invokedFunctionArn": context.invoked_function_arn,
        "deadlineMs": context.deadline,
        "clientContext": context.client_context.map(|client_context| client_context.custom),
        "functionName": std::env::var("AWS_LAMBDA_FUNCTION_NAME").ok(),
        "memorySize": std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE").ok(),
    }))
}
