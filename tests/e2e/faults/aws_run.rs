//! Fault matrix family `aws_run`.
