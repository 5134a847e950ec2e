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

  # The build instance's own metadata options: IMDSv2 only, hop limit 1. Hop
  # limit 1 keeps containers in bridge and awsvpc network modes from IMDS. It
  # does not keep Batch ECS-EC2 jobs from it: they run in host network mode and
  # can use the instance role at any hop limit (see the README's security notes).
  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
    instance_metadata_tags      = "enabled"
  }
  # Registers the AMI with ImdsSupport v2.0: an instance launched from it
  # without metadata options of its own (a launch template, an Auto Scaling
  # group, the console) gets IMDSv2 required and hop limit 2, EC2's default
  # for such AMIs. blockwatch-launch always sends hop limit 1; set
  # HttpPutResponseHopLimit = 1 in your launch templates, or as the account
  # default (ec2 modify-instance-metadata-defaults), for the same.
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
