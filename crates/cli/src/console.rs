//! A terminal for a foreground `run` or `exec` whose process asks for one
//! (`terminal: true`) when the caller gave no `--console-socket`: ironcell
//! takes the pty master itself, as runc does, puts its own terminal in raw
//! mode and relays bytes both ways until the process ends.

use std::fs::File;
use std::io::{self, IoSliceMut, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
use nix::sys::termios::{self, SetArg, Termios};

/// A listening socket the container's init sends its pty master to.
pub struct ConsoleSocket {
    path: PathBuf,
    listener: UnixListener,
}

impl ConsoleSocket {
    /// Listens on a fresh socket inside `dir` (ironcell's state root).
    pub fn new(dir: &Path) -> Result<ConsoleSocket> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let path = dir.join(format!(".console-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path)
            .with_context(|| format!("cannot listen on {}", path.display()))?;
        Ok(ConsoleSocket { path, listener })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the container's connection and takes the pty master from it.
    pub fn receive(&self) -> Result<File> {
        self.listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(10);
        let conn = loop {
            match self.listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        bail!("the container did not send its terminal within 10 s");
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(e).context("accept on console socket"),
            }
        };
        conn.set_nonblocking(false)?;
        let mut buf = [0u8; 256];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([RawFd; 1]);
        let msg = recvmsg::<()>(
            conn.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .context("receive the pty master")?;
        for cmsg in msg.cmsgs().context("read control message")? {
            if let ControlMessageOwned::ScmRights(fds) = cmsg {
                if let Some(&fd) = fds.first() {
                    // SAFETY: the fd was just received over SCM_RIGHTS and
                    // nothing else owns it.
                    return Ok(unsafe { File::from_raw_fd(fd) });
                }
            }
        }
        bail!("the container sent no terminal over the console socket")
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Bytes relayed between ironcell's stdio and the container's pty.
pub struct Relay {
    master: File,
    saved: Option<Termios>,
    output: Option<JoinHandle<()>>,
}

impl Relay {
    pub fn start(master: File) -> Result<Relay> {
        let stdin = io::stdin();
        let saved = match termios::tcgetattr(stdin.as_fd()) {
            Ok(old) => {
                let mut raw = old.clone();
                termios::cfmakeraw(&mut raw);
                termios::tcsetattr(stdin.as_fd(), SetArg::TCSANOW, &raw)
                    .context("cannot put the terminal in raw mode")?;
                Some(old)
            }
            Err(_) => None, // stdin is not a terminal
        };
        let mut relay = Relay {
            master,
            saved,
            output: None,
        };
        relay.resize();
        let mut to_master = relay.master.try_clone()?;
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdin = io::stdin().lock();
            while let Ok(n) = stdin.read(&mut buf) {
                if n == 0 || to_master.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
        });
        let mut from_master = relay.master.try_clone()?;
        let output = std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut stdout = io::stdout();
            // EIO once the container side of the pty is closed.
            while let Ok(n) = from_master.read(&mut buf) {
                if n == 0 || stdout.write_all(&buf[..n]).is_err() {
                    break;
                }
                let _ = stdout.flush();
            }
        });
        relay.output = Some(output);
        Ok(relay)
    }

    /// Copies ironcell's terminal size to the container's (on SIGWINCH).
    pub fn resize(&self) {
        let mut ws = nix::libc::winsize {
            ws_row: 0,
            ws_col: 0,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        // SAFETY: TIOCGWINSZ and TIOCSWINSZ read or write one winsize
        // struct that lives on this stack frame.
        unsafe {
            if nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws) == 0 {
                nix::libc::ioctl(self.master.as_raw_fd(), nix::libc::TIOCSWINSZ, &ws);
            }
        }
    }

    /// Waits briefly for the last output, then restores the terminal. The
    /// output thread ends on EIO once every holder of the container's side
    /// of the pty has exited; a leftover background process that keeps it
    /// open must not keep ironcell waiting.
    pub fn finish(mut self) {
        if let Some(out) = self.output.take() {
            let deadline = Instant::now() + Duration::from_millis(500);
            while !out.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
            if out.is_finished() {
                let _ = out.join();
            }
        }
        self.restore();
    }

    fn restore(&mut self) {
        if let Some(old) = self.saved.take() {
            let _ = termios::tcsetattr(io::stdin().as_fd(), SetArg::TCSANOW, &old);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.restore();
    }
}
