//! The pure part of blockwatch: values in, decisions out. No IO, no clock.

pub mod cluster;
pub mod compute_environment;
pub mod config;
pub mod deadline;
pub mod ecs_config;
pub mod escape;
pub mod failures;
pub mod state;
pub mod status;
