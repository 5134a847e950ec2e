//! Adapters that change the world.

pub mod ecs;
pub mod ecs_config;
pub mod poweroff;
pub mod webhook;
