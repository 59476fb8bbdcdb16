//! The keeper's ttrpc relay: containerd connects to the task address the
//! keeper listens on, and the keeper passes frames to the daemon's backend
//! socket and back. When the daemon dies, containerd's connections stay
//! open (containerd would otherwise give the tasks up); the keeper connects
//! again when a daemon listens, re-sends every request that had no response
//! yet (a Wait, for instance) and carries on. A request that waits longer
//! than the relay's bound for a daemon (none connected) is answered by the
//! keeper itself, with a ttrpc error (UNAVAILABLE) that says so, rather
//! than hanging.
//!
//! Every containerd connection of an endpoint (containerd opens one per
//! task) shares one connection to the daemon: the keeper gives each request
//! a stream id of its own on that connection and maps the response back. A
//! ttrpc connection costs the daemon about 8 KiB (its tasks and queues); 50
//! tasks cost one.
//!
//! A ttrpc frame: a 10-byte header (payload length and stream id, big
//! endian u32 each; type; flags) and the payload. Type 1 is a request, 2 a
//! response, 3 a stream's data.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;

const HEADER: usize = 10;
/// ttrpc's own default limit.
const MAX_PAYLOAD: usize = 4 << 20;
const TYPE_REQUEST: u8 = 1;
const TYPE_RESPONSE: u8 = 2;
const TYPE_DATA: u8 = 3;
const RECONNECT_DELAY: Duration = Duration::from_millis(50);
/// How long a request waits while no daemon is connected before the keeper
/// answers it with an error: well above a restart (about a second), well
/// below containerd's patience (a ctr command has none).
pub const DAEMON_WAIT: Duration = Duration::from_secs(10);
/// gRPC's UNAVAILABLE, which ttrpc uses too.
const CODE_UNAVAILABLE: u64 = 14;
/// A first read's buffer: Task API frames are mostly a few hundred bytes.
const FIRST_READ: usize = 1024;

/// One frame, header included.
#[derive(Debug, Clone, PartialEq)]
pub struct Frame(pub Vec<u8>);

impl Frame {
    pub fn stream_id(&self) -> u32 {
        u32::from_be_bytes(self.0[4..8].try_into().expect("header"))
    }

    fn set_stream_id(&mut self, id: u32) {
        self.0[4..8].copy_from_slice(&id.to_be_bytes());
    }

    pub fn kind(&self) -> u8 {
        self.0[8]
    }
}

/// Reads frames from a stream. Cancel-safe: what a cancelled read got stays
/// in the buffer for the next one (the relay waits on reads and writes
/// together). The buffer is given back whenever it is empty, so an idle
/// connection holds none.
#[derive(Default)]
pub struct FrameReader {
    buf: Vec<u8>,
}

impl FrameReader {
    /// The next frame; `Ok(None)` at a clean end of the stream.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        r: &mut R,
    ) -> std::io::Result<Option<Frame>> {
        loop {
            if self.buf.len() >= HEADER {
                let len = u32::from_be_bytes(self.buf[0..4].try_into().expect("4 bytes")) as usize;
                if len > MAX_PAYLOAD {
                    return Err(std::io::Error::other(format!(
                        "ttrpc frame of {len} bytes (limit {MAX_PAYLOAD})"
                    )));
                }
                if self.buf.len() >= HEADER + len {
                    let rest = self.buf.split_off(HEADER + len);
                    let frame = std::mem::replace(&mut self.buf, rest);
                    if self.buf.is_empty() {
                        self.buf = Vec::new();
                    }
                    return Ok(Some(Frame(frame)));
                }
                self.buf.reserve(HEADER + len - self.buf.len());
            } else {
                // Room for a usual request or response whole: one read
                // instead of a header's and then a payload's.
                self.buf.reserve(FIRST_READ - self.buf.len());
            }
            if r.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
    }
}

/// A request sent to the daemon and not answered yet.
struct Pending {
    client: u64,
    /// The stream id containerd gave it.
    stream: u32,
    /// The request as sent to the daemon (with the keeper's stream id).
    frame: Frame,
    /// Since when it waits for a daemon (None: a daemon has it).
    waiting: Option<Instant>,
}

/// What the containerd connections of one endpoint share.
struct Mux {
    /// Queue to the daemon's connection.
    to_backend: mpsc::UnboundedSender<Frame>,
    state: Mutex<MuxState>,
}

