variable "location" {
  description = "Azure region of the storage and identity (provider.location of infra/ray/azure.yaml)."
  type        = string
  default     = "eastus"
}

variable "resource_group_name" {
  description = "Resource group of the storage account and identity (msi_resource_group of infra/ray/azure.yaml)."
  type        = string
  default     = "skytrain"
}

variable "storage_account_name" {
  description = "Storage account for datasets, checkpoints and MLflow artifacts (globally unique, 3-24 lowercase letters and digits)."
  type        = string

  validation {
    condition     = can(regex("^[a-z0-9]{3,24}$", var.storage_account_name))
    error_message = "storage_account_name must be 3-24 lowercase letters and digits."
  }
}

variable "identity_name" {
  description = "User-assigned identity of the Ray nodes (msi_name of infra/ray/azure.yaml)."
  type        = string
  default     = "skytrain-ray"
}

variable "replication_type" {
  description = "Storage redundancy: LRS, ZRS, GRS, ..."
  type        = string
  default     = "ZRS"
}

variable "retention_days" {
  description = "Days deleted blobs, containers and old versions stay recoverable."
  type        = number
  default     = 30
}
