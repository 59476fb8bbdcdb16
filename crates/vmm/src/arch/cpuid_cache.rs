//! The host's `KVM_GET_SUPPORTED_CPUID`, kept in a small file so that only
//! the first VMM after a boot (or a reload of the KVM module) asks KVM.
//!
//! Why: to answer that ioctl the host kernel executes CPUID for every leaf
//! and sub-leaf it reports (about 75 entries). On bare metal that is a few
//! microseconds; on a nested host (a cloud VM running KVM, the usual place
//! for microVM sandboxes) every CPUID instruction exits to the outer
//! hypervisor, and the ioctl took 300-400 µs on the CI host: the largest
//! single step between the VMM's `main` and the guest's first instruction.
//!
//! What the answer depends on is fixed while the KVM module stays loaded:
//! the host CPU and the module's load-time parameters. So the file is keyed
//! by the boot id (`/proc/sys/kernel/random/boot_id`) and by `/dev/kvm`'s
//! device number, inode and change time (the node is removed and created
//! again when the module is reloaded). The key is stored inside the file; a
//! file with another key is replaced.
//!
//! Trust: the file is read only if it and its directory belong to the VMM's
//! user and are writable by nobody else; anything malformed (wrong magic,
//! length or count) is a cache miss. A write goes to a temporary file
//! renamed into place, so VMMs starting at once never read half a file.
//! Every failure only costs the ioctl: the cache is never an error.

use std::fs::{self, File};
use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::Kvm;

use crate::error::{Error, Result};

const MAGIC: &[u8; 8] = b"ICCPUID1";
const FILE_NAME: &str = "supported-cpuid";
const ENTRY_LEN: usize = 40;
const BOOT_ID: &str = "/proc/sys/kernel/random/boot_id";
const KVM_NODE: &str = "/dev/kvm";

/// The cache directory used when none is configured: `/run/ironcell-vmm`
/// for root, `$XDG_RUNTIME_DIR/ironcell-vmm` for other users, none without
/// either.
pub fn default_dir() -> Option<PathBuf> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/run/ironcell-vmm"));
    }
    std::env::var_os("XDG_RUNTIME_DIR").map(|d| Path::new(&d).join("ironcell-vmm"))
}

/// `KVM_GET_SUPPORTED_CPUID`, from `dir`'s cache file when it holds this
/// boot's and this module's answer; otherwise from KVM, then saved there.
pub fn supported_cpuid(kvm: &Kvm, dir: Option<&Path>) -> Result<CpuId> {
    let Some(dir) = dir else {
        return query(kvm);
    };
    let key = match key() {
        Ok(k) => k,
        Err(e) => {
            tracing::debug!("CPUID cache: no key ({e}); asking KVM");
            return query(kvm);
        }
    };
    let path = dir.join(FILE_NAME);
    match load(dir, &path, &key) {
        Ok(Some(cpuid)) => return Ok(cpuid),
        Ok(None) => tracing::debug!("CPUID cache: {} is for another key", path.display()),
        Err(e) => tracing::debug!("CPUID cache: {}: {e}", path.display()),
    }
    let cpuid = query(kvm)?;
    if let Err(e) = store(dir, &path, &key, &cpuid) {
        tracing::debug!("CPUID cache: cannot save {}: {e}", path.display());
    }
    Ok(cpuid)
}

fn query(kvm: &Kvm) -> Result<CpuId> {
    kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(Error::kvm("KVM_GET_SUPPORTED_CPUID"))
}

/// This boot and this load of the KVM module (`/dev/kvm`, the node
/// `Kvm::new` opens, is made again when the module is).
fn key() -> std::io::Result<String> {
    let mut boot_id = String::new();
    File::open(BOOT_ID)?.read_to_string(&mut boot_id)?;
    let node = fs::metadata(KVM_NODE)?;
    Ok(format!(
        "{} {:x}:{:x} {}.{}",
        boot_id.trim(),
        node.rdev(),
        node.ino(),
        node.ctime(),
        node.ctime_nsec()
    ))
}

/// True when `meta` belongs to us and nobody else can write it.
fn private(meta: &fs::Metadata) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    meta.uid() == unsafe { libc::geteuid() } && meta.mode() & 0o022 == 0
}

fn load(dir: &Path, path: &Path, key: &str) -> std::io::Result<Option<CpuId>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    if !private(&fs::metadata(dir)?) {
        return Err(bad("the directory is writable by others or not ours"));
    }
    let mut f = File::open(path)?;
    if !private(&f.metadata()?) {
        return Err(bad("the file is writable by others or not ours"));
    }
    let mut buf = Vec::with_capacity(4096);
    f.read_to_end(&mut buf)?;
    decode(&buf, key).map_err(|e| bad(&e))
}

