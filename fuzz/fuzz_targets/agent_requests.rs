//! Fuzzes the guest agent's decoding of what the host sends it: each input
//! picks one of the agent's requests (or a stream header, or an answer
//! line) and is decoded as that request's protobuf message, whose fields
//! then go through the agent's own checks and parsing: ids, the spec the
//! container would be made from (the guest's rewrite of config.json
//! included), an exec's process, an update's resources, a terminal's size,
//! a signal's number. Nothing may panic; a bad request is an error. (The
//! calls that would then run containers are left to the agent's tests.)
//!
//! Run: `make fuzz FUZZ_TARGET=agent_requests`.
#![no_main]

use ironcell_agent::containers::{exec_process, guest_resources, guest_spec};
use ironcell_protocol::agent::*;
use ironcell_protocol::protobuf::Message;
use ironcell_protocol::stream::{parse_answer, read_line, StreamHeader};
use ironcell_protocol::{check_id, check_version};
use libfuzzer_sys::fuzz_target;

fn ids(container: &str, exec: &str) {
    let _ = check_id("container id", container);
    if !exec.is_empty() {
        let _ = check_id("exec id", exec);
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&which, bytes)) = data.split_first() else {
        return;
    };
    match which % 12 {
        0 => {
            if let Ok(r) = CreateContainerRequest::parse_from_bytes(bytes) {
                let _ = guest_spec(&r.container_id, &r.spec_json);
            }
        }
        1 => {
            if let Ok(r) = ExecProcessRequest::parse_from_bytes(bytes) {
                ids(&r.container_id, &r.exec_id);
                let _ = exec_process(&r.process_json);
            }
        }
        2 => {
            if let Ok(r) = UpdateContainerRequest::parse_from_bytes(bytes) {
                ids(&r.container_id, "");
                let _ = guest_resources(&r.resources_json);
            }
        }
        3 => {
            if let Ok(r) = SignalProcessRequest::parse_from_bytes(bytes) {
                ids(&r.container_id, &r.exec_id);
                let _ = i32::try_from(r.signal).ok().filter(|s| (1..=64).contains(s));
            }
        }
        4 => {
            if let Ok(r) = ResizeTerminalRequest::parse_from_bytes(bytes) {
                ids(&r.container_id, &r.exec_id);
                let _ = (u16::try_from(r.rows), u16::try_from(r.cols));
            }
        }
        5 => {
            if let Ok(r) = ProcessRequest::parse_from_bytes(bytes) {
                ids(&r.container_id, &r.exec_id);
            }
        }
        6 => {
            if let Ok(r) = DeleteContainerRequest::parse_from_bytes(bytes) {
                ids(&r.container_id, "");
            }
        }
        7 => {
            if let Ok(r) = ContainerRequest::parse_from_bytes(bytes) {
                ids(&r.container_id, "");
            }
        }
        8 => {
            if let Ok(r) = CheckRequest::parse_from_bytes(bytes) {
                let _ = (r.protocol_major, r.host_time_ns);
            }
            if let Ok(r) = CheckResponse::parse_from_bytes(bytes) {
                let _ = check_version(&r);
            }
        }
        9 => {
            let _ = StreamHeader::parse(&String::from_utf8_lossy(bytes));
        }
        10 => {
            let mut r = bytes;
            if let Ok(line) = read_line(&mut r) {
                let _ = parse_answer(&line);
                let _ = StreamHeader::parse(&line);
            }
        }
        _ => {
            // The host's answers, which the host must survive too.
            let _ = WaitProcessResponse::parse_from_bytes(bytes);
            let _ = StatsResponse::parse_from_bytes(bytes);
            let _ = GuestDetailsResponse::parse_from_bytes(bytes);
        }
    }
});
