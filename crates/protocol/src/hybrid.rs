//! The host side of hybrid vsock: a unix socket that stands for the
//! guest's vsock device, as Firecracker defined it and as ironcell-vmm and
//! vhost-device-vsock serve it. A client connects, writes
//! `CONNECT <port>\n` and reads one line; `OK ...` means the guest accepted
//! on that port, and the connection then carries the stream. What follows
//! `OK` (a port number, which the two servers choose differently) is not
//! read. When the guest does not listen on the port, the server closes the
//! connection instead. (The host connects only once the agent said it is
//! ready: see [`READY_PORT`](crate::READY_PORT).)

use std::io::{self, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

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
    fn a_closed_or_odd_answer_is_an_error() {
        let (_d, path) = server(vec![b"", b"NO\n"]);
        assert!(connect(&path, 1024, Duration::from_secs(5)).is_err());
        let e = connect(&path, 1024, Duration::from_secs(5)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused, "{e}");
    }
}
