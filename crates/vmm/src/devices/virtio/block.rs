//! virtio-blk (device 2) backed by a raw file: read, write, flush, get-id.
//! Requests are served synchronously on the event loop, in order.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use super::{ActiveQueues, DeviceError, VirtioDevice, TYPE_BLOCK};

const QUEUE_SIZE: u16 = 256;
const SECTOR: u64 = 512;
const CHUNK: usize = 64 * 1024;

pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;

pub const T_IN: u32 = 0;
pub const T_OUT: u32 = 1;
pub const T_FLUSH: u32 = 4;
pub const T_GET_ID: u32 = 8;
pub const S_OK: u8 = 0;
pub const S_IOERR: u8 = 1;
pub const S_UNSUPP: u8 = 2;
pub const ID_BYTES: usize = 20;

/// The backing file and what the driver is told about it.
struct Disk {
    file: File,
    read_only: bool,
    capacity_sectors: u64,
    serial: [u8; ID_BYTES],
}

pub struct Block {
    disk: Disk,
    active: Option<ActiveQueues>,
}

fn io_err(e: std::io::Error) -> DeviceError {
    DeviceError::Memory(e.to_string())
}

impl Block {
    pub fn open(path: &Path, read_only: bool, serial: Option<&str>) -> Result<Self, String> {
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let meta = file
            .metadata()
            .map_err(|e| format!("{}: {e}", path.display()))?;
        if !meta.is_file() && !std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()) {
            return Err(format!(
                "{} is not a regular file or block device",
                path.display()
            ));
        }
        let size = if meta.is_file() {
            meta.len()
        } else {
            // SAFETY: lseek on an fd we own; only the return value is used.
            let end =
                unsafe { libc::lseek(std::os::fd::AsRawFd::as_raw_fd(&file), 0, libc::SEEK_END) };
            u64::try_from(end).map_err(|_| format!("{}: cannot find its size", path.display()))?
        };
        let mut id = [0u8; ID_BYTES];
        if let Some(s) = serial {
            let n = s.len().min(ID_BYTES);
            id[..n].copy_from_slice(&s.as_bytes()[..n]);
        }
        Ok(Block {
            disk: Disk {
                file,
                read_only,
                capacity_sectors: size / SECTOR,
                serial: id,
            },
            active: None,
        })
    }
}

impl Disk {
    /// Serves one request; returns the status byte and the number of data
    /// bytes written for the driver.
    fn serve(
        &self,
        kind: u32,
        sector: u64,
        reader: &mut impl Read,
        writer: &mut impl Write,
        data_in: usize,
        data_out: usize,
    ) -> (u8, usize) {
        let range_ok = |len: usize| {
            sector
                .checked_mul(SECTOR)
                .and_then(|start| start.checked_add(len as u64))
                .is_some_and(|end| end <= self.capacity_sectors * SECTOR)
        };
        let mut buf = vec![0u8; CHUNK.min(data_in.max(data_out)).max(1)];
        match kind {
            T_IN => {
                if !range_ok(data_in) {
                    return (S_IOERR, 0);
                }
                let mut done = 0;
                while done < data_in {
                    let n = (data_in - done).min(buf.len());
                    if self
                        .file
                        .read_exact_at(&mut buf[..n], sector * SECTOR + done as u64)
                        .is_err()
                        || writer.write_all(&buf[..n]).is_err()
                    {
                        return (S_IOERR, done);
                    }
                    done += n;
                }
                (S_OK, done)
            }
            T_OUT => {
                if self.read_only || !range_ok(data_out) {
                    return (S_IOERR, 0);
                }
                let mut done = 0;
                while done < data_out {
                    let n = (data_out - done).min(buf.len());
                    if reader.read_exact(&mut buf[..n]).is_err()
                        || self
                            .file
                            .write_all_at(&buf[..n], sector * SECTOR + done as u64)
                            .is_err()
                    {
                        return (S_IOERR, 0);
                    }
                    done += n;
                }
                (S_OK, 0)
            }
            T_FLUSH => match self.read_only || self.file.sync_data().is_ok() {
                true => (S_OK, 0),
                false => (S_IOERR, 0),
            },
            T_GET_ID => {
                let n = data_in.min(ID_BYTES);
                match writer.write_all(&self.serial[..n]) {
                    Ok(()) => (S_OK, n),
                    Err(_) => (S_IOERR, 0),
                }
            }
            _ => (S_UNSUPP, 0),
        }
    }
}

