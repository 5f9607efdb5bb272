#!/usr/bin/env bash
# End-to-end test of a deployed Q4 pipeline with nothing but the aws CLI (and python3 to read JSON):
# upload a table with `aws s3 cp`, send the work message with `aws sqs send-message`, wait for the run's
# done message on the done queue, then download the run and check every artifact against MANIFEST.json
# (bytes and sha256).
#
# Usage: scripts/test_q4_pipeline.sh [FILE.csv]          (default: a generated 500-row table)
# Env:   Q4_ARCHIVE_BUCKET, Q4_ARTIFACTS_BUCKET, Q4_WORK_QUEUE_URL, Q4_DONE_QUEUE_URL and the usual AWS
#        variables (AWS_ENDPOINT_URL for an emulator). When Q4_WORK_QUEUE_URL is unset, the variables of the
#        running local stack are used (`q4 local env`). MODE (standard), RUN_ID, TIMEOUT (seconds, 300),
#        AWS (the aws command, default `aws`, or `uv run aws` when aws is not on PATH), PYTHON (python3).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [[ -z "${AWS:-}" ]]; then
    if command -v aws >/dev/null 2>&1; then AWS=aws; else AWS="uv run --quiet aws"; fi
fi
if [[ -z "${Q4_WORK_QUEUE_URL:-}" ]]; then
    eval "$(uv run --quiet q4 local env)"
fi
: "${Q4_ARCHIVE_BUCKET:?}" "${Q4_ARTIFACTS_BUCKET:?}" "${Q4_WORK_QUEUE_URL:?}" "${Q4_DONE_QUEUE_URL:?}"
MODE="${MODE:-standard}"
TIMEOUT="${TIMEOUT:-300}"
RUN_ID="${RUN_ID:-e2e-$(date -u +%Y%m%d-%H%M%S)-$$}"

work="$(mktemp -d "${TMPDIR:-/tmp}/q4-e2e.XXXXXX")"
trap 'rm -rf "$work"' EXIT  # replaced below, once there are hidden messages to release
say() { printf 'test_q4_pipeline: %s\n' "$*" >&2; }
fail() { say "FAIL: $*"; exit 1; }

