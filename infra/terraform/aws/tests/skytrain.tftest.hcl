# `terraform test` with a mocked AWS provider: no account, no network. Run from
# infra/terraform/aws after `terraform init` (tests/infra/test_terraform.py does both).

mock_provider "aws" {
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
}

variables {
  bucket_name = "skytrain-test-bucket"
}

run "bucket_is_private_versioned_encrypted_and_tls_only" {
  command = plan

  assert {
    condition     = aws_s3_bucket_versioning.skytrain.versioning_configuration[0].status == "Enabled"
    error_message = "the bucket must keep object versions"
  }

  assert {
    condition     = one(one(aws_s3_bucket_server_side_encryption_configuration.skytrain.rule).apply_server_side_encryption_by_default).sse_algorithm == "AES256"
    error_message = "without kms_key_arn the bucket must use SSE-S3"
  }

  assert {
    condition = alltrue([
      aws_s3_bucket_public_access_block.skytrain.block_public_acls,
      aws_s3_bucket_public_access_block.skytrain.block_public_policy,
      aws_s3_bucket_public_access_block.skytrain.ignore_public_acls,
      aws_s3_bucket_public_access_block.skytrain.restrict_public_buckets,
    ])
    error_message = "every public access block setting must be on"
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_s3_bucket_policy.skytrain.policy).Statement :
      s.Effect == "Deny" && s.Condition.Bool["aws:SecureTransport"] == "false" && contains(s.Resource, "arn:aws:s3:::skytrain-test-bucket/*")
    ])
    error_message = "the bucket policy must deny requests without TLS"
  }

  assert {
    condition     = length(aws_db_instance.skytrain) == 0
    error_message = "no database unless create_database"
  }

  assert {
    condition     = aws_iam_instance_profile.head.name == "skytrain-ray-head" && aws_iam_instance_profile.worker.name == "skytrain-ray-worker"
    error_message = "infra/ray/aws.yaml expects the instance profiles skytrain-ray-head and skytrain-ray-worker"
  }
}

run "workers_may_only_use_the_bucket" {
  # apply (mocked): the head's policy names the worker role's ARN, known only after apply.
  command = apply

  assert {
    condition = alltrue(flatten([
      for s in jsondecode(aws_iam_role_policy.worker_bucket.policy).Statement : [
        for a in s.Action : startswith(a, "s3:")
      ]
    ]))
    error_message = "the worker role may only call S3"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.worker_bucket.policy).Statement :
      alltrue([for r in flatten([s.Resource]) : startswith(r, "arn:aws:s3:::skytrain-test-bucket")])
    ])
    error_message = "the worker role may only reach the skytrain bucket"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.head_autoscaler.policy).Statement :
      contains(flatten([s.Action]), "ec2:TerminateInstances") ? s.Condition.StringEquals["aws:ResourceTag/ray-cluster-name"] == "skytrain" : true
    ])
    error_message = "the head may only terminate instances of its own Ray cluster"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.head_autoscaler.policy).Statement :
      s.Resource == aws_iam_role.worker.arn if contains(flatten([s.Action]), "iam:PassRole")
    ])
    error_message = "the head may pass the worker role only"
  }
}

