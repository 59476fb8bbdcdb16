//! The stdio stream listener: each connection names a process's stream in
//! its first line ([`StreamHeader`]) and is then attached to it.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use ironcell_protocol::stream::{error_answer, read_line, StreamHeader};
use nix::sys::socket::{setsockopt, sockopt};
use nix::sys::time::TimeVal;

use crate::containers::Containers;
use crate::listen::accept;

/// A connection that sends no complete header in this time is dropped.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Starts the thread that accepts stream connections on `listener`.
pub fn start(listener: OwnedFd, containers: Arc<Containers>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("streams".into())
        .spawn(move || loop {
            match accept(&listener) {
                Ok(conn) => {
                    let c = containers.clone();
                    let _ = std::thread::Builder::new()
                        .name("stream".into())
                        .spawn(move || handle(conn, &c));
                }
                Err(nix::errno::Errno::EINTR) | Err(nix::errno::Errno::ECONNABORTED) => {}
                Err(e) => {
                    tracing::warn!("stream listener: {e}");
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        })?;
    Ok(())
}

fn set_timeout(conn: &OwnedFd, t: Option<Duration>) {
    let tv = t.map_or(TimeVal::new(0, 0), |t| {
        TimeVal::new(t.as_secs() as i64, t.subsec_micros() as i64)
    });
    let _ = setsockopt(&conn.as_fd(), sockopt::ReceiveTimeout, &tv);
}

fn handle(conn: OwnedFd, containers: &Containers) {
    set_timeout(&conn, Some(HEADER_TIMEOUT));
    let mut file = File::from(conn);
    let line = match read_line(&mut file) {
        Ok(l) => l,
        Err(e) => {
            let _ = file.write_all(error_answer(&e.to_string()).as_bytes());
            return;
        }
    };
    let conn = OwnedFd::from(file);
    set_timeout(&conn, None);
    let mut file = File::from(conn);
    let attached = StreamHeader::parse(&line)
        .map_err(crate::AgentError::from)
        .and_then(|h| {
            let p = containers.process(&h.container_id, &h.exec_id)?;
            p.attach(
                h.kind,
                h.resumable,
                file.try_clone().map_err(crate::AgentError::io("dup"))?,
                |conn| (&*conn).write_all(b"OK\n"),
            )
        });
    if let Err(e) = attached {
        let _ = file.write_all(error_answer(&e.to_string()).as_bytes());
    }
}