#[derive(Default)]
struct MuxState {
    next_client: u64,
    /// The next stream id on the daemon's connection (odd, as a client's).
    next_stream: u32,
    clients: HashMap<u64, mpsc::UnboundedSender<Frame>>,
    /// By the keeper's stream id.
    pending: BTreeMap<u32, Pending>,
    /// (client, containerd's stream id) → the keeper's, for data frames.
    streams: HashMap<(u64, u32), u32>,
    /// Whether a daemon is connected.
    up: bool,
}

impl MuxState {
    fn new_stream_id(&mut self) -> u32 {
        loop {
            let id = self.next_stream | 1;
            self.next_stream = id.wrapping_add(2);
            if !self.pending.contains_key(&id) {
                return id;
            }
        }
    }
}

impl Mux {
    /// A frame from containerd's connection `client`, to the daemon.
    fn forward(&self, client: u64, mut f: Frame) {
        let mut st = self.state.lock().unwrap();
        let stream = f.stream_id();
        match f.kind() {
            TYPE_REQUEST => {
                let id = st.new_stream_id();
                f.set_stream_id(id);
                if let Some(old) = st.streams.insert((client, stream), id) {
                    // containerd re-used a stream id: the old request's
                    // answer no longer has anyone to go to.
                    st.pending.remove(&old);
                }
                let waiting = (!st.up).then(Instant::now);
                st.pending.insert(
                    id,
                    Pending {
                        client,
                        stream,
                        frame: f.clone(),
                        waiting,
                    },
                );
            }
            TYPE_DATA => match st.streams.get(&(client, stream)) {
                Some(id) => f.set_stream_id(*id),
                None => return,
            },
            _ => return,
        }
        // Sent under the lock: a reconnection's snapshot either has this
        // frame or the queue does, never both.
        let _ = self.to_backend.send(f);
    }

    /// A frame from the daemon, to the containerd connection it answers.
    fn deliver(&self, mut f: Frame) {
        let mut st = self.state.lock().unwrap();
        let id = f.stream_id();
        let (client, stream) = match f.kind() {
            TYPE_RESPONSE => match st.pending.remove(&id) {
                Some(p) => {
                    st.streams.remove(&(p.client, p.stream));
                    (p.client, p.stream)
                }
                None => return,
            },
            TYPE_DATA => match st.pending.get(&id) {
                Some(p) => (p.client, p.stream),
                None => return,
            },
            _ => return,
        };
        f.set_stream_id(stream);
        if let Some(tx) = st.clients.get(&client) {
            let _ = tx.send(f);
        }
    }

    /// A daemon connected (`up`) or went away: the requests it had wait
    /// from now on.
    fn set_up(&self, up: bool) {
        let mut st = self.state.lock().unwrap();
        st.up = up;
        let now = Instant::now();
        for p in st.pending.values_mut() {
            p.waiting = (!up).then_some(now);
        }
    }

    /// Answers, with an error, every request that has waited `wait` or
    /// longer for a daemon.
    fn expire(&self, wait: Duration, backend: &std::path::Path) {
        let mut st = self.state.lock().unwrap();
        let now = Instant::now();
        let expired: Vec<u32> = st
            .pending
            .iter()
            .filter(|(_, p)| p.waiting.is_some_and(|t| now.duration_since(t) >= wait))
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        let message = format!(
            "ironcelld is not running: no daemon listened on {} for {} s \
             (the keeper restarts one the shim started; see keeper.log and \
             ironcelld.log in its root)",
            backend.display(),
            wait.as_secs_f32()
        );
        let payload = error_response(CODE_UNAVAILABLE, &message);
        for id in expired {
            let p = st.pending.remove(&id).expect("listed above");
            st.streams.remove(&(p.client, p.stream));
            let mut f = Frame(Vec::with_capacity(HEADER + payload.len()));
            f.0.extend_from_slice(&(payload.len() as u32).to_be_bytes());
            f.0.extend_from_slice(&p.stream.to_be_bytes());
            f.0.extend_from_slice(&[TYPE_RESPONSE, 0]);
            f.0.extend_from_slice(&payload);
            if let Some(tx) = st.clients.get(&p.client) {
                let _ = tx.send(f);
            }
        }
    }

