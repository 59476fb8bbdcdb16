//! virtio-vsock (device 19) with Firecracker's hybrid host side: the guest
//! talks vsock, the host talks unix sockets.
//!
//! - Host → guest: a client connects to `uds_path` and writes
//!   `CONNECT <port>\n`; the device sends the guest a REQUEST from a fresh
//!   host port, and once the guest answers RESPONSE writes
//!   `OK <host port>\n` to the client. Bytes then flow both ways.
//! - Guest → host: a REQUEST to host CID 2 port P connects to the unix
//!   socket `<uds_path>_P`; RESPONSE on success, RST otherwise.
//!
//! Packets are read and written through virtio-queue's `Reader` and
//! `Writer`, which span a chain's descriptors: a packet's header and data
//! may share one descriptor (Linux 6.1.63 and later, in rx and tx) or sit
//! in separate ones (earlier kernels, the test guest), and a header may
//! even be split across descriptors.
//!
//! Flow control is the protocol's credit scheme (virtio 1.2, 5.10.6.3):
//! bytes from the host are sent only while the guest has advertised room,
//! and a guest that sends more than the room we advertised loses the
//! connection. Sockets are non-blocking and edge-triggered on the VMM's
//! event loop; a connection remembers that it is readable until a read
//! says otherwise, so running out of rx buffers or credit only pauses it.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

use vm_memory::ByteValued;
use vmm_sys_util::epoll::EventSet;

use super::{ActiveQueues, DeviceError, VirtioDevice, TYPE_VSOCK};
use crate::config::VsockConfig;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;

pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;
pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

pub const HDR_LEN: usize = 44;
/// What we tell the guest it may send per connection before we forward it.
const BUF_ALLOC: u32 = 256 * 1024;
/// Largest payload we put in one rx packet, or accept in one tx packet.
const MAX_PAYLOAD: usize = 64 * 1024;
/// A host client must send its CONNECT line within this many bytes.
const MAX_CONNECT_LINE: usize = 32;
/// Host-side ports of host-initiated connections start here.
const FIRST_HOST_PORT: u32 = 1 << 30;

/// struct virtio_vsock_hdr, little-endian on the wire (x86 only).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}

// SAFETY: a packed struct of integers: every byte pattern is a valid value
// and there is no padding.
unsafe impl ByteValued for Header {}

const _: () = assert!(std::mem::size_of::<Header>() == HDR_LEN);

/// (host port, guest port)
type Key = (u32, u32);

#[derive(Debug, PartialEq, Eq)]
enum State {
    /// Host-initiated; REQUEST sent, waiting for the guest's RESPONSE.
    Connecting,
    Established,
}

struct Conn {
    stream: UnixStream,
    state: State,
    /// The guest's advertised receive buffer and consumption counter.
    peer_buf_alloc: u32,
    peer_fwd_cnt: u32,
    /// Bytes we sent the guest on this connection.
    tx_cnt: u32,
    /// Bytes of the guest's we wrote to the stream.
    fwd_cnt: u32,
    fwd_cnt_told: u32,
    /// Guest bytes the stream did not take yet (at most BUF_ALLOC).
    to_stream: Vec<u8>,
    /// Host bytes read with the CONNECT line, for the guest.
    to_guest: Vec<u8>,
    /// The stream may have data (edge-triggered readiness).
    readable: bool,
    host_eof: bool,
    /// The guest will send nothing more: shut our write side once drained.
    guest_done_sending: bool,
}

impl Conn {
    fn new(stream: UnixStream, state: State) -> Self {
        Conn {
            stream,
            state,
            peer_buf_alloc: 0,
            peer_fwd_cnt: 0,
            tx_cnt: 0,
            fwd_cnt: 0,
            fwd_cnt_told: 0,
            to_stream: Vec::new(),
            to_guest: Vec::new(),
            readable: true,
            host_eof: false,
            guest_done_sending: false,
        }
    }

    /// Bytes the guest can still take.
    fn peer_credit(&self) -> u32 {
        self.peer_buf_alloc
            .saturating_sub(self.tx_cnt.wrapping_sub(self.peer_fwd_cnt))
    }

