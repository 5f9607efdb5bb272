#!/usr/bin/env bash
# Submit a table to the Q4 pipeline with the plain aws CLI: upload it to
# s3://$Q4_ARCHIVE_BUCKET/run=<RUN_ID>/input/<file name> and send the work message to $Q4_WORK_QUEUE_URL.
#
#   scripts/submit_run.sh FILE [RUN_ID] [MODE]
#
# RUN_ID defaults to <UTC yyyymmdd-HHMMSS.mmm>-<file stem> (as q4 submit); MODE is standard (default), enhanced or full.
# Works against real AWS and against any endpoint in AWS_ENDPOINT_URL (e.g. `eval "$(q4 local env)"`).
# For AWS, export Q4_ARCHIVE_BUCKET and Q4_WORK_QUEUE_URL from `terraform output`.
set -euo pipefail

die() { echo "submit_run.sh: error: $*" >&2; exit 2; }

[[ $# -ge 1 && $# -le 3 ]] || die "usage: scripts/submit_run.sh FILE [RUN_ID] [MODE]"
file=$1
[[ -f $file ]] || die "$file is not a file; give the path of a CSV or Parquet file."
name=$(basename -- "$file")
[[ $name =~ \.(csv|CSV|parquet|PARQUET)$ ]] || die "$name is neither a .csv nor a .parquet file; convert it first."
[[ $name =~ ^[A-Za-z0-9._+=\ -]+$ ]] || die "the file name $name has characters other than letters, digits, space and ._+=-; rename it."

stem=${name%%.*}
# The default run id of docs/contract.md ("Run id"), as q4_contract.default_run_id makes it (a test compares).
stem=$(printf '%s' "$stem" | sed -e 's/[^A-Za-z0-9._-]\{1,\}/-/g' -e 's/^[-.]*//' -e 's/[-.]*$//')
default_run_id="$(date -u +%Y%m%d-%H%M%S.%3N)-${stem:-input}"
default_run_id=${default_run_id:0:64}
while [[ $default_run_id == *[-.] ]]; do default_run_id=${default_run_id%?}; done
run_id=${2:-$default_run_id}
mode=${3:-standard}
[[ $run_id =~ ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$ && $run_id != *..* ]] \
  || die "run id '$run_id' is not valid; use 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit."
case $mode in standard|enhanced|full) ;; *) die "unknown mode '$mode'; use standard, enhanced or full." ;; esac

how='run `eval "$(q4 local env)"` for the local stack, or export it from `terraform output` for AWS'
[[ -n ${Q4_ARCHIVE_BUCKET:-} ]] || die "Q4_ARCHIVE_BUCKET is not set; $how."
[[ -n ${Q4_WORK_QUEUE_URL:-} ]] || die "Q4_WORK_QUEUE_URL is not set; $how."
aws=${AWS_CLI:-aws}

key="run=${run_id}/input/${name}"
# A run id names one job: refuse one that already has an input (even under another name) or any record in
# the artifacts bucket, instead of adding a stray input the orchestrator would then reject (run_conflict).
first_key() { "$aws" s3api list-objects-v2 --bucket "$1" --prefix "$2" --max-items 1 --query 'Contents[0].Key' --output text; }
existing=$(first_key "$Q4_ARCHIVE_BUCKET" "run=${run_id}/input/") || die "cannot list s3://$Q4_ARCHIVE_BUCKET; check the credentials and AWS_ENDPOINT_URL."
[[ -z $existing || $existing == None ]] \
  || die "run $run_id already exists (its input s3://$Q4_ARCHIVE_BUCKET/$existing) and inputs are never overwritten or mixed; choose another RUN_ID."
if [[ -n ${Q4_ARTIFACTS_BUCKET:-} ]]; then
  record=$(first_key "$Q4_ARTIFACTS_BUCKET" "run=${run_id}/") || die "cannot list s3://$Q4_ARTIFACTS_BUCKET; check the credentials and AWS_ENDPOINT_URL."
  [[ -z $record || $record == None ]] || die "run $run_id already exists (s3://$Q4_ARTIFACTS_BUCKET/$record); choose another RUN_ID."
fi
# One conditional PutObject (If-None-Match: *): S3 itself refuses to replace an existing input, even one
# uploaded by someone else a moment ago. A single PUT takes at most 5 GiB; `q4 submit` uploads larger files
# in parts with the same condition.
size=$(wc -c <"$file")
(( size <= 5368709120 )) || die "$name is larger than 5 GiB, more than one PutObject takes; submit it with \`q4 submit\`."
if ! out=$("$aws" s3api put-object --bucket "$Q4_ARCHIVE_BUCKET" --key "$key" --body "$file" \
    --if-none-match '*' --output text --query ETag 2>&1); then
  [[ $out != *PreconditionFailed* ]] \
    || die "s3://$Q4_ARCHIVE_BUCKET/$key already exists and inputs are never overwritten; choose another RUN_ID."
  die "could not upload $file to s3://$Q4_ARCHIVE_BUCKET/$key: $(printf '%s' "$out" | tail -n 1)"
fi
body=$(printf '{"run_id":"%s","input_key":"%s","mode":"%s"}' "$run_id" "$key" "$mode")
# aws-cli v1 pins the us-east-1 SQS endpoint unless --endpoint-url is given, ignoring AWS_ENDPOINT_URL.
sqs_endpoint=${AWS_ENDPOINT_URL_SQS:-${AWS_ENDPOINT_URL:-}}
sqs_args=()
[[ -z $sqs_endpoint ]] || sqs_args=(--endpoint-url "$sqs_endpoint")
"$aws" sqs "${sqs_args[@]}" send-message --queue-url "$Q4_WORK_QUEUE_URL" --message-body "$body" --output text --query MessageId >/dev/null
echo "submitted run $run_id ($mode mode): s3://${Q4_ARCHIVE_BUCKET}/${key}"
echo "follow it with: q4 status $run_id   (or: aws s3 ls s3://\${Q4_ARTIFACTS_BUCKET}/run=${run_id}/)"
