output "bucket" {
  description = "Bucket name: use s3://<bucket>/... in the job entry points and WHERECNN_CHECKPOINT."
  value       = aws_s3_bucket.artifacts.bucket
}

output "ray_role_arn" {
  description = "Put into the eks.amazonaws.com/role-arn annotation of ServiceAccount wherecnn-ray (prod overlay)."
  value       = aws_iam_role.ray.arn
}
