# ---------------------------------------------------------------------------------------------------------------------
# IAM: least privilege for the task, the task's execution (image pull, logs) and the orchestrator.
# ---------------------------------------------------------------------------------------------------------------------

locals {
  archive_input_objects = "${module.archive_bucket.arn}/run=*/input/*"
  artifacts_run         = "${module.artifacts_bucket.arn}/run=*"
  # A run's state documents: the accepted job (orchestrator), then MANIFEST.json or ERROR.json; and the cancel
  # request (q4 cancel writes it; the task and the orchestrator only read it).
  run_state_objects = ["${local.artifacts_run}/job.json", "${local.artifacts_run}/MANIFEST.json", "${local.artifacts_run}/ERROR.json", "${local.artifacts_run}/cancel.json"]
  # A sharded run (docs/contract.md, "Sharded runs"): its plan (the orchestrator writes it once, the tasks read
  # it), each step's partial and pass 2's parts of the row outputs (the tasks write and read them), and each
  # step's launch and stop records (the orchestrator's; the tasks read only the stop records, for the cost).
  shard_plan = "${local.artifacts_run}/plan.json"
  shard_task_objects = [
    "${local.artifacts_run}/shards/*/partial.json",
    "${local.artifacts_run}/shards/*/data.npz",
    "${local.artifacts_run}/shards/pass2/*/output/*",
  ]
  shard_attempt_records  = "${local.artifacts_run}/shards/*/attempts/*"
  shard_stopped_attempts = "${local.artifacts_run}/shards/*/attempts/*.stopped.json"
  # What the task writes: its artifacts (q4.job.OUTPUT_DIRS), the terminal document, a sharded run's partials.
  task_written_objects = concat([
    "${local.artifacts_run}/output/*",
    "${local.artifacts_run}/model/*",
    "${local.artifacts_run}/viz/*",
    "${local.artifacts_run}/MANIFEST.json",
    "${local.artifacts_run}/ERROR.json",
  ], local.shard_task_objects)
  # What the orchestrator writes: job.json, launch records (+ the re-send notice) and ERROR.json (task_crashed);
  # a sharded run's plan and its steps' launch and stop records.
  orchestrator_written_objects = [
    "${local.artifacts_run}/job.json",
    "${local.artifacts_run}/attempts/*",
    "${local.artifacts_run}/ERROR.json",
    local.shard_plan,
    local.shard_attempt_records,
  ]
  task_family_arn = "arn:${local.partition}:ecs:${var.region}:${local.account_id}:task-definition/${aws_ecs_task_definition.task.family}:*"
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account_id]
    }
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Task execution role: ECS pulls the image and ships the container's logs.
# ---------------------------------------------------------------------------------------------------------------------

resource "aws_iam_role" "task_execution" {
  name               = "${var.name}-task-execution"
  description        = "ECS pulls the Q4 task image and writes its logs."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "task_execution" {
  statement {
    sid       = "EcrAuth"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"] # GetAuthorizationToken has no resource-level permissions.
  }

  statement {
    sid = "PullTaskImage"
    actions = [
      "ecr:BatchCheckLayerAvailability",
      "ecr:BatchGetImage",
      "ecr:GetDownloadUrlForLayer",
    ]
    resources = [aws_ecr_repository.task.arn]
  }

  statement {
    sid       = "WriteTaskLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.task.arn}:log-stream:*"]
  }
}

resource "aws_iam_role_policy" "task_execution" {
  name   = "pull-image-and-log"
  role   = aws_iam_role.task_execution.id
  policy = data.aws_iam_policy_document.task_execution.json
}

# ---------------------------------------------------------------------------------------------------------------------
# Task role: what the Q4 task itself may do.
# ---------------------------------------------------------------------------------------------------------------------

