//! The first line of a stdio stream connection (vsock port
//! [`STREAM_PORT`](crate::STREAM_PORT)), and the agent's answer.
//!
//! ```text
//! host:  IRONCELL-STREAM 1 <kind> <container id> <exec id or ->\n
//! agent: OK\n        or        ERR <one line>\n
//! ```
//!
//! After `OK` the connection carries the stream's bytes: `stdin` from the
//! host (its end of input is the process's), `stdout` and `stderr` to the
//! host (closed by the agent once the process's end is closed and every
//! byte is sent), `tty` both ways.
//!
//! A header may end with the word `resumable`: the stream then outlives
//! its connection, for a host process that can die and be replaced (the
//! daemon) while the guest process runs on.
//!
//! - A later resumable header for the same stream takes over: the agent
//!   closes the connection it had and carries on with the new one.
//! - Output that a connection could not take waits in the process's pipe
//!   for the next one; bytes already handed to a connection's socket when
//!   it broke are that connection's (lost with it).
//! - The end of a resumable `stdin` or `tty` connection is not the end of
//!   the process's input: only `CloseStdin` is.
//! - Taking over an output stream that has ended gives a connection that
//!   ends at once.
//!
//! A stream is attached either once or resumably, never both.

use std::io::{self, Read};

use crate::{check_id, ProtocolError};

const MAGIC: &str = "IRONCELL-STREAM";
const VERSION: &str = "1";
/// No header or answer line is longer.
pub const MAX_LINE: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamKind {
    Stdin,
    Stdout,
    Stderr,
    /// The process's terminal, both directions.
    Tty,
}

impl StreamKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamKind::Stdin => "stdin",
            StreamKind::Stdout => "stdout",
            StreamKind::Stderr => "stderr",
            StreamKind::Tty => "tty",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        [Self::Stdin, Self::Stdout, Self::Stderr, Self::Tty]
            .into_iter()
            .find(|k| k.as_str() == s)
    }
}

/// Which process's stream a connection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamHeader {
    pub kind: StreamKind,
    pub container_id: String,
    /// Empty for the container's init.
    pub exec_id: String,
    /// Whether the stream outlives this connection (see the module's text).
    pub resumable: bool,
}

/// The word that ends a resumable stream's header.
const RESUMABLE: &str = "resumable";

impl StreamHeader {
    pub fn to_line(&self) -> String {
        let exec = if self.exec_id.is_empty() {
            "-"
        } else {
            &self.exec_id
        };
        let mode = if self.resumable {
            format!(" {RESUMABLE}")
        } else {
            String::new()
        };
        format!(
            "{MAGIC} {VERSION} {} {} {exec}{mode}\n",
            self.kind.as_str(),
            self.container_id
        )
    }

    /// Parses a header line (with or without its newline).
    pub fn parse(line: &str) -> Result<Self, ProtocolError> {
        let bad = |why: &str| ProtocolError::Header(why.to_string());
        let line = line.strip_suffix('\n').unwrap_or(line);
        let mut f = line.split(' ');
        if f.next() != Some(MAGIC) {
            return Err(bad("not an ironcell stream"));
        }
        match f.next() {
            Some(VERSION) => {}
            Some(v) => {
                return Err(bad(&format!(
                    "stream version {:?}, expected {VERSION}",
                    v.chars().take(16).collect::<String>()
                )))
            }
            None => return Err(bad("no version")),
        }
        let kind = f
            .next()
            .and_then(StreamKind::parse)
            .ok_or_else(|| bad("unknown stream kind"))?;
        let container_id = f.next().ok_or_else(|| bad("no container id"))?;
        check_id("container id", container_id)?;
        let exec_id = match f.next() {
            Some("-") => "",
            Some(e) => {
                check_id("exec id", e)?;
                e
            }
            None => return Err(bad("no exec id")),
        };
        let resumable = match f.next() {
            None => false,
            Some(RESUMABLE) => true,
            Some(_) => return Err(bad("unknown stream mode")),
        };
        if f.next().is_some() {
            return Err(bad("trailing fields"));
        }
        Ok(StreamHeader {
            kind,
            container_id: container_id.to_string(),
            exec_id: exec_id.to_string(),
            resumable,
        })
    }
}

