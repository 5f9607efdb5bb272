# ---------------------------------------------------------------------------------------------------------------------
# Queues: work (-> orchestrator), its dead-letter queue, and done (terminal messages for consumers).
# ---------------------------------------------------------------------------------------------------------------------

locals {
  # AWS recommends at least 6 x the function timeout so a throttled batch is not redelivered while in flight.
  work_visibility_timeout = 6 * var.lambda_timeout
}

resource "aws_sqs_queue" "dlq" {
  name                      = "${var.name}-work-dlq"
  message_retention_seconds = 1209600
  sqs_managed_sse_enabled   = true
}

resource "aws_sqs_queue" "work" {
  name                       = "${var.name}-work"
  visibility_timeout_seconds = local.work_visibility_timeout
  message_retention_seconds  = var.message_retention_seconds
  receive_wait_time_seconds  = 20
  sqs_managed_sse_enabled    = true

  redrive_policy = jsonencode({
    deadLetterTargetArn = aws_sqs_queue.dlq.arn
    maxReceiveCount     = var.max_receive_count
  })
}

resource "aws_sqs_queue_redrive_allow_policy" "dlq" {
  count = var.restrict_dlq_sources ? 1 : 0

  queue_url = aws_sqs_queue.dlq.id

  redrive_allow_policy = jsonencode({
    redrivePermission = "byQueue"
    sourceQueueArns   = [aws_sqs_queue.work.arn]
  })
}

resource "aws_sqs_queue" "done" {
  name                      = "${var.name}-done"
  message_retention_seconds = var.message_retention_seconds
  sqs_managed_sse_enabled   = true
}
