//! Writes a whole file or nothing: the data goes to a temporary file in the
//! same directory and is renamed over the target, so a reader (or a process
//! started after a crash of the writer) sees either the old file or the new
//! one, never a part.
//!
//! Runtime state (records under /run, which a reboot empties anyway) is not
//! flushed to disk; a cache that outlives reboots is ([`write_durably`]), so
//! that a power loss cannot leave a renamed file with missing data.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// Writes `data` to `path` atomically, readable by everyone (0644 before
/// the umask).
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    write_with(path, data, 0o644, false)
}

/// Writes `data` to `path` atomically, readable by its owner only (0600).
pub fn write_private(path: &Path, data: &[u8]) -> io::Result<()> {
    write_with(path, data, 0o600, false)
}

/// [`write_private`], with the data on disk before the rename: for caches
/// kept across reboots.
pub fn write_durably(path: &Path, data: &[u8]) -> io::Result<()> {
    write_with(path, data, 0o600, true)
}

fn write_with(path: &Path, data: &[u8], mode: u32, durably: bool) -> io::Result<()> {
    let tmp = temporary_name(path)?;
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .and_then(|mut f| {
            f.write_all(data)?;
            if durably {
                f.sync_all()?;
            }
            Ok(())
        })
        .and_then(|()| fs::rename(&tmp, path));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// `.<name>.<pid>.<n>.tmp` beside `path`: unique to this write, so that
/// concurrent writers of one file (threads or processes) never share a
/// temporary file, and hidden from directory listings that skip dotfiles.
fn temporary_name(path: &Path) -> io::Result<PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{}: not a file name", path.display()),
        )
    })?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    Ok(path.with_file_name(format!(
        ".{}.{}.{n}.tmp",
        name.to_string_lossy(),
        std::process::id()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("state.json");
        write(&p, b"a longer first version").unwrap();
        write(&p, b"second").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"second");
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
    }

    #[test]
    fn private_files_are_the_owners_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("cache");
        write_private(&p, b"x").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn a_failed_write_leaves_the_old_file_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("target");
        write(&p, b"old").unwrap();
        // A directory where the file should go: the rename fails.
        let d = dir.path().join("sub");
        fs::create_dir(&d).unwrap();
        fs::write(d.join("inside"), b"").unwrap();
        assert!(write(&d, b"new").is_err());
        assert_eq!(fs::read(&p).unwrap(), b"old");
        let mut names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, ["sub", "target"]);
    }

    #[test]
    fn concurrent_writers_each_write_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("shared");
        std::thread::scope(|s| {
            for t in 0..8u8 {
                let p = &p;
                s.spawn(move || {
                    for _ in 0..50 {
                        write(p, &[t; 4096]).unwrap();
                    }
                });
            }
        });
        let data = fs::read(&p).unwrap();
        assert_eq!(data.len(), 4096);
        assert!(data.iter().all(|b| *b == data[0]), "a mixed file");
    }
}
