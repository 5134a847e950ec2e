//! Adapters that change the world.

pub mod autoscaling;
pub mod checkpoint;
pub mod docker;
pub mod ecs;
pub mod ecs_config_file;
pub mod shutdown_command;
pub mod webhook;
