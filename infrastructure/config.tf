# ---------------------------------------------------------------------------------------------------------------------
# AWS Config recording: off, minimal (S3 buckets and IAM roles, the control plane that matters) or broad.
# Runs create only objects and messages, so even `broad` records almost nothing after the one deployment.
# Note: a region holds one configuration recorder per account; set config_recording = "off" where one exists.
# ---------------------------------------------------------------------------------------------------------------------

locals {
  config_enabled     = var.config_recording != "off"
  config_bucket_name = "${var.name}-config-${local.account_id}-${var.region}"
}

data "aws_iam_policy_document" "config_delivery" {
  count = local.config_enabled ? 1 : 0

  statement {
    sid       = "AWSConfigBucketPermissionsCheck"
    actions   = ["s3:GetBucketAcl", "s3:ListBucket"]
    resources = ["arn:${local.partition}:s3:::${local.config_bucket_name}"]

    principals {
      type        = "Service"
      identifiers = ["config.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "AWS:SourceAccount"
      values   = [local.account_id]
    }
  }

  statement {
    sid       = "AWSConfigBucketDelivery"
    actions   = ["s3:PutObject"]
    resources = ["arn:${local.partition}:s3:::${local.config_bucket_name}/AWSLogs/${local.account_id}/Config/*"]

    principals {
      type        = "Service"
      identifiers = ["config.amazonaws.com"]
    }

    condition {
      test     = "StringEquals"
      variable = "AWS:SourceAccount"
      values   = [local.account_id]
    }
  }
}

module "config_bucket" {
  source = "./modules/secure_bucket"
  count  = local.config_enabled ? 1 : 0

  bucket_name                        = local.config_bucket_name
  force_destroy                      = var.force_destroy
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
  extra_policy_json                  = data.aws_iam_policy_document.config_delivery[0].json
}

data "aws_iam_policy_document" "config_assume" {
  statement {
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["config.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "config" {
  count = local.config_enabled ? 1 : 0

  name               = "${var.name}-config"
  description        = "AWS Config records the Q4 control plane."
  assume_role_policy = data.aws_iam_policy_document.config_assume.json
}

# minimal: read exactly the two recorded types; broad: AWS's managed policy, which follows new resource types.
data "aws_iam_policy_document" "config_recorder" {
  count = local.config_enabled ? 1 : 0

  statement {
    sid       = "DeliverSnapshots"
    actions   = ["s3:PutObject", "s3:PutObjectAcl"]
    resources = ["${module.config_bucket[0].arn}/AWSLogs/${local.account_id}/Config/*"]

    condition {
      test     = "StringLike"
      variable = "s3:x-amz-acl"
      values   = ["bucket-owner-full-control"]
    }
  }

  statement {
    sid       = "CheckDeliveryBucket"
    actions   = ["s3:GetBucketAcl"]
    resources = [module.config_bucket[0].arn]
  }

  dynamic "statement" {
    for_each = var.config_recording == "minimal" ? [1] : []

    content {
      sid = "DescribeBucketsAndRoles"
      actions = [
        "s3:GetAccelerateConfiguration", "s3:GetBucketAcl", "s3:GetBucketCORS", "s3:GetBucketLocation",
        "s3:GetBucketLogging", "s3:GetBucketNotification", "s3:GetBucketObjectLockConfiguration",
        "s3:GetBucketPolicy", "s3:GetBucketPublicAccessBlock", "s3:GetBucketRequestPayment", "s3:GetBucketTagging",
        "s3:GetBucketVersioning", "s3:GetBucketWebsite", "s3:GetEncryptionConfiguration",
        "s3:GetLifecycleConfiguration", "s3:GetReplicationConfiguration", "s3:ListAllMyBuckets",
        "s3:ListBucket", "s3:GetIntelligentTieringConfiguration", "s3:GetBucketOwnershipControls",
        "iam:GetRole", "iam:GetRolePolicy", "iam:ListRoles", "iam:ListRolePolicies",
        "iam:ListAttachedRolePolicies", "iam:ListRoleTags", "iam:ListInstanceProfilesForRole",
      ]
      resources = ["*"] # Config describes every bucket and role of the account; these calls are read-only.
    }
  }
}

resource "aws_iam_role_policy" "config" {
  count = local.config_enabled ? 1 : 0

  name   = "record-q4-control-plane"
  role   = aws_iam_role.config[0].id
  policy = data.aws_iam_policy_document.config_recorder[0].json
}

resource "aws_iam_role_policy_attachment" "config_broad" {
  count = var.config_recording == "broad" ? 1 : 0

  role       = aws_iam_role.config[0].name
  policy_arn = "arn:${local.partition}:iam::aws:policy/service-role/AWS_ConfigRole"
}

resource "aws_config_configuration_recorder" "this" {
  #checkov:skip=CKV2_AWS_48:Recording everything is the config_recording = "broad" choice; the default records the control plane only, to keep Config cost bounded (docs/contract.md, Infrastructure).
  count = local.config_enabled ? 1 : 0

  name     = "${var.name}-recorder"
  role_arn = aws_iam_role.config[0].arn

  recording_group {
    all_supported                 = var.config_recording == "broad"
    include_global_resource_types = var.config_recording == "broad"
    resource_types                = var.config_recording == "minimal" ? ["AWS::S3::Bucket", "AWS::IAM::Role"] : null
  }
}

resource "aws_config_delivery_channel" "this" {
  count = local.config_enabled ? 1 : 0

  name           = "${var.name}-delivery"
  s3_bucket_name = module.config_bucket[0].id

  depends_on = [aws_config_configuration_recorder.this, aws_iam_role_policy.config]
}

resource "aws_config_configuration_recorder_status" "this" {
  count = local.config_enabled ? 1 : 0

  name       = aws_config_configuration_recorder.this[0].name
  is_enabled = true

  depends_on = [aws_config_delivery_channel.this]
}
