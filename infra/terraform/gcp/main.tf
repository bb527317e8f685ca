# One bucket for datasets/, ray_results/ (Ray Train checkpoints) and mlartifacts/ (MLflow), and
# the identities of the Ray nodes that infra/ray/gcp.yaml names. skytrain reads and writes the
# bucket through Cloud Storage's S3-compatible XML API (an HMAC key: see infra/README.md).

resource "google_storage_bucket" "skytrain" {
  name                        = var.bucket_name
  location                    = upper(var.region)
  force_destroy               = var.force_destroy
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_days
      with_state                 = "ARCHIVED"
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }
}

resource "google_service_account" "head" {
  account_id   = "${var.name_prefix}-ray-head"
  display_name = "Ray head of the skytrain cluster"
}

resource "google_service_account" "worker" {
  account_id   = "${var.name_prefix}-ray-worker"
  display_name = "Ray workers of the skytrain cluster"
}

# Both node kinds read and write objects of this bucket only (objectUser: no IAM changes).
resource "google_storage_bucket_iam_member" "nodes" {
  for_each = {
    head   = google_service_account.head.member
    worker = google_service_account.worker.member
  }
  bucket = google_storage_bucket.skytrain.name
  role   = "roles/storage.objectUser"
  member = each.value
}

# Ray's autoscaler on the head creates and deletes worker instances in the project...
resource "google_project_iam_member" "head_instances" {
  project = var.project_id
  role    = "roles/compute.instanceAdmin.v1"
  member  = google_service_account.head.member
}

# ...which run as the worker service account, and only that one.
resource "google_service_account_iam_member" "head_launches_workers" {
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.head.member
}
