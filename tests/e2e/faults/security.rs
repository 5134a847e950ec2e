//! Fault matrix family `security`.
