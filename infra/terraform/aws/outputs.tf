output "bucket_name" {
  description = "The skytrain bucket."
  value       = aws_s3_bucket.skytrain.bucket
}

output "head_instance_profile" {
  description = "Instance profile of the Ray head (IamInstanceProfile.Name of `head` in infra/ray/aws.yaml)."
  value       = aws_iam_instance_profile.head.name
}

output "worker_instance_profile" {
  description = "Instance profile of the Ray workers (IamInstanceProfile.Name of the worker types in infra/ray/aws.yaml)."
  value       = aws_iam_instance_profile.worker.name
}

output "head_role_arn" {
  value = aws_iam_role.head.arn
}

output "worker_role_arn" {
  value = aws_iam_role.worker.arn
}

output "skytrain_env" {
  description = "Settings for the machine that runs the flows (export each NAME=value): where datasets, checkpoints and MLflow artifacts go."
  value = {
    SKYTRAIN_DATA_STORE           = "s3://${aws_s3_bucket.skytrain.bucket}/datasets"
    SKYTRAIN_RAY_STORAGE_PATH     = "s3://${aws_s3_bucket.skytrain.bucket}/ray_results"
    SKYTRAIN_MLFLOW_ARTIFACT_ROOT = "s3://${aws_s3_bucket.skytrain.bucket}/mlartifacts"
    AWS_REGION                    = var.region
  }
}

output "database_endpoint" {
  description = "host:port of PostgreSQL (null without create_database)."
  value       = var.create_database ? aws_db_instance.skytrain[0].endpoint : null
}

output "database_secret_arn" {
  description = "Secrets Manager secret holding the database's master username and password."
  value       = var.create_database ? aws_db_instance.skytrain[0].master_user_secret[0].secret_arn : null
}
