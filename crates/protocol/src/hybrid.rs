//! The host side of hybrid vsock: a unix socket that stands for the
//! guest's vsock device, as Firecracker defined it and as ironcell-vmm and
//! vhost-device-vsock serve it. A client connects, writes
//! `CONNECT <port>\n` and reads one line; `OK ...` means the guest accepted
//! on that port, and the connection then carries the stream. What follows
//! `OK` (a port number, which the two servers choose differently) is not
//! read. When the guest does not listen on the port (yet), the server
//! closes the connection instead.

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::stream::read_line;

/// One attempt to open a stream to guest port `port` through the hybrid
/// vsock socket `uds`. The answer is awaited at most `timeout`.
pub fn connect(uds: &Path, port: u32, timeout: Duration) -> io::Result<UnixStream> {
    let mut s = UnixStream::connect(uds)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(format!("CONNECT {port}\n").as_bytes())?;
    let line = read_line(&mut s)?;
    if !line.starts_with("OK") {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionRefused,
            format!(
                "vsock port {port}: unexpected answer {:?}",
                line.chars().take(40).collect::<String>()
            ),
        ));
    }
    s.set_read_timeout(None)?;
    s.set_write_timeout(None)?;
    Ok(s)
}

/// [`connect`], retried until `deadline` while the guest is not listening
/// yet (the socket missing, refused, or closed before `OK`). `alive` is
/// asked between attempts and stops the wait with its error (the
/// hypervisor died, say).
pub fn connect_until(
    uds: &Path,
    port: u32,
    deadline: Instant,
    mut alive: impl FnMut() -> io::Result<()>,
) -> io::Result<UnixStream> {
    let mut pause = Duration::from_millis(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connect(
            uds,
            port,
            left.clamp(Duration::from_millis(50), Duration::from_secs(5)),
        ) {
            Ok(s) => return Ok(s),
            Err(e) if Instant::now() >= deadline => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("vsock port {port} did not answer in time (last: {e})"),
                ))
            }
            Err(_) => {}
        }
        alive()?;
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixListener;

    fn server(answers: Vec<&'static [u8]>) -> (tempfile::TempDir, std::path::PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.sock");
        let l = UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            for a in answers {
                let (mut c, _) = l.accept().unwrap();
                let mut req = [0u8; 13];
                c.read_exact(&mut req).unwrap();
                assert_eq!(&req, b"CONNECT 1024\n");
                c.write_all(a).unwrap();
                if a.starts_with(b"OK") {
                    c.write_all(b"payload").unwrap();
                }
            }
        });
        (dir, path)
    }

    #[test]
    fn ok_line_is_consumed_and_nothing_after_it() {
        let (_d, path) = server(vec![b"OK 1073741824\n"]);
        let mut s = connect(&path, 1024, Duration::from_secs(5)).unwrap();
        let mut buf = [0u8; 7];
        s.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"payload");
    }

    #[test]
    fn closed_or_odd_answers_are_retried_until_ok() {
        let (_d, path) = server(vec![b"", b"NO\n", b"OK 5\n"]);
        let s = connect_until(
            &path,
            1024,
            Instant::now() + Duration::from_secs(10),
            || Ok(()),
        );
        assert!(s.is_ok());
    }

    #[test]
    fn a_dead_peer_ends_the_wait() {
        let dir = tempfile::tempdir().unwrap();
        let e = connect_until(
            &dir.path().join("none"),
            1024,
            Instant::now() + Duration::from_secs(10),
            || Err(io::Error::other("hypervisor exited")),
        )
        .unwrap_err();
        assert_eq!(e.to_string(), "hypervisor exited");
    }
}
