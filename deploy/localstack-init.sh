#!/bin/sh
# Creates the AWS resources the README example uses, on LocalStack (the compose init step)
# or on any endpoint given as AWS_ENDPOINT_URL. Safe to run again: every call is idempotent.
set -eu
endpoint=${AWS_ENDPOINT_URL:-http://localstack:4566}
aws() { command aws --endpoint-url "$endpoint" "$@"; }
aws sqs create-queue --queue-name invoq-demo-success >/dev/null
aws sqs create-queue --queue-name invoq-demo-failure >/dev/null
aws sns create-topic --name invoq-demo-alerts >/dev/null
aws events create-event-bus --name invoq-demo >/dev/null 2>&1 || true  # exists already
echo "invoq demo resources ready on $endpoint"
