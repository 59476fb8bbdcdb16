//! Prints what a running vm container's guest agent reports of its guest
//! (kernel, memory, the agent's own resident set, its start and readiness
//! on the guest's clock), as one JSON object. Used by bench/vm_bench.py.
//!
//! ```text
//! guest_details <run dir's vsock.sock>
//! ```

use ironcell_sandbox::vm::agent::Agent;

fn main() {
    let Some(uds) = std::env::args_os().nth(1) else {
        eprintln!("usage: guest_details VSOCK_SOCKET");
        std::process::exit(2);
    };
    let timeout = ironcell_sandbox::vm::agent::CALL_TIMEOUT;
    let d =
        match Agent::connect(std::path::Path::new(&uds), timeout).and_then(|a| a.guest_details()) {
            Ok(d) => d,
            Err(e) => {
                eprintln!("guest_details: {e}");
                std::process::exit(1);
            }
        };
    println!(
        "{}",
        serde_json::json!({
            "kernel_release": d.kernel_release,
            "mem_total_kib": d.mem_total_kib,
            "mem_available_kib": d.mem_available_kib,
            "agent_rss_kib": d.agent_rss_kib,
            "agent_version": d.agent_version,
            "online_cpus": d.online_cpus,
            "agent_start_us": d.agent_start_us,
            "agent_ready_us": d.agent_ready_us,
            "uptime_us": d.uptime_us,
        })
    );
}