run "head_launches_only_tagged_workers" {
  # apply (mocked), as above: the policy is known only after apply.
  command = apply

  variables {
    cluster_name          = "skytrain-test"
    worker_instance_types = ["g5.xlarge"]
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.head_autoscaler.policy).Statement :
      !contains(flatten([s.Resource]), "*") if contains(flatten([s.Action]), "ec2:RunInstances") || contains(flatten([s.Action]), "ec2:CreateTags")
    ])
    error_message = "RunInstances and CreateTags must name the resource types they apply to, not every resource"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.head_autoscaler.policy).Statement : (
        try(s.Condition.StringEquals["aws:RequestTag/ray-cluster-name"], null) == "skytrain-test"
        && try(tolist(s.Condition.StringEquals["ec2:InstanceType"]), []) == tolist(["g5.xlarge"])
      ) if contains(flatten([s.Action]), "ec2:RunInstances") && anytrue([for r in flatten([s.Resource]) : strcontains(r, ":instance/")])
    ])
    error_message = "the head may launch an instance only with the tag ray-cluster-name = cluster_name in the request, and only of worker_instance_types"
  }

  assert {
    condition = length([
      for s in jsondecode(aws_iam_role_policy.head_autoscaler.policy).Statement : s
      if contains(flatten([s.Action]), "ec2:RunInstances") && anytrue([for r in flatten([s.Resource]) : strcontains(r, ":instance/")])
    ]) == 1
    error_message = "exactly one statement may let the head launch instances"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.head_autoscaler.policy).Statement : (
        try(s.Condition.StringEquals["ec2:CreateAction"], null) == "RunInstances"
        || (
          try(s.Condition.StringEquals["aws:ResourceTag/ray-cluster-name"], null) == "skytrain-test"
          && contains(try(s.Condition["ForAllValues:StringNotEquals"]["aws:TagKeys"], []), "ray-cluster-name")
        )
      ) if contains(flatten([s.Action]), "ec2:CreateTags")
    ])
    error_message = "the head may tag only at launch, or retag its own cluster's instances without touching ray-cluster-name"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.head_autoscaler.policy).Statement :
      try(s.Condition.StringEquals["aws:ResourceTag/ray-cluster-name"], null) == "skytrain-test"
      if length(setintersection(flatten([s.Action]), ["ec2:TerminateInstances", "ec2:StopInstances", "ec2:StartInstances"])) > 0
    ])
    error_message = "the head may stop, start and terminate only its own cluster's instances"
  }

  assert {
    condition = alltrue([
      for s in jsondecode(aws_iam_role_policy.head_autoscaler.policy).Statement :
      s.Resource == aws_iam_role.worker.arn && s.Condition.StringEquals["iam:PassedToService"] == "ec2.amazonaws.com"
      if contains(flatten([s.Action]), "iam:PassRole")
    ])
    error_message = "the head may pass the worker role only, and only to EC2"
  }
}

run "worker_instance_types_must_be_instance_types" {
  command = plan

  variables {
    worker_instance_types = []
  }

  expect_failures = [var.worker_instance_types]
}

run "customer_managed_key" {
  command = plan

  variables {
    kms_key_arn = "arn:aws:kms:us-west-2:111122223333:key/0000aaaa-bbbb-cccc-dddd-eeeeffff0000"
  }

  assert {
    condition     = one(one(aws_s3_bucket_server_side_encryption_configuration.skytrain.rule).apply_server_side_encryption_by_default).sse_algorithm == "aws:kms"
    error_message = "kms_key_arn must switch the bucket to SSE-KMS"
  }

  assert {
    condition = anytrue([
      for s in jsondecode(aws_iam_role_policy.worker_bucket.policy).Statement :
      s.Resource == var.kms_key_arn && contains(s.Action, "kms:Decrypt")
    ])
    error_message = "the nodes need the bucket's key"
  }
}

run "database_when_asked" {
  command = plan

  variables {
    create_database              = true
    database_vpc_id              = "vpc-0123456789abcdef0"
    database_subnet_ids          = ["subnet-0123456789abcdef0", "subnet-0123456789abcdef1"]
    database_allowed_cidr_blocks = ["10.0.0.0/16"]
  }

  assert {
    condition     = length(aws_db_instance.skytrain) == 1
    error_message = "create_database must create one instance"
  }

  assert {
    condition = (
      aws_db_instance.skytrain[0].storage_encrypted
      && !aws_db_instance.skytrain[0].publicly_accessible
      && aws_db_instance.skytrain[0].manage_master_user_password
      && aws_db_instance.skytrain[0].password == null
    )
    error_message = "the database must be encrypted, private, and keep its password in Secrets Manager"
  }

  assert {
    condition     = one(aws_security_group.database[0].ingress).cidr_blocks == tolist(["10.0.0.0/16"])
    error_message = "only the allowed networks may reach PostgreSQL"
  }
}

run "database_needs_a_network" {
  command = plan

  variables {
    create_database = true
  }

  expect_failures = [var.database_vpc_id, var.database_subnet_ids]
}

run "bad_bucket_name_is_refused" {
  command = plan

  variables {
    bucket_name = "Skytrain_Bucket"
  }

  expect_failures = [var.bucket_name]
}
