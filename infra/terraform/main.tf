# S3 bucket for wherecnn's data and artifacts, and the IAM role the Ray pods assume through IRSA (EKS IAM
# Roles for Service Accounts): no static keys in the cluster. See docs/deploy.md, "Prerequisites".

resource "aws_s3_bucket" "artifacts" {
  bucket = var.bucket_name
  tags   = var.tags
}

resource "aws_s3_bucket_public_access_block" "artifacts" {
  bucket                  = aws_s3_bucket.artifacts.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm = "AES256"
    }
  }
}

# Versioning protects checkpoints and frozen reindex manifests from accidental overwrites.
resource "aws_s3_bucket_versioning" "artifacts" {
  bucket = aws_s3_bucket.artifacts.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "artifacts" {
  bucket     = aws_s3_bucket.artifacts.id
  depends_on = [aws_s3_bucket_versioning.artifacts]

  rule {
    id     = "expire-noncurrent-and-abort-uploads"
    status = "Enabled"
    filter {}
    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_days
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 7
    }
  }
}

locals {
  oidc_issuer = replace(var.cluster_oidc_issuer_url, "https://", "")
}

# Only the Ray service account of our namespace may assume the role.
data "aws_iam_policy_document" "ray_trust" {
  statement {
    effect  = "Allow"
    actions = ["sts:AssumeRoleWithWebIdentity"]
    principals {
      type        = "Federated"
      identifiers = [var.cluster_oidc_provider_arn]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:sub"
      values   = ["system:serviceaccount:${var.namespace}:${var.service_account}"]
    }
    condition {
      test     = "StringEquals"
      variable = "${local.oidc_issuer}:aud"
      values   = ["sts.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "ray" {
  name               = "wherecnn-ray"
  description        = "Assumed by the wherecnn Ray pods (IRSA) to read imagery and write checkpoints."
  assume_role_policy = data.aws_iam_policy_document.ray_trust.json
  tags               = var.tags
}

# Least privilege on one bucket: list (paginated listings for reindex), read, write, delete (pruning),
# multipart uploads (large checkpoints through Ray Train's storage_path).
data "aws_iam_policy_document" "ray_s3" {
  statement {
    sid       = "ListBucket"
    effect    = "Allow"
    actions   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
    resources = [aws_s3_bucket.artifacts.arn]
  }
  statement {
    sid    = "ObjectReadWrite"
    effect = "Allow"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${aws_s3_bucket.artifacts.arn}/*"]
  }
}

resource "aws_iam_policy" "ray_s3" {
  name        = "wherecnn-ray-s3"
  description = "wherecnn Ray pods: read/write the artifacts bucket."
  policy      = data.aws_iam_policy_document.ray_s3.json
  tags        = var.tags
}

resource "aws_iam_role_policy_attachment" "ray_s3" {
  role       = aws_iam_role.ray.name
  policy_arn = aws_iam_policy.ray_s3.arn
}
