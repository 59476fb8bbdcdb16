//! virtio-fs (device 26): a host directory shared with the guest, served in
//! this process by fuse-backend-rs (its FUSE `Server` over its
//! `PassthroughFs`, as Kata's Dragonball uses them), so a VM needs no
//! virtiofsd of its own. The guest mounts it with
//! `mount -t virtiofs <tag> <dir>`.
//!
//! - Queues: 0 is the high-priority queue (FORGET and BATCH_FORGET, which
//!   get no reply), 1 the one request queue. A descriptor chain is one FUSE
//!   request: its readable part is the request, its writable part the
//!   reply. Config space: the tag (36 bytes, NUL-padded), then
//!   `num_request_queues` (1).
//! - Threads: requests are served on a thread of the device's own
//!   (`FsWorker`), not on the event loop. A request is blocking file-system
//!   work on the host (a 1 MiB read, an fsync, a lookup on a slow or remote
//!   file system); on the event loop it would stall every other device and
//!   the API socket meanwhile. The event loop only passes queue
//!   notifications on; the worker completes chains and raises the interrupt
//!   itself, and reports a device error through an eventfd that the event
//!   loop watches (the transport then sets DEVICE_NEEDS_RESET).
//! - Where the passthrough looks: the worker has a root, cwd and umask of
//!   its own (`unshare(CLONE_FS)`), and its cwd is the share's root. The
//!   passthrough's `root_dir` is ".", so each import of the root (when the
//!   worker starts, and again on the guest's FUSE_INIT and FUSE_DESTROY)
//!   opens the cwd. After setup the passthrough resolves no path from the
//!   VMM's root: every lookup and create is one name relative to an fd of a
//!   directory in the share, opened `O_PATH | O_NOFOLLOW`, and reopening an
//!   `O_PATH` fd for I/O goes through `/proc/self/fd/<n>`, relative to the
//!   /proc fd it opened at setup. (Its xattr calls use absolute
//!   `/proc/self/fd` paths, which the jail removes: xattrs are off.)
//!
//! What a guest can name, and what it reaches:
//!
//! - Names: the passthrough refuses names with a '/' in every request, and
//!   "." and ".." everywhere except LOOKUP, where ".." at the root is
//!   answered with the root itself.
//! - Symlinks (absolute, relative, pointing out of the share) are never
//!   followed on the host: lookups open the name itself (`O_NOFOLLOW`),
//!   only regular files and directories are ever opened for I/O, a symlink
//!   is no directory to look up in, and READLINK answers the link's text,
//!   which the guest resolves in its own namespace. Magic links (a share
//!   holding a procfs) are symlinks to the passthrough, handled the same way.
//! - Hard links: LINK links an inode the guest already reached in the share.
//! - What the passthrough does not check, this file does: device nodes
//!   (MKNOD of a block or character device is refused, since a host process
//!   could open it), read-only shares (an allowlist of requests, below),
//!   and the sizes it would allocate by (request and reply are capped).
//! - The kernel enforces the rest under `--jail` (jail.rs): there the share
//!   is a bind mount, where ".." at its root stays at its root and ".."
//!   from a directory renamed out from under it fails, so a rename racing
//!   with the guest's lookups cannot walk out of the share either.
//!
//! Hostile chains are device errors, as for the other devices: one that
//! `checked_chain` refuses, a request shorter than its FUSE header, or one
//! that needs a reply and has no room for the reply's header.

use std::fs::OpenOptions;
use std::io::Write;
use std::mem::size_of;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};

use fuse_backend_rs::abi::fuse_abi::{AccessIn, InHeader, MknodIn, Opcode, OpenIn, OutHeader};
use fuse_backend_rs::api::filesystem::FileSystem;
use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::passthrough::{Config as PassthroughConfig, PassthroughFs};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter};
use seccompiler::BpfProgram;
use virtio_queue::{DescriptorChain, QueueT};
use vm_memory::ByteValued;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::{ActiveQueues, DeviceError, EventRegistrar, VirtioDevice, TYPE_FS};
use crate::config::{FsConfig, MAX_FS_TAG_LEN};
use crate::GuestMemory;

const QUEUE_SIZE: u16 = 256;
const HIPRIO: usize = 0;
const REQUEST: usize = 1;

/// The largest request, and the largest reply, the device serves: the
/// 1 MiB of data fuse-backend-rs negotiates (max_write, 256 max_pages)
/// plus a page for the headers. Bytes of a chain beyond that are not
/// given to fuse-backend-rs, which sizes some buffers by what the request
/// says (an IOCTL's input, a READDIR's reply): a chain spanning a gigabyte
/// of guest memory could otherwise make it allocate a gigabyte.
const MAX_MESSAGE: usize = MAX_BUFFER_SIZE as usize + 4096;
const IN_HEADER_LEN: usize = size_of::<InHeader>();
const OUT_HEADER_LEN: usize = size_of::<OutHeader>();

/// Requests a read-only share serves as they come. OPEN and OPENDIR are
/// served when they only read, ACCESS when it does not ask for write
/// access; anything else gets EROFS. An allowlist, so that a request a
/// newer fuse-backend-rs learns to serve is refused until it is listed.
const READ_ONLY_REQUESTS: &[Opcode] = &[
    Opcode::Lookup,
    Opcode::Forget,
    Opcode::Getattr,
    Opcode::Readlink,
    Opcode::Read,
    Opcode::Statfs,
    Opcode::Release,
    Opcode::Fsync,
    Opcode::Getxattr,
    Opcode::Listxattr,
    Opcode::Flush,
    Opcode::Init,
    Opcode::Readdir,
    Opcode::Releasedir,
    Opcode::Fsyncdir,
    Opcode::Getlk,
    Opcode::Setlk,
    Opcode::Setlkw,
    Opcode::Interrupt,
    Opcode::Bmap,
    Opcode::Destroy,
    Opcode::Poll,
    Opcode::NotifyReply,
    Opcode::BatchForget,
    Opcode::Readdirplus,
    Opcode::Lseek,
];

/// Requests that get no reply (FUSE protocol).
const NO_REPLY: &[Opcode] = &[Opcode::Forget, Opcode::BatchForget, Opcode::Interrupt];

fn is(opcode: u32, list: &[Opcode]) -> bool {
    list.iter().any(|o| *o as u32 == opcode)
}

/// What the worker is told by the device (on the event loop and the vCPU
/// threads).
enum Msg {
    Activate(ActiveQueues),
    Notify,
    /// Drop the queues; answer once no request is in flight.
    Reset(Sender<()>),
}

/// State the device and its worker share.
#[derive(Default)]
struct Shared {
    /// A `Notify` is queued and not handled yet: notifications coalesce.
    notify_pending: AtomicBool,
    /// Why the worker stopped serving, for the event loop to report.
    error: Mutex<Option<DeviceError>>,
    /// The worker thread runs (`FsWorker::start` succeeded).
    started: AtomicBool,
}

