variable "region" {
  description = "AWS region of the bucket (and of the Ray cluster in infra/ray/aws.yaml)."
  type        = string
  default     = "us-west-2"
}

variable "bucket_name" {
  description = "Name of the S3 bucket for datasets, Ray Train checkpoints and MLflow artifacts (globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name)) && !strcontains(var.bucket_name, "..")
    error_message = "bucket_name must be 3-63 lowercase letters, digits, dots or hyphens, starting and ending with a letter or digit."
  }
}

variable "name_prefix" {
  description = "Prefix of the IAM roles and instance profiles; infra/ray/aws.yaml expects the default."
  type        = string
  default     = "skytrain"
}

variable "cluster_name" {
  description = "cluster_name of infra/ray/aws.yaml: the head may only terminate or tag instances Ray tagged with it."
  type        = string
  default     = "skytrain"
}

variable "worker_instance_types" {
  description = "The only EC2 instance types the head may launch: the InstanceType of every worker type in infra/ray/aws.yaml (the head itself is launched by `ray up` with your credentials)."
  type        = list(string)
  default     = ["m5.2xlarge", "g5.xlarge"]

  validation {
    condition     = length(var.worker_instance_types) > 0 && alltrue([for t in var.worker_instance_types : can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9]+$", t))])
    error_message = "worker_instance_types must list EC2 instance types such as g5.xlarge."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket with everything in it (datasets, checkpoints, models)."
  type        = bool
  default     = false
}

variable "noncurrent_version_days" {
  description = "Days an overwritten or deleted object's old version is kept before it expires."
  type        = number
  default     = 30
}

variable "kms_key_arn" {
  description = "Customer-managed KMS key for the bucket; null: S3-managed keys (SSE-S3)."
  type        = string
  default     = null
}

variable "create_database" {
  description = "Create a PostgreSQL (RDS) instance for the MLflow and Prefect servers."
  type        = bool
  default     = false
}

variable "database_vpc_id" {
  description = "VPC of the database (required with create_database)."
  type        = string
  default     = null

  validation {
    condition     = !var.create_database || var.database_vpc_id != null
    error_message = "create_database needs database_vpc_id."
  }
}

variable "database_subnet_ids" {
  description = "Private subnets (two availability zones or more) for the database."
  type        = list(string)
  default     = []

  validation {
    condition     = !var.create_database || length(var.database_subnet_ids) >= 2
    error_message = "create_database needs at least two database_subnet_ids in different availability zones."
  }
}

variable "database_allowed_cidr_blocks" {
  description = "Networks allowed to reach PostgreSQL (the VPC of the Ray cluster and the MLflow/Prefect servers)."
  type        = list(string)
  default     = []
}

variable "database_instance_class" {
  description = "RDS instance class."
  type        = string
  default     = "db.t4g.small"
}

variable "database_deletion_protection" {
  description = "Refuse to delete the database (set false before destroying on purpose)."
  type        = bool
  default     = true
}

variable "tags" {
  description = "Extra tags on every resource."
  type        = map(string)
  default     = {}
}
