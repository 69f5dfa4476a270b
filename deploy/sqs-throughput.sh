#!/usr/bin/env bash
# Throughput of the queue path on the SQS backend, against a running LocalStack (or moto).
#
#   cargo build --release && cargo xtask localstack &   # LocalStack on 127.0.0.1:4566
#   deploy/sqs-throughput.sh WORKERS [SECONDS] [CONNECTIONS]
#
# Starts runtime, frontend, WORKERS workers and a router as separate processes on
# INVOQ_QUEUE=sqs (fresh queues per run), with a file OnSuccess destination. wrk sends Event
# invokes of the builtin echo for SECONDS; then the script waits until every accepted event
# has been delivered and prints the accept rate and the delivery rate.
set -euo pipefail
workers=${1:?usage: sqs-throughput.sh WORKERS [SECONDS] [CONNECTIONS]}
seconds=${2:-10}
connections=${3:-32}
bin=${INVOQ_BIN:-$(dirname "$0")/../target/release/invoq}
command -v wrk >/dev/null || { echo "sqs-throughput.sh needs wrk (apt-get install wrk)" >&2; exit 1; }

export AWS_ENDPOINT_URL=${AWS_ENDPOINT_URL:-http://127.0.0.1:4566}
export AWS_ACCESS_KEY_ID=${AWS_ACCESS_KEY_ID:-000000000000} AWS_SECRET_ACCESS_KEY=${AWS_SECRET_ACCESS_KEY:-test}
export AWS_REGION=${AWS_REGION:-us-east-1} AWS_EC2_METADATA_DISABLED=true
export INVOQ_QUEUE=sqs INVOQ_DESTINATIONS=file INVOQ_SQS_QUEUE_PREFIX=tp$RANDOM- RUST_LOG=${RUST_LOG:-warn}

dir=$(mktemp -d)
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
"$bin" runtime --data-dir "$dir/runtime" --grpc-addr 127.0.0.1:9102 & pids+=($!)
"$bin" frontend --data-dir "$dir/frontend" --http-addr 127.0.0.1:9001 --grpc-addr 127.0.0.1:9101 & pids+=($!)
for i in $(seq "$workers"); do
    "$bin" worker --grpc-addr "127.0.0.1:$((9200 + i))" & pids+=($!)
done
"$bin" router --data-dir "$dir/router" --grpc-addr 127.0.0.1:9105 & pids+=($!)
for addr in 9102 9101 9105 $(seq -f '92%02g' 1 "$workers"); do
    until "$bin" health "http://127.0.0.1:$addr" >/dev/null 2>&1; do sleep 0.2; done
done

api=http://127.0.0.1:9001
curl -sf -XPOST "$api/2015-03-31/functions" -d '{"FunctionName":"echo","Runtime":"invoq.builtin",
  "Handler":"echo","Role":"arn:aws:iam::000000000000:role/bench","Code":{}}' >/dev/null
curl -sf -XPUT "$api/2019-09-25/functions/echo/event-invoke-config" -d '{"DestinationConfig":
  {"OnSuccess":{"Destination":"arn:aws:sqs:us-east-1:000000000000:bench-out"}}}' >/dev/null
delivered() { cat "$dir"/router/destinations/sqs/*.jsonl 2>/dev/null | wc -l; }
distinct() { cat "$dir"/router/destinations/sqs/*.jsonl | grep -o '"requestId":"[^"]*"' | sort -u | wc -l; }
# One event first, so that the queues exist before the clock starts.
curl -sf -XPOST -H 'X-Amz-Invocation-Type: Event' "$api/2015-03-31/functions/echo/invocations" -d '{}'
until [ "$(delivered)" -ge 1 ]; do sleep 0.2; done

cat > "$dir/event.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"bench":true}'
wrk.headers["X-Amz-Invocation-Type"] = "Event"
done = function(summary, latency, requests)
  io.write(string.format("accepted %d events in %.1f s: %.0f/s, 202 latency p50 %.1f ms, p99 %.1f ms\n",
    summary.requests - summary.errors.status, summary.duration / 1e6,
    (summary.requests - summary.errors.status) / (summary.duration / 1e6),
    latency:percentile(50) / 1e3, latency:percentile(99) / 1e3))
end
LUA
start=$(date +%s.%N)
accepted=$(wrk -t1 -c"$connections" -d"${seconds}s" -s "$dir/event.lua" \
    "$api/2015-03-31/functions/echo/invocations" | tee /dev/stderr | awk '/^accepted/ {print $2}')
# wrk does not count the requests still open when it stops: they are accepted too, so
# wait until the count stops growing after reaching the accepted number.
previous=-1
stalled=0
while [ "$(delivered)" -lt $((accepted + 1)) ] || [ "$stalled" -lt 3 ]; do
    now=$(delivered)
    if [ "$now" = "$previous" ]; then stalled=$((stalled + 1)); else stalled=0; fi
    [ "$stalled" -ge 60 ] && { echo "no progress for 60 s" >&2; break; }
    previous=$now
    sleep 1
done
elapsed=$(echo "$(date +%s.%N) - $start - $stalled" | bc)
records=$(($(delivered) - 1))
unique=$(($(distinct) - 1))
echo "workers $workers: $unique distinct events delivered ($((records - unique)) duplicates) for" \
    "$accepted counted by wrk, in $elapsed s: $(echo "$unique / $elapsed" | bc) events/s end to end"
