# ---------------------------------------------------------------------------------------------------------------------
# General
# ---------------------------------------------------------------------------------------------------------------------

variable "name" {
  description = "Name prefix of every resource (lowercase letters, digits and hyphens, 2-20 characters)."
  type        = string
  default     = "q4"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{1,19}$", var.name))
    error_message = "The name must be 2-20 lowercase letters, digits or hyphens, starting with a letter."
  }
}

variable "region" {
  description = "AWS region to deploy into."
  type        = string
  default     = "us-east-1"
}

variable "tags" {
  description = "Extra tags applied to every resource (merged over the default q4:* tags)."
  type        = map(string)
  default     = {}
}

variable "force_destroy" {
  description = "Allow `terraform destroy` to delete non-empty buckets and ECR repositories (keep false in production)."
  type        = bool
  default     = false
}

# ---------------------------------------------------------------------------------------------------------------------
# Buckets
# ---------------------------------------------------------------------------------------------------------------------

variable "archive_bucket_name" {
  description = "Name of the archive (input) bucket; null means `<name>-archive-<account id>-<region>`."
  type        = string
  default     = null
}

variable "artifacts_bucket_name" {
  description = "Name of the artifacts (output) bucket; null means `<name>-artifacts-<account id>-<region>`."
  type        = string
  default     = null
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which non-current (overwritten or deleted) object versions are expired, 1-3650."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && var.noncurrent_version_expiration_days <= 3650
    error_message = "noncurrent_version_expiration_days must be between 1 and 3650."
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Queues
# ---------------------------------------------------------------------------------------------------------------------

variable "max_receive_count" {
  description = "Deliveries of a work message before it moves to the dead-letter queue, 1-1000."
  type        = number
  default     = 5

  validation {
    condition     = var.max_receive_count >= 1 && var.max_receive_count <= 1000
    error_message = "max_receive_count must be between 1 and 1000."
  }
}

variable "restrict_dlq_sources" {
  description = "Allow only the work queue to use the DLQ (redrive allow policy); plain moto server never reports it back, so emulators set false."
  type        = bool
  default     = true
}

variable "message_retention_seconds" {
  description = "Retention of work and done messages in seconds, 60-1209600 (the DLQ always keeps 14 days)."
  type        = number
  default     = 345600

  validation {
    condition     = var.message_retention_seconds >= 60 && var.message_retention_seconds <= 1209600
    error_message = "message_retention_seconds must be between 60 and 1209600."
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Orchestrator Lambda
# ---------------------------------------------------------------------------------------------------------------------

variable "lambda_zip_path" {
  description = "Path of the orchestrator zip built by scripts/build_lambda_zip.sh; null means ../build/orchestrator.zip."
  type        = string
  default     = null
}

variable "lambda_timeout" {
  description = "Orchestrator timeout in seconds, 3-900; the work queue's visibility timeout is 6 times this."
  type        = number
  default     = 60

  validation {
    condition     = var.lambda_timeout >= 3 && var.lambda_timeout <= 900
    error_message = "lambda_timeout must be between 3 and 900 seconds."
  }
}

variable "lambda_memory_size" {
  description = "Orchestrator memory in MiB, 128-10240."
  type        = number
  default     = 256

  validation {
    condition     = var.lambda_memory_size >= 128 && var.lambda_memory_size <= 10240
    error_message = "lambda_memory_size must be between 128 and 10240 MiB."
  }
}

variable "sqs_batch_size" {
  description = "Work messages per orchestrator invocation, 1-10."
  type        = number
  default     = 10

  validation {
    condition     = var.sqs_batch_size >= 1 && var.sqs_batch_size <= 10
    error_message = "sqs_batch_size must be between 1 and 10."
  }
}

variable "event_source_mapping_enabled" {
  description = "Whether the work queue triggers the orchestrator; false on a plain moto server, whose own poller would try to run the function in Docker."
  type        = bool
  default     = true
}

variable "max_attempts" {
  description = "Task launches per run before a crashed run is failed with task_crashed, 1-10."
  type        = number
  default     = 3

  validation {
    condition     = var.max_attempts >= 1 && var.max_attempts <= 10
    error_message = "max_attempts must be between 1 and 10."
  }
}

variable "log_level" {
  description = "Orchestrator log level (POWERTOOLS_LOG_LEVEL): DEBUG, INFO, WARNING or ERROR."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be one of DEBUG, INFO, WARNING, ERROR."
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Fargate task
# ---------------------------------------------------------------------------------------------------------------------

variable "image_tag" {
  description = "Tag of the task image in this stack's ECR repository (tags are immutable: push a new tag per build)."
  type        = string
  default     = "latest"
}

variable "image_uri" {
  description = "Full task image URI overriding the ECR repository and image_tag (e.g. an image from another registry)."
  type        = string
  default     = null
}

variable "task_cpu" {
  description = "Fargate task CPU units: 256, 512, 1024, 2048, 4096, 8192 or 16384 (must fit task_memory)."
  type        = number
  default     = 1024

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu)
    error_message = "task_cpu must be one of 256, 512, 1024, 2048, 4096, 8192, 16384."
  }
}

variable "task_memory" {
  description = "Fargate task memory in MiB, 512-122880 (a combination Fargate supports for task_cpu)."
  type        = number
  default     = 4096

  validation {
    condition     = var.task_memory >= 512 && var.task_memory <= 122880
    error_message = "task_memory must be between 512 and 122880 MiB."
  }
}

variable "task_ephemeral_storage_gib" {
  description = "Fargate ephemeral storage in GiB, 21-200 (holds the scratch volume with inputs and artifacts)."
  type        = number
  default     = 50

  validation {
    condition     = var.task_ephemeral_storage_gib >= 21 && var.task_ephemeral_storage_gib <= 200
    error_message = "task_ephemeral_storage_gib must be between 21 and 200 GiB."
  }
}

# Per-run task size (docs/contract.md, "Task size"): the orchestrator sizes each task to its input within these
# limits with RunTask overrides; the task definition's task_cpu/task_memory/task_ephemeral_storage_gib only
# apply to tasks started by hand.
variable "task_cpu_min" {
  description = "Smallest CPU the orchestrator gives a run's task (Fargate units: 256, 512, ..., 16384)."
  type        = number
  default     = 1024

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu_min)
    error_message = "task_cpu_min must be one of 256, 512, 1024, 2048, 4096, 8192, 16384."
  }
}

