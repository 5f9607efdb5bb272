# ---------------------------------------------------------------------------------------------------------------------
# Shared names and tags
# ---------------------------------------------------------------------------------------------------------------------

data "aws_caller_identity" "current" {}

data "aws_partition" "current" {}

locals {
  account_id = data.aws_caller_identity.current.account_id
  partition  = data.aws_partition.current.partition

  # Bucket names are global: make the defaults unique per account and region.
  archive_bucket_name   = coalesce(var.archive_bucket_name, "${var.name}-archive-${local.account_id}-${var.region}")
  artifacts_bucket_name = coalesce(var.artifacts_bucket_name, "${var.name}-artifacts-${local.account_id}-${var.region}")

  container_name     = "q4"
  container_command  = ["q4-task"]
  scratch_mount_path = "/scratch"

  tags = merge({ "q4:project" = var.name, "q4:managed-by" = "terraform" }, var.tags)
}
