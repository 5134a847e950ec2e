//! Adapters that change the world.

pub mod ecs_config;
