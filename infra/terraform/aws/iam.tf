# Identities of the Ray nodes (infra/ray/aws.yaml names the instance profiles). Workers may only
# use the skytrain bucket; the head also runs Ray's autoscaler, which launches, tags and
# terminates the cluster's EC2 instances and hands the worker role to the ones it launches: only
# instances tagged ray-cluster-name = cluster_name, of the worker instance types, and no other role.

locals {
  head_name   = "${var.name_prefix}-ray-head"
  worker_name = "${var.name_prefix}-ray-worker"

  ec2_trust = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })

  bucket_access = jsonencode({
    Version = "2012-10-17"
    Statement = concat([
      {
        Sid      = "ListTheBucket"
        Effect   = "Allow"
        Action   = ["s3:ListBucket", "s3:GetBucketLocation", "s3:ListBucketMultipartUploads"]
        Resource = local.bucket_arn
      },
      {
        Sid      = "ReadWriteObjects"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
        Resource = "${local.bucket_arn}/*"
      },
      ], var.kms_key_arn == null ? [] : [{
        Sid      = "UseTheBucketKey"
        Effect   = "Allow"
        Action   = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource = var.kms_key_arn
    }])
  })

  ec2_arn = "arn:${data.aws_partition.current.partition}:ec2:${var.region}"

  # RunInstances is authorized for every resource the launch creates or uses, each against its own
  # ARN. Ray's AWS provider (ray/autoscaler/_private/aws/node_provider.py, _create_node) puts one
  # TagSpecifications entry in the request, ResourceType "instance", whose tags include
  # ray-cluster-name = cluster_name: that is what the launch is held to. It tags no volume,
  # network interface or Spot request, so requiring the tag on those would refuse every launch; they
  # exist only as parts of a launch that the instance statement already allows, and nothing here lets
  # the head create them on their own (no CreateVolume, CreateNetworkInterface, RequestSpotInstances).
  cluster_instances = "${local.ec2_arn}:*:instance/*"
  launch_parts      = ["${local.ec2_arn}:*:volume/*", "${local.ec2_arn}:*:network-interface/*", "${local.ec2_arn}:*:spot-instances-request/*"]
  # ...and what it only refers to: the AMI and its snapshot (public ones have no account), the
  # subnet, security group and key pair that `ray up` chose. No launch template: infra/ray/aws.yaml
  # uses none (one would need launch-template/* here).
  launch_uses = [
    "${local.ec2_arn}::image/*",
    "${local.ec2_arn}::snapshot/*",
    "${local.ec2_arn}:*:subnet/*",
    "${local.ec2_arn}:*:security-group/*",
    "${local.ec2_arn}:*:key-pair/*",
  ]

  autoscaler = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        # Read-only calls carry no resource-level permissions in EC2.
        Sid      = "DescribeEc2"
        Effect   = "Allow"
        Action   = ["ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeImages", "ec2:DescribeSubnets", "ec2:DescribeSecurityGroups", "ec2:DescribeKeyPairs"]
        Resource = "*"
      },
      {
        Sid      = "LaunchClusterWorkers"
        Effect   = "Allow"
        Action   = "ec2:RunInstances"
        Resource = local.cluster_instances
        Condition = {
          StringEquals = {
            "aws:RequestTag/ray-cluster-name" = var.cluster_name
            "ec2:InstanceType"                = var.worker_instance_types
          }
        }
      },
      {
        Sid      = "LaunchWithTheirDisksAndInterfaces"
        Effect   = "Allow"
        Action   = "ec2:RunInstances"
        Resource = local.launch_parts
      },
      {
        Sid      = "LaunchFromImageIntoNetwork"
        Effect   = "Allow"
        Action   = "ec2:RunInstances"
        Resource = local.launch_uses
      },
      {
        # Tags in the launch request itself (TagSpecifications): allowed only as part of RunInstances.
        Sid       = "TagAtLaunch"
        Effect    = "Allow"
        Action    = "ec2:CreateTags"
        Resource  = concat([local.cluster_instances], local.launch_parts)
        Condition = { StringEquals = { "ec2:CreateAction" = "RunInstances" } }
      },
      {
        Sid       = "ManageOwnInstances"
        Effect    = "Allow"
        Action    = ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"]
        Resource  = local.cluster_instances
        Condition = { StringEquals = { "aws:ResourceTag/ray-cluster-name" = var.cluster_name } }
      },
      {
        # Ray updates its node tags (status, launch config, Name) on running nodes; it never changes
        # ray-cluster-name, and nor may the head: that tag is what every statement here relies on.
        Sid      = "RetagOwnInstances"
        Effect   = "Allow"
        Action   = "ec2:CreateTags"
        Resource = local.cluster_instances
        Condition = {
          StringEquals                   = { "aws:ResourceTag/ray-cluster-name" = var.cluster_name }
          "ForAllValues:StringNotEquals" = { "aws:TagKeys" = ["ray-cluster-name"] }
        }
      },
      {
        Sid       = "HandWorkerRoleToWorkers"
        Effect    = "Allow"
        Action    = "iam:PassRole"
        Resource  = aws_iam_role.worker.arn
        Condition = { StringEquals = { "iam:PassedToService" = "ec2.amazonaws.com" } }
      },
      {
        # ImageId resolve:ssm:/aws/service/deeplearning/... in infra/ray/aws.yaml.
        Sid      = "ResolvePublicAmiParameters"
        Effect   = "Allow"
        Action   = "ssm:GetParameters"
        Resource = "arn:${data.aws_partition.current.partition}:ssm:${var.region}::parameter/aws/service/deeplearning/*"
      },
    ]
  })
}

resource "aws_iam_role" "head" {
  name               = local.head_name
  description        = "Ray head of the skytrain cluster: skytrain bucket and Ray's autoscaler."
  assume_role_policy = local.ec2_trust
}

resource "aws_iam_role" "worker" {
  name               = local.worker_name
  description        = "Ray workers of the skytrain cluster: skytrain bucket only."
  assume_role_policy = local.ec2_trust
}

resource "aws_iam_role_policy" "head_bucket" {
  name   = "skytrain-bucket"
  role   = aws_iam_role.head.id
  policy = local.bucket_access
}

resource "aws_iam_role_policy" "head_autoscaler" {
  name   = "ray-autoscaler"
  role   = aws_iam_role.head.id
  policy = local.autoscaler
}

resource "aws_iam_role_policy" "worker_bucket" {
  name   = "skytrain-bucket"
  role   = aws_iam_role.worker.id
  policy = local.bucket_access
}

resource "aws_iam_instance_profile" "head" {
  name = local.head_name
  role = aws_iam_role.head.name
}

resource "aws_iam_instance_profile" "worker" {
  name = local.worker_name
  role = aws_iam_role.worker.name
}