/// The device as the transport sees it.
pub struct Fs {
    /// struct virtio_fs_config: tag[36], le32 num_request_queues.
    config: [u8; MAX_FS_TAG_LEN + 4],
    tx: Sender<Msg>,
    shared: Arc<Shared>,
    /// Written by the worker when it stops on a device error.
    error_evt: EventFd,
    events: Option<EventRegistrar>,
}

/// The thread that serves the requests, before it starts. `Vmm::run`
/// starts it (after the jail, with the thread's seccomp filter).
pub struct FsWorker {
    tag: String,
    share: OwnedFd,
    worker: Worker,
}

/// What the running thread has.
struct Worker {
    rx: Receiver<Msg>,
    shared: Arc<Shared>,
    error_evt: EventFd,
    fs: Arc<PassthroughFs>,
    read_only: bool,
}

fn fuse_error(e: fuse_backend_rs::transport::Error) -> DeviceError {
    DeviceError::Memory(e.to_string())
}

/// Opens a share's root directory (`O_PATH`: for lookups, not for reading).
pub fn open_share(cfg: &FsConfig) -> Result<OwnedFd, String> {
    let dir = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(&cfg.path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOTDIR) => format!("{} is not a directory", cfg.path.display()),
            _ => format!("cannot open {}: {e}", cfg.path.display()),
        })?;
    Ok(OwnedFd::from(dir))
}

impl Fs {
    /// Opens the share (a missing or non-directory path is an error here,
    /// before the VM exists) and sets up the passthrough, which opens
    /// /proc/self/fd. The worker thread starts with `FsWorker::start`.
    pub fn new(cfg: &FsConfig) -> Result<(Fs, FsWorker), String> {
        let share = open_share(cfg)?;
        let passthrough = PassthroughConfig {
            // The worker's cwd, which is the share's root (module doc).
            root_dir: ".".into(),
            do_import: true,
            // Off: the passthrough reaches xattrs through absolute
            // /proc/self/fd/<n> paths, which do not resolve in the jail.
            xattr: false,
            ..Default::default()
        };
        let fs = PassthroughFs::<()>::new(passthrough)
            .map_err(|e| format!("cannot set up the passthrough (/proc/self/fd): {e}"))?;
        let error_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|e| format!("eventfd: {e}"))?;
        let worker_evt = error_evt.try_clone().map_err(|e| format!("eventfd: {e}"))?;
        let mut config = [0u8; MAX_FS_TAG_LEN + 4];
        let tag = cfg.tag.as_bytes();
        let n = tag.len().min(MAX_FS_TAG_LEN);
        config[..n].copy_from_slice(&tag[..n]);
        config[MAX_FS_TAG_LEN..].copy_from_slice(&1u32.to_le_bytes());
        let (tx, rx) = channel();
        let shared = Arc::new(Shared::default());
        let worker = FsWorker {
            tag: cfg.tag.clone(),
            share,
            worker: Worker {
                rx,
                shared: shared.clone(),
                error_evt: worker_evt,
                fs: Arc::new(fs),
                read_only: cfg.read_only,
            },
        };
        Ok((
            Fs {
                config,
                tx,
                shared,
                error_evt,
                events: None,
            },
            worker,
        ))
    }

    fn send(&self, msg: Msg) -> Result<(), DeviceError> {
        self.tx
            .send(msg)
            .map_err(|_| DeviceError::Backend("the fs worker thread is gone".into()))
    }
}

impl FsWorker {
    /// The share's root as opened at setup, for the jail to bind.
    pub fn share(&self) -> BorrowedFd<'_> {
        self.share.as_fd()
    }

    pub fn read_only(&self) -> bool {
        self.worker.read_only
    }

    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// Starts the thread and waits until it is ready: its own root, cwd
    /// and umask, its cwd at the share's root (`root`, the jail's bind
    /// mount of the share, replaces the directory opened at setup, which is
    /// closed), the root imported, `filter` installed.
    pub fn start(self, filter: Option<BpfProgram>, root: Option<OwnedFd>) -> Result<(), String> {
        let FsWorker { tag, share, worker } = self;
        let share = root.unwrap_or(share);
        let (ready_tx, ready_rx) = channel();
        std::thread::Builder::new()
            .name(format!("fs-{tag}"))
            .spawn(move || {
                let ready = worker.prepare(share, filter.as_ref());
                let ok = ready.is_ok();
                let _ = ready_tx.send(ready);
                if ok {
                    worker.run();
                }
            })
            .map_err(|e| format!("spawning the thread of share {tag}: {e}"))?;
        ready_rx
            .recv()
            .map_err(|_| format!("the thread of share {tag} ended"))?
            .map_err(|e| format!("share {tag}: {e}"))
    }
}

impl Worker {
    fn prepare(&self, share: OwnedFd, filter: Option<&BpfProgram>) -> Result<(), String> {
        // SAFETY: CLONE_FS gives this thread a root, cwd and umask of its
        // own; no fd table or memory is unshared.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }
            .map_err(|e| format!("unshare(CLONE_FS): {}", std::io::Error::from(e)))?;
        // The cwd holds the share's root from here on; its fd is closed.
        rustix::process::fchdir(&share)
            .map_err(|e| format!("fchdir to the share: {}", std::io::Error::from(e)))?;
        drop(share);
        // Opens "." (the cwd), and sets the umask to 0, for this thread
        // only: the guest sends modes with its own umask applied.
        self.fs
            .import()
            .map_err(|e| format!("importing the share's root: {e}"))?;
        if let Some(f) = filter {
            seccompiler::apply_filter(f).map_err(|e| format!("seccomp: {e}"))?;
        }
        self.shared.started.store(true, Ordering::SeqCst);
        Ok(())
    }

    fn run(self) {
        let server = Server::new(self.fs.clone());
        let mut active: Option<ActiveQueues> = None;
        // Set after a device error, until the driver resets the device.
        let mut broken = false;
        while let Ok(msg) = self.rx.recv() {
            match msg {
                Msg::Activate(a) => {
                    active = Some(a);
                    broken = false;
                }
                Msg::Notify => self.shared.notify_pending.store(false, Ordering::SeqCst),
                Msg::Reset(done) => {
                    active = None;
                    broken = false;
                    // Forget every inode and handle the guest had (the
                    // passthrough re-imports the root).
                    self.fs.destroy();
                    let _ = done.send(());
                    continue;
                }
            }
            let Some(a) = active.as_mut().filter(|_| !broken) else {
                continue;
            };
            if let Err(e) = self.serve(&server, a) {
                broken = true;
                *self.shared.error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                let _ = self.error_evt.write(1);
            }
        }
    }

    /// Serves what the driver made available: the high-priority queue
    /// first, then the requests.
    fn serve(
        &self,
        server: &Server<Arc<PassthroughFs>>,
        a: &mut ActiveQueues,
    ) -> Result<(), DeviceError> {
        let mem = a.mem.clone();
        for q in [HIPRIO, REQUEST] {
            // A driver may leave the high-priority queue unused.
            if !a.queues[q].ready() {
                continue;
            }
            while let Some(chain) = a.pop(&mem, q)? {
                let head = chain.head_index();
                let len = serve_chain(server, &mem, chain, self.read_only)?;
                a.complete(q, head, len)?;
            }
        }
        Ok(())
    }
}

