//! The pure part of blockwatch: values in, decisions out. No IO, no clock.
//!
//! A crate of its own so that the compiler keeps it pure: its dependencies
//! are serde, serde_json, time, toml, humantime and thiserror, none of which
//! does IO. The agent and the launcher both build on it.

pub mod backoff;
pub mod capacity_block;
pub mod checkpoint;
pub mod cluster;
pub mod compute_environment;
pub mod config_keys;
pub mod deadline;
pub mod decision;
pub mod ecs_config_text;
pub mod escape;
pub mod failures;
pub mod file_model;
pub mod job_deadline;
pub mod lifecycle_hook;
pub mod operator_view;
pub mod origin;
pub mod settings;
pub mod tags;
pub mod time_text;
