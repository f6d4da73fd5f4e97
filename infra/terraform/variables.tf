variable "region" {
  description = "AWS region of the bucket (WHERECNN_S3_REGION)."
  type        = string
  default     = "us-east-1"
}

variable "bucket_name" {
  description = "S3 bucket for imagery, manifests, checkpoints and Ray Train storage (s3://<bucket>/...)."
  type        = string
  default     = "wherecnn-artifacts"
}

variable "cluster_oidc_provider_arn" {
  description = "ARN of the EKS cluster's IAM OIDC provider (aws_iam_openid_connect_provider), for IRSA."
  type        = string
}

variable "cluster_oidc_issuer_url" {
  description = "The EKS cluster's OIDC issuer URL (https://oidc.eks.<region>.amazonaws.com/id/...)."
  type        = string
}

variable "namespace" {
  description = "Kubernetes namespace of the wherecnn stack (the prod overlay uses `wherecnn`)."
  type        = string
  default     = "wherecnn"
}

variable "service_account" {
  description = "Service account of the Ray pods (k8s/base/serviceaccounts.yaml)."
  type        = string
  default     = "wherecnn-ray"
}

variable "noncurrent_version_days" {
  description = "Days to keep overwritten object versions (old checkpoints, replaced manifests)."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = { project = "wherecnn" }
}
