# Cloud resources for one retrofresh deployment on Google Cloud: the APIs, the index store bucket,
# a scratch bucket for Dataflow, an Artifact Registry repository for the images, and one service
# account per role, each with only what that role does:
#   - flows:    the Prefect worker running the refresh flow: publishes (CURRENT compare-and-swap),
#               takes the lease, compacts, garbage-collects; launches Dataflow jobs as `dataflow`.
#   - dataflow: the ingest job's workers: read the parent version, write new (create-only) shards,
#               ledgers and the draft manifest; never overwrite or delete.
#   - server:   the RETRO replicas: read the store, nothing else.

terraform {
  required_version = ">= 1.5"
  required_providers {
    google = { source = "hashicorp/google", version = ">= 5.0" }
  }
}

provider "google" {
  project = var.project
  region  = var.region
}

locals {
  store_bucket = var.store_bucket != "" ? var.store_bucket : "${var.project}-retrofresh-store"
}

resource "google_project_service" "apis" {
  for_each           = toset(var.enable_apis)
  service            = each.value
  disable_on_destroy = false
}

resource "google_storage_bucket" "store" {
  name                        = local.store_bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  # Shards and manifests are immutable; CURRENT is rewritten with if_generation_match. With
  # versioning, what `gc` deletes and each overwritten CURRENT stay as noncurrent generations for
  # a while (a rollback after a bad gc), then the rules below remove them.
  versioning { enabled = true }
  # What gc left behind: unreferenced shards and old versions it deleted become noncurrent and
  # are removed for good after the retention window.
  lifecycle_rule {
    condition { days_since_noncurrent_time = var.noncurrent_retention_days }
    action { type = "Delete" }
  }
  # CURRENT and the lease are rewritten on every refresh: bound their history.
  lifecycle_rule {
    condition { num_newer_versions = var.noncurrent_versions_kept }
    action { type = "Delete" }
  }
  # A crashed upload leaves parts behind; nothing ever resumes one.
  lifecycle_rule {
    condition { age = 1 }
    action { type = "AbortIncompleteMultipartUpload" }
  }
  depends_on = [google_project_service.apis]
}

resource "google_storage_bucket" "dataflow_temp" {
  name                        = "${var.project}-retrofresh-dataflow"
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  lifecycle_rule {
    condition { age = var.dataflow_temp_retention_days }
    action { type = "Delete" }
  }
  depends_on = [google_project_service.apis]
}

resource "google_artifact_registry_repository" "images" {
  repository_id = "retrofresh"
  location      = var.region
  format        = "DOCKER"
  description   = "retrofresh images: server (infra/server) and dataflow worker + flex template launcher (infra/dataflow)"
  depends_on    = [google_project_service.apis]
}

# identities

resource "google_service_account" "flows" {
  account_id   = "retrofresh-flows"
  display_name = "retrofresh Prefect worker (refresh, publish, gc)"
}

resource "google_service_account" "dataflow_worker" {
  account_id   = "retrofresh-dataflow"
  display_name = "retrofresh Dataflow workers (ingest job)"
}

resource "google_service_account" "server" {
  account_id   = "retrofresh-server"
  display_name = "retrofresh RETRO server (reads the store)"
}

# flows: read/write/delete objects in the store (publish, lease, compaction, gc), launch and watch
# Dataflow jobs that run as the dataflow service account, stage files in the scratch bucket.

resource "google_storage_bucket_iam_member" "flows_store" {
  bucket = google_storage_bucket.store.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.flows.email}"
}

resource "google_storage_bucket_iam_member" "flows_temp" {
  bucket = google_storage_bucket.dataflow_temp.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.flows.email}"
}

resource "google_project_iam_member" "flows_launch_dataflow" {
  project = var.project
  role    = "roles/dataflow.developer"
  member  = "serviceAccount:${google_service_account.flows.email}"
}

resource "google_service_account_iam_member" "flows_act_as_dataflow_worker" {
  service_account_id = google_service_account.dataflow_worker.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${google_service_account.flows.email}"
}

resource "google_artifact_registry_repository_iam_member" "flows_reads_images" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.flows.email}"
}

# dataflow workers: create-only writes plus reads in the store (every object they write is new:
# uploads use if_generation_match=0); full use of the scratch bucket; pull the worker image.

resource "google_project_iam_member" "dataflow_worker_role" {
  project = var.project
  role    = "roles/dataflow.worker"
  member  = "serviceAccount:${google_service_account.dataflow_worker.email}"
}

resource "google_storage_bucket_iam_member" "worker_reads_store" {
  bucket = google_storage_bucket.store.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.dataflow_worker.email}"
}

resource "google_storage_bucket_iam_member" "worker_creates_in_store" {
  bucket = google_storage_bucket.store.name
  role   = "roles/storage.objectCreator"
  member = "serviceAccount:${google_service_account.dataflow_worker.email}"
}

resource "google_storage_bucket_iam_member" "worker_uses_temp" {
  bucket = google_storage_bucket.dataflow_temp.name
  role   = "roles/storage.objectUser"
  member = "serviceAccount:${google_service_account.dataflow_worker.email}"
}

resource "google_artifact_registry_repository_iam_member" "worker_reads_images" {
  location   = google_artifact_registry_repository.images.location
  repository = google_artifact_registry_repository.images.name
  role       = "roles/artifactregistry.reader"
  member     = "serviceAccount:${google_service_account.dataflow_worker.email}"
}

# server: read the store (and the checkpoint kept beside it), nothing else.

resource "google_storage_bucket_iam_member" "server_reads_store" {
  bucket = google_storage_bucket.store.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.server.email}"
}

resource "google_service_account_iam_member" "server_workload_identity" {
  count              = var.gke_namespace != "" ? 1 : 0
  service_account_id = google_service_account.server.name
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project}.svc.id.goog[${var.gke_namespace}/${var.gke_service_account}]"
}