impl Block {
    fn process(&mut self) -> Result<(), DeviceError> {
        let disk = &self.disk;
        let Some(a) = self.active.as_mut() else {
            return Ok(());
        };
        let mem = a.mem.clone();
        while let Some(chain) = a.pop(&mem, 0)? {
            let head = chain.head_index();
            let mut reader = chain
                .clone()
                .reader(&mem)
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            let mut writer = chain
                .writer(&mem)
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            // The last device-writable byte is the status; without one the
            // request cannot even be answered.
            let writable = writer.available_bytes();
            if writable == 0 {
                return Err(DeviceError::BadChain(
                    "of a block request has no status byte",
                ));
            }
            let mut status_w = writer
                .split_at(writable - 1)
                .map_err(|e| DeviceError::Memory(e.to_string()))?;
            let (status, written) = if reader.available_bytes() < 16 {
                (S_IOERR, 0)
            } else {
                let kind: u32 = reader.read_obj().map_err(io_err)?;
                let _reserved: u32 = reader.read_obj().map_err(io_err)?;
                let sector: u64 = reader.read_obj().map_err(io_err)?;
                let (data_out, data_in) = (reader.available_bytes(), writer.available_bytes());
                disk.serve(
                    u32::from_le(kind),
                    u64::from_le(sector),
                    &mut reader,
                    &mut writer,
                    data_in,
                    data_out,
                )
            };
            status_w.write_all(&[status]).map_err(io_err)?;
            a.complete(0, head, written as u32 + 1)?;
        }
        Ok(())
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        VIRTIO_BLK_F_FLUSH
            | if self.disk.read_only {
                VIRTIO_BLK_F_RO
            } else {
                0
            }
    }

    /// struct virtio_blk_config: only `capacity` (offset 0) is meaningful
    /// with the features we offer.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.disk.capacity_sectors.to_le_bytes(), offset, data);
    }

    fn activate(&mut self, queues: ActiveQueues) -> Result<(), DeviceError> {
        self.active = Some(queues);
        Ok(())
    }

    fn queue_notify(&mut self, _index: usize) -> Result<(), DeviceError> {
        self.process()
    }

    fn reset(&mut self) {
        self.active = None;
    }
}

#[cfg(test)]
mod tests {
    use super::super::testing::*;
    use super::*;
    use crate::GuestMemory;
    use vm_memory::{Bytes, GuestAddress};

    const HDR: u64 = 0x10000;
    const DATA: u64 = 0x11000;
    const STATUS: u64 = 0x12000;

    fn disk(read_only: bool) -> (tempfile::NamedTempFile, Block) {
        let f = tempfile::NamedTempFile::new().unwrap();
        let mut content = vec![0u8; 8 * 512];
        content[..4].copy_from_slice(b"BOOT");
        std::fs::write(f.path(), content).unwrap();
        let b = Block::open(f.path(), read_only, Some("ironcell-serial-id-too-long")).unwrap();
        (f, b)
    }

    fn header(mem: &GuestMemory, kind: u32, sector: u64) {
        mem.write_obj(kind, GuestAddress(HDR)).unwrap();
        mem.write_obj(0u32, GuestAddress(HDR + 4)).unwrap();
        mem.write_obj(sector, GuestAddress(HDR + 8)).unwrap();
        mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    }

    fn status(mem: &GuestMemory) -> u8 {
        mem.read_obj(GuestAddress(STATUS)).unwrap()
    }

    fn run(b: &mut Block, mem: &GuestMemory, tq: &TestQueue) -> Result<(), DeviceError> {
        b.activate(active(mem, vec![tq.queue()])).unwrap();
        b.queue_notify(0)
    }

