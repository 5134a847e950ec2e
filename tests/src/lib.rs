//! Real peers for blockwatch's tests: an IMDS simulator that follows the EC2
//! documentation, and moto's server seeded through the Rust SDK; and the
//! simulated instance the agent's end-to-end tests run `blockwatch` on.

pub mod aws_proxy;
pub mod docker;
pub mod ec2_stub;
pub mod fake_sources;
pub mod host_guard;
pub mod http;
pub mod imds;
pub mod instance;
pub mod introspection;
pub mod job;
pub mod launcher;
pub mod moto;
pub mod output;
pub mod registered;
pub mod script;
pub mod stub;
pub mod tls;