    /// Writes what the stream takes; Err on a dead stream.
    fn flush_to_stream(&mut self) -> std::io::Result<()> {
        while !self.to_stream.is_empty() {
            match self.stream.write(&self.to_stream) {
                Ok(0) => return Err(ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.to_stream.drain(..n);
                    self.fwd_cnt = self.fwd_cnt.wrapping_add(n as u32);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if self.guest_done_sending {
            let _ = self.stream.shutdown(std::net::Shutdown::Write);
        }
        Ok(())
    }
}

/// A host client that has not finished its CONNECT line.
struct Pending {
    stream: UnixStream,
    buf: Vec<u8>,
}

pub struct Vsock {
    cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    active: Option<ActiveQueues>,
    conns: HashMap<Key, Conn>,
    fds: HashMap<RawFd, Key>,
    pending: HashMap<RawFd, Pending>,
    /// Control packets waiting for rx buffers.
    control: VecDeque<Header>,
    next_host_port: u32,
}

impl Vsock {
    /// Binds the host socket now, so clients can connect before the guest's
    /// driver is up (they wait in the backlog).
    pub fn new(cfg: &VsockConfig) -> Result<Self, String> {
        let path = &cfg.uds_path;
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            use std::os::unix::fs::FileTypeExt;
            let stale = meta.file_type().is_socket()
                && matches!(UnixStream::connect(path), Err(e) if e.kind() == ErrorKind::ConnectionRefused);
            if !stale {
                return Err(format!("{} already exists", path.display()));
            }
            std::fs::remove_file(path)
                .map_err(|e| format!("removing stale socket {}: {e}", path.display()))?;
        }
        let listener =
            UnixListener::bind(path).map_err(|e| format!("cannot bind {}: {e}", path.display()))?;
        listener.set_nonblocking(true).map_err(|e| e.to_string())?;
        Ok(Vsock {
            cid: u64::from(cfg.guest_cid),
            uds_path: path.clone(),
            listener,
            active: None,
            conns: HashMap::new(),
            fds: HashMap::new(),
            pending: HashMap::new(),
            control: VecDeque::new(),
            next_host_port: FIRST_HOST_PORT,
        })
    }

    fn header(&self, key: Key, op: u16, len: u32, flags: u32) -> Header {
        let fwd_cnt = self.conns.get(&key).map_or(0, |c| c.fwd_cnt);
        Header {
            src_cid: HOST_CID,
            dst_cid: self.cid,
            src_port: key.0,
            dst_port: key.1,
            len,
            type_: TYPE_STREAM,
            op,
            flags,
            buf_alloc: BUF_ALLOC,
            fwd_cnt,
        }
    }

    fn send_control(&mut self, key: Key, op: u16, flags: u32) {
        let h = self.header(key, op, 0, flags);
        if let Some(c) = self.conns.get_mut(&key) {
            c.fwd_cnt_told = c.fwd_cnt;
        }
        self.control.push_back(h);
    }

    fn watch(&self, fd: RawFd) -> Result<(), DeviceError> {
        if let Some(a) = &self.active {
            a.events
                .add(
                    fd,
                    EventSet::IN
                        | EventSet::OUT
                        | EventSet::EDGE_TRIGGERED
                        | EventSet::READ_HANG_UP,
                )
                .map_err(|e| DeviceError::Backend(format!("epoll: {e}")))?;
        }
        Ok(())
    }

    fn close(&mut self, key: Key) {
        if let Some(c) = self.conns.remove(&key) {
            let fd = c.stream.as_raw_fd();
            self.fds.remove(&fd);
            if let Some(a) = &self.active {
                a.events.remove(fd);
            }
        }
    }

    /// Closes the connection and tells the guest.
    fn reset_conn(&mut self, key: Key) {
        self.close(key);
        self.control.push_back(self.header(key, OP_RST, 0, 0));
    }

    fn accept_clients(&mut self) -> Result<(), DeviceError> {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    let fd = stream.as_raw_fd();
                    self.pending.insert(
                        fd,
                        Pending {
                            stream,
                            buf: Vec::new(),
                        },
                    );
                    self.watch(fd)?;
                    self.read_connect_line(fd);
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::warn!("vsock: accept: {e}");
                    return Ok(());
                }
            }
        }
    }

    /// Reads a pending client's `CONNECT <port>\n`; on success the client
    /// becomes a connection and the guest gets a REQUEST.
    fn read_connect_line(&mut self, fd: RawFd) {
        let Some(p) = self.pending.get_mut(&fd) else {
            return;
        };
        let mut chunk = [0u8; 64];
        let mut eof = false;
        loop {
            match p.stream.read(&mut chunk) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    p.buf.extend_from_slice(&chunk[..n]);
                    if p.buf.contains(&b'\n') || p.buf.len() > MAX_CONNECT_LINE {
                        break;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        let Some(nl) = p.buf.iter().position(|b| *b == b'\n') else {
            if eof || p.buf.len() > MAX_CONNECT_LINE {
                self.drop_pending(fd, "no CONNECT line");
            }
            return;
        };
        let line = String::from_utf8_lossy(&p.buf[..nl]).into_owned();
        let port = line
            .strip_prefix("CONNECT ")
            .and_then(|s| s.trim().parse::<u32>().ok());
        let Some(guest_port) = port else {
            self.drop_pending(
                fd,
                &format!("bad request {line:?} (expected \"CONNECT <port>\")"),
            );
            return;
        };
        let Some(p) = self.pending.remove(&fd) else {
            return;
        };
        let host_port = self.allocate_host_port(guest_port);
        let key = (host_port, guest_port);
        let mut conn = Conn::new(p.stream, State::Connecting);
        conn.to_guest = p.buf[nl + 1..].to_vec();
        self.conns.insert(key, conn);
        self.fds.insert(fd, key);
        self.send_control(key, OP_REQUEST, 0);
    }

    fn drop_pending(&mut self, fd: RawFd, why: &str) {
        tracing::debug!("vsock: dropping host client: {why}");
        if let Some(mut p) = self.pending.remove(&fd) {
            let _ = p.stream.write_all(format!("ERR {why}\n").as_bytes());
            if let Some(a) = &self.active {
                a.events.remove(fd);
            }
        }
    }

    fn allocate_host_port(&mut self, guest_port: u32) -> u32 {
        loop {
            let port = self.next_host_port;
            self.next_host_port = self
                .next_host_port
                .checked_add(1)
                .unwrap_or(FIRST_HOST_PORT);
            if !self.conns.contains_key(&(port, guest_port)) {
                return port;
            }
        }
    }

    /// One packet from the guest.
    fn handle_packet(&mut self, h: Header, payload: Vec<u8>) -> Result<(), DeviceError> {
        let (src_cid, dst_cid, type_, op) = (h.src_cid, h.dst_cid, h.type_, h.op);
        let key = (h.dst_port, h.src_port);
        if src_cid != self.cid || dst_cid != HOST_CID {
            // Spoofed or misrouted: there is nobody to answer.
            tracing::debug!("vsock: dropping a packet from cid {src_cid} to cid {dst_cid}");
            return Ok(());
        }
        if type_ != TYPE_STREAM {
            if op != OP_RST {
                self.control.push_back(self.header(key, OP_RST, 0, 0));
            }
            return Ok(());
        }
        if let Some(c) = self.conns.get_mut(&key) {
            c.peer_buf_alloc = h.buf_alloc;
            c.peer_fwd_cnt = h.fwd_cnt;
        }
        match op {
            OP_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.reset_conn(key);
                    return Ok(());
                }
                let path = format!("{}_{}", self.uds_path.display(), key.0);
                match UnixStream::connect(&path).and_then(|s| s.set_nonblocking(true).map(|_| s)) {
                    Ok(stream) => {
                        let fd = stream.as_raw_fd();
                        let mut conn = Conn::new(stream, State::Established);
                        conn.peer_buf_alloc = h.buf_alloc;
                        conn.peer_fwd_cnt = h.fwd_cnt;
                        self.conns.insert(key, conn);
                        self.fds.insert(fd, key);
                        self.watch(fd)?;
                        self.send_control(key, OP_RESPONSE, 0);
                    }
                    Err(e) => {
                        tracing::debug!("vsock: guest connect to {path}: {e}");
                        self.control.push_back(self.header(key, OP_RST, 0, 0));
                    }
                }
            }
            OP_RESPONSE => match self.conns.get_mut(&key) {
                Some(c) if c.state == State::Connecting => {
                    c.state = State::Established;
                    let ok = format!("OK {}\n", key.0);
                    // The client just sent CONNECT and waits for this line;
                    // a socket buffer that cannot take 16 bytes is broken.
                    // (The stream is on the event loop since it was accepted.)
                    if c.stream.write_all(ok.as_bytes()).is_err() {
                        self.reset_conn(key);
                    }
                }
                _ => self.reset_conn(key),
            },
            OP_RW => {
                let Some(c) = self
                    .conns
                    .get_mut(&key)
                    .filter(|c| c.state == State::Established)
                else {
                    self.reset_conn(key);
                    return Ok(());
                };
                if c.to_stream.len() + payload.len() > BUF_ALLOC as usize {
                    tracing::warn!("vsock: guest port {} overran its credit; resetting", key.1);
                    self.reset_conn(key);
                    return Ok(());
                }
                c.to_stream.extend_from_slice(&payload);
                if c.flush_to_stream().is_err() {
                    self.reset_conn(key);
                    return Ok(());
                }
                self.maybe_credit_update(key);
            }
            OP_CREDIT_UPDATE => {}
            OP_CREDIT_REQUEST => {
                if self.conns.contains_key(&key) {
                    self.send_control(key, OP_CREDIT_UPDATE, 0);
                }
            }
            OP_SHUTDOWN => {
                let flags = h.flags;
                let Some(c) = self.conns.get_mut(&key) else {
                    return Ok(());
                };
                if flags & SHUTDOWN_SEND != 0 {
                    c.guest_done_sending = true;
                    let _ = c.flush_to_stream();
                }
                if flags & (SHUTDOWN_SEND | SHUTDOWN_RCV) == (SHUTDOWN_SEND | SHUTDOWN_RCV) {
                    // Both directions closed: the peer expects our RST.
                    let _ = c.flush_to_stream();
                    self.reset_conn(key);
                }
            }
            OP_RST => self.close(key),
            _ => self.reset_conn(key),
        }
        Ok(())
    }

    /// Tells the guest about freed room once a quarter of its window drained.
    fn maybe_credit_update(&mut self, key: Key) {
        if let Some(c) = self.conns.get(&key) {
            if c.fwd_cnt.wrapping_sub(c.fwd_cnt_told) >= BUF_ALLOC / 4 {
                self.send_control(key, OP_CREDIT_UPDATE, 0);
            }
        }
    }

    fn process_tx(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = a.mem.clone();
        let mut packets = Vec::new();
        while let Some(chain) = a.pop(&mem, TX)? {
            let head = chain.head_index();
            let mut reader = chain
                .reader(&mem)
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            if reader.available_bytes() >= HDR_LEN {
                let h: Header = reader
                    .read_obj()
                    .map_err(|e| DeviceError::Memory(e.to_string()))?;
                let len = h.len as usize;
                if len <= reader.available_bytes() && len <= MAX_PAYLOAD {
                    let mut payload = vec![0u8; len];
                    reader
                        .read_exact(&mut payload)
                        .map_err(|e| DeviceError::Memory(e.to_string()))?;
                    packets.push((h, payload));
                } else {
                    tracing::debug!(
                        "vsock: dropping a packet whose length {len} exceeds its buffers"
                    );
                }
            } else {
                tracing::debug!("vsock: dropping a tx chain shorter than a header");
            }
            a.complete(TX, head, 0)?;
        }
        for (h, payload) in packets {
            self.handle_packet(h, payload)?;
        }
        self.process_rx()
    }

    /// Fills rx buffers: control packets first, then data and EOFs from the
    /// host streams, as far as buffers and credit go.
    fn process_rx(&mut self) -> Result<(), DeviceError> {
        let Some(mem) = self.active.as_ref().map(|a| a.mem.clone()) else {
            return Ok(());
        };
        while let Some(h) = self.control.front().copied() {
            let a = self.active.as_mut().expect("checked above");
            let Some((head, mut writer)) = pop_rx_buffer(a, &mem, HDR_LEN)? else {
                return Ok(());
            };
            self.control.pop_front();
            writer
                .write_obj(h)
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            a.complete(RX, head, HDR_LEN as u32)?;
        }
        let keys: Vec<Key> = self
            .conns
            .iter()
            .filter(|(_, c)| {
                c.state == State::Established
                    && (c.readable || !c.to_guest.is_empty())
                    && !c.host_eof
            })
            .map(|(k, _)| *k)
            .collect();
        for key in keys {
            while let Some(c) = self.conns.get(&key) {
                let credit = c.peer_credit() as usize;
                if credit == 0 || (!c.readable && c.to_guest.is_empty()) || c.host_eof {
                    break;
                }
                let a = self.active.as_mut().expect("checked above");
                let Some((head, mut writer)) = pop_rx_buffer(a, &mem, HDR_LEN + 1)? else {
                    return Ok(());
                };
                let room = writer.available_bytes();
                let c = self.conns.get_mut(&key).expect("present above");
                let want = (room - HDR_LEN).min(credit).min(MAX_PAYLOAD);
                let mut data = vec![0u8; want];
                let n = if !c.to_guest.is_empty() {
                    let n = want.min(c.to_guest.len());
                    data[..n].copy_from_slice(&c.to_guest[..n]);
                    c.to_guest.drain(..n);
                    Ok(n)
                } else {
                    c.stream.read(&mut data)
                };
                let (op, len, flags) = match n {
                    Ok(0) => {
                        c.host_eof = true;
                        (OP_SHUTDOWN, 0, SHUTDOWN_SEND | SHUTDOWN_RCV)
                    }
                    Ok(n) => {
                        c.tx_cnt = c.tx_cnt.wrapping_add(n as u32);
                        (OP_RW, n, 0)
                    }
                    Err(e)
                        if e.kind() == ErrorKind::WouldBlock
                            || e.kind() == ErrorKind::Interrupted =>
                    {
                        c.readable = e.kind() == ErrorKind::Interrupted;
                        self.active.as_mut().expect("checked above").undo_pop(RX);
                        continue;
                    }
                    Err(_) => {
                        c.host_eof = true;
                        (OP_RST, 0, 0)
                    }
                };
                c.fwd_cnt_told = c.fwd_cnt;
                let h = self.header(key, op, len as u32, flags);
                writer
                    .write_obj(h)
                    .map_err(|e| DeviceError::Memory(e.to_string()))?;
                writer
                    .write_all(&data[..len])
                    .map_err(|e| DeviceError::Memory(e.to_string()))?;
                self.active.as_mut().expect("checked above").complete(
                    RX,
                    head,
                    (HDR_LEN + len) as u32,
                )?;
                if op == OP_RST {
                    self.close(key);
                }
            }
        }
        Ok(())
    }
}