variable "task_cpu_max" {
  description = "Largest CPU the orchestrator gives a run's task, sized or asked for with task_cpu (Fargate units, at least task_cpu_min)."
  type        = number
  default     = 4096

  validation {
    condition     = contains([256, 512, 1024, 2048, 4096, 8192, 16384], var.task_cpu_max)
    error_message = "task_cpu_max must be one of 256, 512, 1024, 2048, 4096, 8192, 16384."
  }
}

variable "task_memory_per_vcpu_mib" {
  description = "Task memory per vCPU in MiB, 512-8192; fitted to the memory Fargate allows with the chosen CPU."
  type        = number
  default     = 4096

  validation {
    condition     = var.task_memory_per_vcpu_mib >= 512 && var.task_memory_per_vcpu_mib <= 8192
    error_message = "task_memory_per_vcpu_mib must be between 512 and 8192 MiB."
  }
}

variable "task_ephemeral_storage_min_gib" {
  description = "Smallest ephemeral storage of a run's task in GiB, 21-200 (a RunTask override is at least 21)."
  type        = number
  default     = 21

  validation {
    condition     = var.task_ephemeral_storage_min_gib >= 21 && var.task_ephemeral_storage_min_gib <= 200
    error_message = "task_ephemeral_storage_min_gib must be between 21 and 200 GiB."
  }
}

variable "task_ephemeral_storage_max_gib" {
  description = "Largest ephemeral storage of a run's task in GiB, 21-200 (at least task_ephemeral_storage_min_gib)."
  type        = number
  default     = 200

  validation {
    condition     = var.task_ephemeral_storage_max_gib >= 21 && var.task_ephemeral_storage_max_gib <= 200
    error_message = "task_ephemeral_storage_max_gib must be between 21 and 200 GiB."
  }
}

# Sharded runs (docs/contract.md, "Sharded runs"): a run over many tasks, one per slice of its input.
variable "shard_target_bytes" {
  description = "Input bytes per shard when a work message names no shards: ceil(input bytes / this), at most max_shards (at least 4096)."
  type        = number
  default     = 8589934592

  validation {
    condition     = var.shard_target_bytes >= 4096 && floor(var.shard_target_bytes) == var.shard_target_bytes
    error_message = "shard_target_bytes must be a whole number of bytes, at least 4096."
  }
}

variable "max_shards" {
  description = "Most shards (tasks per step) of one run, 1-1000; a work message asking for more is rejected (shards_not_allowed)."
  type        = number
  default     = 50

  validation {
    condition     = var.max_shards >= 1 && var.max_shards <= 1000 && floor(var.max_shards) == var.max_shards
    error_message = "max_shards must be a whole number from 1 to 1000."
  }
}

variable "task_cpu_architecture" {
  description = "CPU architecture of the task image: X86_64 or ARM64."
  type        = string
  default     = "X86_64"

  validation {
    condition     = contains(["X86_64", "ARM64"], var.task_cpu_architecture)
    error_message = "task_cpu_architecture must be X86_64 or ARM64."
  }
}

variable "chunk_rows" {
  description = "Rows per chunk of the streamed Q4 computation (Q4_CHUNK_ROWS), 1000-10000000: bounds task memory."
  type        = number
  default     = 65536

  validation {
    condition     = var.chunk_rows >= 1000 && var.chunk_rows <= 10000000
    error_message = "chunk_rows must be between 1000 and 10000000."
  }
}

variable "log_retention_days" {
  description = "Retention of the task and orchestrator log groups in days (a value CloudWatch Logs accepts, e.g. 30)."
  type        = number
  default     = 30

  validation {
    condition = contains(
      [1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653],
      var.log_retention_days,
    )
    error_message = "log_retention_days must be a retention CloudWatch Logs accepts (1, 3, 5, 7, 14, 30, 60, 90, ... 3653)."
  }
}

# ---------------------------------------------------------------------------------------------------------------------
# Networking
# ---------------------------------------------------------------------------------------------------------------------

variable "subnet_ids" {
  description = "Subnets the tasks run in; empty means the default-for-AZ subnets of the region's default VPC."
  type        = list(string)
  default     = []
}

variable "security_group_ids" {
  description = "Security groups of the tasks; empty means a group created here that allows only outbound HTTPS."
  type        = list(string)
  default     = []
}

variable "assign_public_ip" {
  description = "Give tasks a public IP (needed in public subnets without a NAT gateway or VPC endpoints to reach AWS APIs)."
  type        = bool
  default     = true
}

# ---------------------------------------------------------------------------------------------------------------------
# AWS Config
# ---------------------------------------------------------------------------------------------------------------------

variable "config_recording" {
  description = "AWS Config recording: off, minimal (S3 buckets and IAM roles only) or broad (all supported types)."
  type        = string
  default     = "minimal"

  validation {
    condition     = contains(["off", "minimal", "broad"], var.config_recording)
    error_message = "config_recording must be off, minimal or broad."
  }
}
