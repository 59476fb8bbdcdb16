//! The keeper's ttrpc relay: containerd connects to the task address the
//! keeper listens on, and the keeper passes frames to the daemon's backend
//! socket and back. When the daemon dies, containerd's connection stays
//! open (containerd would otherwise give the task up); the keeper connects
//! again when a daemon listens, re-sends every request that had no response
//! yet (a Wait, for instance) and carries on.
//!
//! A ttrpc frame: a 10-byte header (payload length and stream id, big
//! endian u32 each; type; flags) and the payload. Type 1 is a request, 2 a
//! response; other types pass through untracked.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

const HEADER: usize = 10;
/// ttrpc's own default limit.
const MAX_PAYLOAD: usize = 4 << 20;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
const RECONNECT_DELAY: Duration = Duration::from_millis(50);

/// One frame, header included.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame(pub Vec<u8>);

impl Frame {
    pub fn stream_id(&self) -> u32 {
        u32::from_be_bytes(self.0[4..8].try_into().expect("header"))
    }

    pub fn kind(&self) -> u8 {
        self.0[8]
    }
}

/// Reads one frame; `Ok(None)` at a clean EOF.
pub async fn read_frame(r: &mut OwnedReadHalf) -> std::io::Result<Option<Frame>> {
    let mut header = [0u8; HEADER];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_be_bytes(header[0..4].try_into().expect("4 bytes")) as usize;
    if len > MAX_PAYLOAD {
        return Err(std::io::Error::other(format!(
            "ttrpc frame of {len} bytes (limit {MAX_PAYLOAD})"
        )));
    }
    let mut frame = Vec::with_capacity(HEADER + len);
    frame.extend_from_slice(&header);
    frame.resize(HEADER + len, 0);
    r.read_exact(&mut frame[HEADER..]).await?;
    Ok(Some(Frame(frame)))
}

/// Requests sent on, by stream id, until their response comes back.
type InFlight = Arc<Mutex<BTreeMap<u32, Frame>>>;

/// Serves `listener` for ever: one relay per containerd connection.
pub async fn front(listener: UnixListener, backend: PathBuf) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(relay(conn, backend.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeper: accept");
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

async fn relay(client: UnixStream, backend: PathBuf) {
    let (mut cr, mut cw) = client.into_split();
    let inflight: InFlight = Arc::default();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    // containerd → daemon: tracked, then queued for the current backend.
    let reader = {
        let inflight = inflight.clone();
        tokio::spawn(async move {
            while let Ok(Some(f)) = read_frame(&mut cr).await {
                let mut map = inflight.lock().unwrap();
                if f.kind() == TYPE_REQUEST {
                    map.insert(f.stream_id(), f.clone());
                }
                // Sent under the lock: a reconnection's snapshot either has
                // this frame or the channel does, never both.
                if tx.send(f).is_err() {
                    break;
                }
            }
        })
    };
    let mut reader = reader;
    loop {
        let conn = tokio::select! {
            c = connect(&backend) => c,
            _ = &mut reader => return, // containerd closed the connection
        };
        let (mut br, mut bw) = conn.into_split();
        let replay: Vec<Frame> = {
            let map = inflight.lock().unwrap();
            while rx.try_recv().is_ok() {}
            map.values().cloned().collect()
        };
        if write_all(&mut bw, &replay).await.is_err() {
            continue;
        }
        // Pump until the backend goes away or containerd does.
        loop {
            tokio::select! {
                f = rx.recv() => match f {
                    Some(f) => {
                        if bw.write_all(&f.0).await.is_err() {
                            break;
                        }
                    }
                    None => return,
                },
                f = read_frame(&mut br) => match f {
                    Ok(Some(f)) => {
                        if f.kind() == TYPE_RESPONSE {
                            inflight.lock().unwrap().remove(&f.stream_id());
                        }
                        if cw.write_all(&f.0).await.is_err() {
                            return;
                        }
                    }
                    _ => break,
                },
                _ = &mut reader => return,
            }
        }
        tracing::info!(backend = %backend.display(), "keeper: daemon gone; holding the connection");
    }
}

async fn write_all(w: &mut OwnedWriteHalf, frames: &[Frame]) -> std::io::Result<()> {
    for f in frames {
        w.write_all(&f.0).await?;
    }
    Ok(())
}

/// Connects to the daemon's backend, waiting for one to listen.
async fn connect(backend: &PathBuf) -> UnixStream {
    loop {
        if let Ok(c) = UnixStream::connect(backend).await {
            return c;
        }
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u32, kind: u8, body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&stream.to_be_bytes());
        v.push(kind);
        v.push(0);
        v.extend_from_slice(body);
        v
    }

    /// A request in flight when the backend dies is answered by the next
    /// backend; containerd's side never sees the connection drop.
    #[tokio::test]
    async fn requests_in_flight_survive_a_backend_restart() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("public.sock");
        let backend = dir.path().join("backend.sock");
        let listener = UnixListener::bind(&public).unwrap();
        tokio::spawn(front(listener, backend.clone()));

        let mut client = UnixStream::connect(&public).await.unwrap();
        client
            .write_all(&frame(1, TYPE_REQUEST, b"wait"))
            .await
            .unwrap();

        // First backend: takes the request and dies without answering.
        let b1 = UnixListener::bind(&backend).unwrap();
        let (conn, _) = b1.accept().await.unwrap();
        let (mut r, _w) = conn.into_split();
        let got = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!(got.0, frame(1, TYPE_REQUEST, b"wait"));
        drop((r, _w, b1));
        std::fs::remove_file(&backend).unwrap();

        // A request sent while no backend listens waits too.
        client
            .write_all(&frame(3, TYPE_REQUEST, b"state"))
            .await
            .unwrap();

        // Second backend: gets both, in stream order, and answers.
        let b2 = UnixListener::bind(&backend).unwrap();
        let (conn, _) = b2.accept().await.unwrap();
        let (mut r, mut w) = conn.into_split();
        let a = read_frame(&mut r).await.unwrap().unwrap();
        let b = read_frame(&mut r).await.unwrap().unwrap();
        assert_eq!((a.stream_id(), b.stream_id()), (1, 3));
        w.write_all(&frame(1, TYPE_RESPONSE, b"exited"))
            .await
            .unwrap();
        let mut buf = vec![0u8; HEADER + 6];
        client.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, frame(1, TYPE_RESPONSE, b"exited"));
    }

    #[tokio::test]
    async fn oversized_frames_are_refused() {
        let (a, b) = UnixStream::pair().unwrap();
        let (mut r, _w) = b.into_split();
        let mut a = a;
        let mut header = ((MAX_PAYLOAD + 1) as u32).to_be_bytes().to_vec();
        header.extend_from_slice(&[0, 0, 0, 1, 1, 0]);
        a.write_all(&header).await.unwrap();
        assert!(read_frame(&mut r).await.is_err());
    }
}