/// The file's contents: magic, key length (u16 LE), key, entry count
/// (u32 LE), then the `kvm_cpuid_entry2` entries, each as ten u32 LE.
fn encode(key: &str, cpuid: &CpuId) -> Vec<u8> {
    let entries = cpuid.as_slice();
    let mut out = Vec::with_capacity(16 + key.len() + entries.len() * ENTRY_LEN);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(&(entries.len() as u32).to_le_bytes());
    for e in entries {
        let words = [
            e.function,
            e.index,
            e.flags,
            e.eax,
            e.ebx,
            e.ecx,
            e.edx,
            e.padding[0],
            e.padding[1],
            e.padding[2],
        ];
        for w in words {
            out.extend_from_slice(&w.to_le_bytes());
        }
    }
    out
}

/// Ok(None): a well-formed file for another key.
fn decode(buf: &[u8], key: &str) -> std::result::Result<Option<CpuId>, String> {
    let mut rest = buf
        .strip_prefix(MAGIC.as_slice())
        .ok_or("not a CPUID cache file")?;
    let mut take = |n: usize| -> std::result::Result<&[u8], String> {
        if rest.len() < n {
            return Err("truncated".into());
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let key_len = u16::from_le_bytes(take(2)?.try_into().unwrap()) as usize;
    let stored_key = take(key_len)?;
    let count = u32::from_le_bytes(take(4)?.try_into().unwrap()) as usize;
    if count == 0 || count > KVM_MAX_CPUID_ENTRIES {
        return Err(format!("{count} entries"));
    }
    let body = take(count * ENTRY_LEN)?;
    if !rest.is_empty() {
        return Err("trailing bytes".into());
    }
    if stored_key != key.as_bytes() {
        return Ok(None);
    }
    let entries: Vec<kvm_cpuid_entry2> = body
        .chunks_exact(ENTRY_LEN)
        .map(|c| {
            let w = |i: usize| u32::from_le_bytes(c[i * 4..i * 4 + 4].try_into().unwrap());
            kvm_cpuid_entry2 {
                function: w(0),
                index: w(1),
                flags: w(2),
                eax: w(3),
                ebx: w(4),
                ecx: w(5),
                edx: w(6),
                padding: [w(7), w(8), w(9)],
            }
        })
        .collect();
    CpuId::from_entries(&entries)
        .map(Some)
        .map_err(|e| format!("{e:?}"))
}

fn store(dir: &Path, path: &Path, key: &str, cpuid: &CpuId) -> std::io::Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    ironcell_basics::atomic_file::write_private(path, &encode(key, cpuid))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample() -> CpuId {
        let e = |function, index, eax| kvm_cpuid_entry2 {
            function,
            index,
            flags: 1,
            eax,
            ebx: 2,
            ecx: 3,
            edx: 4,
            padding: [0; 3],
        };
        CpuId::from_entries(&[e(0, 0, 0xd), e(1, 0, 0x806f8), e(0xb, 1, 7)]).unwrap()
    }

    #[test]
    fn round_trip_and_key_check() {
        let bytes = encode("boot-a 1:2 3.4", &sample());
        let back = decode(&bytes, "boot-a 1:2 3.4").unwrap().unwrap();
        assert_eq!(back.as_slice(), sample().as_slice());
        assert!(decode(&bytes, "boot-b 1:2 3.4").unwrap().is_none());
    }

    #[test]
    fn malformed_files_are_misses() {
        let good = encode("k", &sample());
        assert!(decode(b"", "k").is_err());
        assert!(decode(b"ICCPUID0rest", "k").is_err());
        assert!(decode(&good[..good.len() - 1], "k").is_err());
        let mut longer = good.clone();
        longer.push(0);
        assert!(decode(&longer, "k").is_err());
        // A count beyond what KVM can report.
        let mut huge = good.clone();
        let at = MAGIC.len() + 2 + 1;
        huge[at..at + 4].copy_from_slice(&10_000u32.to_le_bytes());
        assert!(decode(&huge, "k").is_err());
        let mut zero = good;
        zero[at..at + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode(&zero, "k").is_err());
    }

    #[test]
    fn store_then_load_and_refuse_loose_permissions() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vmm");
        let path = dir.join(FILE_NAME);
        store(&dir, &path, "k1", &sample()).unwrap();
        let mode = fs::metadata(&dir).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let got = load(&dir, &path, "k1").unwrap().unwrap();
        assert_eq!(got.as_slice(), sample().as_slice());
        assert!(load(&dir, &path, "k2").unwrap().is_none());
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, [FILE_NAME]);

        fs::set_permissions(&path, fs::Permissions::from_mode(0o622)).unwrap();
        assert!(load(&dir, &path, "k1").is_err());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(load(&dir, &path, "k1").is_err());
    }
}