    fn register(&self, tx: mpsc::UnboundedSender<Frame>) -> u64 {
        let mut st = self.state.lock().unwrap();
        let id = st.next_client;
        st.next_client += 1;
        st.clients.insert(id, tx);
        id
    }

    /// containerd closed `client`: its unanswered requests are dropped
    /// (the daemon may still answer them; nobody hears it).
    fn unregister(&self, client: u64) {
        let mut st = self.state.lock().unwrap();
        st.clients.remove(&client);
        st.pending.retain(|_, p| p.client != client);
        st.streams.retain(|(c, _), _| *c != client);
    }
}

/// A ttrpc `Response` holding only `status { code, message }`, encoded by
/// hand: two protobuf fields, where a protobuf runtime and ttrpc's
/// generated types would add hundreds of kilobytes to the keeper (a test
/// decodes it with ttrpc's own types).
fn error_response(code: u64, message: &str) -> Vec<u8> {
    fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }
    let mut status = vec![0x08]; // field 1 (code), varint
    varint(&mut status, code);
    status.push(0x12); // field 2 (message), length-delimited
    varint(&mut status, message.len() as u64);
    status.extend_from_slice(message.as_bytes());
    let mut response = vec![0x0a]; // Response field 1 (status)
    varint(&mut response, status.len() as u64);
    response.extend_from_slice(&status);
    response
}

/// Serves `listener` for ever: every containerd connection, multiplexed
/// onto one connection to the daemon's `backend`. A request waits at most
/// `wait` while no daemon is connected.
pub async fn front(listener: UnixListener, backend: PathBuf, wait: Duration) {
    let (to_backend, queue) = mpsc::unbounded_channel();
    let mux = Arc::new(Mux {
        to_backend,
        state: Mutex::default(),
    });
    tokio::spawn(backend_loop(backend, mux.clone(), queue, wait));
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(client(conn, mux.clone()));
            }
            Err(e) => {
                tracing::warn!(error = %e, "keeper: accept");
                tokio::time::sleep(RECONNECT_DELAY).await;
            }
        }
    }
}

