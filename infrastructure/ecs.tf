# ---------------------------------------------------------------------------------------------------------------------
# ECS: the cluster and the Fargate task definition (one task = one run).
# ---------------------------------------------------------------------------------------------------------------------

resource "aws_ecs_cluster" "this" {
  name = var.name

  setting {
    name  = "containerInsights"
    value = "enabled"
  }
}

resource "aws_cloudwatch_log_group" "task" {
  #checkov:skip=CKV_AWS_158:Logs carry run ids and counts, no data; the service-owned key is used to avoid KMS key-policy upkeep.
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable (default 30 days) to keep cost bounded.
  name              = "/ecs/${var.name}-task"
  retention_in_days = var.log_retention_days
}

resource "aws_ecs_task_definition" "task" {
  family                   = "${var.name}-task"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = tostring(var.task_cpu)
  memory                   = tostring(var.task_memory)
  execution_role_arn       = aws_iam_role.task_execution.arn
  task_role_arn            = aws_iam_role.task.arn

  runtime_platform {
    operating_system_family = "LINUX"
    cpu_architecture        = var.task_cpu_architecture
  }

  ephemeral_storage {
    size_in_gib = var.task_ephemeral_storage_gib
  }

  # A writable scratch volume on the task's ephemeral storage; the root filesystem is read-only.
  volume {
    name = "scratch"
  }

  container_definitions = jsonencode([{
    name                   = local.container_name
    image                  = local.task_image
    essential              = true
    command                = local.container_command
    memory                 = var.task_memory
    readonlyRootFilesystem = true
    mountPoints = [{
      sourceVolume  = "scratch"
      containerPath = local.scratch_mount_path
      readOnly      = false
    }]
    environment = [
      { name = "Q4_INPUT_BUCKET", value = module.archive_bucket.id },
      { name = "Q4_ARTIFACTS_BUCKET", value = module.artifacts_bucket.id },
      { name = "Q4_DONE_QUEUE_URL", value = aws_sqs_queue.done.url },
      { name = "Q4_CHUNK_ROWS", value = tostring(var.chunk_rows) },
      { name = "Q4_SCRATCH_DIR", value = local.scratch_mount_path },
      { name = "TMPDIR", value = local.scratch_mount_path },
      { name = "MPLCONFIGDIR", value = "${local.scratch_mount_path}/.matplotlib" },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        "awslogs-group"         = aws_cloudwatch_log_group.task.name
        "awslogs-region"        = var.region
        "awslogs-stream-prefix" = "q4"
      }
    }
  }])
}
