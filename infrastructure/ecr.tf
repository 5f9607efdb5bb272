# ---------------------------------------------------------------------------------------------------------------------
# ECR repository of the task image: scanned on push, immutable tags.
# ---------------------------------------------------------------------------------------------------------------------

resource "aws_ecr_repository" "task" {
  #checkov:skip=CKV_AWS_136:AES256 (ECR default) encryption; a customer-managed KMS key adds cost and key-policy upkeep for a public-code image.
  name                 = "${var.name}-task"
  image_tag_mutability = "IMMUTABLE"
  force_delete         = var.force_destroy

  image_scanning_configuration {
    scan_on_push = true
  }

  encryption_configuration {
    encryption_type = "AES256"
  }
}

resource "aws_ecr_lifecycle_policy" "task" {
  repository = aws_ecr_repository.task.name

  policy = jsonencode({
    rules = [{
      rulePriority = 1
      description  = "Keep the 20 most recent images."
      selection = {
        tagStatus   = "any"
        countType   = "imageCountMoreThan"
        countNumber = 20
      }
      action = { type = "expire" }
    }]
  })
}

locals {
  task_image = coalesce(var.image_uri, "${aws_ecr_repository.task.repository_url}:${var.image_tag}")
}
