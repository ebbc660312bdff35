variable "project" {
  description = "Google Cloud project id"
  type        = string
}

variable "region" {
  description = "Region for the buckets, the image repository and Dataflow jobs"
  type        = string
  default     = "europe-west1"
}
