output "store_uri" {
  description = "Pass as --store / RETROFRESH_STORE"
  value       = "gs://${google_storage_bucket.store.name}/index"
}

output "dataflow_temp_location" {
  value = "gs://${google_storage_bucket.dataflow_temp.name}/temp"
}

output "image_repository" {
  value = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}"
}

output "dataflow_service_account" {
  value = google_service_account.dataflow_worker.email
}

output "server_service_account" {
  value = google_service_account.server.email
}
