//! The vhost-user backend driven by `vhost`'s own frontend, as QEMU drives
//! it: guest memory in a memfd both sides map, rings built in it by the
//! test, kicks and calls through eventfds.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vhost::vhost_user::message::{
    VhostUserConfigFlags, VhostUserHeaderFlag, VhostUserProtocolFeatures,
};
use vhost::vhost_user::{Frontend, VhostUserFrontend, VhostUserVirtioFeatures};
use vhost::{VhostBackend, VhostUserMemoryRegionInfo, VringConfigData};
use vm_memory::mmap::MmapRegion;
use vm_memory::{Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestRegionMmap};
use vmm_sys_util::eventfd::EventFd;

use super::*;
use crate::devices::virtio::testing::{TestQueue, QUEUE_SIZE};
use crate::devices::virtio::VIRTIO_F_VERSION_1;
use crate::GuestMemory;

const MEM_SIZE: u64 = 0x40_0000;
const RXBUF: u64 = 0x20000;

/// Guest memory in a memfd, mapped here as the frontend maps it.
fn shared_memory() -> (GuestMemory, File) {
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned
    // by the File at once.
    let fd = unsafe { libc::memfd_create(c"guest".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0);
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(MEM_SIZE).unwrap();
    let region = MmapRegion::from_file(
        FileOffset::new(file.try_clone().unwrap(), 0),
        MEM_SIZE as usize,
    )
    .unwrap();
    let mem =
        GuestMemory::from_regions(vec![GuestRegionMmap::new(region, GuestAddress(0)).unwrap()])
            .unwrap();
    (mem, file)
}

/// All of [`shared_memory`] as one region, at `user` in this process.
fn region(user: u64, memfd: &File) -> VhostUserMemoryRegionInfo {
    VhostUserMemoryRegionInfo {
        guest_phys_addr: 0,
        memory_size: MEM_SIZE,
        userspace_addr: user,
        mmap_offset: 0,
        mmap_handle: memfd.as_raw_fd(),
    }
}

fn wait_for(what: &str, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Serves a vsock device on `socket` in a thread; returns its end.
fn serve_vsock(socket: &Path, uds: &Path) -> std::thread::JoinHandle<Result<()>> {
    let cfg = VhostUserConfig {
        fs: None,
        vsock: Some((
            VsockConfig {
                guest_cid: 3,
                uds_path: uds.to_path_buf(),
            },
            socket.to_path_buf(),
        )),
        jail: false,
        seccomp: false,
    };
    let handle = std::thread::spawn(move || serve(cfg));
    wait_for("the backend's socket", || socket.exists());
    handle
}

/// The frontend's side of a negotiation, as QEMU's vhost-user-vsock does
/// it; returns the connected frontend.
fn negotiate(socket: &PathBuf) -> Frontend {
    // Three queues, as many as the device has: the frontend's own checks
    // then let a request for the third (QEMU's) through.
    let mut f = Frontend::connect(socket, 3).unwrap();
    f.set_owner().unwrap();
    let features = f.get_features().unwrap();
    let protocol = VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits();
    assert_eq!(
        features & (VIRTIO_F_VERSION_1 | protocol),
        VIRTIO_F_VERSION_1 | protocol
    );
    f.set_features(features).unwrap();
    let pf = f.get_protocol_features().unwrap();
    assert!(pf.contains(VhostUserProtocolFeatures::CONFIG | VhostUserProtocolFeatures::MQ));
    f.set_protocol_features(pf).unwrap();
    assert_eq!(f.get_queue_num().unwrap(), 2);
    // Every request is acknowledged (REPLY_ACK), so refusals are seen.
    f.set_hdr_flags(VhostUserHeaderFlag::NEED_REPLY);
    f
}

fn ring_config(user: u64, q: &TestQueue) -> VringConfigData {
    VringConfigData {
        queue_max_size: QUEUE_SIZE,
        queue_size: QUEUE_SIZE,
        flags: 0,
        desc_table_addr: user + q.mock.desc_table_addr().0,
        used_ring_addr: user + q.mock.used_addr().0,
        avail_ring_addr: user + q.mock.avail_addr().0,
        log_addr: None,
    }
}

#[test]
fn vsock_over_vhost_user_carries_a_host_connection_to_the_guest() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, uds) = (dir.path().join("vu.sock"), dir.path().join("v.sock"));
    let server = serve_vsock(&socket, &uds);
    let mut f = negotiate(&socket);

    // The CID comes from the device's configuration.
    let (_, cid) = f
        .get_config(0, 8, VhostUserConfigFlags::empty(), &[0; 8])
        .unwrap();
    assert_eq!(u64::from_le_bytes(cid[..8].try_into().unwrap()), 3);

    let (mem, memfd) = shared_memory();
    let user = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    f.set_mem_table(&[region(user, &memfd)]).unwrap();
    let mut rx = TestQueue::new(&mem, 0x1000);
    let tx = TestQueue::new(&mem, 0x3000);
    let calls = [
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
        EventFd::new(libc::EFD_NONBLOCK).unwrap(),
    ];
    let kicks = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
    for (i, q) in [&rx, &tx].into_iter().enumerate() {
        f.set_vring_num(i, QUEUE_SIZE).unwrap();
        f.set_vring_addr(i, &ring_config(user, q)).unwrap();
        f.set_vring_base(i, 0).unwrap();
        f.set_vring_call(i, &calls[i]).unwrap();
        f.set_vring_kick(i, &kicks[i]).unwrap();
        f.set_vring_enable(i, true).unwrap();
    }

    // The guest posts an rx buffer; a host client asks for guest port
    // 1234; the device writes the request into the buffer and calls.
    rx.add_chain(0, &[(RXBUF, 4096, true)]);
    kicks[0].write(1).unwrap();
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    wait_for("the request in the rx ring", || rx.used_idx() == 1);
    // struct virtio_vsock_hdr: dst_cid at 8, dst_port at 20, op at 30.
    let dst_cid: u64 = mem.read_obj(GuestAddress(RXBUF + 8)).unwrap();
    let dst_port: u32 = mem.read_obj(GuestAddress(RXBUF + 20)).unwrap();
    let op: u16 = mem.read_obj(GuestAddress(RXBUF + 30)).unwrap();
    assert_eq!((dst_cid, dst_port, op), (3, 1234, 1), "a REQUEST to 3:1234");
    wait_for("the rx call", || calls[0].read().is_ok());

    // Stopping a ring gives where it resumes: past the used buffer.
    assert_eq!(f.get_vring_base(0).unwrap(), 1);

    // The frontend leaves: the backend ends and removes its sockets.
    drop(f);
    server.join().unwrap().unwrap();
    assert!(!uds.exists() && !socket.exists());
}