/// The next rx buffer with room for at least `min` bytes: (head, writer).
/// Smaller ones go back to the driver empty.
fn pop_rx_buffer<'m>(
    a: &mut ActiveQueues,
    mem: &'m crate::GuestMemory,
    min: usize,
) -> Result<Option<(u16, virtio_queue::Writer<'m>)>, DeviceError> {
    while let Some(chain) = a.pop(mem, RX)? {
        let head = chain.head_index();
        let writer = chain
            .writer(mem)
            .map_err(|e| DeviceError::Memory(e.to_string()))?;
        if writer.available_bytes() >= min {
            return Ok(Some((head, writer)));
        }
        a.complete(RX, head, 0)?;
    }
    Ok(None)
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        TYPE_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    /// struct virtio_vsock_config { le64 guest_cid; }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.cid.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, queues: ActiveQueues) -> Result<(), DeviceError> {
        queues
            .events
            .add(
                self.listener.as_raw_fd(),
                EventSet::IN | EventSet::EDGE_TRIGGERED,
            )
            .map_err(|e| DeviceError::Backend(format!("epoll: {e}")))?;
        self.active = Some(queues);
        // Clients that connected before the driver was up: adding a ready
        // fd reports it once, so the event loop accepts them. (Activation
        // runs on the vCPU thread, whose seccomp filter has no accept.)
        Ok(())
    }

    fn queue_notify(&mut self, index: usize) -> Result<(), DeviceError> {
        match index {
            TX => self.process_tx(),
            RX => self.process_rx(),
            // Event buffers are kept for transport events we never send.
            EVENT => Ok(()),
            _ => Ok(()),
        }
    }

    fn handle_event(&mut self, fd: RawFd, events: EventSet) -> Result<(), DeviceError> {
        if fd == self.listener.as_raw_fd() {
            self.accept_clients()?;
        } else if self.pending.contains_key(&fd) {
            self.read_connect_line(fd);
        } else if let Some(key) = self.fds.get(&fd).copied() {
            let c = self.conns.get_mut(&key).expect("fds and conns agree");
            if events.intersects(EventSet::IN | EventSet::READ_HANG_UP | EventSet::HANG_UP) {
                c.readable = true;
            }
            if events.contains(EventSet::OUT) && c.flush_to_stream().is_err() {
                self.reset_conn(key);
            } else {
                self.maybe_credit_update(key);
            }
        }
        self.process_rx()
    }

    fn reset(&mut self) {
        let keys: Vec<Key> = self.conns.keys().copied().collect();
        for k in keys {
            self.close(k);
        }
        let pending: Vec<RawFd> = self.pending.keys().copied().collect();
        if let Some(a) = self.active.take() {
            for fd in pending {
                a.events.remove(fd);
            }
            a.events.remove(self.listener.as_raw_fd());
        }
        self.pending.clear();
        self.control.clear();
    }

    fn cleanup(&mut self) {
        let _ = std::fs::remove_file(&self.uds_path);
    }
}

