//! Real peers for blockwatch's tests: an IMDS simulator that follows the EC2
//! documentation, and moto's server seeded through the Rust SDK.

pub mod aws_proxy;
pub mod fake_sources;
pub mod host_guard;
pub mod http;
pub mod imds;
pub mod introspection;
pub mod launcher;
pub mod moto;
pub mod stub;
pub mod tls;
