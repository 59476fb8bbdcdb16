//! ironcelld: one daemon per node serving containerd's shim v2 Task API for
//! every task of every namespace (1:N), on the `sandbox` library that the
//! `ironcell` CLI also uses. See docs/daemon.md.

pub mod claim;
pub mod control;
pub mod controller;
pub mod detach;
pub mod endpoint;
pub mod error;
pub mod events;
pub mod helper;
pub mod keeper;
pub mod metrics;
pub mod mount;
pub mod oom;
pub mod pod;
pub mod pod_config;
pub mod pod_files;
pub mod pod_service;
pub mod pod_vm;
pub mod reaper;
pub mod runtime_options;
pub mod server;
pub mod service;
pub mod stdio;
pub mod task;
pub mod time;
pub mod wasm_host;