impl Drop for Vsock {
    fn drop(&mut self) {
        self.cleanup();
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::{active, memory, TestQueue, QUEUE_SIZE as TQ};
    use super::*;
    use crate::GuestMemory;
    use vm_memory::{Bytes, GuestAddress};

    const RXBUF: u64 = 0x20000;
    const TXBUF: u64 = 0x30000;

    struct Rig<'a> {
        mem: &'a GuestMemory,
        rx: TestQueue<'a>,
        tx: TestQueue<'a>,
        dev: Vsock,
        next_rx: u16,
        next_tx: u16,
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl<'a> Rig<'a> {
        fn new(mem: &'a GuestMemory) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("v.sock");
            let mut dev = Vsock::new(&VsockConfig {
                guest_cid: 3,
                uds_path: path.clone(),
            })
            .unwrap();
            let rx = TestQueue::new(mem, 0x1000);
            let tx = TestQueue::new(mem, 0x3000);
            let ev = TestQueue::new(mem, 0x5000);
            dev.activate(active(mem, vec![rx.queue(), tx.queue(), ev.queue()]))
                .unwrap();
            Rig {
                mem,
                rx,
                tx,
                dev,
                next_rx: 0,
                next_tx: 0,
                _dir: dir,
                path,
            }
        }

        /// Posts one rx buffer of `len` bytes.
        fn post_rx(&mut self, len: u32) {
            let i = self.next_rx;
            self.rx
                .add_chain(i % TQ, &[(RXBUF + u64::from(i % TQ) * 0x1000, len, true)]);
            self.next_rx += 1;
        }

        /// The packet in the rx buffer the device used last.
        fn last_rx(&self) -> (Header, Vec<u8>) {
            let (id, len) = self.rx.used(self.rx.used_idx() - 1);
            let addr = GuestAddress(RXBUF + u64::from(id) * 0x1000);
            let h: Header = self.mem.read_obj(addr).unwrap();
            let mut data = vec![0u8; len as usize - HDR_LEN];
            self.mem
                .read_slice(&mut data, GuestAddress(addr.0 + HDR_LEN as u64))
                .unwrap();
            (h, data)
        }

        fn send(&mut self, h: Header, payload: &[u8]) -> Result<(), DeviceError> {
            let i = self.next_tx % TQ;
            let addr = TXBUF + u64::from(i) * 0x1000;
            self.mem.write_obj(h, GuestAddress(addr)).unwrap();
            self.mem
                .write_slice(payload, GuestAddress(addr + HDR_LEN as u64))
                .unwrap();
            self.tx
                .add_chain(i, &[(addr, (HDR_LEN + payload.len()) as u32, false)]);
            self.next_tx += 1;
            self.dev.queue_notify(TX)
        }
    }

    fn guest_hdr(op: u16, src_port: u32, dst_port: u32, len: u32) -> Header {
        Header {
            src_cid: 3,
            dst_cid: HOST_CID,
            src_port,
            dst_port,
            len,
            type_: TYPE_STREAM,
            op,
            flags: 0,
            buf_alloc: 65536,
            fwd_cnt: 0,
        }
    }

    fn wait_readable(s: &UnixStream) {
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
    }

    #[test]
    fn host_initiated_connection_moves_bytes_both_ways() {
        let mem = memory();
        let mut r = Rig::new(&mem);
        let mut client = UnixStream::connect(&r.path).unwrap();
        client.write_all(b"CONNECT 1234\n").unwrap();
        r.post_rx(4096);
        let lfd = r.dev.listener.as_raw_fd();
        r.dev.handle_event(lfd, EventSet::IN).unwrap();
        let (req, _) = r.last_rx();
        let (op, dst_port, host_port) = (req.op, req.dst_port, req.src_port);
        assert_eq!((op, dst_port), (OP_REQUEST, 1234));

        r.send(guest_hdr(OP_RESPONSE, 1234, host_port, 0), b"")
            .unwrap();
        wait_readable(&client);
        let mut ok = [0u8; 64];
        let n = client.read(&mut ok).unwrap();
        assert_eq!(
            std::str::from_utf8(&ok[..n]).unwrap(),
            format!("OK {host_port}\n")
        );

        r.send(guest_hdr(OP_RW, 1234, host_port, 5), b"hello")
            .unwrap();
        let mut got = [0u8; 5];
        client.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"hello");

        client.write_all(b"back").unwrap();
        r.post_rx(4096);
        let fd = client_fd(&r);
        // Give the socket a moment: the write is already in the buffer.
        r.dev.handle_event(fd, EventSet::IN).unwrap();
        let (h, data) = r.last_rx();
        let op = h.op;
        assert_eq!((op, data.as_slice()), (OP_RW, &b"back"[..]));

        drop(client);
        r.post_rx(4096);
        r.dev
            .handle_event(fd, EventSet::IN | EventSet::READ_HANG_UP)
            .unwrap();
        let (h, _) = r.last_rx();
        let (op, flags) = (h.op, h.flags);
        assert_eq!(
            (op, flags),
            (OP_SHUTDOWN, SHUTDOWN_RCV | SHUTDOWN_SEND),
            "host EOF becomes SHUTDOWN"
        );
    }

