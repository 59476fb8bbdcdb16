//! What several ironcell crates need and none of them owns: writing a file
//! so that readers never see half of it ([`atomic_file`]), and the exit
//! statuses of processes that a signal ended ([`exit_status`]).
//!
//! This crate is the bottom of the workspace: it depends on no other
//! ironcell crate, and on nothing outside the standard library.

pub mod atomic_file;
pub mod exit_status;
