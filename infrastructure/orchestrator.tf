# ---------------------------------------------------------------------------------------------------------------------
# Orchestrator Lambda: validates work messages, launches tasks, recovers crashed tasks.
# The zip is built outside Terraform by scripts/build_lambda_zip.sh (reproducible, so the hash is stable).
# ---------------------------------------------------------------------------------------------------------------------

locals {
  lambda_zip_path      = coalesce(var.lambda_zip_path, "${path.module}/../build/orchestrator.zip")
  orchestrator_name    = "${var.name}-orchestrator"
  orchestrator_handler = "q4_orchestrator.handler.lambda_handler"
}

resource "aws_cloudwatch_log_group" "orchestrator" {
  #checkov:skip=CKV_AWS_158:Logs carry run ids and counts, no data; the service-owned key is used to avoid KMS key-policy upkeep.
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable (default 30 days) to keep cost bounded.
  name              = "/aws/lambda/${local.orchestrator_name}"
  retention_in_days = var.log_retention_days
}

resource "aws_lambda_function" "orchestrator" {
  #checkov:skip=CKV_AWS_117:The function only calls AWS APIs; a VPC would need NAT or endpoints and adds cost without a private resource to protect.
  #checkov:skip=CKV_AWS_173:Environment variables hold resource names only, no secrets; the AWS-managed key encrypts them at rest.
  #checkov:skip=CKV_AWS_272:Code signing needs a signing profile per account; the zip is reproducible and its hash is pinned by Terraform.
  #checkov:skip=CKV_AWS_115:Reserved concurrency fails on accounts with the default low concurrency quota; the ESM batch size and SQS bound the load.
  function_name    = local.orchestrator_name
  description      = "Q4 orchestrator: work messages -> ECS RunTask; STOPPED task events -> relaunch or fail."
  role             = aws_iam_role.orchestrator.arn
  runtime          = "python3.12"
  handler          = local.orchestrator_handler
  filename         = local.lambda_zip_path
  source_code_hash = filebase64sha256(local.lambda_zip_path)
  timeout          = var.lambda_timeout
  memory_size      = var.lambda_memory_size
  architectures    = ["x86_64"]

  environment {
    variables = {
      Q4_ARCHIVE_BUCKET       = module.archive_bucket.id
      Q4_ARTIFACTS_BUCKET     = module.artifacts_bucket.id
      Q4_DONE_QUEUE_URL       = aws_sqs_queue.done.url
      Q4_CLUSTER              = aws_ecs_cluster.this.name
      Q4_TASK_DEFINITION      = aws_ecs_task_definition.task.arn
      Q4_CONTAINER_NAME       = local.container_name
      Q4_SUBNETS              = join(",", local.task_subnet_ids)
      Q4_SECURITY_GROUPS      = join(",", local.task_security_group_ids)
      Q4_ASSIGN_PUBLIC_IP     = var.assign_public_ip ? "ENABLED" : "DISABLED"
      Q4_MAX_ATTEMPTS         = tostring(var.max_attempts)
      Q4_TASK_CPU_MIN         = tostring(var.task_cpu_min)
      Q4_TASK_CPU_MAX         = tostring(var.task_cpu_max)
      Q4_TASK_MEMORY_PER_VCPU = tostring(var.task_memory_per_vcpu_mib)
      Q4_TASK_STORAGE_MIN_GIB = tostring(var.task_ephemeral_storage_min_gib)
      Q4_TASK_STORAGE_MAX_GIB = tostring(var.task_ephemeral_storage_max_gib)
      Q4_TASK_ARCHITECTURE    = var.task_cpu_architecture
      Q4_SHARD_TARGET_BYTES   = tostring(var.shard_target_bytes)
      Q4_MAX_SHARDS           = tostring(var.max_shards)
      POWERTOOLS_SERVICE_NAME = local.orchestrator_name
      POWERTOOLS_LOG_LEVEL    = var.log_level
    }
  }

  tracing_config {
    mode = "PassThrough"
  }

  # STOPPED events arrive asynchronously from EventBridge; those that still fail after Lambda's retries are kept.
  dead_letter_config {
    target_arn = aws_sqs_queue.dlq.arn
  }

  depends_on = [
    aws_cloudwatch_log_group.orchestrator,
    aws_iam_role_policy.orchestrator,
  ]

  lifecycle {
    precondition {
      condition     = var.task_cpu_min <= var.task_cpu_max
      error_message = "task_cpu_min must not be above task_cpu_max."
    }
    precondition {
      condition     = var.task_ephemeral_storage_min_gib <= var.task_ephemeral_storage_max_gib
      error_message = "task_ephemeral_storage_min_gib must not be above task_ephemeral_storage_max_gib."
    }
  }
}

resource "aws_lambda_event_source_mapping" "work" {
  event_source_arn        = aws_sqs_queue.work.arn
  function_name           = aws_lambda_function.orchestrator.arn
  batch_size              = var.sqs_batch_size
  enabled                 = var.event_source_mapping_enabled
  function_response_types = ["ReportBatchItemFailures"]
}

# ---------------------------------------------------------------------------------------------------------------------
# Crash recovery: this cluster's STOPPED task events reach the orchestrator.
# ---------------------------------------------------------------------------------------------------------------------

resource "aws_cloudwatch_event_rule" "task_stopped" {
  name        = "${var.name}-task-stopped"
  description = "Q4 tasks of this cluster that stopped: the orchestrator relaunches crashes."

  event_pattern = jsonencode({
    source      = ["aws.ecs"]
    detail-type = ["ECS Task State Change"]
    detail = {
      clusterArn = [aws_ecs_cluster.this.arn]
      lastStatus = ["STOPPED"]
    }
  })
}

resource "aws_cloudwatch_event_target" "task_stopped" {
  rule      = aws_cloudwatch_event_rule.task_stopped.name
  target_id = "orchestrator"
  arn       = aws_lambda_function.orchestrator.arn

  retry_policy {
    maximum_event_age_in_seconds = 86400
    maximum_retry_attempts       = 185
  }

  # Events EventBridge could not deliver at all (e.g. throttled for a day) are kept, like failed invocations.
  dead_letter_config {
    arn = aws_sqs_queue.dlq.arn
  }
}

data "aws_iam_policy_document" "dlq" {
  statement {
    sid       = "EventBridgeUndeliveredTaskEvents"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]

    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }

    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.task_stopped.arn]
    }
  }
}

resource "aws_sqs_queue_policy" "dlq" {
  queue_url = aws_sqs_queue.dlq.id
  policy    = data.aws_iam_policy_document.dlq.json

  # After the redrive-allow policy: moto (not AWS) drops a queue's Policy when another attribute is set.
  depends_on = [aws_sqs_queue_redrive_allow_policy.dlq]
}

resource "aws_lambda_permission" "task_stopped" {
  statement_id  = "AllowEventBridgeTaskStopped"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.orchestrator.function_name
  principal     = "events.amazonaws.com"
  source_arn    = aws_cloudwatch_event_rule.task_stopped.arn
}