    fn client_fd(r: &Rig) -> RawFd {
        *r.dev.fds.keys().next().expect("one connection")
    }

    #[test]
    fn guest_initiated_connection_and_refusal() {
        let mem = memory();
        let mut r = Rig::new(&mem);
        let listener = UnixListener::bind(format!("{}_5678", r.path.display())).unwrap();
        r.post_rx(4096);
        r.send(guest_hdr(OP_REQUEST, 49152, 5678, 0), b"").unwrap();
        let (h, _) = r.last_rx();
        let op = h.op;
        assert_eq!(op, OP_RESPONSE);
        let (mut server, _) = listener.accept().unwrap();
        r.send(guest_hdr(OP_RW, 49152, 5678, 4), b"ping").unwrap();
        let mut got = [0u8; 4];
        wait_readable(&server);
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");

        r.post_rx(4096);
        r.send(guest_hdr(OP_REQUEST, 49153, 9999, 0), b"").unwrap();
        let (h, _) = r.last_rx();
        let op = h.op;
        assert_eq!(op, OP_RST, "nobody listens on <path>_9999");
    }

    #[test]
    fn malformed_packets_are_dropped_or_reset() {
        let mem = memory();
        let mut r = Rig::new(&mem);
        // Shorter than a header: consumed, nothing else happens.
        r.tx.add_chain(0, &[(TXBUF, 10, false)]);
        r.next_tx = 1;
        r.dev.queue_notify(TX).unwrap();
        assert_eq!(r.tx.used_idx(), 1);
        // A length beyond the buffers: dropped.
        let mut h = guest_hdr(OP_RW, 1, 2, 60000);
        r.send(h, b"short").unwrap();
        assert_eq!(r.tx.used_idx(), 2);
        // A spoofed source CID gets no answer at all.
        r.post_rx(4096);
        h = guest_hdr(OP_REQUEST, 1, 2, 0);
        h.src_cid = 99;
        r.send(h, b"").unwrap();
        assert_eq!(r.rx.used_idx(), 0);
        // Data for a connection that does not exist: RST.
        r.send(guest_hdr(OP_RW, 7, 8, 1), b"x").unwrap();
        let (h, _) = r.last_rx();
        let op = h.op;
        assert_eq!(op, OP_RST);
        // A chain pointing outside guest memory: device error.
        r.tx.add_chain(9, &[(0x3f_ff00, 0x1000, false)]);
        assert!(matches!(
            r.dev.queue_notify(TX),
            Err(DeviceError::BadChain(_))
        ));
    }

