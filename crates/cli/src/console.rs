//! A terminal for a foreground `run` or `exec` whose process asks for one
//! (`terminal: true`) when the caller gave no `--console-socket`: ironcell
//! takes the pty master itself, as runc does, puts its own terminal in raw
//! mode and relays bytes both ways until the process ends.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::termios::{self, SetArg, Termios};

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
        if let Some(ws) = stdin_winsize() {
            // SAFETY: TIOCSWINSZ reads one winsize struct that lives on this
            // stack frame.
            unsafe {
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

/// The size of the terminal on ironcell's stdin, if it is one.
fn stdin_winsize() -> Option<nix::libc::winsize> {
    let mut ws = nix::libc::winsize {
        ws_row: 0,
        ws_col: 0,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: TIOCGWINSZ writes one winsize struct that lives on this stack
    // frame.
    let ok = unsafe { nix::libc::ioctl(0, nix::libc::TIOCGWINSZ, &mut ws) } == 0;
    ok.then_some(ws)
}

/// (rows, columns) of the terminal on ironcell's stdin, if it is one with a
/// size: what a terminal ironcell relays to starts with.
pub fn stdin_terminal_size() -> Option<(u16, u16)> {
    stdin_winsize()
        .filter(|ws| ws.ws_row > 0 && ws.ws_col > 0)
        .map(|ws| (ws.ws_row, ws.ws_col))
}
