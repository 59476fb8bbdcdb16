//! virtio-net (device 1) on a tap device: one rx/tx queue pair, no
//! offloads, so frames cross as they are and the 12-byte virtio-net header
//! is added (rx) or dropped (tx) here.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use vmm_sys_util::epoll::EventSet;

use super::{ActiveQueues, DeviceError, VirtioDevice, TYPE_NET};
use crate::config::{parse_mac, NetConfig};

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
pub const VIRTIO_NET_F_MAC: u64 = 1 << 5;
/// struct virtio_net_hdr_v1, all zero without offloads (num_buffers = 1 on rx).
pub const NET_HDR_LEN: usize = 12;
/// The largest frame we move: 64 KiB, like the tap's own limit.
const MAX_FRAME: usize = 65535;

const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
vmm_sys_util::ioctl_iow_nr!(TUNSETIFF, b'T' as u32, 202, libc::c_int);

pub struct Net {
    tap: File,
    tap_name: String,
    mac: Option<[u8; 6]>,
    active: Option<ActiveQueues>,
    /// Length (header included) of a frame in `rx_buf` that found no rx
    /// buffer yet.
    pending: Option<usize>,
    /// Receive buffer, reused for every frame: the virtio-net header (all
    /// zero but num_buffers = 1), then the frame read from the tap.
    rx_buf: Vec<u8>,
    /// Tap reads are paused until the driver posts rx buffers.
    rx_blocked: bool,
}