    #[test]
    fn guest_ignoring_credit_loses_the_connection() {
        let mem = memory();
        let mut r = Rig::new(&mem);
        let listener = UnixListener::bind(format!("{}_5000", r.path.display())).unwrap();
        r.post_rx(4096);
        r.send(guest_hdr(OP_REQUEST, 40000, 5000, 0), b"").unwrap();
        let (_server, _) = listener.accept().unwrap();
        // Nobody reads the server side: the unix socket buffer fills, then
        // our BUF_ALLOC window; one more packet is an overrun.
        let chunk = vec![7u8; 60000];
        let mut reset = false;
        r.post_rx(4096);
        for _ in 0..100 {
            r.send(guest_hdr(OP_RW, 40000, 5000, chunk.len() as u32), &chunk)
                .unwrap();
            if r.dev.conns.is_empty() {
                reset = true;
                break;
            }
        }
        assert!(reset, "the connection was reset");
        let ops: Vec<u16> = r.dev.control.iter().map(|h| h.op).collect();
        assert_eq!(
            ops.last(),
            Some(&OP_RST),
            "the guest is told with a RST: {ops:?}"
        );
    }

    #[test]
    fn too_small_rx_buffer_goes_back_empty_and_the_packet_waits() {
        let mem = memory();
        let mut r = Rig::new(&mem);
        r.post_rx(16);
        r.send(guest_hdr(OP_RW, 7, 8, 1), b"x").unwrap();
        assert_eq!(r.rx.used(0).1, 0, "16 bytes cannot hold a header");
        assert_eq!(r.dev.control.len(), 1, "the RST waits for a real buffer");
        r.post_rx(4096);
        r.dev.queue_notify(RX).unwrap();
        let (h, _) = r.last_rx();
        let op = h.op;
        assert_eq!(op, OP_RST);
    }

