# A storage account with one private container (`skytrain`) for datasets, checkpoints and MLflow
# artifacts, and the user-assigned identity the Ray nodes run as (infra/ray/azure.yaml).

resource "azurerm_resource_group" "skytrain" {
  name     = var.resource_group_name
  location = var.location
}

resource "azurerm_storage_account" "skytrain" {
  name                              = var.storage_account_name
  resource_group_name               = azurerm_resource_group.skytrain.name
  location                          = azurerm_resource_group.skytrain.location
  account_kind                      = "StorageV2"
  account_tier                      = "Standard"
  account_replication_type          = var.replication_type
  min_tls_version                   = "TLS1_2"
  https_traffic_only_enabled        = true
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  infrastructure_encryption_enabled = true

  blob_properties {
    versioning_enabled = true

    delete_retention_policy {
      days = var.retention_days
    }

    container_delete_retention_policy {
      days = var.retention_days
    }
  }
}

resource "azurerm_storage_container" "skytrain" {
  name                  = "skytrain"
  storage_account_id    = azurerm_storage_account.skytrain.id
  container_access_type = "private"
}

resource "azurerm_storage_management_policy" "skytrain" {
  storage_account_id = azurerm_storage_account.skytrain.id

  rule {
    name    = "expire-old-versions"
    enabled = true

    filters {
      blob_types = ["blockBlob"]
    }

    actions {
      version {
        delete_after_days_since_creation = var.retention_days
      }
    }
  }
}

resource "azurerm_user_assigned_identity" "ray" {
  name                = var.identity_name
  resource_group_name = azurerm_resource_group.skytrain.name
  location            = azurerm_resource_group.skytrain.location
}

# Read and write blobs of the skytrain container only. (Ray's own deployment gives this identity
# Contributor on the cluster's resource group, which its autoscaler needs to manage the VMs.)
resource "azurerm_role_assignment" "ray_blobs" {
  scope                = azurerm_storage_container.skytrain.resource_manager_id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_user_assigned_identity.ray.principal_id
}