/// Serves one FUSE request; returns the number of reply bytes written.
fn serve_chain(
    server: &Server<Arc<PassthroughFs>>,
    mem: &GuestMemory,
    chain: DescriptorChain<&GuestMemory>,
    read_only: bool,
) -> Result<u32, DeviceError> {
    let mut reader = Reader::from_descriptor_chain(mem, chain.clone()).map_err(fuse_error)?;
    let mut writer = VirtioFsWriter::new(mem, chain).map_err(fuse_error)?;
    if reader.available_bytes() > MAX_MESSAGE {
        // Keeps the first MAX_MESSAGE bytes.
        reader.split_at(MAX_MESSAGE).map_err(fuse_error)?;
    }
    if writer.available_bytes() > MAX_MESSAGE {
        writer.split_at(MAX_MESSAGE).map_err(fuse_error)?;
    }
    let mut body = reader.clone();
    let header: InHeader = body.read_obj().map_err(|_| {
        DeviceError::BadChain("of a FUSE request is shorter than the request header")
    })?;
    let needs_reply = !is(header.opcode, NO_REPLY);
    if needs_reply && writer.available_bytes() < OUT_HEADER_LEN {
        return Err(DeviceError::BadChain(
            "of a FUSE request has no room for the reply header",
        ));
    }
    if let Some(errno) = refusal(&header, &mut body, read_only) {
        return reply_error(writer, header.unique, errno);
    }
    match server.handle_message(reader, writer.clone().into(), None, None) {
        // fuse-backend-rs answers DESTROY with a bare header but returns 0
        // for it; the header fits (checked above).
        Ok(0) if header.opcode == Opcode::Destroy as u32 => Ok(OUT_HEADER_LEN as u32),
        // At most MAX_MESSAGE.
        Ok(n) => Ok(n as u32),
        // fuse-backend-rs could not decode the request, or its reply did
        // not fit the buffer; it answered nothing, so the driver broke the
        // protocol and gets EINVAL.
        Err(e) if needs_reply => {
            tracing::debug!("virtio-fs: opcode {}: {e}", header.opcode);
            reply_error(writer, header.unique, libc::EINVAL)
        }
        Err(e) => {
            tracing::debug!("virtio-fs: opcode {}: {e}", header.opcode);
            Ok(0)
        }
    }
}

/// The errno this device answers instead of serving the request, if any.
/// `body` is the request after its header.
fn refusal(header: &InHeader, body: &mut Reader, read_only: bool) -> Option<i32> {
    let op = header.opcode;
    if op == Opcode::Mknod as u32 {
        if let Ok(m) = body.clone().read_obj::<MknodIn>() {
            if matches!(m.mode & libc::S_IFMT, libc::S_IFBLK | libc::S_IFCHR) {
                return Some(libc::EPERM);
            }
        }
    }
    if !read_only || is(op, READ_ONLY_REQUESTS) {
        return None;
    }
    let reads_only = if op == Opcode::Open as u32 || op == Opcode::Opendir as u32 {
        body.read_obj::<OpenIn>().is_ok_and(|o| {
            let flags = o.flags as i32;
            flags & libc::O_ACCMODE == libc::O_RDONLY
                && flags & (libc::O_TRUNC | libc::O_CREAT | (libc::O_TMPFILE & !libc::O_DIRECTORY))
                    == 0
        })
    } else if op == Opcode::Access as u32 {
        body.read_obj::<AccessIn>()
            .is_ok_and(|a| a.mask as i32 & libc::W_OK == 0)
    } else {
        false
    };
    (!reads_only).then_some(libc::EROFS)
}

fn reply_error(
    mut writer: VirtioFsWriter<'_, ()>,
    unique: u64,
    errno: i32,
) -> Result<u32, DeviceError> {
    let out = OutHeader {
        len: OUT_HEADER_LEN as u32,
        error: -errno,
        unique,
    };
    writer
        .write_all(out.as_slice())
        .map_err(|e| DeviceError::Memory(e.to_string()))?;
    Ok(OUT_HEADER_LEN as u32)
}

