# Bakes blockwatch into the ECS-optimized Amazon Linux 2023 AMI.
#   packer init ami/ && packer build -var rpm=target/packages/blockwatch-0.1.0-1.x86_64.rpm ami/
packer {
  required_plugins {
    amazon = {
      source  = "github.com/hashicorp/amazon"
      version = ">= 1.3.0"
    }
  }
}

variable "region" {
  type    = string
  default = "eu-west-1"
}

variable "instance_type" {
  type    = string
  default = "m6i.large"
}

variable "rpm" {
  type        = string
  description = "Path of the blockwatch rpm built by packaging/build.sh"
}

variable "ami_name_prefix" {
  type    = string
  default = "blockwatch-ecs-al2023"
}

source "amazon-ebs" "ecs_al2023" {
  region        = var.region
  instance_type = var.instance_type
  ssh_username  = "ec2-user"
  ami_name      = "${var.ami_name_prefix}-${formatdate("YYYYMMDD-hhmmss", timestamp())}"

  # The current ECS-optimized AL2023 AMI, from its public SSM parameter.
  source_ami = "resolve:ssm:/aws/service/ecs/optimized-ami/amazon-linux-2023/recommended/image_id"

  # IMDSv2 only, hop limit 1: only host-network processes (blockwatch, the ECS
  # agent) reach IMDS; jobs that need AWS use a job role.
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }
  imds_support = "v2.0"

  tags = {
    Name      = "${var.ami_name_prefix}"
    blockwatch = "baked"
  }
}

build {
  sources = ["source.amazon-ebs.ecs_al2023"]

  provisioner "file" {
    source      = var.rpm
    destination = "/tmp/blockwatch.rpm"
  }

  provisioner "shell" {
    execute_command = "sudo -S sh -c '{{ .Vars }} {{ .Path }}'"
    scripts         = ["${path.root}/install.sh", "${path.root}/cleanup.sh"]
    environment_vars = ["BLOCKWATCH_PACKAGE=/tmp/blockwatch.rpm"]
  }
}
