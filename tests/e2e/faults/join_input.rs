//! Fault matrix family `join_input`.
