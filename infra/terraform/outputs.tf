output "store_uri" {
  description = "The index store: pass as --store / RETROFRESH_STORE (and the k8s Secret's `store`)"
  value       = "gs://${google_storage_bucket.store.name}/${var.store_prefix}"
}

output "store_bucket" {
  description = "The store's bucket; checkpoints go beside the store under gs://BUCKET/checkpoints/"
  value       = google_storage_bucket.store.name
}

output "dataflow_temp_location" {
  description = "Pass as --temp_location (and --staging_location) to Dataflow jobs"
  value       = "gs://${google_storage_bucket.dataflow_temp.name}/temp"
}

output "flex_template_path" {
  description = "Where `gcloud dataflow flex-template build` writes the ingest template spec"
  value       = "gs://${google_storage_bucket.dataflow_temp.name}/templates/retrofresh-ingest.json"
}

output "image_repository" {
  description = "Artifact Registry path the images are pushed to (docker tag prefix)"
  value       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}"
}

output "flows_service_account" {
  description = "Service account the Prefect worker runs as (refresh flow: publish, lease, gc, Dataflow launches)"
  value       = google_service_account.flows.email
}

output "dataflow_service_account" {
  description = "Pass as --service_account_email to Dataflow jobs"
  value       = google_service_account.dataflow_worker.email
}

output "server_service_account" {
  description = "Service account the RETRO servers run as (annotate the k8s ServiceAccount with it)"
  value       = google_service_account.server.email
}

output "server_image" {
  description = "Image name for infra/server/Dockerfile (add :TAG); the k8s Deployment's image"
  value       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}/server"
}

output "dataflow_image" {
  description = "Image name for infra/dataflow/Dockerfile (add :TAG): --sdk_container_image and the flex template's image"
  value       = "${var.region}-docker.pkg.dev/${var.project}/${google_artifact_registry_repository.images.repository_id}/dataflow"
}
