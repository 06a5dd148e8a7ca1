//! A container's stdin for `kubectl attach -i` (a container with `stdin: true`): a pipe the
//! shim holds open for the container's life, fed by whoever connects to the unix socket
//! `attach.sock` in the container's state directory. With `stdinOnce` the pipe is closed (the
//! container reads EOF) when the first client to attach goes away, as the CRI does.
//!
//! The socket is reached through `/proc/self/fd/<dir>/attach.sock`: state directories can be
//! deeper than the 108 bytes a socket address holds. The pipe is written without blocking: a
//! container that does not read its stdin must not stall the shim (and with it the container's
//! output); what does not fit waits, and clients are not read until it has gone in.

use std::{
    fs::File,
    io::{self, Read as _, Write as _},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
};

use nix::{fcntl::OFlag, poll::PollFlags, unistd::pipe2};

/// The socket's name in the container's state directory.
pub const SOCKET: &str = "attach.sock";

/// The shim's end of a container's stdin.
#[derive(Debug)]
pub struct StdinRelay {
    /// Takes new clients; gone once `once` has closed the pipe.
    listener: Option<UnixListener>,
    /// The pipe's write end; `None` once closed.
    pipe: Option<File>,
    clients: Vec<UnixStream>,
    /// Read from a client, not yet taken by the pipe.
    pending: Vec<u8>,
    once: bool,
    /// `once` and the first client has left: the pipe closes once `pending` is in.
    closing: bool,
    socket: PathBuf,
}

impl StdinRelay {
    /// Creates the pipe and the socket in `dir`; returns the relay and the pipe's read end,
    /// the container's stdin.
    pub fn open(dir: &Path, once: bool) -> io::Result<(Self, OwnedFd)> {
        let (read, write) = pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
        // Only the shim's end: the container's read end stays blocking.
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&write),
            nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        )
        .map_err(io::Error::from)?;
        let socket = dir.join(SOCKET);
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(short_path(dir)?.join(SOCKET))?;
        listener.set_nonblocking(true)?;
        Ok((
            Self {
                listener: Some(listener),
                pipe: Some(File::from(write)),
                clients: Vec::new(),
                pending: Vec::new(),
                once,
                closing: false,
                socket,
            },
            read,
        ))
    }

    /// What the shim's poll loop must watch for this relay, and for what.
    pub fn fds(&self) -> Vec<(BorrowedFd<'_>, PollFlags)> {
        let mut fds: Vec<_> = self
            .listener
            .iter()
            .map(|l| (l.as_fd(), PollFlags::POLLIN))
            .collect();
        match (&self.pipe, self.pending.is_empty()) {
            (Some(pipe), false) => fds.push((pipe.as_fd(), PollFlags::POLLOUT)),
            _ => fds.extend(self.clients.iter().map(|c| (c.as_fd(), PollFlags::POLLIN))),
        }
        fds
    }

    /// Takes new clients, moves what waits into the pipe, and then what clients sent; never
    /// blocks.
    pub fn service(&mut self, buffer: &mut [u8]) {
        if let Some(listener) = &self.listener {
            while let Ok((client, _)) = listener.accept() {
                if client.set_nonblocking(true).is_ok() {
                    self.clients.push(client);
                }
            }
        }
        self.flush();
        let mut detached = false;
        let mut index = 0;
        while self.pending.is_empty() && index < self.clients.len() {
            match self.clients[index].read(buffer) {
                Ok(0) => {
                    self.clients.remove(index);
                    detached = true;
                }
                Ok(n) => {
                    self.pending.extend_from_slice(&buffer[..n]);
                    self.flush();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => index += 1,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.clients.remove(index);
                    detached = true;
                }
            }
        }
        if detached && self.once {
            self.closing = true;
            self.listener = None;
            self.clients.clear();
            let _ = std::fs::remove_file(&self.socket);
        }
        if self.closing && self.pending.is_empty() {
            self.close();
        }
    }

    /// Writes what waits, as much as the pipe takes now.
    fn flush(&mut self) {
        while !self.pending.is_empty() {
            let Some(pipe) = self.pipe.as_mut() else {
                self.pending.clear();
                return;
            };
            match pipe.write(&self.pending) {
                Ok(n) => {
                    self.pending.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // The container closed its stdin: nothing more goes in.
                Err(_) => self.pipe = None,
            }
        }
    }

    /// Closes the container's stdin and stops taking clients.
    fn close(&mut self) {
        self.pipe = None;
        self.pending.clear();
        self.listener = None;
        self.clients.clear();
        let _ = std::fs::remove_file(&self.socket);
    }
}

