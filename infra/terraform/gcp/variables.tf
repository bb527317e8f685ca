variable "project_id" {
  description = "Google Cloud project of the bucket and the Ray cluster (provider.project_id of infra/ray/gcp.yaml)."
  type        = string
}

variable "region" {
  description = "Region of the bucket (and of the Ray cluster in infra/ray/gcp.yaml)."
  type        = string
  default     = "us-central1"
}

variable "bucket_name" {
  description = "Name of the Cloud Storage bucket for datasets, Ray Train checkpoints and MLflow artifacts (globally unique)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be 3-63 lowercase letters, digits, dots, underscores or hyphens."
  }
}

variable "name_prefix" {
  description = "Prefix of the service accounts; infra/ray/gcp.yaml expects the default."
  type        = string
  default     = "skytrain"
}

variable "cluster_name" {
  description = "cluster_name of infra/ray/gcp.yaml: the head manages only the instances and disks Ray names after it."
  type        = string
  default     = "skytrain"

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*$", var.cluster_name))
    error_message = "cluster_name must start with a lowercase letter and hold only lowercase letters, digits and hyphens (GCP instance names)."
  }
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket with everything in it."
  type        = bool
  default     = false
}

variable "noncurrent_version_days" {
  description = "Days an overwritten or deleted object's old version is kept."
  type        = number
  default     = 30
}

variable "kms_key_name" {
  description = "Cloud KMS key for the bucket (CMEK); null: Google-managed encryption."
  type        = string
  default     = null
}
