# Optional PostgreSQL for the MLflow tracking server and the Prefect server (create_database).
# RDS keeps the master password in Secrets Manager (manage_master_user_password): it never
# appears in this configuration or its state. Create the second database (`prefect`) once, or let
# `SKYTRAIN_DB=postgres make up` create both (see infra/README.md).

resource "aws_db_subnet_group" "skytrain" {
  count      = var.create_database ? 1 : 0
  name       = "${var.name_prefix}-db"
  subnet_ids = var.database_subnet_ids
}

resource "aws_security_group" "database" {
  count       = var.create_database ? 1 : 0
  name        = "${var.name_prefix}-db"
  description = "PostgreSQL of skytrain's MLflow and Prefect servers"
  vpc_id      = var.database_vpc_id

  ingress {
    description = "PostgreSQL from the allowed networks"
    from_port   = 5432
    to_port     = 5432
    protocol    = "tcp"
    cidr_blocks = var.database_allowed_cidr_blocks
  }
}

resource "aws_db_parameter_group" "skytrain" {
  count  = var.create_database ? 1 : 0
  name   = "${var.name_prefix}-postgres16"
  family = "postgres16"

  parameter {
    name  = "rds.force_ssl"
    value = "1"
  }

  parameter {
    name  = "log_min_duration_statement"
    value = "1000"
  }
}

resource "aws_db_instance" "skytrain" {
  count                               = var.create_database ? 1 : 0
  identifier                          = "${var.name_prefix}-db"
  engine                              = "postgres"
  engine_version                      = "16"
  instance_class                      = var.database_instance_class
  allocated_storage                   = 20
  max_allocated_storage               = 100
  storage_type                        = "gp3"
  storage_encrypted                   = true
  db_name                             = "mlflow"
  username                            = "skytrain"
  manage_master_user_password         = true
  iam_database_authentication_enabled = true
  db_subnet_group_name                = aws_db_subnet_group.skytrain[0].name
  vpc_security_group_ids              = [aws_security_group.database[0].id]
  parameter_group_name                = aws_db_parameter_group.skytrain[0].name
  publicly_accessible                 = false
  backup_retention_period             = 7
  copy_tags_to_snapshot               = true
  auto_minor_version_upgrade          = true
  enabled_cloudwatch_logs_exports     = ["postgresql", "upgrade"]
  deletion_protection                 = var.database_deletion_protection
  skip_final_snapshot                 = false
  final_snapshot_identifier           = "${var.name_prefix}-db-final"
}
