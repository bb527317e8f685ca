output "bucket_name" {
  value = google_storage_bucket.skytrain.name
}

output "head_service_account" {
  description = "serviceAccounts email of `head` in infra/ray/gcp.yaml."
  value       = google_service_account.head.email
}

output "worker_service_account" {
  description = "serviceAccounts email of the worker types in infra/ray/gcp.yaml."
  value       = google_service_account.worker.email
}

output "skytrain_env" {
  description = "Settings for the machine that runs the flows (plus an HMAC key as AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY)."
  value = {
    SKYTRAIN_DATA_STORE           = "s3://${google_storage_bucket.skytrain.name}/datasets"
    SKYTRAIN_RAY_STORAGE_PATH     = "s3://${google_storage_bucket.skytrain.name}/ray_results"
    SKYTRAIN_MLFLOW_ARTIFACT_ROOT = "s3://${google_storage_bucket.skytrain.name}/mlartifacts"
    AWS_ENDPOINT_URL              = "https://storage.googleapis.com"
    MLFLOW_S3_ENDPOINT_URL        = "https://storage.googleapis.com"
    AWS_REGION                    = var.region
  }
}
