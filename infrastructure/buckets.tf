# ---------------------------------------------------------------------------------------------------------------------
# Buckets: the archive holds inputs under run=<id>/input/, the artifacts bucket holds every run's outputs.
# ---------------------------------------------------------------------------------------------------------------------

module "archive_bucket" {
  source = "./modules/secure_bucket"

  bucket_name                        = local.archive_bucket_name
  force_destroy                      = var.force_destroy
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
}

module "artifacts_bucket" {
  source = "./modules/secure_bucket"

  bucket_name                        = local.artifacts_bucket_name
  force_destroy                      = var.force_destroy
  noncurrent_version_expiration_days = var.noncurrent_version_expiration_days
}
