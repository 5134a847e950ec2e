//! Adapters that read the world: instance metadata, the config file, EC2 and
//! Batch. Each sits behind a small trait so the join can be tested without a
//! network; each also has a test against the real peer (simulator or moto).

pub mod aws;
pub mod batch;
pub mod config_file;
pub mod ec2;
pub mod imds;
pub mod notices;

pub use blockwatch_aws::{causes_except, chain, AwsFailure, CallError};