/// One containerd connection: its frames to the daemon, the answers back.
async fn client(conn: UnixStream, mux: Arc<Mux>) {
    let (mut r, mut w) = conn.into_split();
    let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
    let id = mux.register(tx);
    let mut reader = FrameReader::default();
    loop {
        tokio::select! {
            f = reader.next(&mut r) => match f {
                Ok(Some(f)) => mux.forward(id, f),
                _ => break,
            },
            f = rx.recv() => match f {
                Some(f) => {
                    if w.write_all(&f.0).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
        }
    }
    mux.unregister(id);
}

/// The connection to the daemon, made again whenever the daemon is back.
async fn backend_loop(
    backend: PathBuf,
    mux: Arc<Mux>,
    mut queue: mpsc::UnboundedReceiver<Frame>,
    wait: Duration,
) {
    loop {
        let (mut br, mut bw) = connect(&backend, &mux, wait).await.into_split();
        mux.set_up(true);
        let replay: Vec<Frame> = {
            let st = mux.state.lock().unwrap();
            while queue.try_recv().is_ok() {}
            st.pending.values().map(|p| p.frame.clone()).collect()
        };
        if write_all(&mut bw, &replay).await.is_err() {
            mux.set_up(false);
            continue;
        }
        let mut reader = FrameReader::default();
        loop {
            tokio::select! {
                f = queue.recv() => match f {
                    Some(f) => {
                        if bw.write_all(&f.0).await.is_err() {
                            break;
                        }
                    }
                    None => return,
                },
                f = reader.next(&mut br) => match f {
                    Ok(Some(f)) => mux.deliver(f),
                    _ => break,
                },
            }
        }
        mux.set_up(false);
        tracing::info!(backend = %backend.display(), "keeper: daemon gone; holding the connections");
    }
}

async fn write_all(w: &mut OwnedWriteHalf, frames: &[Frame]) -> std::io::Result<()> {
    for f in frames {
        w.write_all(&f.0).await?;
    }
    Ok(())
}

/// Connects to the daemon's backend, waiting for one to listen; meanwhile
/// requests that waited `wait` are answered with an error.
async fn connect(backend: &PathBuf, mux: &Mux, wait: Duration) -> UnixStream {
    loop {
        if let Ok(c) = UnixStream::connect(backend).await {
            return c;
        }
        mux.expire(wait, backend);
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
        tokio::spawn(front(listener, backend.clone(), DAEMON_WAIT));

        let mut client = UnixStream::connect(&public).await.unwrap();
        client
            .write_all(&frame(1, TYPE_REQUEST, b"wait"))
            .await
            .unwrap();

        // First backend: takes the request and dies without answering.
        let b1 = UnixListener::bind(&backend).unwrap();
        let (conn, _) = b1.accept().await.unwrap();
        let (mut r, _w) = conn.into_split();
        let got = FrameReader::default().next(&mut r).await.unwrap().unwrap();
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
        let mut reader = FrameReader::default();
        let a = reader.next(&mut r).await.unwrap().unwrap();
        let b = reader.next(&mut r).await.unwrap().unwrap();
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
        assert!(FrameReader::default().next(&mut r).await.is_err());
    }

    /// Frames split anywhere, or several in one read, come out whole; a
    /// stream that ends inside a frame is an error, at a boundary the end.
    #[tokio::test]
    async fn frames_are_reassembled() {
        let (mut a, b) = UnixStream::pair().unwrap();
        let (mut r, _w) = b.into_split();
        let mut bytes = frame(1, TYPE_REQUEST, b"one");
        bytes.extend(frame(3, TYPE_REQUEST, b"two"));
        bytes.extend(frame(5, TYPE_REQUEST, b""));
        let mut reader = FrameReader::default();
        let writer = tokio::spawn(async move {
            for chunk in bytes.chunks(4) {
                a.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            a.write_all(&frame(7, TYPE_REQUEST, b"cut")[..12])
                .await
                .unwrap();
        });
        for (id, body) in [(1, &b"one"[..]), (3, b"two"), (5, b"")] {
            let f = reader.next(&mut r).await.unwrap().unwrap();
            assert_eq!(f.0, frame(id, TYPE_REQUEST, body));
        }
        writer.await.unwrap();
        assert!(reader.next(&mut r).await.is_err());
        let (a, b) = UnixStream::pair().unwrap();
        drop(a);
        let (mut r, _w) = b.into_split();
        assert!(FrameReader::default().next(&mut r).await.unwrap().is_none());
    }

    /// Two containerd connections that use the same stream ids share one
    /// connection to the daemon: each request gets an id of its own there,
    /// each answer goes back to its connection under the id it was asked
    /// with, and a closed connection's requests are not re-sent.
    #[tokio::test]
    async fn connections_share_one_backend_connection() {
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("public.sock");
        let backend = dir.path().join("backend.sock");
        let b = UnixListener::bind(&backend).unwrap();
        tokio::spawn(front(
            UnixListener::bind(&public).unwrap(),
            backend.clone(),
            DAEMON_WAIT,
        ));

        let mut c1 = UnixStream::connect(&public).await.unwrap();
        let mut c2 = UnixStream::connect(&public).await.unwrap();
        let mut c3 = UnixStream::connect(&public).await.unwrap();
        c1.write_all(&frame(1, TYPE_REQUEST, b"a")).await.unwrap();
        let (conn, _) = b.accept().await.unwrap();
        let (mut r, mut w) = conn.into_split();
        let mut reader = FrameReader::default();
        let fa = reader.next(&mut r).await.unwrap().unwrap();
        c2.write_all(&frame(1, TYPE_REQUEST, b"b")).await.unwrap();
        let fb = reader.next(&mut r).await.unwrap().unwrap();
        c3.write_all(&frame(1, TYPE_REQUEST, b"c")).await.unwrap();
        let fc = reader.next(&mut r).await.unwrap().unwrap();
        let ids = [fa.stream_id(), fb.stream_id(), fc.stream_id()];
        assert!(ids.iter().all(|i| i % 2 == 1), "{ids:?}");
        assert!(
            ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
            "{ids:?}"
        );
        // No second connection to the daemon.
        assert!(tokio::time::timeout(Duration::from_millis(100), b.accept())
            .await
            .is_err());

        // Answers in the other order.
        w.write_all(&frame(fb.stream_id(), TYPE_RESPONSE, b"B"))
            .await
            .unwrap();
        w.write_all(&frame(fa.stream_id(), TYPE_RESPONSE, b"A"))
            .await
            .unwrap();
        // An answer nobody asked for goes nowhere.
        w.write_all(&frame(99, TYPE_RESPONSE, b"?")).await.unwrap();
        let mut buf = vec![0u8; HEADER + 1];
        c1.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, frame(1, TYPE_RESPONSE, b"A"));
        c2.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, frame(1, TYPE_RESPONSE, b"B"));

        // c3 leaves; the daemon restarts: only c1's new request is re-sent.
        drop(c3);
        c1.write_all(&frame(3, TYPE_REQUEST, b"d")).await.unwrap();
        let fd = reader.next(&mut r).await.unwrap().unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop((r, w));
        let (conn, _) = b.accept().await.unwrap();
        let (mut r, mut w) = conn.into_split();
        let mut reader = FrameReader::default();
        let again = reader.next(&mut r).await.unwrap().unwrap();
        assert_eq!(again, fd);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), reader.next(&mut r))
                .await
                .is_err(),
            "c3's request was re-sent"
        );
        w.write_all(&frame(fd.stream_id(), TYPE_RESPONSE, b"D"))
            .await
            .unwrap();
        c1.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, frame(3, TYPE_RESPONSE, b"D"));
    }

    /// A request that waits `wait` with no daemon connected is answered by
    /// the keeper with UNAVAILABLE and a message naming the cause; one the
    /// daemon has is not, however long it takes.
    #[tokio::test]
    async fn a_request_waits_a_bounded_time_for_a_daemon() {
        use protobuf::Message;
        let dir = tempfile::tempdir().unwrap();
        let public = dir.path().join("public.sock");
        let backend = dir.path().join("backend.sock");
        let wait = Duration::from_millis(300);
        tokio::spawn(front(
            UnixListener::bind(&public).unwrap(),
            backend.clone(),
            wait,
        ));
        let mut client = UnixStream::connect(&public).await.unwrap();

        // A daemon takes a request and keeps it past the bound.
        let b = UnixListener::bind(&backend).unwrap();
        client
            .write_all(&frame(1, TYPE_REQUEST, b"wait"))
            .await
            .unwrap();
        let (conn, _) = b.accept().await.unwrap();
        let (mut r, w) = conn.into_split();
        let mut reader = FrameReader::default();
        reader.next(&mut r).await.unwrap().unwrap();
        let mut got = vec![0u8; 64];
        assert!(
            tokio::time::timeout(wait * 2, client.read(&mut got))
                .await
                .is_err(),
            "answered while the daemon had it"
        );

        // The daemon dies and none comes back: both requests fail after
        // the bound, not before.
        drop((r, w, b));
        std::fs::remove_file(&backend).unwrap();
        let gone = Instant::now();
        client
            .write_all(&frame(3, TYPE_REQUEST, b"state"))
            .await
            .unwrap();
        let mut reader = FrameReader::default();
        let mut ids = Vec::new();
        for _ in 0..2 {
            let f = tokio::time::timeout(wait * 10, reader.next(&mut client))
                .await
                .expect("no answer from the keeper")
                .unwrap()
                .unwrap();
            assert_eq!(f.kind(), TYPE_RESPONSE);
            let resp = ttrpc::proto::Response::parse_from_bytes(&f.0[HEADER..]).unwrap();
            let status = resp.status.unwrap();
            assert_eq!(status.code(), ttrpc::proto::Code::UNAVAILABLE);
            assert!(
                status
                    .message
                    .starts_with("ironcelld is not running: no daemon listened on"),
                "{}",
                status.message
            );
            assert!(resp.payload.is_empty());
            ids.push(f.stream_id());
        }
        assert!(gone.elapsed() >= wait, "{:?}", gone.elapsed());
        ids.sort();
        assert_eq!(ids, [1, 3]);

        // A daemon that comes back later gets neither of them again.
        let b = UnixListener::bind(&backend).unwrap();
        let (conn, _) = b.accept().await.unwrap();
        let (mut r, _w) = conn.into_split();
        assert!(
            tokio::time::timeout(
                Duration::from_millis(200),
                FrameReader::default().next(&mut r)
            )
            .await
            .is_err(),
            "an answered request was re-sent"
        );
    }
}