# 1. The input table.
if [[ $# -ge 1 ]]; then
    input="$1"
    [[ -f "$input" ]] || fail "input file $input does not exist"
else
    input="$work/e2e.csv"
    awk 'BEGIN { srand(42); print "sample_id,f_1,f_2,f_3,f_4";
                 for (i = 0; i < 500; i++) { a = rand() - 0.5; b = rand() - 0.5;
                   printf "s%03d,%.6f,%.6f,%.6f,%.6f\n", i, 3*a + b, a - 2*b + 0.1*rand(), 10 + b, rand() } }' > "$input"
fi
key="run=${RUN_ID}/input/$(basename "$input")"
say "run ${RUN_ID}: uploading $(wc -l < "$input") lines to s3://${Q4_ARCHIVE_BUCKET}/${key}"

# 2. Upload and send the work message, exactly as a user would.
$AWS s3 cp --only-show-errors "$input" "s3://${Q4_ARCHIVE_BUCKET}/${key}"
$AWS sqs send-message --queue-url "$Q4_WORK_QUEUE_URL" --output text --query MessageId \
    --message-body "{\"input_key\":\"${key}\",\"run_id\":\"${RUN_ID}\",\"mode\":\"${MODE}\"}" >/dev/null
started=$(date +%s)

# 3. Wait for this run's done message. Other runs' messages stay hidden for HIDE seconds while we look (so
#    each receive brings new ones, however long the queue) and are released at once when we stop.
HIDE=20
done_file="$work/done.json"
: > "$work/hidden"
release_hidden() {
    while IFS= read -r handle; do
        $AWS sqs change-message-visibility --queue-url "$Q4_DONE_QUEUE_URL" --receipt-handle "$handle" \
            --visibility-timeout 0 >/dev/null 2>&1 || true  # expired handles: already visible again
    done < "$work/hidden"
    : > "$work/hidden"
}
trap 'release_hidden; rm -rf "$work"' EXIT
while [[ ! -s "$done_file" ]]; do
    (( $(date +%s) - started < TIMEOUT )) || fail "no done message for run ${RUN_ID} within ${TIMEOUT} s"
    $AWS sqs receive-message --queue-url "$Q4_DONE_QUEUE_URL" --max-number-of-messages 10 \
        --visibility-timeout "$HIDE" --wait-time-seconds 5 --output json > "$work/received.json"
    "$PYTHON" - "$RUN_ID" "$work/received.json" "$done_file" "$work/handles" <<'PY'
import json, sys
run_id, received, done_file, handles = sys.argv[1:5]
text = open(received).read().strip()
messages = json.loads(text).get("Messages", []) if text else []
mine, others = [], []
for message in messages:
    try:
        body = json.loads(message["Body"])
    except ValueError:
        body = {}
    (mine if isinstance(body, dict) and body.get("run_id") == run_id else others).append(message)
if mine:
    open(done_file, "w").write(mine[0]["Body"])
with open(handles, "w") as out:
    for message in mine:
        out.write("delete\t" + message["ReceiptHandle"] + "\n")
    for message in others:
        out.write("hide\t" + message["ReceiptHandle"] + "\n")
PY
    while IFS=$'\t' read -r action handle; do
        if [[ "$action" == delete ]]; then
            $AWS sqs delete-message --queue-url "$Q4_DONE_QUEUE_URL" --receipt-handle "$handle"
        else
            printf '%s\n' "$handle" >> "$work/hidden"
        fi
    done < "$work/handles"
done
release_hidden
latency=$(( $(date +%s) - started ))
say "done message after ${latency} s: $(cat "$done_file")"

# 4. The done message says succeeded and names the manifest; every artifact matches it.
$AWS s3 cp --only-show-errors --recursive "s3://${Q4_ARTIFACTS_BUCKET}/run=${RUN_ID}/" "$work/run/"
"$PYTHON" - "$RUN_ID" "$done_file" "$work/run" <<'PY'
import hashlib, json, pathlib, sys
run_id, done_file, run_dir = sys.argv[1], sys.argv[2], pathlib.Path(sys.argv[3])
done = json.loads(open(done_file).read())
def fail(message):
    sys.exit(f"test_q4_pipeline: FAIL: {message}")
if done.get("schema") != "q4.done/v1" or done.get("status") != "succeeded":
    fail(f"run {run_id} ended {done.get('status')}: {done.get('error')}")
prefix = f"run={run_id}/"
manifest_key = done.get("manifest_key") or prefix + "MANIFEST.json"
manifest_path = run_dir / manifest_key.removeprefix(prefix)
if not manifest_path.is_file():
    fail(f"{manifest_key} is missing from the artifacts bucket")
manifest = json.loads(manifest_path.read_text())
if manifest.get("schema") != "q4.manifest/v1" or manifest.get("status") != "succeeded":
    fail(f"MANIFEST.json has schema {manifest.get('schema')} and status {manifest.get('status')}")
if (run_dir / "ERROR.json").exists():
    fail("the run has both MANIFEST.json and ERROR.json")
artifacts = manifest.get("artifacts") or []
if not artifacts:
    fail("MANIFEST.json lists no artifacts")
for artifact in artifacts:
    path = run_dir / artifact["key"].removeprefix(prefix)
    if not path.is_file():
        fail(f"artifact {artifact['key']} is listed in MANIFEST.json but missing")
    data = path.read_bytes()
    if len(data) != artifact["bytes"] or hashlib.sha256(data).hexdigest() != artifact["sha256"]:
        fail(f"artifact {artifact['key']} does not match its MANIFEST.json checksum")
print(f"test_q4_pipeline: PASS: run {run_id} succeeded; {len(artifacts)} artifacts match MANIFEST.json "
      f"(rows: {done.get('rows')})")
PY