    #[test]
    fn bad_connect_lines_are_refused() {
        let mem = memory();
        let mut r = Rig::new(&mem);
        let mut client = UnixStream::connect(&r.path).unwrap();
        client.write_all(b"HELLO 1234\n").unwrap();
        let lfd = r.dev.listener.as_raw_fd();
        r.dev.handle_event(lfd, EventSet::IN).unwrap();
        let mut buf = String::new();
        wait_readable(&client);
        client.read_to_string(&mut buf).unwrap();
        assert!(buf.starts_with("ERR bad request"), "{buf}");
        assert!(r.dev.pending.is_empty() && r.dev.conns.is_empty());
    }

    /// Linux before 6.1.63 puts a packet's header and its data in separate
    /// descriptors; 6.1.63 and later (the sk_buff rework) may use one
    /// buffer for both, in rx and in tx. Both layouts, and a header split
    /// at an odd offset, must work in both directions.
    #[test]
    fn header_and_data_in_one_descriptor_or_in_several() {
        let mem = memory();
        let mut r = Rig::new(&mem);
        let listener = UnixListener::bind(format!("{}_6000", r.path.display())).unwrap();
        r.post_rx(4096);
        r.send(guest_hdr(OP_REQUEST, 50000, 6000, 0), b"").unwrap();
        let (mut server, _) = listener.accept().unwrap();
        wait_readable(&server);

        // tx, one descriptor: header and data (Rig::send).
        r.send(guest_hdr(OP_RW, 50000, 6000, 3), b"one").unwrap();
        let mut got = [0u8; 3];
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"one");