resource "aws_iam_role" "task" {
  name               = "${var.name}-task"
  description        = "The Q4 task: reads run inputs, writes run artifacts, sends done messages."
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "task" {
  statement {
    sid       = "ReadRunInputs"
    actions   = ["s3:GetObject"]
    resources = [local.archive_input_objects]
  }

  statement {
    sid       = "ListRunInputs"
    actions   = ["s3:ListBucket"]
    resources = [module.archive_bucket.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["run=*/input/*"]
    }
  }

  statement {
    # The run's state documents and saved models only: never another run's data outputs (output/, viz/)
    # nor the orchestrator's launch records. The role is shared by every run, so "the run's own" cannot be
    # expressed here (see docs/reliability.md, "Least privilege").
    sid       = "ReadRunStateAndModels"
    actions   = ["s3:GetObject"]
    resources = concat(local.run_state_objects, ["${local.artifacts_run}/model/q4_model.json"])
  }

  statement {
    # The orchestrator's record of each stopped attempt (ECS times, task size): the attempt that ends the run
    # sums them into the run's cost.
    sid       = "ReadStoppedAttempts"
    actions   = ["s3:GetObject"]
    resources = ["${local.artifacts_run}/attempts/*.stopped.json", local.shard_stopped_attempts]
  }

  statement {
    # A sharded run: the plan, the steps' partials and pass 2's parts of the row outputs (the finish task
    # assembles them with UploadPartCopy, which reads the part and writes the output).
    sid       = "ReadShards"
    actions   = ["s3:GetObject"]
    resources = concat([local.shard_plan], local.shard_task_objects)
  }

  statement {
    # A sharded run's finish task deletes pass 2's parts of the row outputs once the run is committed.
    sid       = "DeleteShardParts"
    actions   = ["s3:DeleteObject"]
    resources = ["${local.artifacts_run}/shards/pass2/*/output/*"]
  }

  statement {
    sid       = "WriteRunArtifacts"
    actions   = ["s3:PutObject", "s3:AbortMultipartUpload"]
    resources = local.task_written_objects
  }

  statement {
    # Lets a missing key answer 404 instead of 403 when the task checks its run's job.json / MANIFEST.json.
    sid       = "ListRunArtifacts"
    actions   = ["s3:ListBucket"]
    resources = [module.artifacts_bucket.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["run=*"]
    }
  }

  statement {
    sid       = "SendDoneMessages"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.done.arn]
  }
}

resource "aws_iam_role_policy" "task" {
  name   = "q4-run-data"
  role   = aws_iam_role.task.id
  policy = data.aws_iam_policy_document.task.json
}

# ---------------------------------------------------------------------------------------------------------------------
# Orchestrator role
# ---------------------------------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "lambda_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "orchestrator" {
  name               = "${var.name}-orchestrator"
  description        = "The Q4 orchestrator Lambda: work queue -> job.json -> ECS RunTask; crash recovery."
  assume_role_policy = data.aws_iam_policy_document.lambda_assume.json
}

data "aws_iam_policy_document" "orchestrator" {
  statement {
    sid = "ConsumeWorkQueue"
    actions = [
      "sqs:ReceiveMessage",
      "sqs:DeleteMessage",
      "sqs:ChangeMessageVisibility",
      "sqs:GetQueueAttributes",
    ]
    resources = [aws_sqs_queue.work.arn]
  }

  statement {
    sid       = "SendDoneMessages"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.done.arn]
  }

  statement {
    sid       = "KeepFailedAsyncEvents"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.dlq.arn]
  }

  statement {
    # Input existence is checked by listing; the orchestrator never reads data.
    sid       = "ListRunInputs"
    actions   = ["s3:ListBucket"]
    resources = [module.archive_bucket.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["run=*/input/*"]
    }
  }

  statement {
    sid       = "ReadRunRecords"
    actions   = ["s3:GetObject"]
    resources = concat(local.run_state_objects, ["${local.artifacts_run}/attempts/*", local.shard_plan, local.shard_attempt_records])
  }

  statement {
    sid       = "WriteRunRecords"
    actions   = ["s3:PutObject"]
    resources = local.orchestrator_written_objects
  }

  statement {
    sid       = "ListRunRecords"
    actions   = ["s3:ListBucket"]
    resources = [module.artifacts_bucket.arn]

    condition {
      test     = "StringLike"
      variable = "s3:prefix"
      values   = ["run=*"]
    }
  }

  statement {
    sid       = "LaunchTasks"
    actions   = ["ecs:RunTask"]
    resources = [local.task_family_arn]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    # A STOPPED event redriven from the DLQ (`q4 dlq --redrive`) is only a pointer: the orchestrator reads the
    # task's state back from ECS before it recovers the run.
    sid       = "CheckRedrivenTasks"
    actions   = ["ecs:DescribeTasks"]
    resources = ["arn:${local.partition}:ecs:${var.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    # A sharded run that failed (a step's ERROR.json, task_crashed, cancelled): the run's other tasks are
    # stopped (their launch records name them); only this cluster's tasks.
    sid       = "StopFailedRunsTasks"
    actions   = ["ecs:StopTask"]
    resources = ["arn:${local.partition}:ecs:${var.region}:${local.account_id}:task/${aws_ecs_cluster.this.name}/*"]

    condition {
      test     = "ArnEquals"
      variable = "ecs:cluster"
      values   = [aws_ecs_cluster.this.arn]
    }
  }

  statement {
    sid       = "PassTaskRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.task.arn, aws_iam_role.task_execution.arn]

    condition {
      test     = "StringEquals"
      variable = "iam:PassedToService"
      values   = ["ecs-tasks.amazonaws.com"]
    }
  }

  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.orchestrator.arn}:log-stream:*"]
  }
}

resource "aws_iam_role_policy" "orchestrator" {
  name   = "orchestrate-q4-runs"
  role   = aws_iam_role.orchestrator.id
  policy = data.aws_iam_policy_document.orchestrator.json
}
