//! Fault matrix family `aws_join`.