        // tx, header and data in two descriptors.
        let h = guest_hdr(OP_RW, 50000, 6000, 3);
        mem.write_obj(h, GuestAddress(TXBUF)).unwrap();
        mem.write_slice(b"two", GuestAddress(TXBUF + 0x800))
            .unwrap();
        let i = r.next_tx % TQ;
        r.tx.add_chain(
            i,
            &[(TXBUF, HDR_LEN as u32, false), (TXBUF + 0x800, 3, false)],
        );
        r.next_tx += 2;
        r.dev.queue_notify(TX).unwrap();
        server.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"two");

        // tx, the header itself split (20 + 24 bytes), then the data.
        let h = guest_hdr(OP_RW, 50000, 6000, 5);
        let bytes = h.as_slice().to_vec();
        mem.write_slice(&bytes[..20], GuestAddress(TXBUF + 0x1000))
            .unwrap();
        mem.write_slice(&bytes[20..], GuestAddress(TXBUF + 0x1800))
            .unwrap();
        mem.write_slice(b"three", GuestAddress(TXBUF + 0x2000))
            .unwrap();
        let i = r.next_tx % TQ;
        r.tx.add_chain(
            i,
            &[
                (TXBUF + 0x1000, 20, false),
                (TXBUF + 0x1800, 24, false),
                (TXBUF + 0x2000, 5, false),
            ],
        );
        r.next_tx += 3;
        r.dev.queue_notify(TX).unwrap();
        let mut got5 = [0u8; 5];
        server.read_exact(&mut got5).unwrap();
        assert_eq!(&got5, b"three");

        let fd = *r.dev.fds.keys().next().expect("one connection");
        // rx, one descriptor: header and data (Rig::post_rx).
        server.write_all(b"back1").unwrap();
        r.post_rx(4096);
        r.dev.handle_event(fd, EventSet::IN).unwrap();
        let (h, data) = r.last_rx();
        let (op, len) = (h.op, h.len);
        assert_eq!((op, len, data.as_slice()), (OP_RW, 5, &b"back1"[..]));

        // rx, a header-sized descriptor and a data descriptor.
        server.write_all(b"back2").unwrap();
        let hdr_at = RXBUF + 0xa000;
        let data_at = RXBUF + 0xb000;
        let i = r.next_rx % TQ;
        r.rx.add_chain(i, &[(hdr_at, HDR_LEN as u32, true), (data_at, 4096, true)]);
        r.next_rx += 2;
        r.dev.handle_event(fd, EventSet::IN).unwrap();
        let (id, used) = r.rx.used(r.rx.used_idx() - 1);
        assert_eq!((id, used), (u32::from(i), (HDR_LEN + 5) as u32));
        let h: Header = mem.read_obj(GuestAddress(hdr_at)).unwrap();
        let (op, len) = (h.op, h.len);
        assert_eq!((op, len), (OP_RW, 5));
        let mut data = [0u8; 5];
        mem.read_slice(&mut data, GuestAddress(data_at)).unwrap();
        assert_eq!(&data, b"back2");

        // A control packet (CREDIT_UPDATE) into a split rx buffer too.
        let i = r.next_rx % TQ;
        r.rx.add_chain(i, &[(hdr_at, HDR_LEN as u32, true), (data_at, 4096, true)]);
        r.next_rx += 2;
        r.send(guest_hdr(OP_CREDIT_REQUEST, 50000, 6000, 0), b"")
            .unwrap();
        let (id, used) = r.rx.used(r.rx.used_idx() - 1);
        assert_eq!((id, used), (u32::from(i), HDR_LEN as u32));
        let h: Header = mem.read_obj(GuestAddress(hdr_at)).unwrap();
        let op = h.op;
        assert_eq!(op, OP_CREDIT_UPDATE);
    }

    #[test]
    fn socket_is_removed_and_live_socket_refused() {
        let mem = memory();
        let r = Rig::new(&mem);
        let path = r.path.clone();
        assert!(Vsock::new(&VsockConfig {
            guest_cid: 3,
            uds_path: path.clone()
        })
        .is_err());
        drop(r.dev);
        assert!(!path.exists());
    }
}
