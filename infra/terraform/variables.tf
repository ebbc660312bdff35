variable "project" {
  description = "Google Cloud project id to deploy into (it must exist, with billing enabled)"
  type        = string
}

variable "region" {
  description = "Region for the buckets, the image repository and Dataflow jobs"
  type        = string
  default     = "europe-west1"
}

variable "store_bucket" {
  description = "Name of the bucket the index store lives in (empty: PROJECT-retrofresh-store)"
  type        = string
  default     = ""
}

variable "store_prefix" {
  description = "Prefix of the index store inside its bucket (the store URI is gs://BUCKET/PREFIX)"
  type        = string
  default     = "index"
}

variable "noncurrent_retention_days" {
  description = "Days a deleted or overwritten store object is kept before Cloud Storage removes it for good: shards and versions that `retrofresh index gc` deleted, and old generations of CURRENT (a window for forensic rollbacks)"
  type        = number
  default     = 7
}

variable "noncurrent_versions_kept" {
  description = "Older generations of any one store object (CURRENT, a lease) kept at most, however young"
  type        = number
  default     = 20
}

variable "dataflow_temp_retention_days" {
  description = "Days Dataflow staging and temporary files are kept"
  type        = number
  default     = 7
}

variable "gke_namespace" {
  description = "Kubernetes namespace the servers run in, for Workload Identity (empty: no binding; the servers then need another way to act as the server service account)"
  type        = string
  default     = "default"
}

variable "gke_service_account" {
  description = "Kubernetes service account of the server pods (infra/k8s/serviceaccount.yaml)"
  type        = string
  default     = "retrofresh-server"
}

variable "enable_apis" {
  description = "Google APIs to enable in the project (Terraform leaves them enabled on destroy)"
  type        = list(string)
  default = [
    "storage.googleapis.com",
    "dataflow.googleapis.com",
    "compute.googleapis.com",
    "artifactregistry.googleapis.com",
    "iam.googleapis.com",
    "container.googleapis.com",
  ]
}
