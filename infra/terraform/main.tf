# Cloud resources for one retrofresh deployment on Google Cloud: the index store bucket, a
# scratch bucket for Dataflow, an Artifact Registry repository for the two images, and the
# service accounts the Dataflow workers and the server run as.

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

resource "google_storage_bucket" "store" {
  name                        = "${var.project}-retrofresh-store"
  location                    = var.region
  uniform_bucket_level_access = true
  # Shards and manifests are immutable; CURRENT is rewritten with if_generation_match.
  # Object versioning keeps a crash-proof history of CURRENT for forensic rollbacks.
  versioning { enabled = true }
  lifecycle_rule {
    condition {
      num_newer_versions = 20
      with_state         = "ARCHIVED"
    }
    action { type = "Delete" }
  }
}

resource "google_storage_bucket" "dataflow_temp" {
  name                        = "${var.project}-retrofresh-dataflow"
  location                    = var.region
  uniform_bucket_level_access = true
  lifecycle_rule {
    condition { age = 7 }
    action { type = "Delete" }
  }
}

resource "google_artifact_registry_repository" "images" {
  repository_id = "retrofresh"
  location      = var.region
  format        = "DOCKER"
}

resource "google_service_account" "dataflow_worker" {
  account_id   = "retrofresh-dataflow"
  display_name = "retrofresh Dataflow workers (ingest job)"
}

resource "google_service_account" "server" {
  account_id   = "retrofresh-server"
  display_name = "retrofresh RETRO server (reads the store)"
}

resource "google_project_iam_member" "dataflow_worker_role" {
  project = var.project
  role    = "roles/dataflow.worker"
  member  = "serviceAccount:${google_service_account.dataflow_worker.email}"
}

resource "google_storage_bucket_iam_member" "worker_writes_store" {
  bucket = google_storage_bucket.store.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.dataflow_worker.email}"
}

resource "google_storage_bucket_iam_member" "worker_uses_temp" {
  bucket = google_storage_bucket.dataflow_temp.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.dataflow_worker.email}"
}

resource "google_storage_bucket_iam_member" "server_reads_store" {
  bucket = google_storage_bucket.store.name
  role   = "roles/storage.objectViewer"
  member = "serviceAccount:${google_service_account.server.email}"
}
