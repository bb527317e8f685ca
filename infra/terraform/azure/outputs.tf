output "resource_group" {
  description = "msi_resource_group of infra/ray/azure.yaml."
  value       = azurerm_resource_group.skytrain.name
}

output "identity_name" {
  description = "msi_name of infra/ray/azure.yaml."
  value       = azurerm_user_assigned_identity.ray.name
}

output "identity_client_id" {
  description = "Client id of the nodes' identity (AZURE_CLIENT_ID for libraries that pick an identity)."
  value       = azurerm_user_assigned_identity.ray.client_id
}

output "storage_account" {
  value = azurerm_storage_account.skytrain.name
}

output "container_url" {
  value = "https://${azurerm_storage_account.skytrain.name}.blob.core.windows.net/${azurerm_storage_container.skytrain.name}"
}