impl VirtioDevice for Fs {
    fn device_type(&self) -> u32 {
        TYPE_FS
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        0
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config, offset, data);
    }

    fn activate(&mut self, queues: ActiveQueues) -> Result<(), DeviceError> {
        queues
            .events
            .add(self.error_evt.as_raw_fd(), EventSet::IN)
            .map_err(|e| DeviceError::Backend(format!("epoll: {e}")))?;
        self.events = Some(queues.events.clone());
        self.send(Msg::Activate(queues))
    }

    fn queue_notify(&mut self, _index: usize) -> Result<(), DeviceError> {
        if !self.shared.notify_pending.swap(true, Ordering::SeqCst) {
            self.send(Msg::Notify)?;
        }
        Ok(())
    }

    /// The worker stopped on a device error: report it.
    fn handle_event(&mut self, _fd: RawFd, _events: EventSet) -> Result<(), DeviceError> {
        let _ = self.error_evt.read();
        match self
            .shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Waits until the worker is done with the request in flight, if any:
    /// after a reset nothing may touch the old queues.
    fn reset(&mut self) {
        if self.shared.started.load(Ordering::SeqCst) {
            let (done_tx, done_rx) = channel();
            if self.send(Msg::Reset(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
        }
        if let Some(events) = self.events.take() {
            events.remove(self.error_evt.as_raw_fd());
        }
        self.shared.notify_pending.store(false, Ordering::SeqCst);
        let _ = self.error_evt.read();
        self.shared
            .error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
    }
}

const _: () = assert!(IN_HEADER_LEN == 40 && OUT_HEADER_LEN == 16);

#[cfg(test)]
mod tests {
    use super::super::testing::{active, memory, TestQueue, QUEUE_SIZE as TQ};
    use super::*;
    use fuse_backend_rs::abi::fuse_abi::{
        AttrOut, CreateIn, Dirent, EntryOut, ForgetIn, GetattrIn, InitIn, InitOut, LinkIn, MkdirIn,
        OpenOut, ReadIn, ReleaseIn, SetattrIn, StatfsOut, WriteIn, WriteOut,
    };
    use std::path::{Path, PathBuf};
    use std::time::{Duration, Instant};
    use vm_memory::{Bytes, GuestAddress};

    /// Request slots in guest memory: the request at the start of a slot,
    /// the reply buffer at REPLY in it.
    const SLOTS: u64 = 0x10_0000;
    const SLOT: u64 = 0x2_0000;
    const REPLY: u64 = 0x1_0000;
    const HELLO: &[u8] = b"hello, guest\n";
    const SECRET: &[u8] = b"SECRET outside the share";

    /// A temporary directory holding `share/` (with hello.txt) and, next to
    /// it, outside.txt, which no request may reach.
    fn tree() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let share = dir.path().join("share");
        std::fs::create_dir(&share).unwrap();
        std::fs::write(share.join("hello.txt"), HELLO).unwrap();
        std::fs::write(dir.path().join("outside.txt"), SECRET).unwrap();
        // Creations as another uid (the seccomp test) need write access.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&share, std::fs::Permissions::from_mode(0o777)).unwrap();
        (dir, share)
    }

    fn obj<T: ByteValued + Default>(b: &[u8]) -> T {
        let mut t = T::default();
        let n = size_of::<T>();
        assert!(b.len() >= n, "reply of {} bytes, want {n}", b.len());
        t.as_mut_slice().copy_from_slice(&b[..n]);
        t
    }

    fn cstr(s: &str) -> Vec<u8> {
        let mut v = s.as_bytes().to_vec();
        v.push(0);
        v
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    struct Rig<'a> {
        mem: &'a GuestMemory,
        hiprio: TestQueue<'a>,
        req: TestQueue<'a>,
        dev: Fs,
        sent: u16,
        unique: u64,
        /// The uid and gid requests carry.
        uid: u32,
    }

    impl<'a> Rig<'a> {
        fn new(mem: &'a GuestMemory, share: &Path, read_only: bool) -> Self {
            Self::with_filter(mem, share, read_only, None)
        }

        fn with_filter(
            mem: &'a GuestMemory,
            share: &Path,
            read_only: bool,
            filter: Option<BpfProgram>,
        ) -> Self {
            let cfg = FsConfig {
                tag: "test".into(),
                path: share.to_path_buf(),
                read_only,
            };
            let (dev, worker) = Fs::new(&cfg).unwrap();
            worker.start(filter, None).unwrap();
            let mut r = Rig {
                mem,
                hiprio: TestQueue::new(mem, 0x1000),
                req: TestQueue::new(mem, 0x3000),
                dev,
                sent: 0,
                unique: 0,
                uid: 0,
            };
            r.activate();
            r
        }

        fn activate(&mut self) {
            self.hiprio = TestQueue::new(self.mem, 0x1000);
            self.req = TestQueue::new(self.mem, 0x3000);
            self.sent = 0;
            let queues = vec![self.hiprio.queue(), self.req.queue()];
            self.dev.activate(active(self.mem, queues)).unwrap();
        }

        fn header(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> Vec<u8> {
            self.unique += 1;
            let h = InHeader {
                len: (IN_HEADER_LEN + body.len()) as u32,
                opcode: opcode as u32,
                unique: self.unique,
                nodeid,
                uid: self.uid,
                gid: self.uid,
                pid: 1,
                padding: 0,
            };
            cat(&[h.as_slice(), body])
        }

        /// Puts a chain of descriptors (address, length, writable) on the
        /// request queue and notifies; returns the used index to wait for.
        fn submit(&mut self, bufs: &[(u64, u32, bool)]) -> u16 {
            let first = (self.sent % (TQ / 4)) * 4;
            self.req.add_chain(first, bufs);
            self.sent += 1;
            self.dev.queue_notify(REQUEST).unwrap();
            self.sent
        }

        fn slot(&self) -> u64 {
            SLOTS + u64::from(self.sent % 8) * SLOT
        }

        /// Sends a request with a reply buffer of `reply_len` bytes;
        /// returns the reply's error and body.
        fn call_with(
            &mut self,
            opcode: Opcode,
            nodeid: u64,
            body: &[u8],
            reply_len: u32,
        ) -> (i32, Vec<u8>) {
            let msg = self.header(opcode, nodeid, body);
            let at = self.slot();
            self.mem.write_slice(&msg, GuestAddress(at)).unwrap();
            self.mem
                .write_slice(&[0xee; 64], GuestAddress(at + REPLY))
                .unwrap();
            let n = self.submit(&[(at, msg.len() as u32, false), (at + REPLY, reply_len, true)]);
            wait_used(&self.req, n);
            let (_, len) = self.req.used(n - 1);
            assert!(
                len as usize >= OUT_HEADER_LEN,
                "{opcode:?}: used length {len}"
            );
            let mut reply = vec![0u8; len as usize];
            self.mem
                .read_slice(&mut reply, GuestAddress(at + REPLY))
                .unwrap();
            let out: OutHeader = obj(&reply);
            assert_eq!(
                out.unique, self.unique,
                "{opcode:?}: reply to another request"
            );
            assert_eq!(out.len, len, "{opcode:?}: header length and used length");
            (-out.error, reply[OUT_HEADER_LEN..].to_vec())
        }

        fn call(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
            self.call_with(opcode, nodeid, body, 0x8000)
        }

        fn ok(&mut self, opcode: Opcode, nodeid: u64, body: &[u8]) -> Vec<u8> {
            let (err, reply) = self.call(opcode, nodeid, body);
            assert_eq!(err, 0, "{opcode:?} failed: errno {err}");
            reply
        }

        fn init(&mut self) {
            let init = InitIn {
                major: 7,
                minor: 33,
                max_readahead: 0x20000,
                flags: 0,
            };
            let out: InitOut = obj(&self.ok(Opcode::Init, 0, init.as_slice()));
            assert_eq!((out.major, out.minor), (7, 33));
        }

        fn lookup(&mut self, parent: u64, name: &str) -> Result<EntryOut, i32> {
            match self.call(Opcode::Lookup, parent, &cstr(name)) {
                (0, r) => Ok(obj(&r)),
                (e, _) => Err(e),
            }
        }

        fn open(&mut self, nodeid: u64, flags: i32) -> Result<u64, i32> {
            let open = OpenIn {
                flags: flags as u32,
                fuse_flags: 0,
            };
            match self.call(Opcode::Open, nodeid, open.as_slice()) {
                (0, r) => Ok(obj::<OpenOut>(&r).fh),
                (e, _) => Err(e),
            }
        }

        fn read(&mut self, nodeid: u64, fh: u64, size: u32) -> (i32, Vec<u8>) {
            let read = ReadIn {
                fh,
                offset: 0,
                size,
                ..Default::default()
            };
            self.call(Opcode::Read, nodeid, read.as_slice())
        }

        fn write(&mut self, nodeid: u64, fh: u64, size: u32, data: &[u8]) -> (i32, Vec<u8>) {
            let write = WriteIn {
                fh,
                offset: 0,
                size,
                ..Default::default()
            };
            self.call(Opcode::Write, nodeid, &cat(&[write.as_slice(), data]))
        }

        fn create(&mut self, parent: u64, name: &str) -> (i32, Vec<u8>) {
            let create = CreateIn {
                flags: libc::O_RDWR as u32,
                mode: libc::S_IFREG | 0o644,
                umask: 0o022,
                fuse_flags: 0,
            };
            self.call(
                Opcode::Create,
                parent,
                &cat(&[create.as_slice(), &cstr(name)]),
            )
        }

        fn mkdir(&mut self, parent: u64, name: &str) -> (i32, Vec<u8>) {
            let mkdir = MkdirIn {
                mode: 0o755,
                umask: 0,
            };
            self.call(
                Opcode::Mkdir,
                parent,
                &cat(&[mkdir.as_slice(), &cstr(name)]),
            )
        }

        fn release(&mut self, opcode: Opcode, nodeid: u64, fh: u64) {
            let release = ReleaseIn {
                fh,
                ..Default::default()
            };
            self.ok(opcode, nodeid, release.as_slice());
        }

        fn readdir(&mut self, nodeid: u64) -> Vec<String> {
            let open = OpenIn {
                flags: (libc::O_RDONLY | libc::O_DIRECTORY) as u32,
                fuse_flags: 0,
            };
            let fh = obj::<OpenOut>(&self.ok(Opcode::Opendir, nodeid, open.as_slice())).fh;
            let read = ReadIn {
                fh,
                size: 4096,
                ..Default::default()
            };
            let reply = self.ok(Opcode::Readdir, nodeid, read.as_slice());
            self.release(Opcode::Releasedir, nodeid, fh);
            let mut names = Vec::new();
            let mut rest = &reply[..];
            while rest.len() >= size_of::<Dirent>() {
                let d: Dirent = obj(rest);
                let start = size_of::<Dirent>();
                let name = &rest[start..start + d.namelen as usize];
                names.push(String::from_utf8_lossy(name).into_owned());
                let len = (start + d.namelen as usize + 7) & !7;
                rest = &rest[len.min(rest.len())..];
            }
            names.sort();
            names
        }

        /// The device error the worker reported, waiting for it.
        fn device_error(&mut self) -> DeviceError {
            let start = Instant::now();
            loop {
                let fd = self.dev.error_evt.as_raw_fd();
                if let Err(e) = self.dev.handle_event(fd, EventSet::IN) {
                    return e;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(10),
                    "no device error reported"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        }
    }

    fn wait_used(q: &TestQueue, n: u16) {
        let start = Instant::now();
        while q.used_idx() != n {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the device did not complete request {n}"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn errno(r: (i32, Vec<u8>)) -> i32 {
        r.0
    }

    #[test]
    fn config_space_has_the_tag_and_one_request_queue() {
        let (_dir, share) = tree();
        let cfg = FsConfig {
            tag: "rootfs".into(),
            path: share,
            read_only: false,
        };
        let (dev, _worker) = Fs::new(&cfg).unwrap();
        assert_eq!(dev.device_type(), 26);
        assert_eq!(dev.queue_max_sizes().len(), 2);
        let mut tag = [0xffu8; 36];
        dev.read_config(0, &mut tag);
        assert_eq!(&tag[..6], b"rootfs");
        assert!(tag[6..].iter().all(|b| *b == 0));
        let mut n = [0u8; 4];
        dev.read_config(36, &mut n);
        assert_eq!(u32::from_le_bytes(n), 1);
    }

    #[test]
    fn missing_or_non_directory_shares_are_clear_errors() {
        let (dir, share) = tree();
        let bad = |path: PathBuf| {
            Fs::new(&FsConfig {
                tag: "t".into(),
                path,
                read_only: false,
            })
            .err()
            .expect("must fail")
        };
        let e = bad(dir.path().join("nonexistent"));
        assert!(
            e.contains("nonexistent") && e.contains("No such file"),
            "{e}"
        );
        let e = bad(share.join("hello.txt"));
        assert!(e.ends_with("hello.txt is not a directory"), "{e}");
    }

    #[test]
    fn requests_are_served_as_a_guest_sends_them() {
        let mem = memory();
        let (_dir, share) = tree();
        let mut r = Rig::new(&mem, &share, false);
        r.init();

        let hello = r.lookup(1, "hello.txt").unwrap();
        assert_eq!(hello.attr.size, HELLO.len() as u64);
        assert_eq!(hello.attr.mode & libc::S_IFMT, libc::S_IFREG);
        let attr: AttrOut = obj(&r.ok(
            Opcode::Getattr,
            hello.nodeid,
            GetattrIn::default().as_slice(),
        ));
        assert_eq!(attr.attr.size, HELLO.len() as u64);
        let fh = r.open(hello.nodeid, libc::O_RDONLY).unwrap();
        assert_eq!(r.read(hello.nodeid, fh, 100), (0, HELLO.to_vec()));
        r.release(Opcode::Release, hello.nodeid, fh);
        let statfs: StatfsOut = obj(&r.ok(Opcode::Statfs, 1, &[]));
        assert!(statfs.st.bsize > 0 && statfs.st.namelen > 0);

        let (err, reply) = r.create(1, "new.txt");
        assert_eq!(err, 0);
        let entry: EntryOut = obj(&reply);
        let fh = obj::<OpenOut>(&reply[size_of::<EntryOut>()..]).fh;
        let data = b"written by the guest";
        let (err, reply) = r.write(entry.nodeid, fh, data.len() as u32, data);
        assert_eq!(err, 0);
        assert_eq!(obj::<WriteOut>(&reply).size, data.len() as u32);
        r.release(Opcode::Release, entry.nodeid, fh);
        assert_eq!(std::fs::read(share.join("new.txt")).unwrap(), data);

        let (err, reply) = r.mkdir(1, "sub");
        assert_eq!(err, 0);
        let sub: EntryOut = obj(&reply);
        assert_eq!(sub.attr.mode & libc::S_IFMT, libc::S_IFDIR);
        assert!(share.join("sub").is_dir());
        assert_eq!(r.readdir(1), ["hello.txt", "new.txt", "sub"]);

        r.ok(Opcode::Unlink, 1, &cstr("new.txt"));
        assert!(!share.join("new.txt").exists());
        r.ok(Opcode::Rmdir, 1, &cstr("sub"));
        assert!(!share.join("sub").exists());
        assert_eq!(r.readdir(1), ["hello.txt"]);
        assert_eq!(
            errno(r.call(Opcode::Unlink, 1, &cstr("new.txt"))),
            libc::ENOENT
        );
    }

    #[test]
    fn forget_on_the_high_priority_queue_gets_no_reply() {
        let mem = memory();
        let (_dir, share) = tree();
        let mut r = Rig::new(&mem, &share, false);
        r.init();
        let hello = r.lookup(1, "hello.txt").unwrap();
        let msg = r.header(
            Opcode::Forget,
            hello.nodeid,
            ForgetIn { nlookup: 1 }.as_slice(),
        );
        mem.write_slice(&msg, GuestAddress(0x8000)).unwrap();
        r.hiprio.add_chain(0, &[(0x8000, msg.len() as u32, false)]);
        r.dev.queue_notify(HIPRIO).unwrap();
        wait_used(&r.hiprio, 1);
        assert_eq!(r.hiprio.used(0), (0, 0));
        // The request queue still works.
        assert!(r.lookup(1, "hello.txt").is_ok());
    }

    #[test]
    fn an_unused_high_priority_queue_is_skipped() {
        let mem = memory();
        let (_dir, share) = tree();
        let mut r = Rig::new(&mem, &share, false);
        r.dev.reset();
        let mut hiprio = r.hiprio.queue();
        hiprio.set_ready(false);
        r.req = TestQueue::new(&mem, 0x3000);
        r.sent = 0;
        r.dev
            .activate(active(&mem, vec![hiprio, r.req.queue()]))
            .unwrap();
        r.init();
        assert!(r.lookup(1, "hello.txt").is_ok());
    }

    #[test]
    fn names_cannot_leave_the_share() {
        let mem = memory();
        let (dir, share) = tree();
        std::fs::create_dir(share.join("sub")).unwrap();
        let mut r = Rig::new(&mem, &share, false);
        r.init();
        let share_ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&share).unwrap());

        // ".." at the root is the root.
        let up = r.lookup(1, "..").unwrap();
        assert_eq!((up.nodeid, up.attr.ino), (1, share_ino));
        let sub = r.lookup(1, "sub").unwrap();
        let up = r.lookup(sub.nodeid, "..").unwrap();
        assert_eq!((up.nodeid, up.attr.ino), (1, share_ino));
        assert_eq!(r.lookup(up.nodeid, "..").unwrap().nodeid, 1);

        // Names with a '/' or "..", in every request that takes a name.
        for name in ["../outside.txt", "sub/../../outside.txt", "/etc/passwd"] {
            assert_eq!(r.lookup(1, name).unwrap_err(), libc::EINVAL, "{name}");
        }
        assert_eq!(errno(r.mkdir(1, "../escape")), libc::EINVAL);
        assert_eq!(errno(r.mkdir(1, "..")), libc::EINVAL);
        assert_eq!(errno(r.create(1, "../escape.txt")), libc::EINVAL);
        assert_eq!(errno(r.create(1, "..")), libc::EINVAL);
        assert_eq!(
            errno(r.call(Opcode::Unlink, 1, &cstr("../outside.txt"))),
            libc::EINVAL
        );
        assert_eq!(errno(r.call(Opcode::Rmdir, 1, &cstr(".."))), libc::EINVAL);
        let hello = r.lookup(1, "hello.txt").unwrap();
        let link = cat(&[
            LinkIn {
                oldnodeid: hello.nodeid,
            }
            .as_slice(),
            &cstr("../escape"),
        ]);
        assert_eq!(errno(r.call(Opcode::Link, 1, &link)), libc::EINVAL);
        let symlink = cat(&[&cstr("../escape")[..], &cstr("/etc/passwd")]);
        assert_eq!(errno(r.call(Opcode::Symlink, 1, &symlink)), libc::EINVAL);
        let rename = cat(&[
            &1u64.to_le_bytes()[..],
            &cstr("hello.txt"),
            &cstr("../moved"),
        ]);
        assert_eq!(errno(r.call(Opcode::Rename, 1, &rename)), libc::EINVAL);
        // A hard link of an inode the guest never looked up.
        let link = cat(&[LinkIn { oldnodeid: 9999 }.as_slice(), &cstr("stolen")]);
        assert_ne!(errno(r.call(Opcode::Link, 1, &link)), 0);

        assert!(!dir.path().join("escape").exists() && !dir.path().join("escape.txt").exists());
        assert!(!dir.path().join("moved").exists());
        assert_eq!(
            std::fs::read(dir.path().join("outside.txt")).unwrap(),
            SECRET
        );
        assert!(!share.join("stolen").exists());
    }

    #[test]
    fn symlinks_out_of_the_share_are_never_followed() {
        let mem = memory();
        let (dir, share) = tree();
        let outside = dir.path().join("outside.txt");
        std::os::unix::fs::symlink(&outside, share.join("abs")).unwrap();
        std::os::unix::fs::symlink("../outside.txt", share.join("rel")).unwrap();
        std::os::unix::fs::symlink(dir.path(), share.join("dirlink")).unwrap();
        let mut r = Rig::new(&mem, &share, false);
        r.init();

        for (name, target) in [
            ("abs", outside.to_str().unwrap().to_string()),
            ("rel", "../outside.txt".to_string()),
        ] {
            let link = r.lookup(1, name).unwrap();
            assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
            assert_ne!(link.attr.size, SECRET.len() as u64 + 1000);
            // The guest gets the link's text, and resolves it itself.
            let text = r.ok(Opcode::Readlink, link.nodeid, &[]);
            assert_eq!(text, target.as_bytes(), "{name}");
            // Opening the link itself is refused: it is no regular file.
            assert!(r.open(link.nodeid, libc::O_RDONLY).is_err(), "{name}");
            let (err, data) = r.read(link.nodeid, 0, 100);
            assert!(err != 0 && data.is_empty(), "{name}");
        }
        // A symlink to a directory outside is no directory to look in.
        let dirlink = r.lookup(1, "dirlink").unwrap();
        assert_eq!(
            r.lookup(dirlink.nodeid, "outside.txt").unwrap_err(),
            libc::ENOTDIR
        );
        assert_ne!(errno(r.create(dirlink.nodeid, "planted")), 0);
        assert!(!dir.path().join("planted").exists());
    }

    #[test]
    fn magic_links_are_not_followed() {
        // A share holding a procfs: /proc/self's `root` and `cwd` are
        // magic links to the host's root and this test's cwd.
        let mem = memory();
        let mut r = Rig::new(&mem, Path::new("/proc/self"), false);
        r.init();
        for name in ["root", "cwd"] {
            let link = r.lookup(1, name).unwrap();
            assert_eq!(link.attr.mode & libc::S_IFMT, libc::S_IFLNK, "{name}");
            assert_eq!(
                r.lookup(link.nodeid, "etc").unwrap_err(),
                libc::ENOTDIR,
                "{name}"
            );
            assert!(r.open(link.nodeid, libc::O_RDONLY).is_err(), "{name}");
        }
        let fds = r.lookup(1, "fd").unwrap();
        let stdin = r.lookup(fds.nodeid, "0").unwrap();
        assert_eq!(stdin.attr.mode & libc::S_IFMT, libc::S_IFLNK);
        assert!(r.open(stdin.nodeid, libc::O_RDONLY).is_err());
    }

    #[test]
    fn device_nodes_cannot_be_made() {
        let mem = memory();
        let (_dir, share) = tree();
        let mut r = Rig::new(&mem, &share, false);
        r.init();
        let mknod = |mode: u32, name: &str| {
            let m = MknodIn {
                mode,
                rdev: 8 << 8, // sda (8:0)
                umask: 0,
                padding: 0,
            };
            cat(&[m.as_slice(), &cstr(name)])
        };
        for (mode, name) in [
            (libc::S_IFBLK | 0o666, "sda"),
            (libc::S_IFCHR | 0o666, "mem"),
        ] {
            assert_eq!(
                errno(r.call(Opcode::Mknod, 1, &mknod(mode, name))),
                libc::EPERM
            );
            assert!(!share.join(name).exists());
        }
        assert_eq!(
            errno(r.call(Opcode::Mknod, 1, &mknod(libc::S_IFIFO | 0o644, "fifo"))),
            0
        );
        use std::os::unix::fs::FileTypeExt;
        assert!(std::fs::symlink_metadata(share.join("fifo"))
            .unwrap()
            .file_type()
            .is_fifo());
    }

    #[test]
    fn oversized_lengths_are_bounded_by_the_buffers() {
        let mem = memory();
        let (_dir, share) = tree();
        let mut r = Rig::new(&mem, &share, false);
        r.init();
        let hello = r.lookup(1, "hello.txt").unwrap();
        let fh = r.open(hello.nodeid, libc::O_RDWR).unwrap();
        // A 1 GiB read into a 32 KiB buffer: an error, nothing allocated.
        let (err, data) = r.read(hello.nodeid, fh, 1 << 30);
        assert!(err != 0 && data.is_empty(), "errno {err}");
        assert_eq!(r.read(hello.nodeid, fh, 100), (0, HELLO.to_vec()));
        // A write that claims more than its buffer holds writes the buffer.
        let (err, reply) = r.write(hello.nodeid, fh, 1 << 20, b"12345");
        assert_eq!(err, 0);
        assert_eq!(obj::<WriteOut>(&reply).size, 5);
        assert_eq!(
            &std::fs::read(share.join("hello.txt")).unwrap()[..5],
            b"12345"
        );
        // A header that claims a gigabyte-long request.
        let mut msg = r.header(Opcode::Lookup, 1, &cstr("hello.txt"));
        msg[..4].copy_from_slice(&(1u32 << 30).to_le_bytes());
        let at = r.slot();
        mem.write_slice(&msg, GuestAddress(at)).unwrap();
        let n = r.submit(&[(at, msg.len() as u32, false), (at + REPLY, 4096, true)]);
        wait_used(&r.req, n);
        let out: OutHeader = mem.read_obj(GuestAddress(at + REPLY)).unwrap();
        assert_ne!(out.error, 0);
    }

    #[test]
    fn short_reply_buffers_get_an_error_or_are_device_errors() {
        let mem = memory();
        let (_dir, share) = tree();
        let mut r = Rig::new(&mem, &share, false);
        r.init();
        let hello = r.lookup(1, "hello.txt").unwrap();
        // Room for the header, not for the attributes.
        let (err, body) = r.call_with(
            Opcode::Getattr,
            hello.nodeid,
            GetattrIn::default().as_slice(),
            32,
        );
        assert_eq!((err, body.len()), (libc::EINVAL, 0));
        // The device keeps serving.
        assert!(r.lookup(1, "hello.txt").is_ok());

        // No room even for the reply header.
        let msg = r.header(
            Opcode::Getattr,
            hello.nodeid,
            GetattrIn::default().as_slice(),
        );
        let at = r.slot();
        mem.write_slice(&msg, GuestAddress(at)).unwrap();
        r.submit(&[(at, msg.len() as u32, false), (at + REPLY, 8, true)]);
        assert_eq!(
            r.device_error(),
            DeviceError::BadChain("of a FUSE request has no room for the reply header")
        );
    }

    #[test]
    fn hostile_chains_are_device_errors_until_a_reset() {
        let mem = memory();
        let (_dir, share) = tree();
        let mut r = Rig::new(&mem, &share, false);
        r.init();
        // A reply buffer beyond guest memory (4 MiB).
        let msg = r.header(Opcode::Getattr, 1, GetattrIn::default().as_slice());
        let at = r.slot();
        mem.write_slice(&msg, GuestAddress(at)).unwrap();
        r.submit(&[(at, msg.len() as u32, false), (0x3f_f000, 0x2000, true)]);
        assert!(matches!(r.device_error(), DeviceError::BadChain(_)));
        // A broken device serves nothing more...
        let at = r.slot();
        let msg = r.header(Opcode::Getattr, 1, GetattrIn::default().as_slice());
        mem.write_slice(&msg, GuestAddress(at)).unwrap();
        let n = r.submit(&[(at, msg.len() as u32, false), (at + REPLY, 4096, true)]);
        std::thread::sleep(Duration::from_millis(100));
        assert_eq!(r.req.used_idx(), n - 2);
        // ...until the driver resets it.
        r.dev.reset();
        r.activate();
        r.init();
        assert!(r.lookup(1, "hello.txt").is_ok());

        // A request shorter than the FUSE header.
        let at = r.slot();
        r.submit(&[(at, 20, false), (at + REPLY, 4096, true)]);
        assert_eq!(
            r.device_error(),
            DeviceError::BadChain("of a FUSE request is shorter than the request header")
        );
        r.dev.reset();
        r.activate();
        // A looping chain.
        r.req.add(
            0,
            &[(0x10000, 64, false, Some(1)), (0x11000, 64, false, Some(0))],
        );
        r.dev.queue_notify(REQUEST).unwrap();
        let e = r.device_error();
        assert!(
            matches!(e, DeviceError::BadChain(m) if m.contains("does not end")),
            "{e:?}"
        );
    }

    #[test]
    fn read_only_shares_refuse_every_write() {
        let mem = memory();
        let (_dir, share) = tree();
        let mut r = Rig::new(&mem, &share, true);
        r.init();
        let hello = r.lookup(1, "hello.txt").unwrap();
        let fh = r.open(hello.nodeid, libc::O_RDONLY).unwrap();
        assert_eq!(r.read(hello.nodeid, fh, 100), (0, HELLO.to_vec()));
        assert_eq!(errno(r.write(hello.nodeid, fh, 5, b"12345")), libc::EROFS);
        for flags in [libc::O_RDWR, libc::O_WRONLY, libc::O_RDONLY | libc::O_TRUNC] {
            assert_eq!(r.open(hello.nodeid, flags), Err(libc::EROFS), "{flags:#x}");
        }
        assert_eq!(errno(r.create(1, "new.txt")), libc::EROFS);
        assert_eq!(errno(r.mkdir(1, "sub")), libc::EROFS);
        assert_eq!(
            errno(r.call(Opcode::Unlink, 1, &cstr("hello.txt"))),
            libc::EROFS
        );
        let setattr = SetattrIn {
            valid: 0x1 | 0x8, // FATTR_MODE | FATTR_SIZE
            mode: 0o777,
            size: 0,
            ..Default::default()
        };
        assert_eq!(
            errno(r.call(Opcode::Setattr, hello.nodeid, setattr.as_slice())),
            libc::EROFS
        );
        let symlink = cat(&[&cstr("link")[..], &cstr("hello.txt")]);
        assert_eq!(errno(r.call(Opcode::Symlink, 1, &symlink)), libc::EROFS);
        let link = cat(&[
            LinkIn {
                oldnodeid: hello.nodeid,
            }
            .as_slice(),
            &cstr("hard"),
        ]);
        assert_eq!(errno(r.call(Opcode::Link, 1, &link)), libc::EROFS);
        let rename = cat(&[&1u64.to_le_bytes()[..], &cstr("hello.txt"), &cstr("moved")]);
        assert_eq!(errno(r.call(Opcode::Rename, 1, &rename)), libc::EROFS);
        let access = |mask: i32| AccessIn {
            mask: mask as u32,
            padding: 0,
        };
        assert_eq!(
            errno(r.call(Opcode::Access, hello.nodeid, access(libc::W_OK).as_slice())),
            libc::EROFS
        );
        assert_eq!(
            errno(r.call(Opcode::Access, hello.nodeid, access(libc::R_OK).as_slice())),
            0
        );
        assert_eq!(r.readdir(1), ["hello.txt"]);
        assert_eq!(std::fs::read(share.join("hello.txt")).unwrap(), HELLO);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(share.join("hello.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
    }

    /// Set in the environment of the child that
    /// `requests_run_under_the_fs_seccomp_filter` starts.
    const SECCOMP_CHILD: &str = "IRONCELL_FS_SECCOMP_CHILD";

    /// Runs in a child process (a filter violation kills the whole process):
    /// the worker serves requests of every kind under the fs filter.
    #[test]
    #[ignore = "run by requests_run_under_the_fs_seccomp_filter"]
    fn seccomp_child() {
        if std::env::var_os(SECCOMP_CHILD).is_none() {
            return;
        }
        let mem = memory();
        let (_dir, share) = tree();
        let filter = crate::seccomp::filters().fs;
        let mut r = Rig::with_filter(&mem, &share, false, Some(filter));
        r.init();
        // As root, creations run with the guest's uid (setresuid).
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            r.uid = 1000;
        }
        let hello = r.lookup(1, "hello.txt").unwrap();
        r.ok(
            Opcode::Getattr,
            hello.nodeid,
            GetattrIn::default().as_slice(),
        );
        let fh = r.open(hello.nodeid, libc::O_RDWR).unwrap();
        assert_eq!(r.read(hello.nodeid, fh, 100).0, 0);
        assert_eq!(r.write(hello.nodeid, fh, 3, b"abc").0, 0);
        let fsync = [fh.to_le_bytes(), [0u8; 8]].concat();
        r.ok(Opcode::Fsync, hello.nodeid, &fsync);
        let flush = [fh.to_le_bytes(), [0u8; 8], [0u8; 8]].concat();
        r.ok(Opcode::Flush, hello.nodeid, &flush);
        let fallocate = [
            fh.to_le_bytes(),
            0u64.to_le_bytes(),
            4096u64.to_le_bytes(),
            [0u8; 8],
        ]
        .concat();
        r.ok(Opcode::Fallocate, hello.nodeid, &fallocate);
        let lseek = [fh.to_le_bytes(), 0u64.to_le_bytes(), 3u64.to_le_bytes()].concat(); // SEEK_DATA
        r.ok(Opcode::Lseek, hello.nodeid, &lseek);
        let setattr = SetattrIn {
            valid: 0x1 | 0x8 | 0x10 | 0x20, // mode, size, atime, mtime
            mode: 0o644,
            size: 2,
            atime: 1,
            mtime: 2,
            ..Default::default()
        };
        r.ok(Opcode::Setattr, hello.nodeid, setattr.as_slice());
        r.release(Opcode::Release, hello.nodeid, fh);
        let (err, reply) = r.create(1, "new.txt");
        assert_eq!(err, 0);
        let entry: EntryOut = obj(&reply);
        r.release(
            Opcode::Release,
            entry.nodeid,
            obj::<OpenOut>(&reply[size_of::<EntryOut>()..]).fh,
        );
        assert_eq!(r.mkdir(1, "sub").0, 0);
        let symlink = cat(&[&cstr("link")[..], &cstr("hello.txt")]);
        let link: EntryOut = obj(&r.ok(Opcode::Symlink, 1, &symlink));
        r.ok(Opcode::Readlink, link.nodeid, &[]);
        let hard = cat(&[
            LinkIn {
                oldnodeid: hello.nodeid,
            }
            .as_slice(),
            &cstr("hard"),
        ]);
        r.ok(Opcode::Link, 1, &hard);
        let mknod = cat(&[
            MknodIn {
                mode: libc::S_IFIFO | 0o600,
                ..Default::default()
            }
            .as_slice(),
            &cstr("fifo"),
        ]);
        r.ok(Opcode::Mknod, 1, &mknod);
        let rename = cat(&[
            &1u64.to_le_bytes()[..],
            &cstr("new.txt"),
            &cstr("renamed.txt"),
        ]);
        r.ok(Opcode::Rename, 1, &rename);
        let rename2 = cat(&[
            &1u64.to_le_bytes()[..],
            &0u64.to_le_bytes(),
            &cstr("renamed.txt"),
            &cstr("again.txt"),
        ]);
        r.ok(Opcode::Rename2, 1, &rename2);
        assert_eq!(r.readdir(1).len(), 6);
        let open = OpenIn {
            flags: libc::O_RDONLY as u32,
            fuse_flags: 0,
        };
        let dfh = obj::<OpenOut>(&r.ok(Opcode::Opendir, 1, open.as_slice())).fh;
        let read = ReadIn {
            fh: dfh,
            size: 8192,
            ..Default::default()
        };
        r.ok(Opcode::Readdirplus, 1, read.as_slice());
        let fsyncdir = [dfh.to_le_bytes(), [0u8; 8]].concat();
        r.ok(Opcode::Fsyncdir, 1, &fsyncdir);
        r.release(Opcode::Releasedir, 1, dfh);
        r.ok(
            Opcode::Access,
            hello.nodeid,
            AccessIn {
                mask: libc::R_OK as u32,
                padding: 0,
            }
            .as_slice(),
        );
        r.ok(Opcode::Statfs, 1, &[]);
        r.ok(Opcode::Unlink, 1, &cstr("again.txt"));
        r.ok(Opcode::Rmdir, 1, &cstr("sub"));
        // xattrs are off: ENOSYS.
        let getxattr = cat(&[&[0u8; 8][..], &cstr("user.x")]);
        assert_eq!(errno(r.call(Opcode::Getxattr, 1, &getxattr)), libc::ENOSYS);
        let msg = r.header(
            Opcode::Forget,
            hello.nodeid,
            ForgetIn { nlookup: 1 }.as_slice(),
        );
        mem.write_slice(&msg, GuestAddress(0x8000)).unwrap();
        r.hiprio.add_chain(0, &[(0x8000, msg.len() as u32, false)]);
        r.dev.queue_notify(HIPRIO).unwrap();
        wait_used(&r.hiprio, 1);
        r.ok(Opcode::Destroy, 0, &[]);
        r.init();
        assert!(r.lookup(1, "hello.txt").is_ok());
        r.dev.reset();
        println!("{SECCOMP_CHILD}: all requests served");
    }

    #[test]
    fn requests_run_under_the_fs_seccomp_filter() {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "devices::virtio::fs::tests::seccomp_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(SECCOMP_CHILD, "1")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && stdout.contains("all requests served"),
            "the child failed ({:?}; SIGSYS is a syscall the fs filter lacks):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
