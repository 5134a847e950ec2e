//! Fault matrix family `process`.