/// Reads one line of at most [`MAX_LINE`] bytes, byte by byte so that
/// nothing after the newline is consumed.
pub fn read_line(r: &mut impl Read) -> io::Result<String> {
    let mut line = Vec::with_capacity(64);
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "connection closed before the end of the line",
                ))
            }
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) => {
                line.push(b[0]);
                if line.len() > MAX_LINE {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, "line too long"));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    String::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "line is not UTF-8"))
}

/// The agent's answer: `Ok(())` for `OK`, the agent's error otherwise.
pub fn parse_answer(line: &str) -> Result<(), String> {
    match line {
        "OK" => Ok(()),
        l => Err(l
            .strip_prefix("ERR ")
            .unwrap_or("malformed answer from the agent")
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect()),
    }
}

/// The agent's answer line for an error.
pub fn error_answer(msg: &str) -> String {
    let one_line: String = msg
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    format!(
        "ERR {}\n",
        one_line.chars().take(MAX_LINE - 8).collect::<String>()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for (kind, exec, resumable) in [
            (StreamKind::Stdout, "", false),
            (StreamKind::Tty, "exec-1", false),
            (StreamKind::Stdin, "", true),
            (StreamKind::Stderr, "exec-2", true),
        ] {
            let h = StreamHeader {
                kind,
                container_id: "web".into(),
                exec_id: exec.into(),
                resumable,
            };
            assert_eq!(StreamHeader::parse(&h.to_line()).unwrap(), h);
        }
        let h = StreamHeader::parse("IRONCELL-STREAM 1 stdin c1 -").unwrap();
        assert_eq!((h.kind, h.resumable), (StreamKind::Stdin, false));
        let h = StreamHeader::parse("IRONCELL-STREAM 1 stdout c1 e resumable").unwrap();
        assert_eq!((h.exec_id.as_str(), h.resumable), ("e", true));
    }

    #[test]
    fn hostile_headers_are_refused() {
        for bad in [
            "",
            "GET / HTTP/1.1",
            "IRONCELL-STREAM 2 stdin c -",
            "IRONCELL-STREAM 1 stdio c -",
            "IRONCELL-STREAM 1 stdin ../etc -",
            "IRONCELL-STREAM 1 stdin c ../x",
            "IRONCELL-STREAM 1 stdin c",
            "IRONCELL-STREAM 1 stdin c - extra",
            "IRONCELL-STREAM 1 stdin c - resumable extra",
            "IRONCELL-STREAM 1 stdin c - RESUMABLE",
            "IRONCELL-STREAM 1 stdin c - resumable ",
            "IRONCELL-STREAM  1 stdin c -",
        ] {
            assert!(StreamHeader::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lines_are_bounded_and_stop_at_the_newline() {
        let mut r = io::Cursor::new(b"OK\nrest".to_vec());
        assert_eq!(read_line(&mut r).unwrap(), "OK");
        let mut rest = String::new();
        r.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "rest");
        let mut long = io::Cursor::new(vec![b'a'; MAX_LINE + 10]);
        assert_eq!(
            read_line(&mut long).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut short = io::Cursor::new(b"OK".to_vec());
        assert_eq!(
            read_line(&mut short).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn answers() {
        assert_eq!(parse_answer("OK"), Ok(()));
        assert_eq!(
            parse_answer("ERR no such container"),
            Err("no such container".into())
        );
        assert_eq!(
            parse_answer(error_answer("a\nb").trim_end()),
            Err("a b".into())
        );
        assert!(parse_answer("\u{1b}[2J").is_err());
    }
}
