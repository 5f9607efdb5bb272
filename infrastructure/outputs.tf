# ---------------------------------------------------------------------------------------------------------------------
# The outputs of docs/contract.md, Infrastructure, then what deployment scripts and the local stack need.
# ---------------------------------------------------------------------------------------------------------------------

output "archive_bucket" {
  description = "Archive bucket: upload inputs under run=<run_id>/input/."
  value       = module.archive_bucket.id
}

output "artifacts_bucket" {
  description = "Artifacts bucket: every run's outputs under run=<run_id>/."
  value       = module.artifacts_bucket.id
}

output "work_queue_url" {
  description = "Work queue URL: send one work message per run."
  value       = aws_sqs_queue.work.url
}

output "done_queue_url" {
  description = "Done queue URL: one terminal q4.done/v1 message per run."
  value       = aws_sqs_queue.done.url
}

output "dlq_url" {
  description = "Dead-letter queue URL: work messages that failed max_receive_count times, and STOPPED events the orchestrator could not handle."
  value       = aws_sqs_queue.dlq.url
}

output "task_log_group" {
  description = "CloudWatch Logs group of the tasks' output (stream <prefix>/<container>/<task id>): `q4 logs` reads it."
  value       = aws_cloudwatch_log_group.task.name
}

output "cluster_name" {
  description = "ECS cluster the tasks run in."
  value       = aws_ecs_cluster.this.name
}

output "task_definition_arn" {
  description = "ARN (with revision) of the Fargate task definition."
  value       = aws_ecs_task_definition.task.arn
}

output "ecr_repository_url" {
  description = "ECR repository URL of the task image (push <url>:<image_tag>)."
  value       = aws_ecr_repository.task.repository_url
}

output "orchestrator_function_name" {
  description = "Name of the orchestrator Lambda function."
  value       = aws_lambda_function.orchestrator.function_name
}

output "task_image" {
  description = "Image URI the task definition runs."
  value       = local.task_image
}

output "region" {
  description = "Region the stack is deployed in."
  value       = var.region
}
