#!/bin/sh
# The README example, end to end with the AWS CLI: a function, an OnSuccess SQS destination,
# an Event invoke, and the invocation record read back from the queue.
#   INVOQ_ENDPOINT_URL  invoq's Lambda API        (default http://127.0.0.1:9001)
#   AWS_ENDPOINT_URL    LocalStack, moto or unset (default http://127.0.0.1:4566)
#   AWS_ACCOUNT_ID      the SQS queue's account   (default 000000000000, LocalStack's)
set -eu
invoq=${INVOQ_ENDPOINT_URL:-http://127.0.0.1:9001}
sqs_endpoint=${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}
account=${AWS_ACCOUNT_ID:-000000000000}
region=${AWS_REGION:-us-east-1}
lambda() { aws --endpoint-url "$invoq" lambda "$@"; }
sqs() { aws --endpoint-url "$sqs_endpoint" sqs "$@"; }

lambda create-function --function-name hello --runtime invoq.builtin --handler echo \
  --role "arn:aws:iam::$account:role/demo" --code '{}' >/dev/null
lambda wait function-active-v2 --function-name hello
lambda put-function-event-invoke-config --function-name hello --destination-config \
  "{\"OnSuccess\":{\"Destination\":\"arn:aws:sqs:$region:$account:invoq-demo-success\"}}" >/dev/null
# AWS CLI v2 takes blobs as base64 unless told otherwise; v1 takes them raw.
binary_format=""
aws --version 2>&1 | grep -q '^aws-cli/2' && binary_format="--cli-binary-format raw-in-base64-out"
# shellcheck disable=SC2086
lambda invoke --function-name hello --invocation-type Event $binary_format \
  --payload '{"hello":"world"}' /dev/null >&2  # {"StatusCode": 202}
queue_url=$(sqs get-queue-url --queue-name invoq-demo-success --query QueueUrl --output text)
for _ in $(seq 30); do
  record=$(sqs receive-message --queue-url "$queue_url" --wait-time-seconds 2 \
    --query 'Messages[0].Body' --output text)
  if [ "$record" != "None" ]; then
    echo "$record"
    exit 0
  fi
done
echo "no invocation record arrived in invoq-demo-success" >&2
exit 1
