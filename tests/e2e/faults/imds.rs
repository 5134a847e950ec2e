//! Fault matrix family `imds`.
