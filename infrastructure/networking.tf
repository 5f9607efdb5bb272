# ---------------------------------------------------------------------------------------------------------------------
# Networking: the tasks' subnets and security groups, from variables or the default VPC.
# ---------------------------------------------------------------------------------------------------------------------

locals {
  use_default_vpc       = length(var.subnet_ids) == 0
  create_security_group = length(var.security_group_ids) == 0
}

data "aws_vpc" "default" {
  count   = local.use_default_vpc ? 1 : 0
  default = true
}

data "aws_subnets" "default" {
  count = local.use_default_vpc ? 1 : 0

  filter {
    name   = "vpc-id"
    values = [data.aws_vpc.default[0].id]
  }

  filter {
    name   = "default-for-az"
    values = ["true"]
  }

  lifecycle {
    postcondition {
      condition     = length(self.ids) > 0
      error_message = "The default VPC has no default subnets; set subnet_ids to the subnets the tasks should run in."
    }
  }
}

data "aws_subnet" "first_given" {
  count = local.use_default_vpc ? 0 : 1
  id    = var.subnet_ids[0]
}

locals {
  task_subnet_ids = local.use_default_vpc ? sort(data.aws_subnets.default[0].ids) : var.subnet_ids
  task_vpc_id     = local.use_default_vpc ? data.aws_vpc.default[0].id : data.aws_subnet.first_given[0].vpc_id
  task_security_group_ids = (
    local.create_security_group ? [aws_security_group.task[0].id] : var.security_group_ids
  )
}

resource "aws_security_group" "task" {
  #checkov:skip=CKV2_AWS_5:The group is attached by ECS RunTask (the orchestrator passes it), not by a Terraform resource.
  count = local.create_security_group ? 1 : 0

  name        = "${var.name}-task"
  description = "Q4 Fargate tasks: no inbound traffic, outbound HTTPS to AWS APIs only."
  vpc_id      = local.task_vpc_id
}

resource "aws_vpc_security_group_egress_rule" "task_https" {
  count = local.create_security_group ? 1 : 0

  security_group_id = aws_security_group.task[0].id
  description       = "HTTPS to S3, SQS, ECR and CloudWatch Logs endpoints."
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}
