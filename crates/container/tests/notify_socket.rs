//! libcontainer's start handshake (patch 23 of third_party/libcontainer)
//! leaves the process's working directory alone: ironcelld starts
//! containers from several threads at once, and the working directory is
//! one for all of them. A test binary of its own, since it changes and
//! removes its working directory.

use libcontainer::notify_socket::{NotifyListener, NotifySocket};

#[test]
fn start_neither_needs_nor_changes_the_working_directory() {
    let base = tempfile::tempdir().unwrap();
    // Longer than a unix socket address can hold (108 bytes).
    let dir = base.path().join("d".repeat(120));
    std::fs::create_dir(&dir).unwrap();
    let socket = dir.join("notify.sock");
    let listener = NotifyListener::new(&socket).unwrap();
    let init = std::thread::spawn(move || {
        // The init's side: accepts the start, then "execs" (drops).
        drop(listener.wait_for_container_start().unwrap());
    });

    // A working directory that is gone, as a removed bundle's would be:
    // upstream's handshake failed with "failed to get cwd".
    let gone = base.path().join("gone");
    std::fs::create_dir(&gone).unwrap();
    std::env::set_current_dir(&gone).unwrap();
    std::fs::remove_dir(&gone).unwrap();

    NotifySocket::new(&socket).notify_container_start().unwrap();
    init.join().unwrap();
    let cwd = std::fs::read_link("/proc/self/cwd").unwrap();
    assert_eq!(
        cwd.to_string_lossy(),
        format!("{} (deleted)", gone.display()),
        "the working directory was changed"
    );
}
