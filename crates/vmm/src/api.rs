//! The control API: a unix socket speaking one JSON object per line.
//!
//! Request: `{"action": "pause" | "resume" | "shutdown" | "status"}` (a bare
//! word on a line works too). Response: `{"ok": true, ...}` or
//! `{"ok": false, "error": "..."}`. A connection may send several requests.
//! Served by the VMM's event loop without blocking it.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use crate::error::{Error, Result};

const MAX_REQUEST: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    Pause,
    Resume,
    Shutdown,
    Status,
}

pub fn parse_request(line: &[u8]) -> std::result::Result<Request, String> {
    let text = std::str::from_utf8(line)
        .map_err(|_| "request is not UTF-8".to_string())?
        .trim();
    let action = if text.starts_with('{') {
        let v: Value =
            serde_json::from_str(text).map_err(|e| format!("request is not valid JSON: {e}"))?;
        match v.get("action") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err("request has no string field \"action\"".into()),
        }
    } else {
        text.to_string()
    };
    match action.as_str() {
        "pause" => Ok(Request::Pause),
        "resume" => Ok(Request::Resume),
        "shutdown" => Ok(Request::Shutdown),
        "status" => Ok(Request::Status),
        other => Err(format!(
            "unknown action {other:?} (pause, resume, shutdown, status)"
        )),
    }
}

pub fn error_response(msg: &str) -> Value {
    json!({"ok": false, "error": msg})
}

struct Conn {
    stream: UnixStream,
    buf: Vec<u8>,
}

pub struct ApiServer {
    listener: UnixListener,
    path: PathBuf,
    conns: HashMap<RawFd, Conn>,
}

impl ApiServer {
    /// Binds `path`. A leftover socket nobody listens on (a VMM that was
    /// killed) is replaced; a live one or any other file is an error.
    pub fn bind(path: &Path) -> Result<Self> {
        let err = |source| Error::ApiSocket {
            path: path.into(),
            source,
        };
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            if !meta.file_type().is_socket() {
                return Err(err(std::io::Error::new(
                    ErrorKind::AlreadyExists,
                    "exists and is not a socket",
                )));
            }
            match UnixStream::connect(path) {
                Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                    std::fs::remove_file(path).map_err(err)?
                }
                _ => {
                    return Err(err(std::io::Error::new(
                        ErrorKind::AlreadyExists,
                        "already exists",
                    )))
                }
            }
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        let server = ApiServer {
            listener,
            path: path.into(),
            conns: HashMap::new(),
        };
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        server.listener.set_nonblocking(true).map_err(err)?;
        Ok(server)
    }

    pub fn listener_fd(&self) -> RawFd {
        self.listener.as_raw_fd()
    }

    /// Accepts pending connections; returns their fds for the event loop.
    pub fn accept(&mut self) -> Vec<RawFd> {
        let mut fds = Vec::new();
        while let Ok((stream, _)) = self.listener.accept() {
            if stream.set_nonblocking(true).is_ok() {
                let fd = stream.as_raw_fd();
                self.conns.insert(
                    fd,
                    Conn {
                        stream,
                        buf: Vec::new(),
                    },
                );
                fds.push(fd);
            }
        }
        fds
    }

    /// Reads what a connection sent. Returns the complete request lines, and
    /// whether the connection is finished (EOF, error, or too long a line);
    /// the caller then calls `close`.
    pub fn read(&mut self, fd: RawFd) -> (Vec<std::result::Result<Request, String>>, bool) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return (Vec::new(), true);
        };
        let mut done = false;
        let mut chunk = [0u8; 1024];
        loop {
            match conn.stream.read(&mut chunk) {
                Ok(0) => {
                    done = true;
                    break;
                }
                Ok(n) => conn.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    done = true;
                    break;
                }
            }
        }
        let mut requests = Vec::new();
        while let Some(pos) = conn.buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = conn.buf.drain(..=pos).collect();
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            requests.push(parse_request(&line));
        }
        if conn.buf.len() > MAX_REQUEST {
            requests.push(Err(format!("request longer than {MAX_REQUEST} bytes")));
            done = true;
        }
        (requests, done)
    }

    /// Sends one response line. Responses are small; a client that does not
    /// read them loses its connection rather than stalling the VMM.
    pub fn reply(&mut self, fd: RawFd, response: &Value) {
        let Some(conn) = self.conns.get_mut(&fd) else {
            return;
        };
        let mut line = response.to_string();
        line.push('\n');
        if conn.stream.write_all(line.as_bytes()).is_err() {
            self.conns.remove(&fd);
        }
    }

    pub fn close(&mut self, fd: RawFd) {
        self.conns.remove(&fd);
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_json_and_bare_words() {
        assert_eq!(parse_request(br#"{"action":"pause"}"#), Ok(Request::Pause));
        assert_eq!(parse_request(b"status\n"), Ok(Request::Status));
        assert!(parse_request(b"reboot")
            .unwrap_err()
            .contains("unknown action \"reboot\""));
        assert!(parse_request(br#"{"action":5}"#)
            .unwrap_err()
            .contains("no string field"));
        assert!(parse_request(b"{broken")
            .unwrap_err()
            .contains("not valid JSON"));
        assert!(parse_request(&[0xff, 0xfe]).unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn serves_lines_and_removes_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        let mut api = ApiServer::bind(&path).unwrap();
        let mut client = UnixStream::connect(&path).unwrap();
        let fds = api.accept();
        assert_eq!(fds.len(), 1);
        client
            .write_all(b"status\n{\"action\":\"pause\"}\nres")
            .unwrap();
        let (reqs, done) = api.read(fds[0]);
        assert_eq!(reqs, vec![Ok(Request::Status), Ok(Request::Pause)]);
        assert!(!done);
        client.write_all(b"ume\n").unwrap();
        assert_eq!(api.read(fds[0]).0, vec![Ok(Request::Resume)]);
        api.reply(fds[0], &json!({"ok": true}));
        let mut got = [0u8; 12];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"{\"ok\":true}\n");
        drop(client);
        assert!(api.read(fds[0]).1, "EOF ends the connection");
        assert!(
            ApiServer::bind(&path).is_err(),
            "a live socket is not replaced"
        );
        drop(api);
        assert!(!path.exists());
    }

    #[test]
    fn stale_socket_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _api = ApiServer::bind(&path).unwrap();
        std::fs::write(dir.path().join("file"), b"x").unwrap();
        let e = ApiServer::bind(&dir.path().join("file"))
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("not a socket"), "{e}");
        assert!(
            dir.path().join("file").exists(),
            "a regular file is never removed"
        );
    }
}