impl Drop for StdinRelay {
    fn drop(&mut self) {
        self.close();
    }
}

/// Connects to the stdin of the container whose state directory is `dir`.
pub fn connect(dir: &Path) -> io::Result<UnixStream> {
    let short = short_path(dir)?;
    UnixStream::connect(short.join(SOCKET))
}

/// `dir` as `/proc/self/fd/N`, held open by the returned guard's file while it is used.
fn short_path(dir: &Path) -> io::Result<ShortPath> {
    let file = File::open(dir)?;
    let path = PathBuf::from(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&file)
    ));
    Ok(ShortPath { _dir: file, path })
}

/// A directory's `/proc/self/fd` path, valid while the directory stays open.
struct ShortPath {
    _dir: File,
    path: PathBuf,
}

impl ShortPath {
    fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(relay: &mut StdinRelay) {
        let mut buffer = [0u8; 1024];
        for _ in 0..20 {
            relay.service(&mut buffer);
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }

    #[test]
    fn clients_feed_the_pipe_and_stdin_once_closes_it_when_the_first_leaves() {
        // A directory deeper than a socket address holds.
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("d".repeat(100));
        std::fs::create_dir(&dir).unwrap();
        let (mut relay, read) = StdinRelay::open(&dir, true).unwrap();
        let mut stdin = File::from(read);
        let mut first = connect(&dir).unwrap();
        first.write_all(b"hello\n").unwrap();
        drop(first);
        drain(&mut relay);
        let mut got = String::new();
        stdin.read_to_string(&mut got).unwrap();
        assert_eq!(got, "hello\n", "read to EOF: the pipe closed");
        assert!(connect(&dir).is_err(), "no more clients");
    }

    #[test]
    fn a_container_that_does_not_read_stalls_no_one() {
        let dir = tempfile::tempdir().unwrap();
        let (mut relay, read) = StdinRelay::open(dir.path(), true).unwrap();
        let mut client = connect(dir.path()).unwrap();
        // More than a pipe holds (64 KiB), sent while nothing reads the pipe.
        let sent: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let writer = std::thread::spawn(move || {
            client.write_all(&sent).unwrap();
            sent
        });
        let started = std::time::Instant::now();
        drain(&mut relay);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(2),
            "service blocked"
        );
        assert!(
            relay
                .fds()
                .iter()
                .any(|(_, flags)| *flags == PollFlags::POLLOUT),
            "waits for the pipe, not for clients"
        );
        // The container reads now: everything arrives, then EOF (the client left, stdinOnce).
        let reader = std::thread::spawn(move || {
            let mut got = Vec::new();
            File::from(read).read_to_end(&mut got).unwrap();
            got
        });
        while !reader.is_finished() {
            drain(&mut relay);
        }
        assert_eq!(reader.join().unwrap(), writer.join().unwrap());
    }

    #[test]
    fn without_stdin_once_the_pipe_outlives_clients() {
        let dir = tempfile::tempdir().unwrap();
        let (mut relay, read) = StdinRelay::open(dir.path(), false).unwrap();
        let stdin = File::from(read);
        for text in ["one\n", "two\n"] {
            let mut client = connect(dir.path()).unwrap();
            client.write_all(text.as_bytes()).unwrap();
            drop(client);
            drain(&mut relay);
        }
        nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&stdin),
            nix::fcntl::FcntlArg::F_SETFL(OFlag::O_NONBLOCK),
        )
        .unwrap();
        let mut got = vec![0u8; 64];
        let n = (&stdin).read(&mut got).unwrap();
        assert_eq!(&got[..n], b"one\ntwo\n");
        // Still open: no EOF, just nothing yet.
        let again = (&stdin).read(&mut got).unwrap_err();
        assert_eq!(again.kind(), io::ErrorKind::WouldBlock);
    }
}