#[test]
fn hostile_frontend_requests_are_refused_and_serving_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let (socket, uds) = (dir.path().join("vu.sock"), dir.path().join("v.sock"));
    let server = serve_vsock(&socket, &uds);
    let mut f = negotiate(&socket);
    let (mem, memfd) = shared_memory();
    let user = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    f.set_mem_table(&[region(user, &memfd)]).unwrap();
    let q = TestQueue::new(&mem, 0x1000);

    // A ring size that is no power of two, or beyond virtio's.
    assert!(f.set_vring_num(0, 12).is_err());
    assert!(f.set_vring_num(0, 0).is_err());
    // A ring the device does not have (the event queue is QEMU's).
    assert!(f.set_vring_num(2, QUEUE_SIZE).is_err());
    // Ring addresses outside the memory the frontend gave.
    let mut outside = ring_config(user, &q);
    outside.desc_table_addr = user + MEM_SIZE;
    assert!(f.set_vring_addr(0, &outside).is_err());
    outside.desc_table_addr = user.wrapping_sub(0x1000);
    assert!(f.set_vring_addr(0, &outside).is_err());
    // A ring whose used ring runs past the end of guest memory: accepted
    // as an address, refused when the device would start on it.
    let mut straddling = ring_config(user, &q);
    straddling.used_ring_addr = user + MEM_SIZE - 4;
    let other = TestQueue::new(&mem, 0x3000);
    let kicks = [EventFd::new(0).unwrap(), EventFd::new(0).unwrap()];
    for (i, c) in [straddling, ring_config(user, &other)].iter().enumerate() {
        f.set_vring_num(i, QUEUE_SIZE).unwrap();
        f.set_vring_addr(i, c).unwrap();
        f.set_vring_kick(i, &kicks[i]).unwrap();
    }
    f.set_vring_enable(0, true).unwrap();
    assert!(f.set_vring_enable(1, true).is_err());
    // A memory table whose regions overlap.
    assert!(f
        .set_mem_table(&[region(user, &memfd), region(user, &memfd)])
        .is_err());

    // The backend still serves well-formed requests.
    assert_eq!(f.get_queue_num().unwrap(), 2);
    drop(f);
    server.join().unwrap().unwrap();
}
