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

# Ray's autoscaler on the head creates, labels, stops, starts and deletes the cluster's instances.
# Ray names them ray-<cluster_name>-<head|worker>-<8 hex digits>-compute (ray/autoscaler/_private/
# gcp/node.py, _generate_node_name, from the ray-node-name label its launcher sets), and each boot
# disk takes its instance's name (infra/ray/gcp.yaml sets no diskName). instanceAdmin.v1 therefore
# holds only for instances and disks with those names: not for the project's other VMs and disks,
# nor for any other resource type the role covers (images, snapshots, instance templates and
# groups, ...). The whole names are matched up to "-head-"/"-worker-", so that a cluster named
# skytrain-dev is not the cluster skytrain.
resource "google_project_iam_member" "head_instances" {
  project = var.project_id
  role    = "roles/compute.instanceAdmin.v1"
  member  = google_service_account.head.member

  condition {
    title       = "${var.cluster_name} Ray cluster VMs and disks only"
    description = "Instances and disks named ray-${var.cluster_name}-head-* or ray-${var.cluster_name}-worker-*, as Ray names them."
    expression  = <<-EOT
      (resource.type == "compute.googleapis.com/Instance" && (resource.name.extract("/instances/{name}").startsWith("ray-${var.cluster_name}-head-") || resource.name.extract("/instances/{name}").startsWith("ray-${var.cluster_name}-worker-"))) || (resource.type == "compute.googleapis.com/Disk" && (resource.name.extract("/disks/{name}").startsWith("ray-${var.cluster_name}-head-") || resource.name.extract("/disks/{name}").startsWith("ray-${var.cluster_name}-worker-")))
    EOT
  }
}

# What a name condition cannot cover stays project-wide, as these permissions only: listing the
# zone's instances (a list call is checked on the project, not on any one instance; Ray filters
# the list by its ray-cluster-name label), reading the zone operations it waits on, and attaching a
# new VM to the subnetwork with an external IP that `ray up` chose for the node types. The images
# need nothing here: Ubuntu's and the Deep Learning VM images are public in their own projects.
resource "google_project_iam_custom_role" "ray_launcher" {
  project     = var.project_id
  role_id     = "${replace(var.name_prefix, "-", "_")}_ray_launcher"
  title       = "Ray launcher (${var.name_prefix}): project-wide part"
  description = "What Ray's autoscaler needs beyond its cluster's instances and disks: list them, follow operations, use the subnetwork."
  permissions = [
    "compute.instances.list",
    "compute.zoneOperations.get",
    "compute.subnetworks.use",
    "compute.subnetworks.useExternalIp",
  ]
}

resource "google_project_iam_member" "head_launcher" {
  project = var.project_id
  role    = google_project_iam_custom_role.ray_launcher.id
  member  = google_service_account.head.member
}

# ...which run as the worker service account, and only that one.
resource "google_service_account_iam_member" "head_launches_workers" {
  service_account_id = google_service_account.worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.head.member
}