    #[test]
    fn write_flush_read_back_and_get_id() {
        let mem = memory();
        let (f, mut b) = disk(false);
        assert_eq!(b.features() & VIRTIO_BLK_F_RO, 0);
        let mut tq = TestQueue::new(&mem, 0x1000);
        header(&mem, T_OUT, 2);
        mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        tq.add_chain(
            0,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        run(&mut b, &mem, &tq).unwrap();
        assert_eq!(status(&mem), S_OK);
        assert_eq!(tq.used(0), (0, 1));
        assert_eq!(std::fs::read(f.path()).unwrap()[1024..1536], [0x5a; 512]);

        header(&mem, T_FLUSH, 0);
        tq.add_chain(3, &[(HDR, 16, false), (STATUS, 1, true)]);
        b.queue_notify(0).unwrap();
        assert_eq!(status(&mem), S_OK);

        header(&mem, T_IN, 0);
        tq.add_chain(5, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        b.queue_notify(0).unwrap();
        assert_eq!(tq.used(2), (5, 513));
        let mut got = [0u8; 4];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(&got, b"BOOT");

        header(&mem, T_GET_ID, 0);
        tq.add_chain(8, &[(HDR, 16, false), (DATA, 20, true), (STATUS, 1, true)]);
        b.queue_notify(0).unwrap();
        let mut id = [0u8; 20];
        mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
        assert_eq!(&id, b"ironcell-serial-id-t");
    }

    #[test]
    fn out_of_range_and_read_only_and_unknown_requests_fail_cleanly() {
        let mem = memory();
        let (_f, mut b) = disk(true);
        assert_ne!(b.features() & VIRTIO_BLK_F_RO, 0);
        let mut tq = TestQueue::new(&mem, 0x1000);
        header(&mem, T_OUT, 0);
        tq.add_chain(
            0,
            &[(HDR, 16, false), (DATA, 512, false), (STATUS, 1, true)],
        );
        run(&mut b, &mem, &tq).unwrap();
        assert_eq!(status(&mem), S_IOERR, "read-only disk refuses writes");

        header(&mem, T_IN, 7);
        tq.add_chain(
            3,
            &[(HDR, 16, false), (DATA, 1024, true), (STATUS, 1, true)],
        );
        b.queue_notify(0).unwrap();
        assert_eq!(status(&mem), S_IOERR, "read past the end");

        header(&mem, T_IN, u64::MAX / 256);
        tq.add_chain(6, &[(HDR, 16, false), (DATA, 512, true), (STATUS, 1, true)]);
        b.queue_notify(0).unwrap();
        assert_eq!(status(&mem), S_IOERR, "sector * 512 overflows");

        header(&mem, 99, 0);
        tq.add_chain(9, &[(HDR, 16, false), (STATUS, 1, true)]);
        b.queue_notify(0).unwrap();
        assert_eq!(status(&mem), S_UNSUPP);

        tq.add_chain(11, &[(HDR, 8, false), (STATUS, 1, true)]);
        header(&mem, T_IN, 0);
        b.queue_notify(0).unwrap();
        assert_eq!(status(&mem), S_IOERR, "short header");
        assert_eq!(tq.used_idx(), 5);
    }

    #[test]
    fn chains_without_status_or_out_of_memory_are_device_errors() {
        let mem = memory();
        let (_f, mut b) = disk(false);
        let mut tq = TestQueue::new(&mem, 0x1000);
        header(&mem, T_IN, 0);
        tq.add_chain(0, &[(HDR, 16, false), (DATA, 512, false)]);
        assert_eq!(
            run(&mut b, &mem, &tq),
            Err(DeviceError::BadChain(
                "of a block request has no status byte"
            ))
        );

        let (_f, mut b) = disk(false);
        let mut tq = TestQueue::new(&mem, 0x1000);
        tq.add_chain(
            0,
            &[
                (HDR, 16, false),
                (0x3f_f000, 0x2000, true),
                (STATUS, 1, true),
            ],
        );
        assert!(matches!(
            run(&mut b, &mem, &tq),
            Err(DeviceError::BadChain(_))
        ));

        let (_f, mut b) = disk(false);
        let mut tq = TestQueue::new(&mem, 0x1000);
        tq.add(0, &[(HDR, 16, false, Some(1)), (STATUS, 1, true, Some(0))]);
        assert!(
            matches!(run(&mut b, &mem, &tq), Err(DeviceError::BadChain(_))),
            "looping chain"
        );
    }
}
