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

output "skytrain_env" {
  description = "Settings for the machine that runs the flows (export each NAME=value): where datasets, checkpoints and MLflow artifacts go. Credentials: `az login` there (with a data role on the container), the nodes' identity on the cluster."
  value = {
    SKYTRAIN_DATA_STORE       = "abfss://${azurerm_storage_container.skytrain.name}@${azurerm_storage_account.skytrain.name}.dfs.core.windows.net/datasets"
    SKYTRAIN_RAY_STORAGE_PATH = "abfss://${azurerm_storage_container.skytrain.name}@${azurerm_storage_account.skytrain.name}.dfs.core.windows.net/ray_results"
    # Through the MLflow server (started with --artifacts-destination, output mlflow_artifacts_destination):
    # MLflow's own abfss:// and wasbs:// clients need Azure SDK packages that skytrain and its nodes do not install.
    SKYTRAIN_MLFLOW_ARTIFACT_ROOT = "mlflow-artifacts:/skytrain"
  }
}

output "mlflow_artifacts_destination" {
  description = "--artifacts-destination of the MLflow server: the container's mlartifacts/ folder (the server needs azure-storage-blob and azure-identity, and an identity with a data role on the container)."
  value       = "wasbs://${azurerm_storage_container.skytrain.name}@${azurerm_storage_account.skytrain.name}.blob.core.windows.net/mlartifacts"
}
