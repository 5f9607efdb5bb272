# ---------------------------------------------------------------------------------------------------------------------
# Terraform and provider versions
#
# The provider block carries no endpoints and no credentials: deploy with the usual AWS credential chain, or point it
# at an emulator with an `*_override.tf` file in a copy of this directory (see deploy/q4_deploy/terraform.py).
# ---------------------------------------------------------------------------------------------------------------------

terraform {
  required_version = ">= 1.6"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.40, < 6.0"
    }
  }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = local.tags
  }
}
