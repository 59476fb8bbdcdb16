//! ironcell's container engine: a container inside a set of Linux namespaces,
//! with its mounts, pivot_root, devices, cgroups (v1 and v2), seccomp,
//! capabilities, rlimits, user, hooks and console.
//!
//! The heavy lifting is youki's `libcontainer`, a maintained implementation
//! of exactly this (see docs/design.md for why we wrap it rather than write
//! our own). This crate is the one place ironcell talks to it: the namespace
//! sandbox on the host uses it, and the guest agent will use it inside the VM.
//! It adds what the runc-compatible CLI needs on top: errors that name the
//! container and what is wrong, runc's state shape, exec based on the
//! container's own process spec, and no leftovers when a create fails.

pub mod cgroup;
mod console;
mod engine;
mod error;
mod exec;
pub mod sealed_exe;
mod signal;

pub use console::{send_new_pty, ConsoleSocket};
pub use engine::{Container, CreateOptions, Engine, ProcessIo};
pub use error::{ContainerError, NOT_RUNNING};
pub use exec::{exec_process, parse_capability, ExecOptions};
pub use signal::{parse_signal, SignalError};

/// cgroup statistics as [`Container::stats`] returns them.
pub use libcgroups::stats;