#[repr(C)]
struct IfReq {
    name: [libc::c_char; libc::IFNAMSIZ],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Attaches to tap `name`, creating it if it does not exist. A tap created
/// here is not persistent: it disappears when the VMM exits.
fn open_tap(name: &str) -> Result<File, String> {
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(|e| format!("cannot open /dev/net/tun: {e}"))?;
    let mut req = IfReq {
        name: [0; libc::IFNAMSIZ],
        flags: IFF_TAP | IFF_NO_PI,
        _pad: [0; 22],
    };
    for (d, s) in req.name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    // SAFETY: TUNSETIFF reads and writes a struct ifreq, which `req` lays
    // out (name, flags, padding to 40 bytes); the fd is /dev/net/tun.
    let ret = unsafe { libc::ioctl(tun.as_raw_fd(), TUNSETIFF() as _, &mut req) };
    if ret < 0 {
        return Err(format!(
            "cannot attach to tap {name:?}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(tun)
}

fn rx_buffer() -> Vec<u8> {
    let mut buf = vec![0u8; NET_HDR_LEN + MAX_FRAME];
    buf[10] = 1; // num_buffers
    buf
}

impl Net {
    pub fn new(cfg: &NetConfig) -> Result<Self, String> {
        let mac = cfg
            .mac
            .as_deref()
            .map(parse_mac)
            .transpose()
            .map_err(|e| e.to_string())?;
        let tap = open_tap(&cfg.tap)?;
        Ok(Net {
            tap,
            tap_name: cfg.tap.clone(),
            mac,
            active: None,
            pending: None,
            rx_buf: rx_buffer(),
            rx_blocked: false,
        })
    }

    pub fn tap_name(&self) -> &str {
        &self.tap_name
    }

    fn transmit(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = a.mem.clone();
        while let Some(chain) = a.pop(&mem, TX)? {
            let head = chain.head_index();
            let mut reader = chain
                .reader(&mem)
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            let len = reader.available_bytes();
            if (NET_HDR_LEN..=NET_HDR_LEN + MAX_FRAME).contains(&len) {
                let mut frame = vec![0u8; len];
                reader
                    .read_exact(&mut frame)
                    .map_err(|e| DeviceError::Memory(e.to_string()))?;
                // A full tap queue drops the frame, as a real NIC would.
                if let Err(e) = self.tap.write(&frame[NET_HDR_LEN..]) {
                    tracing::debug!("net: tap write: {e}");
                }
            } else {
                tracing::debug!("net: dropping a tx chain of {len} bytes");
            }
            a.complete(TX, head, 0)?;
        }
        Ok(())
    }

    /// Moves frames from the tap into rx buffers until one side runs dry.
    fn receive(&mut self) -> Result<(), DeviceError> {
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = a.mem.clone();
        loop {
            let len = match self.pending.take() {
                Some(len) => len,
                None => match self.tap.read(&mut self.rx_buf[NET_HDR_LEN..]) {
                    Ok(n) => NET_HDR_LEN + n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(DeviceError::Backend(format!("tap read: {e}"))),
                },
            };
            let frame = &self.rx_buf[..len];
            let Some(chain) = a.pop(&mem, RX)? else {
                self.pending = Some(len);
                if !self.rx_blocked {
                    self.rx_blocked = true;
                    let _ = a.events.modify(self.tap.as_raw_fd(), EventSet::empty());
                }
                break;
            };
            let head = chain.head_index();
            let mut writer = chain
                .writer(&mem)
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            if writer.available_bytes() < frame.len() {
                // Without mergeable buffers the driver must post buffers
                // for whole frames; drop this one and give the buffer back.
                tracing::debug!(
                    "net: rx buffer of {} bytes too small for {}",
                    writer.available_bytes(),
                    frame.len()
                );
                a.complete(RX, head, 0)?;
                continue;
            }
            writer
                .write_all(frame)
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            a.complete(RX, head, frame.len() as u32)?;
        }
        Ok(())
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        if self.mac.is_some() {
            VIRTIO_NET_F_MAC
        } else {
            0
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.mac.unwrap_or_default(), offset, data);
    }

    fn activate(&mut self, queues: ActiveQueues) -> Result<(), DeviceError> {
        queues
            .events
            .add(self.tap.as_raw_fd(), EventSet::IN)
            .map_err(|e| DeviceError::Backend(format!("watching the tap: {e}")))?;
        self.active = Some(queues);
        self.rx_blocked = false;
        Ok(())
    }

    fn queue_notify(&mut self, index: usize) -> Result<(), DeviceError> {
        match index {
            RX => {
                if self.rx_blocked {
                    self.rx_blocked = false;
                    if let Some(a) = &self.active {
                        let _ = a.events.modify(self.tap.as_raw_fd(), EventSet::IN);
                    }
                }
                self.receive()
            }
            _ => self.transmit(),
        }
    }

    fn handle_event(&mut self, fd: RawFd, _events: EventSet) -> Result<(), DeviceError> {
        if fd == self.tap.as_raw_fd() {
            self.receive()?;
        }
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(a) = self.active.take() {
            a.events.remove(self.tap.as_raw_fd());
        }
        self.pending = None;
        self.rx_blocked = false;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::GuestMemory;
    use std::os::unix::net::UnixDatagram;
    use vm_memory::{Bytes, GuestAddress};

    /// A Net whose "tap" is one end of a datagram socket pair: both keep
    /// frame boundaries.
    fn net(mem: &GuestMemory, rx: &TestQueue, tx: &TestQueue) -> (Net, UnixDatagram) {
        let (a, b) = UnixDatagram::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let tap = File::from(std::os::fd::OwnedFd::from(a));
        let mut n = Net {
            tap,
            tap_name: "test".into(),
            mac: Some([2, 0, 0, 0, 0, 1]),
            active: None,
            pending: None,
            rx_buf: rx_buffer(),
            rx_blocked: false,
        };
        n.activate(active(mem, vec![rx.queue(), tx.queue()]))
            .unwrap();
        (n, b)
    }

    #[test]
    fn frames_cross_both_ways() {
        let mem = memory();
        let mut rxq = TestQueue::new(&mem, 0x1000);
        let mut txq = TestQueue::new(&mem, 0x3000);
        let (mut n, peer) = net(&mem, &rxq, &txq);
        let mut mac = [0u8; 6];
        n.read_config(0, &mut mac);
        assert_eq!(mac, [2, 0, 0, 0, 0, 1]);

        mem.write_slice(&[0u8; NET_HDR_LEN], GuestAddress(0x10000))
            .unwrap();
        mem.write_slice(
            b"frame-from-guest",
            GuestAddress(0x10000 + NET_HDR_LEN as u64),
        )
        .unwrap();
        txq.add_chain(0, &[(0x10000, NET_HDR_LEN as u32 + 16, false)]);
        n.queue_notify(TX).unwrap();
        let mut got = [0u8; 64];
        let len = peer.recv(&mut got).unwrap();
        assert_eq!(&got[..len], b"frame-from-guest");

        peer.send(b"frame-to-guest").unwrap();
        n.handle_event(n.tap.as_raw_fd(), EventSet::IN).unwrap();
        assert!(
            n.pending.is_some() && n.rx_blocked,
            "no rx buffer yet: the frame waits"
        );
        rxq.add_chain(0, &[(0x20000, 2048, true)]);
        n.queue_notify(RX).unwrap();
        assert_eq!(rxq.used(0), (0, NET_HDR_LEN as u32 + 14));
        let mut frame = [0u8; 14];
        mem.read_slice(&mut frame, GuestAddress(0x20000 + NET_HDR_LEN as u64))
            .unwrap();
        assert_eq!(&frame, b"frame-to-guest");
        assert_eq!(
            mem.read_obj::<u16>(GuestAddress(0x20000 + 10)).unwrap(),
            1,
            "num_buffers"
        );
    }

    #[test]
    fn malformed_chains() {
        let mem = memory();
        let rxq = TestQueue::new(&mem, 0x1000);
        let mut txq = TestQueue::new(&mem, 0x3000);
        let (mut n, peer) = net(&mem, &rxq, &txq);
        peer.set_nonblocking(true).unwrap();
        txq.add_chain(0, &[(0x10000, 4, false)]);
        n.queue_notify(TX).unwrap();
        assert_eq!(
            txq.used_idx(),
            1,
            "a chain shorter than the header is consumed"
        );
        assert!(peer.recv(&mut [0u8; 16]).is_err(), "and nothing is sent");
        txq.add_chain(1, &[(0x10000, 64, true)]);
        n.queue_notify(TX).unwrap();
        assert_eq!(txq.used_idx(), 2, "a write-only tx chain carries no frame");
        txq.add_chain(2, &[(0x3f_ff00, 0x1000, false)]);
        assert!(matches!(n.queue_notify(TX), Err(DeviceError::BadChain(_))));
    }

    #[test]
    fn too_small_rx_buffer_drops_the_frame() {
        let mem = memory();
        let mut rxq = TestQueue::new(&mem, 0x1000);
        let txq = TestQueue::new(&mem, 0x3000);
        let (mut n, peer) = net(&mem, &rxq, &txq);
        rxq.add_chain(0, &[(0x20000, 8, true)]);
        peer.send(&[7u8; 100]).unwrap();
        n.handle_event(n.tap.as_raw_fd(), EventSet::IN).unwrap();
        assert_eq!(rxq.used(0), (0, 0));
        assert!(
            n.pending.is_none() && !n.rx_blocked,
            "the frame is gone, the tap is still read"
        );
    }
}
